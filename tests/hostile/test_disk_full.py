"""A run whose writes fail (the disk is full; simulated with a file-size limit, EFBIG instead of ENOSPC): every
series fails with the reason, nothing half-written stays, and the summary's own failure is reported cleanly."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factory import write_series
from tests.pipeline.cohort import model_folder

REPO = Path(__file__).resolve().parents[2]
FILE_SIZE_LIMIT = 600
"""Bytes: larger than a tiny NIfTI, smaller than predictions.json, a DICOM-SEG or the summary."""


def _small_files() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


@pytest.mark.parametrize("quiet", [False, True], ids=["tables", "quiet (cron)"])
def test_failing_writes_fail_series_and_the_summary_cleanly(tmp_path: Path, quiet: bool) -> None:
    scans = tmp_path / "scans"
    for i in range(2):
        write_series(scans / f"s{i}", shape=(6, 16, 16), seed=i)
    model = model_folder(tmp_path / "model", members=1)  # written before the limit applies
    out = tmp_path / "out"
    command = ["run", "--model", str(model), "--input", str(scans), "--output", str(out), "--workers", "0"]
    command += ["--quiet"] if quiet else []
    done = subprocess.run(
        [sys.executable, "-m", "innereye_batch", *command],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
        preexec_fn=_small_files,
        timeout=300,
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 1
    assert "Traceback" not in printed, printed[-3000:]
    assert "the run summary could not be written" in done.stderr and "File too large" in done.stderr
    if not quiet:  # with --quiet, that one error line is all a cron job gets: never a silent exit 1
        assert "writing" in printed  # each series failed while writing its outputs, with the reason
    assert not (out / "summary.json").exists()
    leftovers = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".innereye-batch.")]  # locks
    assert leftovers == []  # no output without its done record, no temporary file
