"""Present a scan: JSON for scripts and a rich table for people. No patient names or IDs ever appear."""

from __future__ import annotations

from typing import Any

from pydicom.uid import UID
from rich.console import Console
from rich.table import Table

from innereye_batch.dicom.scan import ScanResult
from innereye_batch.dicom.series import SeriesInfo


def series_to_json(series: SeriesInfo) -> dict[str, Any]:
    """One series (stack) as plain JSON values: identity, geometry, transfer syntaxes, problems, files."""
    return {
        "series_instance_uid": series.series_instance_uid,
        "key": series.key,
        "stack": series.stack,
        "study_instance_uid": series.study_instance_uid,
        "frame_of_reference_uid": series.frame_of_reference_uid,
        "modality": series.modality,
        "series_number": series.series_number,
        "series_description": series.series_description,
        "num_files": len(series.files),
        "num_slices": len(series.slices),
        **series.geometry.to_json(),
        "transfer_syntaxes": list(series.transfer_syntaxes),
        "loadable": series.is_loadable,
        "problems": [str(p) + (" (fatal)" if p.fatal else "") for p in series.problems],
        "files": [str(path) for path in series.files],
    }


def scan_to_json(result: ScanResult) -> dict[str, Any]:
    """The whole scan: {"series": [...], "skipped": [{"path", "reason"}]}."""
    return {
        "series": [series_to_json(s) for s in result.series],
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in result.skipped],
    }


_SHORT_SYNTAX_NAMES = {
    "1.2.840.10008.1.2": "implicit LE",
    "1.2.840.10008.1.2.1": "explicit LE",
    "1.2.840.10008.1.2.1.99": "deflated",
    "1.2.840.10008.1.2.2": "big endian",
    "1.2.840.10008.1.2.5": "RLE",
    "1.2.840.10008.1.2.4.50": "JPEG base",
    "1.2.840.10008.1.2.4.51": "JPEG ext",
    "1.2.840.10008.1.2.4.57": "JPEG LL",
    "1.2.840.10008.1.2.4.70": "JPEG LL",
    "1.2.840.10008.1.2.4.80": "JPEG-LS",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near",
    "1.2.840.10008.1.2.4.90": "J2K LL",
    "1.2.840.10008.1.2.4.91": "J2K",
}


def _short_uid(uid: str, keep: int) -> str:
    return uid if len(uid) <= keep + 1 else "…" + uid[-keep:]


def render_scan_table(result: ScanResult, console: Console) -> None:
    """Print one row per series (stack), grouped by study, and a summary of skipped files."""
    table = Table(title=f"{len(result.series)} series found under the input folder")
    table.add_column("st", justify="right")
    table.add_column("series", no_wrap=True)
    table.add_column("#", justify="right")
    table.add_column("mod")
    table.add_column("description", overflow="ellipsis", max_width=24)
    table.add_column("files", justify="right")
    table.add_column("z×y×x", justify="right", no_wrap=True)
    table.add_column("spacing mm", justify="right", no_wrap=True)
    table.add_column("encoding")
    table.add_column("problems")
    studies: dict[str, int] = {}
    for series in result.series:
        study = studies.setdefault(series.study_instance_uid, len(studies) + 1)
        problems = "\n".join(f"[red]{p}[/red]" if p.fatal else f"[yellow]{p}[/yellow]" for p in series.problems)
        table.add_row(
            str(study),
            _short_uid(series.key, 16),
            "" if series.series_number is None else str(series.series_number),
            series.modality,
            series.series_description,
            str(len(series.files)),
            "×".join(str(n) for n in series.geometry.shape),
            "×".join(f"{s:.3g}" for s in series.geometry.spacing),
            ", ".join(_SHORT_SYNTAX_NAMES.get(t, UID(t).name or t) for t in series.transfer_syntaxes),
            problems or "[green]ok[/green]",
        )
    console.print(table)
    if result.skipped:
        console.print(f"[yellow]{len(result.skipped)} file(s) skipped:[/yellow]")
        reasons: dict[str, list[str]] = {}
        for skipped in result.skipped:
            reasons.setdefault(skipped.reason, []).append(str(skipped.path))
        for reason, paths in sorted(reasons.items(), key=lambda item: -len(item[1]))[:20]:
            console.print(f"  {len(paths):>5} × {reason}  [dim](e.g. {paths[0]})[/dim]")
