"""The classification part of a model package: ``ClassificationSpec`` and the inference block that declares it.

A classification block (``"task": "classification"`` in the version-1 inference block of
``model_inference_config.json``) says which classes the network outputs, how its logits become probabilities
and labels, what input it takes and how a DICOM projection image is mapped to that input:

```json
"inference": {
  "version": 1,
  "task": "classification",
  "classes": ["normal", "nodule"],
  "activation": "softmax",
  "architecture": {"name": "CNN2D", "initial_feature_channels": 8, "num_blocks": 3},
  "input_size": [128, 128],
  "input_channels": 1,
  "intensity": {"apply_voi": true, "png_scaling": "full_range", "mean": [0.5], "std": [0.25]},
  "modalities": ["CR", "DX"],
  "gradcam_layer": "features"
}
```

Intensity: each image is mapped to the 16-bit PNG convention (``innereye_batch.dicom.projection``: modality
LUT, the file's VOI when ``apply_voi``, MONOCHROME1 inverted, ``png_scaling`` onto [0, 65535]), divided by
65535 to [0, 1], resized to ``input_size`` (y, x) with antialiasing, replicated to ``input_channels`` and
normalised per channel as ``(x - mean) / std`` (torchvision's ImageNet models: mean [0.485, 0.456, 0.406], std
[0.229, 0.224, 0.225]).

``parse_classification_block`` returns the task part (``ClassificationSpec``, with the Grad-CAM layer resolved
from the architecture when not declared); the architecture, like the checkpoints, belongs to the package
(``parse_classification_architecture`` validates it against the registry). Importing this module does not
import torch (parsing the architecture does).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from innereye_batch.errors import ModelFolderError
from innereye_batch.model.spec import ArchitectureSpec, ChannelSpec, Task, is_finite_number

Activation = Literal["softmax", "sigmoid"]
PngScaling = Literal["full_range", "min_max"]
BLOCK_VERSION = 1
CLASSIFICATION_FIELDS = (
    "version", "task", "classes", "activation", "architecture", "input_size", "input_channels", "intensity",
    "modalities", "gradcam_layer",
)  # fmt: skip
INTENSITY_FIELDS = ("apply_voi", "png_scaling", "mean", "std")
DEFAULT_MODALITIES = ("CR", "DX")
DEFAULT_THRESHOLD = 0.5
DEFAULT_GRADCAM_LAYERS = {"cnn2d": "features", "resnet": "layer4", "densenet": "features.denseblock4"}
"""Grad-CAM target layer by architecture (lower-case name): the last convolutional stage before pooling."""
EXAMPLES = {
    "version": '"version": 1',
    "task": '"task": "classification"',
    "classes": '"classes": ["normal", "nodule"]   (sigmoid: [{"name": "nodule", "threshold": 0.4}, ...])',
    "activation": '"activation": "softmax"   ("softmax": one label per image; "sigmoid": multi-label)',
    "architecture": '"architecture": {"name": "CNN2D", "initial_feature_channels": 8, "num_blocks": 3}   '
    'or {"name": "DenseNet", "depth": 121}',
    "input_size": '"input_size": [224, 224]   (y, x)',
    "input_channels": '"input_channels": 3   (1, or 3 with the grey image replicated)',
    "intensity": '"intensity": {"apply_voi": true, "png_scaling": "full_range", "mean": [0.485, 0.456, 0.406], '
    '"std": [0.229, 0.224, 0.225]}',
    "modalities": '"modalities": ["CR", "DX"]',
    "gradcam_layer": '"gradcam_layer": "layer4"   (a module name of the network, as named_modules() lists it)',
}


@dataclass(frozen=True)
class IntensitySpec:
    """DICOM projection -> network input intensities (see the module docstring)."""

    apply_voi: bool = True
    """Apply the file's VOI LUT or window before scaling (the PNG convention); False skips it."""
    png_scaling: PngScaling = "full_range"
    """How the 16-bit PNG range is filled: the header's value range (``full_range``) or the image's (``min_max``)."""
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    """Per input channel (one value applies to every channel), on the [0, 1] scale."""

    def __post_init__(self) -> None:
        if self.png_scaling not in ("full_range", "min_max"):
            raise ValueError(f"png_scaling must be 'full_range' or 'min_max', got {self.png_scaling!r}")
        if not self.mean or not self.std:
            raise ValueError("mean and std need at least one value")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std}")


