"""Write report.html for a run: one page a person reads in the morning, one row per item with its picture.

A segmentation series shows its preview and its volumes; a classified image shows its explanation overlay (when
the run computed one), its probability per class and the predicted label(s).

Self-contained: inline CSS, no script, no external asset; the previews are linked relatively
(``<folder>/preview.png``, shown as thumbnails), so the page works wherever the output folder is copied and stays
small however many series ran. Failed series come first. Every text that comes from files or the model folder
(UIDs, modality, reasons, structure and model names) is made printable and HTML-escaped; no patient name or ID
is shown (results carry none).
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from innereye_batch.files import atomic_write
from innereye_batch.results import ItemResult
from innereye_batch.text import printable
from innereye_batch.writers.summary import status_counts, total_seconds

REPORT_HTML = "report.html"
THUMBNAIL_WIDTH = 240
_STATUS_ORDER = {"failed": 0, "not_run": 1, "ok": 2, "skipped": 3}
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #202020; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 6px 0; }
.run { font-size: 13px; color: #404040; margin-bottom: 10px; }
.counts span { display: inline-block; margin-right: 14px; font-weight: 600; }
table { border-collapse: collapse; width: 100%; font-size: 13px; background: #fff; }
th, td { border: 1px solid #d0d0d0; padding: 4px 6px; vertical-align: top; text-align: left; }
th { background: #ececec; }
td.thumb { width: 244px; }
td.thumb img { width: 240px; display: block; }
.status { font-weight: 700; padding: 1px 6px; border-radius: 3px; color: #fff; }
.ok { background: #2e7d32; } .failed { background: #c62828; } .skipped { background: #757575; }
.not_run { background: #8e24aa; }
.uid { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
.reason { white-space: pre-wrap; word-break: break-word; max-width: 520px; }
.small { color: #606060; font-size: 12px; }
ul.volumes { margin: 0; padding-left: 16px; }
"""


def _not_run(count: int) -> str:
    """The count of series the run stopped before, shown only when there are some."""
    return f'<span class="status not_run">{count} not run</span>' if count else ""


def _text(value: object) -> str:
    """Printable, HTML-escaped text (quotes included, so it is safe in attributes too)."""
    return html.escape(printable(value, single_line=False), quote=True)


def write_run_report(output_dir: Path, results: Sequence[ItemResult], run_info: Mapping[str, Any]) -> Path:
    """Write ``output_dir/report.html`` (atomically) for ``results``; ``run_info`` as given to the summary."""
    path = output_dir / REPORT_HTML
    document = run_report_html(output_dir, results, run_info)
    atomic_write(path, lambda temp: temp.write_text(document, encoding="utf-8"))
    return path


def run_report_html(output_dir: Path, results: Sequence[ItemResult], run_info: Mapping[str, Any]) -> str:
    """The report page; previews are linked only when the file is in ``output_dir``."""
    ordered = sorted(results, key=lambda r: _STATUS_ORDER.get(r.status, 3))
    counts = status_counts(results)
    rows = "\n".join(_row(output_dir, result) for result in ordered)
    title = f"innereye-batch run: {run_info.get('model_name', '')}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_text(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{_text(title)}</h1>
<div class="run">{_run_line(run_info)}</div>
<div class="counts"><span>{counts["total"]} series</span><span class="status ok">{counts["ok"]} ok</span>\
<span class="status failed">{counts["failed"]} failed</span>\
<span class="status skipped">{counts["skipped"]} skipped</span>{_not_run(counts["not_run"])}</div>
<p class="small">Automatic results, to be reviewed. Volumes in mL; times in seconds. Details: summary.json, \
summary.csv.</p>
<table>
<thead><tr><th>picture</th><th>series</th><th>status</th><th>reason</th><th>findings</th><th>time</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""


def _run_line(run_info: Mapping[str, Any]) -> str:
    parts = []
    for key, label in (
        ("tool_version", "innereye-batch"),
        ("model_task", "task"),
        ("device", "device"),
        ("started", "started"),
        ("finished", "finished"),
    ):
        if run_info.get(key):
            parts.append(f"{label} {_text(run_info[key])}")
    if run_info.get("formats"):
        parts.append("outputs " + _text(", ".join(str(f) for f in run_info["formats"])))
    stages = run_info.get("stage_seconds") or {}
    if isinstance(stages, Mapping) and stages:
        parts.append("stages " + _text(", ".join(f"{k} {float(v):.1f} s" for k, v in stages.items())))
    if run_info.get("model_fingerprint"):
        parts.append(f'model <span class="uid">{_text(str(run_info["model_fingerprint"])[:16])}</span>')
    return " &middot; ".join(parts)


def _row(output_dir: Path, result: ItemResult) -> str:
    status = result.status if result.status in _STATUS_ORDER else "skipped"
    volumes = "".join(f"<li>{_text(s.name)}: {s.volume_text}</li>" for s in result.structures)
    volumes += "".join(
        f"<li>{_text(name)}: {probability:.3f}</li>" for name, probability in (result.probabilities or {}).items()
    )
    if result.labels is not None:
        volumes += f"<li><b>predicted: {_text(', '.join(result.labels) or 'none')}</b></li>"
    timings = ", ".join(f"{_text(stage)} {seconds:.2f}" for stage, seconds in result.timings.items())
    total = f"{total_seconds(result):.1f}" if result.timings else ""
    return (
        "<tr>"
        f'<td class="thumb">{_thumbnail(output_dir, result)}</td>'
        f'<td><div class="uid">{_text(result.key)}</div><div class="small">{_text(result.modality)}</div></td>'
        f'<td><span class="status {status}">{_text(result.status)}</span></td>'
        f'<td class="reason">{_text(result.reason)}</td>'
        f"<td>{f'<ul class=volumes>{volumes}</ul>' if volumes else ''}</td>"
        f'<td>{total}<div class="small">{timings}</div></td>'
        "</tr>"
    )


def _thumbnail(output_dir: Path, result: ItemResult) -> str:
    relative = result.outputs.get("preview") or result.outputs.get("explanation-png")
    if not relative or not (output_dir / relative).is_file():
        return ""
    href = html.escape(urllib.parse.quote(Path(relative).as_posix(), safe="/~"), quote=True)
    return f'<a href="{href}"><img src="{href}" alt="preview" width="{THUMBNAIL_WIDTH}"></a>'
