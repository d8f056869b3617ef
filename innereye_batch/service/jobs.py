"""The job worker: runs queued jobs, one at a time, through the same pipeline as `run`, and keeps the state dir.

A job is a zip a client posted to ``/v1/model/start``. The worker extracts it (``uploads.extract_zip``), scans
it (``FolderSource``), plans it (``plan_run``) and runs each planned item with ``process_item`` (the model's
forward passes through the device queue), then writes the run summary, exactly the outputs `run` writes. The
upload and its extraction are deleted as soon as the job ends, whatever its end; outputs stay until they expire.

Layout of ``--state-dir``: ``jobs.sqlite3`` (the store), ``uploads/<id>.zip`` (accepted, not yet finished),
``jobs/<id>/input`` (extracted while running), ``jobs/<id>/output`` (the outputs), ``predict/`` (images of
real-time requests, while they are decoded).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from innereye_batch import __version__
from innereye_batch.dicom.scan import ScanResult
from innereye_batch.dicom.series import SkippedFile
from innereye_batch.files import remove_tree
from innereye_batch.results import ItemResult
from innereye_batch.service.device import DeviceQueue, OnDevice
from innereye_batch.service.models import ServedModel
from innereye_batch.service.options import ServeOptions
from innereye_batch.service.responses import ExtraDetails
from innereye_batch.service.store import FINISHED_STATES, Job, JobStore
from innereye_batch.service.uploads import UploadRefused, extract_zip
from innereye_batch.text import printable, relative_paths

log = logging.getLogger("innereye_batch.service")
_INTERNAL_PREFIXES = ("inference:", "writing ")
"""Reasons ``process_item`` gives when the model or a writer failed (the service's fault, not the input's)."""


SEVERAL_SERIES = "the upload holds"
"""How the reason of a job refused for holding several series starts (its every output is still served)."""


def serves_every_output(http_status: int | None, reason: str) -> bool:
    """Whether ``?format=all`` answers a finished job with its output folder: when its InnerEye result is 200,
    or 400 only because the upload held several series (as docs/serve.md says); any other failure answers its
    error, so that a 200 never comes with a job that failed."""
    return http_status == 200 or (http_status == 400 and reason.startswith(SEVERAL_SERIES))


@dataclass(frozen=True)
class Outcome:
    """How a finished job answers ``GET /v1/model/results/<id>`` (InnerEye's result)."""

    state: str
    http_status: int
    extra_details: ExtraDetails | None = None
    reason: str = ""


def innereye_outcome(
    task: str, results: Sequence[ItemResult], scan: ScanResult, skipped: Sequence[SkippedFile]
) -> Outcome:
    """InnerEye's result holds one structure set: the upload must give exactly one series the model takes, and it
    must have succeeded. A classification job's result is every output; it needs one image that succeeded.
    ``skipped`` are the scan's files not used, paths relative to the upload."""
    if not scan.series:
        reasons = "; ".join(f"{printable(f.path)}: {printable(f.reason)}" for f in skipped[:5])
        return Outcome("failed", 400, ExtraDetails.INVALID_ZIP_FILE, f"no DICOM image in the upload ({reasons})")
    candidates = [r for r in results if r.status != "skipped"]
    if not candidates:
        reasons = "; ".join(f"{printable(r.key)}: {printable(r.reason)}" for r in results[:5])
        return Outcome("failed", 400, None, f"no series in the upload that the model takes ({reasons})")
    ok = [r for r in candidates if r.status == "ok"]
    if task == "segmentation" and len(candidates) > 1:
        return Outcome(
            "failed",
            400,
            None,
            f"{SEVERAL_SERIES} {len(candidates)} series the model takes; InnerEye's result is one structure set: "
            "send one series per job, or fetch every output with ?format=all",
        )
    if ok:
        return Outcome("succeeded", 200)
    failure = candidates[0]
    internal = failure.reason.startswith(_INTERNAL_PREFIXES)
    key = printable(failure.key)
    reason = printable(failure.reason)  # a series' reason starts with its key already
    return Outcome("failed", 500 if internal else 400, None, reason if reason.startswith(key) else f"{key}: {reason}")


class JobRunner:
    """Owns the state dir's files: runs jobs, recovers interrupted ones, deletes expired results."""

    def __init__(
        self,
        store: JobStore,
        models: Mapping[str, ServedModel],
        device_queue: DeviceQueue,
        options: ServeOptions,
        on_finished: Callable[[Job], None] | None = None,
    ) -> None:
        self.store = store
        self.models = models
        self.device_queue = device_queue
        self.options = options
        self.on_finished = on_finished
        self.state_dir = options.state_dir
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- paths -------------------------------------------------------------------------------------------------
    def upload_path(self, job_id: str) -> Path:
        return self.state_dir / "uploads" / f"{job_id}.zip"

    def job_dir(self, job_id: str) -> Path:
        return self.state_dir / "jobs" / job_id

    def output_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "output"

    # --- life cycle --------------------------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Before the worker starts: queue interrupted jobs again (their partial files removed) and delete every
        file of the state dir that no live job owns (interrupted uploads, expired or orphaned folders)."""
        for name in ("uploads", "jobs", "predict"):
            (self.state_dir / name).mkdir(parents=True, exist_ok=True)
        remove_tree(self.state_dir / "predict")
        (self.state_dir / "predict").mkdir()
        requeued = self.store.requeue_interrupted()
        for job_id in requeued:
            remove_tree(self.job_dir(job_id))
        queued = self.store.ids(("queued",))
        finished = self.store.ids(FINISHED_STATES)
        for upload in (self.state_dir / "uploads").iterdir():
            if upload.name.removesuffix(".zip") not in queued:
                upload.unlink(missing_ok=True)
        for folder in (self.state_dir / "jobs").iterdir():
            remove_tree(folder if folder.name not in finished else folder / "input")
        return requeued

    def start(self) -> None:
        for target, name in ((self._work, "jobs"), (self._janitor, "janitor")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> bool:
        """Stop taking jobs; a job running now is left ``running`` and queued again at the next start-up.
        True when every thread has stopped."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=2)
        return not any(thread.is_alive() for thread in self._threads)

    def wake(self) -> None:
        """A job was queued."""
        self._wake.set()

    # --- the worker --------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim_next()
                if job is None:
                    self._wake.wait(timeout=1.0)
                    self._wake.clear()
                    continue
                self.run_job(job)
            except Exception:  # the store failed (a full disk): the worker waits and goes on, it never dies
                log.exception("the job worker failed; trying again in %g s", _RETRY_SECONDS)
                self._stop.wait(timeout=_RETRY_SECONDS)

    def run_job(self, job: Job) -> None:
        """Run one claimed job to its end, record the end, then delete its upload and extracted input."""
        log.info("job %s (%s): attempt %d", job.id, job.model_id, job.attempts)
        try:
            outcome, report = self._execute(job)
        except Exception as error:  # a job never takes the worker down
            log.exception("job %s failed", job.id)
            outcome, report = Outcome("failed", 500, None, f"internal error: {type(error).__name__}"), None
        extra = outcome.extra_details.value if outcome.extra_details else None
        # the extracted input first: it frees the disk the end's record may need (a rerun extracts it again)
        remove_tree(self.job_dir(job.id) / "input")
        while True:
            try:
                self.store.finish(
                    job.id,
                    outcome.state,
                    http_status=outcome.http_status,
                    extra_details=extra,
                    reason=outcome.reason,
                    report=report,
                )
                break
            except Exception:  # e.g. "database or disk is full": the end is recorded once it can be
                log.exception("job %s: its end cannot be recorded; trying again in %g s", job.id, _RETRY_SECONDS)
                if self._stop.wait(timeout=_RETRY_SECONDS):
                    return  # left running: the next start-up queues it again, its upload kept
        # after the end is recorded: a kill in between leaves an upload that the next start-up deletes, never a
        # queued job without its upload
        self.upload_path(job.id).unlink(missing_ok=True)
        log.info("job %s: %s (%d)", job.id, outcome.state, outcome.http_status)
        finished = self.store.get(job.id)
        if self.on_finished is not None and finished is not None:
            self.on_finished(finished)

    def _execute(self, job: Job) -> tuple[Outcome, dict[str, Any] | None]:
        if job.attempts > self.options.max_attempts:
            reason = f"the service stopped {job.attempts - 1} times while running this job; it is not tried again"
            return Outcome("cancelled", 500, ExtraDetails.RUN_CANCELLED, reason), None
        served = self.models.get(job.model_id)
        if served is None:
            reason = f"model {job.model_id} is not served any more (the service was restarted without it)"
            return Outcome("cancelled", 500, ExtraDetails.RUN_CANCELLED, reason), None
        if job.results_fp is not None and job.results_fp != served.results_fp:
            reason = (
                f"model {job.model_id} changed since the job was accepted (results fingerprint "
                f"{job.results_fp[:16]} then, {served.results_fp[:16]} now): post the upload again to run the new one"
            )
            return Outcome("cancelled", 500, ExtraDetails.RUN_CANCELLED, reason), None
        if not self.upload_path(job.id).is_file():
            return Outcome("cancelled", 500, ExtraDetails.RUN_CANCELLED, "the upload of this job is gone"), None
        folder = self.job_dir(job.id)
        remove_tree(folder)  # what an interrupted attempt left
        self.store.progress(job.id, "extracting")
        try:
            extract_zip(self.upload_path(job.id), folder / "input", self.options.limits)
        except UploadRefused as refused:
            return Outcome("failed", 400, ExtraDetails.INVALID_ZIP_FILE, refused.reason), None
        except OSError as error:  # the service's own storage (full, read-only): the client may try again later
            remove_tree(folder / "input")
            reason = f"the service could not extract the upload: {error.strerror or type(error).__name__}"
            return Outcome("failed", 500, None, reason), None
        return self._run_pipeline(job, served, folder / "input", self.output_dir(job.id))

    def _run_pipeline(
        self, job: Job, served: ServedModel, input_dir: Path, output_dir: Path
    ) -> tuple[Outcome, dict[str, Any]]:
        """Scan, plan and run every item as `run` does; the summary and report as `run` writes them."""
        from innereye_batch.pipeline.plan import plan_run
        from innereye_batch.pipeline.process import process_item
        from innereye_batch.pipeline.sources import FolderSource
        from innereye_batch.writers.run_report import write_run_report
        from innereye_batch.writers.summary import series_record, write_summary

        started = datetime.datetime.now(datetime.timezone.utc)
        self.store.progress(job.id, "scanning")
        scan = FolderSource(input_dir, workers=1).discover()  # in this process: no fork of the server
        output_dir.mkdir(parents=True, exist_ok=True)
        planned, settled = plan_run(
            scan,
            served.package,
            served.formats,
            output_dir,
            model_fp=served.results_fp,
            max_voxels=self.options.max_voxels,
        )
        # every item of the report counts, those settled at planning (refused, skipped) done from the start
        self.store.progress(job.id, "running", items_total=len(planned) + len(settled), items_done=len(settled))
        predictor = OnDevice(served.predictor(), self.device_queue)
        results = list(settled)
        package, formats, writer_options = served.package, served.formats, self.options.writer_options
        for done, planned_job in enumerate(planned, start=len(settled) + 1):
            results.append(process_item(planned_job, predictor, formats, package, served.results_fp, writer_options))
            self.store.progress(job.id, "running", items_done=done)
        results = [r if not r.reason else _with_reason(r, relative_paths(r.reason, input_dir)) for r in results]
        skipped = tuple(
            SkippedFile(Path(relative_paths(str(f.path), input_dir)), relative_paths(f.reason, input_dir))
            for f in scan.skipped
        )
        self.store.progress(job.id, "summarising")
        run_info = {
            "tool": "innereye-batch serve",
            "tool_version": __version__,
            "model_id": served.model_id,
            "model_name": served.package.name,
            "model_task": served.package.task,
            "model_fingerprint": served.package.fingerprint(),
            "results_fingerprint": served.results_fp,
            "input": f"upload of job {job.id}",
            "device": str(served.device),
            "formats": [f.name for f in served.formats],
            "started": started.isoformat(),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        write_summary(output_dir, results, run_info=run_info, skipped_files=skipped)
        write_run_report(output_dir, results, run_info)
        outcome = innereye_outcome(served.package.task, results, scan, skipped)
        report = {
            "items": [series_record(r) for r in results],
            "ignored_files": [{"path": printable(f.path), "reason": printable(f.reason)} for f in skipped],
        }
        return outcome, report

    # --- expiry ------------------------------------------------------------------------------------------------
    def expire_now(self) -> list[str]:
        """Delete the outputs of jobs that finished more than ``--keep-results`` hours ago."""
        expired = self.store.expire(time.time() - self.options.keep_results_hours * 3600)
        for job_id in expired:
            remove_tree(self.job_dir(job_id))
            log.info("job %s: results expired and deleted", job_id)
        return expired

    def _janitor(self) -> None:
        interval = min(60.0, max(0.2, self.options.keep_results_hours * 3600 / 10))
        while not self._stop.wait(timeout=interval):
            try:
                self.expire_now()
            except Exception:  # the next round tries again
                log.exception("expiring results failed")


_RETRY_SECONDS = 5.0
"""How long the job worker waits before it tries the store again after a failure."""


def _with_reason(result: ItemResult, reason: str) -> ItemResult:
    from dataclasses import replace

    return replace(result, reason=reason)
