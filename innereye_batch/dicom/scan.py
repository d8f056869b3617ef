"""Walk a folder tree, read every file's header (``file_header.py``, in worker processes for large trees), and
hand the images to stacks.py.

Every file either lands in exactly one series (stack) or in the skipped list with a reason; the scan never raises
for a file. A file that claims to be an image but cannot be used (cut, corrupt, no pixel data) is also a fatal
problem of its series, or of every series in its folder where its series cannot be read from it (damaged.py).
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from innereye_batch.dicom.damaged import Damaged, attach_damage
from innereye_batch.dicom.file_header import read_file_header
from innereye_batch.dicom.headers import FileHeader
from innereye_batch.dicom.series import SeriesInfo, SkippedFile
from innereye_batch.dicom.stacks import build_series
from innereye_batch.processes import die_with_parent


@dataclass(frozen=True)
class ScanResult:
    """Every series (stack) found under a folder, and every file that was not used."""

    series: tuple[SeriesInfo, ...]
    """Sorted by study UID, series number and key."""
    skipped: tuple[SkippedFile, ...]


def scan_tree(root: Path, *, workers: int | None = None, regrid_irregular: bool = False) -> ScanResult:
    """Find every image series under ``root`` from headers only; never raises for a bad file.

    ``workers``: processes reading headers. None (automatic): one per core, at most ``MAX_SCAN_PROCESSES``, for
    trees of ``PARALLEL_MIN_FILES`` files or more, else this process alone; 1: this process alone. pydicom parses
    in Python under the GIL, so threads would only add contention (measured: 1.7x slower per file with two
    threads on two cores); processes parse side by side and overlap waiting on storage. A worker process that
    dies (killed for memory, say) costs nothing: the files it had not answered are read again here.

    With ``regrid_irregular`` the gantry-tilt and variable-spacing problems are not fatal: such stacks will be
    resampled onto a regular grid by ``load_volume`` (``regrid.py``).
    """
    unreadable_folders: list[SkippedFile] = []
    paths = list(_walk(Path(root), unreadable_folders))
    outcomes = _read_headers(paths, _process_count(len(paths), workers))
    headers = [o for o in outcomes if isinstance(o, FileHeader)]
    damaged = [o for o in outcomes if isinstance(o, Damaged)]
    skipped = [o for o in outcomes if isinstance(o, SkippedFile)] + [d.skipped for d in damaged] + unreadable_folders
    held: dict[str, set[int]] = {}  # InstanceNumbers of images left out (colour): numbers no stack lost
    for d in damaged:
        if d.unsupported and d.series_instance_uid and d.instance_number is not None:
            held.setdefault(d.series_instance_uid, set()).add(d.instance_number)
    built = build_series(headers, regrid_irregular=regrid_irregular, numbers_held_elsewhere=held)
    series = attach_damage(built, damaged)
    series.sort(key=lambda s: (s.study_instance_uid, s.series_number is None, s.series_number or 0, s.key))
    skipped.sort(key=lambda s: str(s.path))
    return ScanResult(series=tuple(series), skipped=tuple(skipped))


PARALLEL_MIN_FILES = 2000
"""Fewer files are read in this process: starting worker processes (about 0.3 s) would cost more than it saves."""
MAX_SCAN_PROCESSES = 8
_CHUNK_FILES = 128
"""Files per task sent to a worker process (few messages, and an even spread over the workers)."""


def _process_count(files: int, workers: int | None) -> int:
    if workers is not None:
        return max(1, workers)
    if files < PARALLEL_MIN_FILES or "fork" not in multiprocessing.get_all_start_methods():
        return 1  # without fork, a worker would import the caller's main module again (a script's side effects)
    return max(1, min(MAX_SCAN_PROCESSES, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def _read_headers(paths: list[Path], processes: int) -> list[FileHeader | SkippedFile | Damaged]:
    """Every file's outcome, in the order of ``paths``: here, or in ``processes`` worker processes."""
    if processes <= 1 or len(paths) <= _CHUNK_FILES:
        return _read_chunk(paths)
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    chunks = [paths[i : i + _CHUNK_FILES] for i in range(0, len(paths), _CHUNK_FILES)]
    answered: list[list[FileHeader | SkippedFile | Damaged] | None] = [None] * len(chunks)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")  # spawn only when asked for
    pool = ProcessPoolExecutor(  # fork: no start-up imports, no re-import of the caller's main module
        max_workers=min(processes, len(chunks)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )
    try:
        for index, outcome in enumerate(pool.map(_read_chunk, chunks)):
            answered[index] = outcome
    except (BrokenProcessPool, OSError):  # a worker died, or none could start: read the rest here
        pass
    finally:  # on Ctrl-C too: the chunks not started are dropped, not read first
        pool.shutdown(wait=True, cancel_futures=True)
    return [o for index, chunk in enumerate(chunks) for o in (answered[index] or _read_chunk(chunk))]


def _init_worker(parent: int) -> None:
    """In each header-reading worker: die with the scanning process; Ctrl-C is the scanning process's to handle
    (held locks were closed at the fork, see ``pipeline.locks``)."""
    import signal

    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _read_chunk(paths: list[Path]) -> list[FileHeader | SkippedFile | Damaged]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every odd value; problems are reported below
        return [read_file_header(path) for path in paths]


def _walk(root: Path, unreadable: list[SkippedFile]) -> Iterator[Path]:
    """Every file under ``root`` (symbolic links to folders not followed), sorted per folder, depth first.

    Iterative, so any depth of folders works (``os.walk`` recurses on Python < 3.12); a folder that cannot be
    listed is recorded in ``unreadable`` with the reason instead of being passed over in silence.
    """
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                listed = sorted(entries, key=lambda e: e.name)
        except OSError as error:
            unreadable.append(SkippedFile(folder, f"folder cannot be read: {type(error).__name__}: {error.strerror}"))
            continue
        subfolders = []
        for entry in listed:
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
                linked_folder = not is_folder and entry.is_symlink() and entry.is_dir()
            except OSError:
                is_folder = linked_folder = False
            if is_folder:
                subfolders.append(Path(entry.path))
            elif linked_folder:
                unreadable.append(SkippedFile(Path(entry.path), "symbolic link to a folder: not followed"))
            else:
                yield Path(entry.path)
        pending.extend(reversed(subfolders))
