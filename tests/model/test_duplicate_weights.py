"""Two ensemble members of the same weights would count twice in the ensemble's mean: refused when the weights
load (``load_networks``, which ``inspect`` and ``run`` share), whatever else the files hold or however they were
saved; the whole-file check of the package catches only identical files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from innereye_batch.cli import app
from innereye_batch.errors import CheckpointError
from innereye_batch.model.checkpoints import load_networks, weights_digest
from innereye_batch.model.export import lightning_checkpoint
from innereye_batch.model.package import load_model_package
from tests.factory import write_series
from tests.model.conftest import tiny_network

Saver = Callable[[torch.nn.Module, Path], None]


def _lightning(epoch: int) -> Saver:
    return lambda network, path: torch.save(lightning_checkpoint(network, epoch=epoch), path)


def _legacy(network: torch.nn.Module, path: Path) -> None:
    state = {f"module.{k}": v for k, v in network.state_dict().items()}  # DataParallel names
    torch.save({"epoch": 120, "state_dict": state, "opt_dict": {}}, path)


def _channels_last(network: torch.nn.Module, path: Path) -> None:
    torch.save(network.to(memory_format=torch.channels_last_3d).state_dict(), path)  # type: ignore[call-overload]


def _folder(tmp_path: Path, block: dict[str, Any], members: list[tuple[torch.nn.Module, Saver, str]]) -> Path:
    folder = tmp_path / "final_ensemble_model"
    for network, save, relative in members:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        save(network, folder / relative)
    config = {"model_name": "Tiny", "checkpoint_paths": [r for _, _, r in members], "inference": block}
    (folder / "model_inference_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("save", "name"),
    [
        (_lightning(epoch=120), "last.ckpt"),  # same weights, another epoch: other bytes
        (_legacy, "120_checkpoint.pth.tar"),  # the same network as a legacy .pth.tar
        (_channels_last, "weights.pt"),  # a plain state dict, saved in another memory layout
    ],
)
def test_the_same_weights_twice_are_refused(tmp_path: Path, block: dict[str, Any], save: Saver, name: str) -> None:
    twice, other = tiny_network(0), tiny_network(1)
    folder = _folder(
        tmp_path,
        block,
        [
            (twice, _lightning(epoch=119), "checkpoints/last.ckpt"),
            (other, _lightning(epoch=119), "checkpoints/OTHER_RUNS/1/last.ckpt"),
            (tiny_network(0), save, f"checkpoints/OTHER_RUNS/2/{name}"),
        ],
    )
    package = load_model_package(folder)  # the files differ: the package's whole-file check passes
    assert len(package.checkpoints) == 3
    first, second = folder / "checkpoints/last.ckpt", folder / f"checkpoints/OTHER_RUNS/2/{name}"
    expected = f"checkpoint {second}: holds the same weights as checkpoint {first}"
    with pytest.raises(CheckpointError) as caught:
        load_networks(package)
    assert expected in str(caught.value) and "would count that member twice" in str(caught.value)
    result = CliRunner().invoke(app, ["inspect", "--model", str(folder), "--json"])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["loadable"] is False and expected in report["error"]


def test_run_refuses_the_same_weights_twice(tmp_path: Path, block: dict[str, Any]) -> None:
    folder = _folder(
        tmp_path,
        block,
        [
            (tiny_network(0), _lightning(epoch=1), "checkpoints/last.ckpt"),
            (tiny_network(0), _lightning(epoch=2), "checkpoints/OTHER_RUNS/1/last.ckpt"),
        ],
    )
    write_series(tmp_path / "scans" / "ct", shape=(8, 16, 16), seed=1)
    arguments = ["run", "--model", str(folder), "--input", str(tmp_path / "scans"), "--output", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*arguments, "--workers", "0"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "holds the same weights as checkpoint" in " ".join(result.output.split())


def test_different_weights_load_and_the_digest_sees_every_difference(tmp_path: Path, block: dict[str, Any]) -> None:
    folder = _folder(
        tmp_path,
        block,
        [
            (tiny_network(0), _lightning(epoch=1), "checkpoints/last.ckpt"),
            (tiny_network(1), _lightning(epoch=1), "checkpoints/OTHER_RUNS/1/last.ckpt"),
        ],
    )
    assert len(load_networks(load_model_package(folder))) == 2
    state = {k: v.clone() for k, v in tiny_network(0).state_dict().items()}
    digest = weights_digest(state)
    assert digest == weights_digest(dict(reversed(state.items())))  # name order, not insertion order
    assert digest != weights_digest({**state, "output_layer.bias": state["output_layer.bias"].double()})  # dtype
    assert digest != weights_digest({**state, "output_layer.bias": state["output_layer.bias"].reshape(1, -1)})
    renamed = {("renamed" if k == "output_layer.bias" else k): v for k, v in state.items()}
    assert digest != weights_digest(renamed)
    nudged = state["output_layer.weight"].clone()
    nudged.view(-1)[0] += 1e-6
    assert digest != weights_digest({**state, "output_layer.weight": nudged})
    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}  # no numpy dtype
    assert weights_digest(bf16) == weights_digest({k: v.clone() for k, v in bf16.items()}) != digest


class _Calibration:
    """A module's extra state: an object whose repr holds its memory address."""

    def __init__(self, scale: float) -> None:
        self.scale = scale


def test_extra_state_and_sparse_tensors_are_digested_by_their_content() -> None:
    """Two loads of one checkpoint give extra-state objects at different addresses: hashing their repr saw two
    different members, and the same weights counted twice; a sparse tensor made the digest raise."""
    state = {k: v.clone() for k, v in tiny_network(0).state_dict().items()}
    one, two = _Calibration(0.5), _Calibration(0.5)
    assert repr(one) != repr(two)
    assert weights_digest({**state, "_extra_state": one}) == weights_digest({**state, "_extra_state": two})
    assert weights_digest({**state, "_extra_state": one}) != weights_digest({**state, "_extra_state": _Calibration(2)})
    dense = torch.tensor([[0.0, 1.5], [2.0, 0.0]])
    assert weights_digest({"w": dense.to_sparse()}) == weights_digest({"w": dense})
    assert weights_digest({"w": (dense * 2).to_sparse()}) != weights_digest({"w": dense})


def test_a_checkpoint_replaced_after_the_folder_was_read_is_refused(tmp_path: Path, block: dict[str, Any]) -> None:
    """A deploy during a long scan: the run hashed the old file and loaded the new one, so its records (and the
    done records a rerun trusts) named weights other than those that made the outputs."""
    folder = _folder(tmp_path, block, [(tiny_network(0), _lightning(epoch=1), "checkpoints/last.ckpt")])
    package = load_model_package(folder)
    _lightning(epoch=1)(tiny_network(1), folder / "checkpoints" / "last.ckpt")  # replaced in place
    with pytest.raises(CheckpointError, match="changed since the model folder was read"):
        load_networks(package)
    assert len(load_networks(load_model_package(folder))) == 1  # read again, it loads
