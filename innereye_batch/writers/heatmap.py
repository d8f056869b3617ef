"""Write explanation heat maps: a PNG overlay for people, the raw map as .npy, a DICOM Secondary Capture for PACS.

``image`` is the projection image in the 16-bit PNG convention (uint16 (y, x), white = dense) and ``heatmap``
a float map on the same grid in [0, 1] (``innereye_batch.engine.explain``). The overlay shows the image in grey
(value / 257 -> 8 bits) with the map coloured by the "jet" colour scale blended in proportionally to the heat
(``alpha * heat``), so pixels without evidence show the plain image. PNG and DICOM pixels are made with numpy and
written with Pillow and highdicom, which the package already depends on (no matplotlib).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

MANUFACTURER = "innereye-batch"
SERIES_NUMBER_OFFSET = 2000
"""The Secondary Capture series number is the source's plus this (2000 when the source has none)."""
_JET = np.array(
    [
        [0.0, 0.0, 0.0, 0.5],
        [0.125, 0.0, 0.0, 1.0],
        [0.375, 0.0, 1.0, 1.0],
        [0.625, 1.0, 1.0, 0.0],
        [0.875, 1.0, 0.0, 0.0],
        [1.0, 0.5, 0.0, 0.0],
    ]
)
"""Anchor points of the jet colour scale: position, red, green, blue (linear in between)."""
_LO_MAX = 64


def _check(image: np.ndarray, heatmap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image, heatmap = np.asarray(image), np.asarray(heatmap, dtype=np.float32)
    if image.ndim != 2 or image.shape != heatmap.shape:
        raise ValueError(f"image {image.shape} and heat map {heatmap.shape} must be 2-D arrays of the same shape")
    if not np.isfinite(heatmap).all() or heatmap.min() < 0 or heatmap.max() > 1:
        raise ValueError("a heat map must hold finite values in [0, 1]")
    return image, heatmap


def colour_scale(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> float RGB in [0, 1] on the jet scale, shape (..., 3)."""
    return np.stack([np.interp(values, _JET[:, 0], _JET[:, c]) for c in (1, 2, 3)], axis=-1)


def overlay_rgb(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """uint8 RGB (y, x, 3): the grey image with the coloured heat map blended in by ``alpha * heat``."""
    image, heatmap = _check(image, heatmap)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    grey = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 65535.0)
    weight = (alpha * heatmap)[..., None]
    blended = grey[..., None] * (1.0 - weight) + colour_scale(heatmap) * weight
    return np.rint(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_heatmap_png(path: Path, image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.5) -> None:
    """Write the overlay (8-bit RGB PNG) of ``heatmap`` on ``image`` to ``path``."""
    from PIL import Image

    Image.fromarray(overlay_rgb(image, heatmap, alpha=alpha)).save(Path(path), format="PNG")


def write_heatmap_npy(path: Path, heatmap: np.ndarray) -> None:
    """Write the raw map (float32 (y, x), [0, 1], on the image grid) as a NumPy ``.npy`` file at ``path``."""
    values = np.asarray(heatmap, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"a heat map must be 2-D (y, x), got shape {values.shape}")
    with open(path, "wb") as stream:  # a file object: np.save would append ".npy" to a path without it
        np.save(stream, values, allow_pickle=False)


def write_heatmap_secondary_capture(
    path: Path,
    image: np.ndarray,
    heatmap: np.ndarray,
    source: Dataset | Path,
    *,
    frame_index: int | None = None,
    description: str = "explanation heat map",
    model_name: str = "",
    software_version: str = "",
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    alpha: float = 0.5,
    clinical_marker: str = "",
) -> Dataset:
    """Write the overlay as an RGB DICOM Secondary Capture (highdicom ``SCImage``) in the source's study; its
    series and derivation descriptions end with ``clinical_marker`` (e.g. "NOT FOR CLINICAL USE").

    ``source`` is the source image's dataset (or file; pixel data is not needed): patient and study are copied
    from it, its SOP Class / Instance UID (and ``frame_index`` + 1 for a multi-frame source) go into the Source
    Image Sequence, and its Patient Orientation and Pixel Spacing are kept (an empty Patient Orientation when it
    has none; no spacing from Imager Pixel Spacing, which is at the detector). A new series
    (``series_instance_uid`` or a new UID) numbered the source's + 2000. Returns the dataset.
    """
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    from innereye_batch.dicom.file_header import read_source_header

    if not isinstance(source, Dataset):
        source = read_source_header(source)
    pixels = overlay_rgb(image, heatmap, alpha=alpha)
    rows, columns = int(source.get("Rows", 0)), int(source.get("Columns", 0))
    if (rows, columns) != pixels.shape[:2]:
        raise ValueError(f"heat map {pixels.shape[:2]} does not match the source image's {rows} x {columns}")
    orientation = source.get("PatientOrientation")
    has_orientation = orientation is not None and len(orientation) == 2 and all(str(v) for v in orientation)
    # Pixel Spacing only: a projection's Imager Pixel Spacing is at the detector, larger than in the patient by the
    # magnification; written as Pixel Spacing, distances measured on the overlay would be too long
    spacing = source.get("PixelSpacing")
    pixel_spacing = (float(spacing[0]), float(spacing[1])) if spacing and min(map(float, spacing)) > 0 else None
    from innereye_batch.writers.dicom_seg import carry_lossy_compression, with_marker

    text = f"{model_name} {description}".strip()
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=int(source.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        pixel_spacing=pixel_spacing,  # type: ignore[arg-type]  # highdicom's annotation says int; mm are floats
        patient_orientation=tuple(str(v) for v in orientation) if has_orientation else ("L", "F"),  # type: ignore[arg-type]
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=with_marker(text, clinical_marker),
        software_versions=software_version[:_LO_MAX] or None,
    )
    if not has_orientation:
        sc[
            "PatientOrientation"
        ].value = None  # Type 2: empty = unknown, rather than an orientation the source never stated
    sc.Laterality = (
        str(source.get("Laterality") or source.get("ImageLaterality") or "").replace("U", "").replace("B", "")
    )  # Type 2C: the paired side (L or R) when the source names one, empty otherwise
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "NO"
    sc.DerivationDescription = f"{text}: heat map overlaid on the source image {clinical_marker}".strip()[:1024]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame_index is not None and int(source.get("NumberOfFrames", 1) or 1) > 1:
        reference.ReferencedFrameNumber = frame_index + 1
    sc.SourceImageSequence = [reference]
    carry_lossy_compression(sc, [source])  # its pixels are the source's, lossy where they were
    sc.save_as(Path(path), enforce_file_format=True)
    return sc
