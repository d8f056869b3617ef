"""The issue-18 outputs through `run`: RT Structure Set, preview, report, --seg-type, --no-preview, the marker,
and a damaged DICOM output failing its series with the read-back reason."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from innereye_batch.cli import app
from innereye_batch.dicom.scan import scan_tree
from innereye_batch.pipeline.process import Job, write_outputs
from innereye_batch.pipeline.run import RunOptions, run_batch
from innereye_batch.pipeline.state import DONE_RECORD
from innereye_batch.tasks.base import WorkItem
from innereye_batch.tasks.segmentation import SegmentationPrediction, structure_stats
from innereye_batch.writers import dicom_seg, rtstruct
from innereye_batch.writers.registry import resolve_formats
from innereye_batch.writers.run_report import REPORT_HTML
from tests.factory import rotation_direction, write_series
from tests.pipeline.cohort import labels_from_nifti, model_folder
from tests.writers.helpers import dciodvfy_errors, make_package, series_info_from
from tests.writers.test_rtstruct import STRUCTURES, dice, oracle_masks, phantom_labels

POSTPROCESSING = {"largest_component": ["liver"], "fill_holes": ["spine"]}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_folder(tmp_path_factory.mktemp("model") / "model", members=1, postprocessing=POSTPROCESSING)


def _scans(root: Path) -> list[str]:
    oblique = dict(zip(("row_direction", "column_direction"), rotation_direction((1, 0.5, 0.2), 20), strict=True))
    series = [
        write_series(root / "a", shape=(8, 20, 18), instance_numbers_descending=True, seed=1),
        write_series(root / "b", shape=(8, 20, 18), seed=2, **oblique),  # type: ignore[arg-type]
    ]
    return [s.series_instance_uid for s in series]


def test_default_run_writes_rtstruct_preview_and_report(tmp_path: Path, model: Path) -> None:
    uids = _scans(tmp_path / "scans")
    out = tmp_path / "out"

    report = run_batch(RunOptions(model=model, input=tmp_path / "scans", output=out, workers=0))

    assert report.exit_code == 0, [r.reason for r in report.results]
    assert out / REPORT_HTML in report.summary_paths
    scanned = {s.series_instance_uid: s for s in scan_tree(tmp_path / "scans").series}
    for uid in uids:
        folder = out / uid
        assert {"rtstruct", "preview", "dicom-seg"} <= set(json.loads((folder / DONE_RECORD).read_text())["outputs"])
        assert dciodvfy_errors(folder / "rtstruct.dcm", "RTStructureSet") == []
        labels = labels_from_nifti(folder / "segmentation.nii.gz")
        back = oracle_masks(folder / "rtstruct.dcm", scanned[uid])
        assert dice(back["liver"], labels == 1) >= 0.97
        np.testing.assert_array_equal(back["liver"], labels == 1)
        spine = labels == 2
        assert back["spine"].sum() >= spine.sum() and dice(back["spine"], spine) >= 0.97  # holes filled per slice
        assert pydicom.dcmread(folder / "rtstruct.dcm").SeriesDescription.endswith("NOT FOR CLINICAL USE")
        assert (folder / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / REPORT_HTML).read_text(encoding="utf-8")
    for uid in uids:
        assert f'src="{uid}/preview.png"' in page


def test_cli_seg_type_no_preview_and_marker(tmp_path: Path, model: Path) -> None:
    (uid, _) = _scans(tmp_path / "scans")
    out = tmp_path / "out"
    args = ["run", "--model", str(model), "--input", str(tmp_path / "scans"), "--output", str(out)]
    options = ["--workers", "0", "--seg-type", "labelmap", "--no-preview", "--clinical-marker", "RESEARCH ONLY"]

    result = CliRunner().invoke(app, [*args, *options])

    assert result.exit_code == 0, result.output
    folder = out / uid
    assert not (folder / "preview.png").exists()
    assert "preview" not in json.loads((folder / DONE_RECORD).read_text())["outputs"]
    seg = pydicom.dcmread(folder / "segmentation.dcm")
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7" and seg.SegmentationType == "LABELMAP"
    assert seg.SeriesDescription.endswith(" RESEARCH ONLY")
    assert pydicom.dcmread(folder / "rtstruct.dcm").SeriesDescription.endswith(" RESEARCH ONLY")
    assert "<img" not in (out / REPORT_HTML).read_text(encoding="utf-8")

    bad = CliRunner().invoke(app, [*args, "--seg-type", "fractional"])
    assert bad.exit_code == 2 and "--seg-type" in bad.output
    bad = CliRunner().invoke(app, [*args, "--clinical-marker", "bad\\marker"])
    assert bad.exit_code == 2 and "--clinical-marker" in bad.output


@pytest.mark.parametrize(
    ("module", "writer", "output"),
    [(rtstruct, "write_rtstruct", "rtstruct"), (dicom_seg, "write_dicom_seg", "segmentation")],
)
def test_a_mirrored_dicom_output_fails_its_series_and_leaves_no_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: ModuleType, writer: str, output: str
) -> None:
    generated = write_series(tmp_path / "scans" / "a", shape=(8, 24, 22))
    series = series_info_from(generated)
    labels = phantom_labels(series.geometry.shape)
    package = make_package(tmp_path / "model", structures=STRUCTURES)
    names = [s.name for s in STRUCTURES]
    prediction = SegmentationPrediction(
        WorkItem((series,)), labels, series.geometry, structure_stats(labels, series.geometry, names)
    )
    original = getattr(module, writer)

    def mirroring_writer(path: Path, written: np.ndarray, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        mirrored = np.ascontiguousarray(written[:, :, ::-1])  # left-right mirror
        if "masks" in kwargs:  # the structure set's masks, made once for writing and checking
            kwargs["masks"] = rtstruct.structure_masks(mirrored, STRUCTURES)
        original(path, mirrored, *args, **kwargs)

    monkeypatch.setattr(module, writer, mirroring_writer)
    folder = tmp_path / "out" / series.key
    job = Job(WorkItem((series,)), folder, "input-fingerprint")
    formats = resolve_formats(("nifti", "dicom-seg", "rtstruct", "preview", "json"), "segmentation")

    result = write_outputs(job, prediction, formats, package, package.fingerprint(), {"infer": 1.0})

    assert result.status == "failed"
    step = "rtstruct" if output == "rtstruct" else "dicom-seg"
    assert result.reason.startswith(
        f"writing {step}: ReadBackError: {output}.dcm read back does not match the label map: 'body': centroid"
    ), result.reason
    assert "'islands': centroid" in result.reason and "from the label map's" in result.reason
    assert list(folder.iterdir()) == []  # the NIfTI written before is gone, and there is no done record


def test_a_large_private_element_of_the_source_is_never_read_by_the_writers(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DICOM-SEG and RT Structure Set writers read the first source image's whole header: a private element of
    1.5 GiB on each slice took a run from 0.5 to 2 GB (one of 30 GB would have ended it). Such values now stay on
    disk (``read_source_header``), and the outputs are as without them."""
    from innereye_batch.dicom import file_header

    series = write_series(tmp_path / "scans" / "a", shape=(8, 16, 16), seed=3)
    blob = bytes(range(256)) * 8192  # 2 MiB
    for path in series.paths:
        ds = pydicom.dcmread(path)
        ds.private_block(0x0029, "BLOB VENDOR", create=True).add_new(0x10, "OB", blob)
        ds.save_as(path)
    source = file_header.read_source_header(series.paths[0])
    element = source.get_item(0x00291010, keep_deferred=True)
    assert element is not None and element.value is None, "the blob's value was read"  # deferred: on disk
    assert source.SeriesInstanceUID == series.series_instance_uid

    read_whole: list[Path] = []
    original = pydicom.dcmread

    def watched(path: object, *args: object, **kwargs: object) -> object:
        if kwargs.get("defer_size") is None and not kwargs.get("specific_tags") and Path(str(path)) in series.paths:
            read_whole.append(Path(str(path)))
        return original(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pydicom, "dcmread", watched)
    report = run_batch(
        RunOptions(model=model, input=tmp_path / "scans", output=tmp_path / "out", device="cpu", workers=0)
    )
    assert [r.status for r in report.results] == ["ok"] and read_whole == []
    seg = pydicom.dcmread(tmp_path / "out" / series.series_instance_uid / "segmentation.dcm")
    assert 0x00291010 not in seg and seg.PatientID == "PAT001"
