"""End-to-end: the same cohort and weights through `run` (overlapped) and a plain sequential loop, in one run."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

COHORT_SERIES = 8
SHAPE = (48, 128, 128)
ARCHITECTURE = {"initial_feature_channels": 4, "num_downsampling_paths": 2}
BLOCK = {
    "version": 1,
    "task": "segmentation",
    "structures": [{"name": "liver", "colour": [220, 120, 60]}, {"name": "spine", "colour": [240, 240, 200]}],
    "architecture": {"name": "UNet3D", **ARCHITECTURE},
    "channels": [{"name": "ct", "modality": "CT"}],
    "normalisation": [{"method": "ct_window", "level": 40, "window": 400}],
    "patch_size": None,
    "stitching": "gaussian",
    "postprocessing": {"largest_component": "all"},
}


def make_inputs(root: Path, shape: tuple[int, int, int] = SHAPE, series: int = COHORT_SERIES) -> tuple[Path, Path]:
    """``series`` phantom CT series of ``shape`` and a light 2-member UNet3D ensemble (also the scale bench's)."""
    from innereye_batch.model.architectures import build_network
    from innereye_batch.model.export import write_model_folder
    from innereye_batch.model.spec import ArchitectureSpec
    from tests.factory import write_series

    scans = root / "scans"
    for i in range(series):
        write_series(scans / f"s{i}", shape=shape, spacing=(2.5, 0.9, 0.9), seed=i)
    torch.manual_seed(0)
    networks = [build_network(ArchitectureSpec("UNet3D", ARCHITECTURE), 1, 3).eval() for _ in range(2)]
    model = write_model_folder(root / "model", networks, model_name="BenchModel", inference_block=BLOCK)
    return scans, model


def _sequential(scans: Path, model: Path, out: Path) -> dict[str, float]:
    """One item after another in one thread (decode, predict, write): `process_item` over the planned jobs."""
    from innereye_batch.engine.device import resolve_device
    from innereye_batch.model.checkpoints import load_networks
    from innereye_batch.model.package import load_model_package
    from innereye_batch.pipeline.plan import plan_run
    from innereye_batch.pipeline.process import process_item
    from innereye_batch.pipeline.run import make_predictor
    from innereye_batch.pipeline.sources import FolderSource
    from innereye_batch.writers.registry import resolve_formats

    start = time.perf_counter()
    package = load_model_package(model)
    formats = resolve_formats((), package.task)
    predictor = make_predictor(package, load_networks(package), resolve_device("cpu"))
    jobs, _ = plan_run(FolderSource(scans).discover(), package, formats, out)
    stages: dict[str, float] = {}
    for job in jobs:
        result = process_item(job, predictor, formats, package, package.fingerprint())
        assert result.status == "ok", result.reason
        for stage, seconds in result.timings.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    stages["wall"] = time.perf_counter() - start
    return stages


def _pipeline(scans: Path, model: Path, out: Path, workers: int) -> dict[str, float]:
    from innereye_batch.pipeline.run import RunOptions, run_batch

    start = time.perf_counter()
    report = run_batch(RunOptions(model=model, input=scans, output=out, device="cpu", workers=workers))
    assert report.exit_code == 0, [r.reason for r in report.results if r.status == "failed"]
    stages = dict(report.stage_seconds)
    stages["wall"] = time.perf_counter() - start
    return stages


_PEAK_RSS = """
import resource, sys
from pathlib import Path
from innereye_batch.pipeline.run import RunOptions, run_batch
report = run_batch(RunOptions(model=Path(sys.argv[1]), input=Path(sys.argv[2]), output=Path(sys.argv[3]), device="cpu"))
assert report.exit_code == 0
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_mib(model: Path, scans: Path, out: Path) -> float:
    """Peak resident memory of the main `run` process (model, inference, writer pool) over a whole run."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(model), str(scans), str(out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return int(done.stdout.split()[-1]) / 1024


def _memory_rows(root: Path, model: Path) -> list[str]:
    """Peak memory for a cohort and for one three times its size: flat means the same."""
    from tests.factory import write_series

    rows = []
    for count in (COHORT_SERIES // 2, 3 * COHORT_SERIES // 2):
        scans = root / f"memory{count}"
        for i in range(count):
            write_series(scans / f"s{i}", shape=SHAPE, spacing=(2.5, 0.9, 0.9), seed=100 + i)
        rows.append(f"| {count} | {_peak_rss_mib(model, scans, root / f'memory_out{count}'):.0f} |")
    return rows


def run(repeats: int = 2) -> str:
    """Markdown section with the median wall time of each way and their ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        scans, model = make_inputs(root)
        sequential, pipelined = [], []
        for r in range(repeats):
            sequential.append(_sequential(scans, model, root / f"seq{r}"))
            pipelined.append(_pipeline(scans, model, root / f"run{r}", workers=2))
        memory = _memory_rows(root, model)
    seq_wall = statistics.median(s["wall"] for s in sequential)
    run_wall = statistics.median(s["wall"] for s in pipelined)
    stage_line = ", ".join(f"{k} {v:.1f} s" for k, v in pipelined[-1].items() if k != "wall")
    seq_line = ", ".join(f"{k} {v:.1f} s" for k, v in sequential[-1].items() if k != "wall")
    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return "\n".join(
        [
            "## End to end: `run` against a plain sequential loop",
            "",
            f"{COHORT_SERIES} CT series of {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} voxels, a 2-member UNet3D ensemble "
            f"(4 initial feature channels, whole-volume inference: a light model, so that decoding and writing are a "
            f"real share of the work, as on a GPU), on {device} with {torch.get_num_threads()} threads; "
            "all three outputs (NIfTI, DICOM-SEG, JSON) per series. Median of "
            f"{repeats} runs, same weights and inputs.",
            "",
            "| way | wall (s) | series/min |",
            "|---|---|---|",
            f"| sequential (`process_item` per series: load, infer, write) | {seq_wall:.1f} | "
            f"{60 * COHORT_SERIES / seq_wall:.1f} |",
            f"| `innereye-batch run` (2 loader workers, 2 writers) | {run_wall:.1f} | "
            f"{60 * COHORT_SERIES / run_wall:.1f} |",
            "",
            f"Ratio sequential / run: **{seq_wall / run_wall:.2f}x**.",
            "",
            f"Stage totals, run (summed over series, they overlap): {stage_line}.",
            f"Stage totals, sequential: {seq_line}.",
            "",
            f"This machine has {os.cpu_count()} cores: torch's threads, the decoding workers and the writers share",
            "them, so overlapping can only hide what the cores are not already busy with. Where inference runs on a",
            "GPU, decoding and writing happen while the GPU works.",
            "",
            "Peak resident memory of the `run` process (model, inference loop, writer pool; decoding workers are",
            "separate processes holding at most 2 series each) against cohort size; flat means the same:",
            "",
            "| series in the cohort | peak RSS (MiB) |",
            "|---|---|",
            *memory,
            "",
        ]
    )
