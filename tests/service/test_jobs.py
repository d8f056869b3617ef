"""The job store, the worker's bookkeeping and the app's answers about jobs, in-process (no model needed): order,
recovery after a crash, cancellation, expiry of results."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from innereye_batch.service.app import Service, build_service, create_app
from innereye_batch.service.options import ModelSource, ServeOptions
from innereye_batch.service.store import JobStore
from tests.service.harness import HEADER, SECRET, assert_innereye_error, zip_members

ID_A, ID_B, ID_C = ("a" * 32, "b" * 32, "c" * 32)


def _options(state: Path, **overrides: object) -> ServeOptions:
    return ServeOptions(models=(ModelSource(Path("unused")),), state_dir=state, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def app_without_models(tmp_path: Path) -> Iterator[tuple[Service, TestClient]]:
    service = build_service(_options(tmp_path / "state", keep_results_hours=1e-6, max_attempts=2), {}, SECRET)
    with TestClient(create_app(service), headers={HEADER: SECRET}) as client:
        yield service, client


def _wait_for_state(store: JobStore, job_id: str, state: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job is not None and job.state == state:
            return
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {state}: {store.get(job_id)}")


def test_jobs_are_claimed_first_come_first_served_and_interrupted_ones_requeued(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    for job_id in (ID_A, ID_B, ID_C):
        store.add(job_id, "m:1")
    first = store.claim_next()
    assert first is not None and (first.id, first.state, first.attempts) == (ID_A, "running", 1)
    job_c = store.get(ID_C)
    assert job_c is not None and store.position(job_c) == 2  # the running job and B are ahead
    assert store.requeue_interrupted() == [ID_A]
    again = store.claim_next()
    assert again is not None and (again.id, again.attempts) == (ID_A, 2)
    store.finish(ID_A, "succeeded", http_status=200, report={"items": []})
    assert store.counts() == {"queued": 2, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 0, "expired": 0}
    assert store.expire(time.time() - 3600) == [] and store.expire(time.time() + 1) == [ID_A]
    with pytest.raises(ValueError):
        store.finish(ID_B, "running", http_status=200)
    store.close()
    reopened = JobStore(tmp_path)  # committed state survives the process
    job_a = reopened.get(ID_A)
    assert job_a is not None and job_a.state == "expired" and job_a.report == {"items": []}


def test_recovery_keeps_only_what_live_jobs_own(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = JobStore(state)
    store.add(ID_B, "m:1")
    store.claim_next()  # B running when the service died: queued again, its partial folder removed
    store.add(ID_A, "m:1")  # queued: its upload stays
    store.add(ID_C, "m:1", refused="not a zip")
    for name in (f"uploads/{ID_A}.zip", f"uploads/{ID_B}.zip", f"uploads/.tmp-{'d' * 32}.zip", "uploads/stray.zip"):
        (state / name).parent.mkdir(parents=True, exist_ok=True)
        (state / name).write_bytes(b"PK")
    for name in (f"jobs/{ID_B}/input/x.dcm", f"jobs/{'e' * 32}/output/x.nii.gz", "predict/f/image.dcm"):
        (state / name).parent.mkdir(parents=True, exist_ok=True)
        (state / name).write_bytes(b"x")
    service = build_service(_options(state), {}, SECRET)
    assert service.runner.recover() == [ID_B]
    left = sorted(p.relative_to(state).as_posix() for p in state.rglob("*") if p.is_file() and "sqlite" not in p.name)
    assert left == [f"uploads/{ID_A}.zip", f"uploads/{ID_B}.zip"]
    job_b = service.store.get(ID_B)
    assert job_b is not None and job_b.state == "queued"
    service.store.close()
    service.device_queue.close()


def test_a_job_whose_model_is_gone_is_cancelled_as_innereye_says(
    app_without_models: tuple[Service, TestClient],
) -> None:
    service, client = app_without_models
    upload = service.runner.upload_path(ID_A)
    upload.write_bytes(zip_members([("a.dcm", b"x")]))
    service.store.add(ID_A, "Retired:3")
    service.runner.wake()
    _wait_for_state(service.store, ID_A, "cancelled")
    body = assert_innereye_error(client.get(f"/v1/model/results/{ID_A}"), 500, "RunCancelled")
    assert "not served" in body["reason"] and body["title"] == "InternalError"
    assert not upload.exists()


def test_results_expire_after_keep_results(app_without_models: tuple[Service, TestClient]) -> None:
    service, client = app_without_models
    service.runner.stop()  # the janitor would race this test; expire_now is what it calls
    service.store.add(ID_B, "m:1")
    output = service.runner.output_dir(ID_B)
    output.mkdir(parents=True)
    (output / "summary.json").write_text("{}")
    service.store.finish(ID_B, "succeeded", http_status=200)
    time.sleep(0.01)  # --keep-results of 1e-6 hours: 3.6 ms
    assert service.runner.expire_now() == [ID_B]
    assert not service.runner.job_dir(ID_B).exists()
    body = assert_innereye_error(client.get(f"/v1/model/results/{ID_B}"), 404, "InvalidRunId")
    assert "expired" in body["reason"]
    assert client.get(f"/v1/model/status/{ID_B}").json()["state"] == "expired"


def test_a_job_interrupted_too_often_is_cancelled(app_without_models: tuple[Service, TestClient]) -> None:
    service, client = app_without_models
    service.runner.stop()  # claim by hand, as the worker would after each crash
    service.runner.upload_path(ID_C).write_bytes(b"PK")
    service.store.add(ID_C, "m:1")
    for _ in range(2):  # --max-attempts 2 here: two crashes, then a third claim
        service.store.claim_next()
        service.store.requeue_interrupted()
    claimed = service.store.claim_next()
    assert claimed is not None and claimed.attempts == 3
    service.runner.run_job(claimed)
    body = assert_innereye_error(client.get(f"/v1/model/results/{ID_C}"), 500, "RunCancelled")
    assert "stopped 2 times" in body["reason"]


def test_the_janitor_deletes_expired_results_by_itself(app_without_models: tuple[Service, TestClient]) -> None:
    service, _ = app_without_models
    service.store.add(ID_A, "m:1")
    output = service.runner.output_dir(ID_A)
    output.mkdir(parents=True)
    service.store.finish(ID_A, "succeeded", http_status=200)
    _wait_for_state(service.store, ID_A, "expired")
    deadline = time.monotonic() + 30
    while service.runner.job_dir(ID_A).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not service.runner.job_dir(ID_A).exists()


@pytest.fixture
def app_keeping_results(tmp_path: Path) -> Iterator[tuple[Service, TestClient]]:
    """As ``app_without_models``, with results kept an hour: a job's end stays readable (the janitor of the other
    expires it within milliseconds, sometimes before a test polls it)."""
    service = build_service(_options(tmp_path / "state", keep_results_hours=1.0, max_attempts=2), {}, SECRET)
    with TestClient(create_app(service), headers={HEADER: SECRET}) as client:
        yield service, client


def test_a_store_that_fails_neither_kills_the_worker_nor_loses_the_end(
    app_keeping_results: tuple[Service, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk makes SQLite refuse to record a job's end: the worker retries until it can (the extracted
    input already deleted, to free the disk), and goes on with the next job."""
    service, _ = app_keeping_results
    monkeypatch.setattr("innereye_batch.service.jobs._RETRY_SECONDS", 0.05)
    finish = service.store.finish
    failures = {"left": 3}

    def full_disk(*args: object, **kwargs: object) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        finish(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(service.store, "finish", full_disk)
    for job_id in (ID_A, ID_B):
        service.runner.upload_path(job_id).write_bytes(zip_members([("a.dcm", b"x")]))
        service.store.add(job_id, "Retired:3")
    service.runner.wake()
    for job_id in (ID_A, ID_B):
        _wait_for_state(service.store, job_id, "cancelled")
        assert not service.runner.upload_path(job_id).exists()
    assert failures["left"] == 0


def test_results_of_a_job_that_expires_while_zipped_are_404_never_a_partial_zip(
    app_without_models: tuple[Service, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, client = app_without_models
    service.runner.stop()
    service.store.add(ID_B, "m:1")
    output = service.runner.output_dir(ID_B)
    (output / "s1").mkdir(parents=True)
    (output / "s1" / "predictions.json").write_text("{}")
    service.store.finish(ID_B, "succeeded", http_status=200)
    from innereye_batch.service import packaging

    zip_all = packaging.all_outputs_zip

    def expiring(folder: Path) -> bytes:  # the janitor runs while the zip is made: marks it, deletes it
        service.store.expire(time.time() + 1)
        shutil.rmtree(service.runner.job_dir(ID_B))
        return zip_all(folder)

    monkeypatch.setattr(packaging, "all_outputs_zip", expiring)
    for query in ("", "?format=all"):
        assert_innereye_error(client.get(f"/v1/model/results/{ID_B}{query}"), 404, "InvalidRunId")


def test_an_unreadable_job_database_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    """A corrupt jobs.sqlite3 ended start-up with sqlite3's traceback (after the models had loaded)."""
    from innereye_batch.errors import UsageError

    (tmp_path / "jobs.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(UsageError, match=r"jobs\.sqlite3 cannot be read"):
        JobStore(tmp_path)


def test_a_failed_series_reason_names_its_key_once() -> None:
    from innereye_batch.dicom.scan import ScanResult
    from innereye_batch.results import ItemResult
    from innereye_batch.service.jobs import innereye_outcome

    key = "1.2.3.4"
    failed = ItemResult(key, key, "1.2", "CT", "failed", reason=f"{key}: no_readable_images: none can be read")
    scan = ScanResult(series=(object(),), skipped=())  # type: ignore[arg-type]  # only its truth is read
    outcome = innereye_outcome("segmentation", [failed], scan, ())
    assert outcome.reason == f"{key}: no_readable_images: none can be read"


_FIRST_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, model_id TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL, started REAL,
    finished REAL, attempts INTEGER NOT NULL DEFAULT 0, stage TEXT NOT NULL DEFAULT '',
    items_total INTEGER NOT NULL DEFAULT 0, items_done INTEGER NOT NULL DEFAULT 0, http_status INTEGER,
    extra_details TEXT, reason TEXT NOT NULL DEFAULT '', report TEXT
);
CREATE INDEX jobs_by_state ON jobs (state, created);
"""
"""The store's schema before jobs kept the fingerprint of the model that accepted them."""


@pytest.fixture
def app_with_a_model(tmp_path: Path) -> Iterator[tuple[Service, TestClient]]:
    """As ``app_keeping_results``, serving a stand-in for model ``m:1`` (only its results fingerprint is read
    before the upload is extracted)."""
    from types import SimpleNamespace

    model = SimpleNamespace(model_id="m:1", results_fp="b" * 64, device=None)
    service = build_service(_options(tmp_path / "state", keep_results_hours=1.0), {"m:1": model}, SECRET)  # type: ignore[dict-item]
    with TestClient(create_app(service), headers={HEADER: SECRET}) as client:
        yield service, client


def test_a_job_accepted_for_another_model_under_the_same_id_is_cancelled(
    app_with_a_model: tuple[Service, TestClient],
) -> None:
    """A model folder replaced by a retrained one, the service restarted: the jobs accepted before ran silently on
    the new model, which serves under the same id (``<model_name>:1``)."""
    service, client = app_with_a_model
    upload = service.runner.upload_path(ID_A)
    upload.write_bytes(zip_members([("a.dcm", b"x")]))
    service.store.add(ID_A, "m:1", results_fp="a" * 64)
    service.runner.wake()
    _wait_for_state(service.store, ID_A, "cancelled")
    body = assert_innereye_error(client.get(f"/v1/model/results/{ID_A}"), 500, "RunCancelled")
    assert "changed since the job was accepted" in body["reason"]
    assert "a" * 16 in body["reason"] and "b" * 16 in body["reason"] and "a" * 17 not in body["reason"]
    assert not upload.exists()


def test_a_database_of_an_earlier_version_gains_the_fingerprint_and_its_jobs_run_as_before(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    old = sqlite3.connect(state / "jobs.sqlite3")
    old.executescript(_FIRST_SCHEMA)
    old.execute(
        "INSERT INTO jobs (id, model_id, state, created, stage) VALUES (?, 'm:1', 'queued', 1.0, 'queued')", (ID_A,)
    )
    old.commit()
    old.close()
    store = JobStore(state)
    job_a = store.get(ID_A)
    assert job_a is not None and job_a.state == "queued" and job_a.results_fp is None
    store.add(ID_B, "m:1", results_fp="b" * 64)
    job_b = store.get(ID_B)
    assert job_b is not None and job_b.results_fp == "b" * 64
    store.close()
    JobStore(state).close()  # opened again: the column is there already

    from types import SimpleNamespace

    model = SimpleNamespace(model_id="m:1", results_fp="b" * 64, device=None)
    service = build_service(_options(state, keep_results_hours=1.0), {"m:1": model}, SECRET)  # type: ignore[dict-item]
    service.runner.upload_path(ID_A).parent.mkdir(parents=True, exist_ok=True)
    service.runner.upload_path(ID_A).write_bytes(b"not a zip")
    claimed = service.store.claim_next()
    assert claimed is not None and claimed.id == ID_A
    service.runner.run_job(claimed)  # no fingerprint: not cancelled, it runs (and its upload is refused)
    job_a = service.store.get(ID_A)
    assert job_a is not None and (job_a.state, job_a.extra_details) == ("failed", "InvalidZipFile")
    service.store.close()
    service.device_queue.close()
