"""Real-time classification against the real service: pydicom's CR images and the sample chest X-rays posted one
by one give the probabilities, labels and document that `run` writes for the same files; ``?explain=gradcam``
adds the explanation montage `run --explain gradcam` draws.

Requests posted one after another are batches of one image, so `run --batch-size 1` is the reference, and the
probabilities agree to the last of their 8 decimals. Images batched together differ from images run alone by
float32 rounding only (below 1e-6; the load test checks concurrent answers against sequential ones).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pydicom
import pytest
from PIL import Image

from innereye_batch.pipeline.run import RunOptions, run_batch
from innereye_batch.writers.explanations import MARKER_STRIP
from innereye_batch.writers.predictions import load_predictions_schema
from tests.service.harness import CLASSIFICATION_ID, CLASSIFICATION_MODEL, CXR_SCANS, ServiceProcess

PYDICOM_CR = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "77654033"


def _images() -> dict[str, Path]:
    images = {p.name: p for p in sorted(CXR_SCANS.glob("*.dcm"))}
    images.update({f"pydicom_{p.parent.name}.dcm": p for p in sorted(PYDICOM_CR.glob("CR*/*"))})
    for name in ("RG1_J2KR.dcm", "RG3_UNCI.dcm"):  # pydicom-data: 15-bit CRs, JPEG 2000 and uncompressed
        path = pydicom.data.get_testdata_file(name, download=False)
        if path is None:
            pytest.fail(f"{name} not found: install the dev extra (pydicom-data)")
        images[name] = Path(str(path))
    return images


@pytest.fixture(scope="module")
def by_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """SOP Instance UID -> predictions.json and explanation.png (as an array) that `run --explain gradcam
    --batch-size 1` wrote."""
    folder = tmp_path_factory.mktemp("cxr_inputs")
    for name, path in _images().items():
        shutil.copy(path, folder / name)
    out = folder.parent / "cxr_run"
    options = RunOptions(
        model=CLASSIFICATION_MODEL, input=folder, output=out, workers=0, batch_size=1, explain=("gradcam",)
    )
    assert run_batch(options).exit_code == 0
    found = {}
    for document in out.glob("*/predictions.json"):
        record = json.loads(document.read_text())
        record["png"] = np.asarray(Image.open(document.parent / "explanation.png"))
        found[record["input"]["sop_instance_uid"]] = record
    return found


@pytest.mark.parametrize("name", sorted(_images()))
def test_predict_equals_run(service: ServiceProcess, by_run: dict[str, dict], name: str) -> None:
    content = _images()[name].read_bytes()
    with service.client() as client:
        response = client.post(
            f"/v1/model/predict/{CLASSIFICATION_ID}", content=content, headers={"content-type": "application/dicom"}
        )
    assert response.status_code == 200, response.text
    document = response.json()
    jsonschema.validate(document, load_predictions_schema("classification"))
    expected = by_run[document["input"]["sop_instance_uid"]]
    assert document["classification"] == expected["classification"]  # probabilities to 8 decimals, labels, members
    assert document["input"] == expected["input"] and document["model"] == expected["model"]
    assert document["explanations"] is None
    assert {"load", "queue", "infer"} <= set(document["timings_s"])


def test_explain_gradcam_adds_the_montage_run_draws(service: ServiceProcess, by_run: dict[str, dict]) -> None:
    content = (CXR_SCANS / "cr_mono1_window_nodule.dcm").read_bytes()
    with service.client() as client:
        document = client.post(f"/v1/model/predict/{CLASSIFICATION_ID}?explain=gradcam", content=content).json()
    jsonschema.validate(document, load_predictions_schema("classification"))  # explanation_png included
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(document.pop("explanation_png")))))
    expected = by_run[document["input"]["sop_instance_uid"]]
    assert document["explanations"] == {"class": "nodule", "methods": ["gradcam"]}
    assert document["classification"] == expected["classification"]
    rows, columns = pydicom.dcmread(CXR_SCANS / "cr_mono1_window_nodule.dcm").pixel_array.shape
    assert png.shape == expected["png"].shape == (MARKER_STRIP + rows, columns, 3)  # the marker's strip on top
    assert np.abs(png.astype(int) - expected["png"].astype(int)).max() <= 1  # the same map, to rounding
    assert list((service.state_dir / "predict").iterdir()) == []
