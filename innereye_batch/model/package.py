"""Read a registered model folder (InnerEye layout) and validate it into a ``ModelPackage``.

Sources, in order: ``model_inference_config.json`` (InnerEye's, current or older form; unknown fields ignored);
our versioned inference block, from its ``"inference"`` object or a sibling ``inference_config.json``; failing
that, a preset chosen by model name (``presets.py``). Every problem raises ``ModelFolderError`` naming the file,
the field and an example of what to write. The block's format is documented in ``docs/model-folder.md``.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path, PureWindowsPath
from typing import Any

from innereye_batch.errors import ModelFolderError
from innereye_batch.model.spec import (
    ArchitectureSpec,
    ChannelSpec,
    CheckpointRef,
    InferenceSpec,
    ModelPackage,
    Normalisation,
    PostProcessing,
    SegmentationSpec,
    Structure,
    is_finite_number,
)

CONFIG_FILE = "model_inference_config.json"
BLOCK_FILE = "inference_config.json"
BLOCK_VERSION = 1
BLOCK_FIELDS = (
    "version", "task", "structures", "architecture", "channels", "normalisation", "target_spacing",
    "patch_size", "stride", "stitching", "size_multiple", "postprocessing",
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
    "postprocessing": '"postprocessing": {"posterior_smoothing_mm": [2.0, 2.0, 3.0], '
    '"largest_component": "all", "fill_holes": ["bladder"]}',
    "model_name": '{"model_name": "Lung", "checkpoint_paths": ["checkpoints/last.ckpt"]}',
    "checkpoint_paths": '"checkpoint_paths": ["checkpoints/OTHER_RUNS/1/last.ckpt", "checkpoints/last.ckpt"]',
    "roi_interpreted_type": '{"name": "external", "roi_interpreted_type": "EXTERNAL"}   (default "ORGAN")',
    "roi_interpreted_types": '"roi_interpreted_types": ["EXTERNAL", "ORGAN", "CTV"]   (one per structure)',
}
_POSTPROCESSING_FIELDS = ("posterior_smoothing_mm", "largest_component", "fill_holes")
_NORMALISATION_FIELDS = ("method", "level", "window", "output_range", "sharpen", "tail")


class _Fields:
    """Turns a problem with one field of one file into a ``ModelFolderError`` with an example."""

    def __init__(self, file: Path, prefix: str = "") -> None:
        self.file = file
        self.prefix = prefix

    def error(self, field: str, problem: str, example_key: str | None = None) -> ModelFolderError:
        example = EXAMPLES.get(example_key or field.split(".")[0].split("[")[0], "")
        hint = f". Example: {example}" if example else ""
        return ModelFolderError(f"{self.file}: field '{self.prefix}{field}': {problem}{hint}")


def _triple(fields: _Fields, name: str, value: Any, *, integer: bool, minimum: float) -> tuple[Any, Any, Any]:
    kind = "integers" if integer else "numbers"
    ok = isinstance(value, list) and len(value) == 3
    ok = ok and all((isinstance(v, int) and not isinstance(v, bool)) if integer else is_finite_number(v) for v in value)
    if not ok or any(v < minimum for v in value):
        raise fields.error(name, f"must be a list of three {kind} >= {minimum} in (z, y, x) order, got {value!r}")
    return (value[0], value[1], value[2]) if integer else (float(value[0]), float(value[1]), float(value[2]))


def parse_colour(fields: _Fields, name: str, value: Any) -> tuple[int, int, int]:
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


def _structures(fields: _Fields, value: Any) -> tuple[Structure, ...]:
    if not isinstance(value, list) or not value:
        raise fields.error("structures", "must be a non-empty list of structures (foreground classes, in label order)")
    result = []
    for index, entry in enumerate(value):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise fields.error(f"structures[{index}]", f"needs a non-empty 'name', got {entry!r}")
        colour = parse_colour(fields, f"structures[{index}].colour", entry.get("colour", [255, 0, 0]))
        interpreted_type = _interpreted_type(
            fields, f"structures[{index}].roi_interpreted_type", entry.get("roi_interpreted_type", "ORGAN")
        )
        result.append(Structure(name=entry["name"], colour=colour, interpreted_type=interpreted_type))
    names = [s.name for s in result]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise fields.error("structures", f"names must be unique; repeated: {', '.join(duplicates)}")
    return tuple(result)


def _interpreted_type(fields: _Fields, name: str, value: Any) -> str:
    """An RTROIInterpretedType (a DICOM Code String: up to 16 of A-Z, 0-9, _ and space), upper-cased."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Z0-9_ ]{1,16}", value.strip().upper()):
        raise fields.error(
            name,
            f"must be an RTROIInterpretedType such as ORGAN, EXTERNAL, PTV, CTV, GTV, got {value!r}",
            "roi_interpreted_type",
        )
    return value.strip().upper()


