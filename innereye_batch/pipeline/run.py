"""`innereye-batch run`: source -> plan -> DataLoader -> predictor on the device -> writer pool -> summary.

Decoding happens in DataLoader workers, inference in this process, writing in a small thread pool, so the three
overlap. At most a bounded number of items is in flight at each stage; per item only an ItemResult is kept. The
loop is task-independent: the model's task picks the predictor (``tasks/``) and the output formats
(``writers/registry.py``).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from innereye_batch import __version__
from innereye_batch.dicom.series import SkippedFile
from innereye_batch.engine.memory import run_peak_memory_gib
from innereye_batch.errors import EXIT_OK, EXIT_SOME_FAILED, UsageError
from innereye_batch.model.spec import ModelPackage
from innereye_batch.pipeline.plan import DEFAULT_MAX_VOXELS, Selection, plan_run, results_hold
from innereye_batch.pipeline.process import Job, item_result
from innereye_batch.pipeline.progress import RunProgress
from innereye_batch.pipeline.ray_executor import RayOptions
from innereye_batch.pipeline.run_summaries import remove_earlier_summaries, write_summaries
from innereye_batch.pipeline.shards import Shard, plan_fingerprint
from innereye_batch.pipeline.sources import FolderSource, Source
from innereye_batch.pipeline.state import input_fingerprint
from innereye_batch.results import UNFINISHED, ItemResult
from innereye_batch.tasks import task_for
from innereye_batch.tasks.base import Predictor, PredictorOptions
from innereye_batch.text import printable, relative_paths
from innereye_batch.writers.registry import OutputFormat, WriterOptions, resolve_formats

if TYPE_CHECKING:
    import torch

    from innereye_batch.pipeline.executors import RunContext


@dataclass(frozen=True)
class RunOptions:
    """Everything `innereye-batch run` accepts."""

    model: Path
    input: Path
    output: Path
    device: str = "auto"
    workers: int = 2
    decode_timeout_s: float = 1800.0
    """Longest a decoding worker may take over one series before the series fails (0: no limit)."""
    write_timeout_s: float = 1800.0
    """Longest the writers may take over one series' outputs before the series fails (0: no limit)."""
    patch_batch: int = 0
    """Segmentation: patches per forward pass; 0 chooses from the device (free memory on CUDA)."""
    amp: bool = False
    gpu_memory_gib: float | None = None
    """--gpu-memory: what torch may allocate on each GPU, GiB (None: all it has)."""
    formats: tuple[str, ...] = ()
    """Output format names; empty means every format of the model's task."""
    series_uids: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    overwrite: bool = False
    verify_outputs: bool = False
    """A done series is skipped only when its outputs' sha256 equal those recorded; one whose outputs changed is
    redone (named in summary.json run.changed_outputs)."""
    dry_run: bool = False
    fail_fast: bool = False
    trust_checkpoint: bool = False
    writer_threads: int = 2
    writer_processes: int | None = None
    """Writer processes; None: one per core left over when a GPU runs the model, else threads (0)."""
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
    devices: tuple[str, ...] = ()
    """--devices: one model replica per device (GPU indices, cuda:N, cpu, or all); empty: see devices.py."""
    shard: Shard | None = None
    """--shard K/N: only this shard's items (shards.py); the summary is merged when the last shard finishes."""
    executor: str = "local"
    """local (this machine: --devices) or ray (actors on a Ray cluster: ray_executor.py)."""
    ray: RayOptions = field(default_factory=RayOptions)


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
    merged: bool = False
    """With --shard: whether this shard merged the shard summaries into summary.json (it finished last)."""
    merged_unfinished: int = 0
    """With --shard, when this shard merged: series of summary.json (every shard's) that failed or were not run;
    the exit code then says so, as it does for the series of an unsharded run."""
    shard_note: str = ""
    """With --shard: what became of the summary (merged, or which shards it waits for)."""
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        unfinished = any(r.status in UNFINISHED for r in self.results) or self.merged_unfinished
        failed = self.summary_error or unfinished
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

    settings: dict[str, object] = {"writers": asdict(options.writer_options), "explain": options.explain}
    if options.amp:  # mixed precision changes the numbers (only when on: fp32 results keep their fingerprint)
        settings["amp"] = True
    return results_fingerprint(package.fingerprint(), settings)


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
    if (options.series_uids or options.modalities) and not any(selection(s) for s in scan.series):
        chosen = ", ".join([*options.series_uids, *options.modalities])
        progress.event(
            "selection", message=f"--series/--modality ({chosen}) match none of the {len(scan.series)} series found"
        )

    def plan() -> tuple[list[Job], RunReport, str]:
        jobs, settled = plan_run(
            scan,
            package,
            formats,
            options.output,
            selection=selection,
            overwrite=options.overwrite,
            max_voxels=options.max_voxels,
            model_fp=run_fingerprint(package, options),
            shard=options.shard,
            clear_failed=not options.dry_run,
            verify=options.verify_outputs,
        )
        skipped = tuple(
            SkippedFile(Path(relative_paths(str(f.path), root)), relative_paths(f.reason, root)) for f in scan.skipped
        )
        # each series with its files as scanned: shards that saw the inputs in other states cannot merge
        cohort = [f"{s.key}\0{input_fingerprint(s)}" for s in scan.series if selection(s)]
        plan_fp = plan_fingerprint(cohort + [f"file:{f.path}" for f in skipped])
        if options.shard is not None:
            skipped = tuple(f for f in skipped if options.shard.owns(f"file:{f.path}"))
        return jobs, RunReport(results=[_relative(r, root) for r in settled], skipped_files=skipped), plan_fp

    if options.dry_run:
        if options.executor == "local":  # what the run would refuse, the dry run refuses too
            from innereye_batch.pipeline.devices import run_devices

            run_devices(options.device, options.devices)
        jobs, report, _ = plan()
        report.planned = [_planned_run(j) for j in jobs]
        report.planned += [{"key": r.key, "action": r.status, "reason": r.reason} for r in report.results]
        return report
    from innereye_batch.pipeline.library_log import library_messages_to
    from innereye_batch.pipeline.state import output_lock

    with output_lock(options.output, options.shard), library_messages_to(progress, root):
        remove_earlier_summaries(options)  # first: should planning fail, no summary vouches for an earlier run
        # planned under the lock: what is done is read once no other run can change it
        jobs, report, plan_fp = plan()
        holds = None
        if options.shard is not None:  # the merge checks that the other shards' results still hold
            model_fp = run_fingerprint(package, options)
            holds = results_hold(scan, package, formats, options.output, selection=selection, model_fp=model_fp)
        return _execute(options, package, formats, source, root, jobs, report, progress, plan_fp, holds)


