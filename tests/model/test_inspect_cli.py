"""`innereye-batch inspect`: lists structures and checkpoint hashes of a good folder; exits 2 on a broken one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from innereye_batch.cli import app
from innereye_batch.model.export import write_model_folder
from tests.model.conftest import tiny_network


def _folder(tmp_path: Path, block: dict[str, Any]) -> Path:
    return write_model_folder(
        tmp_path / "final_ensemble_model", [tiny_network(0), tiny_network(1)], model_name="Tiny", inference_block=block
    )


def test_inspect_json_lists_structures_and_hashes(tmp_path: Path, block: dict[str, Any]) -> None:
    folder = _folder(tmp_path, block)
    result = CliRunner().invoke(app, ["inspect", "--model", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["loadable"] is True and "error" not in report
    assert [(s["label"], s["name"], s["colour"]) for s in report["structures"]] == [
        (1, "liver", [10, 20, 30]),
        (2, "spleen", [0, 255, 128]),
    ]
    by_path = {c["path"]: c for c in report["checkpoints"]}
    assert set(by_path) == {"checkpoints/last.ckpt", "checkpoints/OTHER_RUNS/1/last.ckpt"}
    for relative, entry in by_path.items():
        data = (folder / relative).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["size_bytes"] == len(data) and entry["format"] == "lightning"
    assert report["parameter_count"] == sum(p.numel() for p in tiny_network().parameters())
    assert report["ensemble_size"] == 2
    assert report["expected_input"]["normalisation"] == [
        {"method": "ct_window", "level": 40.0, "window": 400.0, "output_range": [-1.0, 1.0]}
    ]
    assert report["expected_input"]["patch_size"] == [8, 8, 8]
    assert report["postprocessing"]["fill_holes"] == ["liver"]


def test_inspect_text_shows_structures_and_verdict(tmp_path: Path, block: dict[str, Any]) -> None:
    folder = _folder(tmp_path, block)
    result = CliRunner().invoke(app, ["inspect", "--model", str(folder)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    sha = hashlib.sha256((folder / "checkpoints/last.ckpt").read_bytes()).hexdigest()
    for text in ("liver", "spleen", "UNet3D", sha, "verdict: loadable"):
        assert text in result.stdout


def test_inspect_broken_folder_exits_2_with_the_reason(tmp_path: Path, block: dict[str, Any]) -> None:
    folder = _folder(tmp_path, block)
    (folder / "checkpoints/OTHER_RUNS/1/last.ckpt").unlink()
    result = CliRunner().invoke(app, ["inspect", "--model", str(folder), "--json"])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["loadable"] is False
    assert "checkpoint file not found" in report["error"] and "OTHER_RUNS/1/last.ckpt" in report["error"]


def test_inspect_mismatched_weights_exit_2(tmp_path: Path, block: dict[str, Any]) -> None:
    block["architecture"] = {"name": "UNet3D", "initial_feature_channels": 4, "num_downsampling_paths": 2}
    folder = _folder(tmp_path, block)
    result = CliRunner().invoke(app, ["inspect", "--model", str(folder)], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "cannot load" in result.stdout and "shape mismatch" in result.stdout


def test_inspect_shows_the_postprocessing_rules(tmp_path: Path, block: dict[str, Any]) -> None:
    rules = {
        "summed_probability_rules": [{"first_class": "liver", "second_class": "spleen", "external_class": "spleen"}],
        "slice_exclusion_rules": [{"higher_class": "liver", "lower_class": "spleen", "higher_dominates": True}],
    }
    folder = _folder(tmp_path, {**block, "postprocessing": {**block.get("postprocessing", {}), **rules}})
    report = json.loads(CliRunner().invoke(app, ["inspect", "--model", str(folder), "--json"]).stdout)
    for name, entries in rules.items():
        assert report["postprocessing"][name] == entries
    text = CliRunner().invoke(app, ["inspect", "--model", str(folder)], env={"COLUMNS": "200"}).stdout
    assert "summed probability: liver + spleen against spleen" in text
    assert "slice exclusion: liver above spleen (liver dominates)" in text


def test_inspect_shows_the_training_orientation_and_what_happens_to_others(
    tmp_path: Path, block: dict[str, Any]
) -> None:
    plain = json.loads(
        CliRunner().invoke(app, ["inspect", "--model", str(_folder(tmp_path / "a", block)), "--json"]).stdout
    )
    assert (plain["expected_input"]["orientation"], plain["expected_input"]["other_orientations"]) == (None, None)
    for reorient, shown in ((True, "reoriented"), (False, "refused")):
        folder = _folder(tmp_path / shown, {**block, "orientation": "RPI", "reorient": reorient})
        report = json.loads(CliRunner().invoke(app, ["inspect", "--model", str(folder), "--json"]).stdout)
        assert (report["expected_input"]["orientation"], report["expected_input"]["other_orientations"]) == (
            "RPI",
            shown,
        )
        text = CliRunner().invoke(app, ["inspect", "--model", str(folder)], env={"COLUMNS": "200"}).stdout
        assert f"orientation: RPI (series whose axes run elsewhere are {shown})" in text
