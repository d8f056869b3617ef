"""Output-folder state for safe reruns: sanitised folder names, atomic writes, done records, the run lock.

A series counts as done only when ``done.json`` exists in its folder, names the same input and model
fingerprints, and every output it records is present with the recorded size. ``done.json`` is removed before a
series is redone and written last, after every output has been renamed into place, so an interrupted run never
leaves a series that looks done but is not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.errors import OutputLockedError
from innereye_batch.files import TEMP_PREFIX, write_json_atomic

DONE_RECORD = "done.json"
LOCK_FILE = ".innereye-batch.lock"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_folder_name(key: str) -> str:
    """A folder name derived from a DICOM field that cannot escape the output folder or hide itself."""
    name = _UNSAFE.sub("_", key.strip())[:128].strip(".")
    return name or "unnamed"


def series_folder(output_dir: Path, series: SeriesInfo) -> Path:
    """Where one series' outputs go: ``<output>/<sanitised SeriesInfo.key>/``."""
    return output_dir / safe_folder_name(series.key)


def input_fingerprint(series: SeriesInfo) -> str:
    """sha256 over the series' images: SOP Instance UID, frame, file name and size, in slice order."""
    digest = hashlib.sha256(series.key.encode())
    for ref in series.slices:
        size = ref.path.stat().st_size if ref.path.exists() else -1
        digest.update(f"|{ref.sop_instance_uid}|{ref.frame}|{ref.path.name}|{size}".encode())
    return digest.hexdigest()


def is_done(folder: Path, input_fp: str, model_fp: str, formats: tuple[str, ...]) -> bool:
    """True when ``folder`` holds a complete result for these fingerprints covering ``formats``."""
    try:
        record = json.loads((folder / DONE_RECORD).read_text())
    except (OSError, ValueError):
        return False
    if record.get("input_fingerprint") != input_fp or record.get("model_fingerprint") != model_fp:
        return False
    outputs: dict[str, dict[str, Any]] = record.get("outputs", {})
    if not set(formats) <= set(outputs):
        return False
    for entry in outputs.values():
        target = folder / entry["file"]
        if not target.is_file() or target.stat().st_size != entry["size"]:
            return False
    return True


def mark_not_done(folder: Path) -> None:
    """Remove the done record before a series is (re)done."""
    (folder / DONE_RECORD).unlink(missing_ok=True)


def mark_done(folder: Path, input_fp: str, model_fp: str, outputs: dict[str, Path]) -> None:
    """Record a finished series; called after every output is in place."""
    record = {
        "input_fingerprint": input_fp,
        "model_fingerprint": model_fp,
        "outputs": {fmt: {"file": p.name, "size": p.stat().st_size} for fmt, p in sorted(outputs.items())},
    }
    write_json_atomic(folder / DONE_RECORD, record)


def remove_stale_temporaries(output_dir: Path) -> int:
    """Delete temporary files left by an interrupted run (only safe while holding the lock)."""
    removed = 0
    for temp in output_dir.glob(f"**/{TEMP_PREFIX}*"):
        if temp.is_file():
            temp.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def output_lock(output_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder; a second concurrent run fails with a clear message.

    The lock is an ``flock`` on a file, so the operating system releases it when the process dies, even by
    SIGKILL: a crashed run never blocks the next one.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    lock_path = output_dir / LOCK_FILE
    handle = open(lock_path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            raise OutputLockedError(
                f"output folder {output_dir} is in use by another innereye-batch run ({holder}); "
                "wait for it to finish or choose another --output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield
    finally:
        handle.close()
