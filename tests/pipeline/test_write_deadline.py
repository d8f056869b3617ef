"""The write deadline (--write-timeout): a write stuck on storage that stopped answering fails its own series with
the reason, leaves no output, and the run (an interrupted one too) finishes with every other series written.

Each test fails on a writer pool without a deadline by hanging: its timeout mark is a bound on that hang, never a
speed goal; the write timeouts are short so that the run's end comes soon after them.
"""

from __future__ import annotations

import _thread
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from innereye_batch.cli import app
from innereye_batch.pipeline.run import RunOptions, run_batch
from innereye_batch.writers.registry import OutputFormat, register_format, unregister_format
from tests.factory import write_series
from tests.pipeline.cohort import model_folder
from tests.processes import process_alive

STUCK = "stuck"
"""The series description of the series whose writes hang."""
HANG_SECONDS = 3600.0
RELEASE = threading.Event()
"""Ends the hung writes left behind in this process's threads (set when a test leaves); never set in a writer
process, which the deadline kills."""
TIMED_OUT = "took longer than {seconds:g} s (--write-timeout)"


def _hangs_when_stuck(path: Path, prediction: Any, context: Any) -> None:
    """Writes its file, except for the stuck series: there it writes half of it, notes its process in the output
    folder (``hung.pid``), and waits as a write on a hung network mount waits; when released, it fails."""
    if prediction.item.primary.series_description == STUCK:
        path.write_bytes(b"half a file")
        (path.parent.parent / "hung.pid").write_text(str(os.getpid()))
        RELEASE.wait(HANG_SECONDS)
        raise OSError("the storage answered too late")
    path.write_text(f"{prediction.item.key} {os.getpid()}")


LATE = threading.Event()
"""Lets the stuck series' write of ``_answers_late`` go on (the storage answering again, too late)."""


def _answers_late(path: Path, prediction: Any, context: Any) -> None:
    """The stuck series' write waits until ``LATE``, then succeeds: its series was reported failed meanwhile."""
    if prediction.item.primary.series_description == STUCK:
        LATE.wait(HANG_SECONDS)
    path.write_text(f"{prediction.item.key} {os.getpid()}")


def _interrupts_then_hangs(path: Path, prediction: Any, context: Any) -> None:
    """Ctrl-C while the stuck series' write hangs: the run must not wait for that write forever."""
    if prediction.item.primary.series_description == STUCK:
        _thread.interrupt_main()
    _hangs_when_stuck(path, prediction, context)


@pytest.fixture
def hanging_formats() -> Iterator[None]:
    made = [
        OutputFormat(
            "hangs", "hangs.txt", frozenset({"segmentation"}), _hangs_when_stuck, "test format", default=False
        ),
        OutputFormat(
            "interrupts", "interrupts.txt", frozenset({"segmentation"}), _interrupts_then_hangs, "test", default=False
        ),
        OutputFormat("late", "late.txt", frozenset({"segmentation"}), _answers_late, "test", default=False),
    ]
    RELEASE.clear()
    LATE.clear()
    for output in made:
        register_format(output)
    yield
    RELEASE.set()  # the writes left behind end (failing)
    LATE.set()
    for output in made:
        unregister_format(output.name)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_folder(tmp_path_factory.mktemp("model") / "model", members=1)


def _scans(root: Path, stuck: int = 1, good: int = 3) -> tuple[Path, list[str], list[str]]:
    """``good`` series written as usual and ``stuck`` ones whose hanging format hangs (larger: they run first);
    their UIDs."""
    scans = root / "scans"
    made = [(STUCK if i < stuck else f"good {i}", i) for i in range(stuck + good)]
    uids: dict[str, list[str]] = {STUCK: [], "good": []}
    for description, i in made:
        shape = (10 if description == STUCK else 8, 16, 16)
        series = write_series(scans / f"s{i}", shape=shape, seed=40 + i, series_description=description)
        uids[STUCK if description == STUCK else "good"].append(series.series_instance_uid)
    return scans, uids[STUCK], uids["good"]


def _options(model: Path, scans: Path, out: Path, **overrides: Any) -> RunOptions:
    return RunOptions(model=model, input=scans, output=out, device="cpu", workers=0, **overrides)


def _check(out: Path, stuck: list[str], good: list[str], seconds: float) -> list[int]:
    """The summary: the stuck series failed with the deadline's reason and left nothing; the others are written.
    The processes that wrote them."""
    results = {s["series_instance_uid"]: s for s in json.loads((out / "summary.json").read_text())["series"]}
    assert sorted(results) == sorted(stuck + good)
    for key in stuck:
        assert results[key]["status"] == "failed", results[key]
        assert TIMED_OUT.format(seconds=seconds) in results[key]["reason"], results[key]
        assert not (out / key).exists() or list((out / key).iterdir()) == []  # no output without its done record
    for key in good:
        assert results[key]["status"] == "ok", results[key]
        assert (out / key / "hangs.txt").read_text().split()[0] == key and (out / key / "done.json").is_file()
    assert [p.name for p in out.rglob(".tmp-*")] == []  # the half-written file went with its write
    return [int((out / key / "hangs.txt").read_text().split()[1]) for key in good]


