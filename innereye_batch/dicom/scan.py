"""Walk a folder tree, read every file's DICOM header with pydicom (in parallel), and hand images to stacks.py.

Only headers are read: the pixel data element is located and checked against the file (pixel_data.py), never
decoded. Every file either lands in exactly one series (stack) or in the skipped list with a reason; the scan
never raises for a file.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
)

from innereye_batch.dicom.pixel_data import (
    NATIVE_LITTLE_ENDIAN,
    PIXEL_DATA_TAGS,
    inflated_pixel_problem,
    pixel_data_problem,
    pixel_layout,
    transfer_syntax_of,
)
from innereye_batch.dicom.series import PixelLayout, SeriesInfo, SkippedFile
from innereye_batch.dicom.stacks import IDENTITY_ROWS, FileHeader, ImageHeader, build_series

_BARE_DICOM_STARTS = (b"\x08\x00", b"\x02\x00", b"\x00\x08", b"\x00\x02")
"""First bytes of a file without preamble that starts with group 0008 or 0002 (either byte order)."""
_PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG", "IO", "PX", "RG"})
_NOT_IMAGES = {
    "1.2.840.10008.1.3.10": "DICOMDIR (media directory, not an image)",
    "1.2.840.10008.5.1.4.1.1.66.4": "segmentation object (DICOM-SEG), not an image series",
    "1.2.840.10008.5.1.4.1.1.66.5": "surface segmentation object, not an image series",
}
HEADER_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "SeriesDescription",
    "SpacingBetweenSlices",
    "ImagerPixelSpacing",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "FrameOfReferenceUID",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "PixelSpacing",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "GridFrameOffsetVector",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
)
"""The top-level elements a scan reads (pydicom skips every other one; Specific Character Set is always read)."""
_HEADER_TAGS = [Tag(keyword) for keyword in HEADER_KEYWORDS]


@dataclass(frozen=True)
class ScanResult:
    """Every series (stack) found under a folder, and every file that was not used."""

    series: tuple[SeriesInfo, ...]
    """Sorted by study UID, series number and key."""
    skipped: tuple[SkippedFile, ...]


@dataclass(frozen=True)
class _Unreadable:
    """A file whose header belongs to a series but whose pixel data is damaged."""

    skipped: SkippedFile
    series_instance_uid: str


def scan_tree(root: Path, *, workers: int | None = None) -> ScanResult:
    """Find every image series under ``root`` from headers only; never raises for a bad file."""
    unreadable_folders: list[SkippedFile] = []
    paths = list(_walk(Path(root), unreadable_folders))
    workers = workers or min(4, os.cpu_count() or 1)  # pydicom holds the GIL: threads only overlap file I/O
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every odd value; problems are reported below
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outcomes = list(pool.map(_read_header_safely, paths, chunksize=16))
    headers = [o for o in outcomes if isinstance(o, FileHeader)]
    skipped = [o for o in outcomes if isinstance(o, SkippedFile)] + unreadable_folders
    damaged: dict[str, list[Path]] = defaultdict(list)
    for o in outcomes:
        if isinstance(o, _Unreadable):
            skipped.append(o.skipped)
            damaged[o.series_instance_uid].append(o.skipped.path)
    series = build_series(headers, damaged)
    series.sort(key=lambda s: (s.study_instance_uid, s.series_number is None, s.series_number or 0, s.key))
    skipped.sort(key=lambda s: str(s.path))
    return ScanResult(series=tuple(series), skipped=tuple(skipped))


def _walk(root: Path, unreadable: list[SkippedFile]) -> Iterator[Path]:
    """Every file under ``root`` (symbolic links to folders not followed), sorted per folder, depth first.

    Iterative, so any depth of folders works (``os.walk`` recurses on Python < 3.12); a folder that cannot be
    listed is recorded in ``unreadable`` with the reason instead of being passed over in silence.
    """
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                listed = sorted(entries, key=lambda e: e.name)
        except OSError as error:
            unreadable.append(SkippedFile(folder, f"folder cannot be read: {type(error).__name__}: {error.strerror}"))
            continue
        subfolders = []
        for entry in listed:
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
                linked_folder = not is_folder and entry.is_symlink() and entry.is_dir()
            except OSError:
                is_folder = linked_folder = False
            if is_folder:
                subfolders.append(Path(entry.path))
            elif linked_folder:
                unreadable.append(SkippedFile(Path(entry.path), "symbolic link to a folder: not followed"))
            else:
                yield Path(entry.path)
        pending.extend(reversed(subfolders))


def _read_header_safely(path: Path) -> FileHeader | SkippedFile | _Unreadable:
    try:
        return _read_header(path)
    except Exception as error:  # any malformed file is skipped, never fatal to the scan
        return SkippedFile(path, f"unreadable DICOM header: {type(error).__name__}: {error}")


_Fields = dict[str, Any]
"""Top-level header values by keyword, converted by pydicom; absent and empty elements left out."""


def _fields(ds: Dataset) -> _Fields:
    """Every element pydicom read (only the wanted tags), each converted once."""
    return {element.keyword: element.value for element in ds if element.value is not None and element.value != ""}


def _value(source: Dataset | _Fields | None, keyword: str) -> Any:
    """The element's value, or None when it is absent or empty."""
    value = source.get(keyword) if source is not None else None
    return None if value is None or value == "" else value


