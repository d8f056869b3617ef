"""`innereye-batch run`: source -> plan -> DataLoader -> predictor on the device -> writer pool -> summary.

Decoding happens in DataLoader workers, inference in this process, writing in a small thread pool, so the three
overlap. At most a bounded number of items is in flight at each stage; per item only an ItemResult is kept. The
loop is task-independent: the model's task picks the predictor (``tasks/``) and the output formats
(``writers/registry.py``).
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from innereye_batch import __version__
from innereye_batch.dicom.series import SkippedFile
from innereye_batch.errors import EXIT_OK, EXIT_SOME_FAILED, UsageError
from innereye_batch.model.spec import ModelPackage
from innereye_batch.pipeline.loader import LoadedItem
from innereye_batch.pipeline.plan import DEFAULT_MAX_VOXELS, Selection, plan_run
from innereye_batch.pipeline.process import Job, item_result, write_outputs
from innereye_batch.pipeline.progress import RunProgress
from innereye_batch.pipeline.sources import FolderSource, Source
from innereye_batch.results import ItemResult
from innereye_batch.tasks import task_for
from innereye_batch.tasks.base import Prediction, Predictor, PredictorOptions
from innereye_batch.text import relative_paths
from innereye_batch.writers.registry import OutputFormat, WriterOptions, resolve_formats

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RunOptions:
    """Everything `innereye-batch run` accepts."""

    model: Path
    input: Path
    output: Path
    device: str = "auto"
    workers: int = 2
    patch_batch: int = 0
    """Segmentation: patches per forward pass; 0 chooses from the device (free memory on CUDA)."""
    amp: bool = False
    formats: tuple[str, ...] = ()
    """Output format names; empty means every format of the model's task."""
    series_uids: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    overwrite: bool = False
    dry_run: bool = False
    fail_fast: bool = False
    trust_checkpoint: bool = False
    writer_threads: int = 2
    batch_size: int = 16
    """Classification: images per forward pass."""
    explain: tuple[str, ...] = ()
    """Classification: explanation methods (gradcam, integrated-gradients, gradient-shap)."""
    max_voxels: int = DEFAULT_MAX_VOXELS
    """Largest grid (source or resampled) a series may have; larger ones fail before any decoding."""
    regrid_irregular: bool = False
    """Resample tilted and variable-spacing stacks onto a regular grid instead of refusing them."""
    writer_options: WriterOptions = field(default_factory=WriterOptions)
    """--seg-type and --clinical-marker, passed to every writer."""
    preview: bool = True
    """False (--no-preview): no preview.png, even when the formats name it."""


@dataclass
class RunReport:
    """The outcome of a run: one result per item, the summary files, stage totals."""

    results: list[ItemResult] = field(default_factory=list)
    skipped_files: tuple[SkippedFile, ...] = ()
    """Files the source found but could not use (paths relative to the input folder), with the reason."""
    planned: list[dict[str, str]] = field(default_factory=list)
    """With --dry-run: what would happen to each item."""
    summary_paths: tuple[Path, ...] = ()
    summary_error: str = ""
    """Why the summary could not be written (e.g. the disk is full); empty when it was."""
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        failed = self.summary_error or any(r.status == "failed" for r in self.results)
        return EXIT_SOME_FAILED if failed else EXIT_OK


def _relative(result: ItemResult, root: Path | None) -> ItemResult:
    """The result with paths in its reason relative to the input folder (folder names often name the patient)."""
    if root is None or not result.reason:
        return result
    return replace(result, reason=relative_paths(result.reason, root))


def make_predictor(
    package: ModelPackage,
    networks: list[torch.nn.Module],
    device: torch.device,
    options: PredictorOptions | None = None,
) -> Predictor:
    """The predictor of the package's task for loaded ``networks`` on ``device``."""
    return task_for(package.task).predictor(package, networks, device, options or PredictorOptions())


def run_fingerprint(package: ModelPackage, options: RunOptions) -> str:
    """What a done record vouches for: the model and every option that changes what is written."""
    from dataclasses import asdict

    from innereye_batch.pipeline.state import results_fingerprint

    return results_fingerprint(
        package.fingerprint(), {"writers": asdict(options.writer_options), "explain": options.explain}
    )


