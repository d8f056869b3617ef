"""The GPU bench: `run` against the MONAI script on a realistic CT cohort, on the device machine, in one command.

``python -m bench.gpu --out DIR`` (the device tool's $OUT): writes ``gpu_section.md`` (the BENCHMARKS.md section,
rewritten after every step, so that a run cut short still reports what it measured), ``gpu_results.json`` and
``profile.txt``. Not part of ``make bench`` (no GPU there): its section is pasted into BENCHMARKS.md by hand,
with the device name and date it states.

Cohort: CT series of 512x512 with 200 to 300 slices (1.25 x 0.8 x 0.8 mm), a body with organs of distinct HU;
model: a 3-member ensemble of UNet3D (32 initial channels, 4 down-sampling paths) whose weights draw the
phantom's anatomy (``band_network``: organ-like label maps, as a trained model's), 8 structures,
resampled to 2 x 1 x 1 mm, 64x128x128 patches at half-patch stride, Gaussian stitching, largest component of
every structure. Ways, each over the whole cohort: ours with every default output, ours NIfTI only, ours with
``--amp``, and the MONAI script (LoadImage with PydicomReader: ITK's wheels are too large to carry to the device
machine; transforms and `sliding_window_inference` on the GPU, sw_batch_size 4, fp32). GPU utilisation is
sampled every 50 ms through NVML. ``--smoke`` runs it all on a tiny cohort on the CPU (a check of the script).

On the device machine (it has torch, numpy, scipy, scikit-image, typer, rich and pynvml, but not pydicom, highdicom,
nibabel, monai, pyjpegls or cc3d): download those six wheels here once into ``.whl/`` (ignored through
``.git/info/exclude``) with ``pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
--platform manylinux_2_28_x86_64 -d .whl pydicom==3.0.2 highdicom==0.28.2 nibabel==5.4.2 monai==1.6.1
pyjpegls==1.5.1 connected-components-3d==4.1.1`` (the ``fast`` extra: without it the largest components take
scikit-image's 7-10x longer path, and the export bench's figures do not apply), carry ``.whl``, and run
``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl;
PYTHONPATH=/tmp/site:$PWD python3 -m bench.gpu --out $OUT --series 10 --budget 330``
(``--skip ours_16gib,batches`` for the ways already measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
STRUCTURES = ["liver", "spleen", "kidney_l", "kidney_r", "spine", "lung_l", "lung_r", "heart"]
SPACING = (1.25, 0.8, 0.8)
BLOCK: dict[str, Any] = {
    "version": 1,
    "task": "segmentation",
    "structures": [{"name": n, "colour": [30 * i, 200 - 20 * i, 120]} for i, n in enumerate(STRUCTURES)],
    "architecture": {"name": "UNet3D", "initial_feature_channels": 32, "num_downsampling_paths": 4},
    "channels": [{"name": "ct", "modality": "CT"}],
    "normalisation": [{"method": "ct_window", "level": 40, "window": 400}],
    "target_spacing": [2.0, 1.0, 1.0],
    "patch_size": [64, 128, 128],
    "stride": [32, 64, 64],
    "stitching": "gaussian",
    "postprocessing": {"largest_component": "all"},
}
SMOKE_BLOCK: dict[str, Any] = {
    **BLOCK,
    "architecture": {"name": "UNet3D", "initial_feature_channels": 4, "num_downsampling_paths": 2},
    "target_spacing": [2.0, 1.6, 1.6],
    "patch_size": [16, 32, 32],
    "stride": [8, 16, 16],
}


def body_phantom(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """HU voxels: air, a body ellipse of soft tissue, lungs, a spine, organs of distinct HU."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z, y, x = np.ogrid[:nz, :ny, :nx]
    zc, yc, xc = (z - nz / 2) / (nz / 2), (y - ny / 2) / (ny / 2), (x - nx / 2) / (nx / 2)
    voxels = np.full(shape, -1000.0, dtype=np.float32)
    body = (yc / 0.62) ** 2 + (xc / 0.85) ** 2 < 1
    voxels[np.broadcast_to(body, shape)] = 30.0
    for side in (-1, 1):  # lungs in the upper half
        lung = ((yc + 0.1) / 0.35) ** 2 + ((xc - side * 0.4) / 0.3) ** 2 + ((zc + 0.5) / 0.6) ** 2 < 1
        voxels[lung] = -820.0
    spine = ((yc - 0.42) / 0.1) ** 2 + (xc / 0.1) ** 2 < 1
    voxels[np.broadcast_to(spine, shape)] = 650.0
    for hu in (60.0, 45.0, 150.0, 150.0, 90.0):  # organs at random places inside the body
        cz, cy, cx = rng.uniform(-0.5, 0.6), rng.uniform(-0.3, 0.25), rng.uniform(-0.5, 0.5)
        radius = rng.uniform(0.12, 0.25)
        organ = ((zc - cz) / (2 * radius)) ** 2 + ((yc - cy) / radius) ** 2 + ((xc - cx) / radius) ** 2 < 1
        voxels[organ] = hu
    # no voxel noise: the ensemble's random weights would turn it into speckled label maps (no trained model
    # draws those), whose thousands of contours per slice make RTSTRUCT export a different benchmark
    return voxels


