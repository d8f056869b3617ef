"""Group image headers into series, split them into stacks of one grid, sort slices and find spacing problems.

Works on headers only (built by ``scan.py``): sorts by position along the slice normal, computes the geometry
as SimpleITK defines it, and reports duplicate positions, missing slices, uneven spacing and gantry tilt.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import UID

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.series import PixelLayout, Problem, SeriesInfo, SliceRef

IDENTITY_ROWS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
"""Row and column direction cosines of an axial image, used where an image has none."""
ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between direction cosines of images that belong to one stack."""
DUPLICATE_TOLERANCE_MM = 1e-3
GAP_FACTOR = 1.5
"""A step larger than this many median steps means missing slices."""


@dataclass(slots=True)  # not frozen: built once per image, in the hot loop
class ImageHeader:
    """One 2-D image from a header: a single-frame file or one frame of a multi-frame file."""

    path: Path
    sop_instance_uid: str
    frame: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    """Row and column direction cosines (6 numbers), normalised; None when absent or unusable."""
    pixel_spacing: tuple[float, float]
    """(between rows, between columns) in mm, i.e. (y, x)."""
    rows: int
    columns: int
    slice_spacing: float | None
    """SpacingBetweenSlices, used for the z spacing of a single-slice stack."""
    pixel: PixelLayout | None = None
    """Where the stored values lie, for a native single-frame image (see PixelLayout)."""


@dataclass(slots=True)  # not frozen: built once per image, in the hot loop
class FileHeader:
    """What one readable image file contributes to a series."""

    path: Path
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    modality: str
    sop_class_uid: str
    series_description: str
    series_number: int | None
    transfer_syntax: str
    images: tuple[ImageHeader, ...]
    is_2d: bool
    """A projection image or an image without usable position: a series of its own."""
    frame_geometry_missing: bool
    """A multi-frame file without per-frame positions (cine, secondary capture)."""


def build_series(headers: list[FileHeader], damaged: dict[str, list[Path]]) -> list[SeriesInfo]:
    """Every series (stack) formed by ``headers``; ``damaged`` lists, per SeriesInstanceUID, files skipped as broken."""
    return [s for group in _group_by_series(headers).values() for s in _build_series(group, damaged)]


@dataclass
class _Stack:
    """Images that share one grid (orientation, size, pixel spacing), before sorting."""

    images: list[ImageHeader]
    geometry_missing: bool = False


def _group_by_series(headers: list[FileHeader]) -> dict[str, list[FileHeader]]:
    groups: dict[str, list[FileHeader]] = defaultdict(list)
    for header in sorted(headers, key=lambda h: str(h.path)):
        groups[header.series_instance_uid].append(header)
    return groups


def _same_grid(a: ImageHeader, b: ImageHeader) -> bool:
    return (
        (a.rows, a.columns) == (b.rows, b.columns)
        and all(abs(x - y) <= 1e-4 + 1e-3 * abs(y) for x, y in zip(a.pixel_spacing, b.pixel_spacing, strict=True))
        and a.orientation is not None
        and b.orientation is not None
        and max(abs(x - y) for x, y in zip(a.orientation, b.orientation, strict=True)) <= ORIENTATION_TOLERANCE
    )


def _split_into_stacks(group: list[FileHeader]) -> list[_Stack]:
    """dcm2niix-style: 2-D images alone; other images together when their grids agree."""
    stacks: list[_Stack] = []
    volumetric: list[_Stack] = []
    for header in group:
        if header.is_2d or header.frame_geometry_missing:
            stacks.append(_Stack(list(header.images), geometry_missing=header.frame_geometry_missing))
            continue
        for image in header.images:
            home = next((s for s in volumetric if _same_grid(s.images[0], image)), None)
            if home is None:
                home = _Stack([])
                volumetric.append(home)
                stacks.append(home)
            home.images.append(image)
    return stacks


def _build_series(group: list[FileHeader], damaged: dict[str, list[Path]]) -> list[SeriesInfo]:
    stacks = _split_into_stacks(group)
    by_path = {h.path: h for h in group}
    broken = damaged.get(group[0].series_instance_uid, [])
    result = []
    for number, stack in enumerate(stacks, start=1):
        slices, geometry, problems = _sort_and_check(stack)
        first = by_path[slices[0].path]
        syntaxes = tuple(sorted({by_path[p].transfer_syntax for p in dict.fromkeys(s.path for s in slices)}))
        if len(syntaxes) > 1:
            names = ", ".join(UID(t).name or t for t in syntaxes)
            problems.append(Problem("mixed_transfer_syntaxes", f"files use {len(syntaxes)} syntaxes: {names}"))
        if broken:
            names = ", ".join(p.name for p in broken[:5]) + (" ..." if len(broken) > 5 else "")
            problems.append(
                Problem("unreadable_file", f"{len(broken)} file(s) of this series are damaged: {names}", True)
            )
        result.append(
            SeriesInfo(
                series_instance_uid=first.series_instance_uid,
                study_instance_uid=first.study_instance_uid,
                frame_of_reference_uid=first.frame_of_reference_uid,
                modality=first.modality,
                sop_class_uid=first.sop_class_uid,
                series_description=first.series_description,
                slices=slices,
                geometry=geometry,
                transfer_syntaxes=syntaxes,
                problems=tuple(problems),
                stack=0 if len(stacks) == 1 else number,
                series_number=first.series_number,
            )
        )
    return result


