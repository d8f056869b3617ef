"""Parse and validate our versioned inference block (segmentation; a classification block is handed to
``classification.py``) into the ``ModelPackage`` fields it defines.

Every problem raises ``ModelFolderError`` naming the file, the field and an example of what to write
(``Fields``). The block's format is documented in ``docs/model-folder.md``; ``package.py`` finds the block.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from innereye_batch.errors import ModelFolderError
from innereye_batch.model.spec import (
    ArchitectureSpec,
    ChannelSpec,
    InferenceSpec,
    Normalisation,
    PostProcessing,
    SegmentationSpec,
    SliceExclusionRule,
    Structure,
    SummedProbabilityRule,
    is_finite_number,
    orientation_codes_valid,
    structure_names_problem,
)

BLOCK_VERSION = 1
BLOCK_FIELDS = (
    "version", "task", "structures", "architecture", "channels", "normalisation", "target_spacing",
    "patch_size", "stride", "stitching", "size_multiple", "postprocessing", "orientation",
    "reorient",
)  # fmt: skip
EXAMPLES = {
    "version": '"version": 1',
    "task": '"task": "segmentation"',
    "structures": '"structures": [{"name": "lung_l", "colour": [255, 0, 0]}, {"name": "heart", "colour": "#00ff00"}]',
    "architecture": '"architecture": {"name": "UNet3D", "initial_feature_channels": 32, "kernel_size": 3, '
    '"num_downsampling_paths": 4}',
    "channels": '"channels": [{"name": "ct", "modality": "CT", "series_description": "(?i)abdo"}]',
    "normalisation": '"normalisation": [{"method": "ct_window", "level": 50, "window": 600, "output_range": [-1, 1]}]',
    "target_spacing": '"target_spacing": [3.0, 1.0, 1.0]   (z, y, x mm; null keeps the native grid)',
    "patch_size": '"patch_size": [128, 512, 512]   (z, y, x; null for whole-volume inference)',
    "stride": '"stride": [64, 256, 256]',
    "stitching": '"stitching": "average"   ("gaussian" or "average"; "average" reproduces InnerEye)',
    "size_multiple": '"size_multiple": 16',
    "orientation": '"orientation": "LPS"   (x, y, z of the training stacks: columns to the left, rows to posterior, '
    "slices to superior; null takes any)",
    "reorient": '"reorient": false   (with an orientation: refuse series whose axes run elsewhere; true, the default, '
    "turns them to it)",
    "postprocessing": '"postprocessing": {"posterior_smoothing_mm": [2.0, 2.0, 3.0], '
    '"largest_component": "all", "fill_holes": ["bladder"]}',
    "model_name": '{"model_name": "Lung", "checkpoint_paths": ["checkpoints/last.ckpt"]}',
    "checkpoint_paths": '"checkpoint_paths": ["checkpoints/OTHER_RUNS/1/last.ckpt", "checkpoints/last.ckpt"]',
    "roi_interpreted_type": '{"name": "external", "roi_interpreted_type": "EXTERNAL"}   (default "ORGAN")',
    "roi_interpreted_types": '"roi_interpreted_types": ["EXTERNAL", "ORGAN", "CTV"]   (one per structure)',
    "summed_probability_rules": '"summed_probability_rules": [{"first_class": "spinal_cord", "second_class": '
    '"brainstem", "external_class": "external"}]',
    "slice_exclusion_rules": '"slice_exclusion_rules": [{"higher_class": "brainstem", "lower_class": "spinal_cord", '
    '"higher_dominates": false}]',
}
_POSTPROCESSING_FIELDS = (
    "posterior_smoothing_mm", "largest_component", "fill_holes", "summed_probability_rules", "slice_exclusion_rules",
)  # fmt: skip
_SUMMED_PROBABILITY_FIELDS = ("first_class", "second_class", "external_class", "if_present")
_SLICE_EXCLUSION_FIELDS = ("higher_class", "lower_class", "higher_dominates", "if_present")
_NORMALISATION_FIELDS = ("method", "level", "window", "output_range", "sharpen", "tail")
_STRUCTURE_FIELDS = ("name", "colour", "roi_interpreted_type")
_CHANNEL_FIELDS = ("name", "modality", "series_description")


class Fields:
    """Turns a problem with one field of one file into a ``ModelFolderError`` with an example."""

    def __init__(self, file: Path, prefix: str = "") -> None:
        self.file = file
        self.prefix = prefix

    def error(self, field: str, problem: str, example_key: str | None = None) -> ModelFolderError:
        example = EXAMPLES.get(example_key or field.split(".")[0].split("[")[0], "")
        hint = f". Example: {example}" if example else ""
        return ModelFolderError(f"{self.file}: field '{self.prefix}{field}': {problem}{hint}")


def _with_hints(keys: list[str], accepted: tuple[str, ...]) -> str:
    """``keys`` joined, each followed by "(did you mean X?)" where one of ``accepted`` is close to it."""
    return ", ".join(
        f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k, accepted, 1)) else k for k in keys
    )


def _refuse_unknown_keys(fields: Fields, name: str, entry: Mapping[str, Any], accepted: tuple[str, ...]) -> None:
    """A ``ModelFolderError`` for keys of the object ``entry`` (field ``name``) outside ``accepted``; keys
    starting with '_' are comments."""
    unknown = sorted(str(k) for k in entry if k not in accepted and not str(k).startswith("_"))
    if unknown:
        raise fields.error(name, f"unknown key(s) {_with_hints(unknown, accepted)}; accepted: {', '.join(accepted)}")


def _triple(fields: Fields, name: str, value: Any, *, integer: bool, minimum: float) -> tuple[Any, Any, Any]:
    kind = "integers" if integer else "numbers"
    ok = isinstance(value, list) and len(value) == 3
    ok = ok and all((isinstance(v, int) and not isinstance(v, bool)) if integer else is_finite_number(v) for v in value)
    if not ok or any(v < minimum for v in value):
        raise fields.error(name, f"must be a list of three {kind} >= {minimum} in (z, y, x) order, got {value!r}")
    return (value[0], value[1], value[2]) if integer else (float(value[0]), float(value[1]), float(value[2]))


def parse_colour(fields: Fields, name: str, value: Any) -> tuple[int, int, int]:
    """``[r, g, b]`` (0-255) or ``"#rrggbb"`` / ``"rrggbb"``."""
    if isinstance(value, str) and re.fullmatch(r"#?[0-9a-fA-F]{6}", value):
        digits = value.lstrip("#")
        return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))
    if (
        isinstance(value, list | tuple)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    ):
        return (value[0], value[1], value[2])
    raise fields.error(name, f'a colour must be [r, g, b] with values 0-255 or "#rrggbb", got {value!r}', "structures")


MAX_STRUCTURES = 255
"""Label maps are uint8 (0 is background): NIfTI, the writers and the post-processing all take them so."""


def _structures(fields: Fields, value: Any) -> tuple[Structure, ...]:
    if not isinstance(value, list) or not value:
        raise fields.error("structures", "must be a non-empty list of structures (foreground classes, in label order)")
    if len(value) > MAX_STRUCTURES:
        raise fields.error("structures", f"{len(value)} structures do not fit an 8-bit label map (at most 255)")
    result = []
    for index, entry in enumerate(value):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise fields.error(f"structures[{index}]", f"needs a non-empty 'name', got {entry!r}")
        _refuse_unknown_keys(fields, f"structures[{index}]", entry, _STRUCTURE_FIELDS)
        colour = parse_colour(fields, f"structures[{index}].colour", entry.get("colour", [255, 0, 0]))
        interpreted_type = _interpreted_type(
            fields, f"structures[{index}].roi_interpreted_type", entry.get("roi_interpreted_type", "ORGAN")
        )
        result.append(Structure(name=entry["name"], colour=colour, interpreted_type=interpreted_type))
    problem = structure_names_problem([s.name for s in result])
    if problem:
        raise fields.error(*problem)
    return tuple(result)


def _interpreted_type(fields: Fields, name: str, value: Any) -> str:
    """An RTROIInterpretedType (a DICOM Code String: up to 16 of A-Z, 0-9, _ and space), upper-cased."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Z0-9_ ]{1,16}", value.strip().upper()):
        raise fields.error(
            name,
            f"must be an RTROIInterpretedType such as ORGAN, EXTERNAL, PTV, CTV, GTV, got {value!r}",
            "roi_interpreted_type",
        )
    return value.strip().upper()


