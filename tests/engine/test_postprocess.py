"""Post-processing on hand-made arrays: smoothing (axis order), argmax, largest component, hole filling; the
box-wise refinement against the whole-volume algorithm on random label maps."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_fill_holes
from scipy.ndimage import label as connected_components

from innereye_batch.engine.postprocess import argmax_labels, postprocess, refine_labels, smooth_posteriors
from innereye_batch.model.spec import PostProcessing
from tests.engine.conftest import resample_two_slices_at_a_time

NAMES = ("liver", "kidney")


def _one_hot(labels: np.ndarray, classes: int = 3) -> np.ndarray:
    return np.stack([(labels == c).astype(np.float32) for c in range(classes)])


def test_smoothing_sigma_is_mm_over_spacing_per_zyx_axis() -> None:
    spike = np.zeros((2, 21, 21, 41), dtype=np.float32)
    spike[1, 10, 10, 20] = 1.0
    spike[0] = 1.0 - spike[1]
    smoothed = smooth_posteriors(spike, (2.0, 2.0, 3.0), (2.0, 1.0, 0.5))  # sigma (1, 2, 6) voxels
    centre = smoothed[1, 10, 10, 20]
    # neighbour / centre of a sampled Gaussian is exp(-1 / (2 sigma^2)) on each axis
    assert smoothed[1, 11, 10, 20] / centre == pytest.approx(math.exp(-1 / 2), rel=1e-4)
    assert smoothed[1, 10, 11, 20] / centre == pytest.approx(math.exp(-1 / 8), rel=1e-4)
    assert smoothed[1, 10, 10, 21] / centre == pytest.approx(math.exp(-1 / 72), rel=1e-4)
    np.testing.assert_allclose(smoothed.sum(axis=0), 1.0, atol=1e-5)


def test_smoothing_then_argmax_removes_a_speck() -> None:
    labels = np.zeros((7, 7, 7), dtype=np.uint8)
    labels[3, 3, 3] = 1
    posteriors = _one_hot(labels) * 0.8 + 0.2 / 3
    spec = PostProcessing(posterior_smoothing_mm=(1.0, 1.0, 1.0))
    assert postprocess(torch.from_numpy(posteriors), (1.0, 1.0, 1.0), PostProcessing(), NAMES)[3, 3, 3] == 1
    smoothed = postprocess(torch.from_numpy(posteriors), (1.0, 1.0, 1.0), spec, NAMES)
    assert smoothed.dtype == np.uint8 and smoothed.shape == (7, 7, 7)
    assert not smoothed.any()


def test_largest_component_is_six_connected_and_per_structure() -> None:
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[1:4, 1:4, 1:4] = 1  # 27 voxels
    labels[4, 4, 4] = 1  # touches the block only at a corner: its own component under 6-connectivity
    labels[6, 6, 6] = 1  # a lone voxel
    labels[6, 1, 1] = 2  # kidney: two components, not configured
    labels[6, 1, 5] = 2
    spec = PostProcessing(largest_component=("liver",))
    out = postprocess(_one_hot(labels), (1.0, 1.0, 1.0), spec, NAMES)
    expected = labels.copy()
    expected[4, 4, 4] = 0
    expected[6, 6, 6] = 0
    assert np.array_equal(out, expected)
    both = postprocess(_one_hot(labels), (1.0, 1.0, 1.0), PostProcessing(largest_component=NAMES), NAMES)
    assert int((both == 2).sum()) == 1 and int((both == 1).sum()) == 27


def test_fill_holes_fills_enclosed_background_only() -> None:
    labels = np.zeros((7, 7, 7), dtype=np.uint8)
    labels[1:6, 1:6, 1:6] = 1
    labels[2:5, 2:5, 2:5] = 0  # a closed cavity
    labels[3, 3, 3] = 2  # another structure inside it keeps its label
    spec = PostProcessing(fill_holes=("liver",))
    out = postprocess(_one_hot(labels), (1.0, 1.0, 1.0), spec, NAMES)
    expected = labels.copy()
    expected[2:5, 2:5, 2:5] = 1
    expected[3, 3, 3] = 2
    assert np.array_equal(out, expected)
    # a cavity open to the border is not a hole
    open_cup = labels.copy()
    open_cup[2:5, 2:5, 5:7] = 0
    open_cup[3, 3, 3] = 0
    left_open = postprocess(_one_hot(open_cup), (1.0, 1.0, 1.0), spec, NAMES)
    assert np.array_equal(left_open, open_cup)


def test_argmax_labels_numpy_and_torch_agree_and_break_ties_low() -> None:
    posteriors = np.zeros((3, 2, 2, 2), dtype=np.float32)
    posteriors[:, 0, 0, 0] = (0.2, 0.4, 0.4)
    posteriors[:, 1, 1, 1] = (0.1, 0.1, 0.8)
    posteriors[0, 0, 1] = 1.0
    from_numpy = argmax_labels(posteriors)
    from_torch = argmax_labels(torch.from_numpy(posteriors))
    assert from_numpy.dtype == np.uint8 and from_torch.dtype == np.uint8
    assert np.array_equal(from_numpy, from_torch)
    assert from_numpy[0, 0, 0] == 1 and from_numpy[1, 1, 1] == 2 and from_numpy[0, 1, 0] == 0


def test_configuration_errors_name_the_problem() -> None:
    posteriors = np.full((3, 2, 2, 2), 1 / 3, dtype=np.float32)
    with pytest.raises(ValueError, match="'spleen'"):
        postprocess(posteriors, (1.0, 1.0, 1.0), PostProcessing(largest_component=("spleen",)), NAMES)
    with pytest.raises(ValueError, match="3 classes"):
        postprocess(posteriors, (1.0, 1.0, 1.0), PostProcessing(), ("liver",))


def _reference_refine(labels: np.ndarray, spec: PostProcessing, names: tuple[str, ...]) -> np.ndarray:
    """The whole-volume algorithm: one scipy labelling, or hole filling, of the full volume per structure."""
    labels = labels.copy()
    for name in spec.largest_component:
        mask = labels == names.index(name) + 1
        components, count = connected_components(mask)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            labels[mask & (components != int(np.argmax(sizes)))] = 0
    for name in spec.fill_holes:
        label = names.index(name) + 1
        labels[binary_fill_holes(labels == label) & (labels == 0)] = label
    return labels


REFINE_NAMES = ("a", "b", "c", "d", "e", "absent")  # label 6 never occurs


def _random_labels(seed: int) -> np.ndarray:
    """Blocks (some touching, some at the border), hollow shells with cavities (some holding another structure,
    some open), pairs of equal blocks of one label (ties), and speckles of random labels."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(9, 16)), int(rng.integers(10, 20)), int(rng.integers(10, 20)))
    labels = np.zeros(shape, dtype=np.uint8)
    for _ in range(int(rng.integers(3, 8))):
        label = int(rng.integers(1, 6))
        start = [int(rng.integers(0, n - 3)) for n in shape]
        size = [int(rng.integers(3, min(8, n - s) + 1)) for n, s in zip(shape, start, strict=True)]
        outer = tuple(slice(s, s + z) for s, z in zip(start, size, strict=True))
        labels[outer] = label
        if rng.random() < 0.6 and min(size) >= 3:  # hollow it: a cavity, maybe with another structure or opened
            inner = tuple(slice(s + 1, s + z - 1) for s, z in zip(start, size, strict=True))
            labels[inner] = 0
            if rng.random() < 0.4:
                labels[tuple(slice(s + 1, s + 2) for s in start)] = (label % 5) + 1
            if rng.random() < 0.3:
                opening = list(inner)
                opening[0] = slice(start[0] + size[0] - 1, start[0] + size[0])
                labels[tuple(opening)] = 0
    for _ in range(int(rng.integers(0, 3))):  # two equal, separate blocks of one label: a tie
        label = int(rng.integers(1, 6))
        corner = [int(rng.integers(0, n - 5)) for n in shape]
        labels[corner[0] : corner[0] + 2, corner[1] : corner[1] + 2, corner[2] : corner[2] + 2] = label
        labels[corner[0] + 3 : corner[0] + 5, corner[1] : corner[1] + 2, corner[2] : corner[2] + 2] = label
    speckle = rng.random(shape) < 0.02
    labels[speckle] = rng.integers(1, 6, int(speckle.sum()))
    return labels


