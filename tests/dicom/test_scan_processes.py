"""Header reading in worker processes gives exactly what reading in this process gives, and a worker that dies
costs nothing: the files it had not answered are read again here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from innereye_batch.dicom import scan
from innereye_batch.dicom.scan import scan_tree
from tests.factory import write_series


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
