"""Progress for people (a rich bar with ETA and series/min) and for cron (quiet, or one JSON line per event)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from innereye_batch.results import ItemResult
from innereye_batch.text import printable


class RunProgress:
    """Reports series as they finish. ``quiet`` prints nothing; ``log_json`` prints JSON lines on stderr."""

    def __init__(self, *, quiet: bool = False, log_json: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.log_json = log_json
        self.console = console or Console(stderr=True)
        self._bar: Progress | None = None
        self._task: Any = None
        self._start = time.perf_counter()
        self._done = 0

    def event(self, name: str, **fields: Any) -> None:
        """A structured event: a JSON line with --log-json, else a console line unless quiet."""
        if self.log_json:
            sys.stderr.write(json.dumps({"event": name, **fields}, default=str) + "\n")
            sys.stderr.flush()
        elif not self.quiet and name not in ("series",):
            message = printable(fields.get("message", ""))
            self.console.print(Text.assemble((name, "dim"), " ", message))

    def start(self, total: int) -> None:
        self._start = time.perf_counter()
        if self.quiet or self.log_json or total == 0:
            return
        self._bar = Progress(
            TextColumn("[bold]series"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._task = self._bar.add_task("run", total=total, rate="")
        self._bar.start()

    def series_done(self, result: ItemResult) -> None:
        self._done += 1
        self.event(
            "series",
            key=result.key,
            modality=result.modality,
            status=result.status,
            reason=result.reason,
            seconds=round(sum(result.timings.values()), 3),
        )
        if self._bar is not None:
            minutes = max(time.perf_counter() - self._start, 1e-6) / 60
            self._bar.update(self._task, advance=1, rate=f"{self._done / minutes:.1f} series/min")
            if result.status == "failed" and not self.quiet:
                self._bar.console.print(
                    Text.assemble(("failed", "red"), f" {printable(result.key)}: {printable(result.reason)}")
                )

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