def _write_one(args: tuple[Path, tuple[int, int, int], int]) -> str:
    sys.path.insert(0, str(REPO))
    from tests.factory import write_series

    folder, shape, seed = args
    generated = write_series(folder, voxels=body_phantom(shape, seed), spacing=SPACING, seed=seed)
    return generated.series_instance_uid


def make_cohort(root: Path, series: int, smoke: bool) -> tuple[Path, list[int]]:
    """``series`` CT series, slices spread evenly from 200 to 300 (the last has 300), written in parallel."""
    scans = root / "scans"
    depths = [16 + 4 * (i % 3) for i in range(series)] if smoke else list(np.linspace(200, 300, series).astype(int))
    side = 48 if smoke else 512
    jobs = [(scans / f"s{i:02d}", (int(d), side, side), 100 + i) for i, d in enumerate(depths)]
    with ProcessPoolExecutor(max_workers=min(len(jobs), max((os.cpu_count() or 2) - 1, 1))) as pool:
        list(pool.map(_write_one, jobs))
    return scans, [int(d) for d in depths]


BAND_CENTRES = (-1.0, -0.05, 0.025, 0.1, 0.25, 1.0, 2.0, 3.0, 0.55)
"""Per class (background, then STRUCTURES): the normalised intensity it is drawn for (CT window 40/400 onto
[-1, 1]): air and lung, body, the phantom's organs, spine; the lungs' 2 and 3 are never nearest (empty)."""
SMALL_WEIGHT = 1e-4


def band_network(params: dict[str, Any], seed: int) -> torch.nn.Module:
    """A UNet3D whose label map is the phantom's anatomy: each voxel gets the class whose ``BAND_CENTRES`` value is
    nearest its normalised intensity. The intensity passes unchanged through the first level (relu(x), relu(-x))
    and its skip connection into the output layer, whose logits c * x - c^2 / 2 are largest for the nearest
    centre c. Every other weight is random at ``SMALL_WEIGHT`` scale: non-zero, so that the GPU computes as on
    trained weights (zeros can run faster), and too small to move a label. A random-weight network instead draws
    mosaics with thousands of contours, which makes the export, not the model, the benchmark."""
    from innereye_batch.model.architectures import build_network
    from innereye_batch.model.spec import ArchitectureSpec

    torch.manual_seed(seed)
    network = build_network(ArchitectureSpec("UNet3D", params), 1, len(BAND_CENTRES)).eval()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(SMALL_WEIGHT)
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.reset_parameters()  # identity in eval mode (mean 0, variance 1, weight 1, bias 0)
        layers = network._layers  # type: ignore[attr-defined]
        first = layers[0].block1.conv1.weight
        first[0, 0, 1, 1, 1], first[1, 0, 1, 1, 1] = 1.0, -1.0  # relu(x), relu(-x)
        skip = layers[-1].conv2.conv1.weight  # the last synthesis block's convolution of the first skip
        skip[0, 0, 1, 1, 1], skip[1, 1, 1, 1, 1] = 1.0, 1.0
        output = network.output_layer  # type: ignore[attr-defined]
        scale = 20.0
        for k, centre in enumerate(BAND_CENTRES):
            output.weight[k, 0], output.weight[k, 1] = scale * centre, -scale * centre  # c * (relu(x) - relu(-x))
            output.bias[k] = -scale * centre**2 / 2
    return network


def make_model(root: Path, smoke: bool) -> Path:
    from innereye_batch.model.export import write_model_folder

    block = SMOKE_BLOCK if smoke else BLOCK
    params = {k: v for k, v in block["architecture"].items() if k != "name"}
    networks = [band_network(params, seed) for seed in range(3)]
    return write_model_folder(root / "model", networks, model_name="GpuBench", inference_block=block)


