"""InnerEye's inference API, against the real service: every path, code and body of InnerEye-Inference's own test
suite, with the sample segmentation model on a zipped sample series; the RT Structure Set in the result is
checked (ROIs, names, numbers, interpreted types, SoftwareVersions, dciodvfy, contours against the label map) and
the job's outputs equal those of `run` on the same series.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pydicom
import pytest

from innereye_batch.dicom.scan import scan_tree
from innereye_batch.pipeline.run import RunOptions, run_batch
from innereye_batch.writers.predictions import load_predictions_schema
from tests.pipeline.cohort import labels_from_nifti
from tests.service.harness import (
    SAMPLE_SCANS,
    SEGMENTATION_ID,
    SEGMENTATION_MODEL,
    ServiceProcess,
    assert_innereye_error,
    files_of_job,
    start_job,
    wait_for_result,
    zip_folders,
    zip_members,
)
from tests.writers.helpers import dciodvfy_errors
from tests.writers.test_rtstruct import oracle_masks

SERIES = SAMPLE_SCANS / "phantom_one_axial"
STRUCTURES = ["liver", "kidney_left", "kidney_right", "spine"]


@dataclass(frozen=True)
class FinishedJob:
    run_id: str
    first_poll: int
    innereye: bytes
    everything: bytes
    reference: Path
    """`run` on the same series."""


@pytest.fixture(scope="module")
def finished_job(service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory) -> FinishedJob:
    with service.client() as client:
        series = zipfile.ZipFile(io.BytesIO(zip_folders([(SERIES, "ct/")])))  # one folder per channel
        members = [(name, series.read(name)) for name in series.namelist()]
        members += [("ct/README.txt", b"from the gateway"), ("DICOMDIR.bak", b"\x00" * 10)]  # not DICOM
        run_id = start_job(client, SEGMENTATION_ID, zip_members(members))
        first_poll = client.get(f"/v1/model/results/{run_id}").status_code
        innereye = wait_for_result(client, run_id)
        assert innereye.status_code == 200, innereye.text
        everything = client.get(f"/v1/model/results/{run_id}", params={"format": "all"})
        assert everything.status_code == 200, everything.text
    reference = tmp_path_factory.mktemp("reference") / "out"
    report = run_batch(RunOptions(model=SEGMENTATION_MODEL, input=SERIES, output=reference, workers=0))
    assert report.exit_code == 0
    return FinishedJob(run_id, first_poll, innereye.content, everything.content, reference)


def test_health_needs_no_secret_and_ping_answers_as_innereye(service: ServiceProcess) -> None:
    with service.client(secret=None) as anonymous:
        assert anonymous.get("/").status_code == 200
        assert_innereye_error(anonymous.get("/v1/ping"), 401)
    with service.client(secret="forbidden") as wrong:
        assert_innereye_error(wrong.get("/v1/ping"), 403)
    with service.client() as client:
        response = client.get("/v1/ping")
        assert response.status_code == 200 and response.content == b""
        assert response.headers["content-type"] == "text/html; charset=utf-8"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"/v1/model/start/{SEGMENTATION_ID}"),
        ("GET", "/v1/model/results/0123456789abcdef0123456789abcdef"),
        ("GET", "/v1/model/status/0123456789abcdef0123456789abcdef"),
        ("GET", "/v1/models"),
        ("POST", f"/v1/model/predict/{SEGMENTATION_ID}"),
        ("GET", "/metrics"),
        ("GET", "/no/such/path"),
    ],
)
def test_every_endpoint_but_health_answers_401_without_and_403_with_a_wrong_secret(
    service: ServiceProcess, method: str, path: str
) -> None:
    with service.client(secret=None) as anonymous:
        body = assert_innereye_error(anonymous.request(method, path, content=b"PK"), 401)
        assert body["title"] == "NoAuthenticationInformation" and "API_AUTH_SECRET" in body["detail"]
        assert body["reason"] == "the API_AUTH_SECRET header is missing"  # as every error body has one
    with service.client(secret=SECRET_WRONG) as wrong:
        body = assert_innereye_error(wrong.request(method, path, content=b"PK"), 403)
        assert body["title"] == "AuthenticationFailed"
        assert body["reason"] == "the API_AUTH_SECRET header is not the service's secret"


SECRET_WRONG = "test-secret-0123456788"  # one character off: rejected all the same


def test_unknown_model_and_unknown_run_are_404_with_innereye_extra_details(service: ServiceProcess) -> None:
    with service.client() as client:
        body = assert_innereye_error(
            client.post("/v1/model/start/InvalidModel:1594", content=b"x"), 404, "InvalidModelId"
        )
        assert body["code"] == "NOT_FOUND" and body["title"] == "ResourceNotFound"
        for run_id in ("invalid_run_id", "0123456789abcdef0123456789abcdef", "jobs.sqlite3"):
            assert_innereye_error(client.get(f"/v1/model/results/{run_id}"), 404, "InvalidRunId")
            assert_innereye_error(client.get(f"/v1/model/status/{run_id}"), 404, "InvalidRunId")
        assert_innereye_error(client.get("/v1/no/such/path"), 404)
        wrong_method = client.delete(f"/v1/model/start/{SEGMENTATION_ID}")
        assert assert_innereye_error(wrong_method, 405)["code"] == "METHOD_NOT_ALLOWED"
        assert wrong_method.headers["allow"] == "POST"
        assert_innereye_error(client.get(f"/v1/model/results/{'0' * 32}?format=nifti"), 400)


def test_result_is_202_while_running_then_one_rtstruct_named_segmentation_dcm(
    finished_job: FinishedJob, tmp_path: Path
) -> None:
    assert finished_job.first_poll == 202  # the job takes seconds; the poll came at once
    with zipfile.ZipFile(io.BytesIO(finished_job.innereye)) as archive:
        assert archive.namelist() == ["segmentation.dcm"]
        archive.extractall(tmp_path)
    path = tmp_path / "segmentation.dcm"
    rt = pydicom.dcmread(path)
    assert rt.Modality == "RTSTRUCT" and rt.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert rt.SoftwareVersions == SEGMENTATION_ID
    assert [int(r.ROINumber) for r in rt.StructureSetROISequence] == [1, 2, 3, 4]
    assert [str(r.ROIName) for r in rt.StructureSetROISequence] == STRUCTURES
    assert [o.RTROIInterpretedType for o in rt.RTROIObservationsSequence] == ["ORGAN"] * 4
    assert [int(c.ReferencedROINumber) for c in rt.ROIContourSequence] == [1, 2, 3, 4]
    assert all(len(c.ContourSequence) > 0 for c in rt.ROIContourSequence)
    assert dciodvfy_errors(path, "RTStructureSet") == []
    # the contours, placed by the uploaded images' own headers, fill back to the job's label map
    (series,) = scan_tree(SERIES).series
    referenced = {
        item.ReferencedSOPInstanceUID
        for item in rt.ReferencedFrameOfReferenceSequence[0]
        .RTReferencedStudySequence[0]
        .RTReferencedSeriesSequence[0]
        .ContourImageSequence
    }
    assert referenced == set(series.sop_instance_uids)
    with zipfile.ZipFile(io.BytesIO(finished_job.everything)) as archive:
        archive.extract(f"{series.key}/segmentation.nii.gz", tmp_path / "all")
    labels = labels_from_nifti(tmp_path / "all" / series.key / "segmentation.nii.gz")
    masks = oracle_masks(path, series)
    for number, name in enumerate(STRUCTURES, start=1):
        np.testing.assert_array_equal(masks[name], labels == number)


def test_format_all_holds_every_output_of_run_and_equals_run(finished_job: FinishedJob, tmp_path: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(finished_job.everything)) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path)
    reference = finished_job.reference
    expected = {p.relative_to(reference).as_posix() for p in reference.rglob("*") if p.is_file()}
    expected = {name for name in expected if not name.startswith(".innereye-batch.")}  # the run's lock files
    assert names == expected
    (key,) = [p.name for p in reference.iterdir() if p.is_dir()]
    np.testing.assert_array_equal(
        labels_from_nifti(tmp_path / key / "segmentation.nii.gz"),
        labels_from_nifti(reference / key / "segmentation.nii.gz"),
    )
    ours = json.loads((tmp_path / key / "predictions.json").read_text())
    theirs = json.loads((reference / key / "predictions.json").read_text())
    jsonschema.validate(ours, load_predictions_schema())
    assert ours["structures"] == theirs["structures"] and ours["model"] == theirs["model"]
    done, done_by_run = (json.loads((folder / key / "done.json").read_text()) for folder in (tmp_path, reference))
    # the same model and output options; the input fingerprints differ, as the service's copy of the files has
    # file times of its own (a copied tree counts as changed: the fingerprint trusts no copy)
    assert done["model_fingerprint"] == done_by_run["model_fingerprint"]
    assert done["input_fingerprint"] != done_by_run["input_fingerprint"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["status"] for s in summary["series"]] == ["ok"]


def test_status_reports_the_finished_job_and_the_upload_is_gone(
    service: ServiceProcess, finished_job: FinishedJob
) -> None:
    with service.client() as client:
        status = client.get(f"/v1/model/status/{finished_job.run_id}").json()
    assert status["state"] == "succeeded" and status["result"]["status"] == 200
    assert (status["items_total"], status["items_done"], status["attempts"]) == (1, 1, 1)
    (item,) = status["items"]
    assert item["status"] == "ok" and [s["name"] for s in item["structures"]] == STRUCTURES
    assert sorted(f["path"] for f in status["ignored_files"]) == ["DICOMDIR.bak", "ct/README.txt"]
    left = {p.relative_to(service.state_dir).parts[:3] for p in files_of_job(service.state_dir, finished_job.run_id)}
    assert left == {("jobs", finished_job.run_id), ("jobs", finished_job.run_id, "output")}  # no upload, no input


def test_several_series_give_every_output_but_no_single_innereye_result(service: ServiceProcess) -> None:
    body = zip_folders([(SAMPLE_SCANS / "phantom_two_rle", "a/"), (SAMPLE_SCANS / "phantom_two_j2k", "b/")])
    with service.client() as client:
        run_id = start_job(client, SEGMENTATION_ID, body)
        reason = assert_innereye_error(wait_for_result(client, run_id), 400)["reason"]
        assert "2 series" in reason and "format=all" in reason
        everything = client.get(f"/v1/model/results/{run_id}?format=all")
        status = client.get(f"/v1/model/status/{run_id}").json()
    assert everything.status_code == 200 and everything.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(everything.content)) as archive:
        assert sum(name.endswith("/rtstruct.dcm") for name in archive.namelist()) == 2
    assert status["state"] == "failed" and [i["status"] for i in status["items"]] == ["ok", "ok"]


def _failed_jobs_finished(client: Any) -> float:
    """innereye_batch_jobs_finished_total of the segmentation model's failed jobs, from /metrics."""
    prefix = f'innereye_batch_jobs_finished_total{{model_id="{SEGMENTATION_ID}",state="failed"}} '
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_random_bytes_are_accepted_then_answered_400_invalid_zip_file(service: ServiceProcess) -> None:
    rng = np.random.default_rng(0)
    with service.client() as client:
        before = _failed_jobs_finished(client)
        run_id = start_job(client, SEGMENTATION_ID, rng.integers(0, 256, 1024, dtype=np.uint8).tobytes())
        assert _failed_jobs_finished(client) == before + 1  # a refused upload is a failed job in the metrics too
        body = assert_innereye_error(wait_for_result(client, run_id), 400, "InvalidZipFile")
        assert "not a readable zip" in body["reason"]
        assert_innereye_error(client.get(f"/v1/model/results/{run_id}?format=all"), 400, "InvalidZipFile")
    assert files_of_job(service.state_dir, run_id) == []


