"""Export of one 300-slice 512x512 CT segmentation with 8 structures: the CPU post-processing and every writer.

The issue's goal: export never slower than inference of the same series, and off the device loop. Two label maps
of the same series: organ-like (8 ellipsoids and a few stray voxels, what a trained model draws) and a mosaic
(argmax of 9 smooth random fields: what an untrained network draws, thousands of contours; the GPU bench's
random-weight ensemble draws such maps). Each step is timed in this process, one after another, as one writer
process does it.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu import STRUCTURES

SHAPE = (300, 512, 512)


def _organs(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for number in range(1, len(STRUCTURES) + 1):
        cz, cy, cx = rng.integers(shape[0] // 4, 3 * shape[0] // 4), rng.integers(100, 400), rng.integers(100, 400)
        radius = rng.integers(20, 60)
        labels[((z - cz) / (radius * 0.6)) ** 2 + ((y - cy) / radius) ** 2 + ((x - cx) / radius) ** 2 < 1] = number
    stray = rng.random(shape) < 1e-4
    labels[stray] = rng.integers(1, len(STRUCTURES) + 1, int(stray.sum()))
    return labels


def _mosaic(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    half = (shape[0] // 2 + 1, shape[1] // 2, shape[2] // 2)
    classes = len(STRUCTURES) + 1
    fields = np.stack([gaussian_filter(rng.normal(size=half).astype(np.float32), 6) for _ in range(classes)])
    return fields.argmax(0).astype(np.uint8).repeat(2, 0).repeat(2, 1).repeat(2, 2)[: shape[0]]


def _setup(root: Path) -> tuple[Any, Any, Any, Any]:
    """The series, and the GPU bench's package (its light variant: the network is never run here)."""
    from bench.gpu import SMOKE_BLOCK, SPACING, body_phantom
    from innereye_batch.dicom.scan import scan_tree
    from innereye_batch.dicom.volume import load_volume
    from innereye_batch.model.architectures import build_network
    from innereye_batch.model.export import write_model_folder
    from innereye_batch.model.package import load_model_package
    from innereye_batch.model.spec import ArchitectureSpec
    from innereye_batch.pipeline.plan import plan_run
    from innereye_batch.writers.registry import resolve_formats
    from tests.factory import write_series

    write_series(root / "scans" / "s0", voxels=body_phantom(SHAPE, 7), spacing=SPACING, seed=7)
    params = {k: v for k, v in SMOKE_BLOCK["architecture"].items() if k != "name"}
    network = build_network(ArchitectureSpec("UNet3D", params), 1, len(STRUCTURES) + 1)
    folder = write_model_folder(root / "model", [network], model_name="X", inference_block=SMOKE_BLOCK)
    package = load_model_package(folder)
    formats = resolve_formats((), package.task)
    jobs, _ = plan_run(scan_tree(root / "scans"), package, formats, root / "out")
    return package, formats, jobs[0], load_volume(jobs[0].item.primary)


def _export(package: Any, formats: Any, job: Any, volume: Any, labels: np.ndarray, out: Path) -> dict[str, float]:
    from innereye_batch import __version__
    from innereye_batch.tasks.segmentation import SegmentationPrediction
    from innereye_batch.writers.registry import WriteContext, WriterOptions

    spec = package.segmentation
    prediction = SegmentationPrediction(
        job.item,
        labels.copy(),
        volume.geometry,
        (),
        {},
        image=volume.array,
        refined=False,
        postprocessing=spec.postprocessing,
        structure_names=spec.structure_names,
    )
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    finished = prediction.finished()
    seconds["largest components"] = time.perf_counter() - start
    context = WriteContext(package=package, tool_version=__version__, timings={}, options=WriterOptions())
    out.mkdir(parents=True, exist_ok=True)
    for output in formats:
        start = time.perf_counter()
        output.write(out / output.filename, finished, context)
        seconds[output.name] = time.perf_counter() - start
    seconds["export"] = sum(seconds.values())
    return seconds


FANNED_PROCESSES = 2
"""Writer processes one series' files are written by, side by side (this machine's cores)."""


def _prediction_from_device(package: Any, job: Any, volume: Any, labels: np.ndarray) -> Any:
    """The prediction as a writer process gets it: straight from the device, without the volume."""
    from innereye_batch.tasks.segmentation import SegmentationPrediction

    spec = package.segmentation
    return SegmentationPrediction(
        job.item,
        labels.copy(),
        volume.geometry,
        (),
        {},
        refined=False,
        postprocessing=spec.postprocessing,
        structure_names=spec.structure_names,
    )


def _in_processes(
    pools: dict[str, Any], package: Any, formats: Any, job: Any, volume: Any, labels: np.ndarray, out: Path
) -> dict[str, float]:
    """Wall time of one series' whole export in writer processes: all of it in one process (``write_outputs``, as
    before), and its files side by side in ``FANNED_PROCESSES`` processes (``pipeline.fan_out``)."""
    from dataclasses import replace

    from innereye_batch.pipeline.fan_out import write_fanned_out
    from innereye_batch.pipeline.process import write_outputs
    from innereye_batch.writers.registry import WriterOptions

    seconds = {}
    for way, pool in pools.items():
        where = replace(job, folder=out / way)
        prediction = _prediction_from_device(package, job, volume, labels)
        start = time.perf_counter()
        if way == "one process":
            result = pool.submit(write_outputs, where, prediction, formats, package, "fp", {}).result()
        else:
            result = write_fanned_out(pool.submit, where, prediction, formats, package, "fp", {}, WriterOptions())
        seconds[way] = time.perf_counter() - start
        assert result.status == "ok", result.reason
    return seconds


