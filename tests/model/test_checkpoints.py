"""Checkpoints: every format round-trips strictly with identical outputs; unsafe pickles and programs are refused."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch

from innereye_batch.errors import CheckpointError
from innereye_batch.model.checkpoints import load_checkpoint, load_networks, sha256_file
from innereye_batch.model.export import lightning_checkpoint, write_model_folder
from innereye_batch.model.package import load_model_package
from innereye_batch.model.spec import ArchitectureSpec
from tests.model.conftest import tiny_network

INPUT = torch.linspace(-1, 1, 2 * 8 * 8 * 8).reshape(2, 1, 8, 8, 8)


def _save_lightning(network: torch.nn.Module, path: Path) -> None:
    torch.save(lightning_checkpoint(network, epoch=3, global_step=12), path)


def _save_legacy(network: torch.nn.Module, path: Path) -> None:
    optimiser = torch.optim.Adam(network.parameters())
    torch.save({"epoch": 120, "state_dict": network.state_dict(), "opt_dict": optimiser.state_dict()}, path)


def _save_plain(network: torch.nn.Module, path: Path) -> None:
    torch.save(network.state_dict(), path)


def _save_torchscript(network: torch.nn.Module, path: Path) -> None:
    torch.jit.script(network).save(str(path))


def _save_export(network: torch.nn.Module, path: Path) -> None:
    torch.export.save(torch.export.export(network, (INPUT,)), path)


# File names deliberately disagree with the content: the format must come from the bytes.
FORMATS = [
    ("lightning", _save_lightning, "weights.bin", False),
    ("legacy", _save_legacy, "120_checkpoint.pth.tar", False),
    ("state_dict", _save_plain, "model.ckpt", False),
    ("torchscript", _save_torchscript, "model.pt2", True),
    ("torch_export", _save_export, "program.pth", True),
]


def _package_with(tmp_path: Path, block: dict[str, Any], checkpoint: Path) -> Any:
    folder = write_model_folder(tmp_path / "final_model", [tiny_network()], model_name="Tiny", inference_block=block)
    package = load_model_package(folder)
    ref = dataclasses.replace(  # the package as if read with this file: its checksum too
        package.checkpoints[0], path=checkpoint, sha256=sha256_file(checkpoint), size_bytes=checkpoint.stat().st_size
    )
    return dataclasses.replace(package, checkpoints=(ref,))


@pytest.mark.parametrize(("expected_format", "save", "filename", "needs_trust"), FORMATS)
def test_round_trip_gives_identical_outputs(
    tmp_path: Path, block: dict[str, Any], expected_format: str, save: Any, filename: str, needs_trust: bool
) -> None:
    original = tiny_network(seed=5)
    path = tmp_path / filename
    save(original, path)
    loaded = load_checkpoint(path, trust_checkpoint=needs_trust)
    assert loaded.format == expected_format
    assert set(loaded.state_dict) == set(original.state_dict())
    [network] = load_networks(_package_with(tmp_path, block, path), trust_checkpoint=needs_trust)
    assert not network.training
    with torch.inference_mode():
        assert torch.equal(network(INPUT), original(INPUT))


def test_lightning_metadata_and_prefix(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    _save_lightning(tiny_network(), path)
    raw = torch.load(path, weights_only=True)
    assert all(key.startswith("model.") for key in raw["state_dict"])
    loaded = load_checkpoint(path)
    assert loaded.metadata == {"epoch": 3, "global_step": 12}
    assert not any(key.startswith("model.") for key in loaded.state_dict)


@pytest.mark.parametrize(("save", "filename"), [(_save_torchscript, "m.ts"), (_save_export, "m.pt2")])
def test_programs_are_refused_without_trust(tmp_path: Path, save: Any, filename: str) -> None:
    path = tmp_path / filename
    save(tiny_network(), path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint") as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)


class _RunsShell:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


def _malicious_checkpoint(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "last.ckpt"
    payload = lightning_checkpoint(tiny_network())
    payload["callbacks"] = {"evil": _RunsShell(f"touch {shlex.quote(str(marker))}")}
    torch.save(payload, path)
    return path


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _malicious_checkpoint(tmp_path, marker)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "--trust-checkpoint" in message and "system" in message
    assert not marker.exists()


def test_malicious_pickle_loads_when_trusted(tmp_path: Path) -> None:
    marker = tmp_path / "harmless-marker"
    path = _malicious_checkpoint(tmp_path, marker)
    loaded = load_checkpoint(path, trust_checkpoint=True)
    assert marker.exists()  # trusting a file means its code runs: here, a harmless touch
    assert loaded.format == "lightning"


def test_mismatched_checkpoint_names_file_and_keys(tmp_path: Path, block: dict[str, Any]) -> None:
    path = tmp_path / "last.ckpt"
    network = tiny_network()
    state = {f"model.{k}": v for k, v in network.state_dict().items()}
    del state["model.output_layer.bias"]
    state["model.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state, "epoch": 1}, path)
    with pytest.raises(CheckpointError) as caught:
        load_networks(_package_with(tmp_path, block, path))
    message = str(caught.value)
    assert str(path) in message
    assert "missing keys (1): output_layer.bias" in message
    assert "unexpected keys (1): extra.weight" in message


def test_shape_mismatch_is_reported(tmp_path: Path, block: dict[str, Any]) -> None:
    path = tmp_path / "last.ckpt"
    _save_lightning(tiny_network(), path)
    package = _package_with(tmp_path, block, path)
    wider = dataclasses.replace(
        package, architecture=ArchitectureSpec("UNet3D", {"initial_feature_channels": 4, "num_downsampling_paths": 2})
    )
    expected = r"shape mismatch \(\d+\): .*_layers.0.block1.conv1.weight: checkpoint \(2, 1, 3, 3, 3\) vs network \(4,"
    with pytest.raises(CheckpointError, match=expected):
        load_networks(wider)


def test_an_architecture_far_too_wide_for_its_weights_is_refused_before_it_is_built(
    tmp_path: Path, block: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped width (a million channels) was built before its shapes were compared with the checkpoint's:
    a RuntimeError asking for 108 TB, a traceback. Its shapes are now compared on the meta device first."""
    from innereye_batch.model import architectures

    path = tmp_path / "last.ckpt"
    _save_lightning(tiny_network(), path)
    package = _package_with(tmp_path, block, path)
    huge = dataclasses.replace(
        package,
        architecture=ArchitectureSpec("UNet3D", {"initial_feature_channels": 1_000_000, "num_downsampling_paths": 2}),
    )
    built_on: list[str] = []
    original = architectures.build_network

    def watched(*args: Any, **kwargs: Any) -> torch.nn.Module:
        network = original(*args, **kwargs)
        built_on.append(next(network.parameters()).device.type)
        return network

    monkeypatch.setattr(architectures, "build_network", watched)
    with pytest.raises(CheckpointError, match=r"checkpoint \(2, 1, 3, 3, 3\) vs network \(1000000,"):
        load_networks(huge)
    assert built_on == ["meta"]  # never in memory
    assert len(load_networks(package)) == 1 and built_on == ["meta", "meta", "cpu"]  # a match is built for real