def merge_interpreted_types(config: Mapping[str, Any], block: Any, file: Path) -> Any:
    """A copy of the raw ``block`` whose structures carry InnerEye's ``roi_interpreted_types`` (one per structure,
    from ``model_inference_config.json``); a structure's own ``roi_interpreted_type`` must agree with it."""
    types = config.get("roi_interpreted_types")
    if types is None or not isinstance(block, dict) or not isinstance(block.get("structures"), list):
        return block
    fields = Fields(file)
    structures = block["structures"]
    if not isinstance(types, list) or len(types) != len(structures):
        raise fields.error("roi_interpreted_types", f"needs one type per structure ({len(structures)}), got {types!r}")
    merged = copy.deepcopy(block)
    for index, (entry, value) in enumerate(zip(merged["structures"], types, strict=True)):
        listed = _interpreted_type(fields, f"roi_interpreted_types[{index}]", value)
        entry = {"name": entry} if isinstance(entry, str) else entry
        if isinstance(entry, dict):
            own = entry.get("roi_interpreted_type")
            if own is not None and str(own).strip().upper() != listed:
                raise fields.error(
                    "roi_interpreted_types",
                    f"{listed!r} for structure {index} disagrees with its roi_interpreted_type {own!r}",
                )
            entry["roi_interpreted_type"] = listed
        merged["structures"][index] = entry
    return merged


