"""The inference block's summed-probability and slice-exclusion rules: parsing, errors, ``if_present``; the
HeadAndNeck preset carries HeadAndNeckBase's rules."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from innereye_batch.errors import ModelFolderError
from innereye_batch.model.export import lightning_checkpoint
from innereye_batch.model.inference_block import parse_inference_block
from innereye_batch.model.package import load_model_package
from innereye_batch.model.presets import HEAD_AND_NECK_STRUCTURES, find_preset
from innereye_batch.model.spec import PostProcessing, SegmentationSpec, SliceExclusionRule, SummedProbabilityRule
from innereye_batch.model.spec import Structure as StructureSpec
from tests.model.conftest import tiny_network

FILE = Path("model_inference_config.json")
SUMMED = {"first_class": "liver", "second_class": "spleen", "external_class": "body"}
SLICES = {"higher_class": "spleen", "lower_class": "liver", "higher_dominates": True}


@pytest.fixture
def ruled(block: dict[str, Any]) -> dict[str, Any]:
    block["structures"].append({"name": "body"})
    block["postprocessing"]["summed_probability_rules"] = [dict(SUMMED)]
    block["postprocessing"]["slice_exclusion_rules"] = [dict(SLICES), {**SLICES, "higher_dominates": False}]
    return block


def _error(block: dict[str, Any]) -> str:
    with pytest.raises(ModelFolderError) as caught:
        parse_inference_block(block, FILE)
    return str(caught.value)


def test_rules_parse_in_order(ruled: dict[str, Any]) -> None:
    post = parse_inference_block(ruled, FILE)["task_spec"].postprocessing
    assert post.summed_probability_rules == (SummedProbabilityRule("liver", "spleen", "body"),)
    assert post.slice_exclusion_rules == (
        SliceExclusionRule("spleen", "liver", True),
        SliceExclusionRule("spleen", "liver", False),
    )


def test_no_rules_by_default(block: dict[str, Any]) -> None:
    post = parse_inference_block(block, FILE)["task_spec"].postprocessing
    assert post.summed_probability_rules == () and post.slice_exclusion_rules == ()


@pytest.mark.parametrize("key", ["summed_probability_rules", "slice_exclusion_rules"])
def test_unknown_structure_is_named_with_a_hint(ruled: dict[str, Any], key: str) -> None:
    rule = ruled["postprocessing"][key][0]
    rule["first_class" if "first_class" in rule else "lower_class"] = "livr"
    message = _error(ruled)
    assert f"field 'postprocessing.{key}[0]'" in message
    assert "unknown structure(s) livr (did you mean liver?)" in message and "Example:" in message


@pytest.mark.parametrize(
    "key, change, expected",
    [
        (
            "summed_probability_rules",
            {"frist_class": "liver"},
            "unknown key(s) frist_class (did you mean first_class?)",
        ),
        ("slice_exclusion_rules", {"higher": "spleen"}, "unknown key(s) higher (did you mean higher_class"),
        ("slice_exclusion_rules", {"higher_dominates": "yes"}, "higher_dominates': must be true or false"),
        ("slice_exclusion_rules", {"if_present": 1}, "if_present': must be true or false"),
        ("summed_probability_rules", {"external_class": 3}, "external_class': must be a structure name, got 3"),
    ],
)
def test_malformed_rules_are_refused(ruled: dict[str, Any], key: str, change: dict[str, Any], expected: str) -> None:
    ruled["postprocessing"][key][0].update(change)
    assert expected in _error(ruled)


def test_missing_fields_and_wrong_types_are_refused(ruled: dict[str, Any]) -> None:
    del ruled["postprocessing"]["slice_exclusion_rules"][0]["higher_dominates"]  # InnerEye has no default either
    assert "slice_exclusion_rules[0].higher_dominates': must be true or false, got None" in _error(ruled)
    ruled["postprocessing"]["slice_exclusion_rules"] = {"higher_class": "spleen"}
    assert "slice_exclusion_rules': must be a list of rules" in _error(ruled)
    ruled["postprocessing"]["slice_exclusion_rules"] = ["spleen"]
    assert "slice_exclusion_rules[0]': must be an object" in _error(ruled)


def test_unknown_postprocessing_key_gets_a_hint(ruled: dict[str, Any]) -> None:
    ruled["postprocessing"]["slice_exclusion_rule"] = ruled["postprocessing"].pop("slice_exclusion_rules")
    assert "unknown key(s) slice_exclusion_rule (did you mean slice_exclusion_rules?)" in _error(ruled)


def test_if_present_drops_a_rule_whose_structures_the_model_lacks(ruled: dict[str, Any]) -> None:
    ruled["postprocessing"]["summed_probability_rules"].append(
        {"first_class": "cord", "second_class": "spleen", "external_class": "body", "if_present": True}
    )
    ruled["postprocessing"]["slice_exclusion_rules"][1]["if_present"] = True  # all present: kept
    post = parse_inference_block(ruled, FILE)["task_spec"].postprocessing
    assert len(post.summed_probability_rules) == 1 and len(post.slice_exclusion_rules) == 2


def test_segmentation_spec_refuses_rules_naming_unknown_structures() -> None:
    structures = (StructureSpec("liver"), StructureSpec("spleen"))
    with pytest.raises(ValueError, match="slice_exclusion_rules names unknown structure"):
        SegmentationSpec(
            structures, postprocessing=PostProcessing(slice_exclusion_rules=(SliceExclusionRule("a", "liver", True),))
        )


def _preset_folder(tmp_path: Path, **config: Any) -> Path:
    folder = tmp_path / "model"
    (folder / "checkpoints").mkdir(parents=True)
    torch.save(lightning_checkpoint(tiny_network()), folder / "checkpoints" / "last.ckpt")
    config = {"model_name": "HeadAndNeckPaper", "checkpoint_paths": ["checkpoints/last.ckpt"], **config}
    (folder / "model_inference_config.json").write_text(json.dumps(config))
    return folder


HEAD_AND_NECK_SUMMED = (
    SummedProbabilityRule("spinal_cord", "brainstem", "external"),
    SummedProbabilityRule("mpc_muscle", "spc_muscle", "external"),
    SummedProbabilityRule("optic_chiasm", "pituitary_gland", "external"),
)
HEAD_AND_NECK_SLICES = (
    SliceExclusionRule("brainstem", "spinal_cord", False),
    SliceExclusionRule("spc_muscle", "mpc_muscle", False),
    SliceExclusionRule("optic_chiasm", "pituitary_gland", True),
)


def test_head_and_neck_preset_has_head_and_neck_bases_rules(tmp_path: Path) -> None:
    found = find_preset("HeadAndNeckBase")
    assert found is not None
    post = found[1]["postprocessing"]
    assert [r["higher_class"] for r in post["slice_exclusion_rules"]] == ["brainstem", "spc_muscle", "optic_chiasm"]
    package = load_model_package(_preset_folder(tmp_path))
    assert package.segmentation.structure_names == tuple(HEAD_AND_NECK_STRUCTURES)
    assert package.segmentation.postprocessing.summed_probability_rules == HEAD_AND_NECK_SUMMED
    assert package.segmentation.postprocessing.slice_exclusion_rules == HEAD_AND_NECK_SLICES
    for preset in ("ProstateBase", "Lung"):
        other = find_preset(preset)
        assert other is not None and not other[1]["postprocessing"]["slice_exclusion_rules"]


@pytest.mark.parametrize(
    "count, summed, slices",
    [(3, 0, 0), (6, 0, 0), (7, 1, 1), (11, 1, 1), (12, 2, 2), (20, 3, 3)],
)
def test_older_form_keeps_the_rules_innereye_sets_for_its_structures(
    tmp_path: Path, count: int, summed: int, slices: int
) -> None:
    """As HeadAndNeckBase with ``num_structures``: a rule only when the model has its structures (a prefix of the
    list here, as InnerEye's ``num_structures`` takes)."""
    names = list(HEAD_AND_NECK_STRUCTURES[:count])
    package = load_model_package(_preset_folder(tmp_path, structure_names=names))
    post = package.segmentation.postprocessing
    assert post.summed_probability_rules == HEAD_AND_NECK_SUMMED[:summed]
    assert post.slice_exclusion_rules == HEAD_AND_NECK_SLICES[:slices]


def test_summed_rules_need_external_as_in_innereye(tmp_path: Path) -> None:
    names = [n for n in HEAD_AND_NECK_STRUCTURES if n != "external"]
    post = load_model_package(_preset_folder(tmp_path, structure_names=names)).segmentation.postprocessing
    assert post.summed_probability_rules == () and post.slice_exclusion_rules == HEAD_AND_NECK_SLICES


def test_rules_change_the_fingerprint_and_a_package_without_keeps_its_own(tmp_path: Path) -> None:
    """A package without rules hashes the settings it had before rules existed (a resumed run does not redo it)."""
    package = load_model_package(_preset_folder(tmp_path))
    spec = package.segmentation
    post = replace(spec.postprocessing, summed_probability_rules=(), slice_exclusion_rules=())
    without = replace(package, task_spec=replace(spec, postprocessing=post))
    assert without.fingerprint() != package.fingerprint()
    assert without.fingerprint() == _as_before(without, rules=False)
    # the slice-exclusion rules' results changed (towards the head, not along array axis 0): a series an earlier
    # version marked done with them is redone
    assert package.fingerprint() != _as_before(package, rules=True)
    with_spacing = replace(without, task_spec=replace(without.segmentation, target_spacing=(3.0, 1.0, 1.0)))
    assert with_spacing.fingerprint() != _as_before(with_spacing, rules=False)  # the grid's shape changed


def _as_before(package: Any, *, rules: bool) -> str:
    """The fingerprint as the version before 2026-11-27 computed it: one size multiple, no revised results."""
    settings = asdict(package)
    settings.pop("folder")
    assert settings["task_spec"].pop("orientation") is None  # no such field then
    assert settings["task_spec"].pop("reorient") is True  # nor this one
    if not rules:
        for key in ("summed_probability_rules", "slice_exclusion_rules"):
            del settings["task_spec"]["postprocessing"][key]
    settings["task_spec"]["inference"]["size_multiple"] = settings["task_spec"]["inference"]["size_multiple"][0]
    settings["task"] = package.task
    settings["checkpoints"] = [c.sha256 for c in package.checkpoints]
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()
