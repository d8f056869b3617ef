"""Build and write predictions.json: what ran on which series and what it found (no patient identity)."""

from __future__ import annotations

import datetime
import importlib.resources
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.model.spec import CheckpointRef, ModelPackage
from innereye_batch.pipeline.result import StructureStats

SCHEMA_VERSION = "1.0"
SCHEMA_RESOURCE = "predictions.schema.json"
TOOL_NAME = "innereye-batch"


def structure_stats(
    labels: np.ndarray, geometry: Geometry, structure_names: Sequence[str]
) -> tuple[StructureStats, ...]:
    """Voxel count and volume (mL) of label i = ``structure_names[i - 1]`` in a (z, y, x) label map."""
    if tuple(labels.shape) != tuple(geometry.shape):
        raise ValueError(f"label map shape {labels.shape} does not match geometry shape {geometry.shape}")
    counts = np.bincount(labels.ravel(), minlength=len(structure_names) + 1)
    if len(counts) > len(structure_names) + 1:
        raise ValueError(f"label map holds label {len(counts) - 1} but there are {len(structure_names)} structures")
    voxel_ml = math.prod(geometry.spacing) / 1000.0
    return tuple(
        StructureStats(name=name, voxel_count=int(counts[i]), volume_ml=float(counts[i]) * voxel_ml)
        for i, name in enumerate(structure_names, start=1)
    )


def checkpoint_relative_path(package: ModelPackage, checkpoint: CheckpointRef) -> str:
    """The checkpoint's path relative to the model folder (POSIX), or as given when it lies elsewhere."""
    path = Path(checkpoint.path)
    try:
        return path.relative_to(package.folder).as_posix()
    except ValueError:
        return path.as_posix()


def build_predictions(
    *,
    package: ModelPackage,
    series: SeriesInfo,
    geometry: Geometry,
    structures: Sequence[StructureStats] = (),
    probabilities: Mapping[str, float] | None = None,
    timings: Mapping[str, float],
    tool_version: str,
) -> dict[str, Any]:
    """The predictions document for one series; it validates against ``load_predictions_schema()``.

    ``geometry`` is the grid of the outputs (the source series' grid). Patient name and ID are never included.
    """
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": TOOL_NAME, "version": tool_version},
        "model": {
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
        },
        "input": {
            "key": series.key,
            "series_instance_uid": series.series_instance_uid,
            "study_instance_uid": series.study_instance_uid,
            "frame_of_reference_uid": series.frame_of_reference_uid,
            "modality": series.modality,
            "series_description": series.series_description,
            "number_of_images": len(series.slices),
            **geometry.to_json(),
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
        "timings_s": {stage: round(float(seconds), 6) for stage, seconds in timings.items()},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if probabilities is not None:
        document["probabilities"] = {name: float(p) for name, p in probabilities.items()}
    return document


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` to exactly ``path`` as indented UTF-8 JSON (the caller renames it into place)."""
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(text + "\n")
        stream.flush()


def load_predictions_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of predictions.json, shipped with the package."""
    resource = importlib.resources.files("innereye_batch.writers").joinpath(SCHEMA_RESOURCE)
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return schema
