"""Load a classification model folder's networks in tests, as ``load_networks`` does for a package."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from innereye_batch.model.architectures import build_network
from innereye_batch.model.checkpoints import FROM_CHECKPOINT, load_checkpoint
from innereye_batch.model.classification import (
    ClassificationSpec,
    parse_classification_architecture,
    parse_classification_block,
)
from innereye_batch.model.package import CONFIG_FILE, discover_checkpoints
from innereye_batch.model.spec import ArchitectureSpec


def read_classification_folder(folder: Path) -> tuple[ClassificationSpec, ArchitectureSpec, list[Path]]:
    """The spec, architecture and checkpoint files (sorted, as the package lists them) of a model folder."""
    config_file = folder / CONFIG_FILE
    block = json.loads(config_file.read_text())["inference"]
    return (
        parse_classification_block(block, config_file),
        parse_classification_architecture(block, config_file),
        [folder / p for p in discover_checkpoints(folder)],
    )


def load_classifiers(
    paths: list[Path], architecture: ArchitectureSpec, spec: ClassificationSpec, *, trust_checkpoint: bool = False
) -> list[torch.nn.Module]:
    """One network per checkpoint, weights loaded strictly into the architecture (or the archive's own program
    for ``from_checkpoint``), in eval mode."""
    networks = []
    for path in paths:
        loaded = load_checkpoint(path, trust_checkpoint=trust_checkpoint)
        if architecture.name == FROM_CHECKPOINT:
            networks.append(loaded.module)
            continue
        network = build_network(architecture, spec.input_channels, spec.num_outputs)
        network.load_state_dict(loaded.state_dict, strict=True)
        networks.append(network.eval())
    return networks
