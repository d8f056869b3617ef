"""Read one file's DICOM header with pydicom: the images it holds (one, each frame of a multi-frame file, or the
tiles of a mosaic), or why it is skipped or damaged.

Only the wanted elements are read (``HEADER_KEYWORDS``) and each is converted once; the pixel data element is
located and checked against the file (pixel_data.py), never decoded. A file that claims to be an image but cannot
be used (cut, corrupt, no pixel data) is returned as damaged (damaged.py). ``scan.py`` calls this for every file
of a tree.
"""

from __future__ import annotations

import stat
import struct
from pathlib import Path
from typing import Any

import pydicom
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
)

from innereye_batch.dicom import headers as h
from innereye_batch.dicom.codecs import decoder_problems
from innereye_batch.dicom.damaged import Damaged, is_image_claim, salvage
from innereye_batch.dicom.frame_images import enhanced_images, legacy_multiframe_images
from innereye_batch.dicom.headers import FileHeader, ImageHeader
from innereye_batch.dicom.mosaic import MOSAIC_TAGS, unpack_mosaic
from innereye_batch.dicom.photometric import PROJECTION_MODALITIES
from innereye_batch.dicom.pixel_data import (
    DEFLATE_CHECK_BYTES,
    NATIVE_LITTLE_ENDIAN,
    PIXEL_DATA_TAGS,
    deflate_bomb,
    inflated_pixel_problem,
    pixel_data_problem,
    pixel_layout,
    transfer_syntax_of,
)
from innereye_batch.dicom.series import PixelLayout, SkippedFile

_BARE_DICOM_STARTS = (b"\x08\x00", b"\x02\x00", b"\x00\x08", b"\x00\x02")
"""First bytes of a file without preamble that starts with group 0008 or 0002 (either byte order)."""
_NOT_IMAGES = {
    "1.2.840.10008.1.3.10": "DICOMDIR (media directory, not an image)",
    "1.2.840.10008.5.1.4.1.1.66.4": "segmentation object (DICOM-SEG), not an image series",
    "1.2.840.10008.5.1.4.1.1.66.5": "surface segmentation object, not an image series",
}
HEADER_KEYWORDS = (
    "ImageType",
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "SeriesDescription",
    "ComplexImageComponent",
    "PatientID",
    "SliceThickness",
    "SpacingBetweenSlices",
    "EchoTime",
    "EchoNumbers",
    "TriggerTime",
    "ImagerPixelSpacing",
    "DiffusionBValue",
    "DiffusionGradientOrientation",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "AcquisitionNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "FrameOfReferenceUID",
    "TemporalPositionIdentifier",
    "ImagesInAcquisition",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "PixelSpacing",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "DoseGridScaling",
    "GridFrameOffsetVector",
    "DimensionIndexSequence",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
)
"""The top-level elements a scan reads (pydicom skips every other one; Specific Character Set is always read),
plus the vendors' private diffusion elements in ``headers.PRIVATE_TAGS``."""
_HEADER_TAGS = list(
    dict.fromkeys([Tag(keyword) for keyword in HEADER_KEYWORDS] + [Tag(tag) for tag in h.PRIVATE_TAGS] + MOSAIC_TAGS)
)  # MOSAIC_TAGS: what mosaic.py needs to tell a mosaic
_CHARACTER_SET = int(Tag("SpecificCharacterSet"))
"""Dimension index pointers that number positions, not volumes (left out of ``SplitValues.dimension_index``)."""


def read_file_header(path: Path) -> FileHeader | SkippedFile | Damaged:
    """What one file is: an image header (one or several images), a skipped file with the reason, or a damaged
    image claim; never raises."""
    try:
        return _read_header(path)
    except Exception as error:  # any malformed file is skipped, never fatal to the scan
        return salvage(path, f"unreadable DICOM header: {type(error).__name__}: {error}")


_Fields = dict[Any, Any]
"""Top-level header values by keyword (private elements by tag number), converted by pydicom; absent and empty
elements left out."""


