"""The Pixel Data element of a file, checked without decoding it: present, whole, and where it lies.

pydicom locates the element (``data_element_generator`` with ``defer_size=0`` reports its value's position and
declared length); this module compares that with the file and with what the header announces, and records the
layout of native little-endian values so that the loader can read them without parsing the header again.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.filereader import data_element_generator
from pydicom.pixels.utils import get_expected_length
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from innereye_batch.dicom.series import PixelLayout

PIXEL_DATA_TAGS = [Tag("PixelData"), Tag("FloatPixelData"), Tag("DoubleFloatPixelData")]
NATIVE_LITTLE_ENDIAN = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


def transfer_syntax_of(ds: Dataset) -> str:
    """The file's transfer syntax, or the one its encoding implies when it has no file meta."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if syntax:
        return syntax
    implicit, little = ds.original_encoding
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian


_PixelProblem = tuple[bool, str]
"""Whether the damage concerns the file's series (not only the file), and the reason."""
_PixelCheck = tuple[_PixelProblem | None, tuple[int, int] | None]
"""The problem (None when fine) and, for a whole Pixel Data element of defined length, its value's offset and
length in the file."""


def pixel_data_problem(fp: BinaryIO, ds: Dataset, size: int, fields: Mapping[Any, Any]) -> _PixelCheck:
    """Check, without reading it, that the pixel data element after the header is present and whole.

    ``fp`` is where ``dcmread(stop_before_pixels=True)`` left it: at the pixel data element, or at the end of
    a file without one. ``fields`` are the header's values already converted (Rows, Columns, BitsAllocated...).
    Where the element is fine and native, also says where pydicom located its value.
    """
    implicit, little = ds.original_encoding
    element_start = fp.tell()
    try:  # defer_size=0: pydicom skips the value and reports its position and declared length
        element = next(data_element_generator(fp, bool(implicit), little is not False, defer_size=0), None)
    except EOFError:
        return (True, "truncated file: compressed pixel data has no end (sequence delimiter missing)"), None
    except Exception:  # struct.error: the element header itself is cut
        return (True, "truncated file: ends inside the pixel data element"), None
    if element is None:
        if element_start < size:
            return (True, "truncated file: ends inside the pixel data element"), None
        if element_start > size or _last_value_cut(ds):  # pydicom stops silently where a value runs past the end
            return (True, "truncated file: ends inside its header"), None
        return (False, "no pixel data"), None
    if not isinstance(element, RawDataElement) or element.tag not in PIXEL_DATA_TAGS:
        return (False, "no pixel data"), None
    if element.length == 0xFFFFFFFF:
        return _encapsulated_problem(fp, element.value_tell, "<" if little is not False else ">", fields), None
    start, length = element.value_tell, element.length
    if start + length > size:
        return (True, f"truncated file: pixel data needs {length} bytes, only {size - start} present"), None
    problem = _length_problem(ds, length, fields)
    return problem, (start, length) if problem is None and element.tag == PIXEL_DATA_TAGS[0] else None


def _last_value_cut(ds: Dataset) -> bool:
    """True when an element pydicom read (still raw) holds fewer bytes than its declared length."""
    for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset would convert every element)
        raw = ds.get_item(tag)
        if not isinstance(raw, RawDataElement) or not isinstance(raw.value, bytes) or raw.length == 0xFFFFFFFF:
            continue
        if len(raw.value) < raw.length:
            return True
    return False


def pixel_layout(fields: Mapping[str, Any], value: tuple[int, int], status: os.stat_result) -> PixelLayout | None:
    """What the loader needs to read a native little-endian single-frame image without parsing it again;
    None where pydicom must decode it (unused high bits, odd sizes, functional groups, unusable rescale)."""
    bits, stored = fields.get("BitsAllocated"), fields.get("BitsStored")
    representation = fields.get("PixelRepresentation", 0)
    rows, columns = int(fields["Rows"]), int(fields["Columns"])
    if bits not in (8, 16, 32) or stored != bits or representation not in (0, 1):
        return None
    if int(fields.get("NumberOfFrames") or 1) != 1 or "SharedFunctionalGroupsSequence" in fields:
        return None
    offset, length = value
    if length < rows * columns * bits // 8:
        return None
    try:
        slope = float(fields.get("RescaleSlope", 1.0))
        intercept = float(fields.get("RescaleIntercept", 0.0))
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(slope) and slope != 0 and math.isfinite(intercept)):
        return None
    return PixelLayout(
        file_size=status.st_size,
        mtime_ns=status.st_mtime_ns,
        ctime_ns=status.st_ctime_ns,
        offset=offset,
        length=length,
        rows=rows,
        columns=columns,
        bits_allocated=int(bits),
        signed=representation == 1,
        rescale_slope=slope,
        rescale_intercept=intercept,
    )


def _encapsulated_problem(
    fp: BinaryIO, value_start: int, order: str, fields: Mapping[Any, Any]
) -> _PixelProblem | None:
    """Pydicom found the sequence delimiter; check that the items before it are well formed, and hold a
    fragment for each frame at least (a fragment never holds two frames): a few bytes claiming millions of
    frames would otherwise make the scan build millions of slices."""
    fp.seek(value_start)
    try:
        parse_basic_offsets(fp, endianness=order)
        fragments, _ = parse_fragments(fp, endianness=order)
    except Exception as error:
        return True, f"corrupt compressed pixel data: {error}"
    try:
        frames = int(fields.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return None  # the scan says what is wrong with NumberOfFrames
    if frames > fragments:
        return True, f"NumberOfFrames is {frames:,} but the compressed pixel data holds {fragments:,} fragment(s)"
    return None


def inflated_pixel_problem(ds: Dataset) -> tuple[bool, str] | None:
    """Pixel data of a deflated file, inflated by pydicom (a truncated stream fails before this)."""
    element = next((ds[tag] for tag in PIXEL_DATA_TAGS if tag in ds), None)
    if element is None:
        return False, "no pixel data"
    if element.is_undefined_length:
        return None
    return _length_problem(ds, len(element.value or b""), {})


def _length_problem(ds: Dataset, length: int, fields: Mapping[Any, Any]) -> tuple[bool, str] | None:
    """Native pixel data shorter than the header's Rows x Columns x frames x samples x bits announce."""
    expected = _expected_bytes(fields)
    if expected is None:
        try:  # pydicom's account, for what the simple count below does not cover (colour, odd bit depths)
            expected = int(get_expected_length(ds, unit="bytes"))
        except Exception:  # the header lacks the numbers: nothing to compare with
            return None
    if length < expected:
        return True, f"pixel data too short: {length} bytes for {expected} expected from the header"
    return None


def _expected_bytes(fields: Mapping[Any, Any]) -> int | None:
    """Bytes of greyscale native pixel data with whole-byte values, from converted header values; else None."""
    try:
        rows, columns = int(fields["Rows"]), int(fields["Columns"])
        bits = int(fields["BitsAllocated"])
        samples, frames = int(fields.get("SamplesPerPixel", 1)), int(fields.get("NumberOfFrames") or 1)
    except (KeyError, TypeError, ValueError):
        return None
    if samples != 1 or bits % 8:
        return None
    return rows * columns * frames * bits // 8
