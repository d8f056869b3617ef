"""Boxes of a label map's labels found within its non-zero box are those scipy's find_objects finds in the whole."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import find_objects

from innereye_batch.boxes import label_boxes, nonzero_box


def _maps() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    sparse = (rng.integers(1, 6, (9, 11, 13)) * (rng.random((9, 11, 13)) < 0.02)).astype(np.uint8)
    corners = np.zeros((6, 7, 8), np.uint8)
    corners[0, 0, 0] = 2
    corners[-1, -1, -1] = 4
    block = np.zeros((10, 12, 14), np.uint8)
    block[3:7, 2:5, 9:13] = 1
    block[4, 8, 1] = 3
    dense = rng.integers(0, 4, (5, 6, 7)).astype(np.uint8)
    return [sparse, corners, block, dense, np.zeros((4, 5, 6), np.uint8)]


@pytest.mark.parametrize("labels", _maps(), ids=["sparse", "corners", "block", "dense", "empty"])
@pytest.mark.parametrize("count", [1, 3, 6])
def test_label_boxes_equal_find_objects(labels: np.ndarray, count: int) -> None:
    assert label_boxes(labels, count) == find_objects(labels, max_label=count)


def test_nonzero_box_is_the_smallest_box_of_every_non_zero_voxel() -> None:
    labels = np.zeros((6, 7, 8, 3), np.uint16)
    labels[2, 1, 5, 0] = 7
    labels[4, 3, 2, 2] = 1
    assert nonzero_box(labels) == (slice(2, 5), slice(1, 4), slice(2, 6), slice(0, 3))
    assert nonzero_box(np.zeros((3, 4), bool)) is None
    signed = np.zeros((3, 4), np.int16)
    signed[1, 2] = -5  # a maximum would miss a negative value
    assert nonzero_box(signed) == (slice(1, 2), slice(2, 3))


def test_label_boxes_refuses_a_signed_map() -> None:
    with pytest.raises(ValueError, match="unsigned"):
        label_boxes(np.zeros((2, 2, 2), np.int32), 1)
