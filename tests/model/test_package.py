"""Model folder loading: both InnerEye config forms, our inference block, presets, checkpoint discovery, errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from innereye_batch.errors import ModelFolderError
from innereye_batch.model.export import lightning_checkpoint, write_model_folder
from innereye_batch.model.package import load_model_package
from innereye_batch.model.presets import find_preset
from tests.model.conftest import TINY_ARCHITECTURE, tiny_network


def _write_config(folder: Path, config: dict[str, Any]) -> None:
    (folder / "model_inference_config.json").write_text(json.dumps(config))


def _folder_with_checkpoint(tmp_path: Path, relative: str = "checkpoints/last.ckpt") -> Path:
    folder = tmp_path / "final_model"
    (folder / relative).parent.mkdir(parents=True)
    torch.save(lightning_checkpoint(tiny_network()), folder / relative)
    return folder


def test_current_form_with_inference_block(tmp_path: Path, block: dict[str, Any]) -> None:
    folder = write_model_folder(
        tmp_path / "final_ensemble_model",
        [tiny_network(0), tiny_network(1)],
        model_name="Tiny",
        inference_block=block,
        model_configs_namespace="my.configs.Tiny",
    )
    package = load_model_package(folder)
    assert package.name == "Tiny" and package.model_configs_namespace == "my.configs.Tiny"
    assert package.source == "inference block"
    assert [(s.name, s.colour) for s in package.segmentation.structures] == [
        ("liver", (10, 20, 30)),
        ("spleen", (0, 255, 128)),
    ]
    assert package.num_outputs == 3
    assert package.architecture.name == "UNet3D"
    assert package.segmentation.normalisation[0].method == "ct_window"
    assert (package.segmentation.normalisation[0].level, package.segmentation.normalisation[0].window) == (40.0, 400.0)
    assert package.segmentation.normalisation[0].output_range == (-1.0, 1.0)
    assert package.segmentation.inference.patch_size == (8, 8, 8) and package.segmentation.inference.stride == (4, 4, 4)
    assert package.segmentation.inference.stitching == "average"
    assert package.segmentation.inference.size_multiple == (4, 4, 4)  # 2 ** num_downsampling_paths, derived
    assert package.segmentation.postprocessing.largest_component == ("liver", "spleen")
    assert package.segmentation.postprocessing.fill_holes == ("liver",)
    assert package.segmentation.postprocessing.posterior_smoothing_mm == (2.0, 2.0, 3.0)
    relative = [c.path.relative_to(folder).as_posix() for c in package.checkpoints]
    assert relative == ["checkpoints/OTHER_RUNS/1/last.ckpt", "checkpoints/last.ckpt"]
    for ref in package.checkpoints:
        assert ref.sha256 == hashlib.sha256(ref.path.read_bytes()).hexdigest()
        assert ref.size_bytes == ref.path.stat().st_size


def test_unknown_fields_in_innereye_config_are_ignored(tmp_path: Path, block: dict[str, Any]) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    _write_config(
        folder,
        {"model_name": "Tiny", "checkpoint_paths": ["checkpoints/last.ckpt"], "inference": block,
         "azure_run_id": "x", "nested": {"anything": [1, 2]}},
    )  # fmt: skip
    assert load_model_package(folder).name == "Tiny"


def test_sibling_inference_config_file(tmp_path: Path, block: dict[str, Any]) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    _write_config(folder, {"model_name": "Tiny", "checkpoint_paths": ["checkpoints/last.ckpt"]})
    (folder / "inference_config.json").write_text(json.dumps(block))
    assert load_model_package(folder).segmentation.structure_names == ("liver", "spleen")
    _write_config(folder, {"model_name": "Tiny", "checkpoint_paths": ["checkpoints/last.ckpt"], "inference": block})
    with pytest.raises(ModelFolderError, match="keep one"):
        load_model_package(folder)


@pytest.mark.parametrize("field", ["version", "structures", "architecture", "normalisation"])
def test_missing_required_field_is_named_with_an_example(tmp_path: Path, block: dict[str, Any], field: str) -> None:
    del block[field]
    folder = write_model_folder(tmp_path / "m", [tiny_network()], model_name="Tiny", inference_block=block)
    with pytest.raises(ModelFolderError) as caught:
        load_model_package(folder)
    message = str(caught.value)
    assert "model_inference_config.json" in message
    assert f"field 'inference.{field}': missing" in message
    assert "Example:" in message and f'"{field}":' in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"normalization": {"method": "none"}}, "did you mean normalisation"),
        ({"version": 2}, "unsupported version 2"),
        ({"stitching": "median"}, "'inference.stitching'"),
        ({"patch_size": [8, 8, 6]}, "multiple of 4"),
        ({"stride": [4, 16, 4]}, "must not exceed patch_size"),
        ({"architecture": {"name": "UNet3D"}}, "missing parameter 'initial_feature_channels'"),
        ({"architecture": {"name": "VNet"}}, "unknown architecture 'VNet'"),
        ({"normalisation": [{"method": "ct_window", "level": 40}]}, "'inference.normalisation[0].window'"),
        ({"postprocessing": {"fill_holes": ["kidney"]}}, "unknown structure(s) ['kidney']"),
        ({"structures": [{"name": "a", "colour": [0, 0, 300]}]}, "'inference.structures[0].colour'"),
        ({"structures": ["a", "a"]}, "repeated: a"),
        # one structure in DICOM's 64-character labels: the SEG read-back checked only the last (a lost one passed)
        ({"structures": ["x" * 64 + "_left", "x" * 64 + "_right"]}, "differ within their first 64 characters"),
        ({"structures": ["liver", "liver "]}, "trailing spaces aside"),  # DICOM pads text with spaces: one label
        # names a receiving system that trims, normalises or ignores case would merge
        ({"structures": ["liver", " liver"]}, "as a person or a receiving system reads them"),
        ({"structures": ["Liver", "liver"]}, "as a person or a receiving system reads them"),
        ({"structures": ["liver", "li\u200bver"]}, "as a person or a receiving system reads them"),  # zero width
        ({"structures": ["caf\u00e9", "cafe\u0301"]}, "as a person or a receiving system reads them"),  # NFC, NFD
        ({"structures": ["a\\b"]}, "'inference.structures[0].name': not usable as a DICOM label"),
        ({"structures": ["tab\there"]}, "control character"),
        ({"structures": ["li\x85ver"]}, "control character"),  # C1: not text in a Long String either
        ({"structures": ["liver\ud800"]}, "lone surrogate"),  # JSON takes it; pydicom would write "liver?"
        ({"channels": [{"name": "ct", "series_description": "(unclosed"}]}, "bad regular expression"),
        ({"normalisation": [{"method": "none", "output_range": [1, 1]}]}, "its two ends must differ"),
        ({"size_multiple": 2}, "must be a multiple of 4, which UNet3D needs"),
        ({"architecture": {**TINY_ARCHITECTURE, "num_downsampling_paths": "2"}}, "do not build the network"),
        ({"architecture": {**TINY_ARCHITECTURE, "initial_feature_channels": 4.0}}, "do not build the network"),
        ({"architecture": {**TINY_ARCHITECTURE, "padding_mode": "no_padding"}}, "'no_padding' cannot run"),
        ({"orientation": "LPQ"}, "'inference.orientation': must be three letters, one of L/R, P/A and S/I each"),
        ({"orientation": "LRS"}, "one of L/R, P/A and S/I each"),
        ({"orientation": ["L", "P", "S"]}, "one of L/R, P/A and S/I each"),
        ({"orientation": "LPS", "reorient": "no"}, "'inference.reorient': must be true or false, got 'no'"),
        ({"reorient": False}, "'inference.reorient': says what to do with series in another orientation"),
    ],
)
def test_invalid_values_are_reported(tmp_path: Path, block: dict[str, Any], change: dict, expected: str) -> None:
    block.update(change)
    if change.get("structures"):
        block["postprocessing"] = {}
    folder = write_model_folder(tmp_path / "m", [tiny_network()], model_name="Tiny", inference_block=block)
    with pytest.raises(ModelFolderError) as caught:
        load_model_package(folder)
    assert expected in str(caught.value)


def test_preset_chosen_by_model_name(tmp_path: Path) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    _write_config(folder, {"model_name": "Lung", "checkpoint_paths": ["checkpoints/last.ckpt"]})
    package = load_model_package(folder)
    assert package.source == "preset Lung"
    assert package.segmentation.structure_names == ("spinalcord", "lung_r", "lung_l", "heart", "esophagus")
    assert package.segmentation.normalisation[0].level == -500 and package.segmentation.normalisation[0].window == 2200
    assert package.segmentation.inference.patch_size == (112, 512, 512) and package.segmentation.inference.stride == (
        64,
        256,
        256,
    )
    assert package.segmentation.inference.stitching == "average" and package.segmentation.inference.size_multiple == (
        16,
        16,
        16,
    )
    assert package.segmentation.postprocessing.largest_component == ("lung_l", "lung_r", "heart")
    assert (
        package.segmentation.postprocessing.fill_holes == ()
        and package.segmentation.postprocessing.posterior_smoothing_mm is None
    )
    assert dict(package.architecture.params)["initial_feature_channels"] == 32


def test_preset_lookup_rules() -> None:
    by_namespace = find_preset("MyRun", "InnerEye.ML.configs.segmentation.HeadAndNeckPaper")
    assert by_namespace is not None and by_namespace[0] == "preset HeadAndNeckBase"
    head_and_neck = by_namespace[1]
    assert len(head_and_neck["structures"]) == 22
    assert head_and_neck["architecture"]["initial_feature_channels"] == 26
    assert head_and_neck["patch_size"] == [144, 512, 512] and head_and_neck["stride"] == [72, 256, 256]
    prostate = find_preset("prostatepaper")
    assert prostate is not None and prostate[0] == "preset ProstateBase"
    assert prostate[1]["postprocessing"]["posterior_smoothing_mm"] == [2.0, 2.0, 3.0]
    assert "seminalvesicles" not in prostate[1]["postprocessing"]["largest_component"]
    assert "bladder" not in prostate[1]["postprocessing"]["fill_holes"]
    subclass = find_preset("ProstateMyHospital")
    assert subclass is not None and "by name prefix 'Prostate'" in subclass[0]
    assert find_preset("BasicModel2Epochs", "InnerEye.ML.configs.segmentation.BasicModel2Epochs") is None


def test_older_form_replaces_preset_structures(tmp_path: Path) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    _write_config(
        folder,
        {
            "model_name": "HeadAndNeckMyHospital",
            "checkpoint_paths": ["checkpoints/last.ckpt"],
            "structure_names": ["parotid_l", "parotid_r", "mandible"],
            "colours": ["ff0000", "#00FF00", [0, 0, 255]],
            "fill_holes": [True, False, True],
            "model_configs_namespace": "hospital.configs",
        },
    )
    package = load_model_package(folder)
    assert package.segmentation.structure_names == ("parotid_l", "parotid_r", "mandible")
    assert [s.colour for s in package.segmentation.structures] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    assert package.segmentation.postprocessing.fill_holes == ("parotid_l", "mandible")
    assert package.segmentation.postprocessing.largest_component == ("parotid_l", "parotid_r", "mandible")
    assert dict(package.architecture.params)["initial_feature_channels"] == 32  # <= 20 structures
    assert "structures from model_inference_config.json" in package.source


def test_older_form_disagreeing_with_block_is_an_error(tmp_path: Path, block: dict[str, Any]) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    _write_config(folder, {"model_name": "T", "structure_names": ["liver", "kidney"], "inference": block})
    with pytest.raises(ModelFolderError, match="'structure_names'"):
        load_model_package(folder)


def test_unknown_model_without_block_says_what_to_add(tmp_path: Path) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    _write_config(folder, {"model_name": "MyNet", "checkpoint_paths": ["checkpoints/last.ckpt"]})
    with pytest.raises(ModelFolderError) as caught:
        load_model_package(folder)
    message = str(caught.value)
    assert "'MyNet'" in message and "matches no preset" in message and '"inference"' in message
    assert '"architecture": {"name": "UNet3D"' in message


def test_checkpoints_are_discovered_when_paths_are_absent(tmp_path: Path, block: dict[str, Any]) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    for k in (1, 2):
        (folder / f"checkpoints/OTHER_RUNS/{k}").mkdir(parents=True)
        torch.save(lightning_checkpoint(tiny_network(k)), folder / f"checkpoints/OTHER_RUNS/{k}/last.ckpt")
    _write_config(folder, {"model_name": "Tiny", "checkpoint_paths": [], "inference": block})
    relative = [c.path.relative_to(folder).as_posix() for c in load_model_package(folder).checkpoints]
    assert relative == [
        "checkpoints/OTHER_RUNS/1/last.ckpt",
        "checkpoints/OTHER_RUNS/2/last.ckpt",
        "checkpoints/last.ckpt",
    ]


def test_legacy_layout_uses_the_latest_epoch(tmp_path: Path, block: dict[str, Any]) -> None:
    folder = _folder_with_checkpoint(tmp_path, "checkpoints/80_checkpoint.pth.tar")
    state = {"epoch": 120, "state_dict": tiny_network().state_dict(), "opt_dict": {}}
    torch.save(state, folder / "checkpoints/120_checkpoint.pth.tar")
    _write_config(folder, {"model_name": "Tiny", "inference": block})
    [ref] = load_model_package(folder).checkpoints
    assert ref.path.name == "120_checkpoint.pth.tar"


def test_missing_checkpoint_file_is_named(tmp_path: Path, block: dict[str, Any]) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    _write_config(folder, {"model_name": "Tiny", "checkpoint_paths": ["checkpoints/OTHER_RUNS/1/last.ckpt"],
                           "inference": block})  # fmt: skip
    with pytest.raises(ModelFolderError, match=r"checkpoint file not found: .*OTHER_RUNS/1/last\.ckpt"):
        load_model_package(folder)


def test_missing_config_and_bad_json(tmp_path: Path) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    with pytest.raises(ModelFolderError, match=r"model_inference_config\.json: missing"):
        load_model_package(folder)
    (folder / "model_inference_config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        load_model_package(folder)
    with pytest.raises(ModelFolderError, match="model folder not found"):
        load_model_package(tmp_path / "nowhere")


def test_a_configuration_nested_thousands_deep_is_a_model_folder_error(tmp_path: Path) -> None:
    folder = _folder_with_checkpoint(tmp_path)
    for deep in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
        (folder / "model_inference_config.json").write_text(deep)  # was a RecursionError's traceback
        with pytest.raises(ModelFolderError, match="nested too deeply"):
            load_model_package(folder)


def test_a_model_name_with_a_control_character_is_refused(tmp_path: Path, block: dict[str, Any]) -> None:
    """It names the DICOM outputs' series and is printed by inspect: an escape sequence went to the terminal."""
    folder = _folder_with_checkpoint(tmp_path)
    for name in ("Tiny\x1b[31mRed", "Tiny\\Two"):
        _write_config(folder, {"model_name": name, "checkpoint_paths": ["checkpoints/last.ckpt"], "inference": block})
        with pytest.raises(ModelFolderError, match="model_name"):
            load_model_package(folder)