def _architecture(fields: Fields, value: Any) -> ArchitectureSpec:
    from innereye_batch.model.architectures import check_architecture_params
    from innereye_batch.model.checkpoints import FROM_CHECKPOINT

    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise fields.error("architecture", "must be an object with a 'name' and the architecture's parameters")
    params = {k: v for k, v in value.items() if k != "name" and not str(k).startswith("_")}  # "_": comments
    if value["name"] == FROM_CHECKPOINT and params:
        raise fields.error(
            "architecture",
            f"'{FROM_CHECKPOINT}' runs the checkpoint's own program and takes no parameters, got "
            f"{', '.join(sorted(params))}",
        )
    if value["name"] != FROM_CHECKPOINT:
        problems = check_architecture_params(value["name"], params)
        if problems:
            raise fields.error("architecture", "; ".join(problems))
    return ArchitectureSpec(name=value["name"], params=params)


def _channels(fields: Fields, value: Any) -> tuple[ChannelSpec, ...]:
    if not isinstance(value, list) or not value:
        raise fields.error("channels", "must be a non-empty list of input channels")
    result = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise fields.error(f"channels[{index}]", f"needs a 'name', got {entry!r}")
        _refuse_unknown_keys(fields, f"channels[{index}]", entry, _CHANNEL_FIELDS)
        for key in ("modality", "series_description"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise fields.error(f"channels[{index}].{key}", f"must be a string or null, got {entry[key]!r}")
        if entry.get("series_description"):
            try:
                re.compile(entry["series_description"])
            except re.error as error:
                raise fields.error(
                    f"channels[{index}].series_description", f"bad regular expression: {error}"
                ) from None
        result.append(ChannelSpec(entry["name"], entry.get("modality"), entry.get("series_description")))
    return tuple(result)


def _normalisation_one(fields: Fields, name: str, value: Any) -> Normalisation:
    if not isinstance(value, dict) or value.get("method") not in ("ct_window", "zscore", "mri_window", "none"):
        raise fields.error(name, f"needs 'method': one of ct_window, zscore, mri_window, none; got {value!r}")
    _refuse_unknown_keys(fields, name, value, _NORMALISATION_FIELDS)
    method = value["method"]
    output_range = value.get("output_range", [-1.0, 1.0])
    if not (isinstance(output_range, list) and len(output_range) == 2 and all(map(is_finite_number, output_range))):
        raise fields.error(f"{name}.output_range", f"must be two numbers [low, high], got {output_range!r}")
    if output_range[0] == output_range[1]:
        raise fields.error(f"{name}.output_range", f"its two ends must differ, got {output_range!r}")
    level = window = None
    if method == "ct_window":
        for key in ("level", "window"):
            if not is_finite_number(value.get(key)):
                raise fields.error(f"{name}.{key}", "ct_window needs numeric 'level' and 'window' (Hounsfield units)")
        level, window = float(value["level"]), float(value["window"])
        if window <= 0:
            raise fields.error(f"{name}.window", f"must be > 0, got {window}")
    sharpen = value.get("sharpen", 0.9)  # InnerEye's SegmentationModelBase default
    tail = value.get("tail", [1.0])
    if method == "mri_window" and (
        not is_finite_number(sharpen) or not isinstance(tail, list) or not all(map(is_finite_number, tail))
    ):
        raise fields.error(name, "mri_window needs numeric 'sharpen' and a list of numbers 'tail'")
    return Normalisation(
        method=method,
        level=level,
        window=window,
        output_range=(float(output_range[0]), float(output_range[1])),
        sharpen=float(sharpen),
        tail=tuple(float(t) for t in tail),
    )


def _normalisation(fields: Fields, value: Any, channel_count: int) -> tuple[Normalisation, ...]:
    if isinstance(value, dict):
        value = [value] * channel_count
    if not isinstance(value, list) or len(value) != channel_count:
        raise fields.error("normalisation", f"must be one object per input channel ({channel_count}), got {value!r}")
    return tuple(_normalisation_one(fields, f"normalisation[{i}]", v) for i, v in enumerate(value))


def _names(fields: Fields, name: str, value: Any, structures: tuple[Structure, ...]) -> tuple[str, ...]:
    known = [s.name for s in structures]
    if value == "all":
        return tuple(known)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fields.error(name, f'must be a list of structure names or "all", got {value!r}', "postprocessing")
    unknown = [v for v in value if v not in known]
    if unknown:
        raise fields.error(name, f"unknown structure(s) {unknown}; structures are {known}", "postprocessing")
    return tuple(value)


def _postprocessing(fields: Fields, value: Any, structures: tuple[Structure, ...]) -> PostProcessing:
    if value is None:
        return PostProcessing()
    if not isinstance(value, dict):
        raise fields.error("postprocessing", f"must be an object, got {value!r}")
    _refuse_unknown_keys(fields, "postprocessing", value, _POSTPROCESSING_FIELDS)
    smoothing = value.get("posterior_smoothing_mm")
    return PostProcessing(
        posterior_smoothing_mm=None
        if smoothing is None
        else _triple(fields, "postprocessing.posterior_smoothing_mm", smoothing, integer=False, minimum=0),
        largest_component=_names(
            fields, "postprocessing.largest_component", value.get("largest_component", []), structures
        ),
        fill_holes=_names(fields, "postprocessing.fill_holes", value.get("fill_holes", []), structures),
        summed_probability_rules=tuple(
            SummedProbabilityRule(r["first_class"], r["second_class"], r["external_class"])
            for r in _rules(fields, "summed_probability_rules", value, _SUMMED_PROBABILITY_FIELDS, structures)
        ),
        slice_exclusion_rules=tuple(
            SliceExclusionRule(r["higher_class"], r["lower_class"], r["higher_dominates"])
            for r in _rules(fields, "slice_exclusion_rules", value, _SLICE_EXCLUSION_FIELDS, structures)
        ),
    )


def _rules(
    fields: Fields, key: str, post: Mapping[str, Any], accepted: tuple[str, ...], structures: tuple[Structure, ...]
) -> list[Mapping[str, Any]]:
    """The rules of ``postprocessing.<key>``, checked: every key of ``accepted`` is required, ``*_class`` a
    structure's name, the others true or false (``if_present`` defaults to false). A rule with ``"if_present": true``
    naming a structure the model lacks is dropped, as InnerEye's HeadAndNeck configs add a rule only when the model
    has its structures."""
    value = post.get(key, [])
    if not isinstance(value, list):
        raise fields.error(f"postprocessing.{key}", f"must be a list of rules, got {value!r}", key)
    known = [s.name for s in structures]
    result: list[Mapping[str, Any]] = []
    for index, rule in enumerate(value):
        name = f"postprocessing.{key}[{index}]"
        if not isinstance(rule, dict):
            raise fields.error(name, f"must be an object, got {rule!r}", key)
        _refuse_unknown_keys(fields, name, rule, accepted)
        rule = {"if_present": False, **rule}
        for field in accepted:
            given = rule.get(field)
            if field.endswith("_class") and not isinstance(given, str):
                raise fields.error(f"{name}.{field}", f"must be a structure name, got {given!r}", key)
            if not field.endswith("_class") and not isinstance(given, bool):
                raise fields.error(f"{name}.{field}", f"must be true or false, got {given!r}", key)
        unknown = [rule[f] for f in accepted if f.endswith("_class") and rule[f] not in known]
        if unknown and not rule["if_present"]:
            problem = f"unknown structure(s) {_with_hints(unknown, tuple(known))}; structures are {known}"
            raise fields.error(name, problem, key)
        if not unknown:
            result.append(rule)
    return result


def _per_axis(values: tuple[int, int, int]) -> str:
    """``16`` for (16, 16, 16), else ``[1, 16, 16]`` (z, y, x)."""
    return str(values[0]) if len(set(values)) == 1 else str(list(values))


def _inference(fields: Fields, block: Mapping[str, Any], architecture: ArchitectureSpec) -> InferenceSpec:
    from innereye_batch.model.architectures import size_multiple_of

    patch = block.get("patch_size")
    patch_size = None if patch is None else _triple(fields, "patch_size", patch, integer=True, minimum=1)
    stride_value = block.get("stride")
    stride = None if stride_value is None else _triple(fields, "stride", stride_value, integer=True, minimum=1)
    if stride is not None and patch_size is None:
        raise fields.error("stride", "needs a patch_size (whole-volume inference has no stride)", "patch_size")
    if stride is not None and patch_size is not None and any(s > p for s, p in zip(stride, patch_size, strict=True)):
        raise fields.error("stride", f"must not exceed patch_size {list(patch_size)} (it would leave gaps)")
    stitching = block.get("stitching", "gaussian")
    if stitching not in ("gaussian", "average"):
        raise fields.error("stitching", f'must be "gaussian" or "average", got {stitching!r}')
    needed = size_multiple_of(architecture)
    value = block.get("size_multiple", list(needed))
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value] * 3  # one number: every axis
    multiple: tuple[int, int, int] = _triple(fields, "size_multiple", value, integer=True, minimum=1)
    if any(m % n for m, n in zip(multiple, needed, strict=True)):
        raise fields.error(
            "size_multiple", f"must be a multiple of {_per_axis(needed)}, which {architecture.name} needs"
        )
    if patch_size is not None and any(p % m for p, m in zip(patch_size, multiple, strict=True)):
        raise fields.error("patch_size", f"each size must be a multiple of {_per_axis(multiple)} for this architecture")
    return InferenceSpec(patch_size=patch_size, stride=stride, stitching=stitching, size_multiple=multiple)