def _fields(ds: Dataset) -> _Fields:
    """Every element pydicom read (only the wanted tags), each converted once: plain text and number values
    straight from their bytes (``_plain_value``), anything else by pydicom (from its raw form: the Dataset's own
    bookkeeping is not needed here); a value pydicom cannot convert is kept as its text, so that the problem it
    causes can name it."""
    fields: _Fields = {}
    encoding = ds.original_character_set or default_encoding
    plain_text = _ascii_reads_as_ascii(ds)
    little = ds.original_encoding[1] is not False
    for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset would store every converted element in it)
        raw = ds.get_item(tag)
        number = int(tag)  # plain int comparisons and look-ups: a BaseTag compares in Python
        found: Any = _NOT_PLAIN
        keyword = ""
        if isinstance(raw, RawDataElement) and number != _CHARACTER_SET and isinstance(raw.value, bytes):
            found = _plain_value(raw.VR, raw.value, little, plain_text)
            if found is not _NOT_PLAIN:
                keyword = _KEYWORDS.get(number) or pydicom.datadict.keyword_for_tag(tag)
        if found is _NOT_PLAIN:
            try:
                if isinstance(raw, RawDataElement) and raw.VR != "SQ" and number != _CHARACTER_SET:
                    element = convert_raw_data_element(raw, encoding=encoding, ds=ds)
                else:
                    element = ds[tag]
                found = element.value
                keyword = element.keyword
            except Exception:  # an invalid value (e.g. DS "abc"): keep its text
                found = raw.value.decode("latin-1").strip("\x00 ") if isinstance(raw.value, bytes) else raw.value
                keyword = pydicom.datadict.keyword_for_tag(tag)
        if found is None or found == "":
            continue
        fields[keyword if keyword else number] = found
    return fields


_ASCII_SUPERSETS = frozenset(
    {"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 126", "ISO_IR 127"}
    | {"ISO_IR 138", "ISO_IR 144", "ISO_IR 148", "ISO_IR 166", "ISO_IR 203", "ISO_IR 192"}
)
"""Specific Character Sets without code extensions in which a byte below 128 is that ASCII character: the ISO 8859
parts, TIS 620 and UTF-8 (not ISO 2022 sets, whose escape sequences are ASCII bytes; not JIS X 0201, whose 0x5C
is the yen sign)."""


def _ascii_reads_as_ascii(ds: Dataset) -> bool:
    """True when the file's Specific Character Set (one term, or none) reads a value made of ASCII bytes as ASCII:
    then ``_plain_value`` may decode its text itself."""
    element = ds.get_item(_CHARACTER_SET)
    value = element.value if element is not None else b""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    terms = [str(term).strip(" \x00") for term in (value.split("\\") if isinstance(value, str) else value)]
    return len(terms) <= 1 and (terms[0] if terms else "") in _ASCII_SUPERSETS


class _AsWritten:
    """A DS or IS number that prints as the file wrote it (``0``, not ``0.0``), as pydicom's DSfloat and IS do."""

    __slots__ = ()
    text: str

    def __new__(cls, text: str) -> Any:
        number = super().__new__(cls, text)  # type: ignore[call-arg]  # float's or int's
        number.text = text  # type: ignore[misc]  # a slot of _Decimal; int subclasses have a __dict__
        return number

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


class _Decimal(_AsWritten, float):
    __slots__ = ("text",)


class _Integer(_AsWritten, int):
    pass  # int subclasses cannot have slots of their own


