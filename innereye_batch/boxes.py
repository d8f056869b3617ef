"""Bounding boxes in a label map, found within the box of its non-zero voxels.

A finished segmentation of a CT holds its structures in a fraction of the grid, yet ``scipy.ndimage.find_objects``
visits every voxel (0.2-0.3 s on a 300x512x512 map). ``nonzero_box`` finds where anything is from maximum
projections (a few ms), and ``label_boxes`` runs ``find_objects`` only there: the same boxes, as no label
other than 0 lies outside it.
"""

from __future__ import annotations

import numpy as np

Box = tuple[slice, ...]
"""Where something lies in an array: one slice per axis, with explicit start and stop."""


def nonzero_box(array: np.ndarray) -> Box | None:
    """The smallest box holding every non-zero element of a 2-D or higher ``array``; None when all are 0."""
    if array.ndim < 2:
        raise ValueError(f"nonzero_box takes an array of 2 dimensions or more, not {array.ndim}")
    occupied = array if array.dtype.kind in "bu" else array != 0  # unsigned: the maximum is 0 only on all-0
    first = np.flatnonzero(occupied.reshape(occupied.shape[0], -1).max(axis=1))
    if first.size == 0:
        return None
    start, stop = int(first[0]), int(first[-1]) + 1
    projection = occupied[start:stop].max(axis=0)  # onto the other axes
    box = [slice(start, stop)]
    for axis in range(projection.ndim):
        others = tuple(a for a in range(projection.ndim) if a != axis)
        found = np.flatnonzero(projection.max(axis=others) if others else projection)
        box.append(slice(int(found[0]), int(found[-1]) + 1))
    return tuple(box)


def label_boxes(labels: np.ndarray, count: int) -> list[Box | None]:
    """Per label 1..``count`` of an unsigned integer label map: the box of its voxels, None when absent; what
    ``scipy.ndimage.find_objects(labels, max_label=count)`` gives, searched within ``nonzero_box`` only."""
    from scipy.ndimage import find_objects

    if labels.dtype.kind not in "bu":
        raise ValueError(f"label_boxes takes an unsigned integer label map, not {labels.dtype}")
    where = nonzero_box(labels)
    if where is None:
        return [None] * count
    corner = [s.start for s in where]
    return [
        None if box is None else tuple(slice(s.start + c, s.stop + c) for s, c in zip(box, corner, strict=True))
        for box in find_objects(labels[where], max_label=count)
    ]
