"""Damaged series are reported with the right problems, and fatal ones stop the loader with a clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from innereye_batch.dicom.scan import scan_tree
from innereye_batch.dicom.volume import load_volume
from innereye_batch.errors import SeriesError
from tests.dicom.oracle import only_series
from tests.factory import write_series


def kinds(series: object) -> dict[str, bool]:
    return {p.kind: p.fatal for p in series.problems}  # type: ignore[attr-defined]


def move_slice(path: Path, offset_mm: tuple[float, float, float]) -> None:
    ds = pydicom.dcmread(path)
    position = np.asarray([float(v) for v in ds.ImagePositionPatient]) + offset_mm
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.save_as(path, enforce_file_format=True)


def test_missing_slice_is_fatal_and_load_names_series(tmp_path: Path) -> None:
    truth = write_series(tmp_path, remove_slice=3)
    series = only_series(tmp_path)
    assert kinds(series) == {"missing_slices": True}
    assert "about 1 slice(s) missing" in series.problems[0].message
    assert not series.is_loadable
    with pytest.raises(SeriesError) as error:
        load_volume(series)
    assert error.value.series_uid == truth.series_instance_uid
    assert "missing_slices" in error.value.reason


def test_duplicate_slice_is_fatal(tmp_path: Path) -> None:
    truth = write_series(tmp_path)
    shutil.copy(truth.paths[2], tmp_path / "copy_of_slice_2.dcm")
    series = only_series(tmp_path)
    assert kinds(series) == {"duplicate_positions": True}
    assert len(series.slices) == 9


def test_uneven_spacing_is_a_warning_and_uses_the_median_step(tmp_path: Path) -> None:
    truth = write_series(tmp_path, spacing=(2.0, 0.8, 0.7))
    move_slice(truth.paths[4], (0.0, 0.0, 0.1))  # 5 % of a step (20 % is variable spacing: test_slice_steps.py)
    series = only_series(tmp_path)
    assert kinds(series) == {"non_uniform_spacing": False}
    assert series.geometry.spacing[0] == pytest.approx(2.0)
    assert series.files == truth.paths
    np.testing.assert_array_equal(load_volume(series).array, truth.voxels)


@pytest.mark.parametrize(("shift_per_slice", "expected"), [(0.6, True), (0.02, False), (1e-5, None)])
def test_gantry_tilt(tmp_path: Path, shift_per_slice: float, expected: bool | None) -> None:
    truth = write_series(tmp_path, spacing=(2.0, 0.8, 0.7))
    for k, path in enumerate(truth.paths):
        move_slice(path, (0.0, k * shift_per_slice, 0.0))
    problems = kinds(only_series(tmp_path))
    assert problems.get("gantry_tilt") is expected


def test_mixed_transfer_syntaxes_warn_but_load(tmp_path: Path) -> None:
    truth = write_series(tmp_path)
    for path in truth.paths[::2]:
        ds = pydicom.dcmread(path)
        ds.compress(pydicom.uid.RLELossless)
        ds.save_as(path, enforce_file_format=True)
    series = only_series(tmp_path)
    assert kinds(series) == {"mixed_transfer_syntaxes": False}
    assert set(series.transfer_syntaxes) == {pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.RLELossless}
    np.testing.assert_array_equal(load_volume(series).array, truth.voxels)


def test_junk_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    good = write_series(tmp_path / "good")
    broken = write_series(tmp_path / "broken", seed=1)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "empty.dcm").write_bytes(b"")
    (junk / "notes.txt").write_text("not an image\n" * 20)
    data = good.paths[0].read_bytes()
    (junk / "cut_in_header.dcm").write_bytes(data[:300])
    pixel_cut = broken.paths[4]
    pixel_cut.write_bytes(pixel_cut.read_bytes()[:-50])
    no_pixels = pydicom.dcmread(good.paths[0])
    del no_pixels.PixelData
    no_pixels.SOPInstanceUID = no_pixels.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    no_pixels.SeriesInstanceUID = pydicom.uid.generate_uid()  # an image of its own series, and nothing else
    no_pixels.save_as(junk / "no_pixels.dcm", enforce_file_format=True)
    dicomdir = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "DICOMDIR"
    shutil.copy(dicomdir, junk / "DICOMDIR")

    result = scan_tree(tmp_path)
    reasons = {s.path.name: s.reason for s in result.skipped}
    assert reasons["empty.dcm"] == "empty file (0 bytes)"
    assert reasons["notes.txt"].startswith("not a DICOM file")
    assert "cut_in_header.dcm" in reasons
    assert reasons[pixel_cut.name].startswith("truncated file")
    assert reasons["no_pixels.dcm"].startswith("no pixel data")
    assert reasons["DICOMDIR"].startswith("DICOMDIR")
    assert len(result.skipped) == 6
    by_uid = {s.series_instance_uid: s for s in result.series}
    assert by_uid[good.series_instance_uid].problems == ()
    assert by_uid[good.series_instance_uid].files == good.paths
    damaged = by_uid[broken.series_instance_uid]
    assert kinds(damaged)["unreadable_file"] is True
    assert pixel_cut.name in str(damaged.problems)


def test_truncated_compressed_file_is_skipped(tmp_path: Path) -> None:
    truth = write_series(tmp_path, transfer_syntax=pydicom.uid.RLELossless)
    victim = truth.paths[0]
    victim.write_bytes(victim.read_bytes()[:-30])
    result = scan_tree(tmp_path)
    assert [s.path for s in result.skipped] == [victim]
    assert "truncated" in result.skipped[0].reason


def test_file_replaced_after_scan_raises(tmp_path: Path) -> None:
    truth = write_series(tmp_path)
    series = only_series(tmp_path)
    ds = pydicom.dcmread(truth.paths[3])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(truth.paths[3], enforce_file_format=True)
    with pytest.raises(SeriesError, match="SOPInstanceUID changed") as error:
        load_volume(series)
    assert str(truth.paths[3]) in str(error.value)


def test_resized_file_after_scan_raises(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(4, 8, 8))
    series = only_series(tmp_path)
    ds = pydicom.dcmread(truth.paths[1])
    ds.Rows, ds.Columns = 4, 16
    ds.save_as(truth.paths[1], enforce_file_format=True)
    with pytest.raises(SeriesError, match="image size changed"):
        load_volume(series)


def test_undecodable_pixel_data_raises_naming_the_file(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(3, 40, 36), transfer_syntax=pydicom.uid.JPEG2000Lossless)
    series = only_series(tmp_path)
    ds = pydicom.dcmread(truth.paths[2])
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
    ds.save_as(truth.paths[2], enforce_file_format=True)
    with pytest.raises(SeriesError, match="cannot decode pixel data") as error:
        load_volume(series)
    assert str(truth.paths[2]) in error.value.reason


def test_a_modality_lut_sequence_is_refused_not_loaded_unmapped(tmp_path: Path) -> None:
    """A CT whose stored values are mapped by a Modality LUT Sequence (no rescale): the volume held the raw stored
    values, half the units pydicom's LUT gives here, with no problem reported."""
    from pydicom.dataset import Dataset

    def lut_instead_of_rescale(index: int, ds: pydicom.Dataset) -> None:
        del ds.RescaleSlope, ds.RescaleIntercept
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        item.ModalityLUTType = "HU"
        item.add_new(0x00283006, "US", [(v * 2) & 0xFFFF for v in range(4096)])  # LUTData: stored v -> 2v
        ds.ModalityLUTSequence = [item]

    voxels = np.random.default_rng(0).integers(0, 4000, size=(4, 8, 6)).astype(np.float32)
    write_series(tmp_path / "ct", voxels=voxels, rescale_intercept=0, rescale_slope=1, edit=lut_instead_of_rescale)
    series = only_series(tmp_path)

    assert [(p.kind, p.fatal) for p in series.problems] == [("invalid_rescale", True)]
    assert "Modality LUT Sequence" in series.problems[0].message
    with pytest.raises(SeriesError, match="Modality LUT Sequence"):
        load_volume(series)


