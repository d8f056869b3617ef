"""SeriesResult: the small record a run keeps per series (status, reason, volumes, timings, outputs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class StructureStats:
    """Size of one segmented structure in the label map."""

    name: str
    voxel_count: int
    volume_ml: float

    @property
    def present(self) -> bool:
        return self.voxel_count > 0


@dataclass(frozen=True)
class SeriesResult:
    """What happened to one series in a run. Nothing else is kept per series, so memory stays flat."""

    key: str
    """SeriesInfo.key: the SeriesInstanceUID (suffixed .stackN for split series)."""
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    status: Status
    reason: str = ""
    structures: tuple[StructureStats, ...] = ()
    probabilities: dict[str, float] | None = None
    """Class probabilities, for classification models."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: load, infer, postprocess, write."""
    outputs: dict[str, str] = field(default_factory=dict)
    """Output format -> path relative to the output folder."""
