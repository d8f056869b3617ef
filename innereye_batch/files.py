"""Writing files safely: atomic replacement (temporary file, fsync, rename), strict JSON, and removing trees.

Shared by the writers, the run state and the summary, so that no reader ever sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".tmp-"
"""Prefix of every temporary file; a later run removes those an interrupted run left behind."""


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(temp_path)`` then rename the finished file onto ``path`` (same folder, so atomic).

    The temporary name keeps the final name's suffixes (writers such as nibabel infer the format from them).
    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{path.name}")
    try:
        write(temp)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def sha256_file(path: Path, *, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sync_folder(folder: Path) -> None:
    """fsync a folder, so that the files just renamed into it survive a power cut; a file system that cannot
    (some network and FUSE ones refuse a folder's fsync) is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def json_text(document: Any) -> str:
    """Indented UTF-8 JSON text; NaN and infinity are refused (they are not JSON)."""
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(path: Path, document: Any) -> None:
    """Write ``document`` to exactly ``path`` as indented UTF-8 JSON (see ``json_text``)."""
    text = json_text(document)
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(text)


def write_json_atomic(path: Path, document: Any) -> None:
    """Write ``document`` as indented UTF-8 JSON, atomically."""
    atomic_write(path, lambda temp: write_json(temp, document))


def remove_tree(path: Path) -> None:
    """Remove a folder tree, or a file, as far as it can; never raises. Iterative, so any depth of folders goes
    (``shutil.rmtree`` recurses on Python < 3.12 and raised RecursionError on an upload 1,800 folders deep);
    symbolic links are removed, never followed."""
    pending, folders = [Path(path)], []
    while pending:
        current = pending.pop()
        try:
            if current.is_symlink() or not current.is_dir():
                current.unlink(missing_ok=True)
                continue
            folders.append(current)
            with os.scandir(current) as entries:
                pending.extend(Path(entry.path) for entry in entries)
        except OSError:
            continue
    for folder in reversed(folders):  # deepest first: each is empty once what it held is gone
        try:
            folder.rmdir()
        except OSError:
            continue
