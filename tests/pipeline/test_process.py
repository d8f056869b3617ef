"""The task-independent core: process_item, the writer registry, sources and format needs checked at planning."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from innereye_batch.dicom.scan import ScanResult, scan_tree
from innereye_batch.engine.device import resolve_device
from innereye_batch.model.checkpoints import load_networks
from innereye_batch.model.package import load_model_package
from innereye_batch.pipeline.plan import plan_run
from innereye_batch.pipeline.process import process_item
from innereye_batch.pipeline.run import RunOptions, make_predictor, run_batch, run_fingerprint
from innereye_batch.pipeline.state import DONE_RECORD
from innereye_batch.tasks.segmentation import SegmentationPrediction
from innereye_batch.writers.registry import (
    OutputFormat,
    WriteContext,
    WriterOptions,
    register_format,
    registered_formats,
    resolve_formats,
    unregister_format,
)
from tests.factory import write_series
from tests.pipeline.cohort import labels_from_nifti, model_folder


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_folder(tmp_path_factory.mktemp("model") / "model", members=1)


def test_process_item_writes_what_run_writes(tmp_path: Path, model: Path) -> None:
    scans = tmp_path / "scans"
    series = write_series(scans / "a", shape=(8, 16, 16), seed=1)
    package = load_model_package(model)
    formats = resolve_formats((), package.task)
    predictor = make_predictor(package, load_networks(package), resolve_device("cpu"))
    options = RunOptions(model=model, input=scans, output=tmp_path / "by_hand", workers=0)
    fingerprint = run_fingerprint(package, options)  # the model and the run's output options
    jobs, settled = plan_run(scan_tree(scans), package, formats, tmp_path / "by_hand", model_fp=fingerprint)
    assert settled == [] and len(jobs) == 1
    result = process_item(jobs[0], predictor, formats, package, fingerprint)
    assert result.status == "ok", result.reason
    assert [s.name for s in result.structures] == ["liver", "spine"]

    report = run_batch(RunOptions(model=model, input=scans, output=tmp_path / "run", workers=0))
    assert report.exit_code == 0
    by_hand = tmp_path / "by_hand" / series.series_instance_uid
    by_run = tmp_path / "run" / series.series_instance_uid
    assert sorted(p.name for p in by_hand.iterdir()) == sorted(p.name for p in by_run.iterdir())
    np.testing.assert_array_equal(
        labels_from_nifti(by_hand / "segmentation.nii.gz"), labels_from_nifti(by_run / "segmentation.nii.gz")
    )
    # the done record process_item wrote is the one a run trusts: a run into that folder has nothing to do
    rerun = run_batch(options)
    assert [r.status for r in rerun.results] == ["skipped"]
    labelmap = run_batch(replace(options, writer_options=WriterOptions(seg_type="LABELMAP")))
    assert [r.status for r in labelmap.results] == ["ok"]  # other output options: not the same result


def _write_label_sum(path: Path, prediction: SegmentationPrediction, context: WriteContext) -> None:
    path.write_text(json.dumps({"model": context.package.name, "labelled": int(np.count_nonzero(prediction.labels))}))


def test_a_registered_format_is_written_by_run_without_pipeline_changes(tmp_path: Path, model: Path) -> None:
    scans = tmp_path / "scans"
    series = write_series(scans / "a", shape=(8, 16, 16), seed=2)
    extra = OutputFormat(
        name="label-count",
        filename="label_count.json",
        tasks=frozenset({"segmentation"}),
        write=_write_label_sum,
        description="test format",
    )
    register_format(extra)
    try:
        assert "label-count" in registered_formats()
        with pytest.raises(ValueError, match="already registered"):
            register_format(extra)
        options = RunOptions(
            model=model, input=scans, output=tmp_path / "out", workers=0, formats=("nifti", "label-count")
        )
        assert run_batch(options).exit_code == 0
    finally:
        unregister_format("label-count")
    folder = tmp_path / "out" / series.series_instance_uid
    written = json.loads((folder / "label_count.json").read_text())
    labels = labels_from_nifti(folder / "segmentation.nii.gz")
    assert written == {"model": "TinyTest", "labelled": int(np.count_nonzero(labels))}
    assert set(json.loads((folder / DONE_RECORD).read_text())["outputs"]) == {"nifti", "label-count"}


def _fail(path: Path, prediction: SegmentationPrediction, context: WriteContext) -> None:
    path.write_bytes(b"partial")
    raise OSError(28, "No space left on device")


def test_a_failing_writer_fails_its_series_and_leaves_no_output(tmp_path: Path, model: Path) -> None:
    scans = tmp_path / "scans"
    series = write_series(scans / "a", shape=(8, 16, 16), seed=3)
    register_format(OutputFormat("broken", "broken.bin", frozenset({"segmentation"}), _fail, "always fails"))
    try:
        options = RunOptions(model=model, input=scans, output=tmp_path / "out", workers=0, formats=("nifti", "broken"))
        report = run_batch(options)
    finally:
        unregister_format("broken")
    assert report.exit_code == 1
    (result,) = report.results
    assert result.status == "failed" and "writing broken" in result.reason and "No space left" in result.reason
    folder = tmp_path / "out" / series.series_instance_uid
    assert not folder.exists() or list(folder.iterdir()) == []  # the NIfTI written before is gone, no done.json


def test_any_source_drives_a_run(tmp_path: Path, model: Path) -> None:
    scans = tmp_path / "scans"
    kept = write_series(scans / "a", shape=(8, 16, 16), seed=4)
    write_series(scans / "b", shape=(8, 16, 16), seed=5)

    class OnlyFirstSeries:
        description = "test source"

        def discover(self) -> ScanResult:
            found = scan_tree(scans)
            return ScanResult(tuple(s for s in found.series if s.series_instance_uid == kept.series_instance_uid), ())

    options = RunOptions(model=model, input=tmp_path / "unused", output=tmp_path / "out", workers=0)
    report = run_batch(options, source=OnlyFirstSeries())
    assert [(r.key, r.status) for r in report.results] == [(kept.series_instance_uid, "ok")]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["run"]["input"] == "test source"


def test_outputs_a_series_cannot_get_fail_it_at_planning(tmp_path: Path, model: Path) -> None:
    scans = tmp_path / "scans"
    series = write_series(scans / "a", shape=(8, 16, 16), seed=6)
    for path in series.paths:
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path)
    dry = run_batch(RunOptions(model=model, input=scans, output=tmp_path / "out", dry_run=True))
    (planned,) = dry.planned
    assert (
        planned["action"] == "failed"
        and "dicom-seg" in planned["reason"]
        and "FrameOfReferenceUID" in planned["reason"]
    )
    assert not (tmp_path / "out").exists()
    nifti_only = run_batch(RunOptions(model=model, input=scans, output=tmp_path / "out", formats=("nifti",), workers=0))
    assert [r.status for r in nifti_only.results] == ["ok"]


def test_jobs_run_largest_first(tmp_path: Path, model: Path) -> None:
    """Longest-processing-time order: the run's end waits on the smallest series' export. Equal sizes keep the
    scan's order, and the dry run lists the jobs in the order they run."""
    scans = tmp_path / "scans"
    shapes = {"a": (6, 16, 16), "b": (10, 16, 16), "c": (6, 16, 16), "d": (8, 20, 20)}
    uids = {
        name: write_series(scans / name, shape=shape, seed=i).series_instance_uid
        for i, (name, shape) in enumerate(shapes.items())
    }
    package = load_model_package(model)
    scan = scan_tree(scans)
    jobs, _ = plan_run(scan, package, resolve_formats((), package.task), tmp_path / "out")
    in_scan = [s.series_instance_uid for s in scan.series]
    small = sorted((uids["a"], uids["c"]), key=in_scan.index)
    assert [j.item.primary.series_instance_uid for j in jobs] == [uids["d"], uids["b"], *small]
    dry = run_batch(RunOptions(model=model, input=scans, output=tmp_path / "out", dry_run=True))
    assert [p["key"] for p in dry.planned] == [j.item.key for j in jobs]


def test_non_finite_model_outputs_fail_the_series(tmp_path: Path, model: Path) -> None:
    """Outputs that turn NaN at run time (an overflow under --amp, say; finite weights are checked at loading)
    fail the series: argmax would read them as background, an empty segmentation."""
    scans = tmp_path / "scans"
    write_series(scans / "a", shape=(8, 16, 16), seed=1)
    package = load_model_package(model)
    formats = resolve_formats((), package.task)
    networks = load_networks(package)
    with torch.no_grad():
        networks[0].output_layer.bias[0] = float("nan")  # type: ignore[index, union-attr]
    predictor = make_predictor(package, networks, resolve_device("cpu"))
    (job,), _ = plan_run(scan_tree(scans), package, formats, tmp_path / "out")
    result = process_item(job, predictor, formats, package, package.fingerprint())
    assert result.status == "failed" and "NaN or infinite values" in result.reason
    assert not (job.folder / "segmentation.nii.gz").exists()
