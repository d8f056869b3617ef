"""Decode pixel data of a scanned series into a Volume: float32 (z, y, x) voxels with their geometry.

Where the scan recorded a slice's PixelLayout (a native little-endian single-frame image using every allocated
bit, located by pydicom during the scan) and the file's size and modification time are still those of the scan,
the stored values are read as they lie, with no second parse. Otherwise pydicom parses the file once and decodes
every transfer syntax (its native reader, or the pylibjpeg / pyjpegls plugins for compressed data). This module
only checks each file against the scan, inverts MONOCHROME1 slices where ``photometric.py`` says so, applies the
rescale (refusing a zero or non-finite one), fills one float32 array and checks that every voxel is finite. A stack
whose slices are not on a regular grid is resampled onto one (``regrid.py``) where allowed.
"""

from __future__ import annotations

import math
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.pixels import pixel_array
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from innereye_batch.dicom import headers
from innereye_batch.dicom.codecs import register_decoders
from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.mosaic import tiles_as_frames
from innereye_batch.dicom.photometric import PROJECTION_MODALITIES, invert_stored
from innereye_batch.dicom.pixel_data import stored_range_problem, transfer_syntax_of
from innereye_batch.dicom.regrid import Regridding
from innereye_batch.dicom.series import SeriesInfo, SliceRef
from innereye_batch.dicom.stacks import ORIENTATION_TOLERANCE
from innereye_batch.errors import SeriesError


@dataclass(frozen=True, eq=False)
class Volume:
    """A decoded series: voxels (z, y, x) float32 in modality units (e.g. HU), its grid, and its source."""

    array: np.ndarray
    geometry: Geometry
    """The grid of ``array``: the series' own, or the regular grid an irregular stack was resampled onto."""
    series: SeriesInfo
    inverted_monochrome1: bool = False
    """Some slices were MONOCHROME1 and inverted as SimpleITK does (see ``photometric.py``)."""
    regridding: Regridding | None = None
    """For a resampled stack: how to bring a label map back onto the source slices (``Regridding.to_source``)."""

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        """Source SOP Instance UIDs in slice order, for references from derived objects (DICOM-SEG)."""
        return self.series.sop_instance_uids


_LOAD_KEYWORDS = (
    "SOPInstanceUID",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "RescaleIntercept",
    "RescaleSlope",
    "ModalityLUTSequence",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
)
_LOAD_TAGS: list[int] = [Tag(keyword) for keyword in _LOAD_KEYWORDS]
"""The only top-level elements read from each file besides its pixel data (pydicom skips the others)."""
_NATIVE_LITTLE_ENDIAN = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
"""Transfer syntaxes whose pixel data are the stored values as little-endian integers, nothing to decode."""
_PIXEL_DATA = Tag("PixelData")
_UNDEFINED_LENGTH = 0xFFFFFFFF


def load_volume(series: SeriesInfo, *, workers: int | None = None, regrid_irregular: bool = False) -> Volume:
    """Decode every slice of ``series`` into float32 (z, y, x) modality values (rescale applied).

    ``workers`` threads decode files at once. By default an uncompressed series is read in this thread: a file
    read as laid out costs one read and one conversion, a re-parse holds the GIL, and threads measured no faster
    (bench/load_bench.py); a compressed one uses up to 4 threads. More threads can hide network storage latency.
    Slices whose PixelLayout still holds (same file size and mtime as at the scan) are read without pydicom;
    any other file is parsed again and checked against the scan (SOP Instance UID, image size, rescale).
    A stack whose slices are not on a regular orthogonal grid (``series.irregular``: gantry tilt, variable
    spacing) is resampled onto ``series.regrid_geometry``, when the scan was asked to (its problems then are not
    fatal) or ``regrid_irregular`` is set here; the Volume then carries the mapping back (``regridding``).
    Raises SeriesError for a series with fatal problems, a file that changed since the scan, a zero or
    non-finite rescale, pixel data that cannot be decoded or voxels that are not finite; the message names the
    file and the reason.
    """
    blocking = series.blocking_problems(regrid_irregular=regrid_irregular)
    if blocking:
        reasons = "; ".join(str(p) for p in blocking)
        raise SeriesError(series.series_instance_uid, f"{_stack_label(series)}cannot be loaded: {reasons}")
    register_decoders()  # codecs hook: our GDCM plugin for 12-bit JPEG Extended, in this process too
    output = np.empty(series.geometry.shape, dtype=np.float32)
    targets: dict[Path, list[tuple[int, SliceRef]]] = {}
    for z, ref in enumerate(series.slices):
        targets.setdefault(ref.path, []).append((z, ref))
    native = set(series.transfer_syntaxes) <= _NATIVE_LITTLE_ENDIAN
    deflated = DeflatedExplicitVRLittleEndian in series.transfer_syntaxes
    invert = series.inverts_monochrome1

    def decode(path: Path, slots: list[tuple[int, SliceRef]]) -> None:
        if not _read_as_laid_out(path, slots, output, invert):
            _decode_file(series, path, slots, output, native, deflated, invert)

    workers = workers or (1 if native else min(4, os.cpu_count() or 1))
    if workers <= 1 or len(targets) <= 2:
        for path, slots in targets.items():
            decode(path, slots)
    else:  # file reads and decoders in C release the GIL
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for done in [pool.submit(decode, path, slots) for path, slots in targets.items()]:
                done.result()
    _check_finite(series, output)
    if series.irregular and series.regrid_geometry is not None:
        positions = np.array([ref.position for ref in series.slices], dtype=np.float64)
        regridding = Regridding(source=series.geometry, positions=positions, target=series.regrid_geometry)
        return Volume(regridding.resample(output), series.regrid_geometry, series, invert, regridding)
    return Volume(array=output, geometry=series.geometry, series=series, inverted_monochrome1=invert)


