"""What one image's header says, interpreted once: geometry (or why it is unusable), spacing and where it came
from, rescale validity, and the attributes that tell apart images a scanner put in one series.

Values come from pydicom (converted once by ``file_header.py``); nothing here reads a file. Sources are either the
top-level fields of a file (a dict by keyword; private elements by tag number) or a functional-group item of an
enhanced multi-frame file (a pydicom Dataset).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from innereye_batch.dicom.series import PixelLayout, Problem

Source = Dataset | dict[Any, Any] | None
"""Top-level fields by keyword (private ones by tag number), or a sequence item."""

ORTHOGONALITY_TOLERANCE = 1e-3
"""Largest |row . column| of usable direction cosines."""
UNIT_TOLERANCE = 0.01
"""Largest deviation of a direction cosine vector's length from 1 (the vectors are then normalised)."""

# Private elements read where dcm2niix reads them, each only under its own private creator (block 0x10).
SIEMENS_CREATOR, SIEMENS_B_VALUE, SIEMENS_GRADIENT = 0x00190010, 0x0019100C, 0x0019100E
GE_CREATOR, GE_GRADIENT_X, GE_GRADIENT_Y, GE_GRADIENT_Z = 0x00190010, 0x001910BB, 0x001910BC, 0x001910BD
GE_PARAMETERS_CREATOR, GE_B_VALUE = 0x00430010, 0x00431039
PHILIPS_CREATOR, PHILIPS_B_VALUE = 0x20010010, 0x20011003
PHILIPS_MR_CREATOR, PHILIPS_GRADIENT = 0x20050010, (0x200510B0, 0x200510B1, 0x200510B2)
PRIVATE_TAGS = (
    SIEMENS_CREATOR,
    SIEMENS_B_VALUE,
    SIEMENS_GRADIENT,
    GE_GRADIENT_X,
    GE_GRADIENT_Y,
    GE_GRADIENT_Z,
    GE_PARAMETERS_CREATOR,
    GE_B_VALUE,
    PHILIPS_CREATOR,
    PHILIPS_B_VALUE,
    PHILIPS_MR_CREATOR,
    *PHILIPS_GRADIENT,
)


@dataclass(frozen=True, slots=True)
class SplitValues:
    """The attributes by which dcm2niix tells apart images of one series (None where absent)."""

    echo_number: int | None = None
    echo_time: float | None = None
    """EchoTime or, in enhanced files, EffectiveEchoTime (ms, rounded to 0.01)."""
    complex_component: str = "MAGNITUDE"
    """MAGNITUDE, PHASE, REAL or IMAGINARY (ComplexImageComponent, else ImageType as dcm2niix reads it)."""
    derived: bool = False
    """ImageType (or FrameType) says DERIVED."""
    b_value: int | None = None
    gradient: tuple[float, float, float] | None = None
    """Diffusion gradient direction, rounded to 0.001; None for b = 0."""
    temporal_position: int | None = None
    """TemporalPositionIdentifier, or TemporalPositionIndex of the Frame Content of an enhanced frame."""
    trigger_time: float | None = None
    acquisition_number: int | None = None
    stack_id: str | None = None
    """StackID of the Frame Content of an enhanced frame."""
    dimension_index: tuple[int, ...] | None = None
    """DimensionIndexValues of an enhanced frame, less the in-stack position (set by ``file_header.py``)."""
    instance_number: int | None = None

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its field values (scan workers send one per file): loads 2x faster than dataclass state."""
        return (type(self), tuple(getattr(self, name) for name in self.__match_args__))


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
    """(between rows, between columns) in mm, i.e. (y, x); (1, 1) where unknown (see ``spacing_source``)."""
    rows: int
    columns: int
    slice_spacing: float | None = None
    """SpacingBetweenSlices, for the z spacing of a single-slice stack."""
    pixel: PixelLayout | None = None
    """Where the stored values lie, for a native single-frame image (see PixelLayout)."""
    position_issue: str | None = None
    """Why ``position`` is None (e.g. ``missing``)."""
    orientation_issue: str | None = None
    """Why ``orientation`` is None (e.g. ``missing``, ``not orthogonal: row.col = 0.31``)."""
    spacing_source: str = "PixelSpacing"
    """PixelSpacing, ImagerPixelSpacing or unknown."""
    spacing_issue: str | None = None
    """The unusable PixelSpacing (e.g. ``PixelSpacing 0\\0``) of an image that needs one."""
    slice_thickness: float | None = None
    rescale_issue: str | None = None
    """Why the rescale cannot be applied (e.g. ``RescaleSlope 0``); None when fine or absent."""
    monochrome1: bool = False
    split: SplitValues = SplitValues()
    mosaic_size: tuple[int, int] | None = None
    """For one tile of a Siemens mosaic or UIH grid (``mosaic.py``): (rows, columns) of the whole mosaic image."""
    file_status: tuple[int, int, int] | None = None
    """The file's size, modification and status-change times (ns) when the scan read its header."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its field values (scan workers send one per file): loads 2x faster than dataclass state."""
        return (type(self), tuple(getattr(self, name) for name in self.__match_args__))