def parse_inference_block(block: Any, file: Path, *, prefix: str = "") -> dict[str, Any]:
    """Validate a version-1 inference block; returns the ``ModelPackage`` fields it defines."""
    fields = Fields(file, prefix)
    if not isinstance(block, dict):
        raise fields.error("", f"the inference block must be a JSON object, got {type(block).__name__}", "version")
    if block.get("task") == "classification":
        return _classification_settings(block, file, prefix)
    unknown = [k for k in block if k not in BLOCK_FIELDS and not k.startswith("_")]
    if unknown:
        hints = _with_hints(unknown, BLOCK_FIELDS)
        raise fields.error(unknown[0], f"unknown field(s): {hints}; keys starting with '_' are comments")
    for required in ("version", "structures", "architecture", "normalisation"):
        if required not in block:
            raise fields.error(required, "missing")
    if block["version"] != BLOCK_VERSION:
        raise fields.error(
            "version", f"unsupported version {block['version']!r}; this tool reads version {BLOCK_VERSION}"
        )
    task = block.get("task", "segmentation")
    if task != "segmentation":
        raise fields.error("task", f'must be "segmentation" or "classification", got {task!r}')
    structures = _structures(fields, block["structures"])
    architecture = _architecture(fields, block["architecture"])
    channels = _channels(fields, block.get("channels", [{"name": "ct", "modality": "CT"}]))
    spacing = block.get("target_spacing")
    task_spec = SegmentationSpec(
        structures=structures,
        normalisation=_normalisation(fields, block["normalisation"], len(channels)),
        target_spacing=None
        if spacing is None
        else _triple(fields, "target_spacing", spacing, integer=False, minimum=1e-6),
        inference=_inference(fields, block, architecture),
        postprocessing=_postprocessing(fields, block.get("postprocessing"), structures),
        orientation=_orientation(fields, block.get("orientation")),
        reorient=_reorient(fields, block),
    )
    return {"task_spec": task_spec, "architecture": architecture, "channels": channels}


def _orientation(fields: Fields, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not orientation_codes_valid(value.upper()):
        raise fields.error("orientation", f"must be three letters, one of L/R, P/A and S/I each, got {value!r}")
    return value.upper()


def _reorient(fields: Fields, block: dict[str, Any]) -> bool:
    value = block.get("reorient", True)
    if not isinstance(value, bool):
        raise fields.error("reorient", f"must be true or false, got {value!r}")
    if "reorient" in block and block.get("orientation") is None:
        raise fields.error(
            "reorient",
            "says what to do with series in another orientation than the model's, but "
            'the block states none ("orientation")',
        )
    return value


def _classification_settings(block: dict[str, Any], file: Path, prefix: str) -> dict[str, Any]:
    """The ``ModelPackage`` fields of a classification block (``model/classification.py`` validates it)."""
    from innereye_batch.model.classification import (
        network_channels,
        parse_classification_architecture,
        parse_classification_block,
    )

    spec = parse_classification_block(block, file, prefix=prefix)
    architecture = parse_classification_architecture(block, file, prefix=prefix)
    return {"task_spec": spec, "architecture": architecture, "channels": network_channels(spec)}
