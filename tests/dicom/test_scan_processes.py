"""Header reading in worker processes gives exactly what reading in this process gives, and a worker that dies
costs nothing: the files it had not answered are read again here."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from innereye_batch.dicom import scan
from innereye_batch.dicom.scan import scan_tree
from tests.factory import write_series
from tests.processes import process_alive


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Four series (one with a cut slice, one folder with a stray text file), in chunks of 8 files."""
    monkeypatch.setattr(scan, "_CHUNK_FILES", 8)
    for index in range(4):
        write_series(tmp_path / f"patient{index % 2}" / f"series{index}", shape=(12, 8, 8), seed=index)
    cut = sorted((tmp_path / "patient1" / "series3").iterdir())[5]
    cut.write_bytes(cut.read_bytes()[:300])
    (tmp_path / "patient0" / "notes.txt").write_text("not DICOM")
    return tmp_path


def test_processes_give_what_one_process_gives(tree: Path) -> None:
    alone = scan_tree(tree, workers=1)
    assert len(alone.series) == 4 and len(alone.skipped) == 2  # the text file, and the cut slice
    assert any(s.fatal_problems for s in alone.series)
    assert scan_tree(tree, workers=3) == alone


_DEATH: dict[str, object] = {}
"""What ``_dying_read_chunk`` needs: the parent's pid, the file whose chunk kills its worker, calls in the parent."""


def _dying_read_chunk(paths: list[Path]) -> list[object]:
    """``scan._read_chunk``, except that a worker process given the victim's chunk vanishes (as if OOM-killed).
    At module level, so that the pool can send it to its workers by name."""
    here = os.getpid() == _DEATH["parent"]
    if _DEATH["victim"] in paths and not here:
        os._exit(9)
    if here:
        _DEATH["calls_here"] += 1  # type: ignore[operator]
    return _DEATH["read_chunk"](paths)  # type: ignore[operator,no-any-return]


def test_a_worker_that_dies_costs_nothing(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    alone = scan_tree(tree, workers=1)
    _DEATH.update(parent=os.getpid(), victim=sorted(tree.rglob("*.dcm"))[20], read_chunk=scan._read_chunk, calls_here=0)
    monkeypatch.setattr(scan, "_read_chunk", _dying_read_chunk)  # forked workers inherit the patched module
    assert scan_tree(tree, workers=2) == alone
    assert _DEATH["calls_here"]  # the chunks the dead pool had not answered were read here


def test_automatic_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    assert scan._process_count(scan.PARALLEL_MIN_FILES - 1, None) == 1
    assert 1 <= scan._process_count(scan.PARALLEL_MIN_FILES, None) <= scan.MAX_SCAN_PROCESSES
    assert scan._process_count(10, 3) == 3 and scan._process_count(10_000, 1) == 1


_SLOW_SCAN = """
import os, sys, time
from pathlib import Path
from innereye_batch.dicom import scan

read_chunk = scan._read_chunk
def slow(paths):
    with open(sys.argv[2], "a") as pids:
        pids.write(f"{os.getpid()}\\n")
    time.sleep(0.5)
    return read_chunk(paths)

scan._CHUNK_FILES = 4
scan._read_chunk = slow
scan.scan_tree(Path(sys.argv[1]), workers=2)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_scan(tmp_path: Path) -> None:
    """Rule 8 of issue 14 for the scan: a SIGKILLed run leaves no header-reading worker behind."""
    write_series(tmp_path / "series", shape=(40, 8, 8))
    pids = tmp_path / "pids.txt"
    process = subprocess.Popen([sys.executable, "-c", _SLOW_SCAN, str(tmp_path / "series"), str(pids)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not pids.exists() or len(set(pids.read_text().split())) < 2):
        time.sleep(0.05)
    workers = {int(p) for p in pids.read_text().split()}
    assert len(workers) == 2 and process.pid not in workers
    process.kill()
    process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(process_alive(pid) for pid in workers):
        time.sleep(0.05)
    assert not any(process_alive(pid) for pid in workers)


def test_headers_cross_the_process_boundary_whole(tree: Path) -> None:
    """Headers are pickled by their field values (faster to load in the scanning process): every field of every
    kind of outcome, pydicom's own files (multi-frame, enhanced, projection, compressed) included, comes back."""
    import pickle

    from pydicom.data.data_manager import get_testdata_files

    paths = [*sorted(p for p in tree.rglob("*") if p.is_file()), *map(Path, get_testdata_files("*.dcm"))]
    outcomes = scan._read_chunk(paths)
    assert {type(o).__name__ for o in outcomes} >= {"FileHeader", "SkippedFile", "Damaged"}
    assert any(len(o.images) > 1 for o in outcomes if hasattr(o, "images"))  # multi-frame files among them
    for outcome in outcomes:
        back = pickle.loads(pickle.dumps(outcome))
        assert back == outcome and repr(back) == repr(outcome)