def test_documented_example_is_valid_and_matches_the_prostate_preset() -> None:
    from innereye_batch.model.inference_block import parse_inference_block

    doc = Path(__file__).resolve().parents[2] / "docs" / "model-folder.md"
    example = json.loads(doc.read_text().split("```json\n", 1)[1].split("```", 1)[0])
    documented = parse_inference_block(example["inference"], doc)
    preset = find_preset(example["model_name"])
    assert preset is not None
    from_preset = parse_inference_block(preset[1], doc)
    assert documented == from_preset


def test_nan_and_infinity_tokens_are_not_json(tmp_path: Path, block: dict[str, Any]) -> None:
    """Python's reader takes NaN and Infinity (RFC 8259 does not), and they slip past every range check: a NaN
    window level gave empty segmentations reported ok."""
    folder = _folder_with_checkpoint(tmp_path)
    block["normalisation"] = [{"method": "ct_window", "level": 0, "window": 400}]
    text = json.dumps({"model_name": "Tiny", "checkpoint_paths": ["checkpoints/last.ckpt"], "inference": block})
    for token in ("NaN", "Infinity", "-Infinity"):
        (folder / "model_inference_config.json").write_text(text.replace('"level": 0', f'"level": {token}'))
        with pytest.raises(ModelFolderError, match=f"not valid JSON: {token} is not a JSON number"):
            load_model_package(folder)
    for huge in ("1e999", "1" + "0" * 400):  # infinite as a float; too large for one
        (folder / "model_inference_config.json").write_text(text.replace('"level": 0', f'"level": {huge}'))
        with pytest.raises(ModelFolderError, match="ct_window needs numeric 'level' and 'window'"):
            load_model_package(folder)


