"""The Pixel Data element of a file, checked without decoding it: present, whole, and where it lies.

pydicom locates the element (``data_element_generator`` with ``defer_size=0`` reports its value's position and
declared length); this module compares that with the file and with what the header announces, and records the
layout of native little-endian values so that the loader can read them without parsing the header again.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Mapping
from typing import Any, BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.filereader import data_element_generator
from pydicom.pixels.utils import get_expected_length
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

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
        syntax = transfer_syntax_of(ds)
        if not UID(syntax).is_encapsulated:  # items of compressed frames, which pydicom would read as pixel values
            return (
                True,
                f"pixel data of undefined length (compressed items) in a native transfer syntax, {syntax}",
            ), None
        order = "<" if little is not False else ">"
        return _encapsulated_problem(fp, element.value_tell, order, fields, syntax), None
    start, length = element.value_tell, element.length
    if start + length > size:
        return (True, f"truncated file: pixel data needs {length} bytes, only {size - start} present"), None
    problem = _length_problem(ds, length, fields) or _excess_problem(fp, start, length, _expected_bytes(fields))
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
    representation = fields.get("PixelRepresentation")  # missing: signed or not is unknown (pydicom refuses it too)
    rows, columns = int(fields["Rows"]), int(fields["Columns"])
    if bits not in (8, 16, 32) or stored != bits or representation not in (0, 1):
        return None
    if int(fields.get("NumberOfFrames") or 1) != 1 or "SharedFunctionalGroupsSequence" in fields:
        return None
    if fields.get("ModalityLUTSequence"):  # a projection image's (the scan refuses others'): the loader refuses it
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
    fp: BinaryIO, value_start: int, order: str, fields: Mapping[Any, Any], syntax: str
) -> _PixelProblem | None:
    """Pydicom found the sequence delimiter; check that the items before it are well formed, and hold a
    fragment for each frame at least (a fragment never holds two frames): a few bytes claiming millions of
    frames would otherwise make the scan build millions of slices. Then ``_codestream_problem``."""
    fp.seek(value_start)
    try:
        parse_basic_offsets(fp, endianness=order)
        fragments, offsets = parse_fragments(fp, endianness=order)
    except Exception as error:
        return True, f"corrupt compressed pixel data: {error}"
    try:
        frames = int(fields.get("NumberOfFrames") or 1)
        size = (int(fields.get("Rows") or 0), int(fields.get("Columns") or 0))
    except (TypeError, ValueError):
        return None  # the scan says what is wrong with NumberOfFrames, Rows or Columns
    if frames > fragments:
        return True, f"NumberOfFrames is {frames:,} but the compressed pixel data holds {fragments:,} fragment(s)"
    return _codestream_problem(fp, offsets if fragments == frames else offsets[:1], syntax, size) or _end_problem(
        fp, offsets if fragments == frames else offsets[-1:], syntax, order
    )


_JPEG_SYNTAXES = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81))
"""JPEG (baseline, extended, lossless) and JPEG-LS: the frame header (SOFn, or JPEG-LS's SOF55) gives the size."""
_J2K_SYNTAXES = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 201, 202, 203))
"""JPEG 2000 and High-Throughput JPEG 2000: the SIZ marker segment gives the size."""
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_PEEK_BYTES = 8192
"""Of each frame's first fragment: where its frame header lies, after any tables and application segments."""
_MOST_FRAMES_CHECKED = 10_000


def _codestream_problem(fp: BinaryIO, fragments: list[int], syntax: str, size: tuple[int, int]) -> _PixelProblem | None:
    """Each frame's codestream (the first fragment of each, where every frame is one fragment) must be of the
    size the header gives: a decoder allocates what the codestream says, so a 1 kB file claiming 30000 x 30000
    would take gigabytes to fail (pydicom checks the size only after decoding)."""
    parse = _jpeg_size if syntax in _JPEG_SYNTAXES else _j2k_size if syntax in _J2K_SYNTAXES else None
    if parse is None or not all(size):
        return None
    for index, item in enumerate(fragments[:_MOST_FRAMES_CHECKED]):
        fp.seek(item + 8)  # the item's tag and length, then its value
        found = parse(fp.read(_PEEK_BYTES))
        if found is not None and found != size:
            return True, (
                f"compressed frame {index + 1} is {found[1]} x {found[0]} by its own codestream, but "
                f"{size[1]} x {size[0]} by the header"
            )
    return None


def _end_problem(fp: BinaryIO, last_fragments: list[int], syntax: str, order: str) -> _PixelProblem | None:
    """A JPEG, JPEG-LS or JPEG 2000 frame must end with its end-of-image marker (EOI, or EOC: FFD9), followed by at
    most one fill byte (FF) and then NUL padding. A codestream cut short can decode without an error: the
    pylibjpeg plugin gave the lost rows of a JPEG-LS or lossless JPEG slice cut to 60 %, and the series was ok.
    ``last_fragments``: the item offsets of each frame's last fragment (the last fragment of all where frames
    cannot be told apart)."""
    if syntax not in _JPEG_SYNTAXES and syntax not in _J2K_SYNTAXES:
        return None
    first = max(0, len(last_fragments) - _MOST_FRAMES_CHECKED)
    for index, item in enumerate(last_fragments[first:], start=first):
        fp.seek(item + 4)
        length = struct.unpack(f"{order}I", fp.read(4))[0]
        fp.seek(item + 8 + max(0, length - _TAIL_BYTES))
        tail = fp.read(min(length, _TAIL_BYTES)).rstrip(b"\x00")
        if b"\xff\xd9" not in tail[-3:]:  # FFD9, then at most one more byte (an FF fill byte)
            which = f"frame {index + 1}" if len(last_fragments) > 1 else "the last frame"
            return True, f"compressed pixel data cut short: {which} does not end with its end-of-image marker"
    return None


