"""`innereye-batch run`: scan -> plan -> DataLoader -> model on the device -> writer pool -> summary.

Decoding happens in DataLoader workers, inference in this process, writing in a small thread pool, so the three
overlap. At most a bounded number of series is in flight at each stage; per series only a SeriesResult is kept.
"""

from __future__ import annotations

import datetime
import hashlib
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from innereye_batch import __version__
from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.errors import EXIT_OK, EXIT_SOME_FAILED, UsageError
from innereye_batch.model.spec import ModelPackage
from innereye_batch.pipeline.channels import WorkItem, plan_work
from innereye_batch.pipeline.progress import RunProgress
from innereye_batch.pipeline.result import SeriesResult
from innereye_batch.pipeline.state import (
    atomic_write,
    input_fingerprint,
    is_done,
    mark_done,
    mark_not_done,
    output_lock,
    remove_stale_temporaries,
    series_folder,
)

OUTPUT_FILES = {"nifti": "segmentation.nii.gz", "dicom-seg": "segmentation.dcm", "json": "predictions.json"}


@dataclass(frozen=True)
class RunOptions:
    """Everything `innereye-batch run` accepts."""

    model: Path
    input: Path
    output: Path
    device: str = "auto"
    workers: int = 2
    patch_batch: int = 1
    amp: bool = False
    formats: tuple[str, ...] = tuple(OUTPUT_FILES)
    series_uids: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    overwrite: bool = False
    dry_run: bool = False
    fail_fast: bool = False
    trust_checkpoint: bool = False
    writer_threads: int = 2


@dataclass
class RunReport:
    """The outcome of a run: one result per series, the summary files, stage totals."""

    results: list[SeriesResult] = field(default_factory=list)
    planned: list[dict[str, str]] = field(default_factory=list)
    """With --dry-run: what would happen to each series."""
    summary_paths: tuple[Path, ...] = ()
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if any(r.status == "failed" for r in self.results) else EXIT_OK


@dataclass(frozen=True)
class _Job:
    item: WorkItem
    folder: Path
    input_fp: str


def _result(series: SeriesInfo, status: str, reason: str = "", **extra: Any) -> SeriesResult:
    return SeriesResult(
        key=series.key,
        series_instance_uid=series.series_instance_uid,
        study_instance_uid=series.study_instance_uid,
        modality=series.modality,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        **extra,
    )


def _selected(series: SeriesInfo, options: RunOptions) -> bool:
    if options.series_uids and not {series.series_instance_uid, series.key} & set(options.series_uids):
        return False
    return not options.modalities or series.modality.upper() in {m.upper() for m in options.modalities}


def _item_fingerprint(item: WorkItem) -> str:
    return hashlib.sha256("|".join(input_fingerprint(s) for s in item.inputs).encode()).hexdigest()


def _write_outputs(
    job: _Job,
    labels: np.ndarray,
    geometry: Geometry,
    timings: dict[str, float],
    package: ModelPackage,
    model_fp: str,
    formats: Sequence[str],
) -> SeriesResult:
    """Write every requested output atomically, then the done record; runs in the writer pool."""
    from innereye_batch.writers.predictions import build_predictions, structure_stats, write_json

    series = job.item.primary
    start = time.perf_counter()
    stats = structure_stats(labels, geometry, package.structure_names)
    written: dict[str, Path] = {}
    mark_not_done(job.folder)
    for fmt in formats:
        if fmt == "json":
            continue
        path = job.folder / OUTPUT_FILES[fmt]
        try:
            if fmt == "nifti":
                from innereye_batch.writers.nifti import write_label_map

                atomic_write(path, lambda p: write_label_map(p, labels, geometry))
            else:
                from innereye_batch.writers.dicom_seg import write_dicom_seg

                atomic_write(path, lambda p: write_dicom_seg(p, labels, series, package, software_version=__version__))
        except Exception as error:
            return _result(series, "failed", f"writing {fmt}: {type(error).__name__}: {error}", timings=timings)
        written[fmt] = path
    timings = {**timings, "write": time.perf_counter() - start}
    if "json" in formats:
        document = build_predictions(
            package=package,
            series=series,
            geometry=geometry,
            structures=stats,
            timings=timings,
            tool_version=__version__,
        )
        path = job.folder / OUTPUT_FILES["json"]
        atomic_write(path, lambda p: write_json(p, document))
        written["json"] = path
    mark_done(job.folder, job.input_fp, model_fp, written)
    outputs = {fmt: str(p.relative_to(job.folder.parent)) for fmt, p in written.items()}
    return _result(series, "ok", structures=stats, timings=timings, outputs=outputs)


def _write_guarded(job: _Job, *args: Any) -> SeriesResult:
    """_write_outputs, with any unexpected error turned into this series' failure."""
    try:
        return _write_outputs(job, *args)
    except Exception as error:
        return _result(job.item.primary, "failed", f"writing outputs: {type(error).__name__}: {error}")


def plan(options: RunOptions, package: ModelPackage) -> tuple[list[_Job], list[SeriesResult]]:
    """Scan the input and decide per series: run it, skip it (done or not for this model), or fail it."""
    from innereye_batch.dicom.scan import scan_tree

    scan = scan_tree(options.input)
    series = [s for s in scan.series if _selected(s, options)]
    items, unmatched = plan_work(series, package.channels)
    settled = [_result(u.series, "failed" if u.failed else "skipped", u.reason) for u in unmatched]
    model_fp = package.fingerprint()
    jobs = []
    for item in items:
        fatal = [f"{s.key}: {p}" for s in item.inputs for p in s.fatal_problems]
        if fatal:
            settled.append(_result(item.primary, "failed", "; ".join(fatal)))
            continue
        folder = series_folder(options.output, item.primary)
        fingerprint = _item_fingerprint(item)
        if not options.overwrite and is_done(folder, fingerprint, model_fp, options.formats):
            settled.append(_result(item.primary, "skipped", "already done with this model and input"))
            continue
        jobs.append(_Job(item, folder, fingerprint))
    return jobs, settled