def _merge_interpreted_types(config: Mapping[str, Any], block: Any, file: Path) -> Any:
    """A copy of the raw ``block`` whose structures carry InnerEye's ``roi_interpreted_types`` (one per structure,
    from ``model_inference_config.json``); a structure's own ``roi_interpreted_type`` must agree with it."""
    types = config.get("roi_interpreted_types")
    if types is None or not isinstance(block, dict) or not isinstance(block.get("structures"), list):
        return block
    fields = _Fields(file)
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


def _architecture(fields: _Fields, value: Any) -> ArchitectureSpec:
    from innereye_batch.model.architectures import check_architecture_params
    from innereye_batch.model.checkpoints import FROM_CHECKPOINT

    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise fields.error("architecture", "must be an object with a 'name' and the architecture's parameters")
    params = {k: v for k, v in value.items() if k != "name"}
    if value["name"] != FROM_CHECKPOINT:
        problems = check_architecture_params(value["name"], params)
        if problems:
            raise fields.error("architecture", "; ".join(problems))
    return ArchitectureSpec(name=value["name"], params=params)


def _channels(fields: _Fields, value: Any) -> tuple[ChannelSpec, ...]:
    if not isinstance(value, list) or not value:
        raise fields.error("channels", "must be a non-empty list of input channels")
    result = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise fields.error(f"channels[{index}]", f"needs a 'name', got {entry!r}")
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


def _normalisation_one(fields: _Fields, name: str, value: Any) -> Normalisation:
    if not isinstance(value, dict) or value.get("method") not in ("ct_window", "zscore", "mri_window", "none"):
        raise fields.error(name, f"needs 'method': one of ct_window, zscore, mri_window, none; got {value!r}")
    unknown = sorted(set(value) - set(_NORMALISATION_FIELDS))
    if unknown:
        raise fields.error(name, f"unknown key(s) {', '.join(unknown)}; accepted: {', '.join(_NORMALISATION_FIELDS)}")
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


def _normalisation(fields: _Fields, value: Any, channel_count: int) -> tuple[Normalisation, ...]:
    if isinstance(value, dict):
        value = [value] * channel_count
    if not isinstance(value, list) or len(value) != channel_count:
        raise fields.error("normalisation", f"must be one object per input channel ({channel_count}), got {value!r}")
    return tuple(_normalisation_one(fields, f"normalisation[{i}]", v) for i, v in enumerate(value))


def _names(fields: _Fields, name: str, value: Any, structures: tuple[Structure, ...]) -> tuple[str, ...]:
    known = [s.name for s in structures]
    if value == "all":
        return tuple(known)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fields.error(name, f'must be a list of structure names or "all", got {value!r}', "postprocessing")
    unknown = [v for v in value if v not in known]
    if unknown:
        raise fields.error(name, f"unknown structure(s) {unknown}; structures are {known}", "postprocessing")
    return tuple(value)


def _postprocessing(fields: _Fields, value: Any, structures: tuple[Structure, ...]) -> PostProcessing:
    if value is None:
        return PostProcessing()
    if not isinstance(value, dict):
        raise fields.error("postprocessing", f"must be an object, got {value!r}")
    unknown = sorted(set(value) - set(_POSTPROCESSING_FIELDS))
    if unknown:
        raise fields.error("postprocessing", f"unknown key(s) {', '.join(unknown)}; accepted: {_POSTPROCESSING_FIELDS}")
    smoothing = value.get("posterior_smoothing_mm")
    return PostProcessing(
        posterior_smoothing_mm=None
        if smoothing is None
        else _triple(fields, "postprocessing.posterior_smoothing_mm", smoothing, integer=False, minimum=0),
        largest_component=_names(
            fields, "postprocessing.largest_component", value.get("largest_component", []), structures
        ),
        fill_holes=_names(fields, "postprocessing.fill_holes", value.get("fill_holes", []), structures),
    )


