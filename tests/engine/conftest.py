"""Small networks for engine tests: 3-D conv nets that return logits (N, K, z, y, x) of the input's size; and slab
resampling made to go two slices at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch


def conv_net(in_channels: int, classes: int, *, seed: int, kernel: int = 3) -> torch.nn.Module:
    """A two-layer conv net; ``kernel`` 1 makes it pointwise (translation-exact), 3 sees its neighbours."""
    torch.manual_seed(seed)
    padding = kernel // 2
    return torch.nn.Sequential(
        torch.nn.Conv3d(in_channels, 4, kernel, padding=padding),
        torch.nn.Tanh(),
        torch.nn.Conv3d(4, classes, kernel, padding=padding),
    ).eval()


@pytest.fixture
def image() -> torch.Tensor:
    """A (2, 20, 18, 22) smooth-ish random image."""
    generator = torch.Generator().manual_seed(7)
    return torch.randn((2, 20, 18, 22), generator=generator)


def resample_two_slices_at_a_time(monkeypatch: pytest.MonkeyPatch, slice_bytes: int) -> list[int]:
    """Make ``preprocess.resample_slabs`` yield slabs of two slices (``slice_bytes``: the bytes of one resampled
    slice of every class); the first slice of each slab it yields is appended to the list returned."""
    from innereye_batch.engine import preprocess

    starts: list[int] = []
    whole_slabs = preprocess.resample_slabs

    def two_slices_at_a_time(*args: Any, **kwargs: Any) -> Iterator[tuple[int, torch.Tensor]]:
        for start, slab in whole_slabs(*args, slab_bytes=2 * slice_bytes):
            starts.append(start)
            yield start, slab

    monkeypatch.setattr(preprocess, "resample_slabs", two_slices_at_a_time)
    return starts
