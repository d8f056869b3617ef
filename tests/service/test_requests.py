"""How the app answers requests around its routes, in-process (no model loaded: a stand-in for the served one):
metrics labels a client cannot choose, HEAD for health checks, a client that disconnects mid-upload, and uploads
refused with 503 while the queue or the disk is full."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from innereye_batch.service import app as app_module
from innereye_batch.service.app import DISK_MARGIN_BYTES, Service, build_service, create_app
from innereye_batch.service.options import ModelSource, ServeOptions
from tests.service.harness import HEADER, SECRET, assert_innereye_error, zip_members

SEGMENTATION = "Seg:1"
CLASSIFICATION = "Cls:1"


def _stand_in(model_id: str, task: str) -> Any:
    """What the routes read of a served model before its body is read (no job runs here)."""
    return SimpleNamespace(
        model_id=model_id, task=task, results_fp="f" * 64, device=None, predictor=lambda methods=(): None
    )


def _service(state_dir: Path, **overrides: Any) -> Service:
    options = ServeOptions(models=(ModelSource(Path("unused")),), state_dir=state_dir, **overrides)
    models = {SEGMENTATION: _stand_in(SEGMENTATION, "segmentation"), CLASSIFICATION: _stand_in(CLASSIFICATION, "c")}
    models[CLASSIFICATION].task = "classification"
    return build_service(options, models, SECRET)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Service, TestClient]]:
    """The app with a segmentation and a classification stand-in, at most 2 queued jobs, its worker stopped (the
    jobs a test queues stay queued)."""
    service = _service(tmp_path / "state", max_queued_jobs=2)
    with TestClient(create_app(service), headers={HEADER: SECRET}) as client:
        service.runner.stop()
        yield service, client


def _samples(service: Service) -> dict[str, float]:
    text, _ = service.metrics.render()
    samples = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_methods_a_client_makes_up_are_one_label_other(served: tuple[Service, TestClient]) -> None:
    """Each made-up method was a label set of its own, kept forever: 2,000 requests without the secret made
    /metrics 4.4 MB of client-chosen text."""
    service, client = served
    for i in range(20):
        assert client.request(f"X{i:05d}PATIENTDOE", "/v1/ping", headers={HEADER: "wrong"}).status_code == 403
    assert client.request("PATIENTDOE", "/v1/ping").status_code == 405
    samples = _samples(service)
    assert not [name for name in samples if "PATIENTDOE" in name]
    assert samples['innereye_batch_http_requests_total{method="other",route="unmatched",status="403"}'] == 20
    assert samples['innereye_batch_http_requests_total{method="other",route="/v1/ping",status="405"}'] == 1


def test_head_on_health_and_ping_answers_as_get(served: tuple[Service, TestClient]) -> None:
    """Load balancers check health with HEAD: it was 405."""
    service, client = served
    for path in ("/", "/v1/ping"):
        response = client.head(path)
        assert response.status_code == 200 and response.content == b""
    assert client.head("/v1/ping", headers={HEADER: "wrong"}).status_code == 403  # still needs the secret
    assert _samples(service)['innereye_batch_http_requests_total{method="HEAD",route="/v1/ping",status="200"}'] == 1


def _post_then_disconnect(app: FastAPI, path: str) -> list[dict[str, Any]]:
    """POST part of a body straight to the ASGI app, then the client's disconnect (as uvicorn tells it)."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"PK\x03\x04" + b"x" * 5000, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # a disconnected client sends nothing more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"host", b"x"), (HEADER.lower().encode(), SECRET.encode()), (b"content-length", b"100000")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 5000),
    }
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    return sent


def test_a_client_that_disconnects_mid_upload_is_499_and_leaves_no_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It was logged as an unhandled error with a traceback and counted as a 500."""
    service = _service(tmp_path / "state")
    service.runner.recover()  # the state dir's folders, as at start-up (no worker: nothing runs)
    app = create_app(service)
    with caplog.at_level(logging.INFO, logger="innereye_batch.service"):
        for path in (f"/v1/model/start/{SEGMENTATION}", f"/v1/model/predict/{CLASSIFICATION}"):
            _post_then_disconnect(app, path)
    samples = _samples(service)
    service.store.close()
    service.device_queue.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    said = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(said) == 2 and {r.levelno for r in said} == {logging.INFO}
    assert not [name for name in samples if 'status="500"' in name]
    for route in ("/v1/model/start/{model_id}", "/v1/model/predict/{model_id}"):
        assert samples[f'innereye_batch_http_requests_total{{method="POST",route="{route}",status="499"}}'] == 1
    state = service.options.state_dir
    assert _files(state / "uploads") == [] and _files(state / "predict") == []


def test_an_upload_is_refused_503_while_the_queue_is_full(served: tuple[Service, TestClient]) -> None:
    """150 uploads of 8 MiB were all accepted and kept (1.3 GB): now at most --max-queued-jobs wait."""
    service, client = served
    uploads = service.options.state_dir / "uploads"
    for job_id in ("a" * 32, "b" * 32):
        service.store.add(job_id, SEGMENTATION)
    body = assert_innereye_error(client.post(f"/v1/model/start/{SEGMENTATION}", content=b"PK" * 1000), 503)
    assert "--max-queued-jobs" in body["reason"] and body["title"] == "ServerBusy"
    response = client.post(f"/v1/model/start/{SEGMENTATION}", content=b"PK")
    assert int(response.headers["retry-after"]) > 0
    assert _files(uploads) == []  # the body was never saved
    assert service.store.counts()["queued"] == 2
    service.store.finish("a" * 32, "succeeded", http_status=200)
    service.receiving = 1  # an upload being received counts as queued: concurrent uploads never overshoot
    assert_innereye_error(client.post(f"/v1/model/start/{SEGMENTATION}", content=b"PK"), 503)
    service.receiving = 0
    accepted = client.post(f"/v1/model/start/{SEGMENTATION}", content=zip_members([("a.dcm", b"x")]))
    assert accepted.status_code == 201, accepted.text
    assert service.store.counts()["queued"] == 2 and service.receiving == 0


def test_an_upload_is_refused_503_when_the_disk_lacks_room_for_it(
    served: tuple[Service, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, client = served
    monkeypatch.setattr(app_module, "_free_bytes", lambda folder: DISK_MARGIN_BYTES + 1000)
    content = b"PK" + os.urandom(5000)  # over the free space less the margin
    for path in (f"/v1/model/start/{SEGMENTATION}", f"/v1/model/predict/{CLASSIFICATION}"):
        response = client.post(path, content=content)
        body = assert_innereye_error(response, 503)
        assert "disk" in body["reason"] and int(response.headers["retry-after"]) > 0
    assert _files(service.options.state_dir / "uploads") == [] and service.store.counts()["queued"] == 0
    small = client.post(f"/v1/model/start/{SEGMENTATION}", content=zip_members([("a.dcm", b"x")]))
    assert small.status_code == 201, small.text  # a body that fits is taken
