"""The real service in a subprocess (`python -m innereye_batch serve` on a free loopback port) and httpx clients.

``ServiceProcess`` starts it, waits until ``GET /`` answers (models are loaded before the port opens), and stops
it by SIGTERM, or SIGKILL for the crash tests. Helpers zip folders the way clients do and poll for results.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
SEGMENTATION_MODEL = REPO / "sample_data" / "final_model"
CLASSIFICATION_MODEL = REPO / "sample_data" / "cxr_model"
SAMPLE_SCANS = REPO / "sample_data" / "scans"
CXR_SCANS = REPO / "sample_data" / "cxr_scans"
SEGMENTATION_ID = "SamplePhantomAbdomen:1"
CLASSIFICATION_ID = "ChestXray:7"
SECRET = "test-secret-0123456789"
HEADER = "API_AUTH_SECRET"
STARTUP_TIMEOUT_S = 180.0
JOB_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServiceProcess:
    """`innereye-batch serve` in its own process group, with its log in ``state_dir/../serve-<port>.log``."""

    def __init__(self, state_dir: Path, extra_args: Sequence[str] = (), models: Sequence[str] | None = None) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = state_dir.parent / f"serve-{self.port}.log"
        models = models or [f"{SEGMENTATION_ID}={SEGMENTATION_MODEL}", f"{CLASSIFICATION_ID}={CLASSIFICATION_MODEL}"]
        args = [sys.executable, "-m", "innereye_batch", "serve", "--port", str(self.port)]
        args += ["--state-dir", str(state_dir), "--device", "cpu", *[a for m in models for a in ("--model", m)]]
        args += list(extra_args)
        env = {**os.environ, "INNEREYE_BATCH_API_SECRET": SECRET}
        state_dir.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.base_url + "/", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the service did not start in {STARTUP_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, secret: str | None = SECRET, timeout: float = 120.0) -> httpx.Client:
        headers = {HEADER: secret} if secret is not None else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as the kernel's OOM killer or a power cut would end it."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def zip_folders(folders: Iterable[tuple[Path, str]]) -> bytes:
    """A zip of each folder's files under the given prefix ("" for flat, "ct/" for InnerEye's channel folders)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for folder, prefix in folders:
            for path in sorted(folder.iterdir()):
                if path.is_file():
                    archive.write(path, prefix + path.name)
    return buffer.getvalue()


def zip_members(members: Iterable[tuple[str | zipfile.ZipInfo, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def start_job(client: httpx.Client, model_id: str, body: bytes) -> str:
    response = client.post(f"/v1/model/start/{model_id}", content=body)
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "text/plain"
    return response.text


def wait_for_result(client: httpx.Client, run_id: str, query: str = "") -> httpx.Response:
    """Poll ``/v1/model/results/<run_id>`` until it answers anything but 202 (each 202 checked on the way)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        response = client.get(f"/v1/model/results/{run_id}{query}")
        if response.status_code != 202:
            return response
        assert response.content == b"" and response.headers["content-type"] == "text/html; charset=utf-8"
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish in {JOB_TIMEOUT_S} s")


def assert_innereye_error(response: httpx.Response, status: int, extra_details: str | None = None) -> dict:
    """InnerEye's error body: code, detail, status, title (and extra_details only where InnerEye gives one)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == status
    assert body["code"] and body["detail"] and body["title"]
    if extra_details is None:
        assert "extra_details" not in body
    else:
        assert body["extra_details"] == extra_details
    return body


def files_of_job(state_dir: Path, run_id: str) -> list[Path]:
    """Every file of the state dir that belongs to ``run_id`` (its upload, its folder)."""
    return [p for p in state_dir.rglob("*") if run_id in p.as_posix()]