def run_batch(options: RunOptions, progress: RunProgress | None = None) -> RunReport:
    """Run the model over every selected series under ``options.input``; see the module docstring."""
    from innereye_batch.model.package import load_model_package

    progress = progress or RunProgress(quiet=True)
    unknown = set(options.formats) - set(OUTPUT_FILES)
    if unknown or not options.formats:
        raise UsageError(f"unknown output format(s) {sorted(unknown)}; choose from {', '.join(OUTPUT_FILES)}")
    if not options.input.is_dir():
        raise UsageError(f"input folder not found: {options.input}")
    package = load_model_package(options.model)
    if package.task != "segmentation":
        raise UsageError(f"model {package.name} is a {package.task} model; `run` handles segmentation models")
    jobs, settled = plan(options, package)
    report = RunReport(results=list(settled))
    if options.dry_run:
        report.planned = [{"key": j.item.primary.key, "action": "run", "folder": str(j.folder)} for j in jobs]
        report.planned += [{"key": r.key, "action": r.status, "reason": r.reason} for r in settled]
        return report
    with output_lock(options.output):
        return _execute(options, package, jobs, report, progress)


def _execute(
    options: RunOptions, package: ModelPackage, jobs: list[_Job], report: RunReport, progress: RunProgress
) -> RunReport:
    import torch

    from innereye_batch.engine.device import resolve_device
    from innereye_batch.model.checkpoints import load_networks
    from innereye_batch.pipeline.inference import SegmentationRunner
    from innereye_batch.pipeline.loader import make_loader
    from innereye_batch.writers.summary import write_summary

    started = datetime.datetime.now(datetime.timezone.utc)
    wall = time.perf_counter()
    removed = remove_stale_temporaries(options.output)
    if removed:
        progress.event("cleanup", message=f"removed {removed} temporary file(s) left by an interrupted run")
    device = resolve_device(options.device)
    networks = load_networks(package, device=device, trust_checkpoint=options.trust_checkpoint)
    runner = SegmentationRunner(package, networks, device, patch_batch=options.patch_batch, amp=options.amp)
    model_fp = package.fingerprint()
    formats = tuple(f for f in OUTPUT_FILES if f in options.formats)
    for result in report.results:
        progress.series_done(result)
    progress.start(len(jobs))

    slots = threading.BoundedSemaphore(max(2 * options.writer_threads, 1))
    pending: list[Future[SeriesResult]] = []
    lock = threading.Lock()

    def collect(done_only: bool) -> None:
        with lock:
            for future in [f for f in pending if f.done() or not done_only]:
                result = future.result()
                report.results.append(result)
                progress.series_done(result)
                pending.remove(future)

    fail_fast_stop = False
    loader = make_loader([j.item for j in jobs], workers=options.workers, pin_memory=device.type == "cuda")
    try:
        with ThreadPoolExecutor(max_workers=max(options.writer_threads, 1)) as pool:
            for loaded in loader:
                job = jobs[loaded.index]
                series = job.item.primary
                if loaded.image is None or loaded.geometry is None:
                    result = _result(series, "failed", loaded.error, timings={"load": loaded.load_seconds})
                    report.results.append(result)
                    progress.series_done(result)
                else:
                    try:
                        labels, timings = runner(loaded.image, loaded.geometry)
                    except (RuntimeError, ValueError, torch.cuda.OutOfMemoryError) as error:
                        result = _result(series, "failed", f"inference: {type(error).__name__}: {error}")
                        report.results.append(result)
                        progress.series_done(result)
                    else:
                        timings = {"load": loaded.load_seconds, **timings}
                        slots.acquire()
                        future = pool.submit(
                            _write_guarded, job, labels, loaded.geometry, timings, package, model_fp, formats
                        )
                        future.add_done_callback(lambda _: slots.release())
                        pending.append(future)
                del loaded
                collect(done_only=True)
                if options.fail_fast and any(r.status == "failed" for r in report.results):
                    fail_fast_stop = True
                    break
            collect(done_only=False)
    finally:
        # Writes in flight finished when the pool closed (also on Ctrl-C / SIGTERM): record them, then every
        # series the run never reached, so the summary accounts for the whole plan.
        report.results.extend(f.result() for f in pending if f.done() and not f.cancelled())
        finished = {r.key for r in report.results}
        reason = "--fail-fast stopped the run after a failure" if fail_fast_stop else "the run was interrupted"
        for job in jobs:
            if job.item.primary.key not in finished:
                report.results.append(_result(job.item.primary, "skipped", f"not run: {reason}"))
        progress.stop()
        report.stage_seconds = _stage_totals(report.results, time.perf_counter() - wall)
        run_info = {
            "tool": "innereye-batch",
            "tool_version": __version__,
            "model_name": package.name,
            "model_fingerprint": model_fp,
            "model_folder": str(options.model),
            "input_folder": str(options.input),
            "device": str(device),
            "formats": list(formats),
            "started": started.isoformat(),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "stage_seconds": report.stage_seconds,
        }
        report.summary_paths = tuple(write_summary(options.output, report.results, run_info=run_info))
    return report


def _stage_totals(results: Sequence[SeriesResult], wall_seconds: float) -> dict[str, float]:
    totals: dict[str, float] = {}
    for result in results:
        for stage, seconds in result.timings.items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    totals = {k: round(v, 3) for k, v in totals.items()}
    totals["wall"] = round(wall_seconds, 3)
    return totals