class Utilisation:
    """GPU utilisation (NVML: share of time a kernel ran) sampled every ``period`` seconds in a thread."""

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except Exception:  # no NVML (CPU smoke run): no samples
            self.handle = None

    def __enter__(self) -> Utilisation:
        self.began = time.perf_counter()
        if self.handle is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ended = time.perf_counter()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            rate = self._nvml.nvmlDeviceGetUtilizationRates(self.handle)
            self.samples.append((time.perf_counter(), float(rate.gpu)))
            time.sleep(self.period)

    def summary(self) -> dict[str, float]:
        """Mean over the whole way, and over the span from the first to the last busy sample (after warm-up); when
        the GPU first got busy (start-up: imports, scan, model load, the first decode) and how long it idled at the
        end (the last series' export)."""
        if not self.samples:
            return {}
        values = [u for _, u in self.samples]
        busy = [i for i, u in enumerate(values) if u > 0]
        span = values[busy[0] : busy[-1] + 1] if busy else values
        summary = {"mean_whole": statistics.fmean(values), "mean_busy_span": statistics.fmean(span)}
        if busy:
            summary["first_busy_s"] = self.samples[busy[0]][0] - self.began
            summary["idle_tail_s"] = self.ended - self.samples[busy[-1]][0]
        return summary


def run_ours(
    scans: Path,
    model: Path,
    out: Path,
    device: str,
    formats: tuple[str, ...],
    amp: bool,
    gpu_memory_gib: float | None = None,
) -> dict[str, Any]:
    from innereye_batch.pipeline.run import RunOptions, run_batch

    with Utilisation() as gpu:
        start = time.perf_counter()
        options = RunOptions(
            model=model, input=scans, output=out, device=device, formats=formats, amp=amp, gpu_memory_gib=gpu_memory_gib
        )
        report = run_batch(options)
        wall = time.perf_counter() - start
    failed = [r.reason for r in report.results if r.status != "ok"]
    per_series = {r.key: r.timings for r in report.results}
    device_seconds = sum(t.get(k, 0.0) for t in per_series.values() for k in ("preprocess", "infer", "postprocess"))
    return {
        "wall": wall,
        "failed": failed,
        "stages": report.stage_seconds,
        "per_series": per_series,
        "series_peak_gib": {r.key: r.peak_memory_gib for r in report.results},
        "device_share": device_seconds / wall,
        "gpu": gpu.summary(),
        "peak_gpu_gib": max((r.peak_memory_gib.get("cuda:0", 0.0) for r in report.results), default=0.0),
        "peak_host_gib": max((r.peak_memory_gib.get("host", 0.0) for r in report.results), default=0.0),
    }


def run_monai(scans: Path, model: Path, out: Path, device: str) -> dict[str, Any]:
    from bench.monai_bench import monai_script

    with Utilisation() as gpu:
        wall = monai_script(scans, model, out, reader="PydicomReader", device=device, sw_batch_size=4)
    return {"wall": wall, "gpu": gpu.summary()}


def time_scan(scans: Path) -> dict[str, Any]:
    """The header scan of the cohort (automatic: one process per core, at most 8) against a plain single-threaded
    ``pydicom.dcmread(stop_before_pixels=True)`` loop over the same files; best of 2 each, alternating."""
    import pydicom

    from innereye_batch.dicom.scan import scan_tree

    files = sorted(p for p in scans.rglob("*") if p.is_file())
    scan, loop = [], []
    for _ in range(2):
        start = time.perf_counter()
        scan_tree(scans, workers=None if len(files) >= 2000 else min(8, os.cpu_count() or 1))
        scan.append(time.perf_counter() - start)
        start = time.perf_counter()
        for path in files:
            pydicom.dcmread(path, stop_before_pixels=True)
        loop.append(time.perf_counter() - start)
    return {"files": len(files), "scan": min(scan), "loop": min(loop)}


