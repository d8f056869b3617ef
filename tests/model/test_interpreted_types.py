"""RTROIInterpretedType per structure: from our block, from InnerEye's roi_interpreted_types list, ORGAN by default."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from innereye_batch.errors import ModelFolderError
from innereye_batch.model.package import load_model_package
from tests.model.conftest import TINY_BLOCK
from tests.model.test_package import _folder_with_checkpoint, _write_config


def _types(folder: Path) -> list[str]:
    return [s.interpreted_type for s in load_model_package(folder).segmentation.structures]


def _block(**structure_fields: Any) -> dict[str, Any]:
    block = copy.deepcopy(TINY_BLOCK)
    for entry, value in zip(block["structures"], structure_fields.get("types", ()), strict=False):
        entry["roi_interpreted_type"] = value
    return block


def test_default_is_organ(tmp_path: Path) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    _write_config(folder, {"model_name": "T", "inference": _block()})
    assert _types(folder) == ["ORGAN", "ORGAN"]


def test_per_structure_field_is_read_and_upper_cased(tmp_path: Path) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    _write_config(folder, {"model_name": "T", "inference": _block(types=["external", "AVOIDANCE"])})
    assert _types(folder) == ["EXTERNAL", "AVOIDANCE"]


def test_innereye_list_applies_to_the_block_structures(tmp_path: Path) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    _write_config(folder, {"model_name": "T", "roi_interpreted_types": ["CTV", "ORGAN"], "inference": _block()})
    assert _types(folder) == ["CTV", "ORGAN"]


def test_innereye_list_with_the_older_form_and_a_preset(tmp_path: Path) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    config = {
        "model_name": "HeadAndNeckMyHospital",
        "checkpoint_paths": ["checkpoints/last.ckpt"],
        "structure_names": ["external", "parotid_l", "ptv"],
        "colours": ["ff0000", "00ff00", "0000ff"],
        "fill_holes": [True, False, False],
        "roi_interpreted_types": ["EXTERNAL", "ORGAN", "PTV"],
    }
    _write_config(folder, config)
    assert _types(folder) == ["EXTERNAL", "ORGAN", "PTV"]


def test_interpreted_type_changes_the_fingerprint(tmp_path: Path) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    _write_config(folder, {"model_name": "T", "inference": _block()})
    organ = load_model_package(folder).fingerprint()
    _write_config(folder, {"model_name": "T", "inference": _block(types=["EXTERNAL"])})
    assert load_model_package(folder).fingerprint() != organ  # a different RT Structure Set: redo the series


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"roi_interpreted_types": ["ORGAN"]}, "'roi_interpreted_types': needs one type per structure"),
        ({"roi_interpreted_types": "ORGAN"}, "'roi_interpreted_types': needs one type per structure"),
        ({"roi_interpreted_types": ["ORGAN", "not/a code"]}, "'roi_interpreted_types\\[1\\]'"),
        ({"roi_interpreted_types": ["ORGAN", 3]}, "'roi_interpreted_types\\[1\\]'"),
        ({"types": ["A_VERY_LONG_TYPE_NAME"]}, "'inference.structures\\[0\\].roi_interpreted_type'"),
        ({"types": ["EXTERNAL"], "roi_interpreted_types": ["ORGAN", "ORGAN"]}, "disagrees"),
    ],
)
def test_bad_types_are_named_with_an_example(tmp_path: Path, config: dict[str, Any], message: str) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    document: dict[str, Any] = {"model_name": "T", "inference": _block(types=config.get("types", ()))}
    if "roi_interpreted_types" in config:
        document["roi_interpreted_types"] = config["roi_interpreted_types"]
    _write_config(folder, document)
    with pytest.raises(ModelFolderError, match=message) as raised:
        load_model_package(folder)
    assert "Example" in str(raised.value)
