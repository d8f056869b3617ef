"""Resample a stack whose slices are not on a regular orthogonal grid (gantry tilt, variable spacing) onto one.

The slices of such a stack are parallel planes, each with its own origin: a tilted gantry shifts each slice within
its plane (a shear), variable spacing puts them at uneven distances. dcm2niix corrects both (its ``_Tilt`` and
``_Eq`` outputs); we do the same in one step, by linear interpolation in patient space:

- the target grid keeps the slices' row and column directions and pixel spacing, with the slice normal as its
  third axis; its extent covers every source slice (rows and columns added where the slices drift, as dcm2niix
  widens a tilted volume), and its slices run from the first source slice to the last in equal steps: the
  median step for a tilted stack with regular steps, the smallest step for variable spacing;
- each target voxel lies in the plane of a source slice or between two: it takes the bilinear value of each
  bracketing slice at its position, weighted linearly by its distance to their planes; voxels outside every
  source slice get ``fill`` (the stack's lowest value, as dcm2niix pads with the darkest value).

``Regridding.to_source`` brings a label map computed on the target grid back onto the source slices (nearest
neighbour), so that DICOM outputs can reference the source images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from innereye_batch.dicom.geometry import Geometry

MAX_SLICE_FACTOR = 4
"""The target grid has at most this many times the source's slices (tiny steps in a long stack)."""
_EPSILON = 1e-6


def regular_grid(
    source: Geometry, positions: np.ndarray | Sequence[Sequence[float]], *, smallest_step: bool
) -> Geometry:
    """The regular orthogonal grid that covers every slice of an irregular stack (see module docstring).

    ``source`` gives the slices' directions, pixel spacing and size; ``positions`` their ImagePositionPatient in
    slice order (ascending along the normal). The z step is the smallest step between slices when
    ``smallest_step`` (variable spacing), else the median step.
    """
    direction = source.direction_matrix
    row, col, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    _, rows, columns = source.shape
    _, spacing_y, spacing_x = source.spacing
    points = np.asarray(positions, dtype=np.float64)
    along = points @ normal
    steps = np.diff(along)
    steps = steps[steps > 1e-3]
    span = float(along[-1] - along[0])
    if steps.size == 0 or span <= 0:
        count, step = 1, source.spacing[0]
    else:
        step = float(steps.min() if smallest_step else np.median(steps))
        count = min(round(span / step) + 1, MAX_SLICE_FACTOR * len(points))
        step = span / (count - 1)
    columns_offsets = (points - points[0]) @ row / spacing_x
    rows_offsets = (points - points[0]) @ col / spacing_y
    first_column = math.floor(float(columns_offsets.min()) + _EPSILON)
    last_column = math.ceil(float(columns_offsets.max()) + columns - 1 - _EPSILON)
    first_row = math.floor(float(rows_offsets.min()) + _EPSILON)
    last_row = math.ceil(float(rows_offsets.max()) + rows - 1 - _EPSILON)
    origin = points[0] + first_column * spacing_x * row + first_row * spacing_y * col
    return Geometry(
        shape=(count, last_row - first_row + 1, last_column - first_column + 1),
        spacing=(float(step), float(spacing_y), float(spacing_x)),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=source.direction,
    )


_HALF_TOLERANCE = 1e-6
"""Voxels by which an offset may fall short of a half and still round up: positions in decimal millimetres rarely
make an exact binary half."""


def _nearest(offset: float) -> int:
    """The nearest whole voxel to ``offset``, halves (and what float arithmetic left of them) rounding up."""
    return math.floor(offset + 0.5 + _HALF_TOLERANCE)


