"""What a header scan knows about one series: its slices in order, its geometry and its problems.

Cheap value objects built from headers only; no pixel data is read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from innereye_batch.dicom.geometry import Geometry


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """Where a file's uncompressed little-endian stored values lie, and how to read them, as the scan found it.

    Only for a single-frame file whose every allocated bit is stored (BitsStored == BitsAllocated), so that its
    values can be read as they lie, without pydicom parsing the header again. Valid while the file's size and
    modification and status-change times are those recorded here.
    """

    file_size: int
    mtime_ns: int
    """``st_mtime_ns`` of the file when it was scanned."""
    ctime_ns: int
    """``st_ctime_ns`` when it was scanned: unlike mtime, no user can set it back (``cp -p``, ``touch -d``)."""
    offset: int
    """Byte offset of the Pixel Data element's value in the file."""
    length: int
    """Declared length of that value in bytes (at least rows x columns x bytes per value)."""
    rows: int
    columns: int
    bits_allocated: int
    """8, 16 or 32; BitsStored equals it."""
    signed: bool
    """PixelRepresentation 1 (two's complement)."""
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0

    @property
    def dtype(self) -> str:
        """Numpy type string of one stored value, e.g. ``<i2``."""
        return f"<{'i' if self.signed else 'u'}{self.bits_allocated // 8}"


@dataclass(frozen=True)
class SliceRef:
    """One 2-D image of a series: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    sop_instance_uid: str
    position: tuple[float, float, float]
    """ImagePositionPatient (LPS, mm) of the image's first voxel."""
    frame: int | None = None
    """0-based frame number in a multi-frame file; None for a single-frame file."""
    pixel: PixelLayout | None = None
    """How to read the stored values without parsing the header again; None where pydicom must decode them
    (compressed, big endian, multi-frame, unused high bits) or the scan did not record it."""


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
