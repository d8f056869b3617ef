"""A DataLoader over work items: worker processes decode items while the main loop runs the model.

The task's decoder (a picklable function, see ``tasks.base.Predictor.decoder``) turns each item into host
tensors. Errors are caught in the worker and returned as data, so one broken item never stops the loader. The
loader pins memory when the model runs on CUDA, and prefetches a bounded number of items per worker, so memory
stays flat.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch.utils.data import DataLoader, Dataset

from innereye_batch.errors import InnerEyeBatchError
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
        reason = f"{type(error).__name__}: {error} (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
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


def make_loader(
    items: Sequence[WorkItem],
    decoder: Callable[[WorkItem], Decoded],
    *,
    workers: int,
    pin_memory: bool,
    prefetch: int = 2,
) -> DataLoader:
    """A DataLoader yielding one LoadedItem per work item, in order.

    ``workers`` processes decode ahead of the consumer, at most ``prefetch`` items each.
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
    )
