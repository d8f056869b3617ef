"""What a header scan knows about one series: its slices in order, its geometry and its problems.

Cheap value objects built from headers only; no pixel data is read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.photometric import inverts_monochrome1
from innereye_batch.dicom.problems import REGRIDDABLE


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

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its field values (scan workers send one per file): loads 2x faster than dataclass state."""
        return (type(self), tuple(getattr(self, name) for name in self.__match_args__))

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
    monochrome1: bool = False
    """PhotometricInterpretation MONOCHROME1 (see ``photometric.py`` for which modalities are inverted)."""
    mosaic_size: tuple[int, int] | None = None
    """(rows, columns) of the mosaic image this slice is a tile of (``mosaic.py``; ``frame`` is the tile's
    index, row-major); None for an ordinary image."""
    file_status: tuple[int, int, int] | None = None
    """The file's size, modification and status-change times (ns) when the scan read its header: the inputs'
    fingerprint records them. Loading refuses a multi-frame file or mosaic that differs (changed after its header
    was read: its frames are placed where the scan found them); a single-frame file that differs is parsed again
    and must keep its instance, position and grid."""


@dataclass(frozen=True)
class Problem:
    """Something wrong with a series. A fatal problem stops the series from being loaded."""

    kind: str
    """Stable machine-readable tag, one of those listed in ``problems.py`` (e.g. ``missing_slices``)."""
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
    """0 where the series (or its part) is one grid; 1, 2, ... for the stacks of one split by orientation or size."""
    series_number: int | None = None
    key_suffix: str = ""
    """What tells this part from the others of its SeriesInstanceUID, e.g. ``.echo2``, ``.b1000.dir3``, ``.for2``,
    ``.stack2``; empty for an unsplit series (see ``key``)."""
    split_by: dict[str, str] = field(default_factory=dict)
    """The values that set this part apart, by attribute (e.g. ``{"EchoNumbers": "2", "EchoTime": "9.84"}``;
    ``{"FrameOfReferenceUID": "<uid>"}``; a PatientID is never shown, only ``{"PatientID": "differs"}``)."""
    pixel_spacing_source: str = "PixelSpacing"
    """Where the in-plane spacing came from: ``PixelSpacing``, ``ImagerPixelSpacing`` (projection images) or
    ``unknown`` (a projection image with neither: 1 mm written, with an ``unknown_pixel_spacing`` problem)."""
    slice_spacing_source: str = "positions"
    """Where the z spacing came from: ``positions`` (steps between slices), ``SpacingBetweenSlices`` or
    ``SliceThickness`` (single-slice stacks), or ``unknown`` (1 mm written, said by a problem where it matters)."""
    irregular: bool = False
    """Slices not on a regular orthogonal grid (gantry tilt, variable spacing): ``load_volume`` resamples such a
    stack onto ``regrid_geometry`` where allowed (see ``regrid.py``)."""
    regrid_geometry: Geometry | None = None
    """The regular orthogonal grid an irregular stack is resampled onto; None for a regular stack."""

    @property
    def key(self) -> str:
        """A unique, stable name: the SeriesInstanceUID, plus ``key_suffix`` for a part of a split series."""
        if self.key_suffix:
            return self.series_instance_uid + self.key_suffix
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

    def blocking_problems(self, *, regrid_irregular: bool = False) -> tuple[Problem, ...]:
        """Fatal problems, less those that resampling resolves when ``regrid_irregular`` is set."""
        return tuple(p for p in self.fatal_problems if not (regrid_irregular and p.kind in REGRIDDABLE))

    @property
    def mosaic_size(self) -> tuple[int, int] | None:
        """(rows, columns) of the mosaic image whose tiles are all of this stack's slices; else None."""
        sizes = {s.mosaic_size for s in self.slices}
        return sizes.pop() if len(sizes) == 1 else None

    @property
    def inverts_monochrome1(self) -> bool:
        """True when loading inverts some of its slices (MONOCHROME1 in a modality that ``photometric.py`` inverts)."""
        return inverts_monochrome1(self.modality) and any(s.monochrome1 for s in self.slices)


@dataclass(frozen=True)
class SkippedFile:
    """A file the scan could not use, and why (not DICOM, empty, truncated, no pixel data...)."""

    path: Path
    reason: str
