"""structure_stats: voxel counts and volumes per structure, counted a slab of slices at a time."""

from __future__ import annotations

import numpy as np
import pytest

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.tasks.segmentation import structure_stats

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _geometry(shape: tuple[int, int, int]) -> Geometry:
    return Geometry(shape=shape, spacing=(2.0, 0.5, 0.5), origin=(0.0, 0.0, 0.0), direction=IDENTITY)


def test_counts_over_many_slabs_equal_one_whole_count() -> None:
    shape = (37, 256, 256)  # 16 slices per slab of 2**20 voxels: three slabs, the last one short
    labels = np.random.default_rng(3).integers(0, 4, shape, dtype=np.uint8)
    labels[-1] = 3  # the last, short slab counts too
    stats = structure_stats(labels, _geometry(shape), ["a", "b", "c"])
    expected = np.bincount(labels.ravel(), minlength=4)
    assert [s.voxel_count for s in stats] == [int(n) for n in expected[1:]]
    assert stats[2].volume_ml == pytest.approx(expected[3] * 2.0 * 0.5 * 0.5 / 1000)


def test_a_label_past_the_structures_in_a_later_slab_is_an_error() -> None:
    shape = (40, 256, 256)
    labels = np.zeros(shape, np.uint8)
    labels[35, 10, 10] = 3  # only two structures: label 3 names none
    with pytest.raises(ValueError, match="holds label 3 but there are 2 structures"):
        structure_stats(labels, _geometry(shape), ["a", "b"])


@pytest.mark.parametrize("filled", [(slice(3, 9), slice(40, 90), slice(7, 30)), (slice(0, 0),)])
def test_counts_of_structures_in_part_of_the_grid_equal_one_whole_count(filled: tuple[slice, ...]) -> None:
    shape = (20, 128, 96)  # only the structures' box is counted: the counts must still be those of the whole map
    labels = np.zeros(shape, np.uint8)
    labels[filled] = np.random.default_rng(5).integers(0, 3, labels[filled].shape, dtype=np.uint8)
    stats = structure_stats(labels, _geometry(shape), ["a", "b"])
    expected = np.bincount(labels.ravel(), minlength=3)
    assert [s.voxel_count for s in stats] == [int(n) for n in expected[1:]]
