"""Value objects describing a model package: what the network is, what it expects, what it outputs.

Built once per run by ``innereye_batch.model.package.load_model_package`` and immutable afterwards. Sizes and
spacings follow the array order (z, y, x).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from innereye_batch.model.classification import ClassificationSpec

Task = Literal["segmentation", "classification"]
NormalisationMethod = Literal["ct_window", "zscore", "mri_window", "none"]
Stitching = Literal["gaussian", "average"]


def is_finite_number(value: Any) -> bool:
    """True for a finite number of a model folder's JSON, not a bool (``1e999`` parses to infinity; an integer
    of 400 digits is no float at all)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@dataclass(frozen=True)
class Structure:
    """One segmented structure (foreground label i = index + 1), its display colour and RT interpreted type."""

    name: str
    colour: tuple[int, int, int] = (255, 0, 0)
    interpreted_type: str = "ORGAN"
    """RTROIInterpretedType of its ROI in an RT Structure Set (ORGAN, EXTERNAL, PTV, CTV, GTV, AVOIDANCE, ...)."""


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint file of the package (several make an ensemble)."""

    path: Path
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class ArchitectureSpec:
    """A registered architecture name and its hyper-parameters (see ``model.architectures``)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChannelSpec:
    """One input channel and the rules that pick its series within a study.

    Every rule that is set must match: ``modality`` equals DICOM Modality; ``series_description`` is a regular
    expression searched (case-insensitive) in SeriesDescription.
    """

    name: str
    modality: str | None = None
    series_description: str | None = None


@dataclass(frozen=True)
class Normalisation:
    """Intensity normalisation of one channel.

    ``ct_window``: [level - window/2, level + window/2] mapped linearly onto ``output_range`` and clipped
    (InnerEye's CtWindow). ``zscore``: per-image mean 0, standard deviation 1. ``mri_window``: InnerEye's
    MriWindow (Otsu foreground, robust window from ``sharpen`` and ``tail``). ``none``: unchanged.
    """

    method: NormalisationMethod = "none"
    level: float | None = None
    window: float | None = None
    output_range: tuple[float, float] = (-1.0, 1.0)
    sharpen: float = 0.9
    tail: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class InferenceSpec:
    """How the network is applied to a volume.

    ``patch_size`` None means whole-volume inference. ``stride`` defaults to half the patch size.
    ``stitching``: ``gaussian`` blends overlaps with Gaussian importance weights; ``average`` averages them
    uniformly, as InnerEye does (MONAI's ``mode="constant"``).
    """

    patch_size: tuple[int, int, int] | None = None
    stride: tuple[int, int, int] | None = None
    stitching: Stitching = "gaussian"
    size_multiple: tuple[int, int, int] = (1, 1, 1)
    """Padded input sizes must be multiples of this, per (z, y, x) axis (``factor ** downsampling paths`` for
    InnerEye's UNet3D)."""


@dataclass(frozen=True)
class SummedProbabilityRule:
    """InnerEye's ``SummedProbabilityRule``: a voxel labelled ``external_class`` whose posterior for it is below the
    sum of ``first_class``'s and ``second_class``'s takes the more probable of those two (``first_class`` on ties)."""

    first_class: str
    second_class: str
    external_class: str


@dataclass(frozen=True)
class SliceExclusionRule:
    """InnerEye's ``SliceExclusionRule``: ``higher_class`` must lie in strictly higher z slices than ``lower_class``.
    Where their slice ranges overlap (from the lowest slice of ``higher_class`` to the highest of ``lower_class``),
    the voxels of one become the other: of ``lower_class`` when ``higher_dominates``, else of ``higher_class``."""

    higher_class: str
    lower_class: str
    higher_dominates: bool


@dataclass(frozen=True)
class PostProcessing:
    """Post-processing in InnerEye's order: smoothing, argmax, summed-probability rules, largest component,
    slice-exclusion rules, hole filling (each rule in its list's order)."""

    posterior_smoothing_mm: tuple[float, float, float] | None = None
    largest_component: tuple[str, ...] = ()
    fill_holes: tuple[str, ...] = ()
    summed_probability_rules: tuple[SummedProbabilityRule, ...] = ()
    slice_exclusion_rules: tuple[SliceExclusionRule, ...] = ()

    def named_structures(self) -> dict[str, tuple[str, ...]]:
        """The structure names each setting refers to, by setting (for validation)."""
        return {
            "largest_component": self.largest_component,
            "fill_holes": self.fill_holes,
            "summed_probability_rules": tuple(
                n for r in self.summed_probability_rules for n in (r.first_class, r.second_class, r.external_class)
            ),
            "slice_exclusion_rules": tuple(
                n for r in self.slice_exclusion_rules for n in (r.higher_class, r.lower_class)
            ),
        }


