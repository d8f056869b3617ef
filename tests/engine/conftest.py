"""Small networks for engine tests: 3-D conv nets that return logits (N, K, z, y, x) of the input's size."""

from __future__ import annotations

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
