"""Scan and load recover the exact geometry and voxels of generated series, as SimpleITK does."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.scan import scan_tree
from innereye_batch.dicom.volume import load_volume
from tests.dicom.oracle import assert_matches_truth_and_simpleitk, only_series
from tests.factory import rotation_direction, write_series

OBLIQUE_ROW, OBLIQUE_COL = rotation_direction((1.0, 2.0, 0.5), 30.0)
ORIENTATIONS = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "oblique": (tuple(OBLIQUE_ROW), tuple(OBLIQUE_COL)),
    "normal_towards_feet": ((1, 0, 0), (0, -1, 0)),
}


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_orientations_match_truth_and_simpleitk(tmp_path: Path, name: str) -> None:
    row, col = ORIENTATIONS[name]
    truth = write_series(tmp_path / name, row_direction=row, column_direction=col)
    series = only_series(tmp_path)
    assert series.problems == () and series.stack == 0
    assert_matches_truth_and_simpleitk(series, truth)


def test_order_ignores_file_names_and_instance_numbers(tmp_path: Path) -> None:
    truth = write_series(
        tmp_path,
        row_direction=OBLIQUE_ROW,
        column_direction=OBLIQUE_COL,
        instance_numbers_descending=True,
        shuffle_names=True,
        seed=3,
    )
    assert sorted(truth.paths) != list(truth.paths)  # names alone would give another order
    assert_matches_truth_and_simpleitk(only_series(tmp_path), truth)


def test_fractional_rescale_is_applied_exactly(tmp_path: Path) -> None:
    truth = write_series(tmp_path, rescale_slope=0.25, rescale_intercept=-1000.5)
    assert_matches_truth_and_simpleitk(only_series(tmp_path), truth)


def test_mr_series_without_rescale(tmp_path: Path) -> None:
    truth = write_series(tmp_path, modality="MR", spacing=(1.2, 0.5, 0.5))
    series = only_series(tmp_path)
    assert series.modality == "MR"
    assert_matches_truth_and_simpleitk(series, truth)


def test_mixed_tree_of_series_and_patients(tmp_path: Path) -> None:
    study = pydicom.uid.generate_uid()
    truths = [
        write_series(tmp_path / "p1" / "ct", study_instance_uid=study, series_number=2, shuffle_names=True),
        write_series(tmp_path / "p1" / "ct", study_instance_uid=study, series_number=1, shape=(5, 8, 8), seed=1),
        write_series(
            tmp_path / "p2" / "deep" / "mr",
            modality="MR",
            patient_id="PAT002",
            patient_name="Roe^Rick",
            row_direction=(0, 1, 0),
            column_direction=(0, 0, -1),
            seed=2,
        ),
    ]
    result = scan_tree(tmp_path, workers=3)
    assert result.skipped == ()
    by_uid = {s.series_instance_uid: s for s in result.series}
    assert set(by_uid) == {t.series_instance_uid for t in truths}
    for truth in truths:
        assert_matches_truth_and_simpleitk(by_uid[truth.series_instance_uid], truth)
    keys = [(s.study_instance_uid, s.series_number) for s in result.series]
    assert keys == sorted(keys)


def test_series_split_by_orientation_and_size(tmp_path: Path) -> None:
    same = {
        "series_instance_uid": pydicom.uid.generate_uid(),
        "study_instance_uid": pydicom.uid.generate_uid(),
        "frame_of_reference_uid": pydicom.uid.generate_uid(),
    }
    axial = write_series(tmp_path / "a", **same)  # type: ignore[arg-type]
    sagittal = write_series(
        tmp_path / "b",
        row_direction=(0, 1, 0),
        column_direction=(0, 0, -1),
        seed=1,
        **same,  # type: ignore[arg-type]
    )
    small = write_series(tmp_path / "c", shape=(4, 6, 6), origin=(0, 0, 300), seed=2, **same)  # type: ignore[arg-type]
    result = scan_tree(tmp_path)
    assert [s.stack for s in result.series] == [1, 2, 3]
    assert len({s.key for s in result.series}) == 3
    for truth in (axial, sagittal, small):
        (series,) = [s for s in result.series if s.files == truth.paths]
        assert series.geometry.is_close(truth.geometry)
        np.testing.assert_array_equal(load_volume(series).array, truth.voxels)


def test_projection_image_is_a_2d_series_like_simpleitk(tmp_path: Path) -> None:
    truth = write_series(tmp_path / "src", shape=(1, 12, 10), seed=4)
    ds = pydicom.dcmread(truth.paths[0])
    ds.Modality = "CR"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.ComputedRadiographyImageStorage
    del ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing
    ds.ImagerPixelSpacing = ["0.2", "0.3"]
    shutil.rmtree(tmp_path / "src")
    ds.save_as(tmp_path / "cr.dcm", enforce_file_format=True)
    series = only_series(tmp_path)
    assert series.modality == "CR" and series.is_loadable
    expected = Geometry((1, 12, 10), (1.0, 0.2, 0.3), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert series.geometry.is_close(expected)
    image = sitk.ReadImage(str(tmp_path / "cr.dcm"), sitk.sitkFloat32)
    assert Geometry.from_sitk(image).is_close(series.geometry)
    np.testing.assert_array_equal(load_volume(series).array, truth.voxels)