def test_rt_dose_scaled_by_dose_grid_scaling_is_refused(tmp_path: Path) -> None:
    """pydicom's real RT Dose: its values are doses only once multiplied by DoseGridScaling (1e-6 here): the
    volume held them unscaled (795000 to 1.25e6 for at most 1.25 Gy)."""
    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file("rtdose.dcm"), tmp_path / "rtdose.dcm")
    series = only_series(tmp_path)

    assert any(p.kind == "invalid_rescale" and p.fatal and "DoseGridScaling" in p.message for p in series.problems)
    with pytest.raises(SeriesError, match="DoseGridScaling"):
        load_volume(series)


@pytest.mark.parametrize("syntax", [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.RLELossless])
def test_pixels_without_pixel_representation_are_refused_at_the_scan(tmp_path: Path, syntax: str) -> None:
    """Without PixelRepresentation, signed or unsigned is unknown: the fast path read the values as unsigned (a
    negative stored value would have become a large positive one), while pydicom refuses them, so whether the
    series loaded depended on the files' timestamps; and `scan`, `--dry-run` said nothing."""

    written = write_series(tmp_path / "ct", shape=(3, 8, 6), transfer_syntax=syntax)
    for path in written.paths:  # after encoding, which needs it
        ds = pydicom.dcmread(path)
        del ds.PixelRepresentation
        ds.save_as(path, enforce_file_format=True)
    series = only_series(tmp_path)
    assert [p.kind for p in series.fatal_problems] == ["no_readable_images"]  # every file of it lacks one
    assert "PixelRepresentation missing" in series.fatal_problems[0].message
    with pytest.raises(SeriesError, match="no_readable_images"):
        load_volume(series)


