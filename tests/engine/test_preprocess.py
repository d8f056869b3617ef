"""Normalisation values by hand, padding, and resampling (round trip, SimpleITK as oracle, exact shapes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from innereye_batch.engine.preprocess import (
    normalise,
    otsu_threshold,
    pad_to_multiple,
    resample,
    resample_slabs,
    resample_to_shape,
    resampled_shape,
)
from innereye_batch.model.spec import Normalisation


def test_ct_window_by_hand() -> None:
    spec = Normalisation(method="ct_window", level=50.0, window=600.0, output_range=(-1.0, 1.0))
    hu = torch.tensor([-1000.0, -250.0, -100.0, 50.0, 200.0, 350.0, 3000.0])
    out = normalise(hu, spec)
    # window [-250, 350] onto [-1, 1]: ends map to the range ends, the level to its middle, outside is clipped
    expected = torch.tensor([-1.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert out.dtype == torch.float32


def test_ct_window_other_output_range() -> None:
    spec = Normalisation(method="ct_window", level=-500.0, window=2200.0, output_range=(0.0, 255.0))
    out = normalise(torch.tensor([-1600.0, -500.0, 600.0, -1050.0]), spec)
    torch.testing.assert_close(out, torch.tensor([0.0, 127.5, 255.0, 63.75]), rtol=0, atol=1e-4)


def test_ct_window_missing_level_names_it() -> None:
    with pytest.raises(ValueError, match="level"):
        normalise(torch.zeros(3), Normalisation(method="ct_window", window=400.0))


def test_zscore_uses_population_std() -> None:
    image = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = normalise(image, Normalisation(method="zscore"))
    std = math.sqrt(1.25)  # population std of 1..4
    torch.testing.assert_close(out, (image - 2.5) / std)
    with pytest.raises(ValueError, match="standard deviation"):
        normalise(torch.ones(5), Normalisation(method="zscore"))


def test_none_is_a_float_copy() -> None:
    image = torch.arange(6, dtype=torch.int16)
    out = normalise(image, Normalisation(method="none"))
    assert out.dtype == torch.float32
    assert torch.equal(out, image.float())


def test_mri_window_by_hand() -> None:
    # 300 air voxels at 0, and tissue 100..199 once each: Otsu splits them; statistics come from the tissue.
    values = np.concatenate([np.zeros(300), np.arange(100, 200)]).astype(np.float32)
    image = torch.from_numpy(values.reshape(4, 10, 10))
    threshold = otsu_threshold(values)
    # 256 bins over [0, 199]: the first bin already separates the two groups; its centre is the threshold
    assert threshold == pytest.approx(199 / 256 / 2, rel=1e-5)
    # midpoint percentiles of 100..199: q25 = 124.5, median = 149.5, q75 = 174.5
    std = 50.0 / (2 * 0.67448975)
    low, high = 149.5 - 1.9 * std, min(199.0, 149.5 + 1.9 * std)
    out = normalise(image, Normalisation(method="mri_window", output_range=(-1.0, 1.0), sharpen=1.9, tail=(1.0,)))
    flat = out.reshape(-1)
    assert torch.all(flat[:300] == -1.0)
    for value in (110.0, 149.5, 180.0, 199.0):
        index = int(value) - 100 + 300
        expected = max(-1.0, min(1.0, -1.0 + 2.0 * (int(value) - low) / (high - low)))
        assert float(flat[index]) == pytest.approx(expected, abs=1e-5)


def test_mri_window_tail_per_channel() -> None:
    values = np.concatenate([np.zeros(300), np.arange(100, 200)]).astype(np.float32)
    image = torch.from_numpy(values)
    spec = Normalisation(method="mri_window", tail=(1.0, 0.2))
    wide = normalise(image, spec, channel_index=0)
    narrow = normalise(image, spec, channel_index=1)
    # a smaller tail lowers the window's top: 180 saturates with tail 0.2 but not with tail 1
    assert float(narrow[300 + 80]) == 1.0
    assert float(wide[300 + 80]) < 1.0


def test_pad_to_multiple_and_crop_back() -> None:
    image = torch.arange(2 * 5 * 6 * 7, dtype=torch.float32).reshape(2, 5, 6, 7)
    padded, crop = pad_to_multiple(image, 4, min_shape=(8, 1, 1))
    assert padded.shape == (2, 8, 8, 8)
    assert crop == (slice(1, 6), slice(1, 7), slice(0, 7))
    assert torch.equal(padded[(slice(None), *crop)], image)
    # edge mode repeats the border voxel
    assert torch.equal(padded[:, 0], padded[:, 1])
    zero, _ = pad_to_multiple(image, (1, 1, 16), mode="zero")
    assert zero.shape == (2, 5, 6, 16)
    assert float(zero[..., :4].abs().sum()) == 0.0
    same, whole = pad_to_multiple(image, 1)
    assert same is image and whole == (slice(0, 5), slice(0, 6), slice(0, 7))


def _ramp(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> torch.Tensor:
    """An image linear in mm: trilinear interpolation reproduces it exactly between voxel centres."""
    z, y, x = (torch.arange(n, dtype=torch.float64) * s for n, s in zip(shape, spacing, strict=True))
    return (3.0 * z[:, None, None] - 2.0 * y[None, :, None] + 0.5 * x[None, None, :]).float()


def test_resample_samples_voxel_centres_from_the_shared_origin() -> None:
    spacing, target = (2.5, 0.8, 0.7), (1.0, 1.5, 1.4)
    ramp = _ramp((12, 20, 21), spacing)
    out = resample(ramp[None], spacing, target, mode="trilinear")
    assert out.shape == (1, *resampled_shape((12, 20, 21), spacing, target)) == (1, 29, 11, 11)
    expected = _ramp((29, 11, 11), target)
    # inside the source's extent (i * target <= (n - 1) * spacing) the ramp is reproduced exactly
    inside = (slice(0, 28), slice(0, 11), slice(0, 10))
    torch.testing.assert_close(out[0][inside], expected[inside], rtol=0, atol=1e-4)


def test_resample_matches_simpleitk_linear() -> None:
    generator = torch.Generator().manual_seed(3)
    volume = torch.randn((9, 14, 13), generator=generator)
    spacing, target = (3.0, 0.9, 1.1), (2.0, 1.3, 0.6)
    ours = resample(volume, spacing, target, mode="trilinear").numpy()
    source = sitk.GetImageFromArray(volume.numpy())
    source.SetSpacing(spacing[::-1])
    source.SetOrigin((10.0, -20.0, 5.0))
    size_zyx = resampled_shape(volume.shape, spacing, target)
    oracle = sitk.Resample(
        source,
        list(size_zyx[::-1]),
        sitk.Transform(),
        sitk.sitkLinear,
        source.GetOrigin(),
        target[::-1],
        source.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    expected = sitk.GetArrayFromImage(oracle)
    assert ours.shape == expected.shape
    # ITK interpolates up to half a voxel past the last centre (clamping, as we do) and writes its default value
    # further out, where we keep clamping to the border: compare inside ITK's buffer
    inside = tuple(
        slice(0, int(np.floor((n - 0.5) * s / t)) + 1) for n, s, t in zip(volume.shape, spacing, target, strict=True)
    )
    np.testing.assert_allclose(ours[inside], expected[inside], atol=1e-5)


def test_nearest_keeps_labels_and_dtype() -> None:
    labels = torch.zeros((6, 8, 8), dtype=torch.uint8)
    labels[2:4, 2:6, 3:5] = 3
    up = resample(labels, (2.0, 1.0, 1.0), (1.0, 0.5, 0.5), mode="nearest")
    assert up.dtype == torch.uint8 and up.shape == (11, 15, 15)  # from the first voxel centre to the last
    assert set(torch.unique(up).tolist()) == {0, 3}
    # every coarse voxel becomes a block whose first corner is the coarse voxel itself
    assert torch.equal(up[::2, ::2, ::2], labels)


@pytest.mark.parametrize(
    ("shape", "spacing", "target"),
    [((37, 29, 31), (2.5, 0.77, 0.77), (3.0, 1.0, 1.0)), ((5, 7, 9), (1.0, 1.0, 1.0), (0.6, 2.2, 1.7))],
)
def test_round_trip_restores_the_source_shape(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], target: tuple[float, float, float]
) -> None:
    ramp = _ramp(shape, spacing)[None]
    there = resample(ramp, spacing, target)
    back = resample_to_shape(there, shape, target, spacing, mode="trilinear")
    assert back.shape == ramp.shape
    # a label map made on the model's grid goes back to the source's exact shape too
    labels = (there > there.mean()).to(torch.uint8)[0]
    restored = resample_to_shape(labels, shape, target, spacing, mode="nearest")
    assert restored.shape == shape and restored.dtype == torch.uint8
    # away from the far border (clamped there), linear data survives the round trip
    z, y, x = (int((n - 1) * s // t * t / s) for n, s, t in zip(shape, spacing, target, strict=True))
    torch.testing.assert_close(back[0, :z, :y, :x], ramp[0, :z, :y, :x], rtol=0, atol=1e-3)


def test_identity_resampling_is_exact() -> None:
    volume = torch.randn((3, 4, 5, 6))
    same = resample(volume, (1.5, 1.0, 1.0), (1.5, 1.0, 1.0))
    assert torch.equal(same, volume)


@pytest.mark.parametrize(
    ("source", "shape", "spacing_from", "spacing_to"),
    [
        ((7, 9, 11), (13, 12, 17), (2.0, 1.3, 1.0), (1.0, 0.97, 0.6)),  # every axis up
        ((19, 10, 8), (6, 15, 8), (1.0, 1.0, 0.8), (3.1, 0.66, 0.8)),  # z down (first), x unchanged
        ((5, 8, 8), (5, 4, 11), (2.5, 1.0, 1.0), (2.5, 2.0, 0.7)),  # z unchanged
        ((1, 6, 6), (3, 6, 6), (1.0, 1.0, 1.0), (0.4, 1.0, 1.0)),  # one source slice
    ],
)
@pytest.mark.parametrize("slices_per_slab", [1, 2, 5, 1000])
def test_resample_slabs_equal_the_whole_resampling_bit_for_bit(
    source: tuple[int, int, int],
    shape: tuple[int, int, int],
    spacing_from: tuple[float, float, float],
    spacing_to: tuple[float, float, float],
    slices_per_slab: int,
) -> None:
    tensor = torch.from_numpy(np.random.default_rng(sum(source)).normal(size=(3, *source)).astype(np.float32))
    whole = resample_to_shape(tensor, shape, spacing_from, spacing_to)
    slab_bytes = slices_per_slab * 3 * shape[1] * shape[2] * 4
    slabs = list(resample_slabs(tensor, shape, spacing_from, spacing_to, slab_bytes=slab_bytes))
    assert [start for start, _ in slabs] == list(range(0, shape[0], min(slices_per_slab, shape[0])))
    joined = torch.cat([slab for _, slab in slabs], dim=1)
    assert joined.shape == whole.shape == (3, *shape)
    assert torch.equal(joined, whole)  # the same floats, not merely close


@pytest.mark.parametrize("seed", range(5))
def test_the_model_grid_reaches_the_last_source_voxel_within_half_a_voxel(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(200):
        shape = tuple(int(n) for n in rng.integers(1, 400, 3))
        spacing = tuple(float(v) for v in rng.uniform(0.3, 5.0, 3))
        target = tuple(float(v) for v in rng.uniform(0.3, 5.0, 3))
        for n, s, t, m in zip(shape, spacing, target, resampled_shape(shape, spacing, target), strict=True):
            assert abs((m - 1) * t - (n - 1) * s) <= t / 2 + 1e-9
    assert resampled_shape((40, 1, 1), (1.0, 1.0, 1.0), (3.0, 1.0, 1.0)) == (14, 1, 1)


def test_an_object_in_the_last_slices_is_seen_as_one_in_the_first() -> None:
    """40 slices of 1 mm on a 3 mm model grid: with round(40 / 3) = 13 model slices the last centre was 36 mm, and
    an object in the last three source slices (37-39 mm) was never seen by the network."""
    from pathlib import Path

    from innereye_batch.dicom.geometry import Geometry
    from innereye_batch.model.spec import ArchitectureSpec, InferenceSpec, ModelPackage, SegmentationSpec, Structure
    from innereye_batch.tasks.segmentation import SegmentationPredictor

    class Threshold(torch.nn.Module):  # class 1 where the normalised image is positive
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([torch.zeros_like(x[:, :1]), 20 * x[:, :1]], 1)

    shape, target = (40, 24, 24), (3.0, 1.0, 1.0)
    spec = SegmentationSpec(
        structures=(Structure("thing"),),
        normalisation=(Normalisation("ct_window", level=0, window=1000),),
        target_spacing=target,
        inference=InferenceSpec(),
    )
    package = ModelPackage(
        folder=Path("."), name="t", task_spec=spec, checkpoints=(), architecture=ArchitectureSpec("x")
    )
    predictor = SegmentationPredictor(package, [Threshold()], torch.device("cpu"), channels_last=False)
    geometry = Geometry(
        shape=shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    found = []
    for slices in (slice(0, 3), slice(37, 40)):
        image = np.full(shape, -500, np.float32)
        image[slices, 8:16, 8:16] = 500  # 3 mm thick
        labels, _ = predictor.label_map(torch.from_numpy(image)[None], geometry)
        found.append(int(np.count_nonzero(labels[slices, 8:16, 8:16])))
    assert found[0] > 0 and found[1] == found[0]
