"""A DataLoader over work items: worker processes read and decode series while the main loop runs the model.

Each item is decoded to a float32 (channels, z, y, x) tensor on the first channel's grid. Errors are caught in
the worker and returned as data, so one broken series never stops the loader. The loader pins memory when the
model runs on CUDA, and prefetches a bounded number of items per worker, so memory stays flat.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.errors import InnerEyeBatchError
from innereye_batch.pipeline.channels import WorkItem


@dataclass(frozen=True)
class LoadedItem:
    """One decoded work item, or the reason it could not be decoded."""

    index: int
    image: torch.Tensor | None
    """float32 (channels, z, y, x) in modality units, on the primary channel's grid."""
    geometry: Geometry | None
    load_seconds: float
    error: str = ""

    def pin_memory(self) -> LoadedItem:
        """Called by the DataLoader's pinning thread (pin_memory=True)."""
        if self.image is None:
            return self
        return replace(self, image=self.image.pin_memory())


def _align_channel(array: np.ndarray, geometry: Geometry, reference: Geometry) -> np.ndarray:
    """Resample a secondary channel onto the primary channel's grid (linear, in patient space)."""
    if geometry.is_close(reference):
        return array
    import SimpleITK as sitk

    moving = geometry.to_sitk(array)
    target = reference.to_sitk(np.zeros(reference.shape, dtype=np.float32))
    resampled = sitk.Resample(moving, target, sitk.Transform(), sitk.sitkLinear, float(array.min()))
    return sitk.GetArrayFromImage(resampled).astype(np.float32, copy=False)


def decode_work_item(item: WorkItem) -> tuple[np.ndarray, Geometry]:
    """Decode every channel of ``item`` and stack them on the primary channel's grid."""
    from innereye_batch.dicom.volume import load_volume

    primary = load_volume(item.primary)
    channels = [primary.array]
    for series in item.inputs[1:]:
        if series.frame_of_reference_uid != item.primary.frame_of_reference_uid:
            raise InnerEyeBatchError(
                f"series {series.key} is in frame of reference {series.frame_of_reference_uid}, not the first "
                f"channel's {item.primary.frame_of_reference_uid}: the inputs must be registered"
            )
        other = load_volume(series)
        channels.append(_align_channel(other.array, other.geometry, primary.geometry))
    return np.stack(channels), primary.geometry


class SeriesDataset(Dataset[LoadedItem]):
    """Work items decoded on demand (in DataLoader workers)."""

    def __init__(self, items: Sequence[WorkItem]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> LoadedItem:
        start = time.perf_counter()
        try:
            array, geometry = decode_work_item(self.items[index])
        except InnerEyeBatchError as error:
            return LoadedItem(index, None, None, time.perf_counter() - start, str(error))
        except Exception as error:
            where = traceback.extract_tb(error.__traceback__)[-1]
            reason = f"{type(error).__name__}: {error} (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
            return LoadedItem(index, None, None, time.perf_counter() - start, reason)
        return LoadedItem(index, torch.from_numpy(array), geometry, time.perf_counter() - start)


def _single(item: Any) -> Any:
    """No collation: one work item per step (batch_size=None)."""
    return item


def make_loader(items: Sequence[WorkItem], *, workers: int, pin_memory: bool, prefetch: int = 2) -> DataLoader:
    """A DataLoader yielding one LoadedItem per work item, in order.

    ``workers`` processes decode ahead of the consumer, at most ``prefetch`` items each.
    """
    return DataLoader(
        SeriesDataset(items),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_single,
        pin_memory=pin_memory,
        prefetch_factor=prefetch if workers > 0 else None,
        persistent_workers=False,
        multiprocessing_context="fork" if workers > 0 and "fork" in mp.get_all_start_methods() else None,
    )
