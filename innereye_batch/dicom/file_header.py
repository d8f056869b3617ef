"""Read one file's DICOM header with pydicom: the images it holds (one, each frame of a multi-frame file, or the
tiles of a mosaic), or why it is skipped or damaged.

Only the wanted elements are read (``HEADER_KEYWORDS``) and each is converted once (header_values.py); a file of up
to 256 KiB is read whole first and parsed from memory (pydicom's small reads and seeks cost less there); the pixel
data element is
located and checked against the file (pixel_data.py), never decoded. A file that claims to be an image but cannot
be used (cut, corrupt, no pixel data) is returned as damaged (damaged.py). ``scan.py`` calls this for every file
of a tree.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
)

from innereye_batch.dicom import headers as h
from innereye_batch.dicom.codecs import decoder_problems
from innereye_batch.dicom.damaged import Damaged, is_image_claim, salvage
from innereye_batch.dicom.frame_images import enhanced_images, legacy_multiframe_images
from innereye_batch.dicom.header_values import Fields, header_fields
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
_HEADER_NUMBERS = [int(tag) for tag in _HEADER_TAGS]
"""``_HEADER_TAGS`` as plain ints for ``read_partial``, which only tests membership: a BaseTag compares in Python."""
_PIXEL_DATA_NUMBERS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
"""Float Pixel Data, Double Float Pixel Data and Pixel Data: where ``stop_before_pixels`` stops."""
_WHOLE_FILE_BYTES = 256 * 1024
"""A file of up to this size is read in one call and parsed from memory: pydicom's many small reads and seeks cost
less on a BytesIO than on a buffered file. Larger files are parsed from the file, never reading their pixel data."""


def read_file_header(path: Path) -> FileHeader | SkippedFile | Damaged:
    """What one file is: an image header (one or several images), a skipped file with the reason, or a damaged
    image claim; never raises."""
    try:
        return _read_header(path)
    except Exception as error:  # any malformed file is skipped, never fatal to the scan
        return salvage(path, f"unreadable DICOM header: {type(error).__name__}: {error}")


def _unusable(path: Path, reason: str, fields: Fields, sop_class: str, damaged: bool) -> SkippedFile | Damaged:
    """A file that cannot be used: a damaged member of a series where it claims to be an image, else skipped."""
    if damaged or is_image_claim(sop_class, fields):
        return _claim(path, reason, fields)
    return SkippedFile(path, reason)


def _claim(path: Path, reason: str, fields: Fields, *, unsupported: bool = False) -> Damaged:
    """A file of the series its header names that cannot be used (damaged, or of an unsupported kind); of an unknown
    series where it names several."""
    uid = fields.get("SeriesInstanceUID")
    return Damaged(
        SkippedFile(path, reason),
        str(uid) if isinstance(uid, str) and uid else None,
        str(fields.get("StudyInstanceUID", "")),
        str(fields.get("Modality", "")),
        unsupported=unsupported,
        instance_number=h.single_int(h.value(fields, "InstanceNumber")) if unsupported else None,
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
    whole = _small_file(path, size)
    with _in_memory(whole, path) if whole is not None else open(path, "rb") as fp:
        start = fp.read(DEFLATE_CHECK_BYTES)  # the preamble and prefix, and the file meta that names the syntax
        bare = start[128:132] != b"DICM"
        lost = _lost_write(start, fp) if bare else None
        if lost is not None:  # as an empty file: a lost slice beside images of its folder
            return (
                SkippedFile(path, lost)
                if path.name.startswith(".")
                else Damaged(SkippedFile(path, lost), None, empty=True)
            )
        if bare and start[:2] not in _BARE_DICOM_STARTS:
            return SkippedFile(path, "not a DICOM file (no 'DICM' prefix and no DICOM tags at its start)")
        bomb = None if bare else deflate_bomb(fp, start, size)
        if bomb is not None:  # before pydicom, which inflates the whole dataset in memory
            return Damaged(SkippedFile(path, bomb), None)
        fp.seek(0)
        try:
            ds = _read_dataset(fp, force=bare)
        except struct.error:  # pydicom could not unpack an element's tag, VR or length: the file ends there
            return salvage(path, "truncated file: ends inside a data element header")
        syntax = transfer_syntax_of(ds)
        deflated = syntax == DeflatedExplicitVRLittleEndian
        fields = header_fields(ds)
        if not deflated:  # fp is where pydicom stopped: at the pixel data element, or the end of the header
            pixel_problem, pixel_value = pixel_data_problem(fp, ds, size, fields)
        meta = getattr(ds, "file_meta", None)
        sop_class = str(fields.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
        if sop_class in _NOT_IMAGES:
            return SkippedFile(path, _NOT_IMAGES[sop_class])
        if deflated:  # inflated in memory: read it again, pixel data included
            fp.seek(0)
            ds = pydicom.dcmread(fp, specific_tags=_HEADER_TAGS + PIXEL_DATA_TAGS, force=bare)
            fields = header_fields(ds)
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
    malformed = _identity_problem(fields)
    if malformed:
        return _claim(path, malformed, fields)
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


def _identity_problem(fields: Fields) -> str | None:
    """Why an image's UIDs or size cannot be used: several values for one UID (the series' key and folder would be
    a list's text), or Rows / Columns not a positive whole number (written as a signed or float VR)."""
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID"):
        if isinstance(fields[keyword], list):
            return f"{keyword} has {len(fields[keyword])} values"
    for keyword in ("Rows", "Columns"):
        number = h.single_int(fields[keyword]) if not isinstance(fields[keyword], list | bool) else None
        if number is None or number < 1:
            return f"{keyword} {h.shown(fields[keyword])}: not a positive whole number"
    return None


