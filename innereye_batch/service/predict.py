"""Real-time classification: one posted DICOM image -> its predictions.json document, as `run` would write it.

The image is stored under ``--state-dir/predict`` only while it is scanned and decoded, then deleted. It goes
through the same steps as in `run`: a header scan, ``plan_run`` (modality, fatal problems, voxel limit), the
model's decoder (the 16-bit PNG mapping), then the dynamic batcher runs it with others on the device. The answer
is the predictions.json document (``build_classification_predictions``, the same code as the ``json`` output);
with explanations, ``explanation_png`` adds the ``explanation.png`` montage, base64-encoded.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from innereye_batch import __version__
from innereye_batch.files import remove_tree
from innereye_batch.service.batching import Batched
from innereye_batch.service.device import finish
from innereye_batch.service.models import ServedModel
from innereye_batch.service.responses import ApiError
from innereye_batch.tasks.base import Decoded, Predictor, WorkItem
from innereye_batch.text import printable, relative_paths

FILE_NAME = "image.dcm"


@dataclass(frozen=True)
class PreparedImage:
    """A posted image, planned and decoded, ready for the device."""

    item: WorkItem
    decoded: Decoded
    load_seconds: float


def new_request_folder(predict_dir: Path) -> Path:
    """A fresh folder for one request's image."""
    folder = predict_dir / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder


def prepare_image(folder: Path, served: ServedModel, predictor: Predictor, max_voxels: int) -> PreparedImage:
    """Scan, plan and decode the one file in ``folder`` (then delete the folder); ApiError 400 with the reason
    when it is not one image the model takes."""
    from innereye_batch.pipeline.loader import decode_safely
    from innereye_batch.pipeline.plan import plan_run
    from innereye_batch.pipeline.sources import FolderSource

    try:
        scan = FolderSource(folder, workers=1).discover()
        planned, settled = plan_run(
            scan, served.package, (), folder / "out", model_fp=served.results_fp, max_voxels=max_voxels
        )
        if len(planned) > 1:
            raise ApiError(
                400,
                reason=f"the file holds {len(planned)} images (frames); this endpoint classifies one image per "
                "request: post multi-frame files to /v1/model/start",
            )
        if not planned:
            # a series' reason may start with its key already, and quote the skipped file's reason: each once
            reasons = [r.reason if r.reason.startswith(r.key) else f"{r.key}: {r.reason}" for r in settled]
            reasons += [f.reason for f in scan.skipped if not any(f.reason in known for known in reasons)]
            reasons = list(dict.fromkeys(reasons))
            raise ApiError(400, reason=relative_paths("; ".join(reasons) or "no image found in the body", folder))
        loaded = decode_safely(predictor.decoder, planned[0].item, 0)
        if loaded.decoded is None:
            raise ApiError(400, reason=relative_paths(f"the image cannot be decoded: {loaded.error}", folder))
        return PreparedImage(planned[0].item, loaded.decoded, loaded.load_seconds)
    finally:
        remove_tree(folder)


def predictions_document(served: ServedModel, prepared: PreparedImage, batched: Batched) -> dict[str, Any]:
    """The predictions.json document of one predicted image; ``timings_s`` adds ``queue`` (waiting for the
    batch) to ``load`` and the predictor's stages."""
    from innereye_batch.tasks.classification import ClassificationPrediction
    from innereye_batch.writers.predictions import build_classification_predictions

    prediction = finish(batched.prediction)
    if not isinstance(prediction, ClassificationPrediction):
        raise TypeError(f"a classification prediction was expected, got {type(prediction).__name__}")
    timings = {"load": prepared.load_seconds, "queue": batched.queued_seconds, **prediction.timings}
    return build_classification_predictions(
        package=served.package, prediction=prediction, timings=timings, tool_version=__version__
    )


def explanation_png_base64(served: ServedModel, batched: Batched, folder: Path) -> str:
    """The explanation.png montage of the prediction (each method's overlay), base64 text; drawn in ``folder``,
    which is deleted afterwards."""
    from innereye_batch.writers.explanations import write_explanation_png
    from innereye_batch.writers.registry import WriteContext

    folder.mkdir(parents=True, exist_ok=True)
    try:
        path = folder / "explanation.png"
        write_explanation_png(path, batched.prediction, WriteContext(served.package, __version__))  # type: ignore[arg-type]
        return base64.b64encode(path.read_bytes()).decode("ascii")
    finally:
        remove_tree(folder)


def explain_methods(query: str | None) -> tuple[str, ...]:
    """The methods of ``?explain=`` (comma-separated), checked; ApiError 400 for unknown ones or without captum."""
    if not query:
        return ()
    from innereye_batch.engine.explain import EXPLAIN_METHODS, captum_attr
    from innereye_batch.errors import UsageError

    methods = tuple(dict.fromkeys(m.strip() for m in query.split(",") if m.strip()))
    unknown = [m for m in methods if m not in EXPLAIN_METHODS]
    if unknown:
        raise ApiError(
            400,
            reason=f"unknown explanation method(s) {printable(', '.join(unknown))}: use {', '.join(EXPLAIN_METHODS)}",
        )
    try:
        captum_attr()
    except UsageError as error:
        raise ApiError(400, reason=str(error)) from None
    return methods
