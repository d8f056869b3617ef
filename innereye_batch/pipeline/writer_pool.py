"""The writer pool of a local run: each prediction's outputs written off the device loop, in threads or processes.

Threads (the default on a CPU, where torch already uses every core) share this process. On a GPU the host's
cores are otherwise idle while the device works, and writing (connected components, DICOM-SEG, RTSTRUCT with
their read-back checks) is pure-Python work that threads would serialise on the GIL: there the writers are
separate processes, one per core left over (``writer_processes_for``). A prediction goes to a process without
the volume it was predicted from (the preview decodes it again there): only the uint8 label map crosses (a
classification crosses with its image, one 2-D picture). With two writer processes or more, a segmentation's
files are written side by side, each in a process of its own (``fan_out``): a series' export then takes about its
longest file's time, not the sum (the run's last series is not waited for as long).

A writer process that dies (killed, out of memory) breaks the pool, and every write in it fails: each is tried
once more, alone in a process of its own, so that only the item that kills its writer fails (with the reason);
later writes go to a fresh pool, and the run goes on. Writer processes die with this process and leave Ctrl-C to it.

Every write has a deadline (``--write-timeout``, 30 minutes by default; ``call_within``): storage that stopped
answering (a hung network mount) would otherwise fill the slots and keep the run, and an interrupt, waiting forever.
The write runs in a daemon thread of its own that the writer (a pool thread, or a writer process) gives up on when
the deadline passes: the series then fails with the reason, its outputs and temporary files are removed, and its
slot is free for the next. A writer process that gave up is killed (its writes in flight are tried again alone, as
after a death); a thread cannot be killed, so it is left behind, at most as many at a time as there are slots:
past that, writes fail at once until one of them ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
import threading
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, TypeVar

from innereye_batch.errors import error_text
from innereye_batch.pipeline.fan_out import fans_out, write_fanned_out
from innereye_batch.pipeline.process import Job, item_result, write_outputs
from innereye_batch.pipeline.state import outputs_removed, remove_stale_temporaries, with_problem
from innereye_batch.results import ItemResult
from innereye_batch.tasks.base import Prediction

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import torch

    from innereye_batch.pipeline.executors import RunContext

log = logging.getLogger(__name__)

MAX_WRITER_PROCESSES = 8
T = TypeVar("T")

MAX_WRITE_TIMEOUT = 1_000_000.0
"""The longest write timeout in seconds (about 11 days); larger values, and infinity, mean no limit."""


class WriteTimeout(Exception):
    """A write given up on at its deadline (``pid``: the process it was left running in), or refused because too
    many such writes still run in this process's threads (``pid`` None)."""

    def __init__(self, reason: str, pid: int | None) -> None:
        super().__init__(reason, pid)  # both in args: it crosses from a writer process, pickled
        self.reason = reason
        self.pid = pid

    def __str__(self) -> str:
        return self.reason


class Abandoned:
    """Writes left running in this process's threads past their deadline (a thread cannot be stopped), each holding
    its prediction: at most ``limit`` at a time; ``full`` while that many still run."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self._lock = threading.Lock()

    def full(self) -> bool:
        with self._lock:
            return self.running >= self.limit

    def add(self, write: Future[Any]) -> None:
        """Count ``write`` until it ends (if ever)."""
        with self._lock:
            self.running += 1
        write.add_done_callback(self._ended)

    def _ended(self, _: Future[Any]) -> None:
        with self._lock:
            self.running -= 1


def call_within(
    seconds: float,
    function: Callable[..., T],
    *arguments: Any,
    abandoned: Abandoned | None = None,
    late: Callable[[], object] | None = None,
) -> T:
    """``function(*arguments)`` run in a daemon thread, given up on after ``seconds`` (0: no limit): it then raises
    ``WriteTimeout``, and the thread is left running (a daemon: it keeps no process alive; ``abandoned`` counts it;
    ``late`` is called if it ever ends: what it wrote after the series was reported failed is removed). Called in a
    writer: a pool thread, or a writer process (which the writer pool then kills)."""
    if not 0 < seconds <= MAX_WRITE_TIMEOUT:
        return function(*arguments)
    if abandoned is not None and abandoned.full():
        reason = (
            f"not written: {abandoned.running} earlier writes of this run are still stuck past --write-timeout "
            f"({seconds:g} s) in writer threads, which cannot be stopped; the output storage may have stopped answering"
        )
        raise WriteTimeout(reason, None)
    outcome: Future[T] = Future()

    def call() -> None:
        outcome.set_running_or_notify_cancel()
        try:
            outcome.set_result(function(*arguments))
        except BaseException as error:  # handed to the writer, which raises it
            outcome.set_exception(error)

    threading.Thread(target=call, name="writer-write", daemon=True).start()
    if not wait([outcome], timeout=seconds).done:
        if abandoned is not None:
            abandoned.add(outcome)
        if late is not None:
            outcome.add_done_callback(lambda _: late())
        reason = (
            f"writing took longer than {seconds:g} s (--write-timeout), so it was given up and its outputs removed: "
            "storage that stopped answering (a hung network mount?) or a writer that never returns"
        )
        raise WriteTimeout(reason, os.getpid())
    return outcome.result()


def writer_processes_for(devices: Sequence[torch.device], workers: int, requested: int | None) -> int:
    """Writer processes for a run: ``requested`` when given (0: threads); else, when a GPU runs the model, one per
    core left after the decoding workers and the device loop (at most ``MAX_WRITER_PROCESSES``); else 0."""
    if requested is not None:
        return max(requested, 0)
    if not any(d.type == "cuda" for d in devices):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_WRITER_PROCESSES, cores - max(workers, 0) - 2))


def _init_writer_process(parent: int) -> None:
    """In each writer process: die with the run, leave Ctrl-C to it, and keep library warnings (highdicom quotes
    the patient's name when it lacks a caret) off the terminal, as in the decoding workers."""
    import logging
    import signal
    import warnings

    from innereye_batch.processes import watch_parent

    watch_parent(parent)  # not PR_SET_PDEATHSIG: a replica thread that starts a writer may end before it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's to handle: writes in flight finish
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)