@dataclass(slots=True)  # not frozen: built once per file, in the hot loop
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
    is_projection: bool
    """A projection radiograph (CR, DX, MG, IO, PX, RG): a 2-D image of its own, never placed in 3-D. Also set for
    a mosaic that cannot be unpacked (``mosaic.py``), which then stands alone with its fatal ``mosaic`` problem."""
    patient_id: str = ""
    """Compared to split series that mix patients; never shown anywhere."""
    images_in_acquisition: int | None = None
    problems: tuple[Problem, ...] = ()
    """Problems of this file that concern every stack holding its images (``no_decoder``, ``mosaic``)."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its field values (scan workers send one per file): loads 2x faster than dataclass state."""
        return (type(self), tuple(getattr(self, name) for name in self.__match_args__))


def value(source: Source, keyword: Any) -> Any:
    """The element's value, or None when it is absent or empty."""
    found = source.get(keyword) if source is not None else None
    if isinstance(source, Dataset) and found is not None and not isinstance(keyword, str):
        found = found.value  # a Dataset looked up by tag gives the element
    return None if found is None or found == "" else found


def first_item(source: Source, sequence: str) -> Dataset | None:
    items = value(source, sequence)
    return items[0] if items else None


def floats(raw: Any, count: int) -> tuple[float, ...] | None:
    """``count`` finite numbers, or None."""
    if isinstance(raw, _TEXTS) or not hasattr(raw, "__iter__"):
        raw = (raw,)
    try:
        numbers = tuple(map(float, raw))
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(map(math.isfinite, numbers)):
        return None
    return numbers


_TEXTS = (str, bytes)
"""A tuple, not ``str | bytes``: ``isinstance`` tests a tuple faster, and these run for every value of every file."""


def single_float(raw: Any) -> float | None:
    if isinstance(raw, _NUMBERS):  # one number (most values): what floats(raw, 1) gives, without the tuple
        one = float(raw)
        return one if math.isfinite(one) else None
    number = floats(raw, 1) if raw is not None else None
    return number[0] if number else None


_NUMBERS = (float, int)


def single_int(raw: Any) -> int | None:
    if isinstance(raw, list | tuple) or (hasattr(raw, "__iter__") and not isinstance(raw, _TEXTS)):
        raw = next(iter(raw), None)
    number = single_float(raw)
    return int(number) if number is not None and number.is_integer() else None


def shown(raw: Any) -> str:
    """A value as DICOM writes it (multiple values joined by backslashes), for messages."""
    if isinstance(raw, str | bytes) or not hasattr(raw, "__iter__"):
        return str(raw)
    return "\\".join(str(v) for v in raw)


MAX_COORDINATE_MM = 1e6
"""Patient coordinates further than this (1 km) from the origin are not a scanner's."""
SPACING_RANGE_MM = (1e-4, 1e4)
"""Voxel spacings outside this range (0.1 um to 10 m) are not a scanner's: they overflow the grids made of them."""


