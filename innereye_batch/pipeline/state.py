"""Output-folder state for safe reruns: sanitised folder names, atomic writes, done records, the run lock.

A series counts as done only when ``done.json`` exists in its folder, names the same input and model
fingerprints, and every output it records is present with the recorded size (and, when the run verifies, the
recorded sha256: ``changed_outputs``). ``done.json`` and the outputs of an
earlier run are removed before a series is redone; ``done.json`` is written last, after every output has been
renamed into place, so an interrupted run never leaves a series that looks done but is not.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.errors import error_text
from innereye_batch.files import TEMP_PREFIX, sha256_file, sync_folder, write_json_atomic
from innereye_batch.pipeline.locks import LOCK_FILE, output_lock
from innereye_batch.results import ItemResult, StructureStats

__all__ = ["LOCK_FILE", "output_lock"]  # the lock lives in locks.py; kept importable from here

DONE_RECORD = "done.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_PLAIN_KEY = re.compile(r"[0-9]+(\.[0-9]+)*(\.[a-z][a-z0-9]*)*")
"""A DICOM UID, optionally with the lower-case suffixes the scan adds to split series (``.stack2``, ``.echo2``)."""
_MAX_PLAIN = 128
_HASH_SEPARATOR = "~"
"""Never in a plain key, so a hashed name cannot equal a plain one."""


def safe_folder_name(key: str) -> str:
    """A folder name for an item key: cannot escape the output folder or hide itself, and distinct keys always
    get distinct names (also on case-insensitive file systems).

    A plain key (a UID with the scan's lower-case suffixes, at most 128 characters) is its own name. Any other
    key is a sanitised prefix of it, ``~`` and 16 hex digits of its sha256: ``1.2.3/4`` and ``1.2.3_4``, ``..``
    and ``...``, or two long keys with a common prefix land in different folders.
    """
    if len(key) <= _MAX_PLAIN and _PLAIN_KEY.fullmatch(key):
        return key
    prefix = _UNSAFE.sub("_", key.strip())[:64].strip(".") or "series"
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{prefix}{_HASH_SEPARATOR}{digest}"


def series_folder(output_dir: Path, series: SeriesInfo) -> Path:
    """Where one series' outputs go: ``<output>/<safe_folder_name(SeriesInfo.key)>/``."""
    return output_dir / safe_folder_name(series.key)


def input_fingerprint(series: SeriesInfo) -> str:
    """sha256 over the series' images: SOP Instance UID, frame, file name, size, modification and status-change
    times, in slice order. The times catch a file rewritten in place at the same size (a corrected slice); the
    status-change time also when its modification time was set back (``cp -p``, ``rsync -t``), which no process
    can do to a status-change time. A copied tree therefore counts as changed: its series are redone.

    The times are those the scan saw before it read each header (``SliceRef.file_status``): a file rewritten
    after that gives a fingerprint a rerun does not match, never the old header's outputs under the new file's
    times."""
    digest = hashlib.sha256(series.key.encode())
    for ref in series.slices:
        try:
            size, modified, changed = ref.file_status or _status_now(ref.path)
            facts = f"{size}|{modified}|{changed}"
        except OSError:
            facts = "missing"
        digest.update(f"|{ref.sop_instance_uid}|{ref.frame}|{ref.path.name}|{facts}".encode())
    return digest.hexdigest()


def _status_now(path: Path) -> tuple[int, int, int]:
    status = path.stat()
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns


def results_fingerprint(model_fp: str, settings: Any) -> str:
    """sha256 over the model's fingerprint and the run settings that change what is written (output options,
    explanation methods): a series done with other settings is not done."""
    blob = json.dumps({"model": model_fp, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def is_done(folder: Path, input_fp: str, model_fp: str, formats: tuple[str, ...]) -> bool:
    """True when ``folder`` holds a complete result for these fingerprints covering ``formats``."""
    return done_record(folder, input_fp, model_fp, formats) is not None


def done_record(folder: Path, input_fp: str, model_fp: str, formats: tuple[str, ...]) -> dict[str, Any] | None:
    """``folder``'s done record when it vouches for a complete result for these fingerprints covering
    ``formats`` (``is_done``); None otherwise, and for a record unreadable or edited by hand (then redone)."""
    if folder.is_symlink():  # never vouched for: the series is redone, and refused there (``mark_not_done``)
        return None
    try:
        record: dict[str, Any] = json.loads((folder / DONE_RECORD).read_text())
        if record.get("input_fingerprint") != input_fp or record.get("model_fingerprint") != model_fp:
            return None
        outputs: dict[str, dict[str, Any]] = record.get("outputs", {})
        if not set(formats) <= set(outputs):
            return None
        for entry in outputs.values():
            name = entry["file"]
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                return None  # a record of ours names plain files of its own folder
            target = folder / name
            if not target.is_file() or target.stat().st_size != entry["size"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return record


def changed_outputs(folder: Path, record: Mapping[str, Any]) -> list[str]:
    """The outputs of ``folder``'s done record (from ``done_record``) whose content is no longer what was written:
    their sha256 differs from the recorded one, or none was recorded (a record of an earlier version), or they
    cannot be read. Empty when every output is as written."""
    changed = []
    for entry in record.get("outputs", {}).values():
        name = str(entry.get("file", ""))
        try:
            same = isinstance(entry.get("sha256"), str) and sha256_file(folder / name) == entry["sha256"]
        except OSError:
            same = False
        if not same:
            changed.append(name)
    return sorted(changed)


def mark_not_done(folder: Path) -> None:
    """Before a series is (re)done, or after it failed: remove its done record, then every output an earlier run
    may have left there (the files its record listed, and the file of every registered format), so that no older
    result ever lies beside the new one, nor stays in the folder of a series that failed.

    Raises OSError, removing nothing, for a folder that is a symbolic link: it could lead outside the output
    folder, and neither removing there nor writing there (which follows this) is this run's to do."""
    from innereye_batch.writers.registry import registered_formats

    refuse_linked_folder(folder)

    record = folder / DONE_RECORD
    try:
        listed = [str(entry["file"]) for entry in json.loads(record.read_text())["outputs"].values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        listed = []
    record.unlink(missing_ok=True)  # first: a run killed while removing leaves no record vouching for the rest
    names = {*listed, *(output.filename for output in registered_formats().values())}
    for name in sorted(names):
        if name not in ("", ".", "..") and Path(name).name == name:  # plain file names in this folder only
            (folder / name).unlink(missing_ok=True)


def refuse_linked_folder(folder: Path) -> None:
    """OSError (ELOOP) when the series folder ``folder`` is a symbolic link (someone put it in the output folder):
    a run writes and removes files only in the output folder's own folders."""
    if folder.is_symlink():
        raise OSError(errno.ELOOP, "the series' folder in the output folder is a symbolic link, not followed")


def clear_stale_result(folder: Path, input_fp: str | None, model_fp: str) -> str:
    """After a series failed: remove what an earlier run left in its folder when that describes other inputs or
    another model (``input_fp`` None: any earlier result is stale). A result for these very inputs and this
    model (a --overwrite redo that failed) stays: it still describes the series.

    Never raises: returns why a file could not be removed (files of another user, a read-only folder), for the
    series' reason, or "" (one series' folder never stops the run)."""
    try:
        record = json.loads((folder / DONE_RECORD).read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        if folder.is_dir() or folder.is_symlink():
            return outputs_removed(folder)  # no readable record: whatever lies there vouches for nothing
        return ""
    if input_fp is None or record.get("input_fingerprint") != input_fp or record.get("model_fingerprint") != model_fp:
        return outputs_removed(folder)
    return ""


def outputs_removed(folder: Path) -> str:
    """``mark_not_done(folder)``, returning why it failed ("" when it did not) instead of raising."""
    try:
        mark_not_done(folder)
    except OSError as error:
        return f"its earlier outputs could not be removed: {error_text(error)}"
    return ""


def with_problem(result: ItemResult, problem: str) -> ItemResult:
    """``result`` with ``problem`` (from ``clear_stale_result``) added to its reason."""
    return replace(result, reason=f"{result.reason}; {problem}" if result.reason else problem) if problem else result


def mark_done(
    folder: Path, input_fp: str, model_fp: str, outputs: dict[str, Path], findings: Mapping[str, Any] | None = None
) -> None:
    """Record a finished series; called after every output is in place. ``findings`` (the prediction's: structure
    sizes, or class probabilities and labels) are kept, so that a rerun's summary shows them for a series it
    skips as done. Each output's size and sha256 are recorded (a rerun with ``--verify-outputs`` checks both)."""
    record = {
        "input_fingerprint": input_fp,
        "model_fingerprint": model_fp,
        "outputs": {
            fmt: {"file": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)}
            for fmt, p in sorted(outputs.items())
        },
        "findings": _findings_record(findings or {}),
    }
    write_json_atomic(folder / DONE_RECORD, record)
    sync_folder(folder)  # the record's rename, and the outputs' before it, on disk before the series counts as done


def _findings_record(findings: Mapping[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    if findings.get("structures") is not None:
        record["structures"] = [
            {"name": s.name, "voxel_count": s.voxel_count, "volume_ml": s.volume_ml} for s in findings["structures"]
        ]
    if findings.get("probabilities") is not None:
        record["probabilities"] = {str(k): float(v) for k, v in findings["probabilities"].items()}
    if findings.get("labels") is not None:
        record["labels"] = [str(label) for label in findings["labels"]]
    return record


def done_result_fields(folder: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """What a done series' record (``done_record``) says for its result (``ItemResult`` fields): its outputs
    (paths relative to the output folder) and findings; only the outputs where it holds no findings (written by
    an earlier version), nothing where they cannot be read as written."""
    try:
        fields: dict[str, Any] = {
            "outputs": {str(fmt): f"{folder.name}/{entry['file']}" for fmt, entry in record["outputs"].items()}
        }
        findings = record.get("findings") or {}
        if "structures" in findings:
            fields["structures"] = tuple(
                StructureStats(str(s["name"]), int(s["voxel_count"]), float(s["volume_ml"]))
                for s in findings["structures"]
            )
        if "probabilities" in findings:
            fields["probabilities"] = {str(k): float(v) for k, v in findings["probabilities"].items()}
        if "labels" in findings:
            fields["labels"] = tuple(str(label) for label in findings["labels"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    return fields


def remove_stale_temporaries(output_dir: Path, folders: Iterable[Path] | None = None) -> int:
    """Delete temporary files left by an interrupted run (only safe while holding the lock).

    ``folders``: only the temporaries directly in these folders (a shard's own series, while other shards may
    be writing theirs); None: every temporary under ``output_dir``.
    """
    if folders is None:
        candidates: Iterable[Path] = output_dir.glob(f"**/{TEMP_PREFIX}*")
    else:
        candidates = (temp for folder in folders for temp in folder.glob(f"{TEMP_PREFIX}*"))
    removed = 0
    inside = output_dir.resolve()
    for temp in candidates:  # never through a series folder that is a link to elsewhere
        if temp.is_file() and not temp.is_symlink() and temp.parent.resolve().is_relative_to(inside):
            temp.unlink(missing_ok=True)
            removed += 1
    return removed


def orphaned_results(output_dir: Path, folders: Iterable[Path]) -> list[str]:
    """Folders of ``output_dir`` holding a done record whose series is none of ``folders`` (the run's, every series
    of the input): results of series that left the input (deleted, or their files relabelled), sorted. They are
    kept (never a result deleted for what is missing), only named."""
    known = {folder.name for folder in folders}
    try:
        entries = sorted(output_dir.iterdir())
    except OSError:
        return []
    return [e.name for e in entries if e.name not in known and e.is_dir() and (e / DONE_RECORD).is_file()]