def test_one_checkpoint_twice_in_an_ensemble_is_refused(tmp_path: Path, block: dict[str, Any]) -> None:
    """The same file under two names, or two files of the same weights, would count one member twice in the
    ensemble's mean."""
    folder = _folder_with_checkpoint(tmp_path)
    (folder / "checkpoints/OTHER_RUNS/1").mkdir(parents=True)
    torch.save(lightning_checkpoint(tiny_network(1)), folder / "checkpoints/OTHER_RUNS/1/last.ckpt")
    (folder / "checkpoints/copy.ckpt").write_bytes((folder / "checkpoints/last.ckpt").read_bytes())
    for twice in (
        ["checkpoints/last.ckpt", "checkpoints/last.ckpt"],
        ["checkpoints/last.ckpt", "./checkpoints/OTHER_RUNS/../last.ckpt"],
        ["checkpoints/OTHER_RUNS/1/last.ckpt", "checkpoints/last.ckpt", "checkpoints/copy.ckpt"],
    ):
        _write_config(folder, {"model_name": "Tiny", "checkpoint_paths": twice, "inference": block})
        with pytest.raises(ModelFolderError, match=f"'{twice[-1]}' holds the same checkpoint as '{twice[-2]}'"):
            load_model_package(folder)
    _write_config(
        folder,
        {"model_name": "Tiny", "checkpoint_paths": ["checkpoints/last.ckpt", "checkpoints/OTHER_RUNS/1/last.ckpt"],
         "inference": block},
    )  # fmt: skip
    assert len(load_model_package(folder).checkpoints) == 2


