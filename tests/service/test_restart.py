"""SIGKILL the service while a job runs, start it again on the same state dir: the running job and the one queued
behind it both complete, and the result equals `run` on the same series (an uninterrupted run)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pydicom

from innereye_batch.pipeline.run import RunOptions, run_batch
from innereye_batch.service.store import JobStore
from tests.pipeline.cohort import labels_from_nifti
from tests.service.harness import (
    REPO,
    SAMPLE_SCANS,
    SEGMENTATION_ID,
    SEGMENTATION_MODEL,
    ServiceProcess,
    start_job,
    wait_for_result,
    zip_folders,
)

SERIES = [SAMPLE_SCANS / "phantom_two_rle", SAMPLE_SCANS / "phantom_one_oblique"]
MODELS = [f"{SEGMENTATION_ID}={SEGMENTATION_MODEL}"]


def _contours(path: Path) -> dict[str, list[np.ndarray]]:
    rt = pydicom.dcmread(path)
    names = {int(r.ROINumber): str(r.ROIName) for r in rt.StructureSetROISequence}
    return {
        names[int(roi.ReferencedROINumber)]: [np.asarray(c.ContourData, dtype=float) for c in roi.ContourSequence]
        for roi in rt.ROIContourSequence
    }


def _wait_until_running(client: httpx.Client, run_id: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = client.get(f"/v1/model/status/{run_id}").json()
        if status["stage"] == "running":
            return
        assert status["state"] in ("queued", "running"), status
        time.sleep(0.05)
    raise AssertionError("the job never started running")


def test_sigkill_while_running_then_restart_finishes_every_accepted_job(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = ServiceProcess(state, models=MODELS)
    try:
        with first.client() as client:
            running = start_job(client, SEGMENTATION_ID, zip_folders([(SERIES[0], "")]))
            queued = start_job(client, SEGMENTATION_ID, zip_folders([(SERIES[1], "ct/")]))
            _wait_until_running(client, running)
    finally:
        first.kill()
    store = JobStore(state)
    assert store.get(running).state == "running" and store.get(queued).state == "queued"  # killed mid-job
    store.close()
    assert (state / "uploads" / f"{running}.zip").is_file()  # kept until the job ends

    restarted = ServiceProcess(state, models=MODELS)
    try:
        with restarted.client() as client:
            results = {run_id: wait_for_result(client, run_id) for run_id in (running, queued)}
            everything = client.get(f"/v1/model/results/{running}?format=all")
            statuses = {run_id: client.get(f"/v1/model/status/{run_id}").json() for run_id in (running, queued)}
        locked = subprocess.run(
            [sys.executable, "-m", "innereye_batch", "serve", "--no-auth", "--state-dir", str(state), "--model", "x"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
    finally:
        restarted.stop()
    assert locked.returncode == 2 and "is in use by another innereye-batch serve" in " ".join(locked.stderr.split())
    assert all(r.status_code == 200 for r in results.values()), {k: r.text for k, r in results.items()}
    assert statuses[running]["attempts"] == 2 and statuses[queued]["attempts"] == 1
    assert all(s["state"] == "succeeded" for s in statuses.values())
    assert list((state / "uploads").iterdir()) == []
    assert not list((state / "jobs").glob("*/input"))

    reference = tmp_path / "reference"
    assert run_batch(RunOptions(model=SEGMENTATION_MODEL, input=SERIES[0], output=reference, workers=0)).exit_code == 0
    (key,) = [p.name for p in reference.iterdir() if p.is_dir()]
    with zipfile.ZipFile(io.BytesIO(everything.content)) as archive:
        archive.extractall(tmp_path / "all")
    with zipfile.ZipFile(io.BytesIO(results[running].content)) as archive:
        archive.extractall(tmp_path / "innereye")
    np.testing.assert_array_equal(
        labels_from_nifti(tmp_path / "all" / key / "segmentation.nii.gz"),
        labels_from_nifti(reference / key / "segmentation.nii.gz"),
    )
    ours, theirs = (json.loads((f / key / "predictions.json").read_text()) for f in (tmp_path / "all", reference))
    assert ours["structures"] == theirs["structures"]
    restored, uninterrupted = (
        _contours(tmp_path / "innereye" / "segmentation.dcm"),
        _contours(reference / key / "rtstruct.dcm"),
    )
    assert restored.keys() == uninterrupted.keys()
    for name, contours in uninterrupted.items():
        assert len(restored[name]) == len(contours)
        for a, b in zip(restored[name], contours, strict=True):
            np.testing.assert_array_equal(a, b)