def _sort_and_check(stack: _Stack) -> tuple[tuple[SliceRef, ...], Geometry, list[Problem]]:
    """Sort along the slice normal; geometry as SimpleITK defines it; the stack's spacing problems."""
    images = stack.images
    reference = images[0]
    cosines = reference.orientation or IDENTITY_ROWS
    row, col = np.asarray(cosines[:3]), np.asarray(cosines[3:])
    normal = np.cross(row, col)
    positions = np.array([im.position or (0.0, 0.0, 0.0) for im in images], dtype=np.float64)
    along = positions @ normal
    order = sorted(range(len(images)), key=lambda i: (along[i], str(images[i].path), images[i].frame or 0))
    positions, along = positions[order], along[order]
    problems: list[Problem] = []
    if stack.geometry_missing:
        problems.append(
            Problem("no_frame_geometry", "multi-frame image without per-frame positions or orientation", True)
        )
    if len(images) == 1:
        spacing_z = reference.slice_spacing if reference.slice_spacing and reference.slice_spacing > 0 else 1.0
    else:
        spacing_z, spacing_problems = _spacing_problems(np.diff(along))
        problems += spacing_problems
        problems += _tilt_problems(positions, normal, min(reference.pixel_spacing))
    slices = tuple(
        SliceRef(
            path=images[i].path,
            sop_instance_uid=images[i].sop_instance_uid,
            position=(float(p[0]), float(p[1]), float(p[2])),
            frame=images[i].frame,
            pixel=images[i].pixel,
        )
        for i, p in zip(order, positions, strict=True)
    )
    geometry = Geometry(
        shape=(len(images), reference.rows, reference.columns),
        spacing=(float(spacing_z), float(reference.pixel_spacing[0]), float(reference.pixel_spacing[1])),
        origin=(float(positions[0][0]), float(positions[0][1]), float(positions[0][2])),
        direction=tuple(float(v) for v in np.stack([row, col, normal], axis=1).ravel()),
    )
    return slices, geometry, problems


def _spacing_problems(steps: np.ndarray) -> tuple[float, list[Problem]]:
    """The median step between slices, and duplicate / missing / uneven slices."""
    problems = []
    duplicates = steps <= DUPLICATE_TOLERANCE_MM
    if duplicates.any():
        problems.append(
            Problem("duplicate_positions", f"{int(duplicates.sum())} slice(s) share a position with another", True)
        )
    distinct = steps[~duplicates]
    if distinct.size == 0:
        return 1.0, problems
    median = float(np.median(distinct))
    gaps = distinct > GAP_FACTOR * median
    if gaps.any():
        missing = int(sum(round(g / median) - 1 for g in distinct[gaps]))
        problems.append(
            Problem(
                "missing_slices",
                f"{int(gaps.sum())} gap(s) up to {float(distinct[gaps].max()):.3g} mm for a median step of "
                f"{median:.3g} mm: about {max(missing, 1)} slice(s) missing",
                True,
            )
        )
    uneven = np.abs(distinct[~gaps] - median) > max(DUPLICATE_TOLERANCE_MM, 0.01 * median)
    if uneven.any():
        problems.append(
            Problem(
                "non_uniform_spacing",
                f"steps between slices range {float(distinct.min()):.4g}-{float(distinct.max()):.4g} mm "
                f"(median {median:.4g} mm used)",
            )
        )
    return median, problems


def _tilt_problems(positions: np.ndarray, normal: np.ndarray, pixel_mm: float) -> list[Problem]:
    """Slices whose positions drift within the image plane: gantry tilt or a sheared stack."""
    offsets = positions - positions[0]
    lateral = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.linalg.norm(lateral, axis=1).max())
    if drift <= 0.01 * pixel_mm:
        return []
    span = float(abs((positions[-1] - positions[0]) @ normal)) or 1.0
    angle = float(np.degrees(np.arctan2(float(np.linalg.norm(lateral[-1])), span)))
    message = f"slices drift {drift:.3g} mm within the image plane (tilt about {angle:.2f} degrees)"
    if drift <= 0.5 * pixel_mm:
        return [Problem("gantry_tilt", message + "; under half a pixel, ignored")]
    return [Problem("gantry_tilt", message, True)]