REFINE_SPECS = {
    "largest": PostProcessing(largest_component=REFINE_NAMES),
    "holes": PostProcessing(fill_holes=REFINE_NAMES),
    "both": PostProcessing(largest_component=REFINE_NAMES, fill_holes=REFINE_NAMES),
    "some": PostProcessing(largest_component=("c", "a", "absent"), fill_holes=("e", "b", "c", "e")),
}


@pytest.fixture(params=["cc3d", "scikit-image"])
def components_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test using it runs with cc3d (the ``fast`` extra; skipped when not installed) and without it."""
    if request.param == "cc3d":
        pytest.importorskip("cc3d")
    else:
        monkeypatch.setitem(sys.modules, "cc3d", None)  # import cc3d raises ImportError
    return str(request.param)


@pytest.mark.parametrize("spec_name", sorted(REFINE_SPECS))
def test_refine_labels_equals_the_whole_volume_algorithm(spec_name: str, components_backend: str) -> None:
    spec = REFINE_SPECS[spec_name]
    changed = 0
    for seed in range(60):
        labels = _random_labels(seed)
        expected = _reference_refine(labels, spec, REFINE_NAMES)
        out = refine_labels(labels.copy(), spec, REFINE_NAMES)
        assert out.dtype == np.uint8
        assert np.array_equal(out, expected), f"seed {seed}"
        changed += not np.array_equal(expected, labels)
    assert changed >= 20  # the maps exercise the refinement, not only its no-op paths


def test_refine_labels_in_place_on_a_view_with_ties_holes_and_empty_structures(components_backend: str) -> None:
    labels = np.zeros((6, 9, 9), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 1  # two equal components of "a": the first in raster order stays
    labels[1:3, 1:3, 5:7] = 1
    labels[0, 8, 8] = 2  # a lone voxel of "b" in the corner, and a larger block of "b"
    labels[3:6, 4:9, 4:9] = 2
    labels[4, 6, 6] = 0  # an enclosed cavity of "b"
    labels[3:6, 0:3, 0:3] = 3  # "c" with a cavity open to the volume's border: not a hole
    labels[4:6, 1, 1] = 0
    spec = PostProcessing(largest_component=REFINE_NAMES, fill_holes=REFINE_NAMES)
    expected = _reference_refine(labels, spec, REFINE_NAMES)
    assert expected[1, 1, 5] == 0 and expected[1, 1, 1] == 1 and expected[0, 8, 8] == 0 and expected[4, 6, 6] == 2
    assert expected[4, 1, 1] == 0
    out = refine_labels(labels, spec, REFINE_NAMES)
    assert out is labels and np.array_equal(labels, expected)
    empty = np.zeros((3, 4, 5), dtype=np.uint8)
    assert not refine_labels(empty, spec, REFINE_NAMES).any()


@pytest.mark.parametrize("smoothing", [None, (2.0, 1.0, 1.0)])
def test_resampled_labels_equal_those_of_the_whole_resampled_posteriors(
    smoothing: tuple[float, float, float] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slab by slab (slabs of 2 slices here) or whole (smoothing needs the whole volume): the same label map as
    resampling every posterior back whole and taking the argmax, ties included."""
    from innereye_batch.engine import preprocess
    from innereye_batch.engine.postprocess import posterior_labels, resampled_labels

    rng = np.random.default_rng(5)
    coarse = rng.random((4, 9, 11, 10)).astype(np.float32)
    coarse[:, 2] = 0.25  # a slice of exact ties: the first class wins both ways
    posteriors = torch.from_numpy(coarse)
    shape, spacing_from, spacing_to = (17, 20, 13), (2.0, 1.6, 1.2), (1.0, 0.8, 0.9)
    spec = PostProcessing(posterior_smoothing_mm=smoothing)
    names = ("a", "b", "c")
    expected = posterior_labels(
        preprocess.resample_to_shape(posteriors, shape, spacing_from, spacing_to), spacing_to, spec, names
    )
    slabs = resample_two_slices_at_a_time(monkeypatch, slice_bytes=4 * 20 * 13 * 4)
    labels = resampled_labels(posteriors, shape, spacing_from, spacing_to, spec, names)
    assert labels.dtype == np.uint8 and labels.shape == shape
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(expected)) >= 3  # a real label map, not one class
    assert slabs == ([] if smoothing else list(range(0, 17, 2)))  # smoothing resamples whole


