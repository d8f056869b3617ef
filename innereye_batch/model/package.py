"""Read a registered model folder (InnerEye layout) and validate it into a ``ModelPackage``.

Sources, in order: ``model_inference_config.json`` (InnerEye's, current or older form; unknown fields ignored);
our versioned inference block, from its ``"inference"`` object or a sibling ``inference_config.json``; failing
that, a preset chosen by model name (``presets.py``). Every problem raises ``ModelFolderError`` naming the file,
the field and an example of what to write; the block itself is parsed by ``inference_block.py``.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from innereye_batch.errors import ModelFolderError
from innereye_batch.model.inference_block import (
    EXAMPLES,
    Fields,
    merge_interpreted_types,
    parse_colour,
    parse_inference_block,
)
from innereye_batch.model.spec import CheckpointRef, ModelPackage, dicom_label_problem

CONFIG_FILE = "model_inference_config.json"
BLOCK_FILE = "inference_config.json"


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
    except RecursionError as error:  # thousands of nested brackets
        raise ModelFolderError(f"{path}: nested too deeply to be a model's configuration") from error


def _apply_older_form(config: Mapping[str, Any], block: dict[str, Any], file: Path) -> None:
    """Older InnerEye folders list ``structure_names``, ``colours`` and ``fill_holes``: they describe the trained
    model, so they replace a preset's structures (keeping its other settings)."""
    fields = Fields(file)
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

    fields = Fields(file)
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
        posix = PureWindowsPath(relative).as_posix() if "\\" in relative else relative
        inside = posixpath.normpath(posix)
        if PurePosixPath(posix).is_absolute() or PureWindowsPath(relative).drive or inside.split("/")[0] == "..":
            raise fields.error(
                "checkpoint_paths",
                f"{relative!r} leaves the model folder: checkpoints are paths inside it, so that the folder is the "
                "whole model wherever it is copied",
            )
        path = folder / inside  # normalised here: the system would take '..' after a symlinked folder out of it
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
            block = merge_interpreted_types(config, config["inference"], config_file)
            settings = parse_inference_block(block, config_file, prefix="inference.")
        else:
            block = merge_interpreted_types(config, _read_json(block_file), config_file)
            settings = parse_inference_block(block, block_file)
        block_names = list(getattr(settings["task_spec"], "structure_names", ()))
        older_names = config.get("structure_names")
        if isinstance(older_names, list) and block_names and older_names != block_names:
            raise Fields(config_file).error(
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
    block = merge_interpreted_types(config, block, config_file)
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
    fields = Fields(config_file)
    name = config.get("model_name")
    if not isinstance(name, str) or not name:
        raise fields.error("model_name", "missing or not a string")
    if problem := dicom_label_problem(name):  # it names the DICOM outputs' series, and shows in terminals
        raise fields.error("model_name", problem)
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