def _inference(fields: _Fields, block: Mapping[str, Any], architecture: ArchitectureSpec) -> InferenceSpec:
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
    multiple = block.get("size_multiple", needed)
    if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
        raise fields.error("size_multiple", f"must be a positive integer, got {multiple!r}")
    if multiple % needed:
        raise fields.error("size_multiple", f"must be a multiple of {needed}, which {architecture.name} needs")
    if patch_size is not None and any(p % multiple for p in patch_size):
        raise fields.error("patch_size", f"every size must be a multiple of {multiple} for this architecture")
    return InferenceSpec(patch_size=patch_size, stride=stride, stitching=stitching, size_multiple=multiple)


def parse_inference_block(block: Any, file: Path, *, prefix: str = "") -> dict[str, Any]:
    """Validate a version-1 inference block; returns the ``ModelPackage`` fields it defines."""
    fields = _Fields(file, prefix)
    if not isinstance(block, dict):
        raise fields.error("", f"the inference block must be a JSON object, got {type(block).__name__}", "version")
    if block.get("task") == "classification":
        return _classification_settings(block, file, prefix)
    unknown = [k for k in block if k not in BLOCK_FIELDS and not k.startswith("_")]
    if unknown:
        hints = [
            f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k, BLOCK_FIELDS, 1)) else k
            for k in unknown
        ]
        raise fields.error(unknown[0], f"unknown field(s): {', '.join(hints)}; keys starting with '_' are comments")
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
    )
    return {"task_spec": task_spec, "architecture": architecture, "channels": channels}


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


