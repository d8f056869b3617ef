"""A small built-in 2-D CNN classifier (``CNN2D``): convolution blocks, global pooling, a linear layer.

Layout (``F = initial_feature_channels``, ``N = num_blocks``, ``D = num_downsamplings``, default ``N - 1``):

- ``features``: N blocks; block k (``features.k``) has, for k >= 1, a 2x2 max pooling first (blocks 1..D) or an
  identity in its place (blocks after D), then two 3x3 convolution -> batch norm -> ReLU layers with ``F * 2**k``
  channels. Blocks after D keep the resolution and dilate their convolutions instead (dilation 2, 4, ...), so the
  receptive field still grows while the last block keeps a finer grid. Its output (``F * 2**(N-1)`` channels at
  1 / 2**D of the input size) is the default Grad-CAM layer. Parameter names do not depend on D.
- ``pool``: global average pooling (``global_pool="avg"``) or global max pooling (``"max"``: each channel's
  strongest location counts, which suits small findings); ``dropout``; ``classifier``: linear layer to the class
  logits. ``"class_max"`` swaps the order: the classifier scores every location of the last block and each class
  takes its best location, so the class answer comes from one place, and Grad-CAM on the last block (whose
  gradient then reaches that place only, as the classifier weights) is the positive part of the class scores less
  the bias.

``forward`` returns logits (batch, classes); any input size of at least 2**D pixels works.
"""

from __future__ import annotations

import torch
from torch import nn

from innereye_batch.model.architectures import register_architecture


def _conv_bn_relu(in_channels: int, out_channels: int, dilation: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class CNN2D(nn.Module):
    """Convolution blocks -> global average or max pooling -> dropout -> linear (see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        initial_feature_channels: int,
        num_blocks: int,
        dropout: float,
        global_pool: str = "avg",
        num_downsamplings: int | None = None,
    ) -> None:
        super().__init__()
        downsamplings = num_blocks - 1 if num_downsamplings is None else num_downsamplings
        blocks: list[nn.Module] = []
        channels = in_channels
        for k in range(num_blocks):
            width = initial_feature_channels * 2**k
            dilation = 2 ** max(0, k - downsamplings)
            first: list[nn.Module] = [] if k == 0 else [nn.MaxPool2d(2) if k <= downsamplings else nn.Identity()]
            layers = first + _conv_bn_relu(channels, width, dilation) + _conv_bn_relu(width, width, dilation)
            blocks.append(nn.Sequential(*layers))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.global_pool = global_pool
        self.pool = nn.AdaptiveMaxPool2d(1) if global_pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, out_channels)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (batch, classes) from the last block's output (batch, channels, h, w)."""
        if self.global_pool == "class_max":
            scores = self.classifier(self.dropout(features).permute(0, 2, 3, 1))  # (batch, h, w, classes)
            return scores.flatten(1, 2).amax(dim=1)
        return self.classifier(self.dropout(self.pool(features).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_architecture("CNN2D")
def build_cnn2d(
    in_channels: int,
    out_channels: int,
    initial_feature_channels: int = 8,
    num_blocks: int = 4,
    dropout: float = 0.0,
    global_pool: str = "avg",
    num_downsamplings: int | None = None,
) -> nn.Module:
    """The built-in 2-D CNN with ``num_blocks`` blocks starting at ``initial_feature_channels`` channels, the
    first ``num_downsamplings`` of the later blocks halving the resolution (default: all of them)."""
    if not isinstance(initial_feature_channels, int) or initial_feature_channels < 1:
        raise ValueError(f"initial_feature_channels must be a positive integer, got {initial_feature_channels!r}")
    if not isinstance(num_blocks, int) or not 1 <= num_blocks <= 8:
        raise ValueError(f"num_blocks must be an integer from 1 to 8, got {num_blocks!r}")
    if num_downsamplings is not None and (
        not isinstance(num_downsamplings, int)
        or isinstance(num_downsamplings, bool)
        or not 0 <= num_downsamplings < num_blocks
    ):
        raise ValueError(
            f"num_downsamplings must be an integer from 0 to {num_blocks - 1} (num_blocks - 1), "
            f"got {num_downsamplings!r}"
        )
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if global_pool not in ("avg", "max", "class_max"):
        raise ValueError(f"global_pool must be 'avg', 'max' or 'class_max', got {global_pool!r}")
    return CNN2D(
        in_channels, out_channels, initial_feature_channels, num_blocks, float(dropout), global_pool, num_downsamplings
    )
