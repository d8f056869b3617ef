"""Post-processing on hand-made arrays: smoothing (axis order), argmax, largest component, hole filling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from innereye_batch.engine.postprocess import argmax_labels, postprocess, smooth_posteriors
from innereye_batch.model.spec import PostProcessing

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
