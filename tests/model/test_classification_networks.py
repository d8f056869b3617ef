"""Classification architectures: the built-in CNN2D, torchvision's ResNet / DenseNet, and TorchScript programs."""

from __future__ import annotations

import builtins
import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from innereye_batch.engine.classify import classify_batch
from innereye_batch.engine.explain import explain_batch
from innereye_batch.errors import ModelFolderError
from innereye_batch.model.architectures import architecture_names, build_network, check_architecture_params
from innereye_batch.model.checkpoints import FROM_CHECKPOINT
from innereye_batch.model.classification import DEFAULT_GRADCAM_LAYERS
from innereye_batch.model.spec import ArchitectureSpec
from tests.engine.classifiers import cnn


def torchvision_works() -> bool:
    try:
        importlib.import_module("torchvision.models")
    except (ImportError, RuntimeError):
        return False
    return True


needs_torchvision = pytest.mark.skipif(
    not torchvision_works(),
    reason="torchvision is not installed or does not match this torch (PyPI's CUDA wheels beside a CPU torch)",
)


def test_builtin_architectures_are_registered() -> None:
    assert {"CNN2D", "ResNet", "DenseNet", "UNet3D"} <= set(architecture_names())
    assert check_architecture_params("resnet", {"depth": 34}) == []  # validated without building (no torchvision)
    assert check_architecture_params("DenseNet", {"layers": 3}) == ["unknown parameter 'layers' (accepted: depth)"]


@pytest.mark.parametrize(("channels", "size"), [(1, (64, 64)), (3, (48, 80)), (1, (8, 8))])
def test_cnn2d_returns_logits_for_any_size_and_channel_count(channels: int, size: tuple[int, int]) -> None:
    network = build_network(ArchitectureSpec("CNN2D", {"initial_feature_channels": 4, "num_blocks": 4}), channels, 5)
    with torch.no_grad():
        logits = network.eval()(torch.randn(2, channels, *size))
    assert logits.shape == (2, 5)
    layer = network.get_submodule(DEFAULT_GRADCAM_LAYERS["cnn2d"])
    with torch.no_grad():
        features = layer(torch.randn(1, channels, 64, 64))
    assert features.shape == (1, 32, 8, 8)  # 4 * 2**3 channels at 1 / 2**3 of the input


def test_cnn2d_global_max_pooling_takes_the_strongest_location() -> None:
    params = {"initial_feature_channels": 4, "num_blocks": 2, "global_pool": "max"}
    network = build_network(ArchitectureSpec("CNN2D", params), 1, 2).eval()
    image = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        features = network.features(image)
        expected = network.classifier(features.amax(dim=(2, 3)))
        torch.testing.assert_close(network(image), expected)


def test_cnn2d_rejects_bad_hyper_parameters() -> None:
    for params, words in [
        ({"num_blocks": 0}, "num_blocks"),
        ({"initial_feature_channels": 0}, "initial"),
        ({"dropout": 1.0}, "dropout"),
        ({"global_pool": "min"}, "global_pool"),
    ]:
        with pytest.raises(ValueError, match=words):
            build_network(ArchitectureSpec("CNN2D", params), 1, 2)


def test_without_torchvision_building_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fail(error: Exception) -> Any:
        def importer(name: str, *args: Any, **kwargs: Any) -> Any:
            if name.startswith("torchvision"):
                raise error
            return real_import(name, *args, **kwargs)

        return importer

    monkeypatch.setattr(builtins, "__import__", fail(ImportError("No module named 'torchvision'")))
    with pytest.raises(ModelFolderError, match=r"not installed: .*innereye-batch\[torchvision\].*from_checkpoint"):
        build_network(ArchitectureSpec("ResNet", {"depth": 18}), 1, 2)
    monkeypatch.setattr(builtins, "__import__", fail(RuntimeError("operator torchvision::nms does not exist")))
    with pytest.raises(ModelFolderError, match=r"fails to import .*nms.*does not match the installed torch"):
        build_network(ArchitectureSpec("DenseNet", {"depth": 121}), 1, 2)


@needs_torchvision
@pytest.mark.parametrize(("name", "depth", "first"), [("ResNet", 18, "conv1"), ("DenseNet", 121, "features.conv0")])
def test_torchvision_networks_keep_torchvision_parameter_names(name: str, depth: int, first: str) -> None:
    import torchvision.models as models

    reference = getattr(models, f"{name.lower()}{depth}")(weights=None, num_classes=4)
    three = build_network(ArchitectureSpec(name, {"depth": depth}), 3, 4)
    three.load_state_dict(reference.state_dict(), strict=True)  # a torchvision checkpoint loads as it is
    grey = build_network(ArchitectureSpec(name, {"depth": depth}), 1, 4)
    assert list(grey.state_dict()) == list(reference.state_dict())
    assert grey.get_submodule(first).weight.shape[1] == 1
    with torch.no_grad():
        assert grey.eval()(torch.randn(2, 1, 64, 64)).shape == (2, 4)