class Writers:
    """``submit`` writes a prediction's outputs in the pool; the result is recorded (``context.finish``) when
    written. At most twice as many writes as pool members wait, so memory stays bounded: each holds a slot
    from its submission until its result (after any retry) is recorded."""

    def __init__(self, context: RunContext, threads: int, processes: int = 0, *, timeout: float = 0) -> None:
        """``timeout``: seconds each write may take (``call_within``; 0: no limit)."""
        self.context = context
        self.processes = processes
        self.timeout = timeout
        size = processes if processes > 0 else max(threads, 1)
        self._slot_count = 2 * size
        self.slots = threading.BoundedSemaphore(self._slot_count)
        self._abandoned = Abandoned(self._slot_count)
        self._lock = threading.Lock()
        self._futures: set[Future[ItemResult]] = set()
        self.pool: Executor = self._new_pool(size)
        self._coordinators: ThreadPoolExecutor | None = None

    def _new_pool(self, size: int) -> Executor:
        if self.processes > 0:
            import multiprocessing

            # spawn: a fork of this process (CUDA initialised, threads running) is not safe
            return ProcessPoolExecutor(
                max_workers=size,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_writer_process,
                initargs=(os.getpid(),),
            )
        return ThreadPoolExecutor(max_workers=size, thread_name_prefix="writer")

    def __enter__(self) -> Writers:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """Waits until every write submitted is recorded (all slots free again: a retry may still be running in
        a process of its own), then closes the pool. Leaving on an exception (an interrupt), it stops waiting
        once no write is running: an interrupt between a submission's taking its slot and its callback's being
        attached leaves a slot that nothing will give back, and the run would wait for it forever. An interrupt
        that comes while it waits is raised once the writes in flight are recorded (it cut them off half-written,
        and the pool was closed under them)."""
        acquired = 0
        leaving = exc_type is not None
        interrupt: KeyboardInterrupt | None = None
        while acquired < self._slot_count:
            try:
                if self.slots.acquire(timeout=_EXIT_POLL_SECONDS):
                    acquired += 1
                elif leaving and not self._running():
                    break
            except KeyboardInterrupt as caught:  # Ctrl-C or SIGTERM while the last writes run: they still finish
                interrupt, leaving = caught, True
        with self._lock:
            pool, coordinators = self.pool, self._coordinators
        if coordinators is not None:
            coordinators.shutdown(wait=True)
        pool.shutdown(wait=True)
        if interrupt is not None:
            raise interrupt

    def _running(self) -> bool:
        with self._lock:
            return any(not f.done() for f in self._futures)

    def _forget(self, future: Future[ItemResult]) -> None:
        with self._lock:
            self._futures.discard(future)

    def submit(self, job: Job, prediction: Prediction, timings: dict[str, float]) -> None:
        self.slots.acquire()
        if self.processes > 0:
            prediction = _without_image(prediction)
        try:
            if self.processes > 1 and fans_out(prediction, self.context.formats):
                future = self._fan_out(job, prediction, timings)
            else:
                future = self._submit(write_outputs, *self._write_arguments(job, prediction, timings))
                self._track(future)  # done by the deadline at the latest (``call_within``)
        except BaseException:
            self.slots.release()
            raise
        future.add_done_callback(lambda done: self._written(job, prediction, timings, done, retry=True))

    def _write_arguments(self, job: Job, prediction: Prediction, timings: dict[str, float]) -> tuple[Any, ...]:
        context = self.context
        return (
            job,
            prediction,
            context.formats,
            context.package,
            context.model_fp,
            timings,
            context.writer_options,
        )

    def _submit(self, function: Callable[..., T], *arguments: Any) -> Future[T]:
        """``function(*arguments)`` in the pool, within the deadline; a pool found broken since its last use is
        replaced first."""
        with self._lock:
            pool = self.pool
        try:
            future = self._within(pool, function, *arguments)
        except BrokenProcessPool:  # broken since the last write: a fresh pool for this one and the next
            future = self._within(self._fresh_pool(pool), function, *arguments)
        return future

    def _within(self, pool: Executor, function: Callable[..., T], *arguments: Any) -> Future[T]:
        """``function(*arguments)`` in ``pool``, given up on after the write timeout (``call_within``)."""
        if self.processes > 0:  # a writer process that gives up is killed, and its stuck write with it
            return pool.submit(call_within, self.timeout, function, *arguments)
        job = next((a for a in arguments if isinstance(a, Job)), None)
        late = None if job is None else functools.partial(outputs_removed, job.folder)
        return pool.submit(call_within, self.timeout, function, *arguments, abandoned=self._abandoned, late=late)

    def _fan_out(self, job: Job, prediction: Prediction, timings: dict[str, float]) -> Future[ItemResult]:
        """The item's files written side by side by the writer processes (``pipeline.fan_out``), coordinated from
        a thread of this process that only waits."""
        with self._lock:
            if self._coordinators is None:  # one thread per slot: a fanned-out item never waits for a thread
                self._coordinators = ThreadPoolExecutor(self._slot_count, thread_name_prefix="writer-fan-out")
            coordinators = self._coordinators
        future = coordinators.submit(write_fanned_out, self._submit, *self._write_arguments(job, prediction, timings))
        self._track(future)
        return future

    def _track(self, future: Future[ItemResult]) -> None:
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)  # the set holds only writes in flight, however long the run

    def _write_in(
        self, pool: Executor, job: Job, prediction: Prediction, timings: dict[str, float]
    ) -> Future[ItemResult]:
        future = self._within(pool, write_outputs, *self._write_arguments(job, prediction, timings))
        self._track(future)
        return future

    def _fresh_pool(self, broken: Executor) -> Executor:
        with self._lock:
            if self.pool is broken:
                self.pool = self._new_pool(self.processes)
            pool = self.pool
        broken.shutdown(wait=False)
        return pool

    def _retry_alone(self, job: Job, prediction: Prediction, timings: dict[str, float]) -> None:
        alone = self._new_pool(1)
        future = self._write_in(alone, job, prediction, timings)

        def written(done: Future[ItemResult]) -> None:
            alone.shutdown(wait=False)
            self._written(job, prediction, timings, done, retry=False)

        future.add_done_callback(written)

    def _written(
        self, job: Job, prediction: Prediction, timings: dict[str, float], future: Future[ItemResult], *, retry: bool
    ) -> None:
        if future.cancelled():
            self.slots.release()
            return
        error = future.exception()
        if isinstance(error, WriteTimeout) and error.pid is not None and error.pid != os.getpid():
            _kill(error.pid)  # the writer process that gave up: its stuck thread goes with it (its pool breaks)
        if isinstance(error, (BrokenProcessPool, WriteTimeout)):
            # the dead process's temporary files, and those of the processes the broken pool stopped with it; or
            # those of the write given up on
            remove_stale_temporaries(job.folder.parent, [job.folder])
        if isinstance(error, BrokenProcessPool) and retry:
            # a writer process died: every write it shared the pool with failed too. Each is tried once more,
            # alone in a process of its own, so that only the item that kills its writer fails.
            try:
                self._retry_alone(job, prediction, timings)
                return  # the slot passes to the retry
            except BaseException as again:  # no process could be started
                error = again
        try:
            if error is None:
                self.context.finish(future.result())
            else:
                if isinstance(error, WriteTimeout):
                    reason = str(error)
                else:
                    reason = f"writing: the writer process failed ({error_text(error) if str(error) else 'it died'})"
                log.warning("%s: %s", job.item.key, reason)
                # what the dead writer left has no done record to vouch for it
                result = with_problem(item_result(job.item.primary, "failed", reason), outputs_removed(job.folder))
                self.context.finish(result)
        finally:
            self.slots.release()


_EXIT_POLL_SECONDS = 0.2


def _kill(pid: int) -> None:
    """SIGKILL to a writer process (already gone: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _without_image(prediction: Prediction) -> Prediction:
    """A segmentation without the (large) volume it kept for the preview, which a writer process decodes again.
    A classification keeps its image: one 2-D picture, whose header the predictions and explanations are made of."""
    if (
        prediction.task == "segmentation"
        and dataclasses.is_dataclass(prediction)
        and getattr(prediction, "image", None) is not None
    ):
        return dataclasses.replace(prediction, image=None)
    return prediction
