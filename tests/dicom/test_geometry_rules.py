"""Rule 1 of issue 14: geometry is never invented (pixel spacing, slice spacing, position, orientation), rescale
and voxels are checked, and what outputs need is found at scan time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from innereye_batch.dicom.scan import scan_tree
from innereye_batch.dicom.volume import load_volume
from innereye_batch.errors import SeriesError
from tests.dicom.oracle import assert_matches_truth_and_simpleitk, only_series
from tests.factory import write_series


def kinds(series: object) -> dict[str, bool]:
    return {p.kind: p.fatal for p in series.problems}  # type: ignore[attr-defined]


def message(series: object, kind: str) -> str:
    (found,) = [p.message for p in series.problems if p.kind == kind]  # type: ignore[attr-defined]
    return found


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (["0", "0"], "PixelSpacing 0\\0"),
        (["-0.7", "0.7"], "PixelSpacing -0.7\\0.7"),
        (["nan", "0.7"], "PixelSpacing nan\\0.7"),
        (None, "PixelSpacing missing"),
    ],
)
def test_cross_sectional_pixel_spacing_is_never_guessed(tmp_path: Path, value: list[str] | None, shown: str) -> None:
    def edit(k: int, ds: Dataset) -> None:
        if value is None:
            del ds.PixelSpacing
        elif k == 3:  # one slice is enough
            ds.PixelSpacing = value

    write_series(tmp_path, edit=edit)
    series = only_series(tmp_path)
    assert kinds(series) == {"invalid_pixel_spacing": True}
    assert message(series, "invalid_pixel_spacing").startswith(f"{shown} in IM0003.dcm" if value else shown)
    assert series.pixel_spacing_source == "unknown"
    with pytest.raises(SeriesError, match="invalid_pixel_spacing"):
        load_volume(series)


def projection(ds: Dataset, *, pixel: list[str] | None, imager: list[str] | None) -> None:
    ds.Modality = "DX"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    del ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing, ds.FrameOfReferenceUID
    if pixel:
        ds.PixelSpacing = pixel
    if imager:
        ds.ImagerPixelSpacing = imager


@pytest.mark.parametrize(
    ("pixel", "imager", "source", "spacing", "problems"),
    [
        (["0.2", "0.3"], ["0.25", "0.35"], "PixelSpacing", (0.2, 0.3), {}),
        (None, ["0.25", "0.35"], "ImagerPixelSpacing", (0.25, 0.35), {}),
        (["0", "0"], ["0.25", "0.35"], "ImagerPixelSpacing", (0.25, 0.35), {}),
        (None, None, "unknown", (1.0, 1.0), {"unknown_pixel_spacing": False}),
    ],
)
def test_projection_image_spacing_falls_back_on_imager_pixel_spacing_and_says_so(
    tmp_path: Path, pixel: list[str] | None, imager: list[str] | None, source: str, spacing: tuple, problems: dict
) -> None:
    truth = write_series(tmp_path, shape=(1, 12, 10), edit=lambda k, ds: projection(ds, pixel=pixel, imager=imager))
    series = only_series(tmp_path)
    assert series.pixel_spacing_source == source
    assert series.geometry.spacing[1:] == pytest.approx(spacing)
    assert kinds(series) == {**problems, "no_frame_of_reference": False}
    np.testing.assert_array_equal(load_volume(series).array, truth.voxels)  # classification needs no mm


@pytest.mark.parametrize(
    ("between", "thickness", "spacing", "source"),
    [("3.5", "2.5", 3.5, "SpacingBetweenSlices"), (None, "2.5", 2.5, "SliceThickness"), (None, None, 1.0, "unknown")],
)
def test_single_slice_z_spacing_is_never_silently_1_mm(
    tmp_path: Path, between: str | None, thickness: str | None, spacing: float, source: str
) -> None:
    def edit(k: int, ds: Dataset) -> None:
        del ds.SliceThickness
        if between:
            ds.SpacingBetweenSlices = between
        if thickness:
            ds.SliceThickness = thickness

    write_series(tmp_path, shape=(1, 12, 10), edit=edit)
    series = only_series(tmp_path)
    assert series.slice_spacing_source == source and series.geometry.spacing[0] == spacing
    assert kinds(series) == ({"unknown_slice_spacing": False} if source == "unknown" else {})


def test_images_without_position_are_one_stack_that_says_why(tmp_path: Path) -> None:
    write_series(tmp_path, shape=(24, 8, 8), edit=lambda k, ds: delattr(ds, "ImagePositionPatient"))
    series = only_series(tmp_path)
    assert series.key == series.series_instance_uid and len(series.slices) == 24
    assert kinds(series) == {"no_position": True}
    assert message(series, "no_position") == "ImagePositionPatient missing in 24 of 24 images"
    with pytest.raises(SeriesError, match="ImagePositionPatient missing in 24 of 24 images"):
        load_volume(series)


@pytest.mark.parametrize(
    ("cosines", "kind", "text"),
    [
        (["1", "0", "0", "0.31", "0.95073", "0"], "invalid_orientation", "not orthogonal: row.col = 0.31"),
        (["0.5", "0", "0", "0", "1", "0"], "invalid_orientation", "not unit vectors: |row| = 0.5, |column| = 1"),
        (None, "no_orientation", "missing"),
    ],
)
def test_unusable_orientation_is_fatal_and_measured(
    tmp_path: Path, cosines: list[str] | None, kind: str, text: str
) -> None:
    def edit(k: int, ds: Dataset) -> None:
        if cosines is None:
            del ds.ImageOrientationPatient
        else:
            ds.ImageOrientationPatient = cosines

    write_series(tmp_path, shape=(6, 8, 8), edit=edit)
    series = only_series(tmp_path)
    assert kinds(series) == {kind: True}
    assert message(series, kind) == f"ImageOrientationPatient {text} in 6 of 6 images"
    assert not series.is_loadable


def test_one_unplaced_image_makes_its_series_fatal_too(tmp_path: Path) -> None:
    truth = write_series(
        tmp_path, shape=(8, 8, 8), edit=lambda k, ds: delattr(ds, "ImagePositionPatient") if k == 0 else None
    )
    placed, unplaced = sorted(scan_tree(tmp_path).series, key=lambda s: s.key)
    assert placed.key == truth.series_instance_uid and unplaced.key == truth.series_instance_uid + ".unplaced"
    assert kinds(placed) == {"images_without_geometry": True}
    assert f"split off as {unplaced.key}" in message(placed, "images_without_geometry")
    assert kinds(unplaced) == {"no_position": True} and len(unplaced.slices) == 1


@pytest.mark.parametrize(
    ("slope", "intercept", "shown"),
    [("NaN", "-1024", "RescaleSlope NaN"), ("0", "-1024", "RescaleSlope 0"), ("1", "inf", "RescaleIntercept inf")],
)
def test_unusable_rescale_is_refused_at_scan_time(tmp_path: Path, slope: str, intercept: str, shown: str) -> None:
    def edit(k: int, ds: Dataset) -> None:
        if k == 5:
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept

    write_series(tmp_path, edit=edit)
    series = only_series(tmp_path)
    assert kinds(series) == {"invalid_rescale": True}
    assert message(series, "invalid_rescale") == f"{shown} in IM0005.dcm (1 of 8 images)"
    with pytest.raises(SeriesError, match="invalid_rescale"):
        load_volume(series)


@pytest.mark.parametrize("slope", ["0", "nan"])
def test_unusable_rescale_written_after_the_scan_is_refused_at_load(tmp_path: Path, slope: str) -> None:
    truth = write_series(tmp_path)
    series = only_series(tmp_path)
    ds = pydicom.dcmread(truth.paths[2])
    ds.RescaleSlope = slope
    ds.save_as(truth.paths[2], enforce_file_format=True)  # size and mtime change: the file is parsed again
    with pytest.raises(SeriesError, match="unusable rescale") as error:
        load_volume(series)
    assert str(truth.paths[2]) in error.value.reason


def test_float_pixel_data_holding_nan_is_refused_at_load(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(3, 6, 5))
    ds = pydicom.dcmread(truth.paths[1])
    values = np.zeros((6, 5), dtype=np.float32)
    values[2, 3] = np.nan
    del ds.PixelData, ds.RescaleSlope, ds.RescaleIntercept
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    del ds.PixelRepresentation
    ds.FloatPixelData = values.tobytes()
    ds.save_as(truth.paths[1], enforce_file_format=True)
    series = only_series(tmp_path)
    assert series.is_loadable
    with pytest.raises(SeriesError, match=r"1 voxel\(s\) are not finite .* first in IM0001.dcm"):
        load_volume(series)


def test_missing_frame_of_reference_is_reported_at_scan_time(tmp_path: Path) -> None:
    truth = write_series(tmp_path, edit=lambda k, ds: delattr(ds, "FrameOfReferenceUID"))
    series = only_series(tmp_path)
    assert kinds(series) == {"no_frame_of_reference": False}  # a NIfTI-only run does not need it
    assert series.is_loadable
    np.testing.assert_array_equal(load_volume(series).array, truth.voxels)


def test_clean_series_has_no_problem_and_records_its_sources(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shuffle_names=True)
    series = only_series(tmp_path)
    assert series.problems == () and series.split_by == {} and series.key == truth.series_instance_uid
    assert (series.pixel_spacing_source, series.slice_spacing_source) == ("PixelSpacing", "positions")
    assert_matches_truth_and_simpleitk(series, truth)