def test_damaged_and_foreign_files_give_checkpoint_errors(tmp_path: Path) -> None:
    junk = tmp_path / "last.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot be read") as caught:
        load_checkpoint(junk)
    assert "refused" not in str(caught.value)
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    with pytest.raises(CheckpointError, match="unrecognised content"):
        load_checkpoint(listing)
    with pytest.raises(CheckpointError, match="file not found"):
        load_checkpoint(tmp_path / "absent.ckpt")


def test_sha256_file_streams_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = os.urandom(3 * 1024 + 17)
    path.write_bytes(data)
    assert sha256_file(path, chunk_bytes=1000) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_weight_refuses_its_checkpoint(tmp_path: Path, block: dict[str, Any], value: float) -> None:
    """One NaN weight turns every output NaN, which argmax reads as background: an empty segmentation reported
    ok. The checkpoint is refused, naming the file and the tensor."""
    path = tmp_path / "last.ckpt"
    network = tiny_network()
    with torch.no_grad():
        network.output_layer.weight[0, 0, 0, 0, 0] = value
    _save_lightning(network, path)
    with pytest.raises(CheckpointError, match=rf"{path}: NaN or infinite weights in output_layer\.weight$"):
        load_networks(_package_with(tmp_path, block, path))


def test_a_lightning_state_dict_of_other_values_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    state = {f"model.{k}": v for k, v in tiny_network().state_dict().items()}
    state["model.output_layer.bias"] = None
    torch.save({"state_dict": state, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="holds something other than named tensors"):
        load_checkpoint(path)


NORMS_AND_DROPOUTS = {
    "batch norm, dropout": lambda: [torch.nn.BatchNorm3d(4), torch.nn.Dropout(0.5)],
    "feature dropout": lambda: [torch.nn.BatchNorm3d(4), torch.nn.Dropout3d(0.5)],
    "alpha dropouts": lambda: [torch.nn.AlphaDropout(0.5), torch.nn.FeatureAlphaDropout(0.5)],
    "instance norm, tracked": lambda: [torch.nn.InstanceNorm3d(4, affine=True, track_running_stats=True)],
    "batch norm, untracked": lambda: [torch.nn.BatchNorm3d(4, track_running_stats=False)],
}
"""Layers that compute otherwise in training (an untracked batch norm: the batch's statistics in eval mode too)."""


def _conv_net(layers: str = "batch norm, dropout", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    middle = NORMS_AND_DROPOUTS[layers]()
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), *middle, torch.nn.Conv3d(4, 3, 3, padding=1))
    with torch.no_grad():
        for layer in middle:
            if getattr(layer, "running_mean", None) is not None:
                layer.running_mean.uniform_(-1.0, 1.0)
                layer.running_var.uniform_(0.5, 2.0)
    return network