def _read_header(path: Path) -> FileHeader | SkippedFile | _Unreadable:
    status = path.stat()  # before reading: a later change shows as a different size or mtime
    size = status.st_size
    if size == 0:
        return SkippedFile(path, "empty file (0 bytes)")
    with open(path, "rb") as fp:
        start = fp.read(132)
        bare = start[128:132] != b"DICM"
        if bare and start[:2] not in _BARE_DICOM_STARTS:
            return SkippedFile(path, "not a DICOM file (no 'DICM' prefix and no DICOM tags at its start)")
        fp.seek(0)
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=bare)
        except struct.error:  # pydicom could not unpack an element's tag, VR or length: the file ends there
            return SkippedFile(path, "truncated file: ends inside a data element header")
        syntax = transfer_syntax_of(ds)
        fields = _fields(ds)
        meta = getattr(ds, "file_meta", None)
        sop_class = str(fields.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
        if sop_class in _NOT_IMAGES:
            return SkippedFile(path, _NOT_IMAGES[sop_class])
        pixel_value: tuple[int, int] | None = None
        if syntax == DeflatedExplicitVRLittleEndian:  # inflated in memory: read it again, pixel data included
            fp.seek(0)
            ds = pydicom.dcmread(fp, specific_tags=_HEADER_TAGS + PIXEL_DATA_TAGS, force=bare)
            fields = _fields(ds)
            pixel_problem = inflated_pixel_problem(ds)
        else:
            pixel_problem, pixel_value = pixel_data_problem(fp, ds, size)
    if pixel_problem is not None:
        fatal_to_series, reason = pixel_problem
        if not fatal_to_series:
            reason = f"{reason} ({UID(sop_class).name or 'unknown SOP class'})"
        series_uid = str(fields.get("SeriesInstanceUID", ""))
        if fatal_to_series and series_uid:
            return _Unreadable(SkippedFile(path, reason), series_uid)
        return SkippedFile(path, reason)
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
        if not fields.get(keyword):
            return SkippedFile(path, f"missing {keyword}")
    samples = int(fields.get("SamplesPerPixel", 1))
    photometric = str(fields.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return SkippedFile(
            path, f"colour image ({photometric}, {samples} samples per pixel): only greyscale is supported"
        )
    if int(fields.get("BitsAllocated", 16)) == 1:
        return SkippedFile(path, "1-bit (binary) image: not an image series")
    native = syntax in NATIVE_LITTLE_ENDIAN and ds.original_encoding[1] is not False
    layout = pixel_layout(fields, pixel_value, status) if native and pixel_value is not None else None
    return _header_from_fields(path, fields, sop_class, syntax, layout)


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


def _first_item(source: Dataset | _Fields | None, sequence: str) -> Dataset | None:
    items = source.get(sequence) if source is not None else None
    return items[0] if items else None


def _header_from_fields(
    path: Path, header: _Fields, sop_class: str, syntax: str, layout: PixelLayout | None
) -> FileHeader:
    modality = str(_value(header, "Modality") or "")
    size = (int(header["Rows"]), int(header["Columns"]))
    frames = int(_value(header, "NumberOfFrames") or 1)
    sop_uid = str(header["SOPInstanceUID"])
    per_frame = _value(header, "PerFrameFunctionalGroupsSequence")
    if per_frame or frames > 1:
        images = (
            _enhanced_images(path, sop_uid, header, size)
            if per_frame
            else _legacy_multiframe_images(path, sop_uid, header, size, frames)
        )
        frame_geometry_missing = any(im.position is None or im.orientation is None for im in images)
        if frame_geometry_missing:
            images = [
                ImageHeader(path, sop_uid, i, (0.0, 0.0, float(i)), IDENTITY_ROWS, im.pixel_spacing, *size, 1.0)
                for i, im in enumerate(images)
            ]
    else:
        images = [
            ImageHeader(
                path=path,
                sop_instance_uid=sop_uid,
                frame=None,
                position=_position(_value(header, "ImagePositionPatient")),
                orientation=_orientation(_value(header, "ImageOrientationPatient")),
                pixel_spacing=_pixel_spacing(header),
                rows=size[0],
                columns=size[1],
                slice_spacing=_single_float(_value(header, "SpacingBetweenSlices")),
                pixel=layout,
            )
        ]
        frame_geometry_missing = False
    is_2d = len(images) == 1 and (
        modality in _PROJECTION_MODALITIES or images[0].position is None or images[0].orientation is None
    )
    number = _value(header, "SeriesNumber")
    return FileHeader(
        path=path,
        series_instance_uid=str(header["SeriesInstanceUID"]),
        study_instance_uid=str(_value(header, "StudyInstanceUID") or ""),
        frame_of_reference_uid=str(_value(header, "FrameOfReferenceUID") or ""),
        modality=modality,
        sop_class_uid=sop_class,
        series_description=str(_value(header, "SeriesDescription") or ""),
        series_number=int(number) if number is not None else None,
        transfer_syntax=syntax,
        images=tuple(images),
        is_2d=is_2d,
        frame_geometry_missing=frame_geometry_missing,
    )


def _pixel_spacing(source: Dataset | _Fields | None) -> tuple[float, float]:
    """PixelSpacing, else ImagerPixelSpacing, else 1 mm: (between rows, between columns)."""
    if source is None:
        return (1.0, 1.0)
    spacing = _floats(_value(source, "PixelSpacing"), 2) or _floats(_value(source, "ImagerPixelSpacing"), 2)
    return (spacing[0], spacing[1]) if spacing and min(spacing) > 0 else (1.0, 1.0)


def _single_float(value: Any) -> float | None:
    number = _floats([value], 1) if value is not None else None
    return number[0] if number else None


def _enhanced_images(path: Path, sop_uid: str, header: _Fields, size: tuple[int, int]) -> list[ImageHeader]:
    """One image per frame of an enhanced multi-frame file, from its per-frame and shared groups."""
    shared = _first_item(header, "SharedFunctionalGroupsSequence")
    images = []
    for index, groups in enumerate(header["PerFrameFunctionalGroupsSequence"]):
        plane = _first_item(groups, "PlanePositionSequence") or _first_item(shared, "PlanePositionSequence")
        orientation = _first_item(groups, "PlaneOrientationSequence") or _first_item(shared, "PlaneOrientationSequence")
        measures = _first_item(groups, "PixelMeasuresSequence") or _first_item(shared, "PixelMeasuresSequence")
        images.append(
            ImageHeader(
                path=path,
                sop_instance_uid=sop_uid,
                frame=index,
                position=_position(_value(plane, "ImagePositionPatient")),
                orientation=_orientation(_value(orientation, "ImageOrientationPatient")),
                pixel_spacing=_pixel_spacing(measures),
                rows=size[0],
                columns=size[1],
                slice_spacing=_single_float(_value(measures, "SpacingBetweenSlices")),
            )
        )
    return images


def _legacy_multiframe_images(
    path: Path, sop_uid: str, header: _Fields, size: tuple[int, int], frames: int
) -> list[ImageHeader]:
    """Frames of a multi-frame file without functional groups, placed by GridFrameOffsetVector (RT dose)."""
    origin = _position(_value(header, "ImagePositionPatient"))
    orientation = _orientation(_value(header, "ImageOrientationPatient"))
    offsets = _floats(_value(header, "GridFrameOffsetVector"), frames)
    spacing = _pixel_spacing(header)
    positions: list[tuple[float, float, float] | None] = [None] * frames
    if origin is not None and orientation is not None and offsets is not None:
        normal = np.cross(orientation[:3], orientation[3:])
        for index, offset in enumerate(offsets):
            x, y, z = (float(v) for v in np.asarray(origin) + offset * normal)
            positions[index] = (x, y, z)
    return [
        ImageHeader(path, sop_uid, index, position, orientation, spacing, size[0], size[1], None)
        for index, position in enumerate(positions)
    ]
