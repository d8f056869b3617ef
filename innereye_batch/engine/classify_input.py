"""Turn projection images (uint16 PNG convention, (y, x)) into classification network input tensors.

``network_input`` does, in float32: divide by 65535 (to [0, 1]), resize to the spec's ``input_size`` (y, x)
with bilinear interpolation and antialiasing (``torch.nn.functional.interpolate(antialias=True)``, which low-pass
filters when shrinking as PIL's resize does; the aspect ratio follows the input size, no cropping or padding),
replicate the grey channel to ``input_channels`` and normalise each channel as ``(x - mean) / std``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from innereye_batch.model.classification import ClassificationSpec

if TYPE_CHECKING:
    import torch

PNG_MAX = 65535.0


def network_input(
    image: np.ndarray | torch.Tensor, spec: ClassificationSpec, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """One image (y, x) in the 16-bit PNG convention -> the network input (input_channels, *input_size)."""
    return network_inputs([image], spec, device=device)[0]


def network_inputs(
    images: Sequence[np.ndarray | torch.Tensor], spec: ClassificationSpec, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """A batch (N, input_channels, *input_size) from images of any sizes (each (y, x), uint16 PNG convention)."""
    import torch
    import torch.nn.functional as F

    if not images:
        raise ValueError("network_inputs needs at least one image")
    resized = []
    for image in images:
        tensor = torch.as_tensor(np.asarray(image, dtype=np.float32) if isinstance(image, np.ndarray) else image)
        if tensor.dim() != 2:
            raise ValueError(f"a projection image must be 2-D (y, x), got shape {tuple(tensor.shape)}")
        tensor = tensor.to(device=device, dtype=torch.float32) / PNG_MAX
        if tuple(tensor.shape) != tuple(spec.input_size):
            tensor = F.interpolate(
                tensor[None, None], size=spec.input_size, mode="bilinear", align_corners=False, antialias=True
            )[0, 0]
        resized.append(tensor)
    batch = torch.stack(resized)[:, None].expand(-1, spec.input_channels, -1, -1)
    mean = torch.tensor(spec.channel_values("mean"), dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.channel_values("std"), dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    return ((batch - mean) / std).contiguous()