def _check_explain_methods(methods: Sequence[str]) -> None:
    from innereye_batch.engine.explain import EXPLAIN_METHODS, captum_attr

    unknown = [m for m in methods if m not in EXPLAIN_METHODS]
    if unknown:
        raise UsageError(
            f"unknown explanation method(s) {', '.join(unknown)}; choose from {', '.join(EXPLAIN_METHODS)}"
        )
    if methods:
        captum_attr()  # a clear UsageError now, before any work, when captum is not installed


def run_batch(options: RunOptions, progress: RunProgress | None = None, source: Source | None = None) -> RunReport:
    """Run the model over every selected series of ``source`` (default: the folder ``options.input``)."""
    from innereye_batch.model.package import load_model_package

    progress = progress or RunProgress(quiet=True)
    if source is None:
        if not options.input.is_dir():
            raise UsageError(f"input folder not found: {options.input}")
        source = FolderSource(options.input, regrid_irregular=options.regrid_irregular)
    package = load_model_package(options.model)
    if options.explain and package.task != "classification":
        raise UsageError(f"--explain applies to classification models; {package.name} is a {package.task} model")
    _check_explain_methods(options.explain)
    formats = resolve_formats(options.formats, package.task, explaining=bool(options.explain))
    if not options.preview:
        formats = tuple(f for f in formats if f.name != "preview")
    selection = Selection(options.series_uids, options.modalities)
    root: Path | None = getattr(source, "root", None)
    scan = source.discover()
    jobs, settled = plan_run(
        scan,
        package,
        formats,
        options.output,
        selection=selection,
        overwrite=options.overwrite,
        max_voxels=options.max_voxels,
        model_fp=run_fingerprint(package, options),
    )
    skipped_files = tuple(SkippedFile(Path(relative_paths(str(f.path), root)), f.reason) for f in scan.skipped)
    report = RunReport(results=[_relative(r, root) for r in settled], skipped_files=skipped_files)
    if options.dry_run:
        report.planned = [{"key": j.item.key, "action": "run", "folder": str(j.folder)} for j in jobs]
        report.planned += [{"key": r.key, "action": r.status, "reason": r.reason} for r in settled]
        return report
    from innereye_batch.pipeline.library_log import library_messages_to
    from innereye_batch.pipeline.state import output_lock

    with output_lock(options.output), library_messages_to(progress, root):
        return _execute(options, package, formats, source, root, jobs, report, progress)


def _execute(
    options: RunOptions,
    package: ModelPackage,
    formats: Sequence[OutputFormat],
    source: Source,
    root: Path | None,
    jobs: list[Job],
    report: RunReport,
    progress: RunProgress,
) -> RunReport:
    from innereye_batch.engine.device import resolve_device
    from innereye_batch.model.checkpoints import load_networks
    from innereye_batch.pipeline.loader import load_items
    from innereye_batch.pipeline.state import remove_stale_temporaries
    from innereye_batch.writers.run_report import write_run_report
    from innereye_batch.writers.summary import write_summary

    started = datetime.datetime.now(datetime.timezone.utc)
    wall = time.perf_counter()
    removed = remove_stale_temporaries(options.output)
    if removed:
        progress.event("cleanup", message=f"removed {removed} temporary file(s) left by an interrupted run")
    device = resolve_device(options.device)
    networks = load_networks(package, device=device, trust_checkpoint=options.trust_checkpoint)
    predictor_options = PredictorOptions(
        patch_batch=options.patch_batch, batch_size=options.batch_size, amp=options.amp, explain=options.explain
    )
    predictor = make_predictor(package, networks, device, predictor_options)
    model_fp = run_fingerprint(package, options)
    for result in report.results:
        progress.series_done(result)
    progress.start(len(jobs))

    slots = threading.BoundedSemaphore(max(2 * options.writer_threads, 1))
    pending: list[Future[ItemResult]] = []
    lock = threading.Lock()

    def finish(result: ItemResult) -> None:
        result = _relative(result, root)
        report.results.append(result)
        progress.series_done(result)

    def collect(done_only: bool) -> None:
        with lock:
            for future in [f for f in pending if f.done() or not done_only]:
                finish(future.result())
                pending.remove(future)

    fail_fast_stop = False
    loader = load_items(
        [j.item for j in jobs], predictor.decoder, workers=options.workers, pin_memory=device.type == "cuda"
    )
    batch: list[tuple[Job, LoadedItem]] = []

    def predict_and_write(pool: ThreadPoolExecutor) -> None:
        """The batch through the model (one item at a time again if the batch fails), each result to a writer."""
        items = [job.item for job, _ in batch]
        try:
            predictions: list[Prediction | Exception] = list(
                predictor.predict_batch(items, [loaded.decoded for _, loaded in batch])  # type: ignore[misc]
            )
        except Exception:  # find the item that failed: the others still run
            predictions = []
            for job, loaded in batch:
                try:
                    predictions.append(predictor.predict(job.item, loaded.decoded))
                except Exception as error:
                    predictions.append(error)
        for (job, loaded), prediction in zip(batch, predictions, strict=True):
            if isinstance(prediction, Exception):  # one item's failure never stops the others
                reason = f"inference: {type(prediction).__name__}: {prediction}"
                finish(item_result(job.item.primary, "failed", reason, timings={"load": loaded.load_seconds}))
                continue
            timings = {"load": loaded.load_seconds, **prediction.timings}
            slots.acquire()
            future = pool.submit(
                write_outputs, job, prediction, formats, package, model_fp, timings, options.writer_options
            )
            future.add_done_callback(lambda _: slots.release())
            pending.append(future)
        batch.clear()

    try:
        with ThreadPoolExecutor(max_workers=max(options.writer_threads, 1)) as pool:
            for loaded in loader:
                job = jobs[loaded.index]
                if loaded.decoded is None:
                    finish(item_result(job.item.primary, "failed", loaded.error, timings={"load": loaded.load_seconds}))
                else:
                    batch.append((job, loaded))
                    if len(batch) >= predictor.batch_size:
                        predict_and_write(pool)
                del loaded
                collect(done_only=True)
                if options.fail_fast and any(r.status == "failed" for r in report.results):
                    fail_fast_stop = True
                    break
            if batch and not fail_fast_stop:
                predict_and_write(pool)
            collect(done_only=False)
    finally:
        loader.close()  # stops the decoding workers now, also after --fail-fast or an interrupt
        # Writes in flight finished when the pool closed (also on Ctrl-C / SIGTERM): record them, then every
        # item the run never reached, so the summary accounts for the whole plan.
        report.results.extend(_relative(f.result(), root) for f in pending if f.done() and not f.cancelled())
        finished = {r.key for r in report.results}
        reason = "--fail-fast stopped the run after a failure" if fail_fast_stop else "the run was interrupted"
        for job in jobs:
            if job.item.key not in finished:
                report.results.append(item_result(job.item.primary, "skipped", f"not run: {reason}"))
        progress.stop()
        report.stage_seconds = _stage_totals(report.results, time.perf_counter() - wall)
        run_info = {
            "tool": "innereye-batch",
            "tool_version": __version__,
            "model_name": package.name,
            "model_task": package.task,
            "model_fingerprint": package.fingerprint(),
            "results_fingerprint": model_fp,
            "model_folder": str(options.model),
            "input": source.description,
            "device": str(device),
            "formats": [f.name for f in formats],
            "started": started.isoformat(),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "stage_seconds": report.stage_seconds,
        }
        try:
            report.summary_paths = tuple(
                write_summary(options.output, report.results, run_info=run_info, skipped_files=report.skipped_files)
            )
            # the page a person reads, after the summary
            report.summary_paths += (write_run_report(options.output, report.results, run_info),)
        except OSError as error:  # e.g. the disk is full: say so, never a traceback
            report.summary_error = f"{type(error).__name__}: {error}"
            progress.event("summary_failed", message=f"the run summary could not be written: {report.summary_error}")
    return report


def _stage_totals(results: Sequence[ItemResult], wall_seconds: float) -> dict[str, float]:
    totals: dict[str, float] = {}
    for result in results:
        for stage, seconds in result.timings.items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    totals = {k: round(v, 3) for k, v in totals.items()}
    totals["wall"] = round(wall_seconds, 3)
    return totals
