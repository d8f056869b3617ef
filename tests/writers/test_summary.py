"""Run summary: counts and records in summary.json, one parseable CSV row per series, atomic replacement."""

from __future__ import annotations

import csv
import datetime
import json
from pathlib import Path

import pytest

from innereye_batch.results import ItemResult, StructureStats
from innereye_batch.writers.summary import write_summary

RUN_INFO = {
    "tool_version": "0.1.0",
    "model": {"name": "TestOrgans", "fingerprint": "ab" * 32},
    "started": datetime.datetime(2024, 5, 17, 10, 0, tzinfo=datetime.timezone.utc),
    "finished": "2024-05-17T10:05:00+00:00",
}


def results() -> list[ItemResult]:
    return [
        ItemResult(
            key="1.2.3",
            series_instance_uid="1.2.3",
            study_instance_uid="1.2",
            modality="CT",
            status="ok",
            structures=(StructureStats("liver", 1000, 1.5), StructureStats("spleen", 0, 0.0)),
            timings={"load": 0.5, "infer": 2.0, "write": 0.25},
            outputs={"nifti": "1.2.3/segmentation.nii.gz"},
        ),
        ItemResult(
            key="1.2.4.stack1",
            series_instance_uid="1.2.4",
            study_instance_uid="1.2",
            modality="MR",
            status="failed",
            reason='pixel data truncated, "IM0003"\nsecond line',
        ),
        ItemResult(
            key="1.2.5",
            series_instance_uid="1.2.5",
            study_instance_uid="1.9",
            modality="CT",
            status="ok",
            structures=(StructureStats("kidney", 10, 0.01),),
            timings={"load": 1.0, "total": 4.0},
        ),
        ItemResult(
            key="1.2.6",
            series_instance_uid="1.2.6",
            study_instance_uid="1.9",
            modality="CT",
            status="skipped",
            reason="done in an earlier run",
        ),
    ]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_summary_json(tmp_path: Path) -> None:
    json_path, _ = write_summary(tmp_path, results(), run_info=RUN_INFO)

    assert json_path == tmp_path / "summary.json"
    summary = json.loads(json_path.read_text(encoding="utf-8"))
    assert summary["run"]["tool_version"] == "0.1.0"
    assert summary["run"]["model"]["fingerprint"] == "ab" * 32
    assert summary["run"]["started"] == "2024-05-17 10:00:00+00:00"  # non-JSON values become strings
    assert summary["counts"] == {"ok": 2, "failed": 1, "skipped": 1, "not_run": 0, "total": 4, "skipped_files": 0}
    records = summary["series"]
    assert [r["key"] for r in records] == ["1.2.3", "1.2.4.stack1", "1.2.5", "1.2.6"]
    assert records[0]["structures"][0] == {"name": "liver", "voxel_count": 1000, "volume_ml": 1.5, "present": True}
    assert records[0]["total_s"] == pytest.approx(2.75)
    assert records[0]["outputs"] == {"nifti": "1.2.3/segmentation.nii.gz"}
    assert records[1]["reason"] == 'pixel data truncated, "IM0003"\nsecond line'
    assert records[2]["total_s"] == 4.0  # a recorded total wins over the sum of stages


def test_summary_csv_columns_and_rows(tmp_path: Path) -> None:
    _, csv_path = write_summary(tmp_path, results(), run_info=RUN_INFO)

    assert csv_path == tmp_path / "summary.csv"
    columns, rows = read_csv(csv_path)
    assert columns == [
        "key",
        "series_instance_uid",
        "study_instance_uid",
        "modality",
        "status",
        "reason",
        "liver_ml",
        "spleen_ml",
        "kidney_ml",
        "total_s",
    ]
    assert len(rows) == 4
    assert rows[0]["liver_ml"] == "1.5"
    assert rows[0]["spleen_ml"] == "0"
    assert rows[0]["kidney_ml"] == ""
    assert float(rows[0]["total_s"]) == pytest.approx(2.75)
    assert rows[1]["status"] == "failed"
    # commas and quotes survive; a line break is escaped so that every row is one line (grep, cron mail)
    assert rows[1]["reason"] == 'pixel data truncated, "IM0003"\\x0asecond line'
    assert rows[1]["liver_ml"] == ""
    assert rows[1]["total_s"] == ""
    assert rows[2]["kidney_ml"] == "0.01"
    assert [r["status"] for r in rows] == ["ok", "failed", "ok", "skipped"]


def test_classification_probability_columns(tmp_path: Path) -> None:
    classified = [
        ItemResult("1.5", "1.5", "1.4", "CT", "ok", probabilities={"benign": 0.25, "malignant": 0.75}),
        ItemResult("1.6", "1.6", "1.4", "CT", "failed", reason="bad"),
    ]
    json_path, csv_path = write_summary(tmp_path, classified, run_info=RUN_INFO)

    columns, rows = read_csv(csv_path)
    assert columns[-3:] == ["benign_probability", "malignant_probability", "total_s"]
    assert rows[0]["malignant_probability"] == "0.75"
    assert rows[1]["benign_probability"] == ""
    records = json.loads(json_path.read_text())["series"]
    assert records[0]["probabilities"] == {"benign": 0.25, "malignant": 0.75}
    assert "probabilities" not in records[1]


def test_empty_run(tmp_path: Path) -> None:
    json_path, csv_path = write_summary(tmp_path, [], run_info=RUN_INFO)
    assert json.loads(json_path.read_text())["counts"] == {
        "ok": 0,
        "failed": 0,
        "skipped": 0,
        "not_run": 0,
        "total": 0,
        "skipped_files": 0,
    }
    columns, rows = read_csv(csv_path)
    assert columns[0] == "key" and columns[-1] == "total_s"
    assert rows == []


def test_rewrite_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    write_summary(tmp_path, results()[:1], run_info=RUN_INFO)
    write_summary(tmp_path, results(), run_info=RUN_INFO)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv", "summary.json"]
    assert json.loads((tmp_path / "summary.json").read_text())["counts"]["total"] == 4
    assert len(read_csv(tmp_path / "summary.csv")[1]) == 4
    assert (tmp_path / "summary.json").stat().st_mode & 0o644 == 0o644


def test_failed_rewrite_keeps_the_previous_summary(tmp_path: Path) -> None:
    write_summary(tmp_path, results(), run_info=RUN_INFO)
    before = (tmp_path / "summary.json").read_bytes(), (tmp_path / "summary.csv").read_bytes()

    with pytest.raises(ValueError):  # NaN is not JSON
        write_summary(tmp_path, results()[:1], run_info={**RUN_INFO, "bad": float("nan")})

    assert ((tmp_path / "summary.json").read_bytes(), (tmp_path / "summary.csv").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv", "summary.json"]


def test_interrupted_rename_leaves_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_summary(tmp_path, results(), run_info=RUN_INFO)
    before = (tmp_path / "summary.json").read_bytes()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk went away")

    monkeypatch.setattr("innereye_batch.files.os.replace", failing_replace)  # atomic_write renames with it
    with pytest.raises(OSError, match="disk went away"):
        write_summary(tmp_path, results()[:1], run_info=RUN_INFO)

    assert (tmp_path / "summary.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv", "summary.json"]
