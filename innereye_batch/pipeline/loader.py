"""A DataLoader over work items: worker processes decode items while the main loop runs the model.

The task's decoder (a picklable function, see ``tasks.base.Predictor.decoder``) turns each item into host
tensors. Errors are caught in the worker and returned as data, so one broken item never stops the loader. The
loader pins memory when the model runs on CUDA, and prefetches a bounded number of items per worker, so memory
stays flat.

A worker that dies (killed for lack of memory, a crash in a codec) takes no run down: ``load_items`` restarts
the loader after the items already delivered, decodes the items that were in flight one at a time in a fresh
worker each, fails the one whose worker dies again with that reason, and goes on. Workers die with the run
(``PR_SET_PDEATHSIG`` on Linux) and drop library warnings (they may quote patient data; the scan reports problems).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
import time
import traceback
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch.utils.data import DataLoader, Dataset

from innereye_batch.errors import InnerEyeBatchError, error_text
from innereye_batch.processes import die_with_parent
from innereye_batch.tasks.base import Decoded, WorkItem


@dataclass(frozen=True)
class LoadedItem:
    """One decoded work item, or the reason it could not be decoded."""

    index: int
    """Position of the item in the list given to the loader."""
    decoded: Decoded | None
    load_seconds: float
    error: str = ""

    def pin_memory(self) -> LoadedItem:
        """Called by the DataLoader's pinning thread (pin_memory=True)."""
        if self.decoded is None:
            return self
        return replace(self, decoded=self.decoded.pin_memory())


def decode_safely(decoder: Callable[[WorkItem], Decoded], item: WorkItem, index: int) -> LoadedItem:
    """``decoder(item)`` with any error turned into a LoadedItem that carries the reason."""
    start = time.perf_counter()
    try:
        decoded = decoder(item)
    except InnerEyeBatchError as error:
        return LoadedItem(index, None, time.perf_counter() - start, str(error))
    except Exception as error:
        where = traceback.extract_tb(error.__traceback__)[-1]
        reason = f"{error_text(error)} (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
        return LoadedItem(index, None, time.perf_counter() - start, reason)
    return LoadedItem(index, decoded, time.perf_counter() - start)


class ItemDataset(Dataset[LoadedItem]):
    """Work items decoded on demand (in DataLoader workers)."""

    def __init__(self, items: Sequence[WorkItem], decoder: Callable[[WorkItem], Decoded]) -> None:
        self.items = list(items)
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> LoadedItem:
        return decode_safely(self.decoder, self.items[index], index)


def _single(item: Any) -> Any:
    """No collation: one work item per step (batch_size=None)."""
    return item


def _init_worker(parent: int, worker_id: int) -> None:
    """In each worker: die with the run's process ``parent``, and keep library warnings off the terminal.

    PyTorch's own watchdog compares the parent pid at the worker's start, so a worker orphaned before it starts
    would run (and wait) forever: here the parent is the pid recorded before the fork.
    """
    die_with_parent(parent)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)


def make_loader(
    items: Sequence[WorkItem],
    decoder: Callable[[WorkItem], Decoded],
    *,
    workers: int,
    pin_memory: bool,
    prefetch: int = 2,
    timeout: float = 0,
) -> DataLoader:
    """A DataLoader yielding one LoadedItem per work item, in order.

    ``workers`` processes decode ahead of the consumer, at most ``prefetch`` items each. ``timeout`` (seconds,
    with workers; 0: none): the longest wait for the next item before the loader raises.
    """
    return DataLoader(
        ItemDataset(items, decoder),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_single,
        pin_memory=pin_memory,
        prefetch_factor=prefetch if workers > 0 else None,
        persistent_workers=False,
        multiprocessing_context="fork" if workers > 0 and "fork" in mp.get_all_start_methods() else None,
        worker_init_fn=functools.partial(_init_worker, os.getpid()) if workers > 0 else None,
        timeout=timeout if workers > 0 else 0,
    )


def _keep_worker_deaths_synchronous() -> None:
    """Stop PyTorch from installing its SIGCHLD handler, which raises a worker's death as an exception wherever
    the main thread happens to be (inside inference of another item, or in a writer). Without it the loader
    itself notices a dead worker within ``POLL_SECONDS`` (5 s) and raises from ``next()``, where ``load_items``
    handles it. (A private flag of ``torch.utils.data``; tests/pipeline/test_loader.py checks it.)
    """
    from torch.utils.data._utils import signal_handling

    signal_handling._SIGCHLD_handler_set = True


def _share_temporary_folder() -> None:
    """Make this process's multiprocessing folder (``pymp-*`` under TMPDIR) before any worker is forked, so that
    the workers inherit it and put their sockets (torch passes shared memory to this process through them) in
    it: it is removed when this process ends. A worker forked before it existed made one of its own, which
    stayed in TMPDIR for ever when the worker was killed (a death, a timeout, an interrupt)."""
    from multiprocessing import util

    util.get_temp_dir()


POLL_SECONDS = 5.0
"""The longest single wait on the loader: torch looks for dead workers only when a wait of its ends empty (its
own check interval with no timeout, else the whole timeout), so a decode timeout is waited out in these steps and
a worker's death is noticed within one, not after the whole timeout (30 minutes by default) per death."""

MAX_DECODE_TIMEOUT = 1_000_000.0
"""The longest decode timeout in seconds (about 11 days); larger values, and infinity, mean no limit (torch waits
on queues whose timeout overflows past about 24 days)."""


