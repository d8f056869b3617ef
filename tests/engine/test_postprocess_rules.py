"""InnerEye's summed-probability and slice-exclusion rules against a voxel-by-voxel transcription of
``InnerEye/ML/utils/image_util.py`` (``apply_summed_probability_rules``, ``apply_slice_exclusion_rules``), on
hand-made and random arrays; their place in the pipeline; slab-wise resampling."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from innereye_batch.engine.postprocess import (
    apply_slice_exclusion_rules,
    apply_summed_probability_rules,
    posterior_labels,
    postprocess,
    refine_labels,
)
from innereye_batch.model.spec import PostProcessing, SliceExclusionRule, SummedProbabilityRule
from tests.engine.conftest import resample_two_slices_at_a_time

NAMES = ("external", "cord", "brainstem", "other")  # labels 1..4
SPACING = (1.0, 1.0, 1.0)


def reference_summed(posteriors: np.ndarray, labels: np.ndarray, rules: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """InnerEye's rule, one voxel at a time: rules in order, each on the labels the previous one left; only voxels
    labelled ``external`` whose posterior is strictly below first + second change, to first unless second is
    strictly more probable."""
    out = labels.copy()
    for first, second, external in rules:
        for z, y, x in np.ndindex(*out.shape):
            p = posteriors[:, z, y, x]
            if out[z, y, x] == external and p[external] < p[first] + p[second]:
                out[z, y, x] = first if p[first] >= p[second] else second
    return out


def reference_slices(labels: np.ndarray, rules: Sequence[tuple[int, int, bool]]) -> np.ndarray:
    """InnerEye's rule: slices are z (axis 0); with both present and the lowest ``higher`` slice <= the highest
    ``lower`` slice, the dominated class becomes the dominant one in those slices, both ends included."""
    out = labels.copy()
    for higher, lower, higher_dominates in rules:
        higher_slices = [z for z in range(out.shape[0]) if (out[z] == higher).any()]
        lower_slices = [z for z in range(out.shape[0]) if (out[z] == lower).any()]
        if not higher_slices or not lower_slices or min(higher_slices) > max(lower_slices):
            continue
        dominant, replaced = (higher, lower) if higher_dominates else (lower, higher)
        for z in range(min(higher_slices), max(lower_slices) + 1):
            out[z][out[z] == replaced] = dominant
    return out


def _summed(posteriors: np.ndarray, rules: Sequence[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Our rules on numpy and on torch posteriors, from the argmax."""
    from_numpy = apply_summed_probability_rules(posteriors, np.argmax(posteriors, axis=0).astype(np.uint8), rules)
    tensor = torch.from_numpy(posteriors)
    from_torch = apply_summed_probability_rules(tensor, tensor.argmax(dim=0).to(torch.uint8), rules).numpy()
    return from_numpy, from_torch


def _voxels(*columns: Sequence[float]) -> np.ndarray:
    """(K, 1, 1, V) posteriors from one list of K class posteriors per voxel."""
    return np.array(columns, dtype=np.float32).T[:, None, None, :]


def test_summed_probability_by_hand() -> None:
    posteriors = _voxels(
        #  bg    ext   cord  stem  other
        [0.1, 0.4, 0.3, 0.2, 0.0],  # external, 0.4 < 0.5: cord (the more probable)
        [0.1, 0.4, 0.2, 0.3, 0.0],  # brainstem
        [0.1, 0.4, 0.25, 0.25, 0.0],  # a tie between the two: the first (cord)
        [0.2, 0.4, 0.2, 0.2, 0.0],  # 0.4 == 0.2 + 0.2: not strictly below, stays external
        [0.5, 0.1, 0.2, 0.2, 0.0],  # background, not external: unchanged
        [0.1, 0.45, 0.0, 0.0, 0.45],  # other classes' mass does not count: stays external
        [0.1, 0.4, 0.0, 0.5, 0.0],  # cord absent (0): brainstem argmax anyway, unchanged
        [0.1, 0.4, 0.0, 0.35, 0.15],  # cord absent, stem alone below external: stays external
    )
    expected = np.array([2, 3, 2, 1, 0, 1, 3, 1], dtype=np.uint8)[None, None, :]
    rules = [(2, 3, 1)]
    assert np.array_equal(np.argmax(posteriors, axis=0)[0, 0], [1, 1, 1, 1, 0, 1, 3, 1])
    np.testing.assert_array_equal(reference_summed(posteriors, np.argmax(posteriors, axis=0), rules), expected)
    for ours in _summed(posteriors, rules):
        np.testing.assert_array_equal(ours, expected)
    # the order of first and second only decides ties
    for ours in _summed(posteriors, [(3, 2, 1)]):
        np.testing.assert_array_equal(ours[0, 0], [2, 3, 3, 1, 0, 1, 3, 1])