@pytest.mark.parametrize("syntax", [pydicom.uid.RLELossless, pydicom.uid.ExplicitVRLittleEndian])
def test_a_slice_moved_after_the_scan_raises(tmp_path: Path, syntax: str) -> None:
    """Two files rewritten in place with each other's position, UIDs and sizes kept (a compressed file records no
    size or mtime at the scan): they loaded in the scan's order, each slice a slab away from where it now says it
    lies."""
    truth = write_series(tmp_path, shape=(4, 8, 8), transfer_syntax=syntax)
    series = only_series(tmp_path)
    first, last = (pydicom.dcmread(truth.paths[k]) for k in (0, 3))
    first.ImagePositionPatient, last.ImagePositionPatient = last.ImagePositionPatient, first.ImagePositionPatient
    first.save_as(truth.paths[0], enforce_file_format=True)
    last.save_as(truth.paths[3], enforce_file_format=True)
    with pytest.raises(SeriesError, match=r"ImagePositionPatient changed since the scan .*: scan the folder again"):
        load_volume(series)


def test_a_projection_image_with_a_modality_lut_is_refused_as_a_volume(tmp_path: Path) -> None:
    """A 2-D model applies a radiograph's Modality LUT (projection.py); loaded as a volume (a 3-D model whose channel
    takes any modality), its raw stored values were returned."""
    from pydicom.dataset import Dataset

    def radiograph_with_a_lut(index: int, ds: pydicom.Dataset) -> None:
        ds.Modality = "DX"
        del ds.RescaleSlope, ds.RescaleIntercept
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        item.ModalityLUTType = "OD"
        item.add_new(0x00283006, "US", [3 * v + 500 for v in range(4096)])  # LUTData
        ds.ModalityLUTSequence = [item]

    voxels = np.random.default_rng(1).integers(0, 4000, size=(1, 8, 6)).astype(np.float32)
    write_series(tmp_path / "dx", voxels=voxels, rescale_intercept=0, rescale_slope=1, edit=radiograph_with_a_lut)
    series = only_series(tmp_path)
    assert not series.fatal_problems  # a 2-D model takes it, and maps it
    with pytest.raises(SeriesError, match="Modality LUT Sequence maps the stored values"):
        load_volume(series)
