"""Tables a person reads after `run`: per-item status and volumes, stage timings, where the outputs are.

Every value that comes from a file (keys, reasons, paths) is shown as text, never as markup or terminal control.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from innereye_batch.pipeline.run import RunReport
from innereye_batch.results import ItemResult
from innereye_batch.text import printable

_STATUS_STYLE = {"ok": "green", "failed": "red", "skipped": "yellow", "not_run": "magenta", "run": "cyan"}


def _status(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def render_dry_run(report: RunReport, console: Console) -> None:
    table = Table(title="dry run: nothing written")
    for column in ("series", "action", "detail"):
        table.add_column(column, overflow="fold")
    for row in report.planned:
        detail = row.get("reason") or row.get("folder", "")
        table.add_row(Text(printable(row["key"])), _status(row["action"]), Text(printable(detail)))
    console.print(table)
    _render_skipped_files(report, console, summarised=False)


def render_run_report(report: RunReport, output: Path, console: Console, limit: int = 50) -> None:
    table = Table(title="results")
    for column in ("series", "modality", "status", "structures (mL) / reason"):
        table.add_column(column, overflow="fold")
    for result in report.results[:limit]:
        if result.status == "ok":
            detail = ", ".join(f"{s.name} {s.volume_ml:.1f}" for s in result.structures)
            if result.probabilities:
                detail = ", ".join(f"{name} {p:.3f}" for name, p in result.probabilities.items())
        else:
            detail = result.reason
        table.add_row(
            Text(printable(result.key)),
            Text(printable(result.modality)),
            _status(result.status),
            Text(printable(detail)),
        )
    if len(report.results) > limit:
        table.caption = f"... and {len(report.results) - limit} more (see summary.csv)"
    console.print(table)
    _render_skipped_files(report, console)
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in report.stage_seconds.items())
    console.print(Text(f"{count_line(report.results)}. Stages: {stages}"))
    if report.shard_note:
        console.print(Text(printable(report.shard_note)))
    if report.summary_error:
        console.print(Text(f"error: the run summary could not be written: {printable(report.summary_error)}", "red"))
    elif report.shard_note and not report.merged:  # this shard's own summary only, so far
        console.print(Text(f"Outputs in {printable(output)}/ (one folder per series, this shard's summary)."))
    else:
        console.print(Text(f"Outputs in {printable(output)}/ (summary.json, summary.csv, one folder per series)."))


def _render_skipped_files(report: RunReport, console: Console, limit: int = 10, *, summarised: bool = True) -> None:
    if not report.skipped_files:
        return
    where = " (listed in the summary)" if summarised else ""  # a dry run writes none
    console.print(Text(f"{len(report.skipped_files)} file(s) not used{where}:", "yellow"))
    for skipped in report.skipped_files[:limit]:
        console.print(Text(f"  {printable(skipped.path)}: {printable(skipped.reason)}"))
    if len(report.skipped_files) > limit:
        console.print(Text(f"  ... and {len(report.skipped_files) - limit} more"))


def count_line(results: Sequence[ItemResult]) -> str:
    """``3 ok, 1 failed, 2 skipped``, and ``, 4 not run`` when the run stopped before some."""
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "skipped", "not_run")}
    line = f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped"
    return line + (f", {counts['not_run']} not run" if counts["not_run"] else "")