@needs_torchvision
@pytest.mark.parametrize(("name", "depth"), [("ResNet", 18), ("DenseNet", 121)])
def test_gradcam_default_layers_work_on_torchvision_networks(name: str, depth: int) -> None:
    network = build_network(ArchitectureSpec(name, {"depth": depth}), 1, 2).eval()
    maps = explain_batch(
        [network], torch.randn(2, 1, 64, 64), [0, 1], "gradcam", layer=DEFAULT_GRADCAM_LAYERS[name.lower()]
    )
    assert maps.shape == (2, 64, 64) and float(maps.max()) <= 1.0


def test_a_torch_export_classifier_runs_with_a_dynamic_batch_and_explains(tmp_path: Path) -> None:
    from innereye_batch.model.checkpoints import load_checkpoint

    original = cnn(0)
    batch = torch.randn(4, 1, 32, 40, generator=torch.Generator().manual_seed(1))
    program = torch.export.export(original, (batch,), dynamic_shapes={"x": {0: torch.export.Dim("batch", max=64)}})
    torch.export.save(program, tmp_path / "classifier.pt2")
    loaded = load_checkpoint(tmp_path / "classifier.pt2", trust_checkpoint=True)
    assert loaded.format == "torch_export"
    exported = loaded.module
    for images in (batch, batch[:1]):
        torch.testing.assert_close(
            classify_batch([exported], images, activation="softmax").mean,
            classify_batch([original], images, activation="softmax").mean,
            rtol=0,
            atol=1e-6,
        )
    maps = explain_batch([exported], batch, [0, 1, 2, 0], "integrated-gradients", n_steps=8)
    expected = explain_batch([original], batch, [0, 1, 2, 0], "integrated-gradients", n_steps=8)
    np.testing.assert_allclose(maps.numpy(), expected.numpy(), rtol=0, atol=1e-5)
    # Grad-CAM hooks a submodule, which an exported program does not keep as one: captum asserted, unexplained
    with pytest.raises(ValueError, match=r"cannot hook layer 'features'.*use integrated-gradients"):
        explain_batch([exported], batch, [0, 1, 2, 0], "gradcam", layer="features")


def _save_torchscript(tmp_path: Path, networks: list[torch.nn.Module]) -> list[Path]:
    paths = []
    for k, network in enumerate(networks):
        path = tmp_path / f"member{k}.pt"
        torch.jit.script(network).save(str(path))
        paths.append(path)
    return paths


def test_a_torchscript_classifier_runs_behind_trust_and_explains_with_gradients(tmp_path: Path) -> None:
    from innereye_batch.model.classification import parse_classification_architecture, parse_classification_block
    from tests.classifier_models import load_classifiers

    originals = [cnn(seed) for seed in (0, 1)]
    paths = _save_torchscript(tmp_path, originals)
    block = {
        "version": 1,
        "classes": ["a", "b", "c"],
        "architecture": {"name": FROM_CHECKPOINT},
        "input_size": [32, 40],
    }
    spec = parse_classification_block(block, tmp_path / "model_inference_config.json")
    architecture = parse_classification_architecture(block, tmp_path / "model_inference_config.json")
    assert spec.gradcam_layer is None  # a program has no default layer
    with pytest.raises(ModelFolderError, match="TorchScript archive"):
        load_classifiers(paths, architecture, spec)
    scripted = load_classifiers(paths, architecture, spec, trust_checkpoint=True)
    batch = torch.randn(4, 1, 32, 40, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        classify_batch(scripted, batch, activation="softmax").mean,
        classify_batch(originals, batch, activation="softmax").mean,
        rtol=0,
        atol=1e-6,
    )
    attributions = explain_batch(scripted, batch, [0, 1, 2, 0], "integrated-gradients", n_steps=8)
    expected = explain_batch(originals, batch, [0, 1, 2, 0], "integrated-gradients", n_steps=8)
    np.testing.assert_allclose(attributions.numpy(), expected.numpy(), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"cannot hook layer 'features'.*use integrated-gradients"):
        explain_batch(scripted, batch, [0, 1, 2, 0], "gradcam", layer="features")