def plausible_spacing(*spacings: float) -> bool:
    """Every spacing within ``SPACING_RANGE_MM``."""
    low, high = SPACING_RANGE_MM
    return all(low <= s <= high for s in spacings)


def position(raw: Any) -> tuple[tuple[float, float, float] | None, str | None]:
    """ImagePositionPatient, or None and why not."""
    if raw is None:
        return None, "missing"
    numbers = floats(raw, 3)
    if numbers is None:
        return None, f"not 3 finite numbers ({shown(raw)[:40]})"
    if max(map(abs, numbers)) > MAX_COORDINATE_MM:  # steps and spans of such positions overflow
        return None, f"more than {MAX_COORDINATE_MM:g} mm from the origin ({shown(raw)[:40]})"
    return (numbers[0], numbers[1], numbers[2]), None


def orientation(raw: Any) -> tuple[tuple[float, ...] | None, str | None]:
    """Normalised row and column cosines, or None and why they are unusable."""
    if raw is None:
        return None, "missing"
    cosines = floats(raw, 6)
    if cosines is None:
        return None, f"not 6 finite numbers ({shown(raw)[:60]})"
    row_norm, col_norm = math.hypot(*cosines[:3]), math.hypot(*cosines[3:])
    if abs(row_norm - 1) > UNIT_TOLERANCE or abs(col_norm - 1) > UNIT_TOLERANCE:
        return None, f"not unit vectors: |row| = {row_norm:.3g}, |column| = {col_norm:.3g}"
    row = [v / row_norm for v in cosines[:3]]
    col = [v / col_norm for v in cosines[3:]]
    dot = sum(r * c for r, c in zip(row, col, strict=True))
    if abs(dot) > ORTHOGONALITY_TOLERANCE:
        return None, f"not orthogonal: row.col = {dot:.3g}"
    return (*row, *col), None


def pixel_spacing(measures: Source, fallback: Source, projection: bool) -> tuple[tuple[float, float], str, str | None]:
    """(y, x) spacing, its source and, for an image that needs a PixelSpacing, what is wrong with it.

    PixelSpacing (from ``measures``, else ``fallback``) when positive and finite. A projection image falls back on
    ImagerPixelSpacing (the standard fallback for CR/DX/MG...), else ``unknown``; a cross-sectional image never
    falls back: its spacing is ``unknown`` with the issue naming the value.
    """
    raw = value(measures, "PixelSpacing")
    if raw is None:
        raw = value(fallback, "PixelSpacing")
    spacing = floats(raw, 2) if raw is not None else None
    if spacing is not None and plausible_spacing(*spacing):
        return (spacing[0], spacing[1]), "PixelSpacing", None
    if projection:
        imager = floats(value(fallback, "ImagerPixelSpacing"), 2)
        if imager is not None and plausible_spacing(*imager):
            return (imager[0], imager[1]), "ImagerPixelSpacing", None
        return (1.0, 1.0), "unknown", None
    return (1.0, 1.0), "unknown", "PixelSpacing missing" if raw is None else f"PixelSpacing {shown(raw)}"


def rescale_issue(slope: Any, intercept: Any) -> str | None:
    """Why a RescaleSlope / RescaleIntercept pair cannot be applied; None when usable (or absent)."""
    if slope is not None:
        number = single_float(slope)
        if number is None or number == 0:
            return f"RescaleSlope {shown(slope)}"
    if intercept is not None and single_float(intercept) is None:
        return f"RescaleIntercept {shown(intercept)}"
    return None