@pytest.mark.parametrize("layers", sorted(NORMS_AND_DROPOUTS))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_an_exported_program_runs_as_in_eval_mode_whatever_its_batch(tmp_path: Path, mode: str, layers: str) -> None:
    """A program exported from a module left in training mode normalised each batch by its own statistics and
    dropped activations at random: a patch's posteriors depended on the patches batched with it, and on chance
    (eval() cannot switch a program). Loaded, it computes what the module computes in eval mode."""
    network = _conv_net(layers)
    getattr(network, mode)()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(network, (torch.zeros(2, 1, 8, 8, 8),), dynamic_shapes=[{0: batch}])
    torch.export.save(program, tmp_path / "program.pt2")

    module = load_checkpoint(tmp_path / "program.pt2", trust_checkpoint=True).module
    assert module is not None
    patches = torch.randn(4, 1, 8, 8, 8)
    with torch.no_grad():
        expected = network.eval()(patches)
        together = module(patches)
        alone = torch.cat([module(patches[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, expected, rtol=1e-5, atol=1e-5)
    if layers != "batch norm, untracked":  # that one normalises by its batch in eval mode too
        torch.testing.assert_close(alone, expected, rtol=1e-5, atol=1e-5)


def test_a_segmentation_program_runs_through_the_predictor(tmp_path: Path) -> None:
    """predict_posteriors called eval() on every member: an exported program raised NotImplementedError, and
    every series of such a model failed."""
    from innereye_batch.dicom.geometry import Geometry
    from innereye_batch.model.checkpoints import FROM_CHECKPOINT
    from innereye_batch.model.spec import (
        CheckpointRef,
        InferenceSpec,
        ModelPackage,
        Normalisation,
        SegmentationSpec,
        Structure,
    )
    from innereye_batch.tasks.segmentation import SegmentationPredictor

    network = _conv_net().eval()
    path = tmp_path / "seg.pt2"
    torch.export.save(torch.export.export(network, (torch.zeros(4, 1, 8, 8, 8),)), path)
    spec = SegmentationSpec(
        structures=(Structure("a"), Structure("b")),
        normalisation=(Normalisation("none"),),
        inference=InferenceSpec(patch_size=(8, 8, 8), stride=(8, 8, 8), stitching="average"),
    )
    package = ModelPackage(
        folder=tmp_path,
        name="Program",
        task_spec=spec,
        checkpoints=(CheckpointRef(path, sha256_file(path), path.stat().st_size),),
        architecture=ArchitectureSpec(FROM_CHECKPOINT),
    )
    networks = load_networks(package, device="cpu", trust_checkpoint=True)
    predictor = SegmentationPredictor(package, networks, torch.device("cpu"), patch_batch=4)
    image = torch.randn(1, 16, 16, 16)
    geometry = Geometry(
        shape=(16, 16, 16), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)
    )

    labels, _ = predictor.label_map(image, geometry)

    with torch.no_grad():  # the 16-cube is 8 patches of 8: the module on each, no overlap
        patches = image.reshape(1, 2, 8, 2, 8, 2, 8).permute(1, 3, 5, 0, 2, 4, 6).reshape(8, 1, 8, 8, 8)
        expected = network(patches).argmax(1).reshape(2, 2, 2, 8, 8, 8).permute(0, 3, 1, 4, 2, 5).reshape(16, 16, 16)
    assert (labels == expected.numpy()).all()


@pytest.mark.parametrize("layers", ["batch norm, dropout", "alpha dropouts"])
def test_a_decomposed_training_program_is_refused(tmp_path: Path, layers: str) -> None:
    """Decomposed, training-mode batch norm and dropout (a random draw) have no flag to switch: such a program is
    refused, with the fix."""
    network = _conv_net(layers).train()
    program = torch.export.export(network, (torch.zeros(2, 1, 8, 8, 8),)).run_decompositions()
    torch.export.save(program, tmp_path / "program.pt2")
    with pytest.raises(CheckpointError, match=r"exported in training mode .*model\.eval\(\)"):
        load_checkpoint(tmp_path / "program.pt2", trust_checkpoint=True)
