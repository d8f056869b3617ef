"""A segmentation's files written side by side by writer processes (``pipeline.fan_out``): the same outputs as
one process writes, really at once, and a failure anywhere leaves no output."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from innereye_batch.engine.postprocess import keep_largest_components
from innereye_batch.files import TEMP_PREFIX
from innereye_batch.model.spec import PostProcessing
from innereye_batch.pipeline.fan_out import fans_out, write_fanned_out
from innereye_batch.pipeline.process import Job, write_outputs
from innereye_batch.pipeline.state import DONE_RECORD
from innereye_batch.tasks.base import WorkItem
from innereye_batch.tasks.segmentation import SegmentationPrediction
from innereye_batch.writers.registry import OutputFormat, WriterOptions, register_format, resolve_formats
from tests.factory import write_series
from tests.writers.helpers import make_package, series_info_from
from tests.writers.test_rtstruct import STRUCTURES, phantom_labels

NAMES = tuple(s.name for s in STRUCTURES)
RENDEZVOUS_SECONDS = 60.0
"""How long each of the two rendezvous formats waits for the other: a bound on a hang, not a speed goal."""


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fan-out")
    series = series_info_from(write_series(root / "scans" / "a", shape=(8, 24, 22), seed=4))
    labels = phantom_labels(series.geometry.shape)
    return {"root": root, "series": series, "labels": labels, "package": make_package(root / "model", STRUCTURES)}


def _prediction(case: dict[str, Any], labels: np.ndarray | None = None) -> SegmentationPrediction:
    """Straight from the device: the connected components are still to do (in the first writer step)."""
    series = case["series"]
    return SegmentationPrediction(
        WorkItem((series,)),
        (case["labels"] if labels is None else labels).copy(),
        series.geometry,
        (),
        refined=False,
        postprocessing=PostProcessing(largest_component=("islands",)),
        structure_names=NAMES,
    )


def _fanned_out(pool: ProcessPoolExecutor, job: Job, prediction: Any, formats: Any, package: Any) -> Any:
    return write_fanned_out(pool.submit, job, prediction, formats, package, "model-fp", {"infer": 1.0}, WriterOptions())


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


def test_fanned_out_outputs_equal_one_process_outputs(case: dict[str, Any], pool: ProcessPoolExecutor) -> None:
    package = case["package"]
    formats = resolve_formats(("nifti", "dicom-seg", "rtstruct", "preview", "json"), "segmentation")
    assert fans_out(_prediction(case), formats)
    folders = {way: case["root"] / "out" / way for way in ("one", "fanned")}
    jobs = {way: Job(WorkItem((case["series"],)), folder, "input-fp") for way, folder in folders.items()}

    one = write_outputs(jobs["one"], _prediction(case), formats, package, "model-fp", {"infer": 1.0})
    fanned = _fanned_out(pool, jobs["fanned"], _prediction(case), formats, package)

    assert one.status == fanned.status == "ok", (one.reason, fanned.reason)
    assert fanned.structures == one.structures  # sized after the largest component, in the first step
    islands = next(s for s in fanned.structures if s.name == "islands")
    largest = keep_largest_components(case["labels"].copy(), [2])
    assert islands.voxel_count == int((largest == 2).sum()) < int((case["labels"] == 2).sum())
    assert sorted(fanned.outputs) == sorted(one.outputs) == ["dicom-seg", "json", "nifti", "preview", "rtstruct"]
    a, b = folders["one"], folders["fanned"]
    assert _leftovers(b) == []  # the label map the steps shared is gone
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    np.testing.assert_array_equal(
        np.asarray(nib.load(a / "segmentation.nii.gz").dataobj), np.asarray(nib.load(b / "segmentation.nii.gz").dataobj)
    )
    seg_a, seg_b = pydicom.dcmread(a / "segmentation.dcm"), pydicom.dcmread(b / "segmentation.dcm")
    np.testing.assert_array_equal(seg_a.pixel_array, seg_b.pixel_array)
    assert seg_a.NumberOfFrames == seg_b.NumberOfFrames
    rt_a, rt_b = pydicom.dcmread(a / "rtstruct.dcm"), pydicom.dcmread(b / "rtstruct.dcm")
    contours = [
        [[list(c.ContourData) for c in roi.get("ContourSequence", [])] for roi in rt.ROIContourSequence]
        for rt in (rt_a, rt_b)
    ]
    assert contours[0] == contours[1] and sum(len(c) for c in contours[1]) > 0
    np.testing.assert_array_equal(np.asarray(Image.open(a / "preview.png")), np.asarray(Image.open(b / "preview.png")))
    json_a, json_b = (json.loads((f / "predictions.json").read_text()) for f in (a, b))
    assert json_a["structures"] == json_b["structures"]
    assert json_b["timings_s"]["write"] > 0 and json_b["timings_s"]["infer"] == 1.0
    done = json.loads((b / DONE_RECORD).read_text())
    assert sorted(done["outputs"]) == sorted(fanned.outputs)
    assert all((b / entry["file"]).stat().st_size == entry["size"] for entry in done["outputs"].values())


def _rendezvous(path: Path, prediction: Any, context: Any) -> None:
    """Marks that this format started, then waits for its twin's mark: it returns only when both are written at
    the same time (one after another, the first would wait in vain and fail)."""
    me = "first" if path.name.endswith("first.txt") else "second"  # the temporary name ends with the final one
    twin = {"first": "second", "second": "first"}[me]
    marks = path.parent.parent
    (marks / f"{me}.started").write_text(str(os.getpid()))
    deadline = time.monotonic() + RENDEZVOUS_SECONDS
    while not (marks / f"{twin}.started").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{twin} never started while {me} was being written")
        time.sleep(0.01)
    assert prediction.labels.shape == prediction.geometry.shape  # the label map, mapped from the shared file
    path.write_text(str(os.getpid()))


def _fails(path: Path, prediction: Any, context: Any) -> None:
    raise OSError("the disk is full")


@pytest.fixture
def test_formats() -> Iterator[dict[str, OutputFormat]]:
    from innereye_batch.writers.registry import unregister_format

    made = {
        name: OutputFormat(
            name=name,
            filename=f"{name}.txt",
            tasks=frozenset({"segmentation"}),
            write=_fails if name == "fails" else _rendezvous,
            description="test format",
            default=False,
        )
        for name in ("first", "second", "fails")
    }
    for output in made.values():
        register_format(output)
    yield made
    for name in made:
        unregister_format(name)


def test_fanned_out_files_are_written_at_the_same_time(
    case: dict[str, Any], pool: ProcessPoolExecutor, test_formats: dict[str, OutputFormat]
) -> None:
    out = case["root"] / "rendezvous"
    job = Job(WorkItem((case["series"],)), out / "item", "input-fp")
    formats = (test_formats["first"], test_formats["second"], *resolve_formats(("json",), "segmentation"))

    result = _fanned_out(pool, job, _prediction(case), formats, case["package"])

    assert result.status == "ok", result.reason
    writers = {(job.folder / f"{name}.txt").read_text() for name in ("first", "second")}
    assert len(writers) == 2 and str(os.getpid()) not in writers  # two writer processes, neither this one
    assert _leftovers(job.folder) == []


def test_a_failing_format_leaves_no_output_of_the_fanned_out_item(
    case: dict[str, Any], pool: ProcessPoolExecutor, test_formats: dict[str, OutputFormat]
) -> None:
    job = Job(WorkItem((case["series"],)), case["root"] / "failing" / "item", "input-fp")
    formats = (*resolve_formats(("nifti", "rtstruct"), "segmentation"), test_formats["fails"])
    formats += resolve_formats(("json",), "segmentation")

    result = _fanned_out(pool, job, _prediction(case), formats, case["package"])

    assert result.status == "failed"
    assert result.reason == "writing fails: OSError: the disk is full", result.reason
    assert list(job.folder.iterdir()) == []  # the NIfTI and the structure set written beside it are removed


def test_failed_post_processing_fails_the_fanned_out_item(case: dict[str, Any], pool: ProcessPoolExecutor) -> None:
    labels = case["labels"].copy()
    labels[0, 0, 0] = len(NAMES) + 1  # a label no structure has: sizing the structures fails
    job = Job(WorkItem((case["series"],)), case["root"] / "unrefined" / "item", "input-fp")
    formats = resolve_formats(("nifti", "rtstruct", "json"), "segmentation")

    result = _fanned_out(pool, job, _prediction(case, labels), formats, case["package"])

    assert result.status == "failed" and result.reason.startswith("post-processing: ValueError"), result.reason
    assert not job.folder.exists() or list(job.folder.iterdir()) == []
