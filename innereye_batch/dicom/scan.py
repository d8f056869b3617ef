"""Walk a folder tree, read DICOM headers in parallel, and group the images into sorted, checked series.

Only headers are read (pixel data is located and its length checked, never decoded). Every file either
lands in exactly one series (stack) or in the skipped list with a reason; the scan never raises for a file.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.headers import RawHeader, pixel_data_problem, read_header
from innereye_batch.dicom.series import Problem, SeriesInfo, SkippedFile, SliceRef

_BARE_DICOM_STARTS = (b"\x08\x00", b"\x02\x00", b"\x00\x08", b"\x00\x02")
"""First bytes of a file without preamble that starts with group 0008 or 0002 (either byte order)."""
_PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG", "IO", "PX", "RG"})
_NOT_IMAGES = {
    "1.2.840.10008.1.3.10": "DICOMDIR (media directory, not an image)",
    "1.2.840.10008.5.1.4.1.1.66.4": "segmentation object (DICOM-SEG), not an image series",
    "1.2.840.10008.5.1.4.1.1.66.5": "surface segmentation object, not an image series",
}
_IDENTITY_ROWS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between direction cosines of images that belong to one stack."""
DUPLICATE_TOLERANCE_MM = 1e-3
GAP_FACTOR = 1.5
"""A step larger than this many median steps means missing slices."""


@dataclass(frozen=True)
class ScanResult:
    """Every series (stack) found under a folder, and every file that was not used."""

    series: tuple[SeriesInfo, ...]
    """Sorted by study UID, series number and key."""
    skipped: tuple[SkippedFile, ...]


@dataclass(slots=True)  # not frozen: built once per image, in the hot loop
class _Image:
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


@dataclass(slots=True)  # not frozen: built once per image, in the hot loop
class _FileHeader:
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
    images: tuple[_Image, ...]
    is_2d: bool
    """A projection image or an image without usable position: a series of its own."""
    frame_geometry_missing: bool
    """A multi-frame file without per-frame positions (cine, secondary capture)."""


@dataclass(frozen=True)
class _Unreadable:
    """A file whose header belongs to a series but whose pixel data is damaged."""

    skipped: SkippedFile
    series_instance_uid: str


def scan_tree(root: Path, *, workers: int | None = None) -> ScanResult:
    """Find every image series under ``root`` from headers only; never raises for a bad file."""
    paths = list(_walk(Path(root)))
    workers = workers or min(8, os.cpu_count() or 1)  # parsing holds the GIL: more threads only help slow disks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outcomes = list(pool.map(_read_header_safely, paths, chunksize=16))
    headers = [o for o in outcomes if isinstance(o, _FileHeader)]
    skipped = [o for o in outcomes if isinstance(o, SkippedFile)]
    damaged: dict[str, list[Path]] = defaultdict(list)
    for o in outcomes:
        if isinstance(o, _Unreadable):
            skipped.append(o.skipped)
            damaged[o.series_instance_uid].append(o.skipped.path)
    series = [s for group in _group_by_series(headers).values() for s in _build_series(group, damaged)]
    series.sort(key=lambda s: (s.study_instance_uid, s.series_number is None, s.series_number or 0, s.key))
    skipped.sort(key=lambda s: str(s.path))
    return ScanResult(series=tuple(series), skipped=tuple(skipped))


def _walk(root: Path) -> Iterator[Path]:
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files):
            yield Path(folder) / name


# ---------------------------------------------------------------------------------------------- headers


def _read_header_safely(path: Path) -> _FileHeader | SkippedFile | _Unreadable:
    try:
        return _read_header(path)
    except Exception as error:  # any malformed file is skipped, never fatal to the scan
        return SkippedFile(path, f"unreadable DICOM header: {type(error).__name__}: {error}")