@dataclass(frozen=True, eq=False)
class Regridding:
    """How a stack's source slices relate to the regular grid it was resampled onto."""

    source: Geometry
    """The source stack's nominal geometry (shape, in-plane spacing and directions of its slices)."""
    positions: np.ndarray
    """(slices, 3) ImagePositionPatient of the source slices, in slice order."""
    target: Geometry

    def _offsets(self, k: int) -> tuple[float, float, float]:
        """Target (z, y, x) index coordinates of pixel (0, 0) of source slice ``k``."""
        direction = self.target.direction_matrix
        relative = self.positions[k] - np.asarray(self.target.origin)
        spacing_z, spacing_y, spacing_x = self.target.spacing
        return (
            float(relative @ direction[:, 2]) / spacing_z,
            float(relative @ direction[:, 1]) / spacing_y,
            float(relative @ direction[:, 0]) / spacing_x,
        )

    def resample(self, stack: np.ndarray, fill: float | None = None) -> np.ndarray:
        """``stack`` (source slices, z y x) resampled onto the target grid (float32), as the module says."""
        from scipy.ndimage import affine_transform

        if fill is None:
            fill = float(stack.min()) if stack.size else 0.0
        out = np.full(self.target.shape, fill, dtype=np.float32)
        along = np.array([self._offsets(k)[0] for k in range(len(self.positions))])
        rows, columns = self.target.shape[1:]
        cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def sampled(k: int) -> tuple[np.ndarray, np.ndarray]:
            """Source slice k at the target's in-plane grid, and where it has data (the last two are kept)."""
            if k not in cache:
                _, dy, dx = self._offsets(k)
                offset = (-dy, -dx)  # target pixel (i, j) is source pixel (i - dy, j - dx) of this slice
                values = affine_transform(
                    stack[k].astype(np.float64), (1.0, 1.0), offset, (rows, columns), order=1, mode="nearest"
                )
                i = np.arange(rows)[:, None] - dy
                j = np.arange(columns)[None, :] - dx
                height, width = stack.shape[1:]
                inside = (
                    (i >= -_EPSILON) & (i <= height - 1 + _EPSILON) & (j >= -_EPSILON) & (j <= width - 1 + _EPSILON)
                )
                for old in [key for key in cache if key < k - 1]:
                    del cache[old]
                cache[k] = (values, inside)
            return cache[k]

        for z in range(self.target.shape[0]):
            upper = int(np.searchsorted(along, z - _EPSILON))
            upper = min(max(upper, 0), len(along) - 1)
            if abs(along[upper] - z) <= _EPSILON or upper == 0:
                values, inside = sampled(upper)
                out[z][inside] = values[inside]
                continue
            lower = upper - 1
            weight = (z - along[lower]) / (along[upper] - along[lower])
            low, low_inside = sampled(lower)
            high, high_inside = sampled(upper)
            inside = low_inside & high_inside
            out[z][inside] = ((1 - weight) * low + weight * high)[inside]
        return out

    def to_source(self, labels: np.ndarray) -> np.ndarray:
        """A label map on the target grid brought back onto the source slices (nearest neighbour; 0 outside)."""
        if tuple(labels.shape) != self.target.shape:
            raise ValueError(f"label map shape {labels.shape} is not the target grid's {self.target.shape}")
        slices, rows, columns = self.source.shape
        out = np.zeros((slices, rows, columns), dtype=labels.dtype)
        depth, height, width = self.target.shape
        for k in range(slices):
            z, dy, dx = self._offsets(k)
            zi = _nearest(z)
            if not 0 <= zi < depth:
                continue
            # one whole shift per slice: rounding each row apart (np.rint's half-to-even, or a half that float
            # arithmetic made 0.4999999) sent the rows of a slice half a pixel off the grid different ways, so one
            # target row was used twice and the next never
            i = np.arange(rows) + _nearest(dy)
            j = np.arange(columns) + _nearest(dx)
            valid_i, valid_j = (i >= 0) & (i < height), (j >= 0) & (j < width)
            block = labels[zi][np.clip(i, 0, height - 1)[:, None], np.clip(j, 0, width - 1)[None, :]]
            out[k] = np.where(valid_i[:, None] & valid_j[None, :], block, 0)
        return out
