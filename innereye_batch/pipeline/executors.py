"""How a run's planned jobs are executed on this machine: one loader, one model replica per device, one writer pool.

- ``RunContext``: what every executor shares: the model, the formats, the options, and ``finish`` (records an
  item's result, thread-safe) and ``stopping`` (--fail-fast or an interrupt).
- ``Writers`` (``writer_pool.py``): each prediction is written off the device loop, in threads or, on a GPU,
  in writer processes, and its result recorded when written.
- ``Replica``: one predictor on one device; batches loaded items (the task's batch size), one item at a time
  again when a batch fails, hands predictions to the writers.
- ``run_local``: the DataLoader feeds one replica inline (one device) or, for several devices, one thread per
  replica through a small queue; each thread runs under its device and CUDA stream (``devices.on_device``), with
  its own networks: replicas share nothing but the loader and the writers.

Ray (``ray_executor.py``) reuses ``RunContext`` and ``process_item``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from innereye_batch.errors import error_text
from innereye_batch.model.spec import ModelPackage
from innereye_batch.pipeline.loader import LoadedItem
from innereye_batch.pipeline.process import Job, item_result, predict_loaded
from innereye_batch.pipeline.writer_pool import Writers, writer_processes_for
from innereye_batch.results import ItemResult
from innereye_batch.tasks.base import Predictor, PredictorOptions
from innereye_batch.writers.registry import OutputFormat, WriterOptions

if TYPE_CHECKING:
    import torch


@dataclass
class RunContext:
    """What the executors of one run share; ``finish`` may be called from any thread."""

    package: ModelPackage
    formats: Sequence[OutputFormat]
    model_fp: str
    writer_options: WriterOptions
    predictor_options: PredictorOptions
    record: Callable[[ItemResult], None]
    """Stores one result (the run report, the progress); called under the context's lock."""
    fail_fast: bool = False
    interrupted: threading.Event = field(default_factory=threading.Event)
    failed_seen: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def finish(self, result: ItemResult) -> None:
        with self._lock:
            self.failed_seen = self.failed_seen or result.status == "failed"
            self.record(result)

    def fail(self, job: Job, result: ItemResult) -> None:
        """A job that failed before its outputs were written: an earlier run's stale result leaves its folder
        (``clear_stale_result``), then the result is recorded."""
        from innereye_batch.pipeline.state import clear_stale_result, with_problem

        self.finish(with_problem(result, clear_stale_result(job.folder, job.input_fp, self.model_fp)))

    @property
    def stopping(self) -> bool:
        """True once --fail-fast has seen a failure, or the run was interrupted."""
        return self.interrupted.is_set() or (self.fail_fast and self.failed_seen)


class Replica:
    """One predictor on one device: batches loaded items through the model and hands predictions to the writers."""

    def __init__(self, predictor: Predictor, device: torch.device, context: RunContext, writers: Writers) -> None:
        self.predictor = predictor
        self.device = device
        self.context = context
        self.writers = writers
        self.batch: list[tuple[Job, LoadedItem]] = []

    def add(self, job: Job, loaded: LoadedItem) -> None:
        """One loaded item: failed now when it could not be decoded, else into the batch (run when full)."""
        if loaded.decoded is None:
            self.context.fail(job, item_result(job.item.primary, "failed", loaded.error, timings=_load(loaded)))
            return
        self.batch.append((job, loaded))
        if len(self.batch) >= self.predictor.batch_size:
            self.flush()

    def flush(self) -> None:
        """The batch through the model (one item at a time again if the batch fails), each result to a writer."""
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        items = [job.item for job, _ in batch]
        predictions = predict_loaded(self.predictor, items, [loaded.decoded for _, loaded in batch])
        for (job, loaded), prediction in zip(batch, predictions, strict=True):
            if isinstance(prediction, Exception):  # one item's failure never stops the others
                reason = f"inference: {error_text(prediction)}"
                self.context.fail(job, item_result(job.item.primary, "failed", reason, timings=_load(loaded)))
            else:
                self.writers.submit(job, prediction, {**_load(loaded), **prediction.timings})


def _load(loaded: LoadedItem) -> dict[str, float]:
    return {"load": loaded.load_seconds}


