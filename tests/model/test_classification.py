"""The classification block: parsed into a validated ClassificationSpec; every problem names file, field, example."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from innereye_batch.errors import ModelFolderError
from innereye_batch.model.classification import (
    ClassificationSpec,
    IntensitySpec,
    network_channels,
    parse_classification_architecture,
    parse_classification_block,
)
from innereye_batch.model.spec import ArchitectureSpec

SOURCE = Path("/models/cxr/model_inference_config.json")
BLOCK: dict[str, Any] = {
    "version": 1,
    "task": "classification",
    "classes": ["normal", "nodule"],
    "activation": "softmax",
    "architecture": {"name": "CNN2D", "initial_feature_channels": 8, "num_blocks": 3},
    "input_size": [96, 112],
    "input_channels": 1,
    "intensity": {"apply_voi": False, "png_scaling": "min_max", "mean": 0.5, "std": [0.25]},
    "modalities": ["cr", "DX", "MG"],
    "_comment": "ignored",
}


def block(**changes: Any) -> dict[str, Any]:
    result = copy.deepcopy(BLOCK)
    for key, value in changes.items():
        if value is ...:
            result.pop(key)
        else:
            result[key] = value
    return result


def test_a_full_block_parses_into_the_spec() -> None:
    spec = parse_classification_block(BLOCK, SOURCE)
    assert spec.classes == ("normal", "nodule") and spec.activation == "softmax" and spec.thresholds == ()
    assert parse_classification_architecture(BLOCK, SOURCE) == ArchitectureSpec(
        "CNN2D", {"initial_feature_channels": 8, "num_blocks": 3}
    )
    assert spec.task == "classification"
    assert spec.input_size == (96, 112) and spec.input_channels == 1
    assert spec.intensity == IntensitySpec(apply_voi=False, png_scaling="min_max", mean=(0.5,), std=(0.25,))
    assert spec.modalities == ("CR", "DX", "MG")
    assert spec.gradcam_layer == "features"  # CNN2D's default
    assert spec.num_outputs == 2


def test_defaults() -> None:
    minimal = {k: BLOCK[k] for k in ("version", "classes", "architecture", "input_size")}
    spec = parse_classification_block(minimal, SOURCE)
    assert spec.activation == "softmax" and spec.input_channels == 1
    assert spec.intensity == IntensitySpec() and spec.modalities == ("CR", "DX")


def test_sigmoid_thresholds_per_class_default_to_one_half() -> None:
    spec = parse_classification_block(
        block(activation="sigmoid", classes=["effusion", {"name": "nodule", "threshold": 0.3}]), SOURCE
    )
    assert spec.thresholds == (0.5, 0.3)


def test_three_channels_take_per_channel_mean_and_std_and_torchvision_layers_default() -> None:
    spec = parse_classification_block(
        block(
            architecture={"name": "DenseNet", "depth": 121},
            input_channels=3,
            intensity={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        ),
        SOURCE,
    )
    assert spec.channel_values("mean") == (0.485, 0.456, 0.406)
    assert spec.gradcam_layer == "features.denseblock4"
    resnet = parse_classification_block(block(architecture={"name": "resnet", "depth": 50}), SOURCE)
    assert resnet.gradcam_layer == "layer4" and resnet.channel_values("std") == (0.25,)
    declared = parse_classification_block(block(gradcam_layer="features.1"), SOURCE)
    assert declared.gradcam_layer == "features.1"
    program = parse_classification_block(block(architecture={"name": "from_checkpoint"}), SOURCE)
    assert program.gradcam_layer is None


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"version": 2}, "version", "unsupported version"),
        ({"task": "segmentation"}, "task", 'must be "classification"'),
        ({"classes": ...}, "classes", "missing"),
        ({"classes": []}, "classes", "non-empty list"),
        ({"classes": ["a", "a"]}, "classes", "repeated: a"),
        ({"classes": ["a", {"label": "b"}]}, "classes[1]", "needs a non-empty 'name'"),
        ({"classes": ["a", {"name": "b", "threshold": 1.5}]}, "classes[1].threshold", "in (0, 1)"),
        ({"classes": ["a", {"name": "b", "threshold": 0.2}]}, "classes", "thresholds apply to sigmoid"),
        ({"activation": "relu"}, "activation", 'must be "softmax" or "sigmoid"'),
        ({"architecture": {"name": "VGG"}}, "architecture", "unknown architecture 'VGG'"),
        ({"architecture": {"name": "CNN2D", "width": 3}}, "architecture", "unknown parameter 'width'"),
        ({"input_size": [96]}, "input_size", "two positive integers"),
        ({"input_size": [96, 0]}, "input_size", "two positive integers"),
        ({"input_channels": 2}, "input_channels", "must be 1 or 3"),
        ({"intensity": {"mean": [0.1, 0.2, 0.3]}}, "intensity.mean", "needs 1 or 1 values"),
        ({"intensity": {"std": 0}}, "intensity.std", "must be > 0"),
        ({"intensity": {"apply_voi": "yes"}}, "intensity.apply_voi", "true or false"),
        ({"intensity": {"png_scaling": "percentile"}}, "intensity.png_scaling", '"full_range" or "min_max"'),
        ({"intensity": {"gamma": 2}}, "intensity", "unknown key(s) gamma"),
        ({"modalities": []}, "modalities", "non-empty list"),
        ({"gradcam_layer": ""}, "gradcam_layer", "module name or null"),
        ({"activaton": "softmax"}, "activaton", "did you mean activation?"),
        ({"structures": ["a"]}, "structures", "unknown field(s) for a classification model"),
    ],
)
def test_problems_name_the_file_the_field_and_give_an_example(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ModelFolderError) as caught:
        parse_classification_block(block(**changes), SOURCE)
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: field 'inference.{field}'"), message
    assert words in message
    key = field.split(".")[0].split("[")[0]
    if key in ("classes", "activation", "architecture", "input_size", "input_channels", "intensity", "modalities"):
        assert "Example: " in message


def test_the_spec_validates_itself_when_built() -> None:
    good = {"classes": ("a", "b"), "input_size": (8, 8)}
    ClassificationSpec(**good)  # type: ignore[arg-type]
    for changes, words in [
        ({"classes": ("a",)}, "at least two classes"),
        ({"classes": ("a", "a")}, "repeated"),
        ({"thresholds": (0.5, 0.5)}, "thresholds apply to sigmoid"),
        ({"activation": "sigmoid", "thresholds": (0.5,)}, "one threshold in (0, 1) per class"),
        ({"input_size": (8, -1)}, "input_size"),
        ({"input_channels": 2}, "input_channels"),
        ({"intensity": IntensitySpec(mean=(0.1, 0.2))}, "intensity mean needs 1 or 1"),
        ({"modalities": ()}, "modalities"),
    ]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            ClassificationSpec(**{**good, **changes})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="std"):
        IntensitySpec(std=(0.0,))
    sigmoid = ClassificationSpec(**{**good, "activation": "sigmoid"})  # type: ignore[arg-type]
    assert sigmoid.thresholds == (0.5, 0.5)


def test_a_written_model_folder_loads_back_strictly(tmp_path: Path) -> None:
    import torch

    from innereye_batch.model.architectures import build_network
    from innereye_batch.model.export import write_model_folder
    from tests.classifier_models import load_classifiers, read_classification_folder

    spec = parse_classification_block(BLOCK, SOURCE)
    assert [c.name for c in network_channels(spec)] == ["grey"]
    torch.manual_seed(0)
    architecture = parse_classification_architecture(BLOCK, SOURCE)
    trained = [build_network(architecture, 1, 2).eval() for _ in range(2)]
    folder = write_model_folder(tmp_path / "cxr", trained, model_name="Cxr", inference_block=BLOCK)
    read_spec, read_architecture, paths = read_classification_folder(folder)
    assert (read_spec, read_architecture) == (spec, architecture)
    by_path = {"checkpoints/last.ckpt": trained[0], "checkpoints/OTHER_RUNS/1/last.ckpt": trained[1]}
    originals = [by_path[p.relative_to(folder).as_posix()] for p in paths]
    image = torch.randn(2, 1, 96, 112)
    with torch.no_grad():
        for loaded, original in zip(load_classifiers(paths, architecture, spec), originals, strict=True):
            torch.testing.assert_close(loaded(image), original(image), rtol=0, atol=0)


def test_comment_keys_inside_entries_are_comments() -> None:
    """As the docs say of every entry: "_" keys in the architecture, intensity and a class are comments (they
    were refused as unknown)."""
    commented = block(
        architecture={**BLOCK["architecture"], "_comment": "as trained"},
        intensity={**BLOCK["intensity"], "_why": "PNG convention"},
        classes=["normal", {"name": "nodule", "threshold": 0.4, "_note": "tuned on validation"}],
        activation="sigmoid",
    )
    spec = parse_classification_block(commented, SOURCE)
    assert spec.classes == ("normal", "nodule") and spec.thresholds[1] == 0.4
    assert "_comment" not in parse_classification_architecture(commented, SOURCE).params