def value_mapping_issue(
    header: Dataset | dict[Any, Any] | None, slope: Any, intercept: Any, *, projection: bool
) -> str | None:
    """Why an image's stored values cannot be put in modality units: its RescaleSlope and RescaleIntercept
    (``rescale_issue``); and, for a cross-sectional image, something else that maps them, which volumes do not
    apply (the values would load unmapped): a Modality LUT Sequence, or RT dose's DoseGridScaling. A projection
    image's Modality LUT is applied by ``projection.py`` for 2-D models (``load_volume`` refuses it). None when
    usable."""
    if not projection:
        if value(header, "ModalityLUTSequence"):
            return "a Modality LUT Sequence maps the stored values (volumes do not apply it)"
        scaling = value(header, "DoseGridScaling")
        if scaling is not None and single_float(scaling) != 1.0:
            return f"DoseGridScaling {shown(scaling)} scales the stored dose values (volumes do not apply it)"
    return rescale_issue(slope, intercept)


def complex_component(component: Any, image_type: Any) -> str:
    """MAGNITUDE, PHASE, REAL or IMAGINARY: ComplexImageComponent, else ImageType values as dcm2niix reads them."""
    if component is not None and str(component).strip().upper() in ("MAGNITUDE", "PHASE", "REAL", "IMAGINARY"):
        return str(component).strip().upper()
    values = [str(v).strip().upper() for v in _as_list(image_type)]  # CS padding is not part of the value
    if any(v == "P" or "PHASE" in v for v in values):
        return "PHASE"
    if any(v in ("R", "REAL") for v in values):
        return "REAL"
    if any(v in ("I", "IMAGINARY") for v in values):
        return "IMAGINARY"
    return "MAGNITUDE"


def is_derived(image_type: Any) -> bool:
    return any(str(v).strip().upper() == "DERIVED" for v in _as_list(image_type)[:1])  # 'DERIVED ' too


def _as_list(raw: Any) -> list[Any]:
    if raw is None:
        return []
    if isinstance(raw, str | bytes) or not hasattr(raw, "__iter__"):
        return [raw]
    return list(raw)


def split_values(fields: Source, frame_groups: tuple[Source, ...] = ()) -> SplitValues:
    """The splitting attributes of one image: top-level ``fields``, overridden by an enhanced frame's groups."""
    echo_number = single_int(value(fields, "EchoNumbers"))
    echo_time = single_float(value(fields, "EchoTime"))
    component, image_type = value(fields, "ComplexImageComponent"), value(fields, "ImageType")
    temporal = single_int(value(fields, "TemporalPositionIdentifier"))
    trigger = single_float(value(fields, "TriggerTime"))
    acquisition = single_int(value(fields, "AcquisitionNumber"))
    b_value, gradient = _diffusion(fields)
    stack_id: str | None = None
    dimension_index: tuple[int, ...] | None = None
    for groups in frame_groups:  # per-frame item first, then shared: the first found wins
        content = first_item(groups, "FrameContentSequence")
        if content is not None:
            temporal = single_int(value(content, "TemporalPositionIndex")) if temporal is None else temporal
            stack_id = str(value(content, "StackID")) if value(content, "StackID") is not None else stack_id
            indices = value(content, "DimensionIndexValues")
            if indices is not None and dimension_index is None:
                dimension_index = tuple(int(v) for v in _as_list(indices))
            acquisition = single_int(value(content, "FrameAcquisitionNumber")) or acquisition
        echo = first_item(groups, "MREchoSequence")
        if echo is not None and value(echo, "EffectiveEchoTime") is not None:
            echo_time = single_float(value(echo, "EffectiveEchoTime"))
        frame_type = first_item(groups, "MRImageFrameTypeSequence") or first_item(groups, "CTImageFrameTypeSequence")
        if frame_type is not None:
            image_type = value(frame_type, "FrameType") or image_type
            component = value(frame_type, "ComplexImageComponent") or component
        diffusion = first_item(groups, "MRDiffusionSequence")
        if diffusion is not None:
            b_value, gradient = _enhanced_diffusion(diffusion)
        cardiac = first_item(groups, "CardiacSynchronizationSequence")
        if cardiac is not None and trigger is None:
            trigger = single_float(value(cardiac, "NominalCardiacTriggerDelayTime"))
    return SplitValues(
        echo_number=echo_number,
        echo_time=round(echo_time, 2) if echo_time is not None else None,
        complex_component=complex_component(component, image_type),
        derived=is_derived(image_type),
        b_value=b_value,
        gradient=gradient if b_value else None,
        temporal_position=temporal,
        trigger_time=round(trigger, 2) if trigger is not None else None,
        acquisition_number=acquisition,
        stack_id=stack_id,
        dimension_index=dimension_index,
        instance_number=single_int(value(fields, "InstanceNumber")),
    )


