"""Present a scan: JSON for scripts and a rich table for people. No patient names or IDs ever appear.

Text from files (descriptions, UIDs, paths) is shown as text, never as markup or terminal control; file paths
are relative to the scanned folder (folder names often name the patient).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom.uid import UID
from rich.console import Console
from rich.table import Table
from rich.text import Text

from innereye_batch.dicom.scan import ScanResult
from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.text import printable, relative_paths


def _path(path: Path | str, root: Path | None) -> str:
    """A path, or a text naming paths (a reason), printable and relative to ``root`` (folder names may name the
    patient)."""
    return printable(relative_paths(str(path), root))


def series_to_json(series: SeriesInfo, root: Path | None = None) -> dict[str, Any]:
    """One series (stack) as plain JSON values: identity, geometry, transfer syntaxes, problems, files."""
    return {
        "series_instance_uid": printable(series.series_instance_uid),
        "key": printable(series.key),
        "stack": series.stack,
        "study_instance_uid": series.study_instance_uid,
        "frame_of_reference_uid": series.frame_of_reference_uid,
        "modality": series.modality,
        "series_number": series.series_number,
        "series_description": printable(series.series_description),
        "num_files": len(series.files),
        "num_slices": len(series.slices),
        **series.geometry.to_json(),
        "pixel_spacing_source": series.pixel_spacing_source,
        "slice_spacing_source": series.slice_spacing_source,
        "split_by": {k: printable(v) for k, v in series.split_by.items()},
        "irregular": series.irregular,
        "regrid_geometry": series.regrid_geometry.to_json() if series.regrid_geometry is not None else None,
        "inverts_monochrome1": series.inverts_monochrome1,
        "transfer_syntaxes": list(series.transfer_syntaxes),
        "loadable": series.is_loadable,
        "problems": [relative_paths(str(p), root) + (" (fatal)" if p.fatal else "") for p in series.problems],
        "problem_kinds": [p.kind for p in series.problems],
        "files": [_path(path, root) for path in series.files],
    }


def scan_to_json(result: ScanResult, root: Path | None = None) -> dict[str, Any]:
    """The whole scan: {"series": [...], "skipped": [{"path", "reason"}]}; paths relative to ``root``."""
    return {
        "series": [series_to_json(s, root) for s in result.series],
        "skipped": [{"path": _path(s.path, root), "reason": _path(s.reason, root)} for s in result.skipped],
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


def render_scan_table(result: ScanResult, console: Console, root: Path | None = None) -> None:
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
        problems = Text("\n").join(
            Text(printable(relative_paths(str(p), root)), style="red" if p.fatal else "yellow") for p in series.problems
        )
        table.add_row(
            str(study),
            Text(printable(_short_uid(series.key, 16))),
            "" if series.series_number is None else str(series.series_number),
            Text(printable(series.modality)),
            Text(printable(series.series_description)),
            str(len(series.files)),
            "×".join(str(n) for n in series.geometry.shape),
            "×".join(f"{s:.3g}" for s in series.geometry.spacing),
            Text(printable(", ".join(_SHORT_SYNTAX_NAMES.get(t, UID(t).name or t) for t in series.transfer_syntaxes))),
            problems if series.problems else Text("ok", style="green"),
        )
    console.print(table)
    if result.skipped:
        console.print(Text(f"{len(result.skipped)} file(s) skipped:", style="yellow"))
        reasons: dict[str, list[str]] = {}
        for skipped in result.skipped:
            reasons.setdefault(_path(skipped.reason, root), []).append(_path(skipped.path, root))
        for reason, paths in sorted(reasons.items(), key=lambda item: -len(item[1]))[:20]:
            console.print(Text.assemble(f"  {len(paths):>5} × {reason}  ", (f"(e.g. {paths[0]})", "dim")))