@dataclass(frozen=True)
class ClassificationSpec:
    """The classification part of a model: what the network outputs and how it is fed; validated when built
    (``ValueError``). The architecture and checkpoints are the package's, as for every task."""

    classes: tuple[str, ...]
    input_size: tuple[int, int]
    """Network input (y, x)."""
    activation: Activation = "softmax"
    thresholds: tuple[float, ...] = ()
    """One per class for ``sigmoid`` (a class is predicted when its probability >= its threshold); empty for
    ``softmax``, whose predicted label is the most probable class. Filled with 0.5 when left empty."""
    input_channels: int = 1
    intensity: IntensitySpec = field(default_factory=IntensitySpec)
    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    """DICOM Modality values accepted as input."""
    gradcam_layer: str | None = None
    """Module name Grad-CAM explains (``named_modules()``); the parser fills in the architecture's default
    (``DEFAULT_GRADCAM_LAYERS``); None means Grad-CAM is not available (e.g. a TorchScript program)."""

    task: ClassVar[Task] = "classification"

    def __post_init__(self) -> None:
        if not self.classes or any(not isinstance(c, str) or not c.strip() for c in self.classes):
            raise ValueError(f"classes must be non-empty names, got {self.classes!r}")
        repeated = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if repeated:
            raise ValueError(f"class names must be unique; repeated: {', '.join(repeated)}")
        if self.activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {self.activation!r}")
        if self.activation == "softmax" and len(self.classes) < 2:
            raise ValueError("softmax needs at least two classes (one class with sigmoid is a yes/no model)")
        if self.activation == "softmax" and self.thresholds:
            raise ValueError("thresholds apply to sigmoid outputs; softmax predicts the most probable class")
        if self.activation == "sigmoid":
            if not self.thresholds:
                object.__setattr__(self, "thresholds", (DEFAULT_THRESHOLD,) * len(self.classes))
            if len(self.thresholds) != len(self.classes) or not all(0.0 < t < 1.0 for t in self.thresholds):
                raise ValueError(f"sigmoid needs one threshold in (0, 1) per class, got {self.thresholds!r}")
        if len(self.input_size) != 2 or any(not isinstance(s, int) or s < 1 for s in self.input_size):
            raise ValueError(f"input_size must be two positive integers (y, x), got {self.input_size!r}")
        if self.input_channels not in (1, 3):
            raise ValueError(f"input_channels must be 1 or 3, got {self.input_channels!r}")
        for name in ("mean", "std"):
            values = getattr(self.intensity, name)
            if len(values) not in (1, self.input_channels):
                raise ValueError(f"intensity {name} needs 1 or {self.input_channels} values, got {len(values)}")
        if not self.modalities:
            raise ValueError("modalities must list at least one DICOM Modality")

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    def channel_values(self, name: Literal["mean", "std"]) -> tuple[float, ...]:
        """The intensity mean or std, one value per input channel."""
        values = getattr(self.intensity, name)
        return tuple(values) * self.input_channels if len(values) == 1 else tuple(values)


def default_gradcam_layer(architecture_name: str) -> str | None:
    """The Grad-CAM layer of a registered architecture (any case), or None when it has no default."""
    return DEFAULT_GRADCAM_LAYERS.get(architecture_name.lower())