def _execute(
    options: RunOptions,
    package: ModelPackage,
    formats: Sequence[OutputFormat],
    source: Source,
    root: Path | None,
    jobs: list[Job],
    report: RunReport,
    progress: RunProgress,
    plan_fp: str,
    holds: Callable[[ItemResult], bool] | None = None,
) -> RunReport:
    from innereye_batch.pipeline.executors import RunContext
    from innereye_batch.pipeline.state import orphaned_results, remove_stale_temporaries, safe_folder_name

    started = datetime.datetime.now(datetime.timezone.utc)
    wall = time.perf_counter()
    shard = options.shard
    # a shard cleans only its own series' folders, done ones too (a run killed after a series' done record, before
    # its temporary label map went): the other shards may be writing theirs right now
    owned = [j.folder for j in jobs] + [options.output / safe_folder_name(r.key) for r in report.results]
    removed = remove_stale_temporaries(options.output, owned if shard else None)
    if removed:
        progress.event("cleanup", message=f"removed {removed} temporary file(s) left by an interrupted run")
    whole_input = shard is None and not options.series_uids and not options.modalities
    orphans = orphaned_results(options.output, owned) if whole_input else []
    if orphans:  # a rerun after series left the input: their results stay, but no summary row vouches for them
        shown = ", ".join(orphans[:5]) + (f" and {len(orphans) - 5} more" if len(orphans) > 5 else "")
        progress.event(
            "orphaned_results",
            message=f"{len(orphans)} folder(s) of {options.output} hold results of series no longer in the input "
            f"(deleted, or their files relabelled), kept and left out of the summary: {shown}",
        )

    changed = {printable(j.item.key): list(j.changed_outputs) for j in jobs if j.changed_outputs}
    if changed:  # a done result whose files were altered after they were written: redone, and said
        progress.event(
            "changed_outputs",
            message=f"{len(changed)} done series had outputs that changed since they were written, redone: "
            + "; ".join(_changed_text(j) for j in jobs if j.changed_outputs)[:2000],
        )

    def record(result: ItemResult) -> None:
        result = _relative(result, root)
        report.results.append(result)
        progress.series_done(result)

    context = RunContext(
        package=package,
        formats=formats,
        model_fp=run_fingerprint(package, options),
        writer_options=options.writer_options,
        predictor_options=PredictorOptions(
            patch_batch=options.patch_batch,
            batch_size=options.batch_size,
            amp=options.amp,
            explain=options.explain,
            gpu_memory_gib=options.gpu_memory_gib,
        ),
        record=record,
        fail_fast=options.fail_fast,
        failed_seen=any(r.status == "failed" for r in report.results),
    )
    device = "not started"
    try:
        device = _run_jobs(options, context, jobs, report, progress)
    finally:
        # Writes in flight finished before the executor returned (also on Ctrl-C / SIGTERM) and were recorded:
        # now every item the run never reached, so the summary accounts for the whole plan.
        finished = {r.key for r in report.results}
        stopped_by_failure = options.fail_fast and context.failed_seen and not context.interrupted.is_set()
        reason = "--fail-fast stopped the run after a failure" if stopped_by_failure else "the run was interrupted"
        for job in jobs:
            if job.item.key not in finished:
                report.results.append(item_result(job.item.primary, "not_run", f"not run: {reason}"))
        progress.stop()
        report.stage_seconds = _stage_totals(report.results, time.perf_counter() - wall)
        run_info = {
            "tool": "innereye-batch",
            "tool_version": __version__,
            "model_name": package.name,
            "model_task": package.task,
            "model_fingerprint": package.fingerprint(),
            "results_fingerprint": context.model_fp,
            "plan_fingerprint": plan_fp,
            "model_folder": str(options.model),
            "input": source.description,
            "device": device,
            "formats": [f.name for f in formats],
            "options": {
                "max_voxels": options.max_voxels,
                "regrid_irregular": options.regrid_irregular,
                "amp": options.amp,
            },
            "started": started.isoformat(),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "stage_seconds": report.stage_seconds,
            "peak_memory_gib": run_peak_memory_gib(),
        }
        if whole_input:
            run_info["orphaned_results"] = orphans
        if options.verify_outputs:
            run_info["changed_outputs"] = changed
        write_summaries(options, report, run_info, progress, holds)
    return report


