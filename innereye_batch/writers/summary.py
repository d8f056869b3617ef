"""Write the run summary (summary.json and summary.csv), each replaced atomically since runs rewrite them.

Both list every item of the run and every file the scan could not use, with the reason. Text from files is
stored as printable text (control characters and undecodable bytes escaped), and CSV cells can never start a
spreadsheet formula.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

from innereye_batch.dicom.series import SkippedFile
from innereye_batch.files import atomic_write
from innereye_batch.results import ItemResult, Status
from innereye_batch.text import csv_cell, printable

SUMMARY_SCHEMA_VERSION = "1.0"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
_FIXED_COLUMNS = ("key", "series_instance_uid", "study_instance_uid", "modality", "status", "reason")


def write_summary(
    output_dir: Path,
    results: Sequence[ItemResult],
    *,
    run_info: Mapping[str, Any],
    skipped_files: Sequence[SkippedFile] = (),
) -> tuple[Path, Path]:
    """Write ``output_dir/summary.json`` and ``output_dir/summary.csv``; return their paths (json, csv).

    ``run_info`` (tool version, model name and fingerprint, start and finish times, ...) is copied into the
    JSON as ``run``; values that are not JSON types are written as strings. Each file is written to a
    temporary file in ``output_dir`` and renamed over the old one, so readers never see half a summary.
    """
    json_path = output_dir / SUMMARY_JSON
    csv_path = output_dir / SUMMARY_CSV
    json_text = summary_json_text(results, run_info=run_info, skipped_files=skipped_files)
    csv_text = summary_csv_text(results, skipped_files)
    atomic_write(json_path, lambda temp: temp.write_text(json_text, encoding="utf-8"))
    atomic_write(csv_path, lambda temp: temp.write_text(csv_text, encoding="utf-8", newline=""))
    return json_path, csv_path


def summary_json_text(
    results: Sequence[ItemResult], *, run_info: Mapping[str, Any], skipped_files: Sequence[SkippedFile] = ()
) -> str:
    """summary.json's text: ``run``, ``counts``, one record per item (``series``) and the files not used."""
    document = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "run": dict(run_info),
        "counts": {**status_counts(results), "skipped_files": len(skipped_files)},
        "series": [series_record(r) for r in results],
        "skipped_files": [{"path": printable(f.path), "reason": printable(f.reason)} for f in skipped_files],
    }
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False, default=printable) + "\n"


def status_counts(results: Sequence[ItemResult]) -> dict[str, int]:
    """Number of series per status (every status listed, zero included) and the total."""
    counts = Counter(r.status for r in results)
    return {**{status: counts.get(status, 0) for status in get_args(Status)}, "total": len(results)}


def series_record(result: ItemResult) -> dict[str, Any]:
    """One series in summary.json."""
    record: dict[str, Any] = {
        "key": printable(result.key),
        "series_instance_uid": printable(result.series_instance_uid),
        "study_instance_uid": printable(result.study_instance_uid),
        "modality": printable(result.modality),
        "status": result.status,
        "reason": printable(result.reason, single_line=False),
        "structures": [
            {"name": s.name, "voxel_count": s.voxel_count, "volume_ml": s.volume_ml, "present": s.present}
            for s in result.structures
        ],
        "timings_s": dict(result.timings),
        "total_s": total_seconds(result),
        "peak_memory_gib": dict(result.peak_memory_gib),
        "outputs": dict(result.outputs),
    }
    if result.probabilities is not None:
        record["probabilities"] = dict(result.probabilities)
    if result.labels is not None:
        record["predicted"] = list(result.labels)
    return record


def total_seconds(result: ItemResult) -> float:
    """The series' ``total`` timing when recorded, else the sum of its stage timings."""
    if "total" in result.timings:
        return float(result.timings["total"])
    return float(sum(result.timings.values()))


def summary_csv_text(results: Sequence[ItemResult], skipped_files: Sequence[SkippedFile] = ()) -> str:
    """summary.csv: one row per item; a ``<structure>_ml`` column per structure seen in any result, then a
    ``<class>_probability`` column per class seen and ``predicted`` (labels joined by ``;``), then ``total_s``.
    Missing values are empty cells. Then one row per file not used: key ``file:<path>``, status ``skipped``."""
    structure_names = _union(s.name for r in results for s in r.structures)
    class_names = _union(name for r in results for name in (r.probabilities or {}))
    volume_columns = [f"{name}_ml" for name in structure_names]
    probability_columns = [f"{name}_probability" for name in class_names]
    with_labels = any(r.labels is not None for r in results)
    if with_labels:
        probability_columns.append("predicted")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([csv_cell(c) for c in (*_FIXED_COLUMNS, *volume_columns, *probability_columns, "total_s")])
    for r in results:
        volumes = {s.name: _number(s.volume_ml) for s in r.structures}
        probabilities = {name: _number(p) for name, p in (r.probabilities or {}).items()}
        class_cells = [probabilities.get(name, "") for name in class_names]
        if with_labels:
            class_cells.append(csv_cell(";".join(r.labels)) if r.labels is not None else "")
        writer.writerow(
            [
                *(csv_cell(v) for v in (r.key, r.series_instance_uid, r.study_instance_uid, r.modality)),
                r.status,
                csv_cell(r.reason),
                *(volumes.get(name, "") for name in structure_names),
                *class_cells,
                _number(total_seconds(r)) if r.timings else "",
            ]
        )
    blanks = [""] * (len(volume_columns) + len(probability_columns) + 1)
    for skipped in skipped_files:
        writer.writerow([csv_cell(f"file:{skipped.path}"), "", "", "", "skipped", csv_cell(skipped.reason), *blanks])
    return buffer.getvalue()


def _union(names: Any) -> list[str]:
    """Distinct names in first-seen order."""
    return list(dict.fromkeys(names))


def _number(value: float) -> str:
    return f"{float(value):.6g}"
