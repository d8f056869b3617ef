"""Geometry of a 3-D image grid: shape, spacing, origin and direction in LPS, as SimpleITK defines them.

Conventions (used everywhere in the package):
- arrays are indexed (z, y, x): slice, row, column;
- ``shape`` and ``spacing`` follow the array's axis order (z, y, x);
- ``origin`` is the LPS position (x, y, z) in mm of the centre of voxel (0, 0, 0);
- ``direction`` is SimpleITK's 3x3 matrix flattened row-major: its column c is the LPS unit vector along index
  axis c, where index axes are ordered (x, y, z) = (column, row, slice), exactly as ``Image.GetDirection()``.
This is the one place that converts geometry to a NIfTI (RAS) affine and to and from SimpleITK images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk
    import torch

_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
"""The ways to give the patient axes (L, P, S) to the index axes (x, y, z)."""
# Flip of the first two axes: LPS <-> RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Geometry:
    """Where a (z, y, x) voxel grid sits in patient space (LPS, mm)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError(f"malformed geometry: {self}")

    @property
    def spacing_xyz(self) -> tuple[float, float, float]:
        """Spacing in SimpleITK's (x, y, z) order."""
        z, y, x = self.spacing
        return (x, y, z)

    @property
    def direction_matrix(self) -> np.ndarray:
        """The 3x3 direction matrix (columns: LPS unit vectors of the x, y, z index axes)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def axis_codes(self) -> str:
        """Where the index axes (x, y, z) = (column, row, slice) point in the patient, one letter each: ``"LPS"``
        for the usual head-first supine axial stack (columns to the patient's left, rows to posterior, slices to
        superior), ``"RPI"`` for a feet-first one. The patient axes are given to the index axes together (the
        assignment closest to the directions), so the three letters name three different axes."""
        codes = ""
        for axis, component in zip(self._nearest_axes(), self.direction_matrix.T, strict=True):
            codes += ("LR", "PA", "SI")[axis][0 if component[axis] > 0 else 1]
        return codes

    def axes_ambiguous(self, margin: float = 0.05) -> bool:
        """Whether an index axis lies about as close to another patient axis as to the one ``axis_codes`` gives it
        (within ``margin`` of cosine: an oblique stack within about 2 degrees of 45 between two patient axes, or
        tilted two ways so that one axis is nearer another patient axis): a rounding in its header could change
        its codes, or its codes misname it."""
        matrix = np.abs(self.direction_matrix)
        for column, row in enumerate(self._nearest_axes()):
            others = max(matrix[other, column] for other in range(3) if other != row)
            if matrix[row, column] - others < margin:
                return True
        return False

    def reorientation(self, codes: str) -> Reorientation:
        """How to turn this grid's array so that its index axes (x, y, z) point as ``codes`` says (``"LPS"``): which
        axes to swap and which to reverse, each to the nearest patient axis (``axis_codes``); no voxel moves in the
        patient, none is interpolated."""
        own = self.axis_codes()
        patient_axis = {c: i for i, pair in enumerate(("LR", "PA", "SI")) for c in pair}
        sources = tuple(next(i for i, c in enumerate(own) if patient_axis[c] == patient_axis[w]) for w in codes)
        reversed_xyz = tuple(own[s] != w for s, w in zip(sources, codes, strict=True))
        return Reorientation(source_axes_xyz=sources, reversed_xyz=reversed_xyz)

    def _nearest_axes(self) -> tuple[int, ...]:
        return nearest_patient_axes(self.direction_matrix)

    def lps_affine(self) -> np.ndarray:
        """4x4 matrix mapping a voxel index (x, y, z, 1) to its LPS position in mm."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction_matrix @ np.diag(self.spacing_xyz)
        affine[:3, 3] = self.origin
        return affine

    def nifti_affine(self) -> np.ndarray:
        """4x4 NIfTI (RAS) affine for the array transposed to (x, y, z), as NIfTI stores it."""
        return _LPS_TO_RAS @ self.lps_affine()

    def index_to_lps(self, index_zyx: tuple[float, float, float]) -> np.ndarray:
        """LPS position (mm) of a (z, y, x) voxel index."""
        z, y, x = index_zyx
        return (self.lps_affine() @ np.array([x, y, z, 1.0]))[:3]

    def with_grid(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Geometry:
        """The same origin and direction with another voxel grid (used when resampling)."""
        return Geometry(
            shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
            spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
            origin=self.origin,
            direction=self.direction,
        )

    def is_close(self, other: Geometry, tol_mm: float = 1e-4) -> bool:
        """True when both grids have the same shape and agree within ``tol_mm`` (direction within 1e-6)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol_mm, rtol=0)
            and np.allclose(self.origin, other.origin, atol=tol_mm, rtol=0)
            and np.allclose(self.direction, other.direction, atol=1e-6, rtol=0)
        )

    def to_sitk(self, array_zyx: np.ndarray) -> sitk.Image:
        """A SimpleITK image holding ``array_zyx`` on this grid."""
        import SimpleITK as sitk

        if tuple(array_zyx.shape) != self.shape:
            raise ValueError(f"array shape {array_zyx.shape} does not match geometry shape {self.shape}")
        image = sitk.GetImageFromArray(array_zyx)
        image.SetSpacing(self.spacing_xyz)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Geometry:
        """The geometry of a 3-D SimpleITK image."""
        x, y, z = image.GetSize()
        sx, sy, sz = image.GetSpacing()
        return cls(
            shape=(z, y, x),
            spacing=(sz, sy, sx),
            origin=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in image.GetDirection()),
        )

    def to_json(self) -> dict[str, list[float] | list[int]]:
        """Plain lists for JSON: shape and spacing (z, y, x), origin (x, y, z), direction row-major."""
        return {
            "shape": list(self.shape),
            "spacing_mm": [round(float(s), 6) for s in self.spacing],
            "origin_mm": [round(float(o), 6) for o in self.origin],
            "direction": [round(float(d), 8) for d in self.direction],
        }


def nearest_patient_axes(direction: np.ndarray) -> tuple[int, ...]:
    """For each index axis (x, y, z: the columns of a 3x3 direction matrix, LPS), the patient axis (0 L-R, 1 P-A,
    2 S-I) it is given: the patient axes are given to the index axes together, the way that keeps the largest sum
    of the cosines, so that the three index axes get three different patient axes."""
    matrix = np.abs(np.asarray(direction, dtype=np.float64).reshape(3, 3))
    return max(_PERMUTATIONS, key=lambda p: sum(matrix[row, column] for column, row in enumerate(p)))


@dataclass(frozen=True)
class Reorientation:
    """A swap and reversal of a grid's index axes: new index axis j (x, y, z) is source axis ``source_axes_xyz[j]``,
    run backwards where ``reversed_xyz[j]``. Arrays are (z, y, x), with leading axes (channels) left alone."""

    source_axes_xyz: tuple[int, ...]
    reversed_xyz: tuple[bool, ...]

    @property
    def is_identity(self) -> bool:
        return self.source_axes_xyz == (0, 1, 2) and not any(self.reversed_xyz)

    @property
    def _permutation_zyx(self) -> tuple[int, ...]:
        """For each new (z, y, x) array axis, the source array axis it is."""
        return tuple(2 - self.source_axes_xyz[2 - a] for a in range(3))

    @property
    def _reversed_zyx(self) -> tuple[int, ...]:
        """The new (z, y, x) array axes that run backwards."""
        return tuple(2 - j for j in range(3) if self.reversed_xyz[j])

    def shape(self, shape_zyx: tuple[int, int, int]) -> tuple[int, int, int]:
        """The (z, y, x) shape (or spacing) of the turned grid."""
        return tuple(shape_zyx[a] for a in self._permutation_zyx)  # type: ignore[return-value]

    def geometry(self, source: Geometry) -> Geometry:
        """The turned grid: every voxel keeps its position in the patient."""
        matrix = source.direction_matrix
        size_xyz = source.shape[::-1]
        columns = []
        first = [0.0, 0.0, 0.0]  # the source index (x, y, z) of the turned grid's voxel 0
        for s, r in zip(self.source_axes_xyz, self.reversed_xyz, strict=True):
            columns.append(-matrix[:, s] if r else matrix[:, s])
            first[s] = size_xyz[s] - 1.0 if r else 0.0
        origin = source.index_to_lps((first[2], first[1], first[0]))
        return Geometry(
            shape=self.shape(source.shape),
            spacing=self.shape(source.spacing),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in origin),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in np.stack(columns, axis=1).ravel()),
        )

    def turn(self, array: torch.Tensor) -> torch.Tensor:
        """A (..., z, y, x) tensor on the source grid, on the turned grid (a copy where anything moves)."""
        if self.is_identity:
            return array
        lead = array.dim() - 3
        turned = array.permute(*range(lead), *(lead + a for a in self._permutation_zyx))
        reversed_axes = [lead + a for a in self._reversed_zyx]
        return (turned.flip(reversed_axes) if reversed_axes else turned).contiguous()

    def turn_back(self, array: np.ndarray) -> np.ndarray:
        """A (z, y, x) array on the turned grid (a label map), back on the source grid, C-contiguous."""
        if self.is_identity:
            return array
        unreversed = np.flip(array, self._reversed_zyx) if self._reversed_zyx else array
        return np.ascontiguousarray(np.transpose(unreversed, np.argsort(self._permutation_zyx)))
