"""Where a series' slices lie in patient space, and structure masks cropped to their bounding boxes: what the RT
Structure Set writer (contours placed on the slices) and the read-back checks (``readback``: slices of masks
compared voxel for voxel, voxel counts and centroids) share.

Every slice is placed by its own ImagePositionPatient (``SlicePlanes``), so stacks whose slices are not on a
regular grid (gantry tilt, variable spacing) are placed where the scanner put them; a structure's mask costs its
box (``BoxedMask``), not the whole grid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from innereye_batch.boxes import Box, label_boxes
from innereye_batch.dicom.series import SeriesInfo

_PLANE_TOLERANCE = 0.01
"""How far a contour point may lie off a slice plane, as a fraction of the smallest distance between slices."""


@dataclass(frozen=True)
class MaskStats:
    """Size and position of one structure: voxel count and centroid (LPS, mm; None when empty)."""

    voxel_count: int
    centroid: tuple[float, float, float] | None

    @classmethod
    def from_sums(cls, count: int, position_sum: np.ndarray) -> MaskStats:
        """From a voxel count and the sum of the voxels' positions (LPS mm)."""
        if count == 0:
            return cls(0, None)
        centroid = position_sum / count
        return cls(count, (float(centroid[0]), float(centroid[1]), float(centroid[2])))


