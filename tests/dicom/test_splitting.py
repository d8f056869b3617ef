"""Rule 2 of issue 14: what a scanner put together under one SeriesInstanceUID is split as dcm2niix splits it;
each part equals SimpleITK's reading of exactly its files, and dcm2niix finds the same volumes."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from innereye_batch.dicom.scan import scan_tree
from innereye_batch.dicom.volume import load_volume
from tests.dicom.oracle import assert_geometry_matches_simpleitk, read_files_with_simpleitk, right_handed
from tests.dicom.parts_factory import canonical, run_dcm2niix, volumes_3d, write_parts
from tests.dicom.split_cases import CASES
from tests.factory import write_enhanced_series, write_series

SPLIT_BY = {
    "echo": {"EchoNumbers": "2", "EchoTime": "20"},
    "magphase": {"ComplexImageComponent": "PHASE"},
    "temporal": {"TemporalPosition": "2"},
    "trigger": {"TriggerTime": "350.5"},
    "acquisition": {"AcquisitionNumber": "2"},
    "dti": {"DiffusionBValue": "1000", "DiffusionGradientOrientation": "1\\0\\0"},
    "dti_siemens": {"DiffusionBValue": "1000", "DiffusionGradientOrientation": "1\\0\\0"},
    "dti_ge": {"DiffusionBValue": "1000", "DiffusionGradientOrientation": "1\\0\\0"},
    "dti_philips": {"DiffusionBValue": "1000", "DiffusionGradientOrientation": "1\\0\\0"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_parts_have_keys_that_say_what_differs_and_equal_simpleitk(tmp_path: Path, case: str) -> None:
    parts, suffixes = CASES[case]
    truths = write_parts(tmp_path / "in", parts)
    result = scan_tree(tmp_path / "in")
    uid = truths[0].series_instance_uid
    assert [s.key for s in result.series] == [uid + suffix for suffix in suffixes]
    assert result.series[1].split_by == SPLIT_BY[case]
    for index, (series, truth) in enumerate(zip(result.series, truths, strict=True)):
        assert series.problems == () and series.files == truth.paths
        assert series.geometry.is_close(truth.geometry)
        volume = load_volume(series)
        np.testing.assert_array_equal(volume.array, truth.voxels)
        image = read_files_with_simpleitk(truth.paths, tmp_path / f"sitk{index}")
        assert_geometry_matches_simpleitk(series, image)
        np.testing.assert_array_equal(right_handed(image)[1], volume.array)


@pytest.mark.parametrize("case", sorted(CASES))
def test_dcm2niix_finds_the_same_volumes(tmp_path: Path, case: str) -> None:
    parts, _ = CASES[case]
    write_parts(tmp_path / "in", parts, row_direction=(0.0, 1.0, 0.0), column_direction=(0.0, 0.0, -1.0))
    ours = [canonical(load_volume(s).array, s.geometry) for s in scan_tree(tmp_path / "in").series]
    theirs = volumes_3d(run_dcm2niix(tmp_path / "in", tmp_path / "out"))
    assert len(theirs) == len(ours)
    unmatched = list(range(len(ours)))
    for volume in theirs:
        assert volume.shape == ours[0].shape
        np.testing.assert_allclose(volume.affine, ours[0].affine, atol=1e-3)
        data = volume.get_fdata()
        match = next(i for i in unmatched if np.allclose(ours[i].get_fdata(), data, atol=1e-3))
        unmatched.remove(match)  # each of dcm2niix's volumes is exactly one of our parts
    assert unmatched == []


def test_keys_do_not_depend_on_file_names_or_order(tmp_path: Path) -> None:
    parts, suffixes = CASES["dti"]
    truths = write_parts(tmp_path / "a", parts)
    renamed = tmp_path / "b" / "deep"
    renamed.mkdir(parents=True)
    names = [p for t in truths for p in t.paths]
    random.Random(5).shuffle(names)
    for index, path in enumerate(names):
        shutil.copy(path, renamed / f"{index:03d}.dcm")
    first = {s.key: s.sop_instance_uids for s in scan_tree(tmp_path / "a").series}
    second = {s.key: s.sop_instance_uids for s in scan_tree(tmp_path / "b", workers=3).series}
    assert first == second and len(first) == len(suffixes)


def test_repeated_b0_volumes_are_split_by_acquisition(tmp_path: Path) -> None:
    parts = [{"DiffusionBValue": 0, "AcquisitionNumber": a} for a in (1, 2)]
    parts.append({"DiffusionBValue": 1000, "DiffusionGradientOrientation": [1, 0, 0], "AcquisitionNumber": 3})
    truths = write_parts(tmp_path, parts)
    keys = [s.key[len(truths[0].series_instance_uid) :] for s in scan_tree(tmp_path).series]
    assert keys == [".b0.acq1", ".b0.acq2", ".b1000.dir1"]


def test_per_slice_trigger_times_do_not_split_a_volume(tmp_path: Path) -> None:
    """Trigger times that differ slice by slice within one volume are not time points: no split, no problem."""
    truth = write_series(tmp_path, modality="MR", edit=lambda k, ds: setattr(ds, "TriggerTime", str(40 * k)))
    (series,) = scan_tree(tmp_path).series
    assert series.key == truth.series_instance_uid and series.problems == ()


@pytest.mark.parametrize(("slices", "volumes", "times"), [(12, 5, 4), (6, 8, 6)], ids=["multiband 3", "one per slice"])
def test_slice_times_written_as_trigger_times_do_not_cut_volumes_into_thin_stacks(
    tmp_path: Path, slices: int, volumes: int, times: int
) -> None:
    """GE writes each slice's acquisition time as TriggerTime, the same in every volume: with at least as many
    volumes as slice times, the series was split by them into stacks of every fourth slice (or of one slice),
    each evenly spaced and without a problem. It holds ``volumes`` whole volumes, told apart by their runs of
    InstanceNumbers."""
    series_uid, study, frame = generate_uid(), generate_uid(), generate_uid()
    for volume in range(volumes):
        write_series(
            tmp_path,
            modality="MR",
            shape=(slices, 8, 8),
            series_instance_uid=series_uid,
            study_instance_uid=study,
            frame_of_reference_uid=frame,
            name_prefix=f"V{volume}_",
            first_instance=1 + volume * slices,
            seed=volume,
            edit=lambda k, ds: setattr(ds, "TriggerTime", str((k % times) * 500)),
        )
    found = scan_tree(tmp_path).series
    assert [s.key[len(series_uid) :] for s in found] == [f".vol{v}" for v in range(1, volumes + 1)]
    for series in found:
        assert len(series.slices) == slices and series.geometry.spacing[0] == pytest.approx(2.5)
        assert not series.blocking_problems()


@pytest.mark.parametrize("case", ["echo", "temporal", "magphase", "acquisition"])
@pytest.mark.parametrize("lost", [0, -1], ids=["first slice", "last slice"])
def test_a_volume_that_lost_an_edge_slice_its_siblings_hold_is_fatal(tmp_path: Path, case: str, lost: int) -> None:
    """The steps between a volume's own slices cannot show a lost edge slice; its sibling volumes (other echoes,
    time points, components) hold that position. Separate acquisitions may cover other positions by design."""
    parts, suffixes = CASES[case]
    truths = write_parts(tmp_path, parts)
    truths[1].paths[lost].unlink()
    series = scan_tree(tmp_path).series
    assert [s.key for s in series] == [truths[0].series_instance_uid + suffix for suffix in suffixes]
    assert len(series[1].slices) == 4
    assert series[0].problems == ()
    if case == "acquisition":
        assert series[1].problems == ()
        return
    assert [(p.kind, p.fatal) for p in series[1].problems] == [("missing_slices", True)]
    assert series[1].problems[0].message == (
        f"1 slice position(s) that every sibling volume ({', '.join(suffixes[:1] + suffixes[2:])}) holds are "
        "missing from this one (4 slices): "
        "file(s) at its edge may be lost"
    )


def test_true_duplicates_stay_fatal(tmp_path: Path) -> None:
    truths = write_parts(tmp_path, [{}, {}])  # nothing tells the two copies apart, not even InstanceNumbers
    for path in truths[1].paths:
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = int(ds.InstanceNumber) - 5
        ds.save_as(path, enforce_file_format=True)
    (series,) = scan_tree(tmp_path).series
    assert series.key == truths[0].series_instance_uid
    assert [p.kind for p in series.fatal_problems] == ["duplicate_positions"]


def add_frame_content(path: Path, parts: int, *, echo: bool) -> None:
    """Rewrite an enhanced file whose frames hold ``parts`` stacks at the same positions: per-frame Frame Content
    (StackID 1, TemporalPositionIndex), or per-frame MR Echo (EffectiveEchoTime), with a DimensionIndexSequence."""
    ds = pydicom.dcmread(path)
    frames = ds.PerFrameFunctionalGroupsSequence
    per_part = len(frames) // parts
    pointers = [pydicom.tag.Tag("TemporalPositionIndex"), pydicom.tag.Tag("InStackPositionNumber")]
    ds.DimensionIndexSequence = [Dataset(), Dataset()]
    for item, pointer in zip(ds.DimensionIndexSequence, pointers, strict=True):
        item.DimensionIndexPointer = pointer
        item.FunctionalGroupPointer = pydicom.tag.Tag("FrameContentSequence")
    for index, groups in enumerate(frames):
        part, k = divmod(index, per_part)
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        if not echo:
            content.TemporalPositionIndex = part + 1
        content.DimensionIndexValues = [part + 1, k + 1]
        groups.FrameContentSequence = [content]
        first = frames[k].PlanePositionSequence[0].ImagePositionPatient
        groups.PlanePositionSequence[0].ImagePositionPatient = list(first)
        if echo:
            item = Dataset()
            item.EffectiveEchoTime = 8.0 * (part + 1)
            groups.MREchoSequence = [item]
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize(("echo", "suffixes"), [(False, [".t1", ".t2"]), (True, [".echo1", ".echo2"])])
def test_enhanced_multiframe_parts_split_by_frame_content(tmp_path: Path, echo: bool, suffixes: list[str]) -> None:
    truth = write_enhanced_series(tmp_path / "enhanced.dcm", shape=(8, 10, 8))
    add_frame_content(truth.paths[0], 2, echo=echo)
    result = scan_tree(tmp_path)
    assert [s.key for s in result.series] == [truth.series_instance_uid + s for s in suffixes]
    stack = truth.geometry.with_grid((4, 10, 8), truth.geometry.spacing)
    for part, series in enumerate(result.series):
        assert series.problems == () and [s.frame for s in series.slices] == list(range(4 * part, 4 * part + 4))
        assert series.geometry.is_close(stack)
        np.testing.assert_array_equal(load_volume(series).array, truth.voxels[4 * part : 4 * part + 4])


def test_time_points_told_apart_only_by_instance_number_runs(tmp_path: Path) -> None:
    """GE fMRI: no temporal attribute, one AcquisitionNumber; InstanceNumbers 1-5, 6-10, 11-15 are the volumes."""
    truths = write_parts(tmp_path, [{}, {}, {}])
    result = scan_tree(tmp_path)
    assert [s.key for s in result.series] == [truths[0].series_instance_uid + f".vol{n}" for n in (1, 2, 3)]
    assert result.series[1].split_by == {"InstanceNumber": "6-10"}
    for series, truth in zip(result.series, truths, strict=True):
        assert series.problems == () and series.files == truth.paths


def test_instance_number_runs_that_do_not_hold_every_position_stay_duplicates(tmp_path: Path) -> None:
    """Numbered alternately (slice 1 of both copies, then slice 2...): no run of 5 holds every position."""
    truths = write_parts(tmp_path, [{}, {}])
    for part, truth in enumerate(truths):
        for k, path in enumerate(truth.paths):
            ds = pydicom.dcmread(path)
            ds.InstanceNumber = 2 * k + 1 + part
            ds.save_as(path, enforce_file_format=True)
    (series,) = scan_tree(tmp_path).series
    assert [p.kind for p in series.fatal_problems] == ["duplicate_positions"]
