"""Small classification networks and specs for engine tests."""

from __future__ import annotations

import torch

from innereye_batch.model.architectures import build_network
from innereye_batch.model.classification import ClassificationSpec, IntensitySpec
from innereye_batch.model.spec import ArchitectureSpec

CNN = ArchitectureSpec("CNN2D", {"initial_feature_channels": 4, "num_blocks": 3})


def cnn(seed: int, *, in_channels: int = 1, classes: int = 3) -> torch.nn.Module:
    """A CNN2D with random weights and non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    network = build_network(CNN, in_channels, classes)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return network.eval()


def spec(
    *, classes: int = 3, size: tuple[int, int] = (32, 40), channels: int = 1, activation: str = "softmax"
) -> ClassificationSpec:
    return ClassificationSpec(
        classes=tuple(f"class{i}" for i in range(classes)),
        input_size=size,
        activation=activation,  # type: ignore[arg-type]
        input_channels=channels,
        intensity=IntensitySpec(mean=(0.4,), std=(0.25,)),
    )


def uint16_images(count: int, seed: int = 0) -> list:
    """Random uint16 images of assorted sizes (y, x)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shapes = [(48, 60), (32, 40), (70, 30), (41, 41)]
    return [rng.integers(0, 65536, size=shapes[i % len(shapes)], dtype=np.uint16) for i in range(count)]
