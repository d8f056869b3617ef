"""A model that states the orientation of its training stacks sees series whose axes point elsewhere turned to it
(or refuses them, with ``"reorient": false``): fed as stored (as InnerEye feeds them), a feet-first or prone series
is seen mirrored (left and right kidney swapped, reported ok, a reviewer's probe)."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
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


def _model(folder: Path, orientation: str | None, **fields: object) -> Path:
    shutil.copytree(SAMPLE_MODEL, folder)
    config = folder / "model_inference_config.json"
    document = json.loads(config.read_text())
    document["inference"]["orientation"] = orientation
    document["inference"].update(fields)
    config.write_text(json.dumps(document))
    return folder


def _statuses(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        return {row["series_instance_uid"]: row for row in csv.DictReader(handle)}


def test_the_axes_of_each_stack_are_named_from_its_geometry(tmp_path: Path) -> None:
    uids = _scans(tmp_path)
    codes = {s.series_instance_uid: s.geometry.axis_codes() for s in scan_tree(tmp_path).series}
    assert {name: codes[uid] for name, uid in uids.items()} == {name: c for name, (_, _, c) in STACKS.items()}


def _run(model: Path, scans: Path, out: Path) -> int:
    result = CliRunner().invoke(
        app, ["run", "--model", str(model), "--input", str(scans), "--output", str(out), "--workers", "0"]
    )
    return result.exit_code


def test_a_model_that_does_not_reorient_refuses_the_other_stacks_at_planning(tmp_path: Path) -> None:
    uids = _scans(tmp_path / "scans")
    model = _model(tmp_path / "model", "lps", reorient=False)
    spec = load_model_package(model).segmentation
    assert (spec.orientation, spec.reorient) == ("LPS", False)
    out = tmp_path / "out"
    assert _run(model, tmp_path / "scans", out) == 1
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


ANATOMY_SEED = 300
"""A held-out phantom of the sample model (sample_data/scans/phantom_one_axial): liver, both kidneys, spine."""


def _stacks_of_one_anatomy(root: Path) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """One phantom written head-first supine and as three other stacks of the same voxels in the patient (built
    here by hand, not with the code under test): each stack's SeriesInstanceUID and how to bring an array on its
    grid back onto the head-first grid."""
    from tools.phantom import make_phantom

    phantom = make_phantom(ANATOMY_SEED)
    hu = phantom.ct_hu
    (nz, ny, nx), (dz, dy, dx) = hu.shape, phantom.spacing
    origin = np.array([-100.0, -120.0, 50.0])  # LPS of voxel (0, 0, 0) of the head-first stack

    def at(z: int, y: int, x: int) -> list[float]:
        return list(origin + np.array([x * dx, y * dy, z * dz]))

    stacks = {  # name: (row direction, column direction, voxels, spacing, origin, back onto the head-first grid)
        "head_first_supine": ((1, 0, 0), (0, 1, 0), hu, (dz, dy, dx), at(0, 0, 0), lambda a: a),
        "feet_first_supine": (
            (-1, 0, 0), (0, 1, 0), hu[::-1, :, ::-1], (dz, dy, dx), at(nz - 1, 0, nx - 1), lambda a: a[::-1, :, ::-1]
        ),
        "head_first_prone": (
            (-1, 0, 0), (0, -1, 0), hu[:, ::-1, ::-1], (dz, dy, dx), at(0, ny - 1, nx - 1), lambda a: a[:, ::-1, ::-1]
        ),
        "sagittal": (  # columns to posterior, rows to inferior, slices to the right: [x reversed, z reversed, y]
            (0, 1, 0),
            (0, 0, -1),
            hu.transpose(2, 0, 1)[::-1, ::-1, :],
            (dx, dz, dy),
            at(nz - 1, 0, nx - 1),
            lambda a: a[::-1, ::-1, :].transpose(1, 2, 0),
        ),
    }  # fmt: skip
    written = {}
    for i, (name, (row, column, voxels, spacing, first, back)) in enumerate(stacks.items()):
        series = write_series(
            root / name,
            shape=voxels.shape,
            spacing=spacing,
            origin=first,
            row_direction=row,
            column_direction=column,
            voxels=np.ascontiguousarray(voxels),
            seed=i,
        )
        assert np.array_equal(back(series.voxels), hu)  # the truth of the factory agrees with the hand-made map
        written[name] = (series.series_instance_uid, back)
    return written


def _labels(out: Path, uid: str) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / uid / "segmentation.nii.gz")))


def test_a_model_with_an_orientation_sees_every_stack_of_one_anatomy_alike(tmp_path: Path) -> None:
    """The shipped sample model states that it was trained on head-first supine stacks (LPS): it gives the same
    label map in the patient for one phantom written head-first, feet-first, prone and sagittal. Fed as stored
    (no orientation, as it was shipped before a reviewer found it), the feet-first stack's kidneys came out
    swapped, reported ok."""
    stacks = _stacks_of_one_anatomy(tmp_path / "scans")
    reference_uid = stacks["head_first_supine"][0]

    as_stored = tmp_path / "as_stored"
    assert _run(_model(tmp_path / "plain", None), tmp_path / "scans", as_stored) == 0
    reference = _labels(as_stored, reference_uid)
    assert set(np.unique(reference)) == {0, 1, 2, 3, 4}  # every structure found: a test that can tell a mirror
    uid, back = stacks["feet_first_supine"]
    mirrored = back(_labels(as_stored, uid))
    assert np.count_nonzero(mirrored != reference) > 100  # the model is not mirror-blind: the check means something

    out = tmp_path / "out"
    assert load_model_package(SAMPLE_MODEL).segmentation.orientation == "LPS"
    assert _run(SAMPLE_MODEL, tmp_path / "scans", out) == 0
    assert np.array_equal(_labels(out, reference_uid), reference)
    for name, (uid, back) in stacks.items():
        assert np.array_equal(back(_labels(out, uid)), reference), name
        document = json.loads((out / uid / "predictions.json").read_text())
        assert document["input"]["axis_codes"] == next(c for n, (_, _, c) in STACKS.items() if n == name)
        if name == "head_first_supine":
            assert "reoriented" not in document["inference"]
        else:
            assert document["inference"]["reoriented"] == {"from": document["input"]["axis_codes"], "to": "LPS"}
        volumes = {s["name"]: s["voxel_count"] for s in document["structures"]}
        assert volumes == {
            name: int(np.count_nonzero(reference == label))
            for label, name in enumerate(("liver", "kidney_left", "kidney_right", "spine"), start=1)
        }


def test_a_model_without_an_orientation_takes_every_stack_as_stored(tmp_path: Path) -> None:
    """As InnerEye: no orientation stated, nothing refused for it (and the model keeps its fingerprint)."""
    uids = _scans(tmp_path / "scans")
    model = _model(tmp_path / "model", None)
    unstated = _model(tmp_path / "unstated", None)  # the key left out, as a folder written before it existed
    config = unstated / "model_inference_config.json"
    document = json.loads(config.read_text())
    del document["inference"]["orientation"]
    config.write_text(json.dumps(document))
    assert load_model_package(model).fingerprint() == load_model_package(unstated).fingerprint()
    assert load_model_package(model).fingerprint() != load_model_package(SAMPLE_MODEL).fingerprint()  # it says LPS
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
    assert row["status"] == "failed" and "about 45 degrees between two of the patient's" in row["reason"]


def test_refusing_instead_of_turning_is_another_fingerprint_and_turning_keeps_the_one_it_had(tmp_path: Path) -> None:
    """Turning is the default: a model stating an orientation keeps the fingerprint it had before ``reorient``
    existed (its series in that orientation give the same outputs); refusing changes what a rerun must redo."""
    stated = load_model_package(_model(tmp_path / "stated", "LPS")).fingerprint()
    turning = load_model_package(_model(tmp_path / "turning", "LPS", reorient=True)).fingerprint()
    refusing = load_model_package(_model(tmp_path / "refusing", "LPS", reorient=False)).fingerprint()
    plain = load_model_package(_model(tmp_path / "plain", None)).fingerprint()
    assert stated == turning == load_model_package(SAMPLE_MODEL).fingerprint()  # the shipped model states LPS
    assert len({turning, refusing, plain}) == 3
