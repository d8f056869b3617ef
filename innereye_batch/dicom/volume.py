"""Decode pixel data of a scanned series into a Volume: float32 (z, y, x) voxels with their geometry.

pydicom decodes every transfer syntax (its native reader, or the pylibjpeg / pyjpegls plugins for compressed
data); this module only checks each file against the scan, applies the rescale and fills one float32 array.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.scan import transfer_syntax_of
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


_LOAD_TAGS: list[int] = [
    Tag(keyword)
    for keyword in (
        "SOPInstanceUID",
        "RescaleSlope",
        "RescaleIntercept",
        "SharedFunctionalGroupsSequence",
        "PerFrameFunctionalGroupsSequence",
    )
]
"""Read with the pixel data besides the Image Pixel module (group 0028), which pydicom always returns."""


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
    deflated = DeflatedExplicitVRLittleEndian in series.transfer_syntaxes
    first = _decode_file(series, *jobs[0], output, deflated, view_only=False)
    # Where the first file uses every allocated bit, pydicom may hand out read-only views of the file's bytes
    # (no copy); with unused high bits it must copy to clear them (and would log a warning for each view).
    view_only = first.get("BitsStored") == first.get("BitsAllocated")
    workers = workers or min(4, os.cpu_count() or 1)
    if workers <= 1 or len(jobs) <= 2:
        for path, slots in jobs[1:]:
            _decode_file(series, path, slots, output, deflated, view_only)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(_decode_file, series, path, slots, output, deflated, view_only) for path, slots in jobs[1:]
            ]
            for future in futures:
                future.result()
    return Volume(array=output, geometry=series.geometry, series=series)


def _stack_label(series: SeriesInfo) -> str:
    return f"stack {series.stack} " if series.stack else ""


def _decode_file(
    series: SeriesInfo,
    path: Path,
    slots: list[tuple[int, SliceRef]],
    output: np.ndarray,
    deflated: bool,
    view_only: bool,
) -> Dataset:
    """Decode one file with pydicom, write its frames into their slices of ``output``; return its header."""
    uid = series.series_instance_uid
    try:
        header, frames = _read_pixels(path, deflated, view_only)
        _check_unchanged(series, path, slots, header)
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
    return header


def _read_pixels(path: Path, deflated: bool, view_only: bool) -> tuple[Dataset, np.ndarray]:
    """The file's header (Image Pixel module and the elements in ``_LOAD_TAGS``) and its decoded frames."""
    if not deflated:
        header = Dataset()
        try:  # pydicom reads the header up to the pixel data, then decodes straight from the file
            return header, pixel_array(path, ds_out=header, specific_tags=_LOAD_TAGS, view_only=view_only)
        except AttributeError:  # no file meta (or no pixel data): read the whole dataset below
            pass
    # A deflated dataset is inflated in memory first; a file without file meta gets the syntax pydicom read it in.
    dataset = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in dataset.file_meta:
        dataset.file_meta.TransferSyntaxUID = UID(transfer_syntax_of(dataset))
    return dataset, pixel_array(dataset)


def _check_unchanged(series: SeriesInfo, path: Path, slots: list[tuple[int, SliceRef]], header: Dataset) -> None:
    uid = series.series_instance_uid
    expected, found = slots[0][1].sop_instance_uid, str(header.get("SOPInstanceUID", ""))
    if found != expected:
        raise SeriesError(uid, f"{path}: SOPInstanceUID changed since the scan ({expected} -> {found})")
    _, rows, columns = series.geometry.shape
    size = (int(header.get("Rows") or 0), int(header.get("Columns") or 0))
    if size != (rows, columns):
        raise SeriesError(uid, f"{path}: image size changed since the scan ({rows}x{columns} -> {size[0]}x{size[1]})")
    if int(header.get("SamplesPerPixel") or 1) != 1:
        raise SeriesError(uid, f"{path}: colour images are not supported")


def _rescale(source: Dataset, frame: int | None) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept: per frame for enhanced images, else shared, else top-level, else (1, 0)."""
    found: Dataset = source
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


def _frame_groups(source: Dataset, frame: int | None) -> list[Dataset]:
    groups = []
    per_frame = source.get("PerFrameFunctionalGroupsSequence")
    if frame is not None and per_frame and frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = source.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    return groups