def test_a_zip_without_dicom_is_400_and_lists_what_it_ignored(service: ServiceProcess) -> None:
    body = zip_members([("notes.txt", b"no images here"), ("scan.png", b"\x89PNG\r\n\x1a\n" + bytes(64))])
    with service.client() as client:
        run_id = start_job(client, SEGMENTATION_ID, body)
        reason = assert_innereye_error(wait_for_result(client, run_id), 400, "InvalidZipFile")["reason"]
        status = client.get(f"/v1/model/status/{run_id}").json()
        # every output only where the job succeeded (or held several series): a 200 zip of summaries came back
        assert_innereye_error(client.get(f"/v1/model/results/{run_id}?format=all"), 400, "InvalidZipFile")
    assert "no DICOM image" in reason and "notes.txt" in reason and str(service.state_dir) not in reason
    assert str(service.state_dir) not in json.dumps(status)  # paths are the upload's, never the service's
    assert sorted(f["path"] for f in status["ignored_files"]) == ["notes.txt", "scan.png"]


def test_models_lists_ids_tasks_and_structures(service: ServiceProcess) -> None:
    with service.client() as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["models"]}
    assert models[SEGMENTATION_ID]["task"] == "segmentation"
    assert [s["name"] for s in models[SEGMENTATION_ID]["structures"]] == STRUCTURES
    classifier = next(m for m in models.values() if m["task"] == "classification")
    assert classifier["classes"] == ["normal", "nodule"]


