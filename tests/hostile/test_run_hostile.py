"""The CLI in its default console mode, under an address-space limit, over the hostile corpus: every case ends
as expected, the good series of the same run is ok, nothing crashes or leaks a patient's identity."""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hostile.corpus import PATIENT_NAMES, Case, build_corpus, read_summary_rows, remove_deep_tree
from tests.pipeline.cohort import model_folder

ADDRESS_SPACE = 4 * 2**30
"""A decode of the 65535 x 65535 file alone would need 16 GiB."""
REPO = Path(__file__).resolve().parents[2]


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed command as a person runs it: console mode (colours, tables, progress), limited memory."""
    env = {**os.environ, "COLUMNS": "160", "FORCE_COLOR": "1", "TERM": "xterm-256color"}
    return subprocess.run(
        [sys.executable, "-m", "innereye_batch", *args],
        capture_output=True,
        text=True,
        errors="surrogateescape",
        env=env,
        cwd=REPO,
        preexec_fn=_limited,
        timeout=600,
    )


@pytest.fixture(scope="module")
def hostile_run(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> tuple[list[Case], str, Path, Path, subprocess.CompletedProcess[str]]:
    base = tmp_path_factory.mktemp("hostile")
    scans = base / "scans"
    request.addfinalizer(lambda: remove_deep_tree(scans))
    cases, good = build_corpus(scans)
    model = model_folder(base / "model", members=1)
    out = base / "out"
    done = cli("run", "--model", str(model), "--input", str(scans), "--output", str(out), "--workers", "2")
    return cases, good, scans, out, done


def test_the_run_survives_and_reports_failures(hostile_run: tuple) -> None:
    _, _, _, _, done = hostile_run
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    assert done.returncode == 1  # some series failed, the run went on


def test_every_case_ends_as_expected(hostile_run: tuple) -> None:
    cases, good, _, out, _ = hostile_run
    rows = read_summary_rows(out)
    assert [r["status"] for r in rows if r["series_instance_uid"] == good] == ["ok"]
    for case in cases:
        row = case.row(rows)
        assert row is not None, f"{case.name}: not exactly one row in the summary"
        assert row["status"] == case.status, f"{case.name}: {row['status']} ({row['reason']})"
        for phrase in case.reason_has:
            assert phrase in str(row["reason"]), f"{case.name}: {row['reason']!r} lacks {phrase!r}"


def test_no_patient_identity_and_no_absolute_paths(hostile_run: tuple) -> None:
    _, _, scans, out, done = hostile_run
    printed = done.stdout + done.stderr
    summaries = (out / "summary.json").read_text(encoding="utf-8") + (out / "summary.csv").read_text(encoding="utf-8")
    for name in PATIENT_NAMES:
        assert name not in printed and name not in summaries
    assert "MRN-SMITH" not in printed + summaries
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    reasons = [r["reason"] for r in summary["series"]] + [f["path"] + f["reason"] for f in summary["skipped_files"]]
    assert not [r for r in reasons if str(scans) in r]  # file names relative to --input (they may name the patient)
    assert not [line for line in printed.splitlines() if str(scans) in line and "Outputs in" not in line]


def test_text_from_files_is_shown_as_text(hostile_run: tuple) -> None:
    _, _, _, out, done = hostile_run
    assert "\x1b[2J" not in done.stdout + done.stderr  # the UID's escape sequence never reaches the terminal
    assert "\\x1b[2J" in (out / "summary.csv").read_text(encoding="utf-8")
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    formula = next(r for r in rows if "HYPERLINK" in r["series_instance_uid"])
    assert formula["series_instance_uid"].startswith("'=") and formula["key"].startswith("'=")
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "@")), value
            assert "\x00" not in value and "\x1b" not in value


def test_distinct_series_get_distinct_folders(hostile_run: tuple) -> None:
    cases, _, _, out, _ = hostile_run
    rows = read_summary_rows(out)
    collisions = [c for c in cases if c.rule.startswith("6")]
    folders = {str(c.row(rows)["outputs"]["nifti"]).split("/")[0] for c in collisions}  # type: ignore[index]
    assert len(folders) == len(collisions)
    for folder in folders:
        assert (out / folder / "done.json").is_file()


def test_scan_shows_the_corpus_without_crashing(hostile_run: tuple) -> None:
    _, _, scans, _, _ = hostile_run
    shown = cli("scan", "--input", str(scans))
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr[-3000:]
    assert "AXIAL [/w contrast]" in shown.stdout  # markup shown literally, not interpreted
    assert "\x1b[2J" not in shown.stdout
    for name in PATIENT_NAMES:
        assert name not in shown.stdout + shown.stderr


def test_a_rerun_settles(hostile_run: tuple) -> None:
    cases, good, scans, out, _ = hostile_run
    model = out.parent / "model"
    again = cli("run", "--model", str(model), "--input", str(scans), "--output", str(out), "--workers", "0", "--quiet")
    assert again.returncode == 1 and again.stdout == "" and "Traceback" not in again.stderr
    rows = read_summary_rows(out)
    for case in cases:
        expected = "skipped" if case.status == "ok" else case.status
        assert case.row(rows)["status"] == expected, case.name  # type: ignore[index]
    assert [r["status"] for r in rows if r["series_instance_uid"] == good] == ["skipped"]