@dataclass(frozen=True, eq=False)
class SlicePlanes:
    """Where a series' images lie: each slice's first-pixel position and the patient-space step of one column and
    of one row (shared by the slices of a stack), in slice order."""

    positions: np.ndarray
    """(slices, 3) ImagePositionPatient, LPS mm."""
    column_step: np.ndarray
    """LPS mm from one column to the next (along a row)."""
    row_step: np.ndarray
    """LPS mm from one row to the next (down a column)."""
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, series: SeriesInfo) -> SlicePlanes:
        geometry = series.geometry
        direction = geometry.direction_matrix
        return cls(
            positions=np.asarray([s.position for s in series.slices], dtype=np.float64),
            column_step=direction[:, 0] * geometry.spacing[2],
            row_step=direction[:, 1] * geometry.spacing[1],
            shape=geometry.shape,
        )

    @functools.cached_property
    def normal(self) -> np.ndarray:
        normal = np.cross(self.column_step, self.row_step)
        return normal / np.linalg.norm(normal)

    @functools.cached_property
    def _offsets_and_tolerance(self) -> tuple[np.ndarray, float]:
        """Each slice's distance along the normal, and how far off it a point still lies on it (mm)."""
        offsets = self.positions @ self.normal
        gaps = np.diff(np.sort(offsets))
        gaps = gaps[gaps > 1e-6]
        tolerance = _PLANE_TOLERANCE * (float(gaps.min()) if gaps.size else float(np.linalg.norm(self.row_step)))
        return offsets, tolerance

    def to_patient(self, slice_index: int, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """(n, 3) LPS positions of (possibly fractional) pixel positions on one slice."""
        return self.positions[slice_index] + np.outer(columns, self.column_step) + np.outer(rows, self.row_step)

    def locate(self, points: np.ndarray) -> tuple[int, np.ndarray, np.ndarray] | None:
        """The slice whose plane holds every one of ``points`` and their (rows, columns) on it; None when they do
        not lie on one slice plane."""
        offsets, tolerance = self._offsets_and_tolerance
        along = points @ self.normal
        slice_index = int(np.abs(offsets - along.mean()).argmin())
        if np.abs(along - offsets[slice_index]).max() > tolerance:
            return None
        relative = points - self.positions[slice_index]
        columns = relative @ self.column_step / float(self.column_step @ self.column_step)
        rows = relative @ self.row_step / float(self.row_step @ self.row_step)
        return slice_index, rows, columns

    def stats(self, mask: np.ndarray | BoxedMask) -> MaskStats:
        """Voxel count and patient-space centroid of a (slices, rows, columns) boolean mask on these slices, or of
        a ``BoxedMask`` (the mask within its box of them)."""
        return MaskStats.from_sums(*self.sums(mask))

    def sums(self, mask: np.ndarray | BoxedMask) -> tuple[int, np.ndarray]:
        """Voxel count and sum of the voxels' patient-space positions (LPS mm) of a mask as ``stats`` takes."""
        (first_slice, top, left), mask = _corner_and_array(mask)
        total = np.zeros(3)
        # only the slices, then the rows, that hold the mask are counted (``any`` finds them at little cost)
        occupied = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
        if occupied.size == 0:
            return 0, total
        first, last = int(occupied[0]), int(occupied[-1]) + 1
        per_row = np.count_nonzero(mask[first:last], axis=2)
        rows = np.flatnonzero(per_row.any(axis=0))
        per_column = np.count_nonzero(mask[first:last, int(rows[0]) : int(rows[-1]) + 1], axis=1)
        per_slice = per_row.sum(axis=1)
        count = int(per_slice.sum())
        # sums of row and column indices from projections per slice (no index arrays as large as the mask)
        row_sum = float((per_row @ np.arange(top, top + mask.shape[1])).sum())
        column_sum = float((per_column @ np.arange(left, left + mask.shape[2])).sum())
        positions = self.positions[first_slice + first : first_slice + last]
        total = per_slice @ positions + column_sum * self.column_step + row_sum * self.row_step
        return count, total


@dataclass(frozen=True, eq=False)
class BoxedMask:
    """A structure's (z, y, x) boolean mask within its bounding box of a series' grid: the writers' masks are
    cropped so that a small structure costs its box, not the whole grid."""

    box: Box
    """Where ``mask`` lies in the grid (slices with explicit starts, as ``boxes.label_boxes`` gives)."""
    mask: np.ndarray

    @property
    def corner(self) -> tuple[int, int, int]:
        """The grid index of the box's first voxel."""
        return (int(self.box[0].start), int(self.box[1].start), int(self.box[2].start))


def mask_slice(mask: np.ndarray | BoxedMask, slice_index: int, shape: tuple[int, int]) -> np.ndarray:
    """Slice ``slice_index`` of a (z, y, x) mask, or of a ``BoxedMask``, as a whole (rows, columns) boolean image."""
    (first, top, left), array = _corner_and_array(mask)
    out = np.zeros(shape, dtype=bool)
    if 0 <= slice_index - first < array.shape[0]:
        out[top : top + array.shape[1], left : left + array.shape[2]] = array[slice_index - first]
    return out


def overlap_count(mask: np.ndarray | BoxedMask, slice_index: int, found: np.ndarray, corner: tuple[int, int]) -> int:
    """Voxels of slice ``slice_index`` of a mask (or ``BoxedMask``) also set in ``found``, a (rows, columns)
    boolean image whose first pixel lies at ``corner`` (row, column) of the slice: only where both boxes meet."""
    (first, top, left), array = _corner_and_array(mask)
    if not 0 <= slice_index - first < array.shape[0]:
        return 0
    plane = array[slice_index - first]
    row_start, column_start = max(top, corner[0]), max(left, corner[1])
    row_stop = min(top + plane.shape[0], corner[0] + found.shape[0])
    column_stop = min(left + plane.shape[1], corner[1] + found.shape[1])
    if row_start >= row_stop or column_start >= column_stop:
        return 0
    inside_mask = plane[row_start - top : row_stop - top, column_start - left : column_stop - left]
    inside_found = found[
        row_start - corner[0] : row_stop - corner[0], column_start - corner[1] : column_stop - corner[1]
    ]
    return int(np.count_nonzero(inside_mask & inside_found))


def slice_counts(mask: np.ndarray | BoxedMask, slices: int) -> np.ndarray:
    """Voxels of a mask (or ``BoxedMask``) on each of the grid's ``slices``."""
    (first, _, _), array = _corner_and_array(mask)
    counts = np.zeros(slices, dtype=np.int64)
    counts[first : first + array.shape[0]] = np.count_nonzero(array.reshape(array.shape[0], -1), axis=1)
    return counts


def label_masks(labels: np.ndarray, count: int) -> list[BoxedMask | None]:
    """Per label 1..``count``: its mask within its bounding box (None when absent), from one pass over the box of
    the map's non-zero voxels (``boxes.label_boxes``)."""
    boxes = label_boxes(labels, count)
    return [None if box is None else BoxedMask(box, labels[box] == number) for number, box in enumerate(boxes, start=1)]


def _corner_and_array(mask: np.ndarray | BoxedMask) -> tuple[tuple[int, int, int], np.ndarray]:
    if isinstance(mask, BoxedMask):
        return mask.corner, mask.mask
    return (0, 0, 0), mask
