"""A model that states the orientation of its training stacks refuses series whose axes point elsewhere: fed as
stored (as InnerEye feeds them), a feet-first or prone series is seen mirrored (left and right kidney swapped,
reported ok, a reviewer's probe)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from innereye_batch.cli import app
from innereye_batch.dicom.scan import scan_tree
from innereye_batch.model.package import load_model_package
from tests.factory import write_series

SAMPLE_MODEL = Path(__file__).resolve().parents[2] / "sample_data" / "final_model"
STACKS = {  # (row direction, column direction): the axis codes of (columns, rows, slices)
    "head_first_supine": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), "LPS"),
    "feet_first_supine": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), "RPI"),
    "head_first_prone": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), "RAS"),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), "PIR"),
}


def _scans(root: Path) -> dict[str, str]:
    """One series per stack; its SeriesInstanceUID by name."""
    return {
        name: write_series(
            root / name, shape=(6, 24, 20), row_direction=row, column_direction=column, seed=i
        ).series_instance_uid
        for i, (name, (row, column, _)) in enumerate(STACKS.items())
    }


def _model(folder: Path, orientation: str | None) -> Path:
    shutil.copytree(SAMPLE_MODEL, folder)
    config = folder / "model_inference_config.json"
    document = json.loads(config.read_text())
    document["inference"]["orientation"] = orientation
    config.write_text(json.dumps(document))
    return folder


def _statuses(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        return {row["series_instance_uid"]: row for row in csv.DictReader(handle)}


def test_the_axes_of_each_stack_are_named_from_its_geometry(tmp_path: Path) -> None:
    uids = _scans(tmp_path)
    codes = {s.series_instance_uid: s.geometry.axis_codes() for s in scan_tree(tmp_path).series}
    assert {name: codes[uid] for name, uid in uids.items()} == {name: c for name, (_, _, c) in STACKS.items()}


def test_a_model_trained_on_head_first_stacks_refuses_the_others_at_planning(tmp_path: Path) -> None:
    uids = _scans(tmp_path / "scans")
    model = _model(tmp_path / "model", "lps")
    assert load_model_package(model).segmentation.orientation == "LPS"
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["run", "--model", str(model), "--input", str(tmp_path / "scans"), "--output", str(out), "--workers", "0"]
    )
    assert result.exit_code == 1, result.output
    rows = _statuses(out)
    assert rows[uids["head_first_supine"]]["status"] == "ok"
    for name in ("feet_first_supine", "head_first_prone", "sagittal"):
        row = rows[uids[name]]
        assert row["status"] == "failed", row
        assert (
            f"({STACKS[name][2]}); the model was trained on stacks running towards left, posterior, superior (LPS)"
            in (row["reason"])
        )
        assert not (out / uids[name] / "segmentation.nii.gz").exists()


def test_a_model_without_an_orientation_takes_every_stack_as_stored(tmp_path: Path) -> None:
    """As InnerEye: no orientation stated, nothing refused for it (and the model keeps its fingerprint)."""
    uids = _scans(tmp_path / "scans")
    model = _model(tmp_path / "model", None)
    assert load_model_package(model).fingerprint() == load_model_package(SAMPLE_MODEL).fingerprint()
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["run", "--model", str(model), "--input", str(tmp_path / "scans"), "--output", str(out), "--workers", "0"]
    )
    assert result.exit_code == 0, result.output
    assert {row["status"] for row in _statuses(out).values()} == {"ok"}
    assert set(_statuses(out)) == set(uids.values())


def test_a_stack_at_45_degrees_gets_three_different_axes_and_is_ambiguous() -> None:
    """Each axis coded on its own gave "LIL" for columns at 45 degrees between left and anterior (a reviewer's
    probe), and a rounding of the header flipped the codes: now the axes are given together, and such a stack is
    ambiguous (a model stating an orientation refuses it)."""
    from innereye_batch.dicom.geometry import Geometry

    c = float(np.sqrt(0.5))
    row, column = np.array([c, -c, 0.0]), np.array([0.0, 0.0, -1.0])
    direction = np.stack([row, column, np.cross(row, column)], axis=1)
    at_45 = Geometry((4, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(direction.ravel()))
    codes = at_45.axis_codes()
    assert sorted(next(i for i, pair in enumerate(("LR", "PA", "SI")) if ch in pair) for ch in codes) == [0, 1, 2]
    assert at_45.axes_ambiguous()
    axial = Geometry((4, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    assert axial.axis_codes() == "LPS" and not axial.axes_ambiguous()


def test_a_model_with_an_orientation_refuses_a_stack_at_45_degrees(tmp_path: Path) -> None:
    c = float(np.sqrt(0.5))
    uid = write_series(
        tmp_path / "scans" / "oblique", shape=(6, 24, 20), row_direction=(c, c, 0.0), column_direction=(-c, c, 0.0)
    ).series_instance_uid
    model = _model(tmp_path / "model", "LPS")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["run", "--model", str(model), "--input", str(tmp_path / "scans"), "--output", str(out), "--workers", "0"]
    )
    assert result.exit_code == 1, result.output
    row = _statuses(out)[uid]
    assert row["status"] == "failed" and "about 45 degrees between the patient's" in row["reason"]
