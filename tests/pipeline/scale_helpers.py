"""What the scale-out tests share: a mixed cohort, a reference single run, and the comparison of two output folders.

"Identical to a single run" means: the same items with the same statuses and reasons in summary.json and
summary.csv, the same files not used, equal label maps, done records that vouch for the same input and model
fingerprints and outputs, a report.html row per item, and no temporary file left anywhere.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from innereye_batch.files import TEMP_PREFIX
from innereye_batch.pipeline.run import RunOptions, RunReport, run_batch
from tests.pipeline.cohort import Cohort, labels_from_nifti, model_folder, write_cohort


@dataclass(frozen=True)
class ScaleCase:
    cohort: Cohort
    model: Path
    reference: Path
    """The output folder of one plain run (one device, no shard) over the cohort."""

    def options(self, out: Path, **overrides: Any) -> RunOptions:
        device = "auto" if "devices" in overrides else "cpu"  # --devices replaces --device
        return RunOptions(model=self.model, input=self.cohort.root, output=out, device=device, workers=0, **overrides)


def make_case(base: Path) -> ScaleCase:
    """Six good CT series, an MR the model skips, two broken CTs, two junk files; a 2-member ensemble."""
    cohort = write_cohort(base / "scans", extra_ct=4)
    model = model_folder(base / "model")
    case = ScaleCase(cohort, model, base / "reference")
    report = run_batch(case.options(case.reference))
    assert report.exit_code == 1  # the two broken series fail
    return case


def summary(out: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return document


def statuses(out: Path) -> dict[str, tuple[str, str]]:
    """key -> (status, reason) from summary.json; every key once."""
    records = summary(out)["series"]
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)), "an item is listed twice"
    return {r["key"]: (r["status"], r["reason"]) for r in records}


def csv_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len({r["key"] for r in rows}), "a row is listed twice"
    return {r["key"]: r for r in rows}


def done_record(folder: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((folder / "done.json").read_text())
    return {
        "input": record["input_fingerprint"],
        "model": record["model_fingerprint"],
        "outputs": {name: entry["file"] for name, entry in record["outputs"].items()},
    }


def assert_same_as_reference(case: ScaleCase, out: Path, results: RunReport | None = None) -> None:
    """``out`` holds what the reference single run wrote (see the module docstring)."""
    expected, found = statuses(case.reference), statuses(out)
    assert found == expected
    assert summary(out)["counts"] == summary(case.reference)["counts"]
    files = {(f["path"], f["reason"]) for f in summary(out)["skipped_files"]}
    assert files == {(f["path"], f["reason"]) for f in summary(case.reference)["skipped_files"]}
    assert any(path.endswith("notes.txt") for path, _ in files)
    reference_rows, rows = csv_rows(case.reference), csv_rows(out)
    assert rows.keys() == reference_rows.keys()
    for key, row in rows.items():
        volumes = {k: v for k, v in row.items() if k.endswith("_ml")}
        assert (row["status"], row["reason"], volumes) == (
            reference_rows[key]["status"],
            reference_rows[key]["reason"],
            {k: v for k, v in reference_rows[key].items() if k.endswith("_ml")},
        )
    ok = [key for key, (status, _) in expected.items() if status == "ok"]
    assert len(ok) == len(case.cohort.good) == 6
    for key in ok:
        np.testing.assert_array_equal(
            labels_from_nifti(out / key / "segmentation.nii.gz"),
            labels_from_nifti(case.reference / key / "segmentation.nii.gz"),
        )
        assert done_record(out / key) == done_record(case.reference / key)
    folders = {p.name for p in out.iterdir() if p.is_dir()}
    assert folders == {p.name for p in case.reference.iterdir() if p.is_dir()}
    page = (out / "report.html").read_text()
    assert all(key in page for key in expected)
    assert not [p for p in out.rglob(f"{TEMP_PREFIX}*")], "temporary files left behind"