def test_summed_probability_rules_chain_in_order() -> None:
    """The second rule sees what the first relabelled: its external class may be the first rule's result."""
    posteriors = _voxels([0.0, 0.35, 0.3, 0.1, 0.25])  # external, then cord (0.35 < 0.3 + 0.1) ...
    rules = [(2, 3, 1), (4, 4, 2)]  # ... then other (cord's 0.3 < other + other, 0.5)
    assert reference_summed(posteriors, np.argmax(posteriors, axis=0), rules)[0, 0, 0] == 4
    for ours in _summed(posteriors, rules):
        assert ours[0, 0, 0] == 4
    for ours in _summed(posteriors, rules[::-1]):  # the other order: the second rule finds no cord yet
        assert ours[0, 0, 0] == 2


@pytest.mark.parametrize("seed", range(4))
def test_summed_probability_rules_equal_the_transcription_on_random_posteriors(seed: int) -> None:
    """Posteriors in eighths (exact sums, many ties) and several rules, some sharing classes."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(8, [0.2] * 5, size=(4, 5, 6)).astype(np.float32) / 8  # (z, y, x, K)
    posteriors = np.ascontiguousarray(np.moveaxis(counts, -1, 0))
    labels = np.argmax(posteriors, axis=0).astype(np.uint8)
    rules = [(2, 3, 1), (4, 2, 1), (1, 4, 3)]
    expected = reference_summed(posteriors, labels, rules)
    assert not np.array_equal(expected, labels)  # the rules change something
    for ours in _summed(posteriors, rules):
        np.testing.assert_array_equal(ours, expected)


def _slices(labels: np.ndarray, rules: Sequence[tuple[int, int, bool]]) -> np.ndarray:
    return apply_slice_exclusion_rules(labels.copy(), rules)


def test_slice_exclusion_by_hand() -> None:
    labels = np.zeros((8, 3, 3), dtype=np.uint8)
    labels[3:6, 0, 0] = 3  # brainstem (higher) in slices 3-5
    labels[0:5, 1, 1] = 2  # cord (lower) in slices 0-4: they overlap in 3-4
    labels[4, 2, 2] = 4  # another structure in the overlap: untouched
    cord_wins = labels.copy()
    cord_wins[3:5, 0, 0] = 2
    stem_wins = labels.copy()
    stem_wins[3:5, 1, 1] = 3
    assert np.array_equal(_slices(labels, [(3, 2, False)]), cord_wins)
    assert np.array_equal(_slices(labels, [(3, 2, True)]), stem_wins)
    for rule in ([(3, 2, False)], [(3, 2, True)]):
        assert np.array_equal(_slices(labels, rule), reference_slices(labels, rule))


def test_slice_exclusion_counts_slices_between_the_extremes() -> None:
    """Between the lowest ``higher`` slice and the highest ``lower`` one every slice counts, also those where only
    one of them appears (or neither)."""
    labels = np.zeros((9, 2, 2), dtype=np.uint8)
    labels[2, 0, 0] = labels[7, 0, 0] = 3  # higher in slices 2 and 7
    labels[0, 1, 1] = labels[4, 1, 1] = labels[5, 1, 1] = 2  # lower in 0, 4, 5: range 2-5
    out = _slices(labels, [(3, 2, True)])
    expected = labels.copy()
    expected[4, 1, 1] = expected[5, 1, 1] = 3  # lower voxels in 2-5 (no higher voxel in 4 or 5) become higher
    assert np.array_equal(out, expected) and np.array_equal(out, reference_slices(labels, [(3, 2, True)]))
    out = _slices(labels, [(3, 2, False)])
    expected = labels.copy()
    expected[2, 0, 0] = 2  # higher voxels in 2-5 become lower; slice 7 is above the range and stays
    assert np.array_equal(out, expected) and np.array_equal(out, reference_slices(labels, [(3, 2, False)]))


@pytest.mark.parametrize(
    "higher_slices, lower_slices",
    [((5, 6), (1, 4)), ((5,), ()), ((), (1, 2)), ((), ())],
    ids=["strictly-above", "no-lower", "no-higher", "neither"],
)
def test_slice_exclusion_leaves_separated_or_absent_structures(
    higher_slices: tuple[int, ...], lower_slices: tuple[int, ...]
) -> None:
    labels = np.zeros((8, 2, 2), dtype=np.uint8)
    labels[list(higher_slices), 0, 0] = 3
    labels[list(lower_slices), 1, 1] = 2
    for dominates in (False, True):
        assert np.array_equal(_slices(labels, [(3, 2, dominates)]), labels)


def test_slice_exclusion_touching_in_one_slice_and_chained_rules() -> None:
    labels = np.zeros((6, 2, 2), dtype=np.uint8)
    labels[3:5, 0, 0] = 3  # higher 3-4
    labels[1:4, 1, 1] = 2  # lower 1-3: overlap in slice 3 alone
    labels[3:6, 1, 0] = 4  # a third structure, above "lower" after the first rule
    rules = [(3, 2, True), (4, 3, False)]
    expected = reference_slices(labels, rules)
    assert expected[3, 1, 1] == 3 and expected[3, 1, 0] == 3  # the second rule acts on the first's result
    assert np.array_equal(_slices(labels, rules), expected)


@pytest.mark.parametrize("seed", range(6))
def test_slice_exclusion_equals_the_transcription_on_random_maps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.choice(5, size=(10, 4, 4), p=[0.7, 0.075, 0.075, 0.075, 0.075]).astype(np.uint8)
    rules = [(3, 2, bool(seed % 2)), (1, 4, True), (4, 3, False)]
    np.testing.assert_array_equal(_slices(labels, rules), reference_slices(labels, rules))


def test_rules_take_their_places_in_the_pipeline() -> None:
    """Summed probability before the largest component (a relabelled voxel joins two parts of cord), slice exclusion
    after it (a stray brainstem voxel removed by the largest component no longer overlaps cord)."""
    labels = np.zeros((8, 3, 5), dtype=np.uint8)
    labels[0:3, 1, 0:2] = 2  # cord: 6 voxels ...
    labels[0:3, 1, 3:5] = 2  # ... and 6 more, joined through column 2 ...
    labels[0:3, 1, 2] = 1  # ... where the voxels are external by a narrow margin
    labels[5:8, 1, 1:4] = 3  # brainstem above cord
    labels[1, 0, 0] = 3  # a stray brainstem voxel among cord's slices
    posteriors = np.stack([(labels == c).astype(np.float32) for c in range(5)])
    posteriors[:, 0:3, 1, 2] = np.array([0.0, 0.4, 0.3, 0.3, 0.0])[:, None]
    spec = PostProcessing(
        largest_component=("cord", "brainstem"),
        summed_probability_rules=(SummedProbabilityRule("cord", "brainstem", "external"),),
        slice_exclusion_rules=(SliceExclusionRule("brainstem", "cord", False),),
    )
    out = postprocess(torch.from_numpy(posteriors), SPACING, spec, NAMES)
    expected = labels.copy()
    expected[0:3, 1, 2] = 2  # one cord component of 15: nothing of it dropped
    expected[1, 0, 0] = 0  # the stray voxel: not the largest component of brainstem, so no overlap to resolve
    np.testing.assert_array_equal(out, expected)
    without = postprocess(torch.from_numpy(posteriors), SPACING, PostProcessing(largest_component=("cord",)), NAMES)
    assert int((without == 2).sum()) == 6  # without the rules: external splits cord, and half of it goes


def test_posterior_labels_apply_summed_rules_on_the_smoothed_posteriors() -> None:
    rng = np.random.default_rng(3)
    posteriors = rng.dirichlet([1.0] * 5, size=(6, 7, 8)).astype(np.float32)
    posteriors = np.ascontiguousarray(np.moveaxis(posteriors, -1, 0))
    rules = (SummedProbabilityRule("cord", "brainstem", "external"), SummedProbabilityRule("other", "cord", "external"))
    spec = PostProcessing(posterior_smoothing_mm=(1.0, 1.0, 1.0), summed_probability_rules=rules)
    from innereye_batch.engine.postprocess import smooth_posteriors

    smoothed = smooth_posteriors(posteriors, (1.0, 1.0, 1.0), SPACING)
    expected = reference_summed(smoothed, np.argmax(smoothed, axis=0), [(2, 3, 1), (4, 2, 1)])
    assert not np.array_equal(expected, np.argmax(smoothed, axis=0))
    for given in (posteriors, torch.from_numpy(posteriors)):
        np.testing.assert_array_equal(posterior_labels(given, SPACING, spec, NAMES), expected)


def test_resampled_labels_with_summed_rules_equal_the_whole_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules are voxel-wise: slab by slab (2 slices here) as on the whole resampled posteriors."""
    from innereye_batch.engine import preprocess
    from innereye_batch.engine.postprocess import resampled_labels

    rng = np.random.default_rng(11)
    coarse = np.moveaxis(rng.dirichlet([1.0] * 5, size=(9, 11, 10)), -1, 0).astype(np.float32)
    posteriors = torch.from_numpy(np.ascontiguousarray(coarse))
    shape, spacing_from, spacing_to = (17, 20, 13), (2.0, 1.6, 1.2), (1.0, 0.8, 0.9)
    rules = (SummedProbabilityRule("cord", "brainstem", "external"), SummedProbabilityRule("other", "cord", "external"))
    spec = PostProcessing(summed_probability_rules=rules)
    whole = preprocess.resample_to_shape(posteriors, shape, spacing_from, spacing_to)
    expected = reference_summed(whole.numpy(), np.argmax(whole.numpy(), axis=0), [(2, 3, 1), (4, 2, 1)])
    assert not np.array_equal(expected, np.argmax(whole.numpy(), axis=0))
    slabs = resample_two_slices_at_a_time(monkeypatch, slice_bytes=5 * 20 * 13 * 4)
    labels = resampled_labels(posteriors, shape, spacing_from, spacing_to, spec, NAMES)
    np.testing.assert_array_equal(labels, expected)
    assert slabs == list(range(0, 17, 2))


