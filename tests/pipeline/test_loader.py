"""The loader survives dying workers: the item whose worker dies fails with the reason, every other item loads."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import pytest
import torch

from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.pipeline.loader import load_items
from innereye_batch.tasks.base import WorkItem


@dataclass(frozen=True)
class _Tensor:
    value: torch.Tensor

    def pin_memory(self) -> _Tensor:
        return self


def _items(count: int) -> list[WorkItem]:
    from innereye_batch.dicom.geometry import Geometry

    geometry = Geometry((1, 1, 1), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    return [WorkItem((SeriesInfo(f"1.{i}", "1", "1", "CT", "", "", (), geometry, ()),)) for i in range(count)]


def _decoder_killing(keys: frozenset[str], sig: int) -> object:
    def decode(item: WorkItem) -> _Tensor:
        if item.key in keys:
            os.kill(os.getpid(), sig)  # what the kernel's OOM killer or a codec crash does to a worker
        if item.key == "1.3":
            raise ValueError("unreadable pixel data")
        return _Tensor(torch.tensor([int(item.key.split(".")[1])]))

    return decode


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_a_dying_worker_fails_only_its_item(sig: int) -> None:
    items = _items(9)
    loaded = list(load_items(items, _decoder_killing(frozenset({"1.4"}), sig), workers=2, pin_memory=False))  # type: ignore[arg-type]
    assert [x.index for x in loaded] == list(range(9))
    failed = {x.index: x.error for x in loaded if x.decoded is None}
    assert set(failed) == {3, 4}
    assert "unreadable pixel data" in failed[3]  # an ordinary error stays an ordinary error
    assert "worker process died" in failed[4] and "out of memory" in failed[4]
    values = [int(x.decoded.value) for x in loaded if x.decoded is not None]  # type: ignore[attr-defined]
    assert values == [0, 1, 2, 5, 6, 7, 8]


def test_two_deadly_items_in_one_cohort() -> None:
    items = _items(8)
    loaded = list(
        load_items(items, _decoder_killing(frozenset({"1.1", "1.6"}), signal.SIGKILL), workers=2, pin_memory=False)
    )  # type: ignore[arg-type]
    failed = sorted(x.index for x in loaded if x.decoded is None)
    assert failed == [1, 3, 6]
    assert [x.index for x in loaded] == list(range(8))


def _decoder_hanging(key: str) -> object:
    def decode(item: WorkItem) -> _Tensor:
        if item.key == key:
            time.sleep(3600)  # a codec that never returns, or storage that stopped answering
        return _Tensor(torch.tensor([int(item.key.split(".")[1])]))

    return decode


def test_a_hung_worker_fails_only_its_item_after_the_timeout() -> None:
    """The hung item fails with the timeout in its reason; every other item is decoded; the hung worker is
    stopped (no process of the loader outlives it)."""
    import multiprocessing

    items = _items(6)
    loaded = list(load_items(items, _decoder_hanging("1.2"), workers=2, pin_memory=False, timeout=2))  # type: ignore[arg-type]
    assert [x.index for x in loaded] == list(range(6))
    failed = {x.index: x.error for x in loaded if x.decoded is None}
    assert list(failed) == [2]
    assert "took longer than 2 s (--decode-timeout)" in failed[2] and "stopped" in failed[2]
    assert [int(x.decoded.value) for x in loaded if x.decoded is not None] == [0, 1, 3, 4, 5]  # type: ignore[attr-defined]
    assert not [child for child in multiprocessing.active_children() if child.is_alive()]


def test_pytorch_still_has_the_flag_that_keeps_worker_deaths_synchronous() -> None:
    from torch.utils.data._utils import signal_handling

    assert hasattr(signal_handling, "_SIGCHLD_handler_set")  # loader._keep_worker_deaths_synchronous sets it