def _read_header(path: Path) -> _FileHeader | SkippedFile | _Unreadable:
    size = path.stat().st_size
    if size == 0:
        return SkippedFile(path, "empty file (0 bytes)")
    with open(path, "rb") as fp:
        start = fp.read(132)
        bare = start[128:132] != b"DICM"
        if bare and start[:2] not in _BARE_DICOM_STARTS:
            return SkippedFile(path, "not a DICOM file (no 'DICM' prefix and no DICOM tags at its start)")
        header = read_header(fp, size, force=bare)
        sop_class = str(header.get("SOPClassUID") or header.media_sop_class_uid)
        if sop_class in _NOT_IMAGES:
            return SkippedFile(path, _NOT_IMAGES[sop_class])
        pixel_problem = pixel_data_problem(fp, header, size)
    if pixel_problem is not None:
        fatal_to_series, reason = pixel_problem
        if not fatal_to_series:
            reason = f"{reason} ({UID(sop_class).name or 'unknown SOP class'})"
        series_uid = str(header.get("SeriesInstanceUID", ""))
        if fatal_to_series and series_uid:
            return _Unreadable(SkippedFile(path, reason), series_uid)
        return SkippedFile(path, reason)
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
        if not header.get(keyword):
            return SkippedFile(path, f"missing {keyword}")
    samples = int(header.get("SamplesPerPixel", 1))
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return SkippedFile(
            path, f"colour image ({photometric}, {samples} samples per pixel): only greyscale is supported"
        )
    if int(header.get("BitsAllocated", 16)) == 1:
        return SkippedFile(path, "1-bit (binary) image: not an image series")
    return _header_from_fields(path, header, sop_class)


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        return None
    return numbers


def _position(value: Any) -> tuple[float, float, float] | None:
    numbers = _floats(value, 3)
    return (numbers[0], numbers[1], numbers[2]) if numbers else None


def _orientation(value: Any) -> tuple[float, ...] | None:
    cosines = _floats(value, 6)
    if cosines is None:
        return None
    row_norm, col_norm = math.hypot(*cosines[:3]), math.hypot(*cosines[3:])
    if row_norm < 0.5 or col_norm < 0.5:
        return None
    row = [v / row_norm for v in cosines[:3]]
    col = [v / col_norm for v in cosines[3:]]
    if abs(sum(r * c for r, c in zip(row, col, strict=True))) > 1e-3:
        return None
    return (*row, *col)


def _first_item(source: RawHeader | Dataset | None, sequence: str) -> Dataset | None:
    items = source.get(sequence) if source is not None else None
    return items[0] if items else None


def _header_from_fields(path: Path, header: RawHeader, sop_class: str) -> _FileHeader:
    modality = str(header.get("Modality", "") or "")
    rows, columns = int(header.get("Rows")), int(header.get("Columns"))
    frames = int(header.get("NumberOfFrames", 1) or 1)
    sop_uid = str(header.get("SOPInstanceUID"))
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame or frames > 1:
        images = (
            _enhanced_images(path, sop_uid, header) if per_frame else _legacy_multiframe_images(path, sop_uid, header)
        )
        frame_geometry_missing = any(im.position is None or im.orientation is None for im in images)
        if frame_geometry_missing:
            images = [
                _Image(path, sop_uid, i, (0.0, 0.0, float(i)), _IDENTITY_ROWS, im.pixel_spacing, rows, columns, 1.0)
                for i, im in enumerate(images)
            ]
    else:
        images = [
            _Image(
                path=path,
                sop_instance_uid=sop_uid,
                frame=None,
                position=_position(header.get("ImagePositionPatient")),
                orientation=_orientation(header.get("ImageOrientationPatient")),
                pixel_spacing=_pixel_spacing(header),
                rows=rows,
                columns=columns,
                slice_spacing=_single_float(header.get("SpacingBetweenSlices")),
            )
        ]
        frame_geometry_missing = False
    is_2d = len(images) == 1 and (
        modality in _PROJECTION_MODALITIES or images[0].position is None or images[0].orientation is None
    )
    number = header.get("SeriesNumber")
    return _FileHeader(
        path=path,
        series_instance_uid=str(header.get("SeriesInstanceUID")),
        study_instance_uid=str(header.get("StudyInstanceUID", "") or ""),
        frame_of_reference_uid=str(header.get("FrameOfReferenceUID", "") or ""),
        modality=modality,
        sop_class_uid=sop_class,
        series_description=str(header.get("SeriesDescription", "") or ""),
        series_number=int(number) if number not in (None, "") else None,
        transfer_syntax=header.transfer_syntax,
        images=tuple(images),
        is_2d=is_2d,
        frame_geometry_missing=frame_geometry_missing,
    )


