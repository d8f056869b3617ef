"""Write networks as a model folder in InnerEye's layout (for tests, sample data and converted models).

``final_model/`` style for one network, ``final_ensemble_model/`` style for several: ``checkpoints/last.ckpt``
for the first network and ``checkpoints/OTHER_RUNS/<k>/last.ckpt`` for network k >= 1, each a Lightning-style
checkpoint dict (``state_dict`` keyed ``model.<name>``, ``epoch``, ``global_step``), plus
``model_inference_config.json`` with InnerEye's three fields and our ``"inference"`` block.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from innereye_batch.model.package import CONFIG_FILE

if TYPE_CHECKING:
    import torch


def lightning_checkpoint(network: torch.nn.Module, *, epoch: int = 0, global_step: int = 0) -> dict[str, Any]:
    """The dict InnerEye's Lightning training saves, reduced to what inference reads."""
    state = {f"model.{key}": value.detach().cpu().clone() for key, value in network.state_dict().items()}
    return {"epoch": epoch, "global_step": global_step, "state_dict": state}


def write_model_folder(
    folder: Path,
    networks: Sequence[torch.nn.Module],
    *,
    model_name: str,
    inference_block: Mapping[str, Any] | None,
    model_configs_namespace: str = "",
) -> Path:
    """Write ``networks`` (one per ensemble member) as an InnerEye-layout model folder; returns ``folder``.

    ``inference_block`` None writes InnerEye's three fields only (a folder that relies on a preset).
    """
    import torch

    if not networks:
        raise ValueError("write_model_folder needs at least one network")
    folder = Path(folder)
    relative_paths = []
    for index, network in enumerate(networks):
        relative = "checkpoints/last.ckpt" if index == 0 else f"checkpoints/OTHER_RUNS/{index}/last.ckpt"
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(lightning_checkpoint(network), target)
        relative_paths.append(relative)
    config: dict[str, Any] = {
        "model_name": model_name,
        "checkpoint_paths": sorted(relative_paths),
        "model_configs_namespace": model_configs_namespace,
    }
    if inference_block is not None:
        config["inference"] = dict(inference_block)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder
