"""Real files that no one here wrote (shipped with pydicom and in the pydicom-data package) scan without crashing,
and every series we accept equals SimpleITK's reading of it."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import data_store
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from innereye_batch.dicom.scan import scan_tree
from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.dicom.volume import load_volume
from innereye_batch.errors import SeriesError
from tests.dicom.oracle import assert_geometry_matches_simpleitk, one_folder_per_file, only_series, right_handed

# The folder itself, not get_testdata_files(): that would try to download pydicom's optional files.
TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
DICOMDIR_TESTS = TEST_FILES / "dicomdirtests"
PYDICOM_DATA = Path(data_store.__file__).parent / "data"
"""The pydicom-data package's files (68 real files from many vendors and tools)."""


def read_with_simpleitk(series: SeriesInfo) -> sitk.Image:
    if len(series.files) == 1:
        return sitk.ReadImage(str(series.files[0]), sitk.sitkFloat32)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    return reader.Execute()


def assert_equals_simpleitk(series: SeriesInfo, *, voxels: bool = True) -> None:
    volume = load_volume(series)
    image = read_with_simpleitk(series)
    assert_geometry_matches_simpleitk(series, image)
    if voxels:
        _, expected = right_handed(image)
        np.testing.assert_array_equal(expected, volume.array, err_msg=series.key)


@pytest.fixture(scope="module")
def test_files_apart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pydicom's flat test folder with each file in a folder of its own, as hospital exports keep series apart."""
    files = [p for p in sorted(TEST_FILES.iterdir()) if p.is_file()]
    return one_folder_per_file(files, tmp_path_factory.mktemp("apart"))


def test_dicomdir_tree_of_ct_mr_and_cr_matches_simpleitk() -> None:
    result = scan_tree(DICOMDIR_TESTS)
    assert len(result.series) == 25  # 24 with images, and the one whose 50 files all lack pixel data
    (unreadable,) = [s for s in result.series if not s.slices]
    assert [(p.kind, p.fatal) for p in unreadable.problems] == [("no_readable_images", True)]
    assert "none of its 50 file(s) can be read" in unreadable.problems[0].message
    assert {s.modality for s in result.series} == {"CT", "MR", "CR"}
    skipped = {s.path.name: s.reason for s in result.skipped}
    assert skipped["DICOMDIR"].startswith("DICOMDIR") and skipped["DICOMDIR-bigEnd"].startswith("DICOMDIR")
    headers_only = [s for s in result.skipped if s.path.name.startswith("IM0000")]
    assert len(headers_only) == 50 and all(s.reason.startswith("no pixel data") for s in headers_only)
    (gapped,) = [s for s in result.series if len(s.files) == 4]
    assert gapped.fatal_problems[0].kind == "missing_slices"
    (volume_series,) = [s for s in result.series if len(s.files) == 5]
    assert volume_series.geometry.spacing[0] == pytest.approx(2.5)
    assert [p.kind for p in volume_series.problems] == ["possibly_incomplete"]  # InstanceNumbers 6-10
    radial = [s for s in result.series if s.series_instance_uid.endswith(".118")]
    assert sorted(s.stack for s in radial) == list(range(1, 8))  # seven orientations, seven stacks
    for series in result.series:
        if series.is_loadable:  # SimpleITK inverts MONOCHROME1 CR; the 2-D loader decides for projections
            assert_equals_simpleitk(series, voxels=series.modality != "CR")


def test_cr_monochrome1_keeps_rescaled_stored_values() -> None:
    path = DICOMDIR_TESTS / "77654033" / "CR1" / "6154"
    series = only_series(path.parent)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert not series.inverts_monochrome1
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(load_volume(series).array[0], expected.astype(np.float32))


def test_ct_small_matches_simpleitk(test_files_apart: Path) -> None:
    series = only_series(test_files_apart / "CT_small.dcm")
    assert series.slice_spacing_source == "SpacingBetweenSlices"
    assert_equals_simpleitk(series)


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
    assert variant.slice_spacing_source == "SliceThickness" and variant.geometry.spacing[0] == pytest.approx(0.8)
    np.testing.assert_array_equal(load_volume(variant).array, reference.array)


def test_truncated_mr_is_its_series_failure(tmp_path: Path) -> None:
    shutil.copy(TEST_FILES / "MR_truncated.dcm", tmp_path)
    result = scan_tree(tmp_path)
    (series,) = result.series  # the series exists, with nothing readable: it gets its row, never silence
    assert series.modality == "MR" and not series.slices and not series.is_loadable
    assert [p.kind for p in series.fatal_problems] == ["no_readable_images"]
    assert result.skipped[0].reason.startswith("truncated file")


def test_every_test_file_scans_alone_and_loads_or_fails_cleanly(test_files_apart: Path) -> None:
    """Each file scanned alone (pydicom's files share SeriesInstanceUIDs across encodings of one image)."""
    scans = [scan_tree(folder, workers=1) for folder in sorted(test_files_apart.iterdir())]
    series = [s for scan in scans for s in scan.series]
    skipped = [s for scan in scans for s in scan.skipped]
    assert len(series) > 20 and len(skipped) > 50
    reasons = {s.path.name: s.reason for s in skipped}
    assert reasons["SC_rgb_rle.dcm"].startswith("colour image (RGB")
    assert reasons["rtplan.dcm"].startswith("no pixel data")
    assert reasons["liver_1frame.dcm"].startswith("segmentation object")
    loaded = failed = 0
    unmapped = set()
    for one in series:
        try:
            volume = load_volume(one)
        except SeriesError as error:  # the only exception the loader may raise
            assert error.reason
            failed += 1
            if "DoseGridScaling" in error.reason or "Modality LUT Sequence" in error.reason:
                unmapped.add(one.files[0].name)
            continue
        assert volume.array.shape == one.geometry.shape
        assert np.isfinite(volume.array).all()
        loaded += 1
    assert loaded >= 12 and failed >= 11
    # doses a volume would hold unscaled (times 1e6): refused, never loaded
    assert {"rtdose.dcm", "rtdose_rle.dcm", "rtdose_expb_1frame.dcm"} <= unmapped


