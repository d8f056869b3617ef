"""Build and write predictions.json: what ran on which series and what it found (no patient identity)."""

from __future__ import annotations

import datetime
import importlib.resources
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.files import write_json
from innereye_batch.model.spec import CheckpointRef, ModelPackage
from innereye_batch.results import StructureStats
from innereye_batch.tasks.classification import ClassificationPrediction
from innereye_batch.tasks.segmentation import SegmentationPrediction
from innereye_batch.text import printable
from innereye_batch.writers.registry import OutputFormat, WriteContext

SCHEMA_VERSION = "1.3"
"""1.1: ``inference`` (the device and the precision the networks ran in) added. 1.3: ``input.axis_codes`` and
``inference.reoriented`` (segmentation)."""
SCHEMA_RESOURCE = "predictions.schema.json"
CLASSIFICATION_SCHEMA_RESOURCE = "predictions.classification.schema.json"
TOOL_NAME = "innereye-batch"


def checkpoint_relative_path(package: ModelPackage, checkpoint: CheckpointRef) -> str:
    """The checkpoint's path relative to the model folder (POSIX), or as given when it lies elsewhere."""
    path = Path(checkpoint.path)
    try:
        return path.relative_to(package.folder).as_posix()
    except ValueError:
        return path.as_posix()


def model_record(package: ModelPackage) -> dict[str, Any]:
    """The ``model`` object of predictions.json: name, task, version, architecture, fingerprint, checkpoints."""
    return {
        "name": package.name,
        "task": package.task,
        "version": package.version,
        "source": package.source,
        "architecture": package.architecture.name,
        "fingerprint": package.fingerprint(),
        "checkpoints": [
            {"path": checkpoint_relative_path(package, c), "sha256": c.sha256, "size_bytes": c.size_bytes}
            for c in package.checkpoints
        ],
    }


def inference_record(device: str, precision: str) -> dict[str, str | None]:
    """The ``inference`` object: where the networks ran and what they computed in (None when not known)."""
    return {"device": device or None, "precision": precision or None}


def build_predictions(
    *,
    package: ModelPackage,
    series: SeriesInfo,
    geometry: Geometry,
    structures: Sequence[StructureStats] = (),
    probabilities: Mapping[str, float] | None = None,
    timings: Mapping[str, float],
    tool_version: str,
    resampled: bool = False,
    peak_memory_gib: Mapping[str, float] | None = None,
    device: str = "",
    precision: str = "",
    channels: Sequence[SeriesInfo] = (),
    reoriented_to: str = "",
) -> dict[str, Any]:
    """The predictions document for one series; it validates against ``load_predictions_schema()``.

    ``geometry`` is the grid of the outputs (the source series' grid); ``channels``: every input series of a
    multi-channel model, in channel order (``series`` first); ``reoriented_to``: the model's orientation the image
    was turned to for inference. Patient name and ID are never included.
    """
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": TOOL_NAME, "version": tool_version},
        "model": model_record(package),
        "input": {
            "key": printable(series.key),
            **_series_record(series),
            "frame_of_reference_uid": printable(series.frame_of_reference_uid),
            "pixel_spacing_source": series.pixel_spacing_source,
            "resampled_onto_regular_grid": resampled,
            **geometry.to_json(),
            "axis_codes": geometry.axis_codes(),
        },
        "structures": [
            {
                "name": s.name,
                "voxel_count": int(s.voxel_count),
                "volume_ml": round(float(s.volume_ml), 6),
                "present": bool(s.present),
            }
            for s in structures
        ],
        "inference": inference_record(device, precision),
        "timings_s": {stage: round(float(seconds), 6) for stage, seconds in timings.items()},
        "peak_memory_gib": {name: float(gib) for name, gib in (peak_memory_gib or {}).items()},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if reoriented_to:
        document["inference"]["reoriented"] = {"from": geometry.axis_codes(), "to": reoriented_to}
    if len(channels) > 1:  # every series the model read, in its channels' order
        document["input"]["channels"] = [
            {"name": channel.name, **_series_record(source)}
            for channel, source in zip(package.channels, channels, strict=True)
        ]
    if probabilities is not None:
        document["probabilities"] = {name: float(p) for name, p in probabilities.items()}
    return document