def profile_one(scans: Path, model: Path, device: str, path: Path) -> dict[str, Any]:
    """torch.profiler over one series' device work (pre-processing, ensemble, resampling back, argmax), after a
    warm-up pass; the top operators by device time go to ``path``; device time (CUDA events) over wall time."""
    from torch.profiler import ProfilerActivity, profile

    from innereye_batch.dicom.scan import scan_tree
    from innereye_batch.engine.device import resolve_device
    from innereye_batch.model.checkpoints import load_networks
    from innereye_batch.model.package import load_model_package
    from innereye_batch.pipeline.plan import plan_run
    from innereye_batch.pipeline.run import make_predictor
    from innereye_batch.tasks.segmentation import decode_volumes
    from innereye_batch.writers.registry import resolve_formats

    package = load_model_package(model)
    target = resolve_device(device)
    predictor = make_predictor(package, load_networks(package, device=target), target)
    jobs, _ = plan_run(scan_tree(scans), package, resolve_formats(("nifti",), package.task), path.parent / "p")
    job = max(jobs, key=lambda j: len(j.item.primary.slices))
    volume = decode_volumes(job.item)
    image = volume.image.pin_memory() if device == "cuda" else volume.image
    predictor.label_map(image, volume.geometry)  # warm-up (cuDNN algorithm choice, allocator)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    events: tuple[Any, Any] | None = None
    if device == "cuda":
        events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        if events:
            events[0].record()
        labels, timings = predictor.label_map(image, volume.geometry)
        if events:
            events[1].record()
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=sort, row_limit=18)
    except Exception:  # newer torch names it device time
        table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=18)
    path.write_text(table)
    device_ms = events[0].elapsed_time(events[1]) if events else float("nan")
    return {
        "slices": len(job.item.primary.slices),
        "wall_s": wall,
        "device_s": device_ms / 1000,
        "timings": timings,
        "device_share": (device_ms / 1000) / wall if events else float("nan"),
        "export_alone": export_alone(package, job, labels, Path(tempfile.mkdtemp(prefix="export_alone"))),
    }


def export_alone(package: Any, job: Any, labels: np.ndarray, out: Path) -> dict[str, float]:
    """One series' export (largest components, then every default format), each step timed in this process with
    the machine otherwise idle: against the same series' export in a writer process during the run, it shows
    what sharing the cores with the other writers and the decoders costs."""
    import shutil

    from bench.export_bench import _export
    from innereye_batch.dicom.volume import load_volume
    from innereye_batch.writers.registry import resolve_formats

    try:
        return _export(package, resolve_formats((), package.task), job, load_volume(job.item.primary), labels, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


PROBES = ((4, True), (4, False), (12, True), (12, False), (32, False))
"""(patches per forward pass, cuDNN autotuning on) for ``probe_batches``; 32 with autotuning is the first run's."""


def probe_batches(smoke: bool) -> list[dict[str, Any]]:
    """One member's forward pass at several patch batches, with and without cuDNN's autotuning, each in a process
    of its own (cuDNN keeps what it chose per shape for the process's life): the first pass (with autotuning:
    the search) and the steady time per patch."""
    rows = []
    for batch, autotune in PROBES[:2] if smoke else PROBES:
        command = [sys.executable, "-m", "bench.gpu", "--probe", f"{batch},{int(autotune)}"]
        command += ["--smoke"] if smoke else []
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"probe {rows[-1]}", flush=True)
    return rows