DICOM_LABEL_LENGTH = 64
"""Characters a structure's name keeps in DICOM outputs (SegmentLabel, ROIName: Long String)."""


def dicom_label(name: str) -> str:
    """A structure's name as DICOM outputs hold it, and as a reader gets it back: its first 64 characters, without
    the trailing spaces (and NULs) that DICOM text pads with. Names must differ in it, or two structures would be
    one in the files and in their read-back checks."""
    return name[:DICOM_LABEL_LENGTH].rstrip(" \x00")


def dicom_label_problem(name: str) -> str | None:
    """Why ``name`` cannot be a DICOM label (a backslash separates values; control characters are not text), or
    None."""
    if "\\" in name:
        return f"{name!r} holds a backslash, which DICOM reads as a separator between two values"
    if any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in name):
        return f"{name!r} holds a control character"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"{name!r} is not Unicode text (a lone surrogate)"
    if not dicom_label(name):
        return f"{name!r} is empty as a DICOM label"
    return None


def structure_names_problem(names: Sequence[str]) -> tuple[str, str] | None:
    """Where (``structures`` or ``structures[i].name``) and why these structure names cannot be one model's, or
    None: each must be unique, usable as a DICOM label, and distinct as one (``dicom_label``) and as a reader
    takes one (``_as_read``: a system that trims or normalises names would merge two structures)."""
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        return "structures", f"names must be unique; repeated: {', '.join(duplicates)}"
    for index, name in enumerate(names):
        problem = dicom_label_problem(name)
        if problem:
            return f"structures[{index}].name", f"not usable as a DICOM label: {problem}"
    kept = [dicom_label(n) for n in names]
    alike = sorted({n for n, k in zip(names, kept, strict=True) if kept.count(k) > 1})
    if alike:
        return "structures", (
            f"names must differ within their first {DICOM_LABEL_LENGTH} characters, trailing spaces aside (what "
            f"DICOM-SEG and RT Structure Set labels hold); these do not: {', '.join(map(repr, alike))}"
        )
    read = [_as_read(k) for k in kept]
    alike = sorted({n for n, r in zip(names, read, strict=True) if read.count(r) > 1})
    if alike:
        return "structures", (
            "names must differ also as a person or a receiving system reads them (case, spaces at either end, "
            f"Unicode forms and invisible characters aside); these do not: {', '.join(map(repr, alike))}"
        )
    return None


def _as_read(label: str) -> str:
    """A label as a reader may take it: NFKC form, invisible (format) characters dropped, stripped, case folded."""
    import unicodedata

    visible = "".join(c for c in unicodedata.normalize("NFKC", label) if unicodedata.category(c) != "Cf")
    return visible.strip().casefold()


def orientation_codes_valid(codes: str) -> bool:
    """Whether ``codes`` names three patient axes, one letter of each pair (``"LPS"``, ``"RPI"``, ``"PSL"``...)."""
    axes = [next((i for i, pair in enumerate(("LR", "PA", "SI")) if c in pair), -1) for c in codes]
    return sorted(axes) == [0, 1, 2]


@dataclass(frozen=True)
class SegmentationSpec:
    """The segmentation-specific part of a model: structures, how volumes are fed, how posteriors become labels.

    Validated when built: at least one structure, unique names, post-processing naming only known structures.
    """

    structures: tuple[Structure, ...]
    """Foreground structures; label i is ``structures[i - 1]``, 0 is background."""
    normalisation: tuple[Normalisation, ...] = (Normalisation(),)
    """One per input channel."""
    target_spacing: tuple[float, float, float] | None = None
    inference: InferenceSpec = InferenceSpec()
    postprocessing: PostProcessing = PostProcessing()
    orientation: str | None = None
    """Where the training stacks' index axes (x, y, z) pointed, as ``Geometry.axis_codes`` writes it (``"LPS"``:
    head-first supine axial); a series whose axes point elsewhere is turned to it (``reorient``) or refused. None:
    any, fed as stored (as InnerEye does: a feet-first series is then seen mirrored)."""
    reorient: bool = True
    """With an ``orientation``: swap and reverse a series' axes to it before inference and turn the label map back
    (no interpolation); False refuses such a series."""
    activation: Literal["softmax"] = "softmax"
    """Applied to the network's logits per patch before stitching and averaging (InnerEye's posteriors)."""

    task: ClassVar[Task] = "segmentation"

    def __post_init__(self) -> None:
        names = [s.name for s in self.structures]
        if not names:
            raise ValueError("a segmentation model needs at least one structure")
        problem = structure_names_problem(names)
        if problem:
            raise ValueError(f"{problem[0]}: {problem[1]}")
        if self.orientation is not None and not orientation_codes_valid(self.orientation):
            raise ValueError(f"orientation {self.orientation!r} must be three letters, one of L/R, P/A and S/I each")
        for rule, listed in self.postprocessing.named_structures().items():
            unknown = [n for n in listed if n not in names]
            if unknown:
                raise ValueError(f"post-processing {rule} names unknown structure(s) {unknown}; structures: {names}")

    @property
    def num_outputs(self) -> int:
        """Network output channels: background + one per structure."""
        return len(self.structures) + 1

    @property
    def structure_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.structures)


