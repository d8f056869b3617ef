"""Load 2-D projection images (CR, DX, MG, RG, IO) and map them to the 16-bit grey PNG convention of training.

A classification model trained on 16-bit grey PNGs (PadChest's format) must see a DICOM image as that PNG.
``png_convention`` maps the stored values of one frame, in this order, with pydicom's own functions:

1. **Modality LUT** (``apply_modality_lut``): the Modality LUT Sequence, or Rescale Slope / Intercept.
2. **VOI** (when ``apply_voi`` and the file has one): the first item of the VOI LUT Sequence when present (looked
   up here: pydicom 3.0 indexes a table of 8-bit entries with 8-bit indices, which wrap), otherwise the first
   Window Center / Width pair with the VOI LUT Function (LINEAR by default, LINEAR_EXACT, SIGMOID; pydicom's
   ``apply_windowing``, whose output range is turned the right way round under a negative Rescale Slope).
3. **Scaling to [0, 1]** from a range fixed by the header, never by the image (``scaling="full_range"``):

   - after a VOI LUT Sequence item: ``[0, 2**n - 1]``, n its third LUT Descriptor value (bits per entry);
   - after a window: the output range pydicom's windowing writes, ``[y_min, y_max]`` = the range of Bits Stored
     (unsigned ``[0, 2**b - 1]``, signed ``[-2**(b-1), 2**(b-1) - 1]``) through Rescale Slope / Intercept, or
     ``[0, 2**n - 1]`` after a Modality LUT Sequence of n-bit entries;
   - without a VOI (none in the file, or ``apply_voi=False``): the range the modality LUT can produce from the
     Bits Stored range, computed the same way (so a 12-bit image spans 0..4095 -> 0..1 whatever it holds).

   ``scaling="min_max"`` maps the image's own minimum and maximum (after steps 1-2) to 0 and 1 instead.
   Values are clipped to [0, 1]. A VOI LUT whose descriptor says 16 bits for entries of 12 bits or fewer (as some
   CRs write) is scaled by the bits its entries use.
4. **MONOCHROME1 inverted**: ``1 - value``, so that bright means dense (bone white), as in MONOCHROME2.
5. **To uint16**: ``round(value * 65535)``: the full 16-bit range [0, 65535].

Refused with ``DicomError`` naming the file and the cause: colour or other non-grey photometric
interpretations, DX/MG/IO images "FOR PROCESSING" (raw detector data, not what a PNG was made from), a
Presentation LUT Sequence, a Presentation LUT Shape that contradicts the photometric interpretation (INVERSE with
MONOCHROME2, IDENTITY with MONOCHROME1: the DX module pairs them the other way), multi-frame files whose
functional groups carry per-frame rescale or VOI (their frames could need different mappings), LUTs whose
descriptor and data disagree (entry bits other than 8 or 10-16, fewer entries than announced), decoded values
well outside the range Bits Stored allows (a JPEG 2000 stream of 16-bit values under BitsStored 12), and an image
that is one value throughout once mapped (blank, or a window or LUT that every value falls outside of).
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset

from innereye_batch.dicom.pixel_data import bits_stored_range, stored_range_problem
from innereye_batch.errors import DicomError

Scaling = Literal["full_range", "min_max"]
SpacingSource = Literal["PixelSpacing", "ImagerPixelSpacing"]
PROJECTION_MODALITIES: tuple[str, ...] = ("CR", "DX", "MG", "RG", "IO")
"""Modalities whose images are single 2-D projections that this module maps."""
UINT16_MAX = 65535
_FOR_PROCESSING = "FOR PROCESSING"
_FUNCTIONAL_GROUP_INTENSITY = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


@dataclass(frozen=True)
class MappedPixels:
    """One frame mapped to the PNG convention, and how."""

    pixels: np.ndarray
    """uint16 (y, x), 0 = least dense (black), 65535 = most dense (white)."""
    inverted: bool
    """True when the stored values were MONOCHROME1 and were inverted."""
    voi: str
    """The VOI that was applied: ``"VOI LUT Sequence"``, ``"window C/W FUNCTION"`` or ``"none"``."""


@dataclass(frozen=True)
class ProjectionImage:
    """One 2-D projection image (or one frame of a multi-frame file) in the PNG convention, with its origin."""

    pixels: np.ndarray
    """uint16 (y, x) in the PNG convention (see the module docstring)."""
    pixel_spacing: tuple[float, float] | None
    """(row, column) spacing in mm, or None when the file gives none (or zeros)."""
    spacing_source: SpacingSource | None
    """Which attribute the spacing came from: PixelSpacing (calibrated) first, else ImagerPixelSpacing."""
    photometric_interpretation: str
    inverted: bool
    voi: str
    modality: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    frame_index: int
    """0-based frame within the file (0 for single-frame files)."""
    number_of_frames: int
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))


def stored_value_range(ds: Dataset) -> tuple[int, int]:
    """The range of stored values that Bits Stored and Pixel Representation allow."""
    return bits_stored_range(int(ds.BitsStored), int(ds.get("PixelRepresentation", 0)) == 1)


def modality_output_range(ds: Dataset) -> tuple[float, float]:
    """The range the Modality LUT (or rescale) can produce from the stored range (pydicom's windowing range)."""
    modality_lut = ds.get("ModalityLUTSequence")
    if modality_lut:
        return 0.0, float(2 ** int(modality_lut[0].LUTDescriptor[2]) - 1)
    low, high = stored_value_range(ds)
    rescale = _rescale(ds)
    if rescale is not None:
        slope, intercept = rescale
        ends = (low * slope + intercept, high * slope + intercept)
        return min(ends), max(ends)  # a negative slope maps the lowest stored value to the highest output
    return float(low), float(high)


def _rescale(ds: Dataset) -> tuple[float, float] | None:
    """(Rescale Slope, Rescale Intercept), or None: the module needs both, and a slope alone is no rescale (as
    for pydicom's ``apply_modality_lut`` and ``apply_windowing``)."""
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    return (float(slope), float(intercept)) if slope is not None and intercept is not None else None


def lut_entries(item: Dataset, ds: Dataset, what: str, *, signed_input: bool = False) -> tuple[np.ndarray, int, int]:
    """A LUT item's (entries as int64, first value mapped, bits per entry), checked against its descriptor:
    ``DicomError`` when the entry bits are not 8 or 10-16 or the data holds fewer entries than announced.
    OW data holds one entry per 16-bit word, or 8-bit entries packed one per byte. ``signed_input``: the values
    looked up can be negative, so the first value mapped is SS (PS3.3 C.11.2.1.1), even where a file wrote it
    as US (63488 for -2048: every value would fall below the table)."""
    descriptor = [int(v) for v in item.LUTDescriptor]
    if len(descriptor) != 3:
        raise DicomError(f"{what}: LUT Descriptor has {len(descriptor)} values, not 3")
    count, first, bits = descriptor[0] or 2**16, descriptor[1], descriptor[2]
    if signed_input and first >= 2**15:
        first -= 2**16
    if bits != 8 and not 10 <= bits <= 16:
        raise DicomError(f"{what}: LUT Descriptor gives {bits} bits per entry (8 or 10-16 allowed)")
    data = item.LUTData
    if isinstance(data, bytes):
        little = ds.original_encoding[1] is not False
        if bits == 8 and len(data) in (count, count + 1):  # packed bytes (an odd count is padded to even length)
            entries = np.frombuffer(data, dtype=np.uint8)[:count]
        else:
            entries = np.frombuffer(data[: len(data) // 2 * 2], dtype="<u2" if little else ">u2")
    else:
        entries = np.atleast_1d(np.asarray(data, dtype=np.int64))
    if len(entries) < count:
        raise DicomError(f"{what}: LUT Data holds {len(entries)} entries, its LUT Descriptor announces {count}")
    return entries[:count].astype(np.int64) & (2**bits - 1), first, bits


def _look_up(values: np.ndarray, entries: np.ndarray, first: int) -> np.ndarray:
    """Each value's entry: values below ``first`` get the first entry, those past the table the last."""
    index = np.clip(np.rint(values).astype(np.int64) - first, 0, len(entries) - 1)
    return entries[index]


def _voi_kind(ds: Dataset) -> str | None:
    """Which VOI ``apply_voi_lut(prefer_lut=True)`` applies: ``"lut"``, ``"window"`` or None."""
    sequence = ds.get("VOILUTSequence")
    if sequence and sequence[0].get("LUTDescriptor") is not None and sequence[0].get("LUTData") is not None:
        return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def _first(value: Any) -> float:
    """The first value of a possibly multi-valued element."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return float(value)
    return float(next(iter(value)))


def png_convention(
    stored: np.ndarray, ds: Dataset, *, apply_voi: bool = True, scaling: Scaling = "full_range"
) -> MappedPixels:
    """Map one frame's stored values (y, x) to the uint16 PNG convention (steps in the module docstring)."""
    from pydicom.pixels import apply_modality_lut, apply_windowing

    if scaling not in ("full_range", "min_max"):
        raise ValueError(f"unknown scaling {scaling!r}: use 'full_range' or 'min_max'")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric interpretation {photometric or '(missing)'} is not grey (MONOCHROME1/2)")
    signed_stored = stored_value_range(ds)[0] < 0
    if stored.size:
        problem = stored_range_problem(int(stored.min()), int(stored.max()), int(ds.BitsStored), signed_stored)
        if problem:
            raise DicomError(problem)
    modality_lut = ds.get("ModalityLUTSequence")
    if modality_lut:
        entries, first, _ = lut_entries(modality_lut[0], ds, "Modality LUT Sequence", signed_input=signed_stored)
        values = _look_up(np.asarray(stored), entries, first)
    else:
        values = apply_modality_lut(np.asarray(stored), ds)
    kind = _voi_kind(ds) if apply_voi else None
    if kind == "lut":
        signed = modality_output_range(ds)[0] < 0
        entries, first, bits = lut_entries(ds.VOILUTSequence[0], ds, "VOI LUT Sequence", signed_input=signed)
        values = _look_up(values, entries, first)
        voi = "VOI LUT Sequence"
        used = max(int(entries.max(initial=0)).bit_length(), 8)
        if bits == 16 and used <= 12:  # a descriptor claiming 16 bits for 12-bit entries (Agfa CRs write it)
            voi += f" (entries of {used} bits, though its descriptor says {bits})"
            bits = used
        low, high = 0.0, float(2**bits - 1)
    elif kind == "window":
        values = apply_windowing(values, _windowing_dataset(ds), index=0)
        low, high = modality_output_range(ds)
        if _negative_slope(ds):  # pydicom's output range runs from the lowest stored value's output: reversed
            values = np.subtract(low + high, values, out=values)  # in place: pydicom's windowing made it (float64)
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        voi = f"window {_first(ds.WindowCenter):g}/{_first(ds.WindowWidth):g} {function}"
    else:
        low, high = modality_output_range(ds)
        voi = "none"
    # float64 (float32 would round some values to the other side of .5); the steps below work in place, on a copy
    # where the array is still the caller's
    unit = np.asarray(values, dtype=np.float64)
    if np.may_share_memory(unit, stored):
        unit = unit.copy()
    del values
    if scaling == "min_max":
        low, high = float(unit.min()), float(unit.max())
    if high != low:
        unit -= low
        unit /= high - low
    else:
        unit.fill(0.0)
    np.clip(unit, 0.0, 1.0, out=unit)
    inverted = photometric == "MONOCHROME1"
    if inverted:
        np.subtract(1.0, unit, out=unit)
    unit *= UINT16_MAX
    np.rint(unit, out=unit)
    pixels = unit.astype(np.uint16)
    if pixels.size and pixels.min() == pixels.max():
        raise DicomError(
            f"every pixel is {int(pixels[0, 0])} of 65535 after the modality and VOI transforms ({voi}): the model "
            "would see a blank image"
        )
    return MappedPixels(pixels, inverted, voi)


def _windowing_dataset(ds: Dataset) -> Dataset:
    """What pydicom's ``apply_windowing`` reads, as this module means it (and a copy: it writes to its dataset).

    - No rescale where a Modality LUT Sequence replaces it: pydicom passes the LUT's output range through the
      rescale as well when a (non-conforming) file has both, shifting or reversing the window's output against
      ``modality_output_range`` (a slope of -1 inverted the image).
    - An empty VOI LUT Function is LINEAR, its default (pydicom refuses the empty value).
    """
    from pydicom import Dataset

    window = Dataset()
    keywords = ["PhotometricInterpretation", "WindowCenter", "WindowWidth", "BitsStored", "PixelRepresentation"]
    keywords += ["ModalityLUTSequence"] if ds.get("ModalityLUTSequence") else ["RescaleSlope", "RescaleIntercept"]
    for keyword in keywords:
        if keyword in ds:
            window[keyword] = ds[keyword]
    function = str(ds.get("VOILUTFunction") or "").strip()
    if function:
        window.VOILUTFunction = function
    return window


def _negative_slope(ds: Dataset) -> bool:
    """True when the rescale (without a Modality LUT Sequence) maps higher stored values lower."""
    rescale = _rescale(ds)
    return not ds.get("ModalityLUTSequence") and rescale is not None and rescale[0] < 0


def pixel_spacing_of(ds: Dataset) -> tuple[tuple[float, float] | None, SpacingSource | None]:
    """(row, column) spacing in mm and its attribute: PixelSpacing first, else ImagerPixelSpacing; zeros ignored."""
    keywords: tuple[SpacingSource, ...] = ("PixelSpacing", "ImagerPixelSpacing")
    for keyword in keywords:
        value = ds.get(keyword)
        if value is None:
            continue
        try:
            spacing = (float(value[0]), float(value[1]))
        except (TypeError, ValueError, IndexError):
            continue
        if all(np.isfinite(spacing)) and min(spacing) > 0:
            return spacing, keyword
    return None, None


def check_projection_header(ds: Dataset, modalities: Iterable[str] = PROJECTION_MODALITIES) -> str | None:
    """Why this header cannot be mapped to the PNG convention, or None when it can."""
    modality = str(ds.get("Modality", "")).strip().upper()
    accepted = [m.upper() for m in modalities]
    if modality not in accepted:
        return f"modality {modality or '(missing)'} is not one of {', '.join(accepted)}"
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(ds.get("SamplesPerPixel", 1)) != 1:
        return f"photometric interpretation {photometric or '(missing)'} is not grey (MONOCHROME1/2, one sample)"
    if "PixelData" not in ds:
        return "no Pixel Data (FloatPixelData and DoubleFloatPixelData are not projection images)"
    if str(ds.get("PresentationIntentType", "")).strip().upper() == _FOR_PROCESSING:
        return "Presentation Intent Type is FOR PROCESSING (raw detector data, not an image for presentation)"
    if ds.get("PresentationLUTSequence"):
        return "a Presentation LUT Sequence is not supported"
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    if (shape, photometric) in (("INVERSE", "MONOCHROME2"), ("IDENTITY", "MONOCHROME1")):
        return f"{photometric} with Presentation LUT Shape {shape} (contradictory polarity)"
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in ds.get(groups) or []:
            found = [k for k in _FUNCTIONAL_GROUP_INTENSITY if k in item]
            if found:
                return f"{groups} carries {found[0]} (per-frame intensity mappings are not supported)"
    return None


def projection_images(
    ds: Dataset,
    *,
    path: Path | None = None,
    modalities: Iterable[str] = PROJECTION_MODALITIES,
    apply_voi: bool = True,
    scaling: Scaling = "full_range",
    frames: Iterable[int] | None = None,
) -> list[ProjectionImage]:
    """Every frame (or the given 0-based ``frames``) of a dataset with pixel data, in the PNG convention. Only the
    frames asked for are decoded, one at a time."""
    where = str(path) if path is not None else f"SOP instance {ds.get('SOPInstanceUID', '?')}"
    problem = check_projection_header(ds, modalities)
    if problem:
        raise DicomError(f"{where}: {problem}")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    wanted = list(range(count)) if frames is None else list(frames)
    bad = [f for f in wanted if not 0 <= f < count]
    if bad:
        raise DicomError(f"{where}: frame {bad[0]} does not exist (the file has {count} frame(s))")
    spacing, source = pixel_spacing_of(ds)
    images = []
    for index in wanted:
        stored = _decode_frame(ds, index, where)
        try:
            mapped = png_convention(stored, ds, apply_voi=apply_voi, scaling=scaling)
        except DicomError as error:
            raise DicomError(f"{where}: {error}") from error
        # what pydicom's modality and window functions raise on values they cannot use (a malformed element)
        except (ValueError, NotImplementedError, AttributeError, IndexError, TypeError, struct.error) as error:
            raise DicomError(f"{where}: cannot apply its modality/VOI transforms: {error}") from error
        images.append(
            ProjectionImage(
                pixels=mapped.pixels,
                pixel_spacing=spacing,
                spacing_source=source,
                photometric_interpretation=str(ds.PhotometricInterpretation).strip().upper(),
                inverted=mapped.inverted,
                voi=mapped.voi,
                modality=str(ds.Modality).strip().upper(),
                sop_class_uid=str(ds.get("SOPClassUID", "")),
                sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
                series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
                study_instance_uid=str(ds.get("StudyInstanceUID", "")),
                frame_index=index,
                number_of_frames=count,
                path=path,
            )
        )
    return images


def _decode_frame(ds: Dataset, index: int, where: str) -> np.ndarray:
    """The stored values (y, x) of one frame, decoding only that frame (as ``ds.pixel_array[index]`` would give
    it: pydicom's decoders, unused high bits masked, signs extended)."""
    from pydicom.pixels import pixel_array

    try:
        return pixel_array(ds, index=index).reshape((int(ds.Rows), int(ds.Columns)))
    except Exception as error:  # decoders raise many types for damaged or unsupported data
        raise DicomError(f"{where}: pixel data cannot be decoded: {type(error).__name__}: {error}") from error


def read_projection_images(
    path: Path,
    *,
    modalities: Iterable[str] = PROJECTION_MODALITIES,
    apply_voi: bool = True,
    scaling: Scaling = "full_range",
    frames: Iterable[int] | None = None,
) -> list[ProjectionImage]:
    """Read one DICOM file and return each frame (or the given ``frames``) in the PNG convention."""
    import pydicom

    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the read forever
            raise DicomError(f"{path}: not a regular file (a pipe, socket or device)")
        ds = pydicom.dcmread(path)
    except DicomError:
        raise
    except Exception as error:  # pydicom raises many types for foreign or damaged files
        raise DicomError(f"{path}: cannot be read as DICOM: {type(error).__name__}: {error}") from error
    return projection_images(ds, path=path, modalities=modalities, apply_voi=apply_voi, scaling=scaling, frames=frames)