def _probe(batch: int, autotune: bool, smoke: bool) -> dict[str, Any]:
    from innereye_batch.engine.ensemble import to_channels_last

    block = SMOKE_BLOCK if smoke else BLOCK
    device = torch.device("cpu" if smoke else "cuda")
    torch.backends.cudnn.benchmark = autotune
    params = {k: v for k, v in block["architecture"].items() if k != "name"}
    network = band_network(params, 0).to(device)
    to_channels_last([network])
    inputs = torch.rand((batch, 1, *block["patch_size"]), device=device).to(memory_format=torch.channels_last_3d)

    def timed() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            network(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first = timed()
    steady = statistics.median(timed() for _ in range(4))
    return {"batch": batch, "autotune": autotune, "first_s": first, "steady_ms_per_patch": 1000 * steady / batch}


def section(env: dict[str, Any], results: dict[str, Any]) -> str:
    """The BENCHMARKS.md section from what has been measured so far."""
    lines = [
        "## GPU: end to end against the MONAI script",
        "",
        f"{env['device']}, {env['cpus']} CPU cores; torch {env['torch']}, Python {env['python']}; connected "
        f"components by {env.get('connected_components', '?')}; {env['date']}. "
        f"Cohort: {env['series']} CT series of 512x512 with {env['slices']} slices (1.25 x 0.8 x 0.8 mm, "
        f"{env['voxels'] / 1e6:.0f} M voxels in all). Model: 3-member UNet3D ensemble (32 initial channels, 4 "
        "down-sampling paths, 9 outputs: 8 structures), resampled to 2 x 1 x 1 mm, 64x128x128 patches at half-patch "
        "stride, Gaussian stitching, largest component of every structure. `run` with its defaults (2 decoding "
        "workers, writer processes on the cores left over, automatic patch batch: free memory, at most 2^24 voxels "
        "a pass; cuDNN autotuning off). MONAI script: "
        "PydicomReader (ITK's wheels could not be carried to the device machine), transforms and "
        "`sliding_window_inference` on the GPU (sw_batch_size 4, fp32), KeepLargestConnectedComponent, SaveImage. "
        "GPU busy: NVML utilisation sampled every 50 ms, mean over the span from the first to the last busy sample; "
        "device share: the run's synchronised device stages (pre-processing, inference, resampling back, argmax) "
        "summed over wall time. One run of each way.",
        "",
        "| way | wall (s) | series/min | vs MONAI | GPU busy | device share | peak GPU memory |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    monai = results.get("monai", {}).get("wall")
    names = {
        "ours_all": "ours, every default output",
        "ours_nifti": "ours, NIfTI only",
        "ours_amp": "ours, every output, --amp (bf16)",
        "ours_16gib": "ours, every output, --gpu-memory 16 (a 16 GiB card's budget)",
        "monai": "MONAI script, NIfTI only",
    }
    for key, name in names.items():
        if key not in results:
            continue
        r = results[key]
        wall = r["wall"]
        ratio = f"{monai / wall:.2f}x" if monai else "-"
        busy = f"{r['gpu']['mean_busy_span']:.0f}%" if r.get("gpu") else "-"
        share = f"{100 * r['device_share']:.0f}%" if "device_share" in r else "-"
        peak = f"{r['peak_gpu_gib']:.1f} GiB" if r.get("peak_gpu_gib") else "-"
        lines.append(f"| {name} | {wall:.1f} | {60 * env['series'] / wall:.1f} | {ratio} | {busy} | {share} | {peak} |")
    if "ours_16gib" in results:
        r = results["ours_16gib"]
        worst = "; ".join(r["failed"][:2]) or "none"
        lines += [
            "",
            f"Within a 16 GiB budget (`--gpu-memory 16`: torch's allocator refuses more, patch batch and "
            f"accumulators chosen within it): the largest series' device work peaked at {r['peak_gpu_gib']:.1f} GiB "
            f"on the GPU and {r['peak_host_gib']:.1f} GiB of host memory (the run process); failed series: {worst}.",
        ]
    if "agreement" in results:
        share = 100 * results["agreement"]
        lines += ["", f"Label maps (ours, fp32, every output) equal to MONAI's on {share:.3f}% of voxels."]
    if "ours_all" in results:
        stages = results["ours_all"]["stages"]
        lines += [
            "",
            "Stage totals of the run with every output (s, summed over series; writing in processes): "
            + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()),
        ]
        deepest = max(results["ours_all"]["per_series"].items(), key=lambda kv: kv[1].get("infer", 0.0))
        t = deepest[1]
        device = sum(t.get(k, 0.0) for k in ("preprocess", "infer", "postprocess"))
        export = t.get("refine", 0.0) + t.get("write", 0.0)
        lines += [
            "",
            f"Export against inference, the {env['slices'].split('-')[-1]}-slice series: device work "
            f"{device:.2f} s (inference {t.get('infer', 0.0):.2f} s); export {export:.2f} s (largest "
            f"components {t.get('refine', 0.0):.2f} s, writing every format {t.get('write', 0.0):.2f} s), "
            "in a writer process, off the device loop.",
        ]
    timeline = [
        f"{names[key]}: busy from {results[key]['gpu']['first_busy_s']:.1f} s, idle for the last "
        f"{results[key]['gpu']['idle_tail_s']:.1f} s"
        for key in names
        if "first_busy_s" in results.get(key, {}).get("gpu", {})
    ]
    if timeline:
        lines += ["", "GPU timeline (NVML samples): " + "; ".join(timeline) + "."]
    if "export_alone" in results.get("profile", {}):
        alone = results["profile"]["export_alone"]
        lines += [
            "",
            f"The {results['profile']['slices']}-slice series' export alone (this process, the machine otherwise "
            "idle; s): " + ", ".join(f"{k} {v:.2f}" for k, v in alone.items()) + ".",
        ]
    if "batches" in results:
        lines += [
            "",
            "One member's forward pass by patch batch (a process each): first pass / steady ms per patch: "
            + "; ".join(
                f"{r['batch']} patches, autotuning {'on' if r['autotune'] else 'off'}: {r['first_s']:.2f} s / "
                f"{r['steady_ms_per_patch']:.1f} ms"
                for r in results["batches"]
            )
            + ".",
        ]
    if "scan" in results:
        s = results["scan"]
        lines += [
            "",
            f"Header scan of the cohort's {s['files']:,} files on the {env['cpus']} cores: `scan_tree` "
            f"{s['scan']:.2f} s ({1e6 * s['scan'] / s['files']:.0f} µs per file, up to 8 header-reading processes) "
            f"against a plain single-threaded `pydicom.dcmread(stop_before_pixels=True)` loop {s['loop']:.2f} s: "
            f"**{s['scan'] / s['loop']:.2f}x** the loop's time (best of 2 each).",
        ]
    if "profile" in results:
        p = results["profile"]
        lines += [
            "",
            f"Profiler (torch.profiler, one {p['slices']}-slice series after a warm-up pass): device time "
            f"{p['device_s']:.2f} s of {p['wall_s']:.2f} s wall ({100 * p['device_share']:.0f}%); stages "
            + ", ".join(f"{k} {v:.2f} s" for k, v in p["timings"].items())
            + ".",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_bench_out"))
    parser.add_argument("--series", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_bench"))
    parser.add_argument("--budget", type=float, default=420.0, help="seconds: later ways are skipped past it")
    parser.add_argument("--smoke", action="store_true", help="tiny cohort on the CPU: a check of this script")
    parser.add_argument("--skip", default="", help="comma-separated steps to leave out (e.g. ours_16gib)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # "batch,autotune": one probe_batches process
    args = parser.parse_args()
    if args.probe:
        batch, autotune = (int(v) for v in args.probe.split(","))
        print(json.dumps(_probe(batch, bool(autotune), args.smoke)))
        return
    from bench.export_bench import components_backend

    began = time.perf_counter()
    device = "cpu" if args.smoke else "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    scans, depths = make_cohort(args.work, args.series, args.smoke)
    model = make_model(args.work, args.smoke)
    side = 48 if args.smoke else 512
    env = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke run)",
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "connected_components": components_backend(),
        "date": time.strftime("%Y-%m-%d"),
        "series": args.series,
        "slices": f"{min(depths)}-{max(depths)}",
        "voxels": sum(depths) * side * side,
    }
    print(f"cohort and model ready in {time.perf_counter() - began:.0f} s: {env}", flush=True)
    results: dict[str, Any] = {}

    def save() -> None:
        (args.out / "gpu_section.md").write_text(section(env, results))
        (args.out / "gpu_results.json").write_text(json.dumps({"env": env, "results": results}, indent=1, default=str))

    steps: list[tuple[str, Any]] = [
        ("scan", lambda: time_scan(scans)),
        ("ours_all", lambda: run_ours(scans, model, args.work / "ours_all", device, (), False)),
        ("monai", lambda: run_monai(scans, model, args.work / "monai", device)),
        ("ours_amp", lambda: run_ours(scans, model, args.work / "ours_amp", device, (), True)),
        ("profile", lambda: profile_one(scans, model, device, args.out / "profile.txt")),
        ("batches", lambda: probe_batches(args.smoke)),
        ("ours_nifti", lambda: run_ours(scans, model, args.work / "ours_nifti", device, ("nifti",), False)),
        ("ours_16gib", lambda: run_ours(scans, model, args.work / "ours_16gib", device, (), False, 16.0)),
    ]
    skipped = set(filter(None, args.skip.split(",")))
    for name, step in steps:
        if name in skipped:
            continue
        if time.perf_counter() - began > args.budget:
            print(f"skipped {name}: past the {args.budget:.0f} s budget", flush=True)
            continue
        started = time.perf_counter()
        try:
            results[name] = step()
        except Exception as error:  # report and go on: the other ways still measure
            import traceback

            traceback.print_exc()
            results[f"{name}_error"] = f"{type(error).__name__}: {error}"
        print(f"{name}: {time.perf_counter() - started:.1f} s -> {json.dumps(results.get(name), default=str)[:600]}")
        if name == "monai" and "ours_all" in results:
            from bench.monai_bench import label_agreement

            try:
                results["agreement"] = label_agreement(scans, args.work / "ours_all", args.work / "monai")
            except Exception as error:
                results["agreement_error"] = f"{type(error).__name__}: {error}"
        save()
    results["host_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    save()
    print(section(env, results))
    print(f"bench took {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
