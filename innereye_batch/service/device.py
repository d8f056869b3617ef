"""One queue in front of the device: every forward pass of the service runs on its single thread, in turn.

Real-time predict batches go before the forward passes of queued jobs (``PREDICT`` < ``JOB``); within a priority
the order is first come, first served. Decoding and writing stay on the callers' threads, so they overlap with
the device's work. ``OnDevice`` wraps a task's predictor so that the pipeline's ``process_item`` runs its
``predict`` through the queue and everything else (decoding, finishing, writing) where it is called.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from innereye_batch.tasks.base import Decoded, Prediction, Predictor, WorkItem

log = logging.getLogger(__name__)

T = TypeVar("T")
PREDICT = 0
JOB = 1


class DeviceQueue:
    """Runs submitted calls one at a time on its own thread, by priority then arrival."""

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Callable[[], Any] | None, Future[Any] | None, str]]
        self._queue = queue.PriorityQueue()
        self._order = itertools.count()
        self.on_run: Callable[[str, float], None] | None = None
        """Called after each call with its kind and seconds (the metrics)."""
        self._thread = threading.Thread(target=self._loop, name="device", daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], T], priority: int, kind: str) -> Future[T]:
        """Queue ``call``; its future holds what it returned or raised."""
        future: Future[T] = Future()
        self._queue.put((priority, next(self._order), call, future, kind))
        return future

    def run(self, call: Callable[[], T], priority: int, kind: str) -> T:
        """``call`` on the device thread; waits for it and returns its result (or raises its error)."""
        return self.submit(call, priority, kind).result()

    @property
    def depth(self) -> int:
        """Calls waiting (not counting the one running)."""
        return self._queue.qsize()

    def close(self) -> None:
        """Stop after the calls already queued."""
        self._queue.put((JOB + 1, next(self._order), None, None, ""))
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            _, _, call, future, kind = self._queue.get()
            if call is None or future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            start = time.perf_counter()
            try:
                result = call()
            except BaseException as error:  # handed to the caller, never kills the device thread
                future.set_exception(error)
            else:
                future.set_result(result)
            if self.on_run is not None:
                try:
                    self.on_run(kind, time.perf_counter() - start)
                except Exception:  # the metrics must not kill the thread every later call waits on
                    log.exception("recording a %s call failed", kind)


def finish(prediction: Prediction) -> Prediction:
    """``prediction.finished()`` where the task defines it: the CPU work a predictor may leave after its device
    work (``predict_batch``), done off the device thread; the prediction itself otherwise."""
    finished = getattr(prediction, "finished", None)
    return finished() if callable(finished) else prediction


@dataclass
class OnDevice:
    """A predictor whose forward passes run through the device queue (priority ``JOB``); decoding stays with
    the caller. What ``process_item`` gets for a job."""

    inner: Predictor
    device_queue: DeviceQueue

    task: ClassVar[str] = ""  # each call asks ``inner``; the pipeline reads only its methods

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    @property
    def decoder(self) -> Callable[[WorkItem], Decoded]:
        return self.inner.decoder

    def predict(self, item: WorkItem, decoded: Decoded | None = None) -> Prediction:
        """The device's part on the device thread (``predict_batch`` of one), the rest (``finish``) here."""
        if decoded is None:
            decoded = self.inner.decoder(item)  # here, not on the device thread
        one = decoded
        (prediction,) = self.device_queue.run(lambda: self.inner.predict_batch([item], [one]), JOB, "job")
        return finish(prediction)

    def predict_batch(self, items: Sequence[WorkItem], decoded: Sequence[Decoded]) -> list[Prediction]:
        return self.device_queue.run(lambda: self.inner.predict_batch(items, decoded), JOB, "job")
