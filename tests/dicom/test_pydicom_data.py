"""Real files that no one here wrote (shipped with pydicom) scan without crashing and load where loadable."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.scan import scan_tree
from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.dicom.volume import load_volume
from innereye_batch.errors import SeriesError
from tests.dicom.oracle import only_series

# The folder itself, not get_testdata_files(): that would try to download pydicom's optional files.
TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
DICOMDIR_TESTS = TEST_FILES / "dicomdirtests"


def read_with_simpleitk(series: SeriesInfo) -> sitk.Image:
    if len(series.files) == 1:
        return sitk.ReadImage(str(series.files[0]), sitk.sitkFloat32)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    return reader.Execute()


def test_dicomdir_tree_of_ct_mr_and_cr_matches_simpleitk() -> None:
    result = scan_tree(DICOMDIR_TESTS)
    assert len(result.series) == 24
    assert {s.modality for s in result.series} == {"CT", "MR", "CR"}
    skipped = {s.path.name: s.reason for s in result.skipped}
    assert skipped["DICOMDIR"].startswith("DICOMDIR") and skipped["DICOMDIR-bigEnd"].startswith("DICOMDIR")
    headers_only = [s for s in result.skipped if s.path.name.startswith("IM0000")]
    assert len(headers_only) == 50 and all(s.reason.startswith("no pixel data") for s in headers_only)
    (gapped,) = [s for s in result.series if len(s.files) == 4]
    assert gapped.fatal_problems[0].kind == "missing_slices"
    (volume_series,) = [s for s in result.series if len(s.files) == 5]
    assert volume_series.geometry.spacing[0] == pytest.approx(2.5)
    radial = [s for s in result.series if s.series_instance_uid.endswith(".118")]
    assert sorted(s.stack for s in radial) == list(range(1, 8))  # seven orientations, seven stacks
    for series in result.series:
        if not series.is_loadable:
            continue
        volume = load_volume(series)
        image = read_with_simpleitk(series)
        assert Geometry.from_sitk(image).is_close(series.geometry), series.key
        if series.modality != "CR":  # SimpleITK inverts MONOCHROME1; we keep modality values (see below)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume.array)


def test_cr_monochrome1_keeps_rescaled_stored_values() -> None:
    path = DICOMDIR_TESTS / "77654033" / "CR1" / "6154"
    series = only_series(path.parent)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(load_volume(series).array[0], expected.astype(np.float32))


def test_ct_small_matches_simpleitk() -> None:
    result = scan_tree(TEST_FILES)
    (series,) = [s for s in result.series if s.files == (TEST_FILES / "CT_small.dcm",)]
    image = read_with_simpleitk(series)
    assert Geometry.from_sitk(image).is_close(series.geometry)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), load_volume(series).array)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_padded.dcm",
        "MR_small_expb.dcm",
    ],
)
def test_mr_small_variants_decode_like_the_uncompressed_file(tmp_path: Path, name: str) -> None:
    for file in ("MR_small.dcm", name):
        (tmp_path / file).mkdir()
        shutil.copy(TEST_FILES / file, tmp_path / file / file)
    reference = load_volume(only_series(tmp_path / "MR_small.dcm"))
    variant = only_series(tmp_path / name)
    assert variant.geometry.is_close(reference.geometry)
    np.testing.assert_array_equal(load_volume(variant).array, reference.array)


def test_truncated_mr_is_skipped(tmp_path: Path) -> None:
    shutil.copy(TEST_FILES / "MR_truncated.dcm", tmp_path)
    result = scan_tree(tmp_path)
    assert result.series == ()
    assert result.skipped[0].reason.startswith("truncated file")


def test_whole_test_folder_scans_and_every_series_loads_or_fails_cleanly() -> None:
    result = scan_tree(TEST_FILES)
    assert len(result.series) > 20 and len(result.skipped) > 20
    reasons = {s.path.name: s.reason for s in result.skipped}
    assert reasons["SC_rgb_rle.dcm"].startswith("colour image (RGB")
    assert reasons["rtplan.dcm"].startswith("no pixel data")
    assert reasons["liver_1frame.dcm"].startswith("segmentation object")
    loaded = failed = 0
    for series in result.series:
        try:
            volume = load_volume(series)
        except SeriesError as error:  # the only exception the loader may raise
            assert error.reason
            failed += 1
            continue
        assert volume.array.shape == series.geometry.shape
        assert np.isfinite(volume.array).all()
        loaded += 1
    assert loaded >= 30 and failed >= 2


def test_lossy_jpeg_extended_decodes_close_to_simpleitk() -> None:
    result = scan_tree(TEST_FILES)
    (series,) = [s for s in result.series if s.files == (TEST_FILES / "JPGExtended.dcm",)]
    volume = load_volume(series)
    image = read_with_simpleitk(series)
    assert Geometry.from_sitk(image).is_close(series.geometry)
    assert np.abs(sitk.GetArrayFromImage(image) - volume.array).max() <= 1.0  # lossy: decoders may round apart
