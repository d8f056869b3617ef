"""Output state: sanitised names, atomic writes, done records and the run lock."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from innereye_batch.errors import OutputLockedError
from innereye_batch.files import atomic_write
from innereye_batch.pipeline.state import (
    DONE_RECORD,
    is_done,
    mark_done,
    mark_not_done,
    output_lock,
    remove_stale_temporaries,
    safe_folder_name,
)


@pytest.mark.parametrize(
    "key",
    ["1.2.840.113619.2.55", "1.2.3.stack2", "1.2.3.echo2", "1.2.3.b1000.dir3"],
)
def test_plain_keys_are_their_own_folder_names(key: str) -> None:
    assert safe_folder_name(key) == key


@pytest.mark.parametrize("key", ["../../etc/passwd", "..", "...", "a/b\\c d", "", ".hidden", "/abs", "x\x00y"])
def test_safe_folder_name_never_escapes(key: str) -> None:
    name = safe_folder_name(key)
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert not name.startswith(".") and name not in ("", ".", "..")
    assert "~" in name  # hashed: cannot collide with a plain key


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("1.2.3/4", "1.2.3_4"),
        ("..", "..."),
        ("1.2." + "9" * 200, "1.2." + "9" * 199 + "8"),
        ("1.2.3.Stack2", "1.2.3.stack2"),
        ("ABC", "abc"),
    ],
)
def test_distinct_keys_get_distinct_folders(first: str, second: str) -> None:
    assert safe_folder_name(first).lower() != safe_folder_name(second).lower()


def test_atomic_write_leaves_no_partial_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out" / "segmentation.nii.gz"

    def broken(temp: Path) -> None:
        temp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert list(target.parent.iterdir()) == []


def test_atomic_write_keeps_suffix_for_format_detection(tmp_path: Path) -> None:
    seen: list[str] = []

    def write(temp: Path) -> None:
        seen.append(temp.name)
        temp.write_text("x")

    atomic_write(tmp_path / "segmentation.nii.gz", write)
    assert seen[0].endswith("segmentation.nii.gz") and seen[0] != "segmentation.nii.gz"
    assert (tmp_path / "segmentation.nii.gz").read_text() == "x"


def test_done_record_round_trip_and_invalidation(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    nifti = folder / "segmentation.nii.gz"
    nifti.write_bytes(b"12345")
    mark_done(folder, "in-fp", "model-fp", {"nifti": nifti})
    assert is_done(folder, "in-fp", "model-fp", ("nifti",))
    assert not is_done(folder, "other-input", "model-fp", ("nifti",))
    assert not is_done(folder, "in-fp", "other-model", ("nifti",))
    assert not is_done(folder, "in-fp", "model-fp", ("nifti", "json"))  # json was never written
    nifti.write_bytes(b"123")  # truncated behind our back
    assert not is_done(folder, "in-fp", "model-fp", ("nifti",))
    nifti.write_bytes(b"12345")
    mark_not_done(folder)
    assert not (folder / DONE_RECORD).exists()
    assert not is_done(folder, "in-fp", "model-fp", ("nifti",))


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".tmp-123-segmentation.dcm").write_bytes(b"partial")
    (tmp_path / "a" / "segmentation.dcm").write_bytes(b"complete")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["segmentation.dcm"]


def _hold_lock(folder: str, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    with output_lock(Path(folder)):
        ready.set()
        time.sleep(60)


def test_lock_refuses_second_run_and_is_released_when_holder_is_killed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    holder = context.Process(target=_hold_lock, args=(str(tmp_path), ready))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"), output_lock(tmp_path):
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
        holder.join()
    with output_lock(tmp_path):  # the kernel released the dead holder's lock
        pass


@pytest.mark.parametrize(
    "record", ["[]", '"done"', '{"input_fingerprint": "i", "model_fingerprint": "m", "outputs": []}']
)
def test_a_done_record_edited_into_another_shape_is_not_done(tmp_path: Path, record: str) -> None:
    """A record that is JSON but not the object written raised AttributeError, which stopped the whole run."""
    (tmp_path / DONE_RECORD).write_text(record)
    assert not is_done(tmp_path, "i", "m", ("nifti",))


def test_the_input_fingerprint_records_the_files_as_the_scan_read_them(tmp_path: Path) -> None:
    """A file rewritten between the scan and the planning (a corrected re-send arriving during a long scan): the
    fingerprint took the new file's times with the old header's outputs, and the rerun skipped it as done."""
    from innereye_batch.dicom.scan import scan_tree
    from innereye_batch.pipeline.state import input_fingerprint
    from tests.factory import write_series

    truth = write_series(tmp_path, shape=(3, 6, 6))
    scanned = scan_tree(tmp_path).series[0]
    before = input_fingerprint(scanned)
    time.sleep(0.01)
    truth.paths[1].write_bytes(truth.paths[1].read_bytes())  # rewritten in place, same bytes: new times
    assert input_fingerprint(scanned) == before  # the series as scanned
    assert input_fingerprint(scan_tree(tmp_path).series[0]) != before  # as a rerun scans it


def test_the_done_record_is_on_disk_with_its_folder_before_the_series_counts_as_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut after the record's rename could leave the folder without it, or with it but not an output
    renamed before it: the folder is fsynced after the record's rename, before ``mark_done`` returns."""
    import innereye_batch.files as files

    folder = tmp_path / "series"
    folder.mkdir()
    nifti = folder / "segmentation.nii.gz"
    nifti.write_bytes(b"labels")
    events: list[tuple[str, str]] = []
    replace, fsync = files.os.replace, files.os.fsync

    def recording_replace(source: str | Path, target: str | Path) -> None:
        replace(source, target)
        events.append(("rename", Path(target).name))

    def recording_fsync(fd: int) -> None:
        fsync(fd)
        synced = os.fstat(fd)
        if (synced.st_ino, synced.st_dev) == (folder.stat().st_ino, folder.stat().st_dev):
            events.append(("fsync", "folder"))

    monkeypatch.setattr(files.os, "replace", recording_replace)
    monkeypatch.setattr(files.os, "fsync", recording_fsync)
    mark_done(folder, "in-fp", "model-fp", {"nifti": nifti})
    assert events[-2:] == [("rename", "done.json"), ("fsync", "folder")]