_OFFSET_TOLERANCE_MM = 1e-3
"""How close GridFrameOffsetVector's first value must be to 0 or to ImagePositionPatient along the normal."""
_NOT_PLAIN = object()
"""``_plain_value``'s answer for a value it leaves to pydicom."""
_TEXT_VRS = frozenset({"UI", "CS", "SH", "LO", "AS", "DA", "TM"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_KEYWORDS = {int(Tag(keyword)): keyword for keyword in HEADER_KEYWORDS}


def _plain_value(vr: str | None, value: bytes, little: bool, plain_text: bool) -> Any:
    """The value of a plain element straight from its bytes, as pydicom converts it but without its per-value
    validation: text VRs (ASCII, split at backslashes, padding stripped), IS and DS as int and float, binary
    integers and floats; ``_NOT_PLAIN`` for anything else or anything unusual (pydicom then converts it)."""
    if vr in _TEXT_VRS or vr in ("IS", "DS"):
        if not plain_text or not value.isascii():
            return _NOT_PLAIN
        parts = [part.strip(" \x00") for part in value.decode("ascii").split("\\")]
        if vr in ("IS", "DS"):
            try:
                numbers = [_Integer(p) if vr == "IS" else _Decimal(p) for p in parts if p]
            except ValueError:
                return _NOT_PLAIN
            if len(numbers) != len(parts):
                return _NOT_PLAIN
            return numbers[0] if len(numbers) == 1 else numbers
        if vr == "UI":
            parts = [p.rstrip("\x00") for p in parts]
        return parts[0] if len(parts) == 1 else parts
    code = _NUMBER_FORMATS.get(vr or "")
    if code is None:
        return _NOT_PLAIN
    size = struct.calcsize(code)
    if not value or len(value) % size:
        return _NOT_PLAIN
    unpacked = struct.unpack(("<" if little else ">") + code * (len(value) // size), value)
    return unpacked[0] if len(unpacked) == 1 else list(unpacked)


def _unusable(path: Path, reason: str, fields: _Fields, sop_class: str, damaged: bool) -> SkippedFile | Damaged:
    """A file that cannot be used: a damaged member of a series where it claims to be an image, else skipped."""
    if damaged or is_image_claim(sop_class, fields):
        return _claim(path, reason, fields)
    return SkippedFile(path, reason)


def _claim(path: Path, reason: str, fields: _Fields, *, unsupported: bool = False) -> Damaged:
    """A file of the series its header names that cannot be used (damaged, or of an unsupported kind)."""
    return Damaged(
        SkippedFile(path, reason),
        str(fields.get("SeriesInstanceUID", "")) or None,
        str(fields.get("StudyInstanceUID", "")),
        str(fields.get("Modality", "")),
        unsupported=unsupported,
    )


def _read_header(path: Path) -> FileHeader | SkippedFile | Damaged:
    status = path.stat()  # before reading: a later change shows as a different size or mtime
    if not stat.S_ISREG(status.st_mode):  # opening a FIFO would block; a device never ends: no slice of anything
        return SkippedFile(path, "not a regular file (a pipe, socket or device)")
    size = status.st_size
    if size == 0:
        reason = "empty file (0 bytes)"
        empty = Damaged(SkippedFile(path, reason), None, empty=True)
        return SkippedFile(path, reason) if path.name.startswith(".") else empty
    with open(path, "rb") as fp:
        start = fp.read(DEFLATE_CHECK_BYTES)  # the preamble and prefix, and the file meta that names the syntax
        bare = start[128:132] != b"DICM"
        if bare and start[:2] not in _BARE_DICOM_STARTS:
            return SkippedFile(path, "not a DICOM file (no 'DICM' prefix and no DICOM tags at its start)")
        bomb = None if bare else deflate_bomb(fp, start, size)
        if bomb is not None:  # before pydicom, which inflates the whole dataset in memory
            return Damaged(SkippedFile(path, bomb), None)
        fp.seek(0)
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=bare)
        except struct.error:  # pydicom could not unpack an element's tag, VR or length: the file ends there
            return salvage(path, "truncated file: ends inside a data element header")
        syntax = transfer_syntax_of(ds)
        deflated = syntax == DeflatedExplicitVRLittleEndian
        fields = _fields(ds)
        if not deflated:  # fp is where pydicom stopped: at the pixel data element, or the end of the header
            pixel_problem, pixel_value = pixel_data_problem(fp, ds, size, fields)
        meta = getattr(ds, "file_meta", None)
        sop_class = str(fields.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
        if sop_class in _NOT_IMAGES:
            return SkippedFile(path, _NOT_IMAGES[sop_class])
        if deflated:  # inflated in memory: read it again, pixel data included
            fp.seek(0)
            ds = pydicom.dcmread(fp, specific_tags=_HEADER_TAGS + PIXEL_DATA_TAGS, force=bare)
            fields = _fields(ds)
            pixel_problem, pixel_value = inflated_pixel_problem(ds), None
    if pixel_problem is not None:
        damaged, reason = pixel_problem
        if not damaged:
            reason = f"{reason} ({UID(sop_class).name or 'unknown SOP class'})"
            if is_image_claim(sop_class, fields):
                reason += ": the image ends before its pixel data"
        return _unusable(path, reason, fields, sop_class, damaged)
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
        if not fields.get(keyword):
            return _unusable(path, f"missing {keyword}", fields, sop_class, damaged=False)
    samples = int(fields.get("SamplesPerPixel", 1))
    photometric = str(fields.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        reason = f"colour image ({photometric}, {samples} samples per pixel): only greyscale is supported"
        return _claim(path, reason, fields, unsupported=True)
    if int(fields.get("BitsAllocated", 16)) == 1:
        return _claim(path, "1-bit (binary) image: not an image series", fields, unsupported=True)
    misaligned = _high_bit_problem(fields.get("BitsStored"), fields.get("HighBit"))
    if misaligned:
        return _claim(path, misaligned, fields)
    integers = pixel_value is not None or UID(syntax).is_encapsulated  # native PixelData, or compressed
    if integers and fields.get("PixelRepresentation") is None:  # float pixel data needs none
        return _claim(path, "PixelRepresentation missing: whether its stored values are signed is unknown", fields)
    native = syntax in NATIVE_LITTLE_ENDIAN and ds.original_encoding[1] is not False
    layout = pixel_layout(fields, pixel_value, status) if native and pixel_value is not None else None
    header = _header_from_fields(path, fields, sop_class, syntax, layout)
    for image in header.images:  # as the file was when its header was read: what the inputs' fingerprint records
        image.file_status = (status.st_size, status.st_mtime_ns, status.st_ctime_ns)
    header.problems = decoder_problems(syntax, fields.get("BitsStored"))  # codecs hook: can anything decode it?
    return unpack_mosaic(header, ds)  # mosaic hook: a mosaic's tiles become its images


def _high_bit_problem(bits_stored: Any, high_bit: Any) -> str | None:
    """Why the stored values cannot be read as they lie, or None: the Image Pixel module requires High Bit to be
    Bits Stored - 1 (values aligned at bit 0). pydicom keeps the low Bits Stored bits whatever High Bit says, so
    values stored higher up (an old layout) would decode as noise."""
    if bits_stored is None or high_bit is None:
        return None
    try:
        stored, high = int(bits_stored), int(high_bit)
    except (TypeError, ValueError):
        return f"unusable BitsStored {bits_stored!r} or HighBit {high_bit!r}"
    if high != stored - 1:
        return f"HighBit {high} with BitsStored {stored}: values not aligned at bit 0 (HighBit must be BitsStored - 1)"
    return None


def _header_from_fields(
    path: Path, header: _Fields, sop_class: str, syntax: str, layout: PixelLayout | None
) -> FileHeader:
    modality = str(h.value(header, "Modality") or "")
    projection = modality.upper() in PROJECTION_MODALITIES
    size = (int(header["Rows"]), int(header["Columns"]))
    frames = int(h.value(header, "NumberOfFrames") or 1)
    sop_uid = str(header["SOPInstanceUID"])
    per_frame = h.value(header, "PerFrameFunctionalGroupsSequence")
    monochrome1 = str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    if per_frame:
        images = enhanced_images(path, sop_uid, header, size, frames, projection)
    elif frames > 1:
        images = legacy_multiframe_images(path, sop_uid, header, size, frames, projection)
    else:
        position, position_issue = h.position(h.value(header, "ImagePositionPatient"))
        orientation, orientation_issue = h.orientation(h.value(header, "ImageOrientationPatient"))
        spacing, spacing_source, spacing_issue = h.pixel_spacing(None, header, projection)
        images = [
            ImageHeader(
                path=path,
                sop_instance_uid=sop_uid,
                frame=None,
                position=position,
                orientation=orientation,
                pixel_spacing=spacing,
                rows=size[0],
                columns=size[1],
                slice_spacing=h.single_float(h.value(header, "SpacingBetweenSlices")),
                pixel=layout,
                position_issue=position_issue,
                orientation_issue=orientation_issue,
                spacing_source=spacing_source,
                spacing_issue=spacing_issue,
                slice_thickness=h.single_float(h.value(header, "SliceThickness")),
                rescale_issue=h.value_mapping_issue(
                    header, h.value(header, "RescaleSlope"), h.value(header, "RescaleIntercept"), projection=projection
                ),
                split=h.split_values(header),
            )
        ]
    for image in images:
        image.monochrome1 = monochrome1
    number = h.value(header, "SeriesNumber")
    return FileHeader(
        path=path,
        series_instance_uid=str(header["SeriesInstanceUID"]),
        study_instance_uid=str(h.value(header, "StudyInstanceUID") or ""),
        frame_of_reference_uid=str(h.value(header, "FrameOfReferenceUID") or ""),
        modality=modality,
        sop_class_uid=sop_class,
        series_description=str(h.value(header, "SeriesDescription") or ""),
        series_number=h.single_int(number),
        transfer_syntax=syntax,
        images=tuple(images),
        # a projection radiograph, or each frame of a multi-frame one that places no frame in 3-D (cine DX)
        is_projection=projection and (len(images) == 1 or all(im.position is None for im in images)),
        patient_id=str(h.value(header, "PatientID") or ""),
        images_in_acquisition=h.single_int(h.value(header, "ImagesInAcquisition")),
    )
