"""predictions.json: right volumes, the model and input identity, no patient identity, valid against its schema."""

from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.files import write_json
from innereye_batch.model.spec import ModelPackage, Structure
from innereye_batch.tasks.segmentation import structure_stats
from innereye_batch.writers.predictions import (
    build_predictions,
    load_predictions_schema,
)
from tests.factory import GeneratedSeries, write_series
from tests.writers.helpers import blob_labels, make_package, series_info_from


def validate(document: dict) -> None:
    jsonschema.Draft202012Validator(load_predictions_schema()).validate(document)


def test_schema_is_valid_draft_2020_12() -> None:
    schema = load_predictions_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_structure_stats_counts_voxels_and_millilitres() -> None:
    geometry = Geometry(
        shape=(4, 5, 6), spacing=(2.0, 0.5, 0.8), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel())
    )
    labels = np.zeros(geometry.shape, np.uint8)
    labels[0, :2, :3] = 1  # 6 voxels
    labels[3] = 3  # 30 voxels
    stats = structure_stats(labels, geometry, ["a", "b", "c"])
    voxel_ml = 2.0 * 0.5 * 0.8 / 1000
    assert [s.name for s in stats] == ["a", "b", "c"]
    assert [s.voxel_count for s in stats] == [6, 0, 30]
    assert [s.volume_ml for s in stats] == pytest.approx([6 * voxel_ml, 0.0, 30 * voxel_ml])
    assert [s.present for s in stats] == [True, False, True]


def test_structure_stats_refuses_unknown_labels() -> None:
    geometry = Geometry(
        shape=(2, 2, 2), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel())
    )
    with pytest.raises(ValueError, match="label 2"):
        structure_stats(np.full((2, 2, 2), 2, np.uint8), geometry, ["only"])


def _segmentation_document(tmp_path: Path) -> tuple[dict, GeneratedSeries, ModelPackage]:
    generated = write_series(tmp_path / "dicom", shape=(4, 8, 6), patient_name="Secret^Name", patient_id="MRN4242")
    series = series_info_from(generated)
    package = make_package(tmp_path / "model", version="3")
    labels = blob_labels(series.geometry.shape, 3)
    stats = structure_stats(labels, series.geometry, package.segmentation.structure_names)
    document = build_predictions(
        package=package,
        series=series,
        geometry=series.geometry,
        structures=stats,
        timings={"load": 0.5, "infer": 1.25, "write": 0.125},
        tool_version="0.1.0",
    )
    return document, generated, package


def test_segmentation_document_content(tmp_path: Path) -> None:
    document, generated, package = _segmentation_document(tmp_path)
    validate(document)

    assert document["tool"] == {"name": "innereye-batch", "version": "0.1.0"}
    model = document["model"]
    assert model["name"] == "TestOrgans"
    assert model["fingerprint"] == package.fingerprint()
    assert [c["path"] for c in model["checkpoints"]] == ["checkpoints/model_0.ckpt", "checkpoints/model_1.ckpt"]
    assert [c["sha256"] for c in model["checkpoints"]] == [c.sha256 for c in package.checkpoints]
    source = document["input"]
    assert source["series_instance_uid"] == generated.series_instance_uid
    assert source["study_instance_uid"] == generated.study_instance_uid
    assert source["key"] == generated.series_instance_uid
    assert source["modality"] == "CT"
    assert source["number_of_images"] == 4
    assert source["shape"] == [4, 8, 6]
    assert source["spacing_mm"] == pytest.approx([2.5, 0.8, 0.7])
    assert source["origin_mm"] == pytest.approx([-100.0, -120.0, 50.0])
    assert [s["name"] for s in document["structures"]] == ["liver", "spleen", "left kidney"]
    assert all(s["present"] == (s["voxel_count"] > 0) for s in document["structures"])
    assert document["timings_s"]["infer"] == 1.25
    created = datetime.datetime.fromisoformat(document["created"])
    assert created.utcoffset() == datetime.timedelta(0)
    assert "probabilities" not in document


def test_no_patient_identity_anywhere(tmp_path: Path) -> None:
    document, _, _ = _segmentation_document(tmp_path)
    text = json.dumps(document)
    assert "Secret" not in text
    assert "MRN4242" not in text
    assert "patient" not in text.lower()


def test_document_with_probabilities_validates(tmp_path: Path) -> None:
    generated = write_series(tmp_path / "dicom", shape=(3, 6, 6), modality="MR")
    series = series_info_from(generated)
    package = make_package(tmp_path / "model", structures=[Structure("benign"), Structure("malignant")])
    document = build_predictions(
        package=package,
        series=series,
        geometry=series.geometry,
        probabilities={"benign": 0.3, "malignant": 0.7},
        timings={"infer": 0.1},
        tool_version="0.1.0",
    )
    validate(document)
    assert document["probabilities"] == {"benign": 0.3, "malignant": 0.7}
    assert document["structures"] == []
    assert document["input"]["modality"] == "MR"


@pytest.mark.parametrize(
    "breakage",
    ["drop_model", "drop_structure_volume", "bad_sha256", "bad_uid", "negative_timing", "probability_above_one"],
)
def test_schema_rejects_broken_documents(tmp_path: Path, breakage: str) -> None:
    document, _, _ = _segmentation_document(tmp_path)
    broken = copy.deepcopy(document)
    if breakage == "drop_model":
        del broken["model"]
    elif breakage == "drop_structure_volume":
        del broken["structures"][0]["volume_ml"]
    elif breakage == "bad_sha256":
        broken["model"]["checkpoints"][0]["sha256"] = "not-a-hash"
    elif breakage == "bad_uid":
        broken["input"]["series_instance_uid"] = ""
    elif breakage == "negative_timing":
        broken["timings_s"]["infer"] = -1.0
    elif breakage == "probability_above_one":
        broken["probabilities"] = {"a": 1.5}
    validate(document)
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_write_json_round_trips_to_the_exact_path(tmp_path: Path) -> None:
    document, _, _ = _segmentation_document(tmp_path)
    target = tmp_path / "out" / "predictions.json.tmp"
    target.parent.mkdir()
    write_json(target, document)
    assert sorted(p.name for p in target.parent.iterdir()) == ["predictions.json.tmp"]
    assert json.loads(target.read_text(encoding="utf-8")) == document


def test_write_json_refuses_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"value": float("nan")})


def test_nonconforming_uids_and_control_characters_still_give_a_valid_document(tmp_path: Path) -> None:
    """UIDs that break DICOM's rules (letters, over 64 characters) and a description holding ESC and a line break:
    the document failed its own schema while the series was ok, and carried the raw control characters."""
    generated = write_series(
        tmp_path / "dicom",
        shape=(3, 6, 6),
        series_instance_uid="1." + "2" * 70,
        study_instance_uid="@SUM(A1)",
        edit=lambda k, ds: setattr(ds, "SeriesDescription", "head\x1b[31m\r\nneck"),
    )
    series = series_info_from(generated)
    package = make_package(tmp_path / "model")
    labels = blob_labels(series.geometry.shape, 3)
    document = build_predictions(
        package=package,
        series=series,
        geometry=series.geometry,
        structures=structure_stats(labels, series.geometry, package.segmentation.structure_names),
        timings={"infer": 1.0},
        tool_version="0.1.0",
    )
    validate(document)
    assert document["input"]["series_instance_uid"] == "1." + "2" * 70
    assert document["input"]["study_instance_uid"] == "@SUM(A1)"
    assert document["input"]["series_description"] == "head\\x1b[31m\\x0d\\x0aneck"
    assert "channels" not in document["input"]
