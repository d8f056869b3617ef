"""InnerEye's 3-D U-Net, rebuilt so that InnerEye's state dicts load with ``strict=True``.

Module and parameter names, shapes and the forward computation follow ``UNet3D`` in
microsoft/InnerEye-DeepLearning, checked against ``InnerEye/ML/models/architectures/unet_3d.py`` at commits
47817c654a55a13afcf3d1da0e91b9f798fcc078 and 11078bf2bec57ad75086188366fb1ab509e4630f (same structure), with its
building blocks ``InnerEye/ML/models/layers/basic.py`` (``BasicLayer``: ``conv1`` without bias, ``bn1``, ReLU) and
``InnerEye/ML/utils/layer_util.py`` (padding ``(k - 1) // 2 + d - 1``; transposed-convolution kernel
``2 * factor``, or 1 where the factor is 1). The code here is our own.

Layout (``N = num_downsampling_paths``, ``F = initial_feature_channels``):

- ``_layers.0``: encode block, ``in_channels -> F``, stride 1.
- ``_layers.1 .. _layers.N``: encode blocks ``c -> 2c``; the first convolution has stride ``downsampling_factor``,
  the second the ``downsampling_dilation``. An encode block is ``block1`` then ``block2`` with a residual add:
  ``block2(block1(x)) + block1(x)``; each block is ``conv1`` (no bias) -> ``bn1`` -> ReLU.
- then, per level going up, a decode block (``upsample_block``: ConvTranspose3d with bias -> BatchNorm3d -> ReLU,
  ``c -> c/2``) and a synthesis block that merges the skip connection: ``conv1.conv1(x) + conv2.conv1(skip)``
  -> ``activation_block`` (BatchNorm3d, ReLU) -> ``block2(x) + x``.
- ``output_layer``: 1x1x1 Conv3d with bias to ``out_channels`` classes.

``forward`` returns logits of shape (batch, classes, z, y, x); posteriors are ``softmax(logits, dim=1)``, as in
InnerEye's inference. Input sizes must be multiples of ``downsampling_factor ** num_downsampling_paths``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from innereye_batch.model.architectures import register_architecture

Triple = tuple[int, int, int]
PADDING_MODES = ("zero", "constant")
"""InnerEye's ``PaddingMode`` values a UNet3D can run with. ``no_padding`` cannot: every encode and synthesis block
adds its input to its output (``block2(x) + x``), which unpadded convolutions make smaller, so InnerEye's own
network fails at its first forward pass; it is refused when the network is built."""


def _triple(value: int | Sequence[int], name: str) -> Triple:
    if isinstance(value, int):
        return (value, value, value)
    values = tuple(int(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"{name} must be an integer or three integers, got {value!r}")
    return (values[0], values[1], values[2])


def _same_padding(kernel: Triple, dilation: Triple, padding_mode: str) -> Triple:
    """InnerEye's convolution padding (``zero`` or ``constant``): keeps the size for odd kernels."""
    pads = [0 if k == 1 else (k - 1) // 2 + d - 1 for k, d in zip(kernel, dilation, strict=True)]
    return (pads[0], pads[1], pads[2])


class ConvBnRelu(nn.Module):
    """Convolution without bias, optional batch norm, optional ReLU (InnerEye's ``BasicLayer``)."""

    def __init__(
        self,
        channels: tuple[int, int],
        kernel: Triple,
        *,
        stride: Triple = (1, 1, 1),
        dilation: Triple = (1, 1, 1),
        padding_mode: str = "zero",
        batch_norm: bool = True,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(
            channels[0],
            channels[1],
            kernel_size=kernel,
            stride=stride,
            padding=_same_padding(kernel, dilation, padding_mode),
            dilation=dilation,
            bias=False,
        )
        self.bn1 = nn.BatchNorm3d(channels[1]) if batch_norm else None
        self.activation = nn.ReLU(inplace=True) if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.bn1(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class EncodeBlock(nn.Module):
    """Two ConvBnRelu layers with a residual connection; the first may downsample by its stride.

    Every block of the U-Net takes ``(x, skips)`` so that the layer loop compiles with TorchScript; only the
    synthesis block consumes a skip connection (the last one pushed).
    """

    def __init__(
        self, channels: tuple[int, int], kernel: Triple, stride: Triple, dilation: Triple, padding_mode: str
    ) -> None:
        super().__init__()
        self.block1 = ConvBnRelu(channels, kernel, stride=stride, padding_mode=padding_mode)
        self.block2 = ConvBnRelu((channels[1], channels[1]), kernel, dilation=dilation, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.block1(x)
        return self.block2(x) + x


class DecodeBlock(nn.Module):
    """Learned upsampling: transposed convolution (with bias), batch norm, ReLU."""

    def __init__(self, channels: tuple[int, int], factor: Triple, padding_mode: str) -> None:
        super().__init__()
        kernel = _triple([2 * f if f > 1 else 1 for f in factor], "upsampling kernel")
        self.upsample_block = nn.Sequential(
            nn.ConvTranspose3d(
                channels[0],
                channels[1],
                kernel_size=kernel,
                stride=factor,
                padding=_same_padding(kernel, (1, 1, 1), padding_mode),
            ),
            nn.BatchNorm3d(channels[1]),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        return self.upsample_block(x)


class SynthesisBlock(nn.Module):
    """Merges the upsampled tensor with the last skip connection (popped) by summed convolutions, then a
    residual layer."""

    def __init__(self, channels: int, kernel: Triple, padding_mode: str) -> None:
        super().__init__()
        pair = (channels, channels)
        self.conv1 = ConvBnRelu(pair, kernel, padding_mode=padding_mode, batch_norm=False, relu=False)
        self.conv2 = ConvBnRelu(pair, kernel, padding_mode=padding_mode, batch_norm=False, relu=False)
        self.activation_block = nn.Sequential(nn.BatchNorm3d(channels), nn.ReLU(inplace=True))
        self.block2 = ConvBnRelu(pair, kernel, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(x) + self.conv2(skips.pop())
        x = self.activation_block(x)
        return self.block2(x) + x


class UNet3D(nn.Module):
    """InnerEye's UNet3D: returns logits (batch, classes, z, y, x); softmax over dim 1 gives posteriors."""

    def __init__(
        self,
        input_image_channels: int,
        initial_feature_channels: int,
        num_classes: int,
        kernel_size: int | Sequence[int] = 3,
        num_downsampling_paths: int = 4,
        downsampling_factor: int | Sequence[int] = 2,
        downsampling_dilation: int | Sequence[int] = (1, 1, 1),
        padding_mode: str = "zero",
    ) -> None:
        super().__init__()
        if padding_mode == "no_padding":
            raise ValueError(
                "padding_mode 'no_padding' cannot run: the U-Net's residual additions need convolutions that keep "
                "the size (InnerEye's UNet3D fails at its first forward pass too); use 'zero'"
            )
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if num_downsampling_paths < 1:
            raise ValueError(f"num_downsampling_paths must be >= 1, got {num_downsampling_paths}")
        kernel = _triple(kernel_size, "kernel_size")
        factor = _triple(downsampling_factor, "downsampling_factor")
        dilation = _triple(downsampling_dilation, "downsampling_dilation")
        self.num_downsampling_paths = num_downsampling_paths
        self.num_classes = num_classes
        self._layers = nn.ModuleList()
        self._layers.append(
            EncodeBlock((input_image_channels, initial_feature_channels), kernel, (1, 1, 1), (1, 1, 1), padding_mode)
        )
        channels = initial_feature_channels
        for _ in range(num_downsampling_paths):
            self._layers.append(EncodeBlock((channels, channels * 2), kernel, factor, dilation, padding_mode))
            channels *= 2
        for _ in range(num_downsampling_paths):
            self._layers.append(DecodeBlock((channels, channels // 2), factor, padding_mode))
            self._layers.append(SynthesisBlock(channels // 2, kernel, padding_mode))
            channels //= 2
        self.output_layer = nn.Conv3d(channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for index, layer in enumerate(self._layers):
            x = layer(x, skips)
            if index < self.num_downsampling_paths:
                skips.append(x)
        return self.output_layer(x)


def unet3d_size_multiple(params: Mapping[str, Any]) -> tuple[int, int, int]:
    """Inputs must be multiples of ``factor ** num_downsampling_paths`` on each axis, with that axis' factor (as
    InnerEye's ``UNet3D.crop_size_constraints``)."""
    factor = _triple(params.get("downsampling_factor", 2), "downsampling_factor")
    paths = int(params.get("num_downsampling_paths", 4))
    return (factor[0] ** paths, factor[1] ** paths, factor[2] ** paths)


@register_architecture("UNet3D", size_multiple=unet3d_size_multiple)
def build_unet3d(
    in_channels: int,
    out_channels: int,
    *,
    initial_feature_channels: int,
    kernel_size: int | Sequence[int] = 3,
    num_downsampling_paths: int = 4,
    downsampling_factor: int | Sequence[int] = 2,
    downsampling_dilation: int | Sequence[int] = (1, 1, 1),
    padding_mode: str = "zero",
) -> UNet3D:
    """InnerEye's UNet3D; ``initial_feature_channels`` is InnerEye's ``feature_channels[0]``."""
    return UNet3D(
        input_image_channels=in_channels,
        initial_feature_channels=initial_feature_channels,
        num_classes=out_channels,
        kernel_size=kernel_size,
        num_downsampling_paths=num_downsampling_paths,
        downsampling_factor=downsampling_factor,
        downsampling_dilation=downsampling_dilation,
        padding_mode=padding_mode,
    )
