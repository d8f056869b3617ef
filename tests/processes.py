"""Process checks shared by the tests that kill runs and workers (Linux /proc)."""

from __future__ import annotations

from pathlib import Path


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs: gone, a zombie (ended, not yet reaped) or dead is not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