class _Fields:
    """Turns a problem with one field into a ``ModelFolderError`` naming the file and the field, with an example."""

    def __init__(self, file: Path, prefix: str) -> None:
        self.file, self.prefix = file, prefix

    def error(self, name: str, problem: str) -> ModelFolderError:
        example = EXAMPLES.get(name.split(".")[0].split("[")[0], "")
        hint = f". Example: {example}" if example else ""
        return ModelFolderError(f"{self.file}: field '{self.prefix}{name}': {problem}{hint}")


def _classes(fields: _Fields, value: Any) -> tuple[tuple[str, ...], tuple[float | None, ...]]:
    if not isinstance(value, list) or not value:
        raise fields.error("classes", f"must be a non-empty list of class names in output order, got {value!r}")
    names, thresholds = [], []
    for index, entry in enumerate(value):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise fields.error(f"classes[{index}]", f"needs a non-empty 'name', got {entry!r}")
        unknown = sorted(k for k in set(entry) - {"name", "threshold"} if not str(k).startswith("_"))
        if unknown:
            raise fields.error(f"classes[{index}]", f"unknown key(s) {', '.join(unknown)}; accepted: name, threshold")
        threshold = entry.get("threshold")
        if threshold is not None and not (is_finite_number(threshold) and 0 < threshold < 1):
            raise fields.error(f"classes[{index}].threshold", f"must be a number in (0, 1), got {threshold!r}")
        names.append(entry["name"])
        thresholds.append(None if threshold is None else float(threshold))
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise fields.error("classes", f"names must be unique; repeated: {', '.join(repeated)}")
    return tuple(names), tuple(thresholds)


def _architecture(fields: _Fields, value: Any) -> ArchitectureSpec:
    """The block's architecture, checked against the registry (as the package does for every task)."""
    from innereye_batch.model.architectures import check_architecture_params
    from innereye_batch.model.checkpoints import FROM_CHECKPOINT

    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise fields.error("architecture", f"must be an object with a 'name' and its parameters, got {value!r}")
    params = {k: v for k, v in value.items() if k != "name" and not str(k).startswith("_")}  # "_": comments
    if value["name"] != FROM_CHECKPOINT:
        problems = check_architecture_params(value["name"], params)
        if problems:
            raise fields.error("architecture", "; ".join(problems))
    return ArchitectureSpec(name=value["name"], params=params)


def _numbers(fields: _Fields, name: str, value: Any, *, positive: bool = False) -> tuple[float, ...]:
    if is_finite_number(value):
        value = [value]
    if not isinstance(value, list) or not value or not all(map(is_finite_number, value)):
        raise fields.error(name, f"must be a number or a list of numbers, got {value!r}")
    if positive and any(v <= 0 for v in value):
        raise fields.error(name, f"every value must be > 0, got {value!r}")
    return tuple(float(v) for v in value)


def _intensity(fields: _Fields, value: Any, channels: int) -> IntensitySpec:
    if value is None:
        return IntensitySpec()
    if not isinstance(value, dict):
        raise fields.error("intensity", f"must be an object, got {value!r}")
    unknown = sorted(k for k in set(value) - set(INTENSITY_FIELDS) if not str(k).startswith("_"))
    if unknown:
        raise fields.error("intensity", f"unknown key(s) {', '.join(unknown)}; accepted: {', '.join(INTENSITY_FIELDS)}")
    apply_voi = value.get("apply_voi", True)
    if not isinstance(apply_voi, bool):
        raise fields.error("intensity.apply_voi", f"must be true or false, got {apply_voi!r}")
    scaling = value.get("png_scaling", "full_range")
    if scaling not in ("full_range", "min_max"):
        raise fields.error("intensity.png_scaling", f'must be "full_range" or "min_max", got {scaling!r}')
    mean = _numbers(fields, "intensity.mean", value.get("mean", 0.0))
    std = _numbers(fields, "intensity.std", value.get("std", 1.0), positive=True)
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise fields.error(f"intensity.{name}", f"needs 1 or {channels} values (input_channels), got {len(values)}")
    return IntensitySpec(apply_voi=apply_voi, png_scaling=scaling, mean=mean, std=std)


