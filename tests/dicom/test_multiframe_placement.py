"""Frames of multi-frame files are placed as the file says, or not at all: RT Dose's GridFrameOffsetVector in both
of its forms (checked against SimpleITK), and enhanced files whose per-frame items do not match NumberOfFrames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RTDoseStorage, generate_uid

from innereye_batch.dicom.volume import load_volume
from innereye_batch.errors import SeriesError
from tests.dicom.oracle import only_series
from tests.factory import write_enhanced_series

FRAMES, ROWS, COLUMNS = 4, 6, 5


def write_dose(folder: Path, offsets: list[float], origin: tuple[float, float, float]) -> np.ndarray:
    """One RT Dose file of 4 axial frames 3 mm apart, placed by ``offsets``; returns its stored values."""
    folder.mkdir(parents=True)
    stored = (np.arange(FRAMES * ROWS * COLUMNS).reshape(FRAMES, ROWS, COLUMNS) * 10).astype(np.uint32)
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = RTDoseStorage, uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RTDoseStorage, uid, "RTDOSE"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (generate_uid() for _ in range(3))
    ds.PatientID, ds.SeriesNumber = "P1", 1
    ds.ImagePositionPatient = [f"{v:g}" for v in origin]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["2", "2.5"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = ROWS, COLUMNS, FRAMES
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.GridFrameOffsetVector = [f"{v:g}" for v in offsets]
    ds.FrameIncrementPointer = 0x3004000C
    # a scaling of 1: the stored values are the doses (another scaling is refused: volumes do not apply it)
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType, ds.DoseGridScaling = "GY", "PHYSICAL", "PLAN", "1"
    ds.PixelData = stored.tobytes()
    ds.save_as(folder / "dose.dcm", enforce_file_format=True)
    return stored


@pytest.mark.parametrize(
    "offsets",
    [[0.0, 3.0, 6.0, 9.0], [30.0, 33.0, 36.0, 39.0]],
    ids=["relative to ImagePositionPatient", "absolute z coordinates"],
)
def test_dose_grid_placed_as_simpleitk_places_it(tmp_path: Path, offsets: list[float]) -> None:
    stored = write_dose(tmp_path / "dose", offsets, origin=(-10.0, -20.0, 30.0))
    series = only_series(tmp_path / "dose")
    assert not series.problems
    assert [ref.position[2] for ref in series.slices] == pytest.approx([30.0, 33.0, 36.0, 39.0])
    volume = load_volume(series)
    oracle = sitk.ReadImage(str(tmp_path / "dose" / "dose.dcm"), sitk.sitkFloat64)
    assert volume.geometry.origin == pytest.approx(oracle.GetOrigin())
    assert volume.geometry.spacing == pytest.approx(tuple(reversed(oracle.GetSpacing())))
    np.testing.assert_array_equal(volume.array, stored)


def test_dose_grid_of_neither_form_is_not_placed(tmp_path: Path) -> None:
    write_dose(tmp_path / "dose", [12.0, 15.0, 18.0, 21.0], origin=(-10.0, -20.0, 30.0))
    series = only_series(tmp_path / "dose")
    assert [(p.kind, p.fatal) for p in series.problems] == [("no_position", True)]
    assert "GridFrameOffsetVector starts at 12 mm, neither 0" in series.problems[0].message
    assert "its 30 mm along the slice normal" in series.problems[0].message
    with pytest.raises(SeriesError, match="no_position"):
        load_volume(series)


def test_dose_grid_with_too_few_offsets_is_not_placed(tmp_path: Path) -> None:
    write_dose(tmp_path / "dose", [0.0, 3.0, 6.0], origin=(0.0, 0.0, 0.0))
    series = only_series(tmp_path / "dose")
    assert [(p.kind, p.fatal) for p in series.problems] == [("no_position", True)]
    assert "GridFrameOffsetVector is not 4 finite numbers, one per frame" in series.problems[0].message


@pytest.mark.parametrize("items", [5, 7])
def test_enhanced_file_whose_frame_items_miss_frames_is_not_placed(tmp_path: Path, items: int) -> None:
    path = tmp_path / "e" / "enhanced.dcm"
    write_enhanced_series(path, shape=(6, 10, 8))
    ds = pydicom.dcmread(path)
    groups = list(ds.PerFrameFunctionalGroupsSequence)
    ds.PerFrameFunctionalGroupsSequence = (groups + groups)[:items]
    ds.save_as(path, enforce_file_format=True)
    series = only_series(tmp_path / "e")
    assert len(series.slices) == 6  # every frame of the file, none silently dropped
    assert [(p.kind, p.fatal) for p in series.problems] == [("no_position", True)]
    assert f"PerFrameFunctionalGroupsSequence has {items} items for NumberOfFrames 6" in series.problems[0].message
    with pytest.raises(SeriesError, match="no_position"):
        load_volume(series)