@pytest.mark.timeout(240)
def test_a_write_stuck_in_a_thread_fails_its_series_and_the_run_goes_on(
    tmp_path: Path, model: Path, hanging_formats: None
) -> None:
    """Through the command line (--write-timeout) with writer threads: the thread cannot be stopped, so the run
    leaves it behind and finishes."""
    scans, stuck, good = _scans(tmp_path)
    out = tmp_path / "out"
    args = ["run", "--model", str(model), "--input", str(scans), "--output", str(out), "--device", "cpu", "-q"]
    args += ["--workers", "0", "--writers", "0", "--formats", "nifti,hangs,json", "--write-timeout", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    _check(out, stuck, good, 2)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "files-fanned-out"])
def test_a_write_stuck_in_a_writer_process_fails_its_series_and_the_process_is_killed(
    tmp_path: Path, model: Path, hanging_formats: None, processes: int
) -> None:
    """With one writer process a series is written in one task; with two its files are written side by side
    (``fan_out``): either way the process that hangs is killed (not left to serve later writes until the run
    ends), and the writes it shared its pool with are done again alone."""
    scans, stuck, good = _scans(tmp_path)
    out = tmp_path / "out"
    options = _options(model, scans, out, writer_processes=processes, write_timeout_s=4, formats=("nifti", "hangs"))
    report = run_batch(options)
    assert report.exit_code == 1
    writers = _check(out, stuck, good, 4)
    hung = int((out / "hung.pid").read_text())
    assert hung != os.getpid()
    if processes == 1:  # the write queued behind the stuck one may slip in before the kill: no later one
        assert writers.count(hung) <= 1, (hung, writers)
    deadline = time.monotonic() + 60  # a bound on the kill's taking effect, not a speed goal
    while process_alive(hung) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(hung), "the writer process that hung is still running"


@pytest.mark.timeout(240)
def test_writes_left_behind_in_threads_are_bounded(tmp_path: Path, model: Path, hanging_formats: None) -> None:
    """A thread left behind holds its write's prediction: at most as many as the slots (two per writer thread) are
    left at a time, and once that many hang, the next writes fail at once, saying why."""
    scans, stuck, _ = _scans(tmp_path, stuck=4, good=0)
    out = tmp_path / "out"
    options = _options(model, scans, out, writer_processes=0, writer_threads=1, write_timeout_s=1, formats=("hangs",))
    report = run_batch(options)
    reasons = sorted(r.reason for r in report.results)
    assert len(reasons) == 4 and all(r.status == "failed" for r in report.results)
    assert sum(TIMED_OUT.format(seconds=1) in reason for reason in reasons) == 2, reasons
    refused = [reason for reason in reasons if reason.startswith("not written: 2 earlier writes")]
    assert len(refused) == 2 and all("--write-timeout (1 s)" in reason for reason in refused), reasons
    assert all(not (out / key).exists() or list((out / key).iterdir()) == [] for key in stuck)


@pytest.mark.timeout(240)
def test_an_interrupt_does_not_wait_forever_for_a_stuck_write(
    tmp_path: Path, model: Path, hanging_formats: None
) -> None:
    """Ctrl-C (or SIGTERM) while a write hangs: the writes in flight are waited for as usual, the stuck one up to
    its deadline; then the interrupt is raised, and the summary accounts for every series."""
    scans, stuck, _ = _scans(tmp_path, stuck=1, good=2)
    out = tmp_path / "out"
    options = _options(model, scans, out, writer_processes=0, write_timeout_s=2, formats=("nifti", "interrupts"))
    with pytest.raises(KeyboardInterrupt):
        run_batch(options)
    summary = {s["series_instance_uid"]: s for s in json.loads((out / "summary.json").read_text())["series"]}
    assert summary[stuck[0]]["status"] == "failed", summary[stuck[0]]
    assert TIMED_OUT.format(seconds=2) in summary[stuck[0]]["reason"]
    assert len(summary) == 3 and {s["status"] for s in summary.values()} <= {"ok", "failed", "not_run"}


@pytest.mark.timeout(240)
def test_a_write_left_behind_that_ends_later_leaves_no_output(
    tmp_path: Path, model: Path, hanging_formats: None
) -> None:
    """A thread left behind whose storage answers again finishes its write, done record and all, after its series
    was reported failed "and its outputs removed": what it wrote is removed when it ends, so no rerun takes the
    series for done."""
    scans, stuck, good = _scans(tmp_path, stuck=1, good=1)
    out = tmp_path / "out"
    options = _options(model, scans, out, writer_processes=0, write_timeout_s=2, formats=("late", "json"))
    report = run_batch(options)
    assert {r.series_instance_uid: r.status for r in report.results} == {stuck[0]: "failed", good[0]: "ok"}
    left_behind = [t for t in threading.enumerate() if t.name == "writer-write"]
    assert left_behind, "the stuck write is left running in its thread"
    LATE.set()
    for thread in left_behind:
        thread.join(60)  # a bound on the write's end, not a speed goal
    assert not (out / stuck[0]).exists() or sorted(p.name for p in (out / stuck[0]).iterdir()) == []
    assert (out / good[0] / "done.json").is_file() and (out / good[0] / "late.txt").is_file()


def test_the_write_timeout_option_is_checked(tmp_path: Path, model: Path) -> None:
    args = ["run", "--model", str(model), "--input", str(tmp_path), "--output", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--write-timeout", "-1"])
    assert result.exit_code == 2 and "--write-timeout" in result.output
