"""Sliding-window inference: cut a volume into patches, run them in batches, stitch the outputs back.

What is stitched is the network's output passed through ``activation``, applied per patch before stitching:
``None`` stitches raw logits (as MONAI does by default); the task says ``softmax`` (segmentation posteriors, as
InnerEye stitches them) or ``sigmoid`` (multi-label).

``gaussian`` stitching is MONAI's ``sliding_window_inference`` with ``mode="gaussian"``. Its patch grid (per axis,
as MONAI's ``dense_patch_slices``) starts at 0, stride, 2 * stride, ... while the patch ends inside the volume,
then one last patch flush with the far border; each patch voxel weighs exp(-d^2 / (2 sigma^2)), d the distance
to the patch centre ((size - 1) / 2) and sigma = size / 8 per axis, floored at 1e-3 so corners still count (the
same map as MONAI's ``compute_importance_map``).

``average`` stitching is InnerEye's (its inference pipeline's patches come from the radio library's
``get_patches`` and are stitched by its ``load_from_patches``): each axis is first padded (``padding``; half
before, the odd voxel after) to the patch plus a whole number of strides (``strided_extent``), patches start at
0, stride, 2 * stride, ... and every patch voxel weighs 1; the padding is cropped off at the end. Where the
volume already is the patch plus whole strides, that is MONAI's ``mode="constant"``; elsewhere every patch of
that axis lies elsewhere than on MONAI's grid, and the outputs differ.

Posteriors are the weighted sum divided by the summed weights, accumulated in float32.

Memory: the full-volume accumulators (classes + 1 float32 volumes) live on ``output_device``. When they would
not fit there (a CUDA OutOfMemoryError on allocation, free memory below the estimate, or ``max_output_bytes``
exceeded), they are kept on the CPU while patches still run on the image's device; this is logged as a warning
and the returned tensor is then on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal

from innereye_batch.engine.preprocess import PaddingMode, pad_to_multiple

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

StitchingMode = Literal["gaussian", "average"]
Activation = Literal["softmax", "sigmoid"]
GAUSSIAN_SIGMA_SCALE = 0.125
GAUSSIAN_MIN_WEIGHT = 1e-3
# Fraction of the free CUDA memory the accumulators may take; the rest is left for the patches' activations.
_CUDA_ACCUMULATOR_SHARE = 0.5


def patch_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start indices of patches along one axis: every ``stride``, the last one flush with the border."""
    if patch >= size:
        return [0]
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    starts: list[int] = []
    start = 0
    while True:
        starts.append(min(start, size - patch))
        if start + patch >= size:
            return starts
        start += stride


def strided_extent(size: int, patch: int, stride: int) -> int:
    """The length InnerEye pads an axis of ``size`` voxels to before cutting it into patches (radio's
    ``calc_padding_size``): the patch plus the fewest whole strides that cover ``size``."""
    if size <= patch:
        return patch
    return patch + math.ceil((size - patch) / stride) * stride


