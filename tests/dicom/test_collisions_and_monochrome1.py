"""Rule 1 items 4 and 7 of issue 14: images of another study, frame of reference or patient that reuse a
SeriesInstanceUID are split off and reported; MONOCHROME1 is inverted per the modality rule of photometric.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from innereye_batch.cli import app
from innereye_batch.dicom.scan import scan_tree
from innereye_batch.dicom.volume import load_volume
from tests.dicom.oracle import assert_matches_truth_and_simpleitk, only_series, without_layouts
from tests.factory import read_with_simpleitk, write_series


@pytest.mark.parametrize(
    ("attribute", "suffix", "noun"),
    [
        ("StudyInstanceUID", ".study2", "studies"),
        ("FrameOfReferenceUID", ".for2", "frames of reference"),
        ("PatientID", ".patient2", "patients"),
    ],
)
def test_intruder_with_the_same_series_uid_is_split_off(tmp_path: Path, attribute: str, suffix: str, noun: str) -> None:
    def edit(k: int, ds: Dataset) -> None:
        if k == 7:
            setattr(ds, attribute, "SECRET-ID-77" if attribute == "PatientID" else pydicom.uid.generate_uid())

    truth = write_series(tmp_path, edit=edit)
    kept, intruder = sorted(scan_tree(tmp_path).series, key=lambda s: s.key)
    uid = truth.series_instance_uid
    assert (kept.key, intruder.key) == (uid, uid + suffix)
    assert [p.kind for p in kept.problems] == ["uid_collision"] and kept.is_loadable
    assert kept.problems[0].message == f"2 {noun} share this SeriesInstanceUID; 1 image(s) split off as {uid}{suffix}"
    assert intruder.problems[0].kind == "uid_collision" and len(intruder.slices) == 1
    assert intruder.split_by == {
        attribute: "differs" if attribute == "PatientID" else getattr(pydicom.dcmread(truth.paths[7]), attribute)
    }
    assert "SECRET" not in str(kept) + str(intruder)
    assert kept.files == truth.paths[:7]  # an edge intruder leaves a clean stack of the others
    np.testing.assert_array_equal(load_volume(kept).array, truth.voxels[:7])


def test_intruder_in_the_middle_leaves_a_gap_that_is_caught(tmp_path: Path) -> None:
    write_series(tmp_path, edit=lambda k, ds: setattr(ds, "StudyInstanceUID", "1.2.3.4") if k == 4 else None)
    kept = next(s for s in scan_tree(tmp_path).series if "." not in s.key[len(s.series_instance_uid) :])
    assert {p.kind: p.fatal for p in kept.problems} == {"uid_collision": False, "missing_slices": True}


def test_patient_id_never_reaches_scan_json(tmp_path: Path) -> None:
    write_series(tmp_path, edit=lambda k, ds: setattr(ds, "PatientID", "SECRET-ID-77") if k == 0 else None)
    result = CliRunner().invoke(app, ["scan", "--input", str(tmp_path), "--json"])
    assert result.exit_code == 0 and "SECRET" not in result.output and "PAT001" not in result.output
    assert len(json.loads(result.output)["series"]) == 2


def monochrome1(bits_stored: int | None = None) -> object:
    def edit(k: int, ds: Dataset) -> None:
        ds.PhotometricInterpretation = "MONOCHROME1"
        if bits_stored:
            ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1

    return edit


@pytest.mark.parametrize(
    ("offset", "bits"), [(3.0, None), (-300.0, None), (3.0, 12)], ids=["unsigned", "signed", "12bit"]
)
def test_mr_monochrome1_is_inverted_exactly_as_simpleitk(tmp_path: Path, offset: float, bits: int | None) -> None:
    voxels = np.arange(4 * 6 * 5, dtype=np.float32).reshape(4, 6, 5) * 7 + offset
    truth = write_series(  # MR has no rescale: stored values are the voxels, signed where negative
        tmp_path,
        voxels=voxels,
        modality="MR",
        rescale_intercept=0.0,
        edit=monochrome1(bits),  # type: ignore[arg-type]
    )
    assert (pydicom.dcmread(truth.paths[0]).PixelRepresentation == 1) == (offset < 0)
    series = only_series(tmp_path)
    assert series.inverts_monochrome1 and series.problems == ()
    expected = sitk.GetArrayFromImage(read_with_simpleitk(truth.paths))
    stored = truth.voxels
    inverted = -1 - stored if offset < 0 else (2 ** (bits or 16) - 1) - stored
    np.testing.assert_array_equal(expected, inverted)  # the rule, checked against the oracle itself
    for candidate in (series, without_layouts(series)):  # read as laid out, and parsed again by pydicom
        volume = load_volume(candidate)
        assert volume.inverted_monochrome1
        np.testing.assert_array_equal(volume.array, expected)


def test_ct_monochrome1_keeps_hounsfield_units_unlike_simpleitk(tmp_path: Path) -> None:
    truth = write_series(tmp_path, edit=monochrome1())  # type: ignore[arg-type]
    series = only_series(tmp_path)
    assert not series.inverts_monochrome1
    volume = load_volume(series)
    assert not volume.inverted_monochrome1
    np.testing.assert_array_equal(volume.array, truth.voxels)
    assert not np.array_equal(sitk.GetArrayFromImage(read_with_simpleitk(truth.paths)), volume.array)


def test_monochrome2_mr_is_untouched(tmp_path: Path) -> None:
    truth = write_series(tmp_path, modality="MR")
    series = only_series(tmp_path)
    assert not series.inverts_monochrome1
    assert_matches_truth_and_simpleitk(series, truth)
