"""`innereye-batch scan` reports series as JSON or a table, with no patient name or ID anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from innereye_batch.cli import app
from tests.factory import rotation_direction, write_series

PHI = ("Doe^Jane", "Doe", "PAT001")


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, list]:
    row, col = rotation_direction((0.0, 0.0, 1.0), 15.0)
    series = [
        write_series(tmp_path / "a", series_description="chest", series_number=3),
        write_series(tmp_path / "b", row_direction=row, column_direction=col, remove_slice=2, seed=1),
    ]
    (tmp_path / "b" / "readme.txt").write_text("hello")
    return tmp_path, series


def test_scan_json_fields_and_no_patient_identity(tree: tuple[Path, list]) -> None:
    folder, truths = tree
    result = CliRunner().invoke(app, ["scan", "--input", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    for secret in PHI:
        assert secret not in result.output
    report = json.loads(result.output)
    # paths are relative to --input (folder names often name the patient)
    assert report["skipped"] == [{"path": "b/readme.txt", "reason": report["skipped"][0]["reason"]}]
    assert report["skipped"][0]["reason"].startswith("not a DICOM file")
    by_uid = {s["series_instance_uid"]: s for s in report["series"]}
    good, gapped = (by_uid[t.series_instance_uid] for t in truths)
    assert good["series_description"] == "chest" and good["modality"] == "CT"
    assert good["study_instance_uid"] == truths[0].study_instance_uid
    assert good["num_files"] == 8 and good["shape"] == [8, 16, 12]
    assert good["spacing_mm"] == [2.5, 0.8, 0.7]
    assert good["origin_mm"] == [-100.0, -120.0, 50.0]
    assert good["direction"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert good["transfer_syntaxes"] == ["1.2.840.10008.1.2.1"]
    assert good["problems"] == [] and good["loadable"] is True
    assert good["files"] == [str(p.relative_to(folder)) for p in truths[0].paths]
    assert gapped["loadable"] is False
    assert gapped["problems"][0].startswith("missing_slices:") and gapped["problems"][0].endswith("(fatal)")
    assert gapped["direction"] == pytest.approx(list(truths[1].geometry.direction), abs=1e-7)


def test_scan_table_for_people(tree: tuple[Path, list]) -> None:
    folder, truths = tree
    result = CliRunner().invoke(app, ["scan", "--input", str(folder)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for secret in PHI:
        assert secret not in result.output
    assert "2 series found" in result.output
    assert truths[0].series_instance_uid[-16:] in result.output
    assert "missing_slices" in result.output and "chest" in result.output
    assert "1 file(s) skipped" in result.output


def test_scan_of_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["scan", "--input", str(tmp_path / "nope")])
    assert result.exit_code == 2


def test_skipped_files_reasons_name_paths_relative_to_the_input(tmp_path: Path) -> None:
    """A skipped file's reason quoted its absolute path (a dangling link: the library's FileNotFoundError), and so
    the input folder's name, which often names the patient; its ``path`` field was already relative."""
    folder = tmp_path / "SMITH_JOHN"
    write_series(folder / "a")
    (folder / "a" / "dangling.dcm").symlink_to(tmp_path / "gone.dcm")
    result = CliRunner().invoke(app, ["scan", "--input", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    (skipped,) = json.loads(result.output)["skipped"]
    assert skipped["path"] == "a/dangling.dcm"
    assert "FileNotFoundError" in skipped["reason"] and "a/dangling.dcm" in skipped["reason"], skipped
    assert "SMITH_JOHN" not in result.output