def _not_json(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON number (RFC 8259); write a finite number")


def _read_json(path: Path) -> Any:
    """The file's JSON, strictly: Python's reader would take NaN and Infinity, which slip past range checks."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ModelFolderError(f"{path}: cannot be read: {error}") from error
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError as error:  # JSONDecodeError, or a NaN / Infinity token
        raise ModelFolderError(f"{path}: not valid JSON: {error}") from error


def _apply_older_form(config: Mapping[str, Any], block: dict[str, Any], file: Path) -> None:
    """Older InnerEye folders list ``structure_names``, ``colours`` and ``fill_holes``: they describe the trained
    model, so they replace a preset's structures (keeping its other settings)."""
    fields = _Fields(file)
    names = config["structure_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise fields.error("structure_names", f"must be a non-empty list of names, got {names!r}")
    colours = config.get("colours") or [[255, 0, 0]] * len(names)
    fills = config.get("fill_holes") or [False] * len(names)
    if not isinstance(colours, list) or len(colours) != len(names):
        raise fields.error("colours", f"needs one colour per structure name ({len(names)})")
    if not isinstance(fills, list) or len(fills) != len(names):
        raise fields.error("fill_holes", f"needs one true/false per structure name ({len(names)})")
    old_names = [s["name"] for s in block["structures"]]
    old_largest = block["postprocessing"]["largest_component"]
    block["structures"] = [
        {"name": n, "colour": list(parse_colour(fields, f"colours[{i}]", c))}
        for i, (n, c) in enumerate(zip(names, colours, strict=True))
    ]
    post = block["postprocessing"]
    post["largest_component"] = names if set(old_largest) == set(old_names) else [n for n in old_largest if n in names]
    post["fill_holes"] = [n for n, fill in zip(names, fills, strict=True) if fill]
    if block["architecture"].get("initial_feature_channels") == 26 and len(names) <= 20:
        block["architecture"]["initial_feature_channels"] = 32  # HeadAndNeck's rule: 32 up to 20 structures


def discover_checkpoints(folder: Path) -> list[str]:
    """Checkpoint paths (relative, sorted) in InnerEye's layouts: ``checkpoints/last.ckpt`` and
    ``checkpoints/OTHER_RUNS/<k>/last.ckpt``, else the highest ``<epoch>_checkpoint.pth.tar`` of each run."""
    root = folder / "checkpoints"
    runs = [root, *sorted(p for p in (root / "OTHER_RUNS").glob("*") if p.is_dir())]
    found = []
    for run in runs:
        if (run / "last.ckpt").is_file():
            found.append(run / "last.ckpt")
            continue
        legacy = [(int(m.group(1)), p) for p in run.glob("*_checkpoint.pth.tar") if (m := re.match(r"(\d+)_", p.name))]
        if legacy:
            found.append(max(legacy)[1])
    return sorted(p.relative_to(folder).as_posix() for p in found)


def _checkpoints(folder: Path, config: Mapping[str, Any], file: Path) -> tuple[CheckpointRef, ...]:
    from innereye_batch.model.checkpoints import sha256_file

    fields = _Fields(file)
    paths = config.get("checkpoint_paths") or discover_checkpoints(folder)
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise fields.error("checkpoint_paths", f"must be a list of paths relative to the folder, got {paths!r}")
    if not paths:
        raise fields.error(
            "checkpoint_paths",
            f"empty, and no checkpoints found under {folder / 'checkpoints'} "
            "(expected checkpoints/last.ckpt, checkpoints/OTHER_RUNS/<k>/last.ckpt or "
            "checkpoints/<epoch>_checkpoint.pth.tar)",
        )
    refs = []
    by_file: dict[Path, str] = {}
    by_weights: dict[str, str] = {}
    for relative in paths:
        # InnerEye on Windows writes its paths with backslashes (str of a WindowsPath)
        path = folder / (PureWindowsPath(relative).as_posix() if "\\" in relative else relative)
        if not path.is_file():
            raise fields.error("checkpoint_paths", f"checkpoint file not found: {path}")
        same = by_file.get(path.resolve())
        digest = sha256_file(path)
        same = same or by_weights.get(digest)
        if same is not None:
            raise fields.error(
                "checkpoint_paths",
                f"{relative!r} holds the same checkpoint as {same!r} (sha256 {digest[:12]}): the ensemble's mean "
                "would count that member twice",
            )
        by_file[path.resolve()] = by_weights[digest] = relative
        refs.append(CheckpointRef(path=path, sha256=digest, size_bytes=path.stat().st_size))
    return tuple(refs)


def _settings(
    folder: Path, config: Mapping[str, Any], config_file: Path, name: str, namespace: str
) -> tuple[str, dict[str, Any]]:
    """Where the inference settings come from (block, sibling file or preset) and the parsed settings."""
    block_file = folder / BLOCK_FILE
    if "inference" in config and block_file.is_file():
        raise ModelFolderError(
            f"{folder}: both {CONFIG_FILE} (field 'inference') and {BLOCK_FILE} hold an inference block; keep one"
        )
    if "inference" in config or block_file.is_file():
        if "inference" in config:
            block = _merge_interpreted_types(config, config["inference"], config_file)
            settings = parse_inference_block(block, config_file, prefix="inference.")
        else:
            block = _merge_interpreted_types(config, _read_json(block_file), config_file)
            settings = parse_inference_block(block, block_file)
        block_names = list(getattr(settings["task_spec"], "structure_names", ()))
        older_names = config.get("structure_names")
        if isinstance(older_names, list) and block_names and older_names != block_names:
            raise _Fields(config_file).error(
                "structure_names",
                f"{older_names} disagrees with the inference block's structures {block_names}",
                "structures",
            )
        return "inference block", settings
    from innereye_batch.model.presets import find_preset, preset_names

    preset = find_preset(name, namespace)
    if preset is None:
        raise ModelFolderError(
            f"{config_file}: model '{name}' has no inference block and matches no preset "
            f'({", ".join(preset_names())}). Add an "inference" object to {CONFIG_FILE} (or a file '
            f"{BLOCK_FILE}) with at least: {{{EXAMPLES['version']}, {EXAMPLES['structures']}, "
            f"{EXAMPLES['architecture']}, {EXAMPLES['normalisation']}}} -- see docs/model-folder.md"
        )
    source, block = preset
    if "structure_names" in config:
        _apply_older_form(config, block, config_file)
        source += f", structures from {CONFIG_FILE}"
    block = _merge_interpreted_types(config, block, config_file)
    return source, parse_inference_block(block, config_file, prefix=f"({source}).")


def load_model_package(folder: Path) -> ModelPackage:
    """Read and validate a registered model folder (see the module docstring for the sources)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder not found: {folder}")
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise ModelFolderError(
            f"{config_file}: missing; a registered model folder needs it. Example: {EXAMPLES['model_name']}"
        )
    config = _read_json(config_file)
    if not isinstance(config, dict):
        raise ModelFolderError(f"{config_file}: must hold a JSON object. Example: {EXAMPLES['model_name']}")
    fields = _Fields(config_file)
    name = config.get("model_name")
    if not isinstance(name, str) or not name:
        raise fields.error("model_name", "missing or not a string")
    namespace = config.get("model_configs_namespace") or ""
    if not isinstance(namespace, str):
        raise fields.error("model_configs_namespace", f"must be a string, got {namespace!r}", "model_name")
    source, settings = _settings(folder, config, config_file, name, namespace)
    return ModelPackage(
        folder=folder,
        name=name,
        checkpoints=_checkpoints(folder, config, config_file),
        model_configs_namespace=namespace,
        source=source,
        **settings,
    )