def test_flat_test_folder_unreadable_images_make_every_series_there_fatal() -> None:
    """pydicom's flat folder holds images without a SeriesInstanceUID: any of them may be a slice of any series."""
    result = scan_tree(TEST_FILES, workers=2)
    top = [s for s in result.series if s.files and s.files[0].parent == TEST_FILES]
    assert top and all("unreadable_file_in_folder" in {p.kind for p in s.fatal_problems} for s in top)
    assert "missing SeriesInstanceUID" in {s.reason for s in result.skipped if s.path.parent == TEST_FILES}


def test_lossy_jpeg_extended_decodes_close_to_simpleitk(test_files_apart: Path) -> None:
    """An NM image without ImagePositionPatient: refused as a volume, yet its pixel data decodes like SimpleITK's."""
    (series,) = scan_tree(test_files_apart / "JPGExtended.dcm").series
    assert [p.kind for p in series.fatal_problems] == ["no_position", "no_orientation"]
    volume = load_volume(dataclasses.replace(series, problems=()))
    image = read_with_simpleitk(series)
    assert np.abs(sitk.GetArrayFromImage(image) - volume.array).max() <= 1.0  # lossy: decoders may round apart


# What pydicom-data holds, file by file, scanned alone: accepted series equal SimpleITK; the others are refused
# for the reason given (or skipped). Projection images (CR) are compared by geometry only: SimpleITK inverts
# MONOCHROME1 and the 2-D loader decides for projections.
PYDICOM_DATA_ACCEPTED = {
    "693_J2KR.dcm": "CT",
    "693_UNCI.dcm": "CT",
    "693_UNCR.dcm": "CT",
    "MR-SIEMENS-DICOM-WithOverlays.dcm": "MR",
    "MR2_J2KI.dcm": "MR",
    "MR2_J2KR.dcm": "MR",
    "MR2_UNCI.dcm": "MR",
    "MR2_UNCR.dcm": "MR",
    "RG1_J2KI.dcm": "CR",
    "RG1_J2KR.dcm": "CR",
    "RG1_UNCI.dcm": "CR",
    "RG1_UNCR.dcm": "CR",
    "RG3_J2KI.dcm": "CR",
    "RG3_J2KR.dcm": "CR",
    "RG3_UNCI.dcm": "CR",
    "RG3_UNCR.dcm": "CR",
    "bad_sequence.dcm": "CT",
    "eCT_Supplemental.dcm": "CT",
    "explicit_VR-UN.dcm": "CT",
}
PYDICOM_DATA_REFUSED = {  # cross-sectional modalities without ImagePositionPatient cannot be placed in 3-D
    "JPEG-LL.dcm": "no_position",  # NM
    "JPEG2000_UNC.dcm": "no_position",  # NM, 2 frames
    "JPGLosslessP14SV1_1s_1f_8b.dcm": "no_position",  # US
    "emri_small.dcm": "no_position",  # MR, 10 frames without functional groups
    "emri_small_RLE.dcm": "no_position",
    "emri_small_big_endian.dcm": "no_position",
    "emri_small_jpeg_2k_lossless.dcm": "no_position",
    "emri_small_jpeg_ls_lossless.dcm": "no_position",
    "mlut_18.dcm": "no_position",  # OT secondary capture
    "vlut_04.dcm": "no_position",
}


@pytest.mark.parametrize("name", sorted(PYDICOM_DATA_ACCEPTED))
def test_pydicom_data_accepted_series_equal_simpleitk(tmp_path: Path, name: str) -> None:
    series = only_series(one_folder_per_file([PYDICOM_DATA / name], tmp_path) / name)
    assert series.modality == PYDICOM_DATA_ACCEPTED[name] and series.is_loadable, series.problems
    assert_equals_simpleitk(series, voxels=series.modality != "CR")


@pytest.mark.parametrize("name", sorted(PYDICOM_DATA_REFUSED))
def test_pydicom_data_refused_series_say_why(tmp_path: Path, name: str) -> None:
    series = only_series(one_folder_per_file([PYDICOM_DATA / name], tmp_path) / name)
    assert PYDICOM_DATA_REFUSED[name] in {p.kind for p in series.fatal_problems}
    with pytest.raises(SeriesError, match=PYDICOM_DATA_REFUSED[name]):
        load_volume(series)


def test_pydicom_data_is_fully_accounted_for(tmp_path: Path) -> None:
    """Every file: accepted, refused with a reason, or skipped with a reason (colour, DICOM-SEG, truncated)."""
    result = scan_tree(one_folder_per_file(sorted(PYDICOM_DATA.iterdir()), tmp_path))
    used = {f.name for s in result.series for f in s.files}
    assert used == set(PYDICOM_DATA_ACCEPTED) | set(PYDICOM_DATA_REFUSED)
    reasons = {s.path.name: s.reason for s in result.skipped}
    assert len(used) + len(reasons) == len(list(PYDICOM_DATA.iterdir()))
    assert reasons["emri_small_jpeg_2k_lossless_too_short.dcm"].startswith("truncated file")
    assert reasons["liver.dcm"].startswith("segmentation object")
    assert all(r.startswith(("colour image", "truncated", "segmentation")) for r in reasons.values())