def _pixel_spacing(source: RawHeader | Dataset | None) -> tuple[float, float]:
    """PixelSpacing, else ImagerPixelSpacing, else 1 mm: (between rows, between columns)."""
    if source is None:
        return (1.0, 1.0)
    spacing = _floats(source.get("PixelSpacing"), 2) or _floats(source.get("ImagerPixelSpacing"), 2)
    return (spacing[0], spacing[1]) if spacing and min(spacing) > 0 else (1.0, 1.0)


def _single_float(value: Any) -> float | None:
    number = _floats([value], 1) if value not in (None, "") else None
    return number[0] if number else None


def _enhanced_images(path: Path, sop_uid: str, header: RawHeader) -> list[_Image]:
    """One image per frame of an enhanced multi-frame file, from its per-frame and shared groups."""
    shared = _first_item(header, "SharedFunctionalGroupsSequence")
    images = []
    for index, groups in enumerate(header.get("PerFrameFunctionalGroupsSequence")):
        plane = _first_item(groups, "PlanePositionSequence") or _first_item(shared, "PlanePositionSequence")
        orientation = _first_item(groups, "PlaneOrientationSequence") or _first_item(shared, "PlaneOrientationSequence")
        measures = _first_item(groups, "PixelMeasuresSequence") or _first_item(shared, "PixelMeasuresSequence")
        images.append(
            _Image(
                path=path,
                sop_instance_uid=sop_uid,
                frame=index,
                position=_position(plane.get("ImagePositionPatient")) if plane else None,
                orientation=_orientation(orientation.get("ImageOrientationPatient")) if orientation else None,
                pixel_spacing=_pixel_spacing(measures),
                rows=int(header.get("Rows")),
                columns=int(header.get("Columns")),
                slice_spacing=_single_float(measures.get("SpacingBetweenSlices")) if measures else None,
            )
        )
    return images


def _legacy_multiframe_images(path: Path, sop_uid: str, header: RawHeader) -> list[_Image]:
    """Frames of a multi-frame file without functional groups, placed by GridFrameOffsetVector (RT dose)."""
    frames = int(header.get("NumberOfFrames"))
    origin = _position(header.get("ImagePositionPatient"))
    orientation = _orientation(header.get("ImageOrientationPatient"))
    offsets = _floats(header.get("GridFrameOffsetVector"), frames)
    placed = origin is not None and orientation is not None and offsets is not None
    normal = np.cross(orientation[:3], orientation[3:]) if placed else np.zeros(3)  # type: ignore[index]
    return [
        _Image(
            path=path,
            sop_instance_uid=sop_uid,
            frame=index,
            position=tuple(float(v) for v in np.asarray(origin) + offsets[index] * normal)  # type: ignore[arg-type,index]
            if placed
            else None,
            orientation=orientation,
            pixel_spacing=_pixel_spacing(header),
            rows=int(header.get("Rows")),
            columns=int(header.get("Columns")),
            slice_spacing=None,
        )
        for index in range(frames)
    ]


# ------------------------------------------------------------------------------------- series and stacks


@dataclass
class _Stack:
    """Images that share one grid (orientation, size, pixel spacing), before sorting."""

    images: list[_Image]
    geometry_missing: bool = False


def _group_by_series(headers: list[_FileHeader]) -> dict[str, list[_FileHeader]]:
    groups: dict[str, list[_FileHeader]] = defaultdict(list)
    for header in sorted(headers, key=lambda h: str(h.path)):
        groups[header.series_instance_uid].append(header)
    return groups


def _same_grid(a: _Image, b: _Image) -> bool:
    return (
        (a.rows, a.columns) == (b.rows, b.columns)
        and all(abs(x - y) <= 1e-4 + 1e-3 * abs(y) for x, y in zip(a.pixel_spacing, b.pixel_spacing, strict=True))
        and a.orientation is not None
        and b.orientation is not None
        and max(abs(x - y) for x, y in zip(a.orientation, b.orientation, strict=True)) <= ORIENTATION_TOLERANCE
    )


def _split_into_stacks(group: list[_FileHeader]) -> list[_Stack]:
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


def _build_series(group: list[_FileHeader], damaged: dict[str, list[Path]]) -> list[SeriesInfo]:
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
    cosines = reference.orientation or _IDENTITY_ROWS
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