def test_metrics_count_requests_by_route_and_show_queues(service: ServiceProcess, finished_job: FinishedJob) -> None:
    with service.client() as client:
        client.get("/v1/ping")
        text = client.get("/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['innereye_batch_http_requests_total{method="GET",route="/v1/ping",status="200"}'] >= 1
    assert (
        samples['innereye_batch_http_requests_total{method="POST",route="/v1/model/start/{model_id}",status="201"}']
        >= 1
    )
    assert not [name for name in samples if finished_job.run_id in name]  # run ids are never labels
    assert samples['innereye_batch_queue_depth{queue="jobs"}'] >= 0
    assert samples['innereye_batch_jobs{state="succeeded"}'] >= 1
    assert samples['innereye_batch_jobs_finished_total{model_id="SamplePhantomAbdomen:1",state="succeeded"}'] >= 1
    assert samples['innereye_batch_device_call_duration_seconds_count{kind="job"}'] >= 1
    assert 'innereye_batch_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/ping"}' in samples


def test_no_series_the_model_takes_and_a_broken_series_are_400_with_the_reason(service: ServiceProcess) -> None:
    from tests.service.harness import CXR_SCANS

    broken = zipfile.ZipFile(io.BytesIO(zip_folders([(SERIES, "")])))
    without_a_slice = [(name, broken.read(name)) for name in broken.namelist() if name != "IM0020.dcm"]
    with service.client() as client:
        chest = start_job(client, SEGMENTATION_ID, zip_folders([(CXR_SCANS, "")]))
        gap = start_job(client, SEGMENTATION_ID, zip_members(without_a_slice))
        chest_reason = assert_innereye_error(wait_for_result(client, chest), 400)["reason"]
        gap_body = assert_innereye_error(wait_for_result(client, gap), 400)
        gap_items = client.get(f"/v1/model/status/{gap}").json()["items"]
    assert (
        "no series in the upload that the model takes" in chest_reason
        and "does not match the model's channel 'ct'" in chest_reason
    )
    assert "missing" in gap_body["reason"] and gap_body["title"] == "InvalidInput"
    assert [item["status"] for item in gap_items] == ["failed"]


def test_an_accepted_job_keeps_the_fingerprint_its_run_records(
    service: ServiceProcess, finished_job: FinishedJob
) -> None:
    """The fingerprint of the model that accepted the job is committed with it (a restart on another model under
    the same id cancels the job, test_jobs)."""
    import sqlite3

    database = sqlite3.connect(f"file:{service.state_dir / 'jobs.sqlite3'}?mode=ro", uri=True)
    try:
        (kept,) = database.execute("SELECT results_fp FROM jobs WHERE id = ?", (finished_job.run_id,)).fetchone()
    finally:
        database.close()
    summary = json.loads(zipfile.ZipFile(io.BytesIO(finished_job.everything)).read("summary.json"))
    assert kept == summary["run"]["results_fingerprint"]


def test_a_classification_job_with_a_failed_image_counts_it_at_the_top_of_its_status(service: ServiceProcess) -> None:
    """One good image and one broken one answer 200 (InnerEye's code, unchanged) and ``succeeded``: the failure was
    only inside the items list."""
    from tests.service.harness import CLASSIFICATION_ID, CXR_SCANS

    good, other = sorted(CXR_SCANS.glob("*.dcm"))[:2]
    broken = pydicom.dcmread(other)
    broken.BitsStored = 40  # no pixel of it can be read
    buffer = io.BytesIO()
    broken.save_as(buffer)
    with service.client() as client:
        run_id = start_job(
            client, CLASSIFICATION_ID, zip_members([("good.dcm", good.read_bytes()), ("broken.dcm", buffer.getvalue())])
        )
        assert wait_for_result(client, run_id).status_code == 200
        status = client.get(f"/v1/model/status/{run_id}").json()
    assert status["state"] == "succeeded" and status["result"]["status"] == 200
    assert sorted(item["status"] for item in status["items"]) == ["failed", "ok"]
    assert (status["items_total"], status["items_done"], status["items_failed"]) == (2, 2, 1)