def _check_finite(series: SeriesInfo, output: np.ndarray) -> None:
    """SeriesError naming the first slice that holds NaN or infinite voxels (float pixel data can)."""
    if np.isfinite(output.sum(dtype=np.float64)):  # a finite sum means every voxel is finite
        return
    bad = ~np.isfinite(output)
    if not bad.any():
        return
    z = int(np.argmax(bad.any(axis=(1, 2))))
    ref = series.slices[z]
    where = ref.path.name + (f" frame {ref.frame + 1}" if ref.frame is not None else "")
    raise SeriesError(
        series.series_instance_uid,
        f"{_stack_label(series)}{int(bad.sum())} voxel(s) are not finite (NaN or infinite), first in {where}",
    )


def _check_stored_range(uid: str, path: Path, header: _Header, frames: np.ndarray) -> None:
    """SeriesError when decoded values lie well outside what Bits Stored allows (``stored_range_problem``): a JPEG
    2000 stream of 16-bit values under BitsStored 12 decodes to values the rescale was never meant for."""
    bits = header.get("BitsStored")
    if bits and frames.size:
        signed = header.get("PixelRepresentation") == 1
        problem = stored_range_problem(int(frames.min()), int(frames.max()), int(bits), signed)
        if problem:
            raise SeriesError(uid, f"{path}: {problem}")


def _stack_label(series: SeriesInfo) -> str:
    return f"stack {series.stack} " if series.stack else ""


def _decode_file(
    series: SeriesInfo,
    path: Path,
    slots: list[tuple[int, SliceRef]],
    output: np.ndarray,
    native: bool,
    deflated: bool,
    invert: bool,
) -> None:
    """Decode one file with pydicom, write its frames into their slices of ``output``."""
    uid = series.series_instance_uid
    _check_regular(uid, path)
    try:
        found = _read_native_pixels(path) if native else None
        header, frames = found if found is not None else _read_pixels(path, deflated)
        header, frames = tiles_as_frames(series, slots[0][1], header, frames)  # mosaic hook: tiles become frames
        _check_unchanged(series, path, slots, header)
        if not native:  # a codec returns what its stream holds; native values are masked to Bits Stored
            _check_stored_range(uid, path, header, frames)
    except SeriesError:
        raise
    except Exception as error:
        raise SeriesError(uid, f"{path}: cannot decode pixel data: {type(error).__name__}: {error}") from error
    rows, columns = series.geometry.shape[1:]
    frames = frames.reshape(-1, rows, columns)
    if frames.shape[0] <= max((ref.frame or 0) for _, ref in slots):
        raise SeriesError(uid, f"{path}: has {frames.shape[0]} frame(s), fewer than the scan found")
    monochrome1 = invert and str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    bits = int(header.get("BitsStored") or 0) or None
    for z, ref in slots:
        slope, intercept = _rescale(header, ref.frame)
        if not (math.isfinite(slope) and slope != 0 and math.isfinite(intercept)):
            raise SeriesError(uid, f"{path}: unusable rescale (RescaleSlope {slope:g}, RescaleIntercept {intercept:g})")
        stored = frames[ref.frame or 0]
        _write_rescaled(invert_stored(stored, bits) if monochrome1 else stored, slope, intercept, output[z])


