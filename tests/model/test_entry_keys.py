"""Unknown keys inside the block's entries (structures, channels, normalisation, postprocessing, architecture)
are refused with a "did you mean" hint, as at the top level: a misspelt key would otherwise fall back to its
default (a channel that takes every series of its modality, a structure of the default colour and type)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from innereye_batch.errors import ModelFolderError
from innereye_batch.model.export import write_model_folder
from innereye_batch.model.package import load_model_package
from tests.model.conftest import tiny_network


def _load(tmp_path: Path, block: dict[str, Any]) -> Any:
    folder = write_model_folder(tmp_path / "m", [tiny_network()], model_name="Tiny", inference_block=block)
    return load_model_package(folder)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"channels": [{"name": "t2", "modality": "MR", "series_descripton": "(?i)t2"}]},
            "field 'inference.channels[0]': unknown key(s) series_descripton (did you mean series_description?); "
            "accepted: name, modality, series_description",
        ),
        (
            {"structures": [{"name": "liver", "color": [0, 255, 0]}, "spleen"]},
            "field 'inference.structures[0]': unknown key(s) color (did you mean colour?); "
            "accepted: name, colour, roi_interpreted_type",
        ),
        (
            {"structures": ["liver", {"name": "body", "roi_type": "EXTERNAL"}]},
            "field 'inference.structures[1]': unknown key(s) roi_type",
        ),
        (
            {"normalisation": [{"method": "ct_window", "level": 40, "window": 400, "output_rnage": [0, 1]}]},
            "field 'inference.normalisation[0]': unknown key(s) output_rnage (did you mean output_range?)",
        ),
        (
            {"postprocessing": {"fill_hole": ["liver"]}},
            "field 'inference.postprocessing': unknown key(s) fill_hole (did you mean fill_holes?)",
        ),
        (
            {"architecture": {"name": "from_checkpoint", "initial_feature_channels": 2}},
            "'from_checkpoint' runs the checkpoint's own program and takes no parameters, got initial_feature_channels",
        ),
    ],
)
def test_unknown_keys_in_entries_are_refused(
    tmp_path: Path, block: dict[str, Any], change: dict[str, Any], expected: str
) -> None:
    block.update(change)
    with pytest.raises(ModelFolderError) as caught:
        _load(tmp_path, block)
    message = str(caught.value)
    assert expected in message
    assert "model_inference_config.json" in message and "Example:" in message


def test_known_keys_and_comments_in_entries_load(tmp_path: Path, block: dict[str, Any]) -> None:
    block["structures"] = [
        {"name": "liver", "colour": [0, 255, 0], "roi_interpreted_type": "organ", "_note": "a comment"},
        {"name": "body", "roi_interpreted_type": "EXTERNAL"},
    ]
    block["channels"] = [{"name": "t2", "modality": "MR", "series_description": "(?i)t2", "_why": "T2 only"}]
    block["normalisation"] = {"method": "zscore", "_comment": "per image"}
    block["postprocessing"] = {"fill_holes": ["liver"], "_comment": "as trained"}
    block["architecture"] = {**block["architecture"], "_comment": "InnerEye's defaults"}  # it was refused
    package = _load(tmp_path, copy.deepcopy(block))
    assert "_comment" not in package.architecture.params
    [channel] = package.channels
    assert (channel.name, channel.modality, channel.series_description) == ("t2", "MR", "(?i)t2")
    structures = package.segmentation.structures
    assert [(s.name, s.colour, s.interpreted_type) for s in structures] == [
        ("liver", (0, 255, 0), "ORGAN"),
        ("body", (255, 0, 0), "EXTERNAL"),
    ]
    assert package.segmentation.postprocessing.fill_holes == ("liver",)


@pytest.mark.parametrize("folder", ["final_model", "cxr_model"])
def test_the_sample_models_still_load(folder: str) -> None:
    assert load_model_package(Path(__file__).resolve().parents[2] / "sample_data" / folder).checkpoints


def test_more_structures_than_an_8_bit_label_map_holds_are_refused(block: dict[str, Any]) -> None:
    """256 structures: label 256 would wrap to 0 in the uint8 label map (with a summed-probability rule the
    device's argmax skipped the check that refuses it, and wrote label 260 as 4)."""
    from innereye_batch.model.inference_block import parse_inference_block

    block["structures"] = [f"s{i}" for i in range(255)]
    block.pop("postprocessing", None)  # it names the tiny block's structures
    assert len(parse_inference_block(block, Path("x.json"))["task_spec"].structures) == 255
    block["structures"].append("one_too_many")
    with pytest.raises(ModelFolderError, match="256 structures do not fit an 8-bit label map"):
        parse_inference_block(block, Path("x.json"))


def test_size_multiples_are_per_axis(block: dict[str, Any]) -> None:
    """A UNet3D downsampling (1, 2, 2) twice needs multiples of (1, 4, 4): a patch 6 slices deep is InnerEye's to
    run (it was refused, every axis held to 4); one number still sets every axis."""
    from innereye_batch.model.inference_block import parse_inference_block

    block["architecture"] = {**block["architecture"], "downsampling_factor": [1, 2, 2]}
    block["patch_size"], block["stride"] = [6, 8, 8], [3, 4, 4]
    assert parse_inference_block(block, Path("x.json"))["task_spec"].inference.size_multiple == (1, 4, 4)
    block["size_multiple"] = [4, 8, 8]
    with pytest.raises(ModelFolderError, match=r"each size must be a multiple of \[4, 8, 8\]"):
        parse_inference_block(block, Path("x.json"))
    block["patch_size"], block["size_multiple"] = [8, 8, 8], 8
    assert parse_inference_block(block, Path("x.json"))["task_spec"].inference.size_multiple == (8, 8, 8)
    block["size_multiple"] = [1, 2, 4]
    with pytest.raises(ModelFolderError, match=r"must be a multiple of \[1, 4, 4\], which UNet3D needs"):
        parse_inference_block(block, Path("x.json"))
