"""Start-up of the command line: ``innereye-batch --help`` and ``run --help`` against the interpreter's own start.

The issue's goal: ``innereye-batch --help`` under 0.3 s. Each command is a fresh process (the console script the
package installs, or ``python -m innereye_batch`` where it is not on disk), run in turn with the others so that
load from elsewhere falls on all alike; medians and ranges of the wall times.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPEATS = 9


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "innereye-batch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "innereye_batch"]


def _seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def run(repeats: int = REPEATS) -> str:
    commands = {
        "`python -c pass` (the interpreter alone)": [sys.executable, "-c", "pass"],
        "`innereye-batch --help`": [*_cli(), "--help"],
        "`innereye-batch run --help`": [*_cli(), "run", "--help"],
    }
    for command in commands.values():  # warm the file cache: the first start reads every module from disk
        _seconds(command)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            times[name].append(_seconds(command))
    rows = [
        f"| {name} | {statistics.median(values):.3f} | {min(values):.3f}-{max(values):.3f} |"
        for name, values in times.items()
    ]
    return "\n".join(
        [
            "## Start-up of the command line",
            "",
            f"Wall time of a fresh process, median of {repeats} runs taken in turn (range); the file cache warm. "
            "The goal: `innereye-batch --help` under 0.3 s. The help imports only the CLI (typer, rich): torch, "
            "pydicom, highdicom and the rest load when a command runs.",
            "",
            "| command | median (s) | range (s) |",
            "|---|---:|---:|",
            *rows,
            "",
        ]
    )
