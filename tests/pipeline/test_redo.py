"""A series that is redone shows only the new run's outputs, or none when it fails; a run decides what is done
while it holds the output lock; an earlier run's summary never vouches for series that are being redone."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from innereye_batch.cli import app
from innereye_batch.errors import OutputLockedError, SeriesError, error_text
from innereye_batch.pipeline import run as run_module
from innereye_batch.pipeline.state import output_lock
from innereye_batch.writers.registry import OutputFormat, register_format, unregister_format
from tests.factory import write_series
from tests.pipeline.cohort import model_folder

DEFAULT_FILES = [
    "done.json",
    "predictions.json",
    "preview.png",
    "rtstruct.dcm",
    "segmentation.dcm",
    "segmentation.nii.gz",
]
WRAPPED = "OSError: With tag (7FE0,0010) got exception: [Errno 28] No space left on device"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    base = tmp_path_factory.mktemp("redo")
    series = write_series(base / "scans" / "a", shape=(8, 16, 16), seed=1)
    return base / "scans", model_folder(base / "model", members=1), series.series_instance_uid


def run(scans: Path, model: Path, out: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(
        app, ["run", "--model", str(model), "--input", str(scans), "--output", str(out), "--workers", "0", *extra]
    )
    assert "Traceback" not in result.output, result.output
    (row,) = json.loads((out / "summary.json").read_text())["series"]
    return result.exit_code, row


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_redone_with_fewer_formats_keeps_only_the_new_outputs(inputs: tuple[Path, Path, str], tmp_path: Path) -> None:
    scans, model, uid = inputs
    assert run(scans, model, tmp_path)[0] == 0
    assert files(tmp_path / uid) == DEFAULT_FILES
    code, row = run(scans, model, tmp_path, "--overwrite", "--formats", "nifti")
    assert code == 0 and row["status"] == "ok"
    assert files(tmp_path / uid) == ["done.json", "segmentation.nii.gz"]  # no output of the earlier run beside it


@pytest.fixture
def failing_format() -> Iterator[str]:
    def fail(path: Path, prediction: Any, context: Any) -> None:
        path.write_bytes(b"partial")
        raise OSError(f"{WRAPPED[9:]}\nTraceback (most recent call last):\n  File 'pydicom/tag.py', line 1")

    register_format(OutputFormat("failing", "failing.bin", frozenset({"segmentation"}), fail, "fails", default=False))
    yield "failing"
    unregister_format("failing")


def test_redo_that_fails_keeps_no_output(inputs: tuple[Path, Path, str], tmp_path: Path, failing_format: str) -> None:
    scans, model, uid = inputs
    assert run(scans, model, tmp_path)[0] == 0
    code, row = run(scans, model, tmp_path, "--overwrite", "--formats", f"nifti,{failing_format}")
    assert code == 1 and row["status"] == "failed"
    assert row["reason"] == f"writing failing: {WRAPPED}"  # one line: the wrapped error's traceback cut off
    assert files(tmp_path / uid) == []  # neither this run's NIfTI nor the earlier run's outputs


def test_error_text_is_one_line_without_a_folded_traceback() -> None:
    folded = OSError(f"{WRAPPED[9:]}\nTraceback (most recent call last):\n  File 'x.py', line 3\nOSError: ...")
    assert error_text(folded) == WRAPPED
    assert error_text(ValueError("two\n  lines")) == "ValueError: two lines"
    assert error_text(KeyError()) == "KeyError"
    # a library quotes the value it fails on (highdicom: the patient's birth date); this package's own errors not
    assert error_text(ValueError("Unable to convert '1901-02-03' to 'DA' object")) == (
        'ValueError: Unable to convert "<redacted>" object'
    )
    assert error_text(SeriesError("1.2.3", "structure 'body' differs")).endswith("'body' differs")
    missing = AttributeError("'FileDataset' object has no attribute 'PatientName'")
    assert error_text(missing) == "AttributeError: the DICOM attribute PatientName is missing"
    assert error_text(AttributeError("'X' object has no attribute 'Zzsecret'")) == 'AttributeError: "<redacted>"'


def test_writer_processes_keep_library_warnings_off_the_terminal() -> None:
    """As the decoding workers: highdicom warns about a PatientName without a caret by quoting it."""
    code = (
        "import logging, os, warnings; from innereye_batch.pipeline.writer_pool import _init_writer_process;"
        "_init_writer_process(os.getppid()); warnings.warn('The string \"Zzsecret\" is unlikely');"
        "logging.getLogger('highdicom').warning('Zzsecret again')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Zzsecret" not in done.stdout + done.stderr


def test_done_is_decided_under_the_lock_and_the_earlier_summary_is_gone(
    inputs: tuple[Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans, model, _ = inputs
    assert run(scans, model, tmp_path)[0] == 0
    seen: dict[str, bool] = {}
    plan_run, run_jobs = run_module.plan_run, run_module._run_jobs

    def planning(*args: Any, **kwargs: Any) -> Any:
        with pytest.raises(OutputLockedError), output_lock(tmp_path):  # this run holds it while it reads
            pass
        return plan_run(*args, **kwargs)

    def running(*args: Any, **kwargs: Any) -> Any:
        seen["summary while redoing"] = (tmp_path / "summary.json").exists()
        seen["report while redoing"] = (tmp_path / "report.html").exists()
        return run_jobs(*args, **kwargs)

    monkeypatch.setattr(run_module, "plan_run", planning)
    monkeypatch.setattr(run_module, "_run_jobs", running)
    code, row = run(scans, model, tmp_path, "--overwrite")
    assert code == 0 and row["status"] == "ok"
    assert seen == {"summary while redoing": False, "report while redoing": False}


def test_a_slice_rewritten_in_place_at_the_same_size_is_redone(tmp_path: Path) -> None:
    """Same UIDs, names and sizes, even the old modification time put back (cp -p): the status-change time
    tells, and the series is redone from the new pixels instead of being 'already done'."""
    import os

    import pydicom

    series = write_series(tmp_path / "scans" / "a", shape=(8, 16, 16), seed=3)
    model = model_folder(tmp_path / "model", members=1)
    assert run(tmp_path / "scans", model, tmp_path / "out")[1]["status"] == "ok"
    path = series.paths[3]
    before = path.stat()
    ds = pydicom.dcmread(path)
    ds.PixelData = bytes(len(ds.PixelData))  # same size, other values
    ds.save_as(path, enforce_file_format=True)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    code, row = run(tmp_path / "scans", model, tmp_path / "out")
    assert code == 0 and row["status"] == "ok" and "already done" not in row["reason"]


def test_a_series_failing_at_planning_loses_the_stale_result_of_other_inputs(tmp_path: Path) -> None:
    """Done, then a middle slice is deleted: the rerun fails the series (missing slices), and its folder no longer
    holds the earlier result with a done record vouching for it."""
    series = write_series(tmp_path / "scans" / "a", shape=(8, 16, 16), seed=4)
    model = model_folder(tmp_path / "model", members=1)
    assert run(tmp_path / "scans", model, tmp_path / "out")[1]["status"] == "ok"
    series.paths[4].unlink()
    code, row = run(tmp_path / "scans", model, tmp_path / "out")
    assert code == 1 and row["status"] == "failed" and "missing" in row["reason"]
    assert files(tmp_path / "out" / series.series_instance_uid) == []


def test_a_series_failing_at_inference_loses_the_stale_result_but_an_overwrite_keeps_a_valid_one(
    tmp_path: Path,
) -> None:
    import torch

    from innereye_batch.dicom.scan import scan_tree
    from innereye_batch.engine.device import resolve_device
    from innereye_batch.model.checkpoints import load_networks
    from innereye_batch.model.package import load_model_package
    from innereye_batch.pipeline.plan import plan_run
    from innereye_batch.pipeline.process import process_item
    from innereye_batch.pipeline.run import RunOptions, make_predictor, run_fingerprint
    from innereye_batch.writers.registry import resolve_formats

    series = write_series(tmp_path / "scans" / "a", shape=(8, 16, 16), seed=5)
    model = model_folder(tmp_path / "model", members=1)
    out = tmp_path / "out"
    assert run(tmp_path / "scans", model, out)[1]["status"] == "ok"
    package = load_model_package(model)
    formats = resolve_formats((), package.task)
    fingerprint = run_fingerprint(package, RunOptions(model=model, input=tmp_path / "scans", output=out))
    networks = load_networks(package)
    with torch.no_grad():
        networks[0].output_layer.bias[0] = float("nan")  # type: ignore[index, union-attr]
    failing = make_predictor(package, networks, resolve_device("cpu"))
    (job,), _ = plan_run(scan_tree(tmp_path / "scans"), package, formats, out, overwrite=True, model_fp=fingerprint)
    assert process_item(job, failing, formats, package, fingerprint).status == "failed"
    assert files(job.folder) == DEFAULT_FILES  # the same inputs and model: the earlier result still holds
    other_inputs = type(job)(job.item, job.folder, "another input fingerprint")
    assert process_item(other_inputs, failing, formats, package, fingerprint).status == "failed"
    assert files(job.folder) == []
    assert series.series_instance_uid == job.folder.name


def test_amp_is_part_of_what_a_done_record_vouches_for(tmp_path: Path) -> None:
    """bf16 results differ from fp32 ones: a series done with --amp is not done for a run without it."""
    write_series(tmp_path / "scans" / "a", shape=(8, 16, 16), seed=6)
    model = model_folder(tmp_path / "model", members=1)
    assert run(tmp_path / "scans", model, tmp_path / "out", "--amp")[1]["status"] == "ok"
    assert "already done" in run(tmp_path / "scans", model, tmp_path / "out", "--amp")[1]["reason"]
    code, row = run(tmp_path / "scans", model, tmp_path / "out")
    assert code == 0 and row["status"] == "ok" and "already done" not in row["reason"]
