"""Decode pixel data of a scanned series into a Volume: float32 (z, y, x) voxels with their geometry."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.headers import RawHeader, pixel_element, read_header
from innereye_batch.dicom.series import SeriesInfo, SliceRef
from innereye_batch.errors import SeriesError


@dataclass(frozen=True, eq=False)
class Volume:
    """A decoded series: voxels (z, y, x) float32 in modality units (e.g. HU), its grid, and its source."""

    array: np.ndarray
    geometry: Geometry
    series: SeriesInfo

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        """Source SOP Instance UIDs in slice order, for references from derived objects (DICOM-SEG)."""
        return self.series.sop_instance_uids


_NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
_INTEGER_TYPES = {(8, 0): np.uint8, (8, 1): np.int8, (16, 0): np.uint16, (16, 1): np.int16}
_INTEGER_TYPES |= {(32, 0): np.uint32, (32, 1): np.int32}


def load_volume(series: SeriesInfo, *, workers: int | None = None) -> Volume:
    """Decode every slice of ``series`` into float32 (z, y, x) modality values (rescale applied).

    Raises SeriesError for a series with fatal problems, a file that changed since the scan, or pixel data
    that cannot be decoded; the message names the file and the reason.
    """
    if not series.is_loadable:
        reasons = "; ".join(str(p) for p in series.fatal_problems)
        raise SeriesError(series.series_instance_uid, f"{_stack_label(series)}cannot be loaded: {reasons}")
    output = np.empty(series.geometry.shape, dtype=np.float32)
    targets: dict[Path, list[tuple[int, SliceRef]]] = {}
    for z, ref in enumerate(series.slices):
        targets.setdefault(ref.path, []).append((z, ref))
    jobs = list(targets.items())
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(jobs) <= 1:
        for path, slots in jobs:
            _decode_file(series, path, slots, output)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(_decode_file, series, path, slots, output) for path, slots in jobs]:
                future.result()
    return Volume(array=output, geometry=series.geometry, series=series)


def _stack_label(series: SeriesInfo) -> str:
    return f"stack {series.stack} " if series.stack else ""


def _decode_file(series: SeriesInfo, path: Path, slots: list[tuple[int, SliceRef]], output: np.ndarray) -> None:
    """Decode one file and write its frames into their slices of ``output``."""
    uid = series.series_instance_uid
    try:
        with open(path, "rb") as fp:
            header = read_header(fp, os.fstat(fp.fileno()).st_size)
            _check_unchanged(series, path, slots, header)
            frames = _native_frames(fp, header)
            if frames is None:
                fp.seek(0)
                frames = np.asarray(pydicom.dcmread(fp).pixel_array)
    except SeriesError:
        raise
    except Exception as error:
        raise SeriesError(uid, f"{path}: cannot decode pixel data: {type(error).__name__}: {error}") from error
    rows, columns = series.geometry.shape[1:]
    frames = frames.reshape(-1, rows, columns)
    if frames.shape[0] <= max((ref.frame or 0) for _, ref in slots):
        raise SeriesError(uid, f"{path}: has {frames.shape[0]} frame(s), fewer than the scan found")
    for z, ref in slots:
        slope, intercept = _rescale(header, ref.frame)
        stored = frames[ref.frame or 0]
        if slope == 1.0 and float(intercept).is_integer() and stored.dtype.itemsize <= 2:
            np.add(stored, np.float32(intercept), out=output[z], dtype=np.float32)  # exact in float32
        else:
            output[z] = stored.astype(np.float64) * slope + intercept


def _check_unchanged(series: SeriesInfo, path: Path, slots: list[tuple[int, SliceRef]], header: RawHeader) -> None:
    uid = series.series_instance_uid
    expected, found = slots[0][1].sop_instance_uid, str(header.get("SOPInstanceUID", ""))
    if found != expected:
        raise SeriesError(uid, f"{path}: SOPInstanceUID changed since the scan ({expected} -> {found})")
    _, rows, columns = series.geometry.shape
    size = (int(header.get("Rows", 0)), int(header.get("Columns", 0)))
    if size != (rows, columns):
        raise SeriesError(uid, f"{path}: image size changed since the scan ({rows}x{columns} -> {size[0]}x{size[1]})")
    if int(header.get("SamplesPerPixel", 1)) != 1:
        raise SeriesError(uid, f"{path}: colour images are not supported")


def _native_frames(fp: BinaryIO, header: RawHeader) -> np.ndarray | None:
    """Stored values (frames, rows, columns) read straight from an uncompressed little-endian file, or None."""
    allocated = int(header.get("BitsAllocated", 0))
    stored = int(header.get("BitsStored", allocated))
    signed = int(header.get("PixelRepresentation", 0))
    dtype = _INTEGER_TYPES.get((allocated, signed))
    if (
        dtype is None
        or header.transfer_syntax not in _NATIVE_LITTLE_ENDIAN
        or header.pixel_offset is None
        or int(header.get("HighBit", stored - 1)) != stored - 1
    ):
        return None
    start, length = pixel_element(fp, header)
    count = int(header.get("Rows")) * int(header.get("Columns")) * int(header.get("NumberOfFrames", 1))
    nbytes = count * np.dtype(dtype).itemsize
    if length == 0xFFFFFFFF or length < nbytes:
        raise ValueError(f"pixel data holds {length} bytes, {nbytes} expected")
    fp.seek(start)
    values = np.frombuffer(fp.read(nbytes), dtype=np.dtype(dtype).newbyteorder("<"), count=count)
    if stored < allocated:  # clear unused high bits, extending the sign of signed values
        shift = allocated - stored
        values = (values << shift) >> shift if signed else values & ((1 << stored) - 1)
    return values


def _rescale(source: RawHeader, frame: int | None) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept: per frame for enhanced images, else shared, else top-level, else (1, 0)."""
    found: RawHeader | Dataset = source
    for groups in _frame_groups(source, frame):
        items = groups.get("PixelValueTransformationSequence")
        if items and "RescaleSlope" in items[0]:
            found = items[0]
            break
    slope, intercept = found.get("RescaleSlope"), found.get("RescaleIntercept")
    return (
        float(slope) if slope not in (None, "") else 1.0,
        float(intercept) if intercept not in (None, "") else 0.0,
    )


def _frame_groups(source: RawHeader, frame: int | None) -> list[Dataset]:
    groups = []
    per_frame = source.get("PerFrameFunctionalGroupsSequence")
    if frame is not None and per_frame and frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = source.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    return groups