def gaussian_importance_map(patch_size: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """Importance weights of one patch (z, y, x): separable Gaussian, sigma = size / 8, floored at 1e-3."""
    import torch

    weights: torch.Tensor | None = None
    for size in patch_size:
        sigma = size * GAUSSIAN_SIGMA_SCALE
        distance = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
        profile = torch.exp(distance**2 / (-2 * sigma**2))
        weights = profile if weights is None else weights.unsqueeze(-1) * profile
    assert weights is not None
    floor = max(float(weights.min()), GAUSSIAN_MIN_WEIGHT)
    return weights.clamp_(min=floor)


def sliding_window_inference(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    *,
    num_outputs: int,
    patch_size: tuple[int, int, int] | None,
    stride: tuple[int, int, int] | None = None,
    stitching: StitchingMode = "gaussian",
    patch_batch: int = 1,
    size_multiple: int | Sequence[int] = 1,
    output_device: torch.device | None = None,
    amp: bool = False,
    padding: PaddingMode = "edge",
    max_output_bytes: int | None = None,
    activation: Activation | None = None,
    fixed_batch: bool | None = None,
    chosen_batches: dict[tuple[object, ...], int] | None = None,
) -> torch.Tensor:
    """Stitched outputs (num_outputs, Z, Y, X) float32 for a (C, Z, Y, X) image: ``activation`` of ``predict``'s
    logits per patch (softmax over channels, sigmoid per channel, or the logits themselves when None).

    ``predict`` maps (N, C, z, y, x) to logits (N, num_outputs, z, y, x) of the same spatial size. ``patch_size``
    None runs the whole volume at once (padded to ``size_multiple``: one number, or one per (z, y, x) axis). A
    patch larger than the volume is shrunk to the volume padded to ``size_multiple``; a volume smaller than a
    patch is padded (``padding``: edge or zero).
    ``stride`` defaults to half the patch. ``patch_batch`` patches go through each forward pass (0: chosen from
    the device, ``auto_patch_batch``); with ``amp``
    the forward pass runs under mixed precision where the device computes it (``amp_autocast``: bf16 on CUDA and
    on CPUs with native bf16). Patches run on the image's device; see the module docstring for where the
    accumulators live. ``fixed_batch`` (default: on CUDA when cuDNN's autotuning, ``cudnn.benchmark``, is on)
    pads the last, smaller batch of patches to the full batch with copies of its last patch, so that every
    forward pass has one shape: with autotuning each new shape costs a search of its own (measured on an H100:
    a 3-member ensemble's series took 11-43 s instead of 3 s when its last batch was a new size). For the same
    reason an automatic patch batch is chosen once per device, patch shape and precision when ``chosen_batches``
    (the caller's memo, kept across series) is given: the free memory, and with it the choice, differs from one
    series to the next, and one batch all run long keeps the passes alike.
    """
    import torch

    if image.dim() != 4:
        raise ValueError(f"sliding_window_inference needs a (C, Z, Y, X) image, got shape {tuple(image.shape)}")
    if stitching not in ("gaussian", "average"):
        raise ValueError(f"unknown stitching mode {stitching!r}: use 'gaussian' or 'average'")
    if patch_batch < 0:
        raise ValueError(f"patch_batch must be >= 1, or 0 to choose it from the device, got {patch_batch}")
    if activation not in (None, "softmax", "sigmoid"):
        raise ValueError(f"unknown activation {activation!r}: use 'softmax', 'sigmoid' or None (logits)")
    spatial = tuple(int(s) for s in image.shape[1:])
    target = output_device if output_device is not None else image.device
    forward = _forward(predict, image.device, amp)
    if patch_size is None:
        return _whole_volume(forward, image, num_outputs, size_multiple, padding, activation).to(target)
    patch = _effective_patch(patch_size, spatial, size_multiple)
    steps = stride if stride is not None else tuple(max(1, p // 2) for p in patch_size)
    if len(steps) != 3 or any(not 1 <= s <= p for s, p in zip(steps, patch_size, strict=True)):
        raise ValueError(f"stride {tuple(steps)} must be between 1 and the patch size {tuple(patch_size)} per axis")
    if stitching == "average":  # InnerEye's grid: whole strides tile the padded axis
        extent = tuple(strided_extent(n, p, t) for n, p, t in zip(spatial, patch, steps, strict=True))
    else:
        extent = patch
    padded, crop = pad_to_multiple(image, 1, min_shape=extent, mode=padding)
    grid = tuple(int(s) for s in padded.shape[1:])
    posteriors, weights = _allocate_accumulators(num_outputs, grid, target, max_output_bytes)
    importance = (
        gaussian_importance_map(patch, device=image.device)
        if stitching == "gaussian"
        else torch.ones(patch, dtype=torch.float32, device=image.device)
    )
    patch_weight = importance.to(posteriors.device)
    corners = [
        (z, y, x)
        for z in patch_starts(grid[0], patch[0], steps[0])
        for y in patch_starts(grid[1], patch[1], steps[1])
        for x in patch_starts(grid[2], patch[2], steps[2])
    ]
    if patch_batch == 0:
        memo_key = (str(image.device), patch, int(image.shape[0]), amp)
        chosen = chosen_batches.get(memo_key) if chosen_batches is not None else None
        if chosen is None:
            most = len(corners) if chosen_batches is None else MAX_PATCH_BATCH  # a memo serves larger series too
            chosen = auto_patch_batch(predict, image.shape[0], patch, most, image.device, amp)
            log.info("patch batch %d for patches of %s on %s", chosen, patch, image.device)
            if chosen_batches is not None:
                chosen_batches[memo_key] = chosen
        patch_batch = min(chosen, len(corners))
    if fixed_batch is None:
        fixed_batch = image.device.type == "cuda" and bool(torch.backends.cudnn.benchmark)
    for batch_corners in _chunks(corners, patch_batch):
        windows = [_window(corner, patch) for corner in batch_corners]
        inputs = torch.stack([padded[(slice(None), *window)] for window in windows])
        missing = patch_batch - len(windows) if fixed_batch else 0
        if missing > 0:
            inputs = torch.cat([inputs, inputs[-1:].expand(missing, *inputs.shape[1:])])
        outputs = _activated(forward(inputs), num_outputs, patch, activation)[: len(windows)]
        weighted = outputs.mul_(importance).to(posteriors.device)
        for k, window in enumerate(windows):
            posteriors[(slice(None), *window)] += weighted[k]
            weights[window] += patch_weight
    posteriors /= weights
    return posteriors[(slice(None), *crop)]


def _forward(
    predict: Callable[[torch.Tensor], torch.Tensor], device: torch.device, amp: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``predict`` under torch.inference_mode, and under autocast when ``amp`` is on (see ``amp_autocast``)."""
    import torch

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), amp_autocast(device, amp):
            return predict(inputs)

    return forward


def _whole_volume(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    num_outputs: int,
    size_multiple: int | Sequence[int],
    padding: PaddingMode,
    activation: Activation | None,
) -> torch.Tensor:
    padded, crop = pad_to_multiple(image, size_multiple, mode=padding)
    outputs = _activated(predict(padded[None]), num_outputs, tuple(padded.shape[1:]), activation)
    return outputs[(0, slice(None), *crop)]


def _activated(
    logits: torch.Tensor, num_outputs: int, patch: Sequence[int], activation: Activation | None
) -> torch.Tensor:
    """The network's (N, K, z, y, x) output checked for shape, in float32, through ``activation``."""
    import torch

    expected = (num_outputs, *patch)
    if logits.dim() != 5 or tuple(logits.shape[1:]) != expected:
        raise ValueError(
            f"the network returned shape {tuple(logits.shape)} for input patches of {tuple(patch)}; expected "
            f"(N, {', '.join(str(e) for e in expected)}): {num_outputs} output channels, same spatial size"
        )
    if activation == "softmax":
        return torch.softmax(logits.float(), dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(logits.float())
    return logits.float().clone()  # the caller scales it in place; never alias the network's own output


def _effective_patch(
    patch_size: Sequence[int], spatial: Sequence[int], size_multiple: int | Sequence[int]
) -> tuple[int, int, int]:
    """The patch, each axis shrunk to the volume's size rounded up to that axis' multiple (InnerEye's
    ``restrict_crop_size_to_image``)."""
    multiples = [size_multiple] * 3 if isinstance(size_multiple, int) else [int(m) for m in size_multiple]
    if any(p < 1 or p % m for p, m in zip(patch_size, multiples, strict=True)):
        each = multiples[0] if len(set(multiples)) == 1 else tuple(multiples)
        raise ValueError(f"patch size {tuple(patch_size)} must be positive multiples of {each}")
    sizes = [min(p, math.ceil(s / m) * m) for p, s, m in zip(patch_size, spatial, multiples, strict=True)]
    return sizes[0], sizes[1], sizes[2]


def _window(corner: Sequence[int], patch: Sequence[int]) -> tuple[slice, slice, slice]:
    return (
        slice(corner[0], corner[0] + patch[0]),
        slice(corner[1], corner[1] + patch[1]),
        slice(corner[2], corner[2] + patch[2]),
    )


def _chunks(items: list[tuple[int, int, int]], size: int) -> Iterator[list[tuple[int, int, int]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def accumulator_bytes(num_outputs: int, grid: Sequence[int]) -> int:
    """Bytes of the float32 accumulators for a padded grid: one volume per output plus the weights."""
    return (num_outputs + 1) * math.prod(grid) * 4


def _allocate_accumulators(
    num_outputs: int, grid: tuple[int, ...], device: torch.device, max_output_bytes: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    cpu = torch.device("cpu")
    needed = accumulator_bytes(num_outputs, grid)
    reason = _accumulators_too_big(needed, device, max_output_bytes)
    if reason is None:
        try:
            return _zeros(num_outputs, grid, device)
        except torch.cuda.OutOfMemoryError:
            reason = "out of memory on allocation"
            if device.type == "cuda":
                torch.cuda.empty_cache()
    log.warning(
        "posterior accumulators (%.2f GiB) kept on the CPU instead of %s (%s); patches still run on %s",
        needed / 2**30,
        device,
        reason,
        "the image's device",
    )
    return _zeros(num_outputs, grid, cpu)


def _accumulators_too_big(needed: int, device: torch.device, max_output_bytes: int | None) -> str | None:
    if max_output_bytes is not None and needed > max_output_bytes:
        return f"{needed} bytes > max_output_bytes {max_output_bytes}"
    if device.type == "cuda":
        from innereye_batch.engine.memory import free_device_bytes

        free = free_device_bytes(device)
        if needed > free * _CUDA_ACCUMULATOR_SHARE:
            return f"{free / 2**30:.2f} GiB free on the device"
    return None


def _zeros(num_outputs: int, grid: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    posteriors = torch.zeros((num_outputs, *grid), dtype=torch.float32, device=device)
    weights = torch.zeros(grid, dtype=torch.float32, device=device)
    return posteriors, weights


CPU_PATCH_BATCH = 4
"""Patches per forward pass on a CPU when chosen automatically: oneDNN runs batches of several patches faster per
patch than one at a time (measured 1.1-1.2x with 24x64x64 patches, BENCHMARKS.md); more gives nothing more."""
MAX_PATCH_BATCH = 32
_PATCH_MEMORY_SHARE = 0.5
"""Share of the free device memory that the patches' activations may take (the rest: accumulators, the image)."""
GPU_BATCH_VOXELS = 2**24
"""Voxels per forward pass past which a larger automatic patch batch buys a GPU almost nothing, while its memory
grows with it: 16 patches of 64x128x128, 32 (``MAX_PATCH_BATCH``) of anything below 64x64x128. Measured on an
H200 (UNet3D, 32 initial channels, 64x128x128 patches, fp32): 5.1 ms per patch at 4 patches per pass, 4.9 at 12
and 4.8 at 32, which took 21 GiB of GPU memory (BENCHMARKS.md)."""


def patch_batch_for_memory(free_bytes: int, bytes_per_patch: int, patches: int, patch_voxels: int | None = None) -> int:
    """How many patches fit one forward pass: half the free memory over one patch's peak use, at least 1, at most
    ``MAX_PATCH_BATCH`` and the number of patches; with ``patch_voxels``, at most as many as hold
    ``GPU_BATCH_VOXELS`` voxels (rounded up)."""
    most = min(MAX_PATCH_BATCH, patches)
    if patch_voxels is not None and patch_voxels > 0:
        most = min(most, -(-GPU_BATCH_VOXELS // patch_voxels))
    if bytes_per_patch <= 0:
        return max(1, most)
    fitting = int(free_bytes * _PATCH_MEMORY_SHARE) // bytes_per_patch
    return max(1, min(most, fitting))


def auto_patch_batch(
    predict: Callable[[torch.Tensor], torch.Tensor],
    channels: int,
    patch: Sequence[int],
    patches: int,
    device: torch.device,
    amp: bool = False,
) -> int:
    """Patches per forward pass for ``device``: on CUDA from the free memory and one probe patch's peak memory
    (measured, under the same autocast), and no more than ``GPU_BATCH_VOXELS`` voxels; on a CPU
    ``CPU_PATCH_BATCH``."""
    import torch

    if device.type != "cuda":
        return max(1, min(CPU_PATCH_BATCH, patches))
    from innereye_batch.engine.memory import free_device_bytes, reset_cuda_peak

    torch.cuda.synchronize(device)
    reset_cuda_peak(device)
    before = torch.cuda.memory_allocated(device)
    probe = torch.zeros((1, channels, *patch), device=device)
    with torch.inference_mode(), amp_autocast(device, amp):
        predict(probe)
    torch.cuda.synchronize(device)
    per_patch = torch.cuda.max_memory_allocated(device) - before
    del probe
    return patch_batch_for_memory(free_device_bytes(device), per_patch, patches, math.prod(patch))


def amp_autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[object]:
    """Mixed precision when ``amp`` is on, in ``autocast_dtype``; otherwise nothing (fp32)."""
    import torch

    dtype = autocast_dtype(device, amp)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """What ``--amp`` autocasts to: on CUDA bf16 (fp16 where bf16 is unsupported); on a CPU whose oneDNN computes
    in bf16 (AVX512-BF16, AMX), bf16; None (fp32) otherwise, or when ``amp`` is off."""
    import torch

    if amp and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp and device.type == "cpu" and cpu_computes_bf16():
        return torch.bfloat16
    return None


def precision_of(device: torch.device, amp: bool) -> str:
    """What ``amp_autocast(device, amp)`` computes in, for the record: ``bfloat16 autocast``, ``float16 autocast``,
    ``float32 (TF32 convolutions)`` (cuDNN's default for float32 convolutions on GPUs from Ampere on) or
    ``float32``."""
    import torch

    dtype = autocast_dtype(device, amp)
    if dtype is not None:
        return f"{str(dtype).removeprefix('torch.')} autocast"
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32 and torch.cuda.get_device_capability(device)[0] >= 8:
        return "float32 (TF32 convolutions)"
    return "float32"


def cpu_computes_bf16() -> bool:
    """True when this CPU runs bf16 convolutions natively (oneDNN's own check: AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
