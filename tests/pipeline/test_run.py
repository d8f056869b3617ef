"""`innereye-batch run` end to end on a generated cohort: outputs, geometry, DICOM-SEG, JSON, exit codes, reruns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from innereye_batch.cli import app
from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.scan import scan_tree
from innereye_batch.engine.device import resolve_device
from innereye_batch.model.checkpoints import load_networks
from innereye_batch.model.package import load_model_package
from innereye_batch.tasks.base import WorkItem
from innereye_batch.tasks.segmentation import SegmentationPredictor
from innereye_batch.writers.predictions import load_predictions_schema
from tests.factory import read_with_simpleitk, write_series
from tests.pipeline.cohort import Cohort, labels_from_nifti, model_folder, write_cohort
from tests.writers.helpers import dciodvfy_errors, read_back_labels


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["run", *args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cohort, Path, Path, int]:
    base = tmp_path_factory.mktemp("run")
    cohort = write_cohort(base / "scans")
    model = model_folder(base / "final_ensemble_model")
    out = base / "out"
    code, output = invoke("--model", str(model), "--input", str(cohort.root), "--output", str(out), "--workers", "1")
    assert "Traceback" not in output, output
    return cohort, model, out, code


def _records(out: Path) -> dict[str, dict[str, object]]:
    """summary.json's series records by key."""
    return {record["key"]: record for record in json.loads((out / "summary.json").read_text())["series"]}


def summary_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        return {row["series_instance_uid"]: row for row in csv.DictReader(handle)}