def _read_as_laid_out(path: Path, slots: list[tuple[int, SliceRef]], output: np.ndarray, invert: bool) -> bool:
    """Read a single-frame file's stored values where the scan found them, if the file is as it was then.

    False (nothing written) where the slice has no PixelLayout, or the file's size or modification time
    differ from the scan's, or it cannot be read whole: the general path then parses it and says what is wrong.
    """
    if len(slots) != 1:
        return False
    z, ref = slots[0]
    layout = ref.pixel
    if layout is None or ref.frame is not None or (layout.rows, layout.columns) != output.shape[1:]:
        return False
    stored = np.empty((layout.rows, layout.columns), dtype=layout.dtype)
    try:  # never blocks: a path that became a FIFO since the scan fails the size check below
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb", buffering=0) as fp:
            status = os.fstat(fp.fileno())  # of the file opened, not of whatever the path names later
            recorded = (layout.file_size, layout.mtime_ns, layout.ctime_ns)
            if (status.st_size, status.st_mtime_ns, status.st_ctime_ns) != recorded:
                return False
            fp.seek(layout.offset)
            if fp.readinto(stored.data) != stored.nbytes:
                return False
    except OSError:
        return False
    if invert and ref.monochrome1:
        stored = invert_stored(stored, layout.bits_allocated)
    _write_rescaled(stored, layout.rescale_slope, layout.rescale_intercept, output[z])
    return True


def _check_regular(uid: str, path: Path) -> None:
    """SeriesError unless ``path`` is a regular file: a FIFO put in a slice's place since the scan would block
    the decoder that opens it forever, a device would never end."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise SeriesError(uid, f"{path}: cannot be read since the scan ({error.strerror or error})") from error
    if not stat.S_ISREG(mode):
        raise SeriesError(uid, f"{path}: no longer a regular file (a pipe, socket or device) since the scan")


def _write_rescaled(stored: np.ndarray, slope: float, intercept: float, out: np.ndarray) -> None:
    """``stored * slope + intercept`` into the float32 slice ``out``, computed in float64 unless exact in float32."""
    if slope == 1.0 and float(intercept).is_integer() and stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2:
        np.add(stored, np.float32(intercept), out=out, dtype=np.float32)  # exact in float32
    else:
        out[...] = stored.astype(np.float64) * slope + intercept


_Header = dict[str, Any]
"""A file's top-level elements in ``_LOAD_TAGS`` by keyword, each value converted by pydicom once."""


def _header(dataset: Dataset) -> _Header:
    return {element.keyword: element.value for element in dataset}


def _read_native_pixels(path: Path) -> tuple[_Header, np.ndarray] | None:
    """Header and stored values of an uncompressed little-endian file, each byte read once; None where
    the file is encoded otherwise or its pixel data element is absent, encapsulated or short (the general
    path then lets pydicom say what is wrong).

    pydicom parses the header and locates the pixel data element (value skipped, ``defer_size=0``). When
    every allocated bit is stored, the values are read straight into an array of the integer type that
    BitsAllocated and PixelRepresentation give, as pydicom's native decoder reinterprets them; otherwise
    pydicom's ``pixel_array`` decodes the bytes (masking unused high bits, extending signs).
    """
    with open(path, "rb") as fp:
        dataset = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_LOAD_TAGS, force=True)
        implicit, little = dataset.original_encoding
        syntax = transfer_syntax_of(dataset)
        if syntax not in _NATIVE_LITTLE_ENDIAN or little is False:
            return None
        element = next(data_element_generator(fp, bool(implicit), True, defer_size=0), None)
        if not isinstance(element, RawDataElement) or element.tag != _PIXEL_DATA:
            return None
        header = _header(dataset)
        dtype = _stored_dtype(header)
        count = int(header.get("Rows") or 0) * int(header.get("Columns") or 0) * int(header.get("NumberOfFrames") or 1)
        needed = count * (dtype.itemsize if dtype is not None else 0)
        if element.length == _UNDEFINED_LENGTH or element.length < needed:
            return None
        fp.seek(element.value_tell)
        if dtype is None:
            dataset.PixelData = fp.read(element.length)
            dataset.file_meta.TransferSyntaxUID = UID(syntax)
            return header, pixel_array(dataset)
        values = np.empty(count, dtype=dtype)
        if fp.readinto(values.data) != values.nbytes:
            return None
    return header, values


def _stored_dtype(header: _Header) -> np.dtype | None:
    """Little-endian integer type of one stored value, when it uses every allocated bit; else None."""
    allocated, stored = header.get("BitsAllocated"), header.get("BitsStored")
    representation = header.get("PixelRepresentation")
    if allocated not in (8, 16, 32) or stored != allocated or representation not in (0, 1):
        return None
    if int(header.get("SamplesPerPixel") or 1) != 1 or not header.get("Rows") or not header.get("Columns"):
        return None
    return np.dtype(f"<{'i' if representation else 'u'}{allocated // 8}")