def _rounded_direction(numbers: tuple[float, ...] | None) -> tuple[float, float, float] | None:
    if numbers is None:
        return None
    x, y, z = (round(v, 3) + 0.0 for v in numbers)  # + 0.0: no negative zero
    return (x, y, z)


def _diffusion(fields: Source) -> tuple[int | None, tuple[float, float, float] | None]:
    """b-value and gradient: standard tags, else Siemens, GE or Philips private tags (as dcm2niix reads them)."""
    b = single_float(value(fields, "DiffusionBValue"))
    gradient = _rounded_direction(floats(value(fields, "DiffusionGradientOrientation"), 3))
    creator_19 = str(value(fields, SIEMENS_CREATOR) or "").strip()
    if b is None and creator_19 == "SIEMENS MR HEADER":
        b = _private_number(value(fields, SIEMENS_B_VALUE))
        gradient = gradient or _rounded_direction(_private_vector(value(fields, SIEMENS_GRADIENT)))
    if b is None and str(value(fields, GE_PARAMETERS_CREATOR) or "").strip() == "GEMS_PARM_01":
        b = _private_number(value(fields, GE_B_VALUE))
        b = b % 1_000_000_000 if b is not None else None  # GE adds 1e9 to some b-values
    if creator_19 == "GEMS_ACQU_01" and gradient is None:
        parts = [_private_number(value(fields, tag)) for tag in (GE_GRADIENT_X, GE_GRADIENT_Y, GE_GRADIENT_Z)]
        if all(p is not None for p in parts):
            gradient = _rounded_direction(tuple(float(p) for p in parts if p is not None))
    if b is None and str(value(fields, PHILIPS_CREATOR) or "").strip() == "Philips Imaging DD 001":
        b = _private_number(value(fields, PHILIPS_B_VALUE), "<f")
    if gradient is None and str(value(fields, PHILIPS_MR_CREATOR) or "").strip() == "Philips MR Imaging DD 001":
        parts = [_private_number(value(fields, tag), "<f") for tag in PHILIPS_GRADIENT]
        if all(p is not None for p in parts) and any(p for p in parts):  # (0, 0, 0): the isotropic image
            gradient = _rounded_direction(tuple(float(p) for p in parts if p is not None))
    return (round(b) if b is not None else None), gradient


def _enhanced_diffusion(item: Dataset) -> tuple[int | None, tuple[float, float, float] | None]:
    b = single_float(value(item, "DiffusionBValue"))
    direction = first_item(item, "DiffusionGradientDirectionSequence")
    gradient = _rounded_direction(floats(value(direction, "DiffusionGradientOrientation"), 3))
    return (round(b) if b is not None else None), gradient


def _private_number(raw: Any, binary: str | None = None) -> float | None:
    """The first number of a private element: text (IS/DS, possibly read as UN bytes) or a binary float."""
    if isinstance(raw, bytes):
        if binary is not None and len(raw) >= struct.calcsize(binary):
            return float(struct.unpack_from(binary, raw)[0])
        raw = raw.decode("ascii", "replace").strip("\x00 ").split("\\")
    return single_float(_as_list(raw)[0]) if _as_list(raw) else None


def _private_vector(raw: Any) -> tuple[float, ...] | None:
    """Three numbers from a private FD element (possibly read as UN bytes)."""
    if isinstance(raw, bytes):
        return tuple(struct.unpack("<3d", raw)) if len(raw) == 24 else None
    return floats(raw, 3)