def load_replicas(context: RunContext, devices: Sequence[torch.device], trust_checkpoint: bool) -> list[Predictor]:
    """One predictor per device, each with networks of its own (loaded from the checkpoints once per device)."""
    from innereye_batch.engine.memory import limit_device_memory
    from innereye_batch.model.checkpoints import load_networks
    from innereye_batch.tasks import task_for

    task = task_for(context.package.task)
    predictors = []
    for device in devices:
        limit_device_memory(device, context.predictor_options.gpu_memory_gib)
        networks = load_networks(context.package, device=device, trust_checkpoint=trust_checkpoint)
        predictors.append(task.predictor(context.package, networks, device, context.predictor_options))
    return predictors


def run_local(
    context: RunContext,
    jobs: Sequence[Job],
    predictors: Sequence[Predictor],
    devices: Sequence[torch.device],
    *,
    workers: int,
    writer_threads: int,
    writer_processes: int | None = None,
    decode_timeout: float = 0,
    write_timeout: float = 0,
) -> None:
    """Every job through the loader, the replicas and the writers; returns when every write has finished.

    Results are recorded through ``context.finish``; jobs never reached (--fail-fast, Ctrl-C) are not recorded.
    ``writer_processes``: None chooses (``writer_pool.writer_processes_for``), 0 writes in ``writer_threads``.
    ``decode_timeout``: seconds a series' decoding may take in a worker before it fails (0: no limit);
    ``write_timeout``: seconds its writing may take before it fails (``writer_pool.call_within``; 0: no limit).
    """
    from innereye_batch.pipeline.loader import load_items

    loader = load_items(
        [j.item for j in jobs],
        predictors[0].decoder,
        workers=workers,
        pin_memory=any(d.type == "cuda" for d in devices),
        timeout=decode_timeout,
    )
    try:
        processes = writer_processes_for(devices, workers, writer_processes)
        with Writers(context, writer_threads, processes, timeout=write_timeout) as writers:
            replicas = [Replica(p, d, context, writers) for p, d in zip(predictors, devices, strict=True)]
            try:
                if len(replicas) == 1:
                    _inline(context, jobs, loader, replicas[0])
                else:
                    _threaded(context, jobs, loader, replicas)
            except BaseException:
                context.interrupted.set()
                raise
    finally:
        loader.close()  # stops the decoding workers now, also after --fail-fast or an interrupt


def _inline(context: RunContext, jobs: Sequence[Job], loader: Any, replica: Replica) -> None:
    for loaded in loader:
        if context.stopping:  # before the first item too: --fail-fast may have seen a failure at planning
            return
        replica.add(jobs[loaded.index], loaded)
        del loaded
    if not context.stopping:
        replica.flush()


_STOP = None


def _threaded(context: RunContext, jobs: Sequence[Job], loader: Any, replicas: Sequence[Replica]) -> None:
    """The loader in this thread, one thread per replica pulling from a bounded queue."""
    from innereye_batch.pipeline.devices import on_device

    handoff: queue.Queue[tuple[Job, LoadedItem] | None] = queue.Queue(maxsize=max(len(replicas), 2))
    errors: list[BaseException] = []

    def serve(replica: Replica) -> None:
        stopped = False  # this thread's _STOP taken: the one left in the queue is another thread's
        try:
            with on_device(replica.device):
                while (entry := handoff.get()) is not _STOP:
                    if not context.stopping:
                        replica.add(*entry)
                stopped = True
                if not context.stopping:
                    replica.flush()
        except BaseException as error:  # a replica that breaks (not one item: those fail alone) stops the run
            errors.append(error)
            context.interrupted.set()
            while not stopped and handoff.get() is not _STOP:  # keep draining, so the loader never blocks on it
                pass

    threads = [
        threading.Thread(target=serve, args=(r,), name=f"replica-{i}-{r.device}", daemon=True)
        for i, r in enumerate(replicas)
    ]
    for thread in threads:
        thread.start()
    try:
        for loaded in loader:
            if context.stopping:
                break
            handoff.put((jobs[loaded.index], loaded))
            del loaded
    except BaseException:  # Ctrl-C, SIGTERM: the replicas finish the item in hand and take no more
        context.interrupted.set()
        raise
    finally:
        for _ in threads:
            handoff.put(_STOP)
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]


def device_names(devices: Sequence[torch.device]) -> str:
    """The run's devices for the summary: ``cpu``, ``cuda:0``, or ``cuda:0,cuda:1``."""
    return ",".join(str(d) for d in devices)
