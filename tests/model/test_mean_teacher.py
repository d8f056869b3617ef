"""A legacy InnerEye checkpoint trained with a mean teacher: its ``mean_teacher_state_dict`` is what InnerEye's
inference runs, so it is what loads (and what ``inspect`` says); a malformed one is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from innereye_batch.cli import app
from innereye_batch.errors import CheckpointError
from innereye_batch.model.checkpoints import load_checkpoint, load_networks
from innereye_batch.model.package import load_model_package
from tests.model.conftest import tiny_network

INPUT = torch.linspace(-1, 1, 8 * 8 * 8).reshape(1, 1, 8, 8, 8)


def _legacy(student: torch.nn.Module, teacher: Any, *, prefix: str = "") -> dict[str, Any]:
    """InnerEye's ``<epoch>_checkpoint.pth.tar`` dict; ``prefix`` "module." as DataParallel training saves it."""
    checkpoint = {"epoch": 120, "state_dict": {prefix + k: v for k, v in student.state_dict().items()}, "opt_dict": {}}
    if isinstance(teacher, torch.nn.Module):
        teacher = {prefix + k: v for k, v in teacher.state_dict().items()}
    checkpoint["mean_teacher_state_dict"] = teacher
    return checkpoint


def _folder(tmp_path: Path, block: dict[str, Any], checkpoint: dict[str, Any]) -> Path:
    """An older model folder: ``checkpoints/120_checkpoint.pth.tar``, discovered (no checkpoint_paths)."""
    folder = tmp_path / "final_model"
    (folder / "checkpoints").mkdir(parents=True)
    torch.save(checkpoint, folder / "checkpoints" / "120_checkpoint.pth.tar")
    config = {"model_name": "Tiny", "inference": block}
    (folder / "model_inference_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("prefix", ["", "module."])
def test_the_mean_teachers_weights_are_loaded(tmp_path: Path, block: dict[str, Any], prefix: str) -> None:
    student, teacher = tiny_network(0), tiny_network(1)
    folder = _folder(tmp_path, block, _legacy(student, teacher, prefix=prefix))
    package = load_model_package(folder)
    loaded = load_checkpoint(package.checkpoints[0].path)
    assert loaded.format == "legacy" and loaded.mean_teacher and loaded.metadata == {"epoch": 120}
    [network] = load_networks(package)
    with torch.inference_mode():
        assert torch.equal(network(INPUT), teacher(INPUT))
        assert not torch.equal(network(INPUT), student(INPUT))


def test_a_legacy_checkpoint_without_a_teacher_loads_its_state_dict(tmp_path: Path, block: dict[str, Any]) -> None:
    student = tiny_network(0)
    checkpoint = _legacy(student, None)
    del checkpoint["mean_teacher_state_dict"]
    package = load_model_package(_folder(tmp_path, block, checkpoint))
    assert not load_checkpoint(package.checkpoints[0].path).mean_teacher
    [network] = load_networks(package)
    with torch.inference_mode():
        assert torch.equal(network(INPUT), student(INPUT))


@pytest.mark.parametrize("teacher", [None, {}, {"conv.weight": [1.0]}, "weights"])
def test_a_malformed_mean_teacher_is_refused(tmp_path: Path, block: dict[str, Any], teacher: Any) -> None:
    folder = _folder(tmp_path, block, _legacy(tiny_network(0), teacher))
    path = folder / "checkpoints" / "120_checkpoint.pth.tar"
    with pytest.raises(CheckpointError, match=rf"checkpoint {path}: its 'mean_teacher_state_dict' .* named tensors"):
        load_checkpoint(path)


def test_inspect_says_the_mean_teachers_weights_are_used(tmp_path: Path, block: dict[str, Any]) -> None:
    folder = _folder(tmp_path, block, _legacy(tiny_network(0), tiny_network(1)))
    result = CliRunner().invoke(app, ["inspect", "--model", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)["checkpoints"]
    assert entry["path"] == "checkpoints/120_checkpoint.pth.tar"
    assert entry["format"] == "legacy" and entry["mean_teacher"] is True
    text = CliRunner().invoke(app, ["inspect", "--model", str(folder)], env={"COLUMNS": "200"})
    assert text.exit_code == 0, text.output
    assert "legacy (mean teacher's weights)" in text.stdout
