"""What a header scan knows about one series: its slices in order, its geometry and its problems.

Cheap value objects built from headers only; no pixel data is read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from innereye_batch.dicom.geometry import Geometry


@dataclass(frozen=True)
class SliceRef:
    """One 2-D image of a series: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    sop_instance_uid: str
    position: tuple[float, float, float]
    """ImagePositionPatient (LPS, mm) of the image's first voxel."""
    frame: int | None = None
    """0-based frame number in a multi-frame file; None for a single-frame file."""


@dataclass(frozen=True)
class Problem:
    """Something wrong with a series. A fatal problem stops the series from being loaded."""

    kind: str
    """Short machine-readable tag, e.g. ``missing_slices``, ``duplicate_positions``, ``gantry_tilt``."""
    message: str
    fatal: bool = False

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass(frozen=True)
class SeriesInfo:
    """One stack of images that forms a volume (a series, or one stack of a series split by geometry)."""

    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    modality: str
    sop_class_uid: str
    series_description: str
    slices: tuple[SliceRef, ...]
    """Images in slice order (ascending along the slice normal)."""
    geometry: Geometry
    transfer_syntaxes: tuple[str, ...]
    problems: tuple[Problem, ...] = field(default=())
    stack: int = 0
    """0 for an unsplit series; 1, 2, ... for the stacks of a series split by orientation or size."""
    series_number: int | None = None

    @property
    def key(self) -> str:
        """A unique name for this stack: the SeriesInstanceUID, suffixed ``.stackN`` for split series."""
        return self.series_instance_uid if self.stack == 0 else f"{self.series_instance_uid}.stack{self.stack}"

    @property
    def files(self) -> tuple[Path, ...]:
        """Distinct files in slice order."""
        return tuple(dict.fromkeys(s.path for s in self.slices))

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        """SOP Instance UIDs of the images, in slice order (one per distinct instance)."""
        return tuple(dict.fromkeys(s.sop_instance_uid for s in self.slices))

    @property
    def fatal_problems(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.fatal)

    @property
    def is_loadable(self) -> bool:
        return not self.fatal_problems


@dataclass(frozen=True)
class SkippedFile:
    """A file the scan could not use, and why (not DICOM, empty, truncated, no pixel data...)."""

    path: Path
    reason: str
