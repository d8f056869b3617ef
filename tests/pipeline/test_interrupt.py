"""A run killed with SIGKILL part-way through, then run again, ends exactly as an uninterrupted run."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from innereye_batch.cli import app
from tests.factory import write_series
from tests.pipeline.cohort import labels_from_nifti, model_folder
from tests.processes import process_alive

SERIES = 6


def run_args(model: Path, scans: Path, out: Path) -> list[str]:
    return ["run", "--model", str(model), "--input", str(scans), "--output", str(out), "--quiet"]


@contextlib.contextmanager
def running(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """``innereye-batch *args`` in a process group of its own, killed with its workers when the test leaves
    (a failed assertion would leave a run going, decoding and holding its folder's lock)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "innereye_batch", *args], start_new_session=True, cwd=Path(__file__).resolve().parents[2]
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    uids = [write_series(scans / f"s{i}", shape=(16, 40, 40), seed=i).series_instance_uid for i in range(SERIES)]
    model = model_folder(tmp_path / "model", members=2)
    reference = tmp_path / "reference"
    assert CliRunner().invoke(app, [*run_args(model, scans, reference), "--workers", "0"]).exit_code == 0

    out = tmp_path / "out"
    with running([*run_args(model, scans, out), "--workers", "1"]) as process:
        deadline = time.monotonic() + 180
        while not list(out.glob("*/done.json")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)  # its process group: the kill takes the DataLoader workers too
        process.wait()
    done_before = {p.parent.name for p in out.glob("*/done.json")}
    assert 0 < len(done_before) < SERIES, "the kill must land part-way through the run"
    assert not (out / "summary.json").exists()  # the killed run never got to its summary

    result = CliRunner().invoke(app, [*run_args(model, scans, out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    with open(out / "summary.csv", newline="") as handle:
        rows = {row["series_instance_uid"]: row for row in csv.DictReader(handle)}
    for uid in uids:
        expected = "skipped" if uid in done_before else "ok"
        assert rows[uid]["status"] == expected, rows[uid]
        assert (out / uid / "done.json").is_file()
        np.testing.assert_array_equal(
            labels_from_nifti(out / uid / "segmentation.nii.gz"),
            labels_from_nifti(reference / uid / "segmentation.nii.gz"),
        )
        assert sorted(p.name for p in (out / uid).iterdir()) == sorted(p.name for p in (reference / uid).iterdir())
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]


def test_sigterm_finishes_writes_in_flight_and_accounts_for_every_series(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    uids = [write_series(scans / f"s{i}", shape=(16, 40, 40), seed=i).series_instance_uid for i in range(SERIES)]
    model = model_folder(tmp_path / "model", members=2)
    out = tmp_path / "out"
    with running([*run_args(model, scans, out), "--workers", "1"]) as process:
        deadline = time.monotonic() + 180
        while not list(out.glob("*/done.json")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)  # what cron's `timeout` or systemd sends (to the main process)
        assert process.wait(timeout=120) != 0

    summary = json.loads((out / "summary.json").read_text())
    statuses = {record["series_instance_uid"]: record for record in summary["series"]}
    assert set(statuses) == set(uids)  # every series of the plan is accounted for
    done = {p.parent.name for p in out.glob("*/done.json")}
    assert 0 < len(done) < SERIES
    for uid, record in statuses.items():
        if uid in done:
            assert record["status"] == "ok"
        else:
            assert record["status"] == "not_run" and "interrupted" in record["reason"]
    assert summary["counts"]["not_run"] == SERIES - len(done) and summary["counts"]["skipped"] == 0
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_sigkill_of_the_main_process_alone_leaves_no_worker_holding_the_lock(tmp_path: Path) -> None:
    from innereye_batch.pipeline.state import LOCK_FILE

    scans = tmp_path / "scans"
    for i in range(SERIES):
        write_series(scans / f"s{i}", shape=(16, 40, 40), seed=i)
    model = model_folder(tmp_path / "model", members=2)
    out = tmp_path / "out"
    with running([*run_args(model, scans, out), "--workers", "2"]) as process:
        deadline = time.monotonic() + 180
        while len(_children(process.pid)) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        workers = _children(process.pid)
        assert workers, "the run must have started its decoding workers"
        process.send_signal(signal.SIGKILL)  # the main process only, as a crash or the OOM killer would
        process.wait()
        deadline = time.monotonic() + 30  # before leaving the block, whose kill of the group would take them
        while any(process_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(process_alive(w) for w in workers), "decoding workers must die with their run"
    import fcntl

    with open(out / LOCK_FILE, "a+") as handle:  # a new run can take the folder at once
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    result = CliRunner().invoke(app, [*run_args(model, scans, out), "--workers", "0"])
    assert result.exit_code == 0, result.output