def _read_pixels(path: Path, deflated: bool) -> tuple[_Header, np.ndarray]:
    """The file's header (Image Pixel module and the elements in ``_LOAD_TAGS``) and its decoded frames."""
    if not deflated:
        dataset = Dataset()
        try:  # pydicom reads the header up to the pixel data, then decodes straight from the file
            frames = pixel_array(path, ds_out=dataset, specific_tags=_LOAD_TAGS)
            return _header(dataset), frames
        except AttributeError:  # no file meta (or no pixel data): read the whole dataset below
            pass
    # A deflated dataset is inflated in memory first; a file without file meta gets the syntax pydicom read it in.
    dataset = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in dataset.file_meta:
        dataset.file_meta.TransferSyntaxUID = UID(transfer_syntax_of(dataset))
    return _header(dataset), pixel_array(dataset)


def _check_unchanged(series: SeriesInfo, path: Path, slots: list[tuple[int, SliceRef]], header: _Header) -> None:
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
    if header.get("ModalityLUTSequence"):  # a projection image's (the scan refuses a cross-sectional one's)
        raise SeriesError(uid, f"{path}: a Modality LUT Sequence maps the stored values, which a volume does not apply")
    ref = slots[0][1]
    if len(slots) == 1 and ref.frame is None and series.mosaic_size is None:  # a single-frame slice
        # (a projection image without one was given the origin by the scan: only a position the file has counts)
        position, _ = headers.position(header.get("ImagePositionPatient"))  # as the scan read it
        if position is not None and max(abs(a - b) for a, b in zip(position, ref.position, strict=True)) > _MOVED_MM:
            raise SeriesError(  # rewritten in place (a compressed file records no size or mtime at the scan)
                uid,
                f"{path}: ImagePositionPatient changed since the scan ({_mm(ref.position)} -> {_mm(position)}): "
                "scan the folder again",
            )
        _check_grid_unchanged(series, path, header)
    elif ref.file_status is not None and _status(path) != ref.file_status:
        # frames of a multi-frame file, tiles of a mosaic: placed where the scan found them, never read again
        raise SeriesError(uid, f"{path}: changed since the scan (its frames were placed as it was then): scan again")


def _status(path: Path) -> tuple[int, int, int]:
    status = os.stat(path)
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns


def _check_grid_unchanged(series: SeriesInfo, path: Path, header: _Header) -> None:
    """A single-frame slice's orientation and pixel spacing, read again, still those of the series' grid (within
    twice the tolerances by which the scan made its slices one stack: the scan compares each slice with the first
    of its grid, a split stack takes its geometry from another): a file rewritten after the scan with another
    PixelSpacing (a corrected re-send) would otherwise be placed on the old grid. Values the file lacks or the
    scan could not use are not compared (a projection image's fallbacks)."""
    geometry, uid = series.geometry, series.series_instance_uid
    orientation, _ = headers.orientation(header.get("ImageOrientationPatient"))
    cosines = np.concatenate([geometry.direction_matrix[:, 0], geometry.direction_matrix[:, 1]])
    if orientation is not None and float(np.abs(np.subtract(orientation, cosines)).max()) > 2 * ORIENTATION_TOLERANCE:
        raise SeriesError(uid, f"{path}: ImageOrientationPatient changed since the scan: scan the folder again")
    projection = series.modality.upper() in PROJECTION_MODALITIES
    spacing, source, issue = headers.pixel_spacing(None, header, projection)  # as the scan reads it
    if (
        source == "PixelSpacing"
        and issue is None
        and any(
            abs(found - scanned) > 2 * (1e-4 + 1e-3 * scanned)
            for found, scanned in zip(spacing, geometry.spacing[1:], strict=True)
        )
    ):
        raise SeriesError(
            uid,
            f"{path}: PixelSpacing changed since the scan ({geometry.spacing[1]:.4g}\\{geometry.spacing[2]:.4g} -> "
            f"{spacing[0]:.4g}\\{spacing[1]:.4g} mm): scan the folder again",
        )


_MOVED_MM = 1e-3
"""How far a slice's ImagePositionPatient may differ from the scan's (the same text, parsed again: none)."""


def _mm(position: tuple[float, float, float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in position) + ") mm"


def _rescale(source: _Header, frame: int | None) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept: per frame for enhanced images, else shared, else top-level, else (1, 0)."""
    found: _Header | Dataset = source
    for groups in _frame_groups(source, frame):
        items = groups.get("PixelValueTransformationSequence")
        if items and "RescaleSlope" in items[0]:
            found = items[0]
            break
    return _number(found.get("RescaleSlope"), 1.0), _number(found.get("RescaleIntercept"), 0.0)


def _number(value: Any, default: float) -> float:
    """A DS value as a float; ``default`` when absent; NaN when not a number (refused by the caller)."""
    if value in (None, ""):
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _frame_groups(source: _Header, frame: int | None) -> list[Dataset]:
    groups = []
    per_frame = source.get("PerFrameFunctionalGroupsSequence")
    if frame is not None and per_frame and frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = source.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    return groups