_TAIL_BYTES = 16


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG or JPEG-LS frame header; None where it cannot be found in ``data``."""
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # a fill byte
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
            at += 2
            continue
        if marker in _SOF_MARKERS:
            if at + 9 > len(data):
                return None
            rows, columns = struct.unpack(">HH", data[at + 5 : at + 9])
            return (rows, columns) if rows else None  # 0 rows: given by a DNL marker after the scan
        if marker in (0xD9, 0xDA):  # the image ends or a scan starts before any frame header
            return None
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


def _j2k_size(data: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG 2000 codestream's SIZ segment (also inside a JP2 box); None if not found."""
    at = data.find(b"\xff\x4f\xff\x51")  # SOC, then SIZ
    if at < 0 or at + 24 > len(data):
        return None
    width, height, x_origin, y_origin = struct.unpack(">IIII", data[at + 8 : at + 24])
    return height - y_origin, width - x_origin


_DEFLATED = b"1.2.840.10008.1.2.1.99"
_MOST_INFLATED_BYTES = 64 * 2**20
_MOST_DEFLATE_RATIO = 64
"""A deflated dataset may inflate to 64 MiB, or to 64 times its file's size where that is more (a blank slice
deflates a thousand-fold, but is small; a gigabyte of zeros in a megabyte is a bomb)."""


DEFLATE_CHECK_BYTES = 132 + 1024
"""How much of a file's start ``deflate_bomb`` looks at: the preamble, the prefix and the file meta."""


def deflate_bomb(fp: BinaryIO, start: bytes, size: int) -> str | None:
    """Why the deflated dataset of the file at ``fp`` (``size`` bytes, its first ``DEFLATE_CHECK_BYTES`` in
    ``start``) is refused before any parse: it inflates past ``_MOST_INFLATED_BYTES`` or
    ``_MOST_DEFLATE_RATIO`` times ``size``. None for a file that is not deflated (told from ``start`` alone), or
    whose deflated data stays within that. Counted as a stream, never held."""
    meta = start[132:]
    if meta[:4] != b"\x02\x00\x00\x00" or _DEFLATED not in meta:  # the file meta's group length comes first
        return None
    fp.seek(144 + int.from_bytes(meta[8:12], "little"))  # the deflated dataset follows the file meta
    limit = max(_MOST_INFLATED_BYTES, _MOST_DEFLATE_RATIO * size)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while chunk := fp.read(1 << 20):
            while chunk:
                total += len(inflater.decompress(chunk, 1 << 24))
                if total > limit:
                    return f"deflated data inflates to over {limit:,} bytes from a file of {size:,}: a zip bomb?"
                chunk = inflater.unconsumed_tail
    except zlib.error:
        return None  # pydicom says what is wrong with the stream
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


def _excess_problem(fp: BinaryIO, start: int, length: int, expected: int | None) -> _PixelProblem | None:
    """Native pixel data longer than the header announces, past its even-length padding: the excess must be NUL
    padding (some writers pad further). Anything else is data of another kind: RLE frames in a file whose file meta
    says Explicit VR Little Endian were read as pixel values (24,571 of 24,576 voxels wrong, ok)."""
    if expected is None or length <= expected + 1:
        return None
    fp.seek(start + expected)
    excess = fp.read(min(length - expected, _MOST_PADDING_CHECKED))
    if excess.strip(b"\x00"):
        return True, (
            f"pixel data of {length:,} bytes where the header announces {expected:,}, and the rest is not padding: "
            "encoded otherwise than its transfer syntax says?"
        )
    return None


_MOST_PADDING_CHECKED = 1 << 20


def _expected_bytes(fields: Mapping[Any, Any]) -> int | None:
    """Bytes of greyscale native pixel data with whole-byte values, from converted header values; else None."""
    try:
        rows, columns = int(fields["Rows"]), int(fields["Columns"])
        bits = int(fields["BitsAllocated"])
        samples, frames = int(fields.get("SamplesPerPixel", 1)), int(fields.get("NumberOfFrames") or 1)
    except (KeyError, TypeError, ValueError):
        return None
    if samples != 1 or bits % 8 or min(rows, columns, frames, bits) < 1:  # the scan names a size that is none
        return None
    return rows * columns * frames * bits // 8


def bits_stored_range(bits: int, signed: bool) -> tuple[int, int]:
    """The range of stored values that Bits Stored and Pixel Representation allow."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def stored_range_problem(found_min: int, found_max: int, bits: int, signed: bool) -> str | None:
    """Why decoded values ``found_min..found_max`` cannot be what Bits Stored says, or None: they lie beyond its
    range by over a sixteenth of its span (values of a wider stream: 16-bit values under BitsStored 12). A lossy
    JPEG 2000 stream coded at a higher precision overshoots the range by a little where it rings (4107 under 12
    bits): those values are kept, and clipped where a range is mapped."""
    low, high = bits_stored_range(bits, signed)
    margin = (high - low + 1) // 16
    if low - margin <= found_min and found_max <= high + margin:
        return None
    return (
        f"decoded values {found_min}..{found_max} lie outside the {low}..{high} that BitsStored {bits} allows: "
        "the pixel data and its header disagree"
    )