_REVISED_RESULTS: dict[str, Callable[[dict[str, Any]], bool]] = {
    # 2026-11-27: slice-exclusion rules took array axis 0 as up (a feet-first series lost its brainstem)
    "slice exclusion towards the head": lambda spec: bool(
        (spec.get("postprocessing") or {}).get("slice_exclusion_rules")
    ),
    # 2026-11-27: the grid at target_spacing stopped up to 1.5 voxels short of the last source voxel
    "resampled grid to the last voxel": lambda spec: spec.get("target_spacing") is not None,
}
"""Fixes that change the outputs of models using what they fixed: such a model's fingerprint names them, so that
series an earlier version marked done with it are redone (a model not using them keeps its fingerprint)."""


@dataclass(frozen=True)
class ModelPackage:
    """A registered model folder, validated and resolved: everything a run needs to know about the model.

    What is common to every task lives here; ``task_spec`` holds the task-specific part.
    """

    folder: Path
    name: str
    task_spec: SegmentationSpec | ClassificationSpec
    checkpoints: tuple[CheckpointRef, ...]
    architecture: ArchitectureSpec
    channels: tuple[ChannelSpec, ...] = (ChannelSpec(name="ct", modality="CT"),)
    model_configs_namespace: str = ""
    source: str = "inference block"
    """Where the inference settings came from: ``inference block`` or ``preset <name>``."""
    version: str = ""

    @property
    def task(self) -> Task:
        return self.task_spec.task

    @property
    def num_outputs(self) -> int:
        """Network output channels (see the task spec)."""
        return self.task_spec.num_outputs

    @property
    def segmentation(self) -> SegmentationSpec:
        """The segmentation spec; raises for a model of another task."""
        if not isinstance(self.task_spec, SegmentationSpec):
            raise TypeError(f"model {self.name} is a {self.task} model, not a segmentation model")
        return self.task_spec

    @property
    def classification(self) -> ClassificationSpec:
        """The classification spec; raises for a model of another task."""
        from innereye_batch.model.classification import ClassificationSpec

        if not isinstance(self.task_spec, ClassificationSpec):
            raise TypeError(f"model {self.name} is a {self.task} model, not a classification model")
        return self.task_spec

    def fingerprint(self) -> str:
        """sha256 over the checkpoints' hashes and every setting that changes outputs (for resumable runs)."""
        settings = asdict(self)
        settings.pop("folder")
        settings["task"] = self.task
        settings["checkpoints"] = [c.sha256 for c in self.checkpoints]
        post = settings["task_spec"].get("postprocessing", {})
        for key in ("summed_probability_rules", "slice_exclusion_rules"):  # added later: when unset, a package
            if not post.get(key):  # keeps the fingerprint it had before (its outputs are the same)
                post.pop(key, None)
        if settings["task_spec"].get("orientation", 0) is None:  # added later, as those
            settings["task_spec"].pop("orientation")
        if settings["task_spec"].get("reorient") is True:  # the default: a model keeps the fingerprint it had (its
            settings["task_spec"].pop("reorient")  # series in the training orientation give the same outputs)
        inference = settings["task_spec"].get("inference") or {}
        multiple = inference.get("size_multiple")
        if multiple is not None and len(set(multiple)) == 1:  # one number before per-axis multiples: kept so
            inference["size_multiple"] = multiple[0]
        revised = [fix for fix, applies in _REVISED_RESULTS.items() if applies(settings["task_spec"])]
        if revised:  # outputs of earlier versions are wrong for such a model: series done with them are redone
            settings["revised_results"] = revised
        blob = json.dumps(settings, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()