def _lost_write(start: bytes, fp: BinaryIO) -> str | None:
    """Why a file without a 'DICM' prefix (its first bytes ``start``, the rest still in ``fp``) looks like a DICOM
    file whose writing was lost, or None: only NUL bytes, all of it (space allocated, data never flushed: a crash),
    or a preamble cut inside the 'DICM' prefix. Such a file is not "not DICOM": it was most likely a slice, and its
    series would otherwise be ok without it. A file with data after NUL bytes (a raw mask) is not DICOM."""
    if not start.strip(b"\x00") and not any(chunk.strip(b"\x00") for chunk in iter(lambda: fp.read(1 << 20), b"")):
        return "only NUL bytes: a file whose data was never written (a crash while copying?)"
    if 128 < len(start) < 132 and b"DICM".startswith(start[128:]):
        return "truncated file: ends inside the 'DICM' prefix"
    return None


def _small_file(path: Path, size: int) -> bytes | None:
    """The whole file where its ``size`` (from the stat) is at most ``_WHOLE_FILE_BYTES``; None for a larger file, or
    one that has grown since the stat. Read until its end (a read may return less than asked)."""
    if size > _WHOLE_FILE_BYTES:
        return None
    data = b""
    with open(path, "rb", buffering=0) as file:  # unbuffered: one read into one bytes of the file's size
        while len(data) <= size and (chunk := file.read(size + 1 - len(data))):
            data += chunk
    return data if len(data) <= size else None


def _in_memory(data: bytes, path: Path) -> BinaryIO:
    """The file's bytes as a file object named as ``open(path)`` names it (pydicom puts the name in a warning)."""
    buffer = io.BytesIO(data)
    buffer.name = os.fspath(path)  # BytesIO takes attributes; FileDataset reads the name
    return buffer


def _read_dataset(fp: BinaryIO, *, force: bool) -> FileDataset:
    """``pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=force)``, by the public
    function it calls with what it would pass: the tags as ints (dcmread makes each a BaseTag for every file) and
    the same stop at the pixel data."""
    return read_partial(fp, _at_pixel_data, defer_size=None, force=force, specific_tags=_HEADER_NUMBERS)


def read_tags(path: Path, tags: list[int]) -> FileDataset:
    """``pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)`` as the scan reads a header: the tags
    as ints, which pydicom tests by membership in C (dcmread makes each a BaseTag, compared in Python), and the
    other elements' values skipped, not read (on a scanner's header of hundreds of elements, much the faster)."""
    with open(path, "rb") as fp:
        return read_partial(fp, _at_pixel_data, defer_size=None, force=False, specific_tags=tags)


SOURCE_DEFER_SIZE = 1 << 20
"""Header elements longer than this (bytes) stay on disk until read: a private blob of gigabytes is never held."""


def read_source_header(path: Path) -> Dataset:
    """Every element of a source image's header for a writer to copy from (no pixel data), the values of those
    over ``SOURCE_DEFER_SIZE`` read only if asked for (pydicom reads them from the file then)."""
    return pydicom.dcmread(path, stop_before_pixels=True, defer_size=SOURCE_DEFER_SIZE)


def _at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    """pydicom's ``stop_before_pixels`` condition."""
    return tag in _PIXEL_DATA_NUMBERS


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
    path: Path, header: Fields, sop_class: str, syntax: str, layout: PixelLayout | None
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
