"""What a run keeps per work item: ItemResult (status, reason, findings, timings, outputs) and StructureStats.

Small, task-independent records shared by the pipeline, the writers and the summary; nothing else is kept per
item, so memory stays flat however large the cohort.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal["ok", "failed", "skipped", "not_run"]
"""``skipped``: not for this model, or already done; ``not_run``: planned, but the run stopped before it (an
interrupt, ``--fail-fast``): no result, a rerun does it."""
ALREADY_DONE = "already done with this model and input"
"""The reason of an item skipped because its folder holds its result."""
UNFINISHED: tuple[Status, ...] = ("failed", "not_run")
"""Statuses of a series without its result: a run's (and `summarize`'s) exit code is 1 when one has them."""


@dataclass(frozen=True)
class StructureStats:
    """Size of one segmented structure in the label map."""

    name: str
    voxel_count: int
    volume_ml: float

    @property
    def present(self) -> bool:
        return self.voxel_count > 0

    @property
    def volume_text(self) -> str:
        """The volume for a person: "12.3 mL", two significant digits under 0.1 mL (a structure found never reads
        "0.0 mL", which looks like nothing found), "not found" when absent."""
        if not self.present:
            return "not found"
        return f"{self.volume_ml:.1f} mL" if self.volume_ml >= 0.1 else f"{self.volume_ml:.2g} mL"


@dataclass(frozen=True)
class ItemResult:
    """What happened to one work item (a series, or one image of a classification run)."""

    key: str
    """The item's key: SeriesInfo.key (the SeriesInstanceUID, suffixed for split series)."""
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    status: Status
    reason: str = ""
    structures: tuple[StructureStats, ...] = ()
    """Segmentation: size of every structure."""
    probabilities: dict[str, float] | None = None
    """Classification: probability per class."""
    labels: tuple[str, ...] | None = None
    """Classification: the predicted class(es) at the model's thresholds."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: load, preprocess, infer, postprocess, write."""
    peak_memory_gib: dict[str, float] = field(default_factory=dict)
    """Peak memory of the item's device work, GiB: ``host`` (the process), ``cuda:N`` (``engine.memory``)."""
    outputs: dict[str, str] = field(default_factory=dict)
    """Output format -> path relative to the output folder."""
