"""The FastAPI app: InnerEye's inference API (same paths, codes and bodies) and ours beside it.

InnerEye's: ``GET /`` (health, no auth), ``GET /v1/ping`` (both answer ``HEAD`` too, for load balancers),
``POST /v1/model/start/{model_id}`` (a zip of DICOM files -> 201 and the run id as text/plain),
``GET /v1/model/results/{run_id}`` (202 while queued or running, then 200 and a zip holding ``segmentation.dcm``, or
InnerEye's error body). Ours: ``?format=all`` (every output), ``GET /v1/model/status/{run_id}`` (JSON progress),
``GET /v1/models``, ``POST /v1/model/predict/{model_id}`` (one DICOM image -> its predictions.json, batched with
concurrent requests) and ``GET /metrics`` (Prometheus).
Every path but ``/`` needs the ``API_AUTH_SECRET`` header when the service has a secret. An upload is refused with
503 and ``Retry-After``, before its body is read, while ``--max-queued-jobs`` jobs wait or while the state dir's disk
lacks room for it.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from innereye_batch.files import TEMP_PREFIX, remove_tree, sync_folder
from innereye_batch.service import auth
from innereye_batch.service.batching import Batchers
from innereye_batch.service.device import DeviceQueue
from innereye_batch.service.jobs import JobRunner
from innereye_batch.service.metrics import ServiceMetrics
from innereye_batch.service.models import ServedModel
from innereye_batch.service.options import ServeOptions
from innereye_batch.service.responses import EMPTY_MEDIA_TYPE, ApiError, ExtraDetails, error_body
from innereye_batch.service.store import Job, JobStore
from innereye_batch.service.uploads import UploadRefused, check_zip, save_body

log = logging.getLogger("innereye_batch.service")
RUN_ID = re.compile(r"[0-9a-f]{32}")
CLIENT_CLOSED = 499
"""The status recorded (nginx's "client closed request") when the client disconnected before its answer."""
RETRY_AFTER_S = 60
"""What ``Retry-After`` says when an upload is refused for a full queue or a full disk."""
DISK_MARGIN_BYTES = 256 * 2**20
"""Free space the state dir keeps beyond an upload's declared length (the store, extraction, outputs)."""


@dataclass
class Service:
    """What the routes share: options, models, the store, the job runner, the device queue and batchers."""

    options: ServeOptions
    models: Mapping[str, ServedModel]
    secret: str | None
    store: JobStore
    runner: JobRunner
    device_queue: DeviceQueue
    batchers: Batchers
    metrics: ServiceMetrics
    receiving: int = 0
    """Uploads to /v1/model/start being received now (counted with the queued jobs against the limit)."""


def _empty(status: int) -> Response:
    return Response(b"", status_code=status, headers={"content-type": EMPTY_MEDIA_TYPE})


def _error(status: int, extra: ExtraDetails | None = None, reason: str = "") -> JSONResponse:
    return JSONResponse(error_body(status, extra, reason), status_code=status)


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


def build_service(options: ServeOptions, models: Mapping[str, ServedModel], secret: str | None) -> Service:
    """The service's parts (threads start with the app's lifespan, ``create_app``)."""
    first = next(iter(models.values()), None)
    store = JobStore(options.state_dir)
    device_queue = DeviceQueue()
    batchers = Batchers(device_queue, max_batch=options.max_batch, max_wait_s=options.max_wait_ms / 1000)
    metrics = ServiceMetrics(
        queue_depths=lambda: {
            "jobs": store.counts()["queued"],
            "predict": batchers.depth,
            "device": device_queue.depth,
        },
        job_counts=store.counts,
        device=first.device if first is not None else None,
    )
    device_queue.on_run = metrics.observe_device
    batchers.on_batch = metrics.batch_size.observe

    def finished(job: Job) -> None:
        metrics.jobs_finished.labels(job.model_id, job.state).inc()

    runner = JobRunner(store, models, device_queue, options, on_finished=finished)
    return Service(options, models, secret, store, runner, device_queue, batchers, metrics)


def create_app(service: Service) -> FastAPI:
    """The FastAPI app over ``service``; its lifespan recovers interrupted jobs and starts the worker."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        requeued = service.runner.recover()
        if requeued:
            log.info("%d interrupted job(s) queued again", len(requeued))
        service.runner.start()
        try:
            yield
        finally:
            stopped = service.runner.stop()
            service.batchers.close()
            service.device_queue.close()
            if stopped:  # a job still running keeps its store; it is queued again at the next start-up
                service.store.close()

    app = FastAPI(title="innereye-batch", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    _add_handlers(app, service)
    _add_innereye_routes(app, service)
    _add_our_routes(app, service)
    return app


def _add_handlers(app: FastAPI, service: Service) -> None:
    @app.middleware("http")
    async def authenticate_and_measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        refused = None if request.url.path == "/" else auth.check(request.headers.get(auth.HEADER), service.secret)
        if refused is not None:
            why = f"the {auth.HEADER} header is " + ("missing" if refused == 401 else "not the service's secret")
            response: Response = _error(refused, reason=why)
        else:
            try:
                response = await call_next(request)
            except ClientDisconnect:  # the client went away mid-body: nothing to answer, nothing went wrong here
                log.info("%s %s: the client disconnected before its answer", request.method, request.url.path)
                response = _empty(CLIENT_CLOSED)
            except Exception:  # never a traceback to the client
                log.exception("unhandled error on %s", request.url.path)
                response = _error(500)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        service.metrics.observe_request(request.method, template, response.status_code, time.perf_counter() - start)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        status = error.status_code if error.status_code in (400, 404, 405) else 500
        response = _error(status)
        if error.headers and "allow" in {k.lower() for k in error.headers}:  # 405 says which methods
            response.headers.update({k: v for k, v in error.headers.items() if k.lower() == "allow"})
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(400, reason="the request's parameters are not valid")


def _served(service: Service, model_id: str) -> ServedModel:
    served = service.models.get(model_id)
    if served is None:
        raise ApiError(404, ExtraDetails.INVALID_MODEL_ID, "no model of this id is served here (GET /v1/models)")
    return served


def _job(service: Service, run_id: str, *, expired_too: bool = False) -> Job:
    job = service.store.get(run_id) if RUN_ID.fullmatch(run_id) else None
    if job is None:
        raise ApiError(404, ExtraDetails.INVALID_RUN_ID, "no run of this id")
    if job.state == "expired" and not expired_too:
        raise ApiError(404, ExtraDetails.INVALID_RUN_ID, "the run's results have expired and were deleted")
    return job


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")  # latin-1 text: "²" is a digit to str.isdigit, not to int()
    return int(value) if value and value.isascii() and value.isdigit() else None


async def _receive_job(
    service: Service, served: ServedModel, request: Request, temporary: Path, job_id: str, declared: int | None
) -> None:
    """Save the body of a /v1/model/start, check it, and queue its job (or record it refused)."""
    limits = service.options.limits
    try:
        await save_body(request.stream(), temporary, limits.max_upload_bytes, declared)
    except UploadRefused as refused:
        raise ApiError(400, None, refused.reason) from None
    try:
        try:
            await run_in_threadpool(check_zip, temporary, limits)
        except UploadRefused as refused:
            # InnerEye answers a bad zip at the result: 201 now, then 400 InvalidZipFile; the upload is gone now
            temporary.unlink(missing_ok=True)
            await run_in_threadpool(service.store.add, job_id, served.model_id, refused=refused.reason)
            service.metrics.jobs_finished.labels(served.model_id, "failed").inc()  # as a job that ran and failed
            log.info("job %s (%s): upload refused", job_id, served.model_id)
        else:
            await run_in_threadpool(_accept, service, temporary, job_id, served)
            log.info("job %s (%s): queued", job_id, served.model_id)
    finally:
        temporary.unlink(missing_ok=True)  # whatever failed, never left to fill the disk (accepted: moved)


def _add_innereye_routes(app: FastAPI, service: Service) -> None:
    options = service.options
    uploads = options.state_dir / "uploads"

    @app.api_route("/", methods=["GET", "HEAD"])
    async def health() -> Response:
        return _empty(200)

    @app.api_route("/v1/ping", methods=["GET", "HEAD"])
    async def ping() -> Response:
        return _empty(200)

    @app.post("/v1/model/start/{model_id}")
    async def start(model_id: str, request: Request) -> Response:
        served = _served(service, model_id)
        declared = _declared_length(request)
        queued = service.store.counts()["queued"] + service.receiving
        if queued >= options.max_queued_jobs:
            raise _busy(f"{queued} jobs are waiting to run, the most this service queues (--max-queued-jobs)")
        _check_free_space(options.state_dir, declared)
        job_id = uuid.uuid4().hex
        temporary = uploads / f"{TEMP_PREFIX}{job_id}.zip"
        service.receiving += 1  # counted from now: concurrent uploads never overshoot the limit together
        try:
            await _receive_job(service, served, request, temporary, job_id, declared)
        finally:
            service.receiving -= 1
        return Response(job_id.encode("ascii"), status_code=201, headers={"content-type": "text/plain"})

    @app.get("/v1/model/results/{run_id}")
    async def results(run_id: str, wanted: Annotated[str | None, Query(alias="format")] = None) -> Response:
        from innereye_batch.service.jobs import serves_every_output
        from innereye_batch.service.packaging import all_outputs_zip, innereye_zip

        if wanted not in (None, "", "all"):
            raise ApiError(400, None, "format must be 'all' (every output) or absent (InnerEye's result)")
        job = _job(service, run_id)
        if job.state in ("queued", "running"):
            return _empty(202)
        output = service.runner.output_dir(job.id)
        extra = ExtraDetails(job.extra_details) if job.extra_details else None
        content: bytes | None = None
        try:
            if wanted == "all" and output.is_dir() and serves_every_output(job.http_status, job.reason or ""):
                content = await run_in_threadpool(all_outputs_zip, output)
            elif job.http_status != 200:
                raise ApiError(job.http_status or 500, extra, job.reason)
            elif any(output.glob("*/rtstruct.dcm")):
                content = await run_in_threadpool(innereye_zip, output, job.model_id)
            elif output.is_dir():  # a classification job: its result is every output
                content = await run_in_threadpool(all_outputs_zip, output)
        except FileNotFoundError:  # deleted while being read: the check below tells why
            content = None
        # the janitor marks a job expired before it deletes its outputs: expired now means the zip may lack files
        _job(service, run_id)
        if content is None:
            raise ApiError(500, None, "the run's outputs are missing")
        return Response(content, status_code=200, media_type="application/zip")


def _add_our_routes(app: FastAPI, service: Service) -> None:
    options = service.options

    @app.get("/v1/model/status/{run_id}")
    async def status(run_id: str) -> JSONResponse:
        job = _job(service, run_id, expired_too=True)
        return JSONResponse(_status_document(service, job))

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"models": [served.describe() for served in service.models.values()]})

    @app.get("/metrics")
    async def metrics() -> Response:
        text, media_type = service.metrics.render()
        return Response(text, media_type=media_type)

    @app.post("/v1/model/predict/{model_id}")
    async def predict(model_id: str, request: Request, explain: str | None = None) -> JSONResponse:
        from innereye_batch.service.predict import (
            FILE_NAME,
            explain_methods,
            explanation_png_base64,
            new_request_folder,
            predictions_document,
            prepare_image,
        )

        served = _served(service, model_id)
        if served.task != "classification":
            raise ApiError(400, None, f"{model_id} is a {served.task} model: post a zip to /v1/model/start instead")
        methods = explain_methods(explain)
        _check_free_space(options.state_dir, _declared_length(request))
        predictor = served.predictor(methods)
        predict_dir = options.state_dir / "predict"
        folder = new_request_folder(predict_dir)
        try:
            await save_body(
                request.stream(), folder / FILE_NAME, options.limits.max_upload_bytes, _declared_length(request)
            )
        except UploadRefused as refused:
            await run_in_threadpool(_remove, folder)
            raise ApiError(400, None, refused.reason) from None
        except BaseException:
            await run_in_threadpool(_remove, folder)
            raise
        prepared = await run_in_threadpool(prepare_image, folder, served, predictor, options.max_voxels)
        try:
            batched = await asyncio.wrap_future(
                service.batchers.for_predictor(predictor).submit(prepared.item, prepared.decoded)
            )
        except Exception as error:
            raise ApiError(500, None, f"inference: {type(error).__name__}: {error}") from None
        document = predictions_document(served, prepared, batched)
        if methods:
            scratch = predict_dir / uuid.uuid4().hex
            document["explanation_png"] = await run_in_threadpool(explanation_png_base64, served, batched, scratch)
        return JSONResponse(document)


def _status_document(service: Service, job: Job) -> dict[str, Any]:
    keep = service.options.keep_results_hours * 3600
    document: dict[str, Any] = {
        "run_id": job.id,
        "model_id": job.model_id,
        "state": job.state,
        "stage": job.stage,
        "attempts": job.attempts,
        "created": _iso(job.created),
        "started": _iso(job.started),
        "finished": _iso(job.finished),
        "expires": _iso(job.finished + keep) if job.finished is not None else None,
        "items_total": job.items_total,
        "items_done": job.items_done,
        "items_failed": 0,
    }
    if job.state == "queued":
        document["queue_position"] = service.store.position(job)
    if job.http_status is not None:
        document["result"] = {"status": job.http_status, "extra_details": job.extra_details, "reason": job.reason}
    if job.report is not None:
        document["items"] = job.report.get("items", [])
        document["items_failed"] = sum(1 for item in document["items"] if item.get("status") == "failed")
        document["ignored_files"] = job.report.get("ignored_files", [])
    return document


def _accept(service: Service, upload: Path, job_id: str, served: ServedModel) -> None:
    """The upload renamed into place (durably), then the job committed, with the fingerprint of the model that
    accepted it: only then does the client hear of it."""
    final = service.runner.upload_path(job_id)
    os.replace(upload, final)
    sync_folder(final.parent)
    service.store.add(job_id, served.model_id, results_fp=served.results_fp)
    service.runner.wake()


def _busy(reason: str) -> ApiError:
    return ApiError(503, None, f"{reason}; try again later", headers={"Retry-After": str(RETRY_AFTER_S)})


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _check_free_space(state_dir: Path, declared: int | None) -> None:
    """ApiError 503 when the state dir's disk lacks room for a body of ``declared`` bytes (0 when not declared)
    and ``DISK_MARGIN_BYTES`` more."""
    free = _free_bytes(state_dir)
    if free < (declared or 0) + DISK_MARGIN_BYTES:
        raise _busy(f"the service's disk has {free / 2**20:,.0f} MB free, too little to take this upload now")


def _remove(folder: Path) -> None:
    remove_tree(folder)
