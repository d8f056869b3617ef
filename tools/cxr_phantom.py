"""Synthetic chest X-rays (with or without a nodule-like disc) and their encoding as CR / DX DICOM.

``make_chest(seed)`` draws a frontal chest radiograph on a (y, x) grid as "density" in [0, 1] (MONOCHROME2
display values: 0 black air, 1 white bone): a body silhouette, two dark lung fields, a bright mediastinum and
heart, curved rib bands over the lungs, clavicles, smooth exposure variation and noise; positive images add one
soft-edged disc inside a lung field. Everything is drawn from ``seed``, so a seed is an image.

``projection_dataset`` writes stored values as a CR, DX, MG, RG or IO image with pydicom (MONOCHROME1 or 2, 8 to
16 bits, optional window, VOI LUT Sequence, rescale or modality LUT, several frames): the tests use it for
generated files and ``tools/make_cxr_sample.py`` for the sample scans. Patient data is synthetic.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

IMAGE_SHAPE = (256, 256)
PIXEL_SPACING_MM = 1.4
NODULE_RADIUS_PX = (10.0, 16.0)
NODULE_CONTRAST = (0.10, 0.16)
NOISE_SD = 0.012

SOP_CLASSES = {
    "CR": UID("1.2.840.10008.5.1.4.1.1.1"),  # Computed Radiography Image Storage
    "DX": UID("1.2.840.10008.5.1.4.1.1.1.1"),  # Digital X-Ray Image Storage - For Presentation
    "MG": UID("1.2.840.10008.5.1.4.1.1.1.2"),  # Digital Mammography X-Ray Image Storage - For Presentation
    "IO": UID("1.2.840.10008.5.1.4.1.1.1.3"),  # Digital Intra-Oral X-Ray Image Storage - For Presentation
    "RG": UID("1.2.840.10008.5.1.4.1.1.7"),  # Secondary Capture Image Storage
}
MULTI_FRAME_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.7.3")


@dataclass(frozen=True)
class Chest:
    """One synthetic chest radiograph and the truth about it."""

    density: np.ndarray
    """float64 (y, x) in [0, 1], MONOCHROME2 display values."""
    has_nodule: bool
    nodule_mask: np.ndarray
    """bool (y, x): pixels whose centre lies inside the nodule disc (all False without a nodule)."""
    nodule_centre: tuple[float, float] | None
    """(y, x) in pixels."""
    nodule_radius: float | None


def _ellipse(yy: np.ndarray, xx: np.ndarray, centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    return ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2


def _soft(inside: np.ndarray, edge: float = 0.08) -> np.ndarray:
    """1 inside an implicit shape (value < 1), 0 outside, with a smooth edge of relative width ``edge``."""
    return 1.0 / (1.0 + np.exp((np.sqrt(np.maximum(inside, 0.0)) - 1.0) / edge))


def make_chest(seed: int, *, shape: tuple[int, int] = IMAGE_SHAPE, nodule: bool | None = None) -> Chest:
    """A synthetic chest radiograph; ``nodule`` None decides at random (half of the seeds).

    The coin is drawn either way, so ``make_chest(seed, nodule=make_chest(seed).has_nodule)`` is the same chest.
    """
    rng = np.random.default_rng(seed)
    coin = rng.random()
    has_nodule = bool(coin < 0.5) if nodule is None else nodule
    height, width = shape
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    scale = rng.uniform(0.9, 1.05)
    cy, cx = height * rng.uniform(0.5, 0.56), width * rng.uniform(0.47, 0.53)

    body = _soft(_ellipse(yy, xx, (cy + 0.08 * height, cx), (0.55 * height * scale, 0.44 * width * scale)), 0.04)
    lung_ry, lung_rx = 0.30 * height * scale, 0.14 * width * scale
    lung_dx = 0.19 * width * scale * rng.uniform(0.95, 1.05)
    lungs = []
    for side in (-1, 1):
        centre = (cy - 0.02 * height + rng.normal(0, 2.0), cx + side * lung_dx + rng.normal(0, 2.0))
        lungs.append((centre, _soft(_ellipse(yy, xx, centre, (lung_ry * rng.uniform(0.95, 1.05), lung_rx)), 0.1)))
    lung_field = np.clip(lungs[0][1] + lungs[1][1], 0.0, 1.0)
    mediastinum = _soft(_ellipse(yy, xx, (cy, cx), (0.34 * height * scale, 0.075 * width * scale)), 0.12)
    heart_centre = (cy + 0.12 * height, cx + 0.04 * width * rng.uniform(0.5, 1.5))
    heart = _soft(_ellipse(yy, xx, heart_centre, (0.13 * height * scale, 0.13 * width * scale)), 0.12)

    soft_tissue = rng.uniform(0.50, 0.58)
    density = 0.06 + body * (soft_tissue - 0.06)
    density -= lung_field * rng.uniform(0.28, 0.34)
    density = np.maximum(density, 0.06 + 0.12 * body)
    density += np.maximum(mediastinum, heart) * (1.0 - lung_field * 0.6) * rng.uniform(0.16, 0.22)
    # Ribs: bands curving down from the spine, on both sides, brightest over the lungs.
    period = height * rng.uniform(0.085, 0.1)
    phase = rng.uniform(0, 2 * np.pi)
    curve = 0.0022 * (xx - cx) ** 2 / scale
    ribs = np.maximum(np.sin(2 * np.pi * (yy - curve) / period + phase), 0.0) ** 3
    density += ribs * body * (0.3 + 0.7 * lung_field) * rng.uniform(0.05, 0.08)
    # Clavicles across the top of the lungs.
    for side in (-1, 1):
        clavicle_y = cy - 0.30 * height * scale + side * 0.0 + 0.12 * np.abs(xx - cx) * 0.15
        clavicle = np.exp(-(((yy - clavicle_y) / 3.0) ** 2)) * (side * (xx - cx) > 8) * (np.abs(xx - cx) < 0.36 * width)
        density += clavicle * 0.08
    # Smooth exposure variation across the detector.
    gy, gx = rng.normal(0, 0.04, size=2)
    density += gy * (yy / height - 0.5) + gx * (xx / width - 0.5)

    mask = np.zeros(shape, dtype=bool)
    centre_px: tuple[float, float] | None = None
    radius: float | None = None
    if has_nodule:
        lung_centre, lung = lungs[int(rng.integers(0, 2))]
        radius = float(rng.uniform(*NODULE_RADIUS_PX))
        for _ in range(100):  # a centre well inside the chosen lung field
            candidate = (
                lung_centre[0] + rng.uniform(-0.6, 0.6) * lung_ry,
                lung_centre[1] + rng.uniform(-0.5, 0.5) * lung_rx,
            )
            if lung[round(candidate[0]), round(candidate[1])] > 0.95:
                break
        centre_px = candidate
        distance = np.sqrt((yy - centre_px[0]) ** 2 + (xx - centre_px[1]) ** 2)
        mask = distance <= radius
        density += rng.uniform(*NODULE_CONTRAST) / (1.0 + np.exp((distance - radius) / 1.2))

    density += rng.normal(0.0, NOISE_SD, size=shape)
    return Chest(np.clip(density, 0.0, 1.0), has_nodule, mask, centre_px, radius)


def quantise(density: np.ndarray, bits_stored: int) -> np.ndarray:
    """Stored MONOCHROME2 values of ``density`` at ``bits_stored`` bits (unsigned, full range)."""
    return np.rint(density * (2**bits_stored - 1)).astype(np.uint16 if bits_stored > 8 else np.uint8)


def identity_voi_lut(bits_stored: int, lut_bits: int = 16) -> tuple[int, int, np.ndarray]:
    """(first mapped value, bits per entry, data) of a VOI LUT that spreads the stored range over its output."""
    entries = 2**bits_stored
    data = np.rint(np.arange(entries) * (2**lut_bits - 1) / (entries - 1)).astype(np.uint16)
    return 0, lut_bits, data


def projection_dataset(
    stored: np.ndarray,
    *,
    modality: str = "CR",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    signed: bool = False,
    window: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
    voi_function: str | None = None,
    voi_lut: tuple[int, int, np.ndarray] | None = None,
    rescale: tuple[float, float] | None = None,
    modality_lut: tuple[int, int, np.ndarray] | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    imager_pixel_spacing: tuple[float, float] | None = (PIXEL_SPACING_MM, PIXEL_SPACING_MM),
    presentation_intent: str | None = "FOR PRESENTATION",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = 1,
    instance_number: int = 1,
    description: str = "synthetic chest",
) -> Dataset:
    """A projection image dataset (file meta included) holding ``stored`` ((y, x) or (frames, y, x)).

    ``window`` is one (center, width) or several; ``voi_lut`` and ``modality_lut`` are (first mapped value,
    bits per entry, data). Several frames are written as Multi-frame Grayscale Word Secondary Capture.
    """
    stored = np.asarray(stored)
    frames = stored.shape[0] if stored.ndim == 3 else 1
    bits_allocated = 8 if bits_stored <= 8 else 16
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}
    sop_class = MULTI_FRAME_SOP_CLASS if frames > 1 else SOP_CLASSES[modality]
    sop_uid = UID(sop_instance_uid) if sop_instance_uid else generate_uid()
    now = datetime.datetime(2024, 5, 17, 10, 30)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName, ds.PatientID = "Phantom^CXR", "PHANTOM-CXR"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.StudyDate, ds.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "CXR1", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, instance_number
    ds.SeriesDescription = description
    ds.Manufacturer = "innereye-batch synthetic"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if presentation_intent is not None and modality in ("DX", "MG", "IO"):
        ds.PresentationIntentType = presentation_intent
    ds.Rows, ds.Columns = int(stored.shape[-2]), int(stored.shape[-1])
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = "100"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if modality in ("DX", "MG", "IO"):  # the DX Image module's Type 1 attributes
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
        ds.ImageLaterality = "U"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
        ds.LossyImageCompression = "00"
        ds.DetectorType = "SCINTILLATOR"
        ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
        ds.AnatomicRegionSequence = [_code("43799004", "SCT", "Chest")]
        ds.ViewCodeSequence = [_code("399348003", "SCT", "postero-anterior")]
        ds.BurnedInAnnotation = "NO"
        ds.PositionerType = ""
        ds.AcquisitionContextSequence = []
        ds.PatientOrientation = ["L", "F"]
        if rescale is None and modality_lut is None:
            rescale = (1.0, 0.0)
    if pixel_spacing is not None:
        ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    if imager_pixel_spacing is not None:
        ds.ImagerPixelSpacing = [f"{v:g}" for v in imager_pixel_spacing]
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = f"{rescale[0]:g}", f"{rescale[1]:g}"
        ds.RescaleType = "US"
    if modality_lut is not None:
        ds.ModalityLUTSequence = [_lut_item(*modality_lut, explanation="synthetic modality LUT")]
        ds.ModalityLUTSequence[0].ModalityLUTType = "US"
    if window is not None:
        pairs: list[tuple[float, float]] = (
            [window] if isinstance(window[0], int | float) else list(window)  # type: ignore[list-item, arg-type]
        )
        centers, widths = [f"{c:g}" for c, _ in pairs], [f"{w:g}" for _, w in pairs]
        ds.WindowCenter = centers if len(pairs) > 1 else centers[0]
        ds.WindowWidth = widths if len(pairs) > 1 else widths[0]
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        ds.VOILUTSequence = [_lut_item(*voi_lut, explanation="synthetic VOI LUT")]
    ds.PixelData = stored.astype(dtype[(bits_allocated, signed)]).tobytes()
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _lut_item(first: int, bits: int, data: np.ndarray, *, explanation: str) -> Dataset:
    item = Dataset()
    entries = len(data)
    item.LUTDescriptor = [entries if entries < 65536 else 0, first, bits]
    item.LUTExplanation = explanation
    item["LUTDescriptor"].VR = "US" if first >= 0 else "SS"
    item.LUTData = np.asarray(data, dtype=np.uint16).tobytes()
    item["LUTData"].VR = "OW"
    return item
