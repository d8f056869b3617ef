"""Worker processes that never outlive the process that started them (header-reading, decoding and writer
workers)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a freshly started worker: be killed when ``parent`` (the pid recorded before the fork) ends, and end
    now if it already has. An orphaned worker would otherwise wait forever (and hold what it inherited)."""
    if sys.platform.startswith("linux"):
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before (or while) the request took effect
        os._exit(1)


def watch_parent(parent: int, period: float = 1.0) -> None:
    """In a freshly started worker whose starting thread may end before it does (a process pool starts its
    workers in whichever thread submits first): end within ``period`` seconds of ``parent``'s end. Linux sends
    PR_SET_PDEATHSIG when the *thread* that started a process ends, which would kill such a worker mid-task."""
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(period)
            if os.getppid() != parent:  # orphaned: re-parented to init or a subreaper
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