def parse_classification_block(
    block: Mapping[str, Any], source: Path, *, prefix: str = "inference."
) -> ClassificationSpec:
    """Validate a version-1 classification block read from ``source``; errors name the file and the field."""
    fields = _Fields(Path(source), prefix)
    if not isinstance(block, Mapping):
        raise fields.error("", f"the inference block must be a JSON object, got {type(block).__name__}")
    unknown = [k for k in block if k not in CLASSIFICATION_FIELDS and not str(k).startswith("_")]
    if unknown:
        hints = [
            f"{k} (did you mean {close[0]}?)"
            if (close := difflib.get_close_matches(k, CLASSIFICATION_FIELDS, 1))
            else k
            for k in unknown
        ]
        raise fields.error(unknown[0], f"unknown field(s) for a classification model: {', '.join(hints)}")
    for required in ("version", "classes", "architecture", "input_size"):
        if required not in block:
            raise fields.error(required, "missing")
    if block["version"] != BLOCK_VERSION:
        raise fields.error("version", f"unsupported version {block['version']!r}; this tool reads {BLOCK_VERSION}")
    if block.get("task", "classification") != "classification":
        raise fields.error("task", f'must be "classification" for this block, got {block.get("task")!r}')
    names, thresholds = _classes(fields, block["classes"])
    activation = block.get("activation", "softmax")
    if activation not in ("softmax", "sigmoid"):
        raise fields.error("activation", f'must be "softmax" or "sigmoid", got {activation!r}')
    if activation == "softmax" and any(t is not None for t in thresholds):
        raise fields.error("classes", "thresholds apply to sigmoid models; softmax predicts the most probable class")
    size = block["input_size"]
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
    ):
        raise fields.error("input_size", f"must be two positive integers (y, x), got {size!r}")
    channels = block.get("input_channels", 1)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise fields.error("input_channels", f"must be 1 or 3, got {channels!r}")
    modalities = block.get("modalities", list(DEFAULT_MODALITIES))
    if (
        not isinstance(modalities, list)
        or not modalities
        or not all(isinstance(m, str) and m.strip() for m in modalities)
    ):
        raise fields.error("modalities", f"must be a non-empty list of DICOM Modality values, got {modalities!r}")
    layer = block.get("gradcam_layer")
    if layer is not None and (not isinstance(layer, str) or not layer.strip()):
        raise fields.error("gradcam_layer", f"must be a module name or null, got {layer!r}")
    architecture = _architecture(fields, block["architecture"])
    return ClassificationSpec(
        classes=names,
        input_size=(size[0], size[1]),
        activation=activation,
        thresholds=tuple(DEFAULT_THRESHOLD if t is None else t for t in thresholds) if activation == "sigmoid" else (),
        input_channels=channels,
        intensity=_intensity(fields, block.get("intensity"), channels),
        modalities=tuple(m.strip().upper() for m in modalities),
        gradcam_layer=layer or default_gradcam_layer(architecture.name),
    )


def parse_classification_architecture(
    block: Mapping[str, Any], source: Path, *, prefix: str = "inference."
) -> ArchitectureSpec:
    """The classification block's ``architecture``, validated against the registry (errors name file and field)."""
    fields = _Fields(Path(source), prefix)
    if "architecture" not in block:
        raise fields.error("architecture", "missing")
    return _architecture(fields, block["architecture"])


def network_channels(spec: ClassificationSpec) -> tuple[ChannelSpec, ...]:
    """``ModelPackage.channels`` for a classification model: one per network input channel (the grey image,
    replicated), no series rules (the model's ``modalities`` pick its images)."""
    if spec.input_channels == 1:
        return (ChannelSpec("grey"),)
    return tuple(ChannelSpec(f"grey{i}") for i in range(spec.input_channels))
