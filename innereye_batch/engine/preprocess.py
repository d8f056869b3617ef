"""Pre-processing on the tensor: intensity normalisation, resampling to the model's grid and back, padding.

Conventions: spatial axes are the last three, ordered (z, y, x); spacings are (z, y, x) in mm. A resampled grid
keeps the source's origin and direction: the centre of voxel 0 is the same point in both grids, so output voxel
``i`` (spacing ``t``) lies at source index ``i * t / s`` (spacing ``s``). That is "align corners" on the first
voxel only; the far edge is not stretched to fit (``resampled_shape``: the last output centre lies within half an
output voxel of the last source centre). Points past the last source voxel centre take the border value; ITK does
the same within half a source voxel and writes its default value further out. Inside that band, trilinear results
equal SimpleITK's ``sitkLinear``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

from innereye_batch.model.spec import Normalisation

if TYPE_CHECKING:
    import torch

ResampleMode = Literal["trilinear", "linear", "nearest"]
PaddingMode = Literal["edge", "zero"]

# InnerEye's robust_mean_std: the inter-quartile range of a normal distribution spans 2 * 0.67448975 sigma.
_IQR_TO_STD = 2 * 0.67448975
_OTSU_BINS = 256


def normalise(image: torch.Tensor, spec: Normalisation, *, channel_index: int = 0) -> torch.Tensor:
    """Intensity-normalised float32 copy of one channel's voxels (any shape), as InnerEye's PhotometricNormalization.

    ``ct_window``: [level - window/2, level + window/2] mapped linearly onto ``output_range`` and clipped
    (CtWindow). ``zscore``: (x - mean) / std over the whole image, population std (SimpleNorm). ``mri_window``:
    InnerEye's MriWindow (see ``mri_window``); ``channel_index`` picks this channel's entry of ``spec.tail``.
    ``none``: unchanged (as float32).
    """
    image = image.float()
    if spec.method == "none":
        return image.clone()
    if spec.method == "ct_window":
        if spec.level is None or spec.window is None:
            missing = "level" if spec.level is None else "window"
            raise ValueError(f"ct_window normalisation needs '{missing}' (e.g. level 50, window 600)")
        if spec.window <= 0:
            raise ValueError(f"ct_window normalisation needs a positive window, got {spec.window}")
        low = spec.level - spec.window / 2
        high = spec.level + spec.window / 2
        return linear_window(image, (low, high), spec.output_range)
    if spec.method == "zscore":
        std, mean = _std_mean(image)
        if std == 0.0 or not math.isfinite(std):
            raise ValueError(f"zscore normalisation: the image has standard deviation {std} (constant image?)")
        return (image - mean) / std
    if spec.method == "mri_window":
        tails = spec.tail if spec.tail else (1.0,)
        tail = tails[channel_index] if channel_index < len(tails) else tails[-1]
        return mri_window(image, output_range=spec.output_range, sharpen=spec.sharpen, tail=tail)
    raise ValueError(f"unknown normalisation method {spec.method!r}")


def linear_window(
    image: torch.Tensor, input_range: tuple[float, float], output_range: tuple[float, float]
) -> torch.Tensor:
    """Map ``input_range`` linearly onto ``output_range`` and clip to it (InnerEye's LinearTransform)."""
    (in_low, in_high), (out_low, out_high) = input_range, output_range
    if in_high == in_low:
        raise ValueError(f"empty intensity window {input_range}")
    gradient = (out_high - out_low) / (in_high - in_low)
    offset = out_high - gradient * in_high
    return (image * gradient + offset).clamp_(min=min(out_low, out_high), max=max(out_low, out_high))


def _std_mean(image: torch.Tensor) -> tuple[float, float]:
    import torch

    std, mean = torch.std_mean(image, correction=0)
    return float(std), float(mean)


def otsu_threshold(values: object) -> float:
    """Otsu's threshold as scikit-image's ``threshold_otsu`` computes it for float data (256 bins over min..max).

    Returns the centre of the histogram bin that maximises the between-class variance (first one on ties).
    """
    import numpy as np

    data = np.asarray(values).ravel()
    low, high = data.min(), data.max()
    if low == high:
        raise ValueError(f"Otsu threshold of a constant image (every voxel is {low}) is undefined")
    counts, edges = np.histogram(data, bins=_OTSU_BINS)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight_below = np.cumsum(counts)
    weight_above = np.cumsum(counts[::-1])[::-1]
    mean_below = np.cumsum(counts * centres) / weight_below
    mean_above = (np.cumsum((counts * centres)[::-1]) / weight_above[::-1])[::-1]
    with np.errstate(invalid="ignore"):
        between = weight_below[:-1] * weight_above[1:] * (mean_below[:-1] - mean_above[1:]) ** 2
    return float(centres[int(np.nanargmax(between))])


def robust_level_and_std(values: object) -> tuple[float, float, float, float]:
    """(median, IQR-based standard deviation, minimum, maximum), percentiles by the midpoint rule (as InnerEye)."""
    import numpy as np

    data = np.asarray(values).ravel()
    low, q25, median, q75, high = np.percentile(data, (0, 25, 50, 75, 100), method="midpoint")
    return float(median), float((q75 - q25) / _IQR_TO_STD), float(low), float(high)


def mri_window(
    image: torch.Tensor,
    *,
    output_range: tuple[float, float] = (-1.0, 1.0),
    sharpen: float = 1.9,
    tail: float = 1.0,
) -> torch.Tensor:
    """InnerEye's MriWindow for one channel (photometric_normalization.mri_window, whole image, no mask).

    Otsu's threshold separates air; over the voxels above it, the median is the level and the inter-quartile
    range gives a robust std. The window is [max(level - sharpen * std, threshold),
    min(foreground max, level + tail * sharpen * std)]; voxels below the threshold are set to 0 first, then the
    window is mapped linearly onto ``output_range`` and clipped. Statistics are computed on the CPU (NumPy).
    """
    flat = image.detach().reshape(-1).cpu().numpy()
    threshold = otsu_threshold(flat)
    level, std, _, foreground_max = robust_level_and_std(flat[flat > threshold])
    window = (max(level - std * sharpen, threshold), min(foreground_max, level + tail * std * sharpen))
    thresholded = image.masked_fill(image < threshold, 0.0)
    return linear_window(thresholded, window, output_range)


def pad_to_multiple(
    image: torch.Tensor,
    multiple: int | Sequence[int],
    *,
    min_shape: Sequence[int] | None = None,
    mode: PaddingMode = "edge",
) -> tuple[torch.Tensor, tuple[slice, slice, slice]]:
    """Pad the last three axes to at least ``min_shape`` and to a multiple of ``multiple``.

    Padding is split as evenly as possible, the odd voxel after (as MONAI's sliding window). ``mode``: ``edge``
    repeats border voxels (InnerEye's default), ``zero`` pads with 0. Returns the padded tensor and the (z, y, x)
    slices that crop it back: ``padded[..., zs, ys, xs]`` equals ``image``.
    """
    import torch.nn.functional as F

    multiples = _three(multiple, "multiple")
    minimum = _three(min_shape, "min_shape") if min_shape is not None else (1, 1, 1)
    spatial = tuple(int(s) for s in image.shape[-3:])
    before: list[int] = []
    after: list[int] = []
    for size, step, least in zip(spatial, multiples, minimum, strict=True):
        if step < 1:
            raise ValueError(f"pad_to_multiple: multiple must be >= 1, got {multiples}")
        target = math.ceil(max(size, least) / step) * step
        before.append((target - size) // 2)
        after.append(target - size - (target - size) // 2)
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
    if not any(before) and not any(after):
        return image, crop  # type: ignore[return-value]
    # F.pad takes (x_before, x_after, y_before, y_after, z_before, z_after).
    pads = [before[2], after[2], before[1], after[1], before[0], after[0]]
    batch = image.reshape(1, -1, *spatial)
    if mode == "edge":
        padded = F.pad(batch if batch.is_floating_point() else batch.float(), pads, mode="replicate")
        padded = padded.to(image.dtype)
    elif mode == "zero":
        padded = F.pad(batch, pads, mode="constant", value=0)
    else:
        raise ValueError(f"unknown padding mode {mode!r}: use 'edge' or 'zero'")
    return padded.reshape(*image.shape[:-3], *padded.shape[-3:]), crop  # type: ignore[return-value]


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]
) -> tuple[int, int, int]:
    """Shape of the grid with ``target_spacing`` from the first source voxel centre to the last, to the nearest
    voxel: round((shape - 1) * spacing / target) + 1 per axis, as MONAI's ``Spacing``. Its last voxel centre lies
    within half a target voxel of the last source centre, so every source voxel is seen by the model (with
    round(shape * spacing / target) voxels, up to 1.5 target voxels less a source one fell past its last centre:
    40 slices of 1 mm on a 3 mm grid had 13 slices, the last 3 source slices unseen)."""
    sizes = [math.floor((n - 1) * s / t + 0.5) + 1 for n, s, t in zip(shape[-3:], spacing, target_spacing, strict=True)]
    return sizes[0], sizes[1], sizes[2]


def resample(
    image: torch.Tensor,
    spacing: Sequence[float],
    target_spacing: Sequence[float],
    *,
    mode: ResampleMode = "trilinear",
) -> torch.Tensor:
    """Resample (..., Z, Y, X) from ``spacing`` onto the grid with ``target_spacing`` (same origin, direction).

    The new shape is ``resampled_shape``; voxel centres map as the module docstring says.
    """
    shape = resampled_shape(image.shape, spacing, target_spacing)
    return resample_to_shape(image, shape, spacing, target_spacing, mode=mode)


def resample_to_shape(
    tensor: torch.Tensor,
    shape: Sequence[int],
    spacing_from: Sequence[float],
    spacing_to: Sequence[float],
    mode: ResampleMode = "trilinear",
) -> torch.Tensor:
    """Resample (..., Z, Y, X) on a grid of ``spacing_from`` onto the grid of ``spacing_to`` with exactly ``shape``.

    Both grids share voxel 0's centre: output index ``i`` samples source index ``i * spacing_to / spacing_from``.
    ``trilinear`` (alias ``linear``) returns float32; ``nearest`` keeps the dtype (use it for label maps).
    Trilinear interpolation is separable, so it is done one axis at a time (exactly, with less memory).
    """
    if mode not in ("trilinear", "linear", "nearest"):
        raise ValueError(f"unknown resampling mode {mode!r}: use 'trilinear' or 'nearest'")
    result = tensor if mode == "nearest" else tensor.float()
    axes = _axis_plan(tuple(result.shape[-3:]), shape, spacing_from, spacing_to, result.device, mode == "nearest")
    first_axis = result.dim() - 3
    for k, taps in axes:
        result = _apply_axis(result, first_axis + k, taps)
    return result


def resample_slabs(
    tensor: torch.Tensor,
    shape: Sequence[int],
    spacing_from: Sequence[float],
    spacing_to: Sequence[float],
    slab_bytes: int = 2**28,
) -> Iterator[tuple[int, torch.Tensor]]:
    """``resample_to_shape(tensor, ...)`` (trilinear) one slab of output slices (z) at a time: ``(first slice,
    slab)`` pairs, each slab at most about ``slab_bytes``; equal bit for bit to the same slices of the whole
    result (every output voxel is computed from the same source voxels by the same operations), while only the
    source slices a slab needs and the slab itself are held, never the whole resampled volume."""
    result = tensor.float()
    axes = _axis_plan(tuple(result.shape[-3:]), shape, spacing_from, spacing_to, result.device, False)
    first_axis = result.dim() - 3
    out_z = _three(shape, "shape")[0]
    per_slice = math.prod(result.shape[:-3]) * math.prod(_three(shape, "shape")[1:]) * 4
    step = max(1, min(out_z, slab_bytes // max(1, per_slice)))
    z_taps = dict(axes).get(0)
    for start in range(0, out_z, step):
        stop = min(out_z, start + step)
        if z_taps is None:  # z unchanged: the slab's own slices
            part, slab_axes = result[..., start:stop, :, :], axes
        else:  # the source slices between the slab's first and last taps, the taps counted from there
            lower, upper, weight = z_taps
            assert upper is not None and weight is not None
            low, high = int(lower[start]), int(upper[stop - 1]) + 1
            part = result[..., low:high, :, :]
            shifted = (lower[start:stop] - low, upper[start:stop] - low, weight[start:stop])
            slab_axes = [(k, shifted if k == 0 else taps) for k, taps in axes]
        for k, taps in slab_axes:
            part = _apply_axis(part, first_axis + k, taps)
        yield start, part


_Taps = tuple["torch.Tensor", "torch.Tensor | None", "torch.Tensor | None"]
"""One axis's resampling: source index below each output index, the one above and the weight of the one above
(None, None for nearest neighbour)."""


def _axis_plan(
    in_shape: tuple[int, ...],
    shape: Sequence[int],
    spacing_from: Sequence[float],
    spacing_to: Sequence[float],
    device: torch.device,
    nearest: bool,
) -> list[tuple[int, _Taps]]:
    """The axes to resample, in order, each with its taps. The axes that shrink the volume most go first, so that
    later passes touch fewer voxels; an axis whose size and spacing stay is left out."""
    import torch

    out_shape = _three(shape, "shape")
    steps = [float(t) / float(s) for s, t in zip(_three_f(spacing_from), _three_f(spacing_to), strict=True)]
    order = sorted(range(3), key=lambda k: out_shape[k] / max(1, in_shape[k]))
    plan: list[tuple[int, _Taps]] = []
    for k in order:
        in_size, out_size = in_shape[k], out_shape[k]
        if out_size == in_size and steps[k] == 1.0:
            continue
        source = torch.arange(out_size, dtype=torch.float64, device=device) * steps[k]
        source = source.clamp_(0, in_size - 1)
        if nearest:
            plan.append((k, (torch.floor(source + 0.5).long().clamp_(max=in_size - 1), None, None)))
            continue
        lower = torch.floor(source).long()
        upper = (lower + 1).clamp_(max=in_size - 1)
        plan.append((k, (lower, upper, (source - lower).float())))
    return plan


def _apply_axis(x: torch.Tensor, axis: int, taps: _Taps) -> torch.Tensor:
    lower, upper, weight = taps
    if upper is None or weight is None:  # nearest neighbour
        return x.index_select(axis, lower)
    shape = [1] * x.dim()
    shape[axis] = lower.numel()
    weight = weight.reshape(shape)
    below = x.index_select(axis, lower)
    return below.mul_(1 - weight).add_(x.index_select(axis, upper).mul_(weight))


def _three(values: int | Sequence[int], name: str) -> tuple[int, int, int]:
    if isinstance(values, int):
        return values, values, values
    items = tuple(int(v) for v in values)
    if len(items) != 3:
        raise ValueError(f"{name} must have 3 entries (z, y, x), got {values}")
    return items[0], items[1], items[2]


def _three_f(values: Sequence[float]) -> tuple[float, float, float]:
    items = tuple(float(v) for v in values)
    if len(items) != 3:
        raise ValueError(f"spacing must have 3 entries (z, y, x), got {values}")
    return items[0], items[1], items[2]
