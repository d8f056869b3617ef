"""The output folder's locks: one unsharded run alone, or the shards of one sharded run together, never both.

Every lock is an ``flock`` on a small file in the output folder, so the operating system releases it when its
process dies, even by SIGKILL, and a crashed run never blocks the next one. The rule:

- An unsharded run holds ``.innereye-batch.lock`` exclusively: no other run, sharded or not, can start.
- Shard K/N holds ``.innereye-batch.lock`` *shared* (with the other shards of the same N, recorded in the file)
  and ``.innereye-batch.shard-K-of-N.lock`` exclusively: the shards of one run work side by side, a second copy
  of the same shard, an unsharded run and a shard of another N are refused.
- ``innereye-batch summarize`` joins the N-shard run like a shard, without a shard lock of its own.
- Taking these locks happens under ``.innereye-batch.guard`` (exclusive, held for microseconds), so two shards
  starting at the same instant never see each other's half-taken locks.
- ``summary_lock``: one merge of the shard summaries at a time.

Forked children (decoding workers) close their copies of the lock descriptors, so they never keep a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from innereye_batch.errors import OutputLockedError
from innereye_batch.pipeline.shards import Shard

LOCK_FILE = ".innereye-batch.lock"
GUARD_FILE = ".innereye-batch.guard"
SUMMARY_LOCK_FILE = ".innereye-batch.summary.lock"
_SHARDS_RECORD = re.compile(r"shards (\d+)")

_held_locks: set[int] = set()
"""File descriptors of the locks this process holds."""


def shard_lock_name(shard: Shard) -> str:
    """The file of shard K/N's own lock."""
    return f".innereye-batch.{shard.label}.lock"


def _drop_locks_in_child() -> None:
    """After a fork: the child (a DataLoader worker) closes its copies of the lock descriptors. An flock belongs
    to the open file, shared by every copy of its descriptor: a worker left orphaned by a SIGKILLed run would
    otherwise keep the folder locked for every later run."""
    for fd in list(_held_locks):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_locks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks_in_child)


def _open(path: Path) -> IO[str]:
    handle = open(path, "a+")  # noqa: SIM115 - closed by _close
    _held_locks.add(handle.fileno())
    return handle


def _close(handle: IO[str]) -> None:
    _held_locks.discard(handle.fileno())
    handle.close()


def _try(handle: IO[str], mode: int) -> bool:
    try:
        fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    return handle.read().strip() or "unknown process"


def _record(handle: IO[str], text: str) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(text)
    handle.flush()


def _me() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


def _recorded_shards(handle: IO[str]) -> int | None:
    match = _SHARDS_RECORD.search(_holder(handle))
    return int(match.group(1)) if match else None


def _in_use(output_dir: Path, handle: IO[str]) -> OutputLockedError:
    holder = _holder(handle)
    count = _recorded_shards(handle)
    what = f"a run split into {count} shards ({holder})" if count else f"another innereye-batch run ({holder})"
    return OutputLockedError(
        f"output folder {output_dir} is in use by {what}; wait for it to finish or choose another --output"
    )


def _join_shards(output_dir: Path, main: IO[str], count: int) -> None:
    """Hold ``main`` shared as a member of the run split into ``count`` shards (called under the guard)."""
    if _try(main, fcntl.LOCK_EX):  # nobody in the folder: this run's shards are the first
        _record(main, f"{_me()}; shards {count}")
        if not _try(main, fcntl.LOCK_SH):  # a downgrade; under the guard nobody can take it meanwhile
            raise _in_use(output_dir, main)
        return
    if not _try(main, fcntl.LOCK_SH):
        raise _in_use(output_dir, main)  # an unsharded run holds it exclusively
    running = _recorded_shards(main)
    if running == count:
        return
    if _try(main, fcntl.LOCK_EX):  # the record was stale: every other holder has finished since
        _record(main, f"{_me()}; shards {count}")
        if _try(main, fcntl.LOCK_SH):
            return
    fcntl.flock(main.fileno(), fcntl.LOCK_UN)
    raise OutputLockedError(
        f"output folder {output_dir} is in use by a run split into {running} shards; this one is split into "
        f"{count}: every shard of a run must name the same N (or choose another --output)"
    )


@contextlib.contextmanager
def _locked(output_dir: Path, count: int | None, shard: Shard | None) -> Iterator[None]:
    output_dir.mkdir(parents=True, exist_ok=True)
    handles: list[IO[str]] = []
    try:
        guard = _open(output_dir / GUARD_FILE)
        handles.append(guard)
        fcntl.flock(guard.fileno(), fcntl.LOCK_EX)
        main = _open(output_dir / LOCK_FILE)
        handles.append(main)
        if count is None:
            if not _try(main, fcntl.LOCK_EX):
                raise _in_use(output_dir, main)
            _record(main, _me())
        else:
            _join_shards(output_dir, main, count)
        if shard is not None:
            own = _open(output_dir / shard_lock_name(shard))
            handles.append(own)
            if not _try(own, fcntl.LOCK_EX):
                raise OutputLockedError(
                    f"shard {shard} is already running into output folder {output_dir} ({_holder(own)}); "
                    "each shard of a run must be started once"
                )
            _record(own, _me())
        fcntl.flock(guard.fileno(), fcntl.LOCK_UN)
        yield
    finally:
        for handle in reversed(handles):
            _close(handle)


def output_lock(output_dir: Path, shard: Shard | None = None) -> contextlib.AbstractContextManager[None]:
    """Hold the output folder for a run: exclusively, or as shard ``shard`` of a sharded run (see the module).

    Raises OutputLockedError, naming the holder, when the rule refuses this run.
    """
    return _locked(output_dir, shard.count if shard is not None else None, shard)


def shards_lock(output_dir: Path, count: int) -> contextlib.AbstractContextManager[None]:
    """Hold the output folder as a member of the run split into ``count`` shards, without a shard of its own
    (``summarize``): no unsharded run and no run of another N can start meanwhile."""
    return _locked(output_dir, count, None)


@contextlib.contextmanager
def summary_lock(output_dir: Path) -> Iterator[None]:
    """One merge of shard summaries at a time (waits for a merge in progress; merges take seconds)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    handle = _open(output_dir / SUMMARY_LOCK_FILE)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        _close(handle)
