"""Worker processes that never outlive the process that started them (header-reading and decoding workers)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

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
