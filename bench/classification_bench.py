"""Classification throughput: images/second of the sample chest X-ray ensemble at batch 1 and batch 32.

Two ways, same images and weights: the predictor alone (images decoded beforehand: forward passes, ensemble mean,
labels) and `run` end to end (decoding in 2 loader workers, JSON written per image).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "sample_data" / "cxr_model"
IMAGES = 64
BATCHES = (1, 32)


def _write_images(folder: Path) -> None:
    from tools.make_cxr_sample import SCANS, scan_dataset

    folder.mkdir(parents=True)
    template = SCANS[0]
    for i in range(IMAGES):
        plan = replace(template, name=f"bench_{i:03d}.dcm", seed=50_000 + i, nodule=bool(i % 2))
        scan_dataset(plan).save_as(folder / plan.name, enforce_file_format=True)


def _predictor_rate(scans: Path, batch: int) -> float:
    from innereye_batch.engine.device import resolve_device
    from innereye_batch.model.checkpoints import load_networks
    from innereye_batch.model.package import load_model_package
    from innereye_batch.pipeline.plan import plan_run
    from innereye_batch.pipeline.run import make_predictor
    from innereye_batch.pipeline.sources import FolderSource
    from innereye_batch.tasks.base import PredictorOptions
    from innereye_batch.writers.registry import resolve_formats

    package = load_model_package(MODEL)
    predictor = make_predictor(
        package, load_networks(package), resolve_device("cpu"), PredictorOptions(batch_size=batch)
    )
    with tempfile.TemporaryDirectory() as out:
        jobs, _ = plan_run(FolderSource(scans).discover(), package, resolve_formats((), package.task), Path(out))
    items = [job.item for job in jobs]
    decoded = [predictor.decoder(item) for item in items]
    start = time.perf_counter()
    for first in range(0, len(items), batch):
        predictor.predict_batch(items[first : first + batch], decoded[first : first + batch])
    return len(items) / (time.perf_counter() - start)


def _run_rate(scans: Path, batch: int, out: Path) -> float:
    from innereye_batch.pipeline.run import RunOptions, run_batch

    start = time.perf_counter()
    report = run_batch(RunOptions(model=MODEL, input=scans, output=out, device="cpu", workers=2, batch_size=batch))
    seconds = time.perf_counter() - start
    assert report.exit_code == 0, [r.reason for r in report.results if r.status == "failed"]
    return IMAGES / seconds


def run(repeats: int = 3) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        scans = root / "scans"
        _write_images(scans)
        predictor: dict[int, list[float]] = {b: [] for b in BATCHES}
        end_to_end: dict[int, list[float]] = {b: [] for b in BATCHES}
        for r in range(repeats):  # interleaved, so that load from elsewhere falls on both alike
            for batch in BATCHES:
                predictor[batch].append(_predictor_rate(scans, batch))
                end_to_end[batch].append(_run_rate(scans, batch, root / f"out_{batch}_{r}"))

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"

    rows = [f"| {b} | {cell(predictor[b])} | {cell(end_to_end[b])} |" for b in BATCHES]
    first, last = BATCHES[0], BATCHES[-1]
    gain = statistics.median(predictor[last]) / statistics.median(predictor[first])
    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return "\n".join(
        [
            "## Classification: images per second at batch 1 and batch 32",
            "",
            f"{IMAGES} synthetic 256x256 CR chest images, the sample three-member CNN2D ensemble "
            f"(`sample_data/cxr_model`), on {device} with {torch.get_num_threads()} threads. Median of {repeats} "
            "runs (range in brackets), batch sizes interleaved. *Predictor*: forward passes, ensemble mean and "
            "labels of images decoded beforehand. *run*: `innereye-batch run --batch-size N` end to end (scan, 2 "
            "decoding workers, predictions.json per image, summary).",
            "",
            "| batch | predictor (images/s) | run end to end (images/s) |",
            "|---:|---:|---:|",
            *rows,
            "",
            f"Batching {last} images per forward pass: {gain:.1f}x the predictor's rate at batch {first}. End to end,",
            "decoding, writing and start-up take their share: on a GPU the forward pass is the smaller part still.",
            "",
        ]
    )