def test_a_structure_in_one_column_keeps_its_largest_component(components_backend: str) -> None:
    """Every voxel of the structure in one (y, x) column: refine_labels labels the box of it, a strided view of
    one column across slices, which cc3d 4.1 labelled wrongly when given the view (a wrong map, reported ok)."""
    labels = np.zeros((8, 4, 4), np.uint8)
    labels[[0, 2, 3, 4, 6], 1, 2] = 1  # components {0}, {2, 3, 4}, {6}
    out = refine_labels(labels, PostProcessing(largest_component=("a",)), ("a",))
    assert out[:, 1, 2].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    assert int(out.sum()) == 3


def test_cc3d_and_scikit_image_find_the_same_components(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two backends of ``connected_components`` partition a label map alike (ids may differ), on whole maps
    and on strided views (``refine_labels`` labels a box of the map)."""
    pytest.importorskip("cc3d")
    from innereye_batch.engine.postprocess import connected_components as components

    for seed in range(20):
        labels = _random_labels(seed)
        column = labels[:, 3:4, 2:3]  # strided boxes with sides of 1: cc3d 4.1 mislabels such views
        views = (labels, labels[1:, ::2, 1:-1], labels[:, :, ::-1], column, labels[2:3, 4:5, :], column[::-1])
        for view in (*views, np.asfortranarray(labels), np.asfortranarray(labels)[:, 1:2, 1:2]):
            fast = components(view)
            with monkeypatch.context() as patched:
                patched.setitem(sys.modules, "cc3d", None)
                plain = components(view)
            assert fast.shape == plain.shape == view.shape
            assert np.array_equal(fast == 0, view == 0)
            pairs = np.unique(np.stack([fast.ravel(), plain.ravel()]), axis=1)
            assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1], f"seed {seed}"
            assert pairs.shape[1] > 3 or min(view.shape) == 1