def test_statuses_reasons_and_exit_code(finished_run: tuple[Cohort, Path, Path, int]) -> None:
    cohort, _, out, code = finished_run
    assert code == 1  # two broken series failed; the run went on
    rows = summary_rows(out)
    for good in cohort.good:
        assert rows[good.series_instance_uid]["status"] == "ok"
    assert rows[cohort.mr.series_instance_uid]["status"] == "skipped"
    assert "Modality=CT" in rows[cohort.mr.series_instance_uid]["reason"]
    gap = rows[cohort.missing_slice.series_instance_uid]
    assert gap["status"] == "failed" and "missing" in gap["reason"]
    corrupt = rows[cohort.corrupt_pixels.series_instance_uid]
    assert corrupt["status"] == "failed" and corrupt["reason"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["ok"] == len(cohort.good) and summary["counts"]["failed"] == 2
    text = (out / "summary.json").read_text() + (out / "summary.csv").read_text()
    assert "Doe^Jane" not in text and "P1" not in text.split(",")  # no patient identity


def test_quiet_and_log_json_reruns_say_what_failed_on_stderr(
    finished_run: tuple[Cohort, Path, Path, int], tmp_path: Path
) -> None:
    """Cron mails stderr: with --quiet a rerun whose series fail printed nothing at all (exit 1 only); --log-json
    ended without a line saying how the run went."""
    cohort, model, out, _ = finished_run
    failing = {cohort.missing_slice.series_instance_uid, cohort.corrupt_pixels.series_instance_uid}
    args = ["run", "--model", str(model), "--input", str(cohort.root), "--output", str(out), "--workers", "0"]
    quiet = CliRunner().invoke(app, [*args, "--quiet"])
    assert quiet.exit_code == 1 and quiet.stdout == ""
    lines = quiet.stderr.splitlines()
    assert {line.split(":", 1)[0] for line in lines} == {f"failed {key}" for key in failing}, lines
    assert any("missing" in line for line in lines)

    logged = CliRunner().invoke(app, [*args, "--log-json"])
    assert logged.exit_code == 1 and logged.stdout == ""
    last = json.loads(logged.stderr.splitlines()[-1])
    counts = json.loads((out / "summary.json").read_text())["counts"]
    assert last["event"] == "run_finished" and last["exit_code"] == 1
    assert {**last["series"], "skipped_files": last["skipped_files"]} == counts  # as summary.json counts them
    assert last["summary"][0].endswith("summary.json") and last["summary_error"] == ""


def test_the_quiet_shard_that_merges_says_how_many_series_of_every_shard_failed(
    finished_run: tuple[Cohort, Path, Path, int], tmp_path: Path
) -> None:
    """Its exit code counts every shard's series: with --quiet it exited 1 saying nothing of the other shard's."""
    cohort, model, _, _ = finished_run
    args = ["run", "--model", str(model), "--input", str(cohort.root), "--output", str(tmp_path), "--workers", "0"]
    first = CliRunner().invoke(app, [*args, "--quiet", "--shard", "0/2"])
    last = CliRunner().invoke(app, [*args, "--quiet", "--shard", "1/2"])
    assert last.exit_code == 1 and last.stdout == ""
    assert "2 series of the merged summary (every shard's) failed or were not run" in last.stderr, last.stderr
    assert "merged summary" not in first.stderr  # the first shard to finish merges nothing


def test_nifti_has_the_source_geometry_and_the_library_labels(finished_run: tuple[Cohort, Path, Path, int]) -> None:
    cohort, model, out, _ = finished_run
    package = load_model_package(model)
    predictor = SegmentationPredictor(package, load_networks(package), resolve_device("cpu"))
    scanned = {s.series_instance_uid: s for s in scan_tree(cohort.root).series}
    for good in cohort.good:
        path = out / good.series_instance_uid / "segmentation.nii.gz"
        image = sitk.ReadImage(str(path))
        reference = read_with_simpleitk(good.paths)
        assert Geometry.from_sitk(image).is_close(Geometry.from_sitk(reference), tol_mm=1e-4)
        expected = predictor.predict(WorkItem((scanned[good.series_instance_uid],))).labels
        np.testing.assert_array_equal(labels_from_nifti(path), expected)
        assert 0 < np.count_nonzero(expected) < expected.size  # a real, non-trivial label map


def test_dicom_seg_validates_and_reads_back_equal(finished_run: tuple[Cohort, Path, Path, int]) -> None:
    cohort, _, out, _ = finished_run
    scanned = {s.series_instance_uid: s for s in scan_tree(cohort.root).series}
    for good in cohort.good:
        folder = out / good.series_instance_uid
        assert dciodvfy_errors(folder / "segmentation.dcm") == []
        series = scanned[good.series_instance_uid]
        np.testing.assert_array_equal(
            read_back_labels(folder / "segmentation.dcm", series), labels_from_nifti(folder / "segmentation.nii.gz")
        )


def test_predictions_validate_and_match_the_label_map(finished_run: tuple[Cohort, Path, Path, int]) -> None:
    cohort, _, out, _ = finished_run
    schema = load_predictions_schema()
    for good in cohort.good:
        folder = out / good.series_instance_uid
        document = json.loads((folder / "predictions.json").read_text())
        jsonschema.validate(document, schema)
        assert document["input"]["series_instance_uid"] == good.series_instance_uid
        assert document["inference"] == {"device": "cpu", "precision": "float32"}  # no --amp, on the CPU
        labels = labels_from_nifti(folder / "segmentation.nii.gz")
        voxel_ml = float(np.prod(good.geometry.spacing)) / 1000
        for index, structure in enumerate(document["structures"], start=1):
            assert structure["voxel_count"] == int(np.count_nonzero(labels == index))
            assert structure["volume_ml"] == pytest.approx(structure["voxel_count"] * voxel_ml)
        assert "Doe^Jane" not in json.dumps(document)


def test_rerun_skips_done_series_and_redoes_changed_ones(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    first = write_series(scans / "a", shape=(8, 16, 16), seed=1)
    second = write_series(scans / "b", shape=(8, 16, 16), seed=2)
    model = model_folder(tmp_path / "model", members=1)
    out = tmp_path / "out"
    args = ("--model", str(model), "--input", str(scans), "--output", str(out), "--workers", "0")
    assert invoke(*args)[0] == 0
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("*/*") if p.is_file()}
    done_records, done_csv = _records(out), (out / "summary.csv").read_text()
    assert invoke(*args)[0] == 0
    rows = summary_rows(out)
    assert {r["status"] for r in rows.values()} == {"skipped"}
    assert all("already done" in r["reason"] for r in rows.values())
    assert stamp == {p: p.stat().st_mtime_ns for p in out.glob("*/*") if p.is_file()}
    # a done series keeps its findings and outputs in the rerun's summaries (its volumes were gone, and with them
    # summary.csv's volume columns: a cron job reading liver_ml broke on a night with nothing new)
    for key, record in _records(out).items():
        assert record["structures"] == done_records[key]["structures"] and record["structures"]
        assert record["outputs"] == done_records[key]["outputs"] and record["outputs"]
    rerun_csv = (out / "summary.csv").read_text()
    assert rerun_csv.splitlines()[0] == done_csv.splitlines()[0] and "_ml" in done_csv.splitlines()[0]
    assert [row.split(",")[6:-1] for row in rerun_csv.splitlines()] == [
        r.split(",")[6:-1] for r in done_csv.splitlines()
    ]

    write_series(
        scans / "b_resent",
        shape=(8, 16, 16),
        seed=3,
        series_instance_uid=second.series_instance_uid,
        study_instance_uid=second.study_instance_uid,
    )  # the scanner re-sent series b: new instances
    for stale in second.paths:
        stale.unlink()
    assert invoke(*args)[0] == 0
    rows = summary_rows(out)
    assert rows[first.series_instance_uid]["status"] == "skipped"
    assert rows[second.series_instance_uid]["status"] == "ok"

    assert invoke(*args, "--overwrite")[0] == 0
    assert {r["status"] for r in summary_rows(out).values()} == {"ok"}


def test_formats_filters_and_dry_run(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    ct = write_series(scans / "ct", shape=(8, 16, 16), seed=1)
    other = write_series(scans / "ct2", shape=(8, 16, 16), seed=2)
    model = model_folder(tmp_path / "model", members=1)
    out = tmp_path / "out"
    base = ("--model", str(model), "--input", str(scans), "--output", str(out), "--workers", "0")
    code, output = invoke(*base, "--dry-run")
    assert code == 0 and not out.exists()
    assert invoke(*base, "--dry-run", "--device", "bogus")[0] == 2  # as the run refuses it
    assert ct.series_instance_uid[:20] in output
    assert invoke(*base, "--formats", "nifti", "--series", ct.series_instance_uid)[0] == 0
    assert sorted(p.name for p in (out / ct.series_instance_uid).iterdir()) == ["done.json", "segmentation.nii.gz"]
    assert not (out / other.series_instance_uid).exists()
    code, output = invoke(*base, "--modality", "MR")  # a typo'd filter says so, not a silent empty run
    assert code == 0 and "--series/--modality (MR) match none of the 2 series found" in " ".join(output.split())


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    code, output = invoke("--model", str(tmp_path / "nope"), "--input", str(scans), "--output", str(tmp_path / "o"))
    assert code == 2 and "nope" in output
    model = model_folder(tmp_path / "model", members=1)
    code, output = invoke(
        "--model", str(model), "--input", str(scans), "--output", str(tmp_path / "o"), "--formats", "nifti,png"
    )
    assert code == 2 and "png" in output
    for option, value in (("--workers", "-1"), ("--batch-size", "0")):
        code, output = invoke(
            "--model", str(model), "--input", str(scans), "--output", str(tmp_path / "o"), option, value
        )
        assert code == 2 and option in output


def test_a_second_channel_that_covers_part_of_the_first_fails_the_series(tmp_path: Path) -> None:
    """An MR of 2 slices beside a CT of 8: the model would see the MR's minimum on 6 of the CT's slices, filled
    in by the resampling; the CT's series fails and says how much the MR covers."""
    scans = tmp_path / "scans"
    ct = write_series(scans / "ct", shape=(8, 16, 16), seed=1, patient_id="P9")
    write_series(
        scans / "mr",
        shape=(2, 16, 16),
        modality="MR",
        seed=2,
        study_instance_uid=ct.study_instance_uid,
        frame_of_reference_uid=ct.frame_of_reference_uid,
    )
    model = model_folder(tmp_path / "model", members=1, channels=2)
    out = tmp_path / "out"
    code, _ = invoke("--model", str(model), "--input", str(scans), "--output", str(out), "--workers", "0")
    assert code == 1
    row = summary_rows(out)[ct.series_instance_uid]
    assert row["status"] == "failed"
    assert "channel 2" in row["reason"] and "covers only 25.0% of the first channel's grid" in row["reason"]
    assert not (out / ct.series_instance_uid / "segmentation.nii.gz").exists()


def test_two_channel_model_pairs_ct_and_mr_of_a_study(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    ct = write_series(scans / "ct", shape=(8, 16, 16), seed=1, patient_id="P9")
    mr = write_series(  # another grid that covers the CT's: resampled onto it
        scans / "mr",
        shape=(7, 13, 12),
        spacing=(3.0, 1.0, 1.0),
        modality="MR",
        seed=2,
        study_instance_uid=ct.study_instance_uid,
        frame_of_reference_uid=ct.frame_of_reference_uid,
    )
    lonely = write_series(scans / "ct_only", shape=(8, 16, 16), seed=3)  # another study without MR
    model = model_folder(tmp_path / "model", members=1, channels=2)
    out = tmp_path / "out"
    code, _ = invoke("--model", str(model), "--input", str(scans), "--output", str(out), "--workers", "0")
    assert code == 1
    rows = summary_rows(out)
    assert rows[ct.series_instance_uid]["status"] == "ok"
    assert rows[lonely.series_instance_uid]["status"] == "failed"
    assert "no series matches channel 'mr'" in rows[lonely.series_instance_uid]["reason"]
    assert mr.series_instance_uid not in rows or rows[mr.series_instance_uid]["status"] != "failed"
    image = sitk.ReadImage(str(out / ct.series_instance_uid / "segmentation.nii.gz"))
    assert Geometry.from_sitk(image).is_close(ct.geometry)
    recorded = json.loads((out / ct.series_instance_uid / "predictions.json").read_text())["input"]["channels"]
    assert [(c["name"], c["series_instance_uid"], c["modality"], c["number_of_images"]) for c in recorded] == [
        ("ct", ct.series_instance_uid, "CT", 8),
        ("mr", mr.series_instance_uid, "MR", 7),
    ]
