"""Tables a person reads after `run`: per-series status and volumes, stage timings, where the outputs are."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from innereye_batch.pipeline.run import RunReport


def render_dry_run(report: RunReport, console: Console) -> None:
    table = Table(title="dry run: nothing written")
    for column in ("series", "action", "detail"):
        table.add_column(column)
    for row in report.planned:
        table.add_row(row["key"], row["action"], row.get("reason") or row.get("folder", ""))
    console.print(table)


def render_run_report(report: RunReport, output: Path, console: Console, limit: int = 50) -> None:
    table = Table(title="results")
    for column in ("series", "modality", "status", "structures (mL) / reason"):
        table.add_column(column, overflow="fold")
    for result in report.results[:limit]:
        if result.status == "ok":
            detail = ", ".join(f"{s.name} {s.volume_ml:.1f}" for s in result.structures)
        else:
            detail = result.reason
        colour = {"ok": "green", "failed": "red"}.get(result.status, "yellow")
        table.add_row(result.key, result.modality, f"[{colour}]{result.status}[/{colour}]", detail)
    if len(report.results) > limit:
        table.caption = f"... and {len(report.results) - limit} more (see summary.csv)"
    console.print(table)
    counts = {s: sum(r.status == s for r in report.results) for s in ("ok", "failed", "skipped")}
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in report.stage_seconds.items())
    console.print(f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped. Stages: {stages}")
    console.print(f"Outputs in {output}/ (summary.json, summary.csv, one folder per series).")
