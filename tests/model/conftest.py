"""Shared builders for model tests: a tiny UNet3D and an inference block that describes it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from innereye_batch.model.architectures import build_network
from innereye_batch.model.spec import ArchitectureSpec

TINY_ARCHITECTURE = {"name": "UNet3D", "initial_feature_channels": 2, "num_downsampling_paths": 2}
TINY_BLOCK: dict[str, Any] = {
    "version": 1,
    "task": "segmentation",
    "structures": [{"name": "liver", "colour": [10, 20, 30]}, {"name": "spleen", "colour": "#00ff80"}],
    "architecture": TINY_ARCHITECTURE,
    "channels": [{"name": "ct", "modality": "CT"}],
    "normalisation": [{"method": "ct_window", "level": 40, "window": 400}],
    "patch_size": [8, 8, 8],
    "stride": [4, 4, 4],
    "stitching": "average",
    "postprocessing": {"posterior_smoothing_mm": [2.0, 2.0, 3.0], "largest_component": "all", "fill_holes": ["liver"]},
}


def tiny_network(seed: int = 0) -> torch.nn.Module:
    """A 2-level UNet3D (1 channel in, 3 classes out) with random weights and non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    spec = ArchitectureSpec("UNet3D", {k: v for k, v in TINY_ARCHITECTURE.items() if k != "name"})
    network = build_network(spec, 1, 3)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return network.eval()


@pytest.fixture
def block() -> dict[str, Any]:
    return copy.deepcopy(TINY_BLOCK)