def test_windows_checkpoint_paths_are_read(tmp_path: Path, block: dict[str, Any]) -> None:
    """InnerEye on Windows writes str(WindowsPath): backslashes."""
    folder = _folder_with_checkpoint(tmp_path, "checkpoints/OTHER_RUNS/1/last.ckpt")
    _write_config(
        folder,
        {"model_name": "Tiny", "checkpoint_paths": ["checkpoints\\OTHER_RUNS\\1\\last.ckpt"], "inference": block},
    )
    [ref] = load_model_package(folder).checkpoints
    assert ref.path == folder / "checkpoints/OTHER_RUNS/1/last.ckpt"


@pytest.mark.parametrize(
    "where", ["../outside.ckpt", "checkpoints/../../outside.ckpt", "ABSOLUTE", "C:\\models\\x.ckpt"]
)
def test_checkpoint_paths_that_leave_the_folder_are_refused(tmp_path: Path, block: dict[str, Any], where: str) -> None:
    """The folder is the whole model: a checkpoint found outside it (a parent, an absolute or a drive path) would
    make a copied folder another model, or none; the file existing there does not make it part of the model."""
    folder = _folder_with_checkpoint(tmp_path / "model", "checkpoints/last.ckpt")
    outside = tmp_path / "outside.ckpt"
    outside.write_bytes((folder / "checkpoints/last.ckpt").read_bytes())
    relative = str(outside) if where == "ABSOLUTE" else where
    _write_config(folder, {"model_name": "Tiny", "checkpoint_paths": [relative], "inference": block})
    with pytest.raises(ModelFolderError, match="leaves the model folder"):
        load_model_package(folder)