def load_items(
    items: Sequence[WorkItem],
    decoder: Callable[[WorkItem], Decoded],
    *,
    workers: int,
    pin_memory: bool,
    prefetch: int = 2,
    timeout: float = 0,
) -> Generator[LoadedItem, None, None]:
    """One LoadedItem per work item, in order, decoded ahead by ``workers`` processes; survives dying and hung
    workers.

    After a worker death (any error the loader itself raises: decoding errors come back as data) the items not yet
    delivered that may have been in flight (``workers * prefetch``) are decoded one at a time, each in a fresh
    single-worker loader: an item whose worker dies again is returned failed with the reason; then the remaining
    items go through a new loader of ``workers`` workers. After a wait of more than ``timeout`` seconds for the next
    item (a codec that never returns; 0: no limit), that item fails at once (the loader waits for the items in
    order: it is the one whose worker hangs) and the others in flight are decoded one at a time. A worker's death is
    noticed within ``POLL_SECONDS`` whatever the timeout. The loader's workers are killed before it is dropped, so
    that a hung one cannot outlive the run. Inline decoding (``workers`` 0) has no limit.
    """
    if workers > 0:
        _keep_worker_deaths_synchronous()
        _share_temporary_folder()
    timeout = timeout if 0 < timeout <= MAX_DECODE_TIMEOUT else 0
    position = 0
    suspects = 0
    while position < len(items):
        if workers > 0 and suspects > 0:
            yield _isolated(items[position], decoder, position, pin_memory, timeout)
            position += 1
            suspects -= 1
            continue
        loader = make_loader(
            items[position:], decoder, workers=workers, pin_memory=pin_memory, prefetch=prefetch, timeout=_poll(timeout)
        )
        iterator = iter(loader)
        offset = position
        try:
            while (loaded := _next_within(iterator, timeout)) is not None:
                yield replace(loaded, index=offset + loaded.index)
                position = offset + loaded.index + 1
        except Exception as error:
            # Decoding errors come back as data, so this is the loader itself: a worker died (PyTorch's
            # RuntimeError), took a finished item's shared memory with it (ConnectionResetError, EOFError), or
            # nothing came within the timeout (RuntimeError).
            if workers == 0:
                raise
            _stop_workers(iterator)  # before the next loader starts: a hung worker holds a core
            suspects = min(workers * prefetch, len(items) - position)
            if timeout and _timed_out(error):
                yield LoadedItem(position, None, float(timeout), _timeout_reason(timeout))
                position += 1
                suspects = max(0, min(suspects - 1, len(items) - position))
        finally:  # also when the consumer stops early (--fail-fast, Ctrl-C): a hung worker must not outlive it
            _stop_workers(iterator)
            del iterator, loader


def _stop_workers(iterator: object) -> None:
    """Kill the loader's worker processes still alive, then let torch shut the loader down: torch only sends
    SIGTERM, which a hung worker may ignore, and multiprocessing would wait for that worker at exit forever."""
    for worker in getattr(iterator, "_workers", ()):
        if worker.is_alive():
            worker.kill()
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()


def _isolated(
    item: WorkItem, decoder: Callable[[WorkItem], Decoded], index: int, pin_memory: bool, timeout: float = 0
) -> LoadedItem:
    """Decode one item in a worker process of its own; a worker death, or no answer within ``timeout`` seconds
    (0: no limit), becomes this item's failure."""
    start = time.perf_counter()
    iterator = iter(make_loader([item], decoder, workers=1, pin_memory=pin_memory, prefetch=1, timeout=_poll(timeout)))
    try:
        loaded = _next_within(iterator, timeout)
        if loaded is not None:
            return replace(loaded, index=index)
    except Exception as error:
        if timeout and _timed_out(error):
            reason = _timeout_reason(timeout)
        else:
            reason = (
                f"the decoding worker process died while decoding this series ({type(error).__name__}: {error}); "
                "this happens when it runs out of memory or a codec crashes"
            )
        return LoadedItem(index, None, time.perf_counter() - start, reason)
    finally:
        _stop_workers(iterator)
        del iterator
    return LoadedItem(index, None, time.perf_counter() - start, "the decoding worker returned nothing")


def _poll(timeout: float) -> float:
    """torch's timeout for a decode timeout of ``timeout`` seconds (0: none, and torch's own dead-worker checks)."""
    return min(timeout, POLL_SECONDS) if timeout else 0


def _next_within(iterator: Iterator[LoadedItem], timeout: float) -> LoadedItem | None:
    """The loader's next item (None at its end), waiting at most ``timeout`` seconds (0: no limit) in torch waits
    of ``_poll(timeout)``: a dead worker raises from the first wait that ends after its death."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return next(iterator, None)
        except RuntimeError as error:
            if not (timeout and _timed_out(error)) or time.monotonic() >= deadline - 0.05:  # a wait may end early
                raise


def _timeout_reason(timeout: float) -> str:
    return (
        f"decoding this series took longer than {timeout:g} s (--decode-timeout), so its worker process was "
        "stopped: a codec that never returns, or storage that stopped answering"
    )


def _timed_out(error: Exception) -> bool:
    """Whether the DataLoader gave up waiting (its RuntimeError "DataLoader timed out after N seconds")."""
    return isinstance(error, RuntimeError) and "timed out" in str(error)