def test_refine_labels_resolves_the_overlap_left_by_the_largest_component() -> None:
    labels = np.zeros((7, 3, 3), dtype=np.uint8)
    labels[0:4, 1, 1] = 2  # cord in slices 0-3
    labels[3:7, 0, 0] = 3  # brainstem in 3-6: slice 3 overlaps
    labels[0, 2, 2] = 3  # a stray brainstem voxel, dropped by the largest component
    spec = PostProcessing(
        largest_component=("brainstem",), slice_exclusion_rules=(SliceExclusionRule("brainstem", "cord", False),)
    )
    expected = labels.copy()
    expected[0, 2, 2] = 0
    expected[3, 0, 0] = 2  # cord dominates in the overlap
    np.testing.assert_array_equal(refine_labels(labels.copy(), spec, NAMES), expected)


ORIENTATIONS = {  # (row direction, column direction) of the slices' images
    "axial head first": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # slices sorted from the feet up
    "axial feet first": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # slices sorted from the head down
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # slices across x; rows run from the head down
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
}


@pytest.mark.parametrize("cord_top", [0.5, 0.7], ids=["apart", "overlapping"])
@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_slice_exclusion_rules_take_higher_as_nearer_the_head_in_any_orientation(
    tmp_path: Path, orientation: str, cord_top: float
) -> None:
    """The same anatomy, a spinal cord below (and maybe into) a brainstem, written in four orientations: the rule
    "brainstem above cord, the cord dominates" gives the same voxels by their height in the patient. Before, it
    took array axis 0 as up: a series stored feet first (or sagittal) lost its whole brainstem, reported ok."""
    from innereye_batch.dicom.scan import scan_tree
    from innereye_batch.dicom.volume import load_volume
    from innereye_batch.tasks.base import WorkItem
    from innereye_batch.tasks.segmentation import SegmentationPrediction
    from tests.factory import write_series

    row, column = ORIENTATIONS[orientation]
    shape, spacing = (12, 10, 11), (3.0, 2.0, 2.5)
    normal = np.cross(row, column)
    index = np.indices(shape).astype(float)
    height = spacing[0] * index[0] * normal[2] + spacing[1] * index[1] * column[2] + spacing[2] * index[2] * row[2]
    fraction = (height - height.min()) / (height.max() - height.min())  # 0 at the feet, 1 at the head
    voxels = np.full(shape, -1000.0, np.float32)
    voxels[fraction < cord_top] = 100.0  # spinal cord only
    voxels[fraction >= 0.5] = 200.0  # brainstem only
    both = (fraction >= 0.5) & (fraction < cord_top)  # heights holding both: the model says either, by turns
    voxels[both] = np.where(np.indices(shape).sum(axis=0) % 2 == 0, 150.0, 120.0)[both]
    write_series(
        tmp_path,
        shape=shape,
        spacing=spacing,
        origin=(0, 0, 0),
        row_direction=row,
        column_direction=column,
        voxels=voxels,
    )
    series = scan_tree(tmp_path).series[0]
    image = np.round(load_volume(series).array)
    cord, brainstem = NAMES.index("cord") + 1, NAMES.index("brainstem") + 1
    labels = np.where((image == 100) | (image == 120), cord, np.where(image >= 150, brainstem, 0)).astype(np.uint8)
    spec = PostProcessing(slice_exclusion_rules=(SliceExclusionRule("brainstem", "cord", False),))
    prediction = SegmentationPrediction(
        WorkItem((series,)), labels, series.geometry, (), refined=False, postprocessing=spec, structure_names=NAMES
    )
    finished = prediction.finished().labels
    # the cord dominates the heights both hold (none when apart): brainstem remains only above the cord's top
    assert np.count_nonzero(image == 200) > 0
    assert np.array_equal(finished == brainstem, image == 200)
    assert np.array_equal(finished == cord, (image > 0) & (image < 200))