def test_dot_dot_after_a_symlinked_folder_stays_in_the_model_folder(tmp_path: Path, block: dict[str, Any]) -> None:
    """'linked/../x.ckpt' names the folder's own x.ckpt: the system would follow the link and take '..' from its
    target, outside the folder. Symbolic links themselves are followed (a shared checkpoint store)."""
    folder = _folder_with_checkpoint(tmp_path / "model", "checkpoints/last.ckpt")
    (tmp_path / "store" / "inner").mkdir(parents=True)
    (tmp_path / "store" / "x.ckpt").write_bytes((folder / "checkpoints/last.ckpt").read_bytes())
    (folder / "linked").symlink_to(tmp_path / "store" / "inner", target_is_directory=True)
    _write_config(folder, {"model_name": "Tiny", "checkpoint_paths": ["linked/../x.ckpt"], "inference": block})
    with pytest.raises(ModelFolderError, match="checkpoint file not found"):
        load_model_package(folder)
    (folder / "shared.ckpt").symlink_to(tmp_path / "store" / "x.ckpt")
    _write_config(folder, {"model_name": "Tiny", "checkpoint_paths": ["shared.ckpt"], "inference": block})
    assert [ref.path.name for ref in load_model_package(folder).checkpoints] == ["shared.ckpt"]


def test_a_spec_built_in_code_also_refuses_names_one_in_dicom_labels() -> None:
    """The service and tests build specs without a model folder: the spec itself refuses what the folder does."""
    from innereye_batch.model.spec import SegmentationSpec, Structure

    long = "Planning target volume of the prostate and seminal vesicles, dose level "
    assert len(long) > 64
    with pytest.raises(ValueError, match="differ within their first 64 characters"):
        SegmentationSpec(structures=(Structure(long + "1"), Structure(long + "2")))
    assert len(SegmentationSpec(structures=(Structure(long[:64]), Structure("other"))).structures) == 2
