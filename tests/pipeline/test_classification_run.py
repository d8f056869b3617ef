"""`run` with the sample chest X-ray classifier: one item per image, batched, probabilities, labels, explanations.

The shipped scans' file names say what each shows (``..._nodule.dcm`` / ``..._normal.dcm``); the model is the
shipped three-member ensemble.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jsonschema
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from innereye_batch.cli import app
from innereye_batch.dicom.projection import read_projection_images
from innereye_batch.dicom.scan import scan_tree
from innereye_batch.engine.device import resolve_device
from innereye_batch.model.checkpoints import load_networks
from innereye_batch.model.package import load_model_package
from innereye_batch.pipeline.plan import plan_run
from innereye_batch.pipeline.process import process_item
from innereye_batch.pipeline.run import RunOptions, make_predictor, run_batch
from innereye_batch.writers.explanations import MARKER_STRIP
from innereye_batch.writers.predictions import load_predictions_schema
from innereye_batch.writers.registry import resolve_formats
from tests.factory import write_series
from tests.writers.test_heatmap import dciodvfy_report

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "sample_data" / "cxr_model"
SCANS = REPO / "sample_data" / "cxr_scans"


def _truth() -> dict[str, str]:
    """SOP Instance UID -> the class its file name says."""
    return {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p.stem.rsplit("_", 1)[1]
        for p in SCANS.glob("*.dcm")
    }


@pytest.fixture(scope="module")
def explained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    out = tmp_path_factory.mktemp("cxr") / "out"
    args = ["run", "--model", str(MODEL), "--input", str(SCANS), "--output", str(out), "--workers", "1"]
    result = CliRunner().invoke(app, [*args, "--explain", "gradcam,integrated-gradients", "--batch-size", "4"])
    return out, result.exit_code, result.output


def test_every_image_is_classified_as_its_file_says(explained_run: tuple[Path, int, str]) -> None:
    out, code, output = explained_run
    assert code == 0, output
    truth = _truth()
    schema = load_predictions_schema("classification")
    for document_path in out.glob("*/predictions.json"):
        document = json.loads(document_path.read_text())
        jsonschema.validate(document, schema)
        result = document["classification"]
        assert result["predicted"] == [truth[document["input"]["sop_instance_uid"]]]
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        mean = {c: np.mean([m[c] for m in result["members"]]) for c in result["classes"]}
        for name, probability in result["probabilities"].items():
            assert probability == pytest.approx(mean[name], abs=1e-6)  # the ensemble is its members' mean
        assert document["explanations"] == {
            "class": result["predicted"][0],
            "methods": ["gradcam", "integrated-gradients"],
        }
    assert len(list(out.glob("*/predictions.json"))) == len(truth) == 5


def test_summary_has_a_row_per_image_and_a_column_per_class(explained_run: tuple[Path, int, str]) -> None:
    out, _, _ = explained_run
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 and {r["status"] for r in rows} == {"ok"}
    for row in rows:
        assert float(row["normal_probability"]) + float(row["nodule_probability"]) == pytest.approx(1, abs=1e-5)
        assert row["predicted"] == ("nodule" if float(row["nodule_probability"]) > 0.5 else "normal")


def test_explanations_are_on_the_image_grid(explained_run: tuple[Path, int, str]) -> None:
    out, _, _ = explained_run
    for folder in (p.parent for p in out.glob("*/predictions.json")):
        document = json.loads((folder / "predictions.json").read_text())
        assert document["inference"] == {"device": "cpu", "precision": "float32"}
        rows, columns = document["input"]["rows"], document["input"]["columns"]
        maps = np.load(folder / "explanation.npz")
        assert sorted(maps.files) == ["gradcam", "integrated-gradients"]
        for heat in maps.values():
            assert heat.shape == (rows, columns) and heat.dtype == np.float32
            assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
        from PIL import Image

        with Image.open(folder / "explanation.png") as png:
            assert png.size == (2 * columns + 8, MARKER_STRIP + rows)  # one panel per method, under the marker
            strip = np.asarray(png.convert("RGB"))[:MARKER_STRIP]
            assert (strip[..., 0] > 200).any() and (strip[..., 1] < 120).any()  # the red marker is drawn there


def test_batched_and_one_by_one_agree(explained_run: tuple[Path, int, str], tmp_path: Path) -> None:
    out, _, _ = explained_run
    single = run_batch(RunOptions(model=MODEL, input=SCANS, output=tmp_path / "one", workers=0, batch_size=1))
    assert single.exit_code == 0
    batched = {r["key"]: r["probabilities"] for r in json.loads((out / "summary.json").read_text())["series"]}
    for result in single.results:
        assert result.probabilities is not None
        for name, probability in result.probabilities.items():
            assert probability == pytest.approx(batched[result.key][name], abs=1e-5)


def test_process_item_classifies_one_image(tmp_path: Path) -> None:
    package = load_model_package(MODEL)
    formats = resolve_formats((), package.task)
    predictor = make_predictor(package, load_networks(package), resolve_device("cpu"))
    jobs, settled = plan_run(scan_tree(SCANS), package, formats, tmp_path / "out")
    assert settled == [] and len(jobs) == 5
    result = process_item(jobs[0], predictor, formats, package, package.fingerprint())
    assert result.status == "ok" and result.labels is not None
    assert (jobs[0].folder / "predictions.json").is_file() and not (jobs[0].folder / "explanation.png").exists()


def test_non_finite_probabilities_fail_the_image(tmp_path: Path) -> None:
    """A member whose outputs turn NaN at run time fails the images it classifies, in the predictor, and says
    why (it used to fail in the JSON writer, blaming the file)."""
    import torch

    package = load_model_package(MODEL)
    formats = resolve_formats((), package.task)
    networks = load_networks(package)
    with torch.no_grad():
        networks[1].classifier.bias[0] = float("nan")  # type: ignore[index, union-attr]
    predictor = make_predictor(package, networks, resolve_device("cpu"))
    jobs, _ = plan_run(scan_tree(SCANS), package, formats, tmp_path / "out")
    result = process_item(jobs[0], predictor, formats, package, package.fingerprint())
    assert result.status == "failed" and "NaN or infinite values" in result.reason
    assert not (jobs[0].folder / "predictions.json").exists()


def test_other_modalities_are_skipped_and_each_frame_is_an_item(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    write_series(scans / "ct", shape=(3, 16, 16))
    two_frames = scans / "cr" / "two_frames.dcm"
    two_frames.parent.mkdir()
    ds = pydicom.dcmread(next(SCANS.glob("cr_mono2_*.dcm")))
    frame = ds.pixel_array
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([frame, frame[:, ::-1]]).astype(frame.dtype).tobytes()
    ds.save_as(two_frames)
    report = run_batch(RunOptions(model=MODEL, input=scans, output=tmp_path / "out", workers=0))
    statuses = sorted((r.modality, r.status) for r in report.results)
    assert statuses == [("CR", "ok"), ("CR", "ok"), ("CT", "skipped")]
    ct = next(r for r in report.results if r.modality == "CT")
    assert "Modality CT is not one the model takes" in ct.reason
    frames = [json.loads(p.read_text())["input"]["frame"] for p in (tmp_path / "out").glob("*/predictions.json")]
    assert sorted(frames) == [1, 2]
    images = read_projection_images(two_frames)
    assert len(images) == 2


def test_secondary_capture_of_the_explanation(tmp_path: Path) -> None:
    options = RunOptions(
        model=MODEL,
        input=SCANS,
        output=tmp_path / "out",
        workers=0,
        explain=("gradcam",),
        formats=("json", "explanation-dicom"),
        series_uids=(
            str(pydicom.dcmread(next(SCANS.glob("dx_*nodule.dcm")), stop_before_pixels=True).SeriesInstanceUID),
        ),
    )
    report = run_batch(options)
    assert [r.status for r in report.results if r.status != "skipped"] == ["ok"]
    (sc_path,) = (tmp_path / "out").glob("*/explanation.dcm")
    report_text = dciodvfy_report(sc_path)
    assert "Secondary Capture" in report_text or "SC" in report_text
    assert [line for line in report_text.splitlines() if line.startswith("Error")] == []
    sc = pydicom.dcmread(sc_path)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID in _truth()


def test_usage_errors(tmp_path: Path) -> None:
    base = ["run", "--model", str(MODEL), "--input", str(SCANS), "--output", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*base, "--formats", "json,explanation-png"])
    assert result.exit_code == 2 and "--explain" in result.output
    result = CliRunner().invoke(app, [*base, "--explain", "lime"])
    assert result.exit_code == 2 and "lime" in result.output
    segmentation = REPO / "sample_data" / "final_model"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--model",
            str(segmentation),
            "--input",
            str(SCANS),
            "--output",
            str(tmp_path / "s"),
            "--explain",
            "gradcam",
        ],
    )
    assert result.exit_code == 2 and "classification" in result.output


def test_a_2d_image_over_the_image_limit_fails_from_its_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-D image costs 12-24 bytes a pixel to decode, not the 4 of --max-voxels' float32: a small compressed
    upload claiming hundreds of millions of pixels could take tens of GB. The sample's 256x256 images stand in for
    such an image, under a limit of 60,000 pixels."""
    from innereye_batch.pipeline import plan

    monkeypatch.setattr(plan, "MAX_IMAGE_PIXELS", 60_000)
    report = run_batch(RunOptions(model=MODEL, input=SCANS, output=tmp_path / "out", workers=0))
    assert report.results and all(r.status == "failed" for r in report.results)
    assert all("over the limit of 60,000 (the limit for a 2-D image)" in r.reason for r in report.results)
    lower = run_batch(RunOptions(model=MODEL, input=SCANS, output=tmp_path / "low", workers=0, max_voxels=1000))
    assert all("over the limit of 1,000 (--max-voxels)" in r.reason for r in lower.results)
