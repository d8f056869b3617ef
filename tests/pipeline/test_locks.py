"""The output folder's lock rule: one unsharded run alone, or the shards of one N together, never a mix."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from innereye_batch.errors import OutputLockedError
from innereye_batch.pipeline.locks import output_lock, shards_lock
from innereye_batch.pipeline.shards import Shard


def test_shards_of_one_run_share_the_folder(tmp_path: Path) -> None:
    with output_lock(tmp_path, Shard(0, 3)), output_lock(tmp_path, Shard(1, 3)), output_lock(tmp_path, Shard(2, 3)):
        with pytest.raises(OutputLockedError, match="shard 1/3 is already running"), output_lock(tmp_path, Shard(1, 3)):
            pass
        with pytest.raises(OutputLockedError, match="split into 3 shards"), output_lock(tmp_path):
            pass
        other_count = pytest.raises(OutputLockedError, match="split into 3 shards; this one is split into 2")
        with other_count, output_lock(tmp_path, Shard(0, 2)):
            pass
        with shards_lock(tmp_path, 3):  # summarize joins the run it merges
            pass
        with pytest.raises(OutputLockedError), shards_lock(tmp_path, 2):
            pass
    with output_lock(tmp_path):  # every shard finished: the folder is free
        pass


def test_an_unsharded_run_excludes_every_shard(tmp_path: Path) -> None:
    with output_lock(tmp_path):
        for shard in (Shard(0, 1), Shard(0, 2), Shard(1, 2)):
            with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"), output_lock(tmp_path, shard):
                pass
        with pytest.raises(OutputLockedError), shards_lock(tmp_path, 2):
            pass


def test_a_stale_shard_count_does_not_block_a_run_of_another_count(tmp_path: Path) -> None:
    with output_lock(tmp_path, Shard(0, 3)):
        pass  # finished: the lock file still records "shards 3"
    refused = pytest.raises(OutputLockedError, match="split into 2 shards")
    with (
        output_lock(tmp_path, Shard(0, 2)),
        output_lock(tmp_path, Shard(1, 2)),
        refused,
        output_lock(tmp_path, Shard(2, 3)),
    ):
        pass


def _hold_shard(folder: str, index: int, ready: Any) -> None:
    import time

    with output_lock(Path(folder), Shard(index, 2)):
        ready.set()
        time.sleep(60)


def test_a_killed_shard_releases_its_locks(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    holder = context.Process(target=_hold_shard, args=(str(tmp_path), 1, ready))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"), output_lock(tmp_path, Shard(1, 2)):
            pass
        with output_lock(tmp_path, Shard(0, 2)):  # the other shard runs beside it, in another process
            pass
        with pytest.raises(OutputLockedError), output_lock(tmp_path):
            pass
    finally:
        assert holder.pid is not None
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    with output_lock(tmp_path, Shard(1, 2)):  # the kernel released the dead shard's locks
        pass
    with output_lock(tmp_path):
        pass