def _planned_run(job: Job) -> dict[str, str]:
    planned = {"key": job.item.key, "action": "run", "folder": str(job.folder)}
    if job.changed_outputs:
        planned["reason"] = _changed_text(job)
    return planned


def _changed_text(job: Job) -> str:
    return f"{printable(job.item.key)}: {', '.join(job.changed_outputs)} changed since written (--verify-outputs)"


def _run_jobs(
    options: RunOptions, context: RunContext, jobs: list[Job], report: RunReport, progress: RunProgress
) -> str:
    """The planned jobs through the chosen executor; returns the device(s) for the summary."""
    from innereye_batch.pipeline.devices import run_devices
    from innereye_batch.pipeline.executors import device_names, load_replicas, run_local

    if options.executor == "ray":
        from innereye_batch.pipeline.ray_executor import run_ray

        for result in list(report.results):
            progress.series_done(result)
        return run_ray(context, jobs, options, progress)
    devices = run_devices(options.device, options.devices)
    predictors = load_replicas(context, devices, options.trust_checkpoint)
    for result in list(report.results):
        progress.series_done(result)
    progress.start(len(jobs))
    run_local(
        context,
        jobs,
        predictors,
        devices,
        workers=options.workers,
        writer_threads=options.writer_threads,
        writer_processes=options.writer_processes,
        decode_timeout=options.decode_timeout_s,
        write_timeout=options.write_timeout_s,
    )
    return device_names(devices)


def _stage_totals(results: Sequence[ItemResult], wall_seconds: float) -> dict[str, float]:
    totals: dict[str, float] = {}
    for result in results:
        for stage, seconds in result.timings.items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    totals = {k: round(v, 3) for k, v in totals.items()}
    totals["wall"] = round(wall_seconds, 3)
    return totals
