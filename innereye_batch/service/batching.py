"""Dynamic batching of real-time predict requests: concurrent images share one forward pass on the device.

A batch closes when it holds ``max_batch`` images or when its first image has waited ``max_wait`` seconds,
whichever comes first; images that arrived while the device was busy join the next batch at once. The batch
runs through the device queue (``device.py``) with ``predict_batch``, as `run` batches images; if the batch
fails, each image is predicted alone, so one bad image fails only its own request. One batcher serves one
predictor (a model, with or without explanations).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from innereye_batch.service.device import PREDICT, DeviceQueue
from innereye_batch.tasks.base import Decoded, Prediction, Predictor, WorkItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batched:
    """A prediction, and how long its request waited for its batch to start."""

    prediction: Prediction
    queued_seconds: float
    batch_size: int


@dataclass
class _Pending:
    item: WorkItem
    decoded: Decoded
    future: Future[Batched]
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Collects images for one predictor and runs them in batches on the device."""

    def __init__(
        self,
        predictor: Predictor,
        device_queue: DeviceQueue,
        *,
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.predictor = predictor
        self.device_queue = device_queue
        self.max_batch = max(1, min(max_batch, predictor.batch_size))
        self.max_wait_s = max(0.0, max_wait_s)
        self._on_batch = on_batch
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    def submit(self, item: WorkItem, decoded: Decoded) -> Future[Batched]:
        """Queue one decoded image; the future gives its prediction."""
        future: Future[Batched] = Future()
        self._queue.put(_Pending(item, decoded, future))
        return future

    @property
    def depth(self) -> int:
        """Images waiting for a batch."""
        return self._queue.qsize()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _collect(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """The batch that ``first`` opens; and whether the batcher was told to stop meanwhile."""
        batch = [first]
        deadline = first.enqueued + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                pending = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is None:
                return batch, True
            batch.append(pending)
        return batch, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            # A request cancelled meanwhile (its handler was) is dropped; the others can no longer be cancelled,
            # so answering them never raises in this thread: one that died would leave every later request
            # of this model waiting for ever.
            batch = [pending for pending in batch if pending.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            started = time.perf_counter()
            try:
                predictions = self._predict(batch)
                outcomes = list(zip(batch, predictions, strict=True))
            except BaseException as error:  # the device thread itself failed: every request hears of it
                for pending in batch:
                    pending.future.set_exception(error)
                continue
            if self._on_batch is not None:
                try:
                    self._on_batch(len(batch))
                except Exception:  # the metrics must not take the answers down
                    log.exception("recording a batch of %d failed", len(batch))
            for pending, outcome in outcomes:
                if isinstance(outcome, BaseException):
                    pending.future.set_exception(outcome)
                else:
                    pending.future.set_result(Batched(outcome, started - pending.enqueued, len(batch)))

    def _predict(self, batch: list[_Pending]) -> list[Prediction | BaseException]:
        from innereye_batch.pipeline.process import predict_loaded  # one at a time where the batch fails

        items = [p.item for p in batch]
        decoded = [p.decoded for p in batch]

        def on_device() -> list[Prediction | BaseException]:
            return list(predict_loaded(self.predictor, items, decoded))

        return self.device_queue.run(on_device, PREDICT, "predict")


class Batchers:
    """One batcher per predictor, made on first use."""

    def __init__(self, device_queue: DeviceQueue, *, max_batch: int, max_wait_s: float) -> None:
        self.device_queue = device_queue
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch: Callable[[int], None] | None = None
        """Called with the size of each batch run (the metrics); set before the first request."""
        self._batchers: dict[int, DynamicBatcher] = {}
        self._lock = threading.Lock()

    def for_predictor(self, predictor: Predictor) -> DynamicBatcher:
        with self._lock:
            key = id(predictor)
            if key not in self._batchers:
                self._batchers[key] = DynamicBatcher(
                    predictor,
                    self.device_queue,
                    max_batch=self.max_batch,
                    max_wait_s=self.max_wait_s,
                    on_batch=self.on_batch,
                )
            return self._batchers[key]

    @property
    def depth(self) -> int:
        with self._lock:
            return sum(b.depth for b in self._batchers.values())

    def close(self) -> None:
        with self._lock:
            for batcher in self._batchers.values():
                batcher.close()