H200_FP32 = (2.3, 2.8)
H200_BF16 = (1.5, 1.8)
"""Seconds of device time the GPU bench's ensemble took per series on an H200 (BENCHMARKS.md's GPU section)."""


def _against_inference(seconds: float) -> str:
    if seconds < H200_BF16[0]:
        return "below that inference in fp32 and in bf16"
    if seconds < H200_FP32[0]:
        return "below the fp32 inference and not below the bf16 one"
    return "not below that inference"


def components_backend() -> str:
    import importlib.util

    if importlib.util.find_spec("cc3d") is None:
        return "scikit-image (cc3d, the `fast` extra, is not installed)"
    return "cc3d (the `fast` extra)"


def run(repeats: int = 2) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        package, formats, job, volume = _setup(root)
        maps = {"organ-like": _organs(SHAPE), "mosaic": _mosaic(SHAPE)}
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in maps}
        for r in range(repeats):
            for name, labels in maps.items():
                rows[name].append(_export(package, formats, job, volume, labels, root / f"{name}{r}"))
        walls = _process_walls(package, formats, job, volume, maps["organ-like"], root, repeats)
    steps = list(rows["organ-like"][0])

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    table = [
        "| step | " + " | ".join(f"{name} map (s)" for name in maps) + " |",
        "|---|" + "---:|" * len(maps),
    ]
    for step in steps:
        table.append(f"| {step} | " + " | ".join(cell([run[step] for run in rows[name]]) for name in maps) + " |")
    one, fanned = walls["one process"], walls[f"{FANNED_PROCESSES} processes"]
    ratios = [a / b for a, b in zip(one, fanned, strict=True)]
    organ_medians = {step: statistics.median([run[step] for run in rows["organ-like"]]) for step in steps}
    slowest = max((s for s in steps if s not in ("largest components", "export")), key=organ_medians.__getitem__)
    waited = organ_medians["largest components"] + organ_medians[slowest]
    return "\n".join(
        [
            "## Export of one 300-slice segmentation with 8 structures",
            "",
            f"One CT series of {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}; each step in this process one after another, as "
            f"one writer process runs them; median of {repeats} runs (range). Organ-like: 8 ellipsoids and stray "
            "voxels; mosaic: argmax of 9 smooth random fields (what an untrained network draws: thousands of "
            "contours). Every DICOM output is read back and checked within its step. Connected components by "
            f"{components_backend()}.",
            "",
            *table,
            "",
            f"The organ-like map's whole export in writer processes, as a GPU run writes it (the prediction sent "
            f"to the pool, the image decoded again for the preview), wall time from submission to result, the two "
            f"ways taken in turn, median of {repeats} (range): all in one process {cell(one)} s; the files side "
            f"by side in {FANNED_PROCESSES} processes (`pipeline/fan_out.py`: largest components first, then one "
            f"task per file) {cell(fanned)} s, **{statistics.median(ratios):.2f}x** "
            f"({min(ratios):.2f}-{max(ratios):.2f}). With more cores free the files still wait for the largest "
            "components and then for the slowest file.",
            "",
            "Against inference of the same series: on an H200 the GPU bench's 3-member ensemble took "
            f"{H200_FP32[0]}-{H200_FP32[1]} s of device time per series of 200-300 slices (fp32; "
            f"{H200_BF16[0]}-{H200_BF16[1]} s in bf16; see the GPU section). Where a GPU machine's writer processes "
            "are free, a series' export of the organ-like map waits for its largest components and then for its "
            f"slowest file ({slowest}): {waited:.2f} s here (medians), {_against_inference(waited)}. Export runs "
            "off the device "
            "loop, in writer processes on the spare cores: with 8 of them it keeps up while each series' export "
            "stays under 8 times its inference time, and only the last series' export adds to a run's wall time.",
            "",
        ]
    )


def _process_walls(
    package: Any, formats: Any, job: Any, volume: Any, labels: np.ndarray, root: Path, repeats: int
) -> dict[str, list[float]]:
    """``_in_processes`` ``repeats`` times, after a warm-up call (imports in fresh processes)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    spawn = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(1, mp_context=spawn) as one,
        ProcessPoolExecutor(FANNED_PROCESSES, mp_context=spawn) as fanned,
    ):
        pools = {"one process": one, f"{FANNED_PROCESSES} processes": fanned}
        _in_processes(pools, package, formats, job, volume, labels, root / "warm-up")
        walls: dict[str, list[float]] = {way: [] for way in pools}
        for r in range(repeats):
            for way, seconds in _in_processes(pools, package, formats, job, volume, labels, root / f"w{r}").items():
                walls[way].append(seconds)
    return walls
