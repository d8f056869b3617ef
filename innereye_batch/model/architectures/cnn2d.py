"""A small built-in 2-D CNN classifier (``CNN2D``): convolution blocks, global average pooling, a linear layer.

Layout (``F = initial_feature_channels``, ``N = num_blocks``):

- ``features``: N blocks; block k (``features.k``) has 2x2 max pooling first (for k >= 1), then two
  3x3 convolution -> batch norm -> ReLU layers with ``F * 2**k`` channels. Its output (``F * 2**(N-1)``
  channels at 1 / 2**(N-1) of the input size) is the default Grad-CAM layer.
- ``pool``: global average pooling (``global_pool="avg"``) or global max pooling (``"max"``: the strongest
  location decides, which suits small findings); ``dropout``; ``classifier``: linear layer to the class logits.

``forward`` returns logits (batch, classes); any input size of at least 2**(N-1) pixels works.
"""

from __future__ import annotations

import torch
from torch import nn

from innereye_batch.model.architectures import register_architecture


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class CNN2D(nn.Module):
    """Convolution blocks -> global average pooling -> dropout -> linear (see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        initial_feature_channels: int,
        num_blocks: int,
        dropout: float,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels = in_channels
        for k in range(num_blocks):
            width = initial_feature_channels * 2**k
            layers = ([nn.MaxPool2d(2)] if k > 0 else []) + _conv_bn_relu(channels, width) + _conv_bn_relu(width, width)
            blocks.append(nn.Sequential(*layers))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveMaxPool2d(1) if global_pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


@register_architecture("CNN2D")
def build_cnn2d(
    in_channels: int,
    out_channels: int,
    initial_feature_channels: int = 8,
    num_blocks: int = 4,
    dropout: float = 0.0,
    global_pool: str = "avg",
) -> nn.Module:
    """The built-in 2-D CNN with ``num_blocks`` blocks starting at ``initial_feature_channels`` channels."""
    if not isinstance(initial_feature_channels, int) or initial_feature_channels < 1:
        raise ValueError(f"initial_feature_channels must be a positive integer, got {initial_feature_channels!r}")
    if not isinstance(num_blocks, int) or not 1 <= num_blocks <= 8:
        raise ValueError(f"num_blocks must be an integer from 1 to 8, got {num_blocks!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if global_pool not in ("avg", "max"):
        raise ValueError(f"global_pool must be 'avg' or 'max', got {global_pool!r}")
    return CNN2D(in_channels, out_channels, initial_feature_channels, num_blocks, float(dropout), global_pool)