def _series_record(series: SeriesInfo) -> dict[str, Any]:
    """A series as predictions.json names it: text as the files wrote it, control characters escaped."""
    return {
        "series_instance_uid": printable(series.series_instance_uid),
        "study_instance_uid": printable(series.study_instance_uid),
        "modality": printable(series.modality),
        "series_description": printable(series.series_description),
        "number_of_images": len(series.slices),
    }


def build_classification_predictions(
    *, package: ModelPackage, prediction: ClassificationPrediction, timings: Mapping[str, float], tool_version: str
) -> dict[str, Any]:
    """The predictions document of one classified image; it validates against the classification schema
    (``load_predictions_schema("classification")``). Patient name and ID are never included."""
    spec = package.classification
    image = prediction.image
    series = prediction.item.primary
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": TOOL_NAME, "version": tool_version},
        "model": model_record(package),
        "input": {
            "key": series.key,
            "series_instance_uid": series.series_instance_uid,
            "study_instance_uid": series.study_instance_uid,
            "sop_instance_uid": image.sop_instance_uid,
            "sop_class_uid": image.sop_class_uid,
            "frame": image.frame_index + 1 if image.number_of_frames > 1 else None,
            "modality": image.modality,
            "series_description": printable(series.series_description),
            "rows": int(series.geometry.shape[1]),
            "columns": int(series.geometry.shape[2]),
            "pixel_spacing_mm": list(image.pixel_spacing) if image.pixel_spacing else None,
            "pixel_spacing_source": image.spacing_source or "unknown",
            "photometric_interpretation": image.photometric_interpretation,
            "inverted": image.inverted,
            "voi": image.voi,
        },
        "classification": {
            "activation": spec.activation,
            "classes": list(spec.classes),
            "thresholds": dict(zip(spec.classes, spec.thresholds, strict=True)) if spec.thresholds else None,
            "probabilities": {name: round(float(p), 8) for name, p in prediction.probabilities.items()},
            "predicted": list(prediction.labels),
            "members": [{name: round(float(p), 8) for name, p in m.items()} for m in prediction.member_probabilities],
        },
        "explanations": {
            "class": prediction.explained_class,
            "methods": list(prediction.heatmaps),
        }
        if prediction.heatmaps
        else None,
        "inference": inference_record(prediction.device, prediction.precision),
        "timings_s": {stage: round(float(seconds), 6) for stage, seconds in timings.items()},
        "peak_memory_gib": {name: float(gib) for name, gib in prediction.peak_memory_gib.items()},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return document


def load_predictions_schema(task: str = "segmentation") -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of predictions.json for ``task``, shipped with the package."""
    name = SCHEMA_RESOURCE if task == "segmentation" else CLASSIFICATION_SCHEMA_RESOURCE
    resource = importlib.resources.files("innereye_batch.writers").joinpath(name)
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return schema


def _write(path: Path, prediction: SegmentationPrediction | ClassificationPrediction, context: WriteContext) -> None:
    if prediction.task == "classification":
        assert isinstance(prediction, ClassificationPrediction)
        write_json(
            path,
            build_classification_predictions(
                package=context.package,
                prediction=prediction,
                timings=context.timings,
                tool_version=context.tool_version,
            ),
        )
        return
    assert isinstance(prediction, SegmentationPrediction)
    document = build_predictions(
        package=context.package,
        series=prediction.item.primary,
        geometry=prediction.geometry,
        structures=prediction.structures,
        timings=context.timings,
        tool_version=context.tool_version,
        resampled=prediction.regridding is not None,
        peak_memory_gib=prediction.peak_memory_gib,
        device=prediction.device,
        precision=prediction.precision,
        channels=prediction.item.inputs,
        reoriented_to=prediction.reoriented_to,
    )
    write_json(path, document)


FORMAT = OutputFormat(
    name="json",
    filename="predictions.json",
    tasks=frozenset({"segmentation", "classification"}),
    write=_write,
    description="model identity, input UIDs and geometry, per-structure voxels and mL or class probabilities and "
    "predicted labels, timings (JSON Schema)",
    summarises_outputs=True,
)
