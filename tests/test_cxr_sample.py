"""The shipped sample classifier and X-ray scans: layout, size, accuracy on held-out chests read as DICOM, Grad-CAM.

Held-out chests are drawn from seeds that neither training, validation nor the shipped scans used, written as
CR / DX DICOM files in the five encodings of the shipped scans, read back through ``dicom.projection`` and
classified through the engine, as a run would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from innereye_batch.dicom.projection import read_projection_images
from innereye_batch.engine.classify import classify_batch, predicted_labels
from innereye_batch.engine.classify_input import network_inputs
from innereye_batch.engine.explain import explain_batch, to_image_grid
from innereye_batch.model.classification import ClassificationSpec
from innereye_batch.model.package import CONFIG_FILE, discover_checkpoints
from tests.classifier_models import load_classifiers, read_classification_folder
from tools.cxr_phantom import Chest, make_chest
from tools.make_cxr_sample import (
    SCANS,
    TEST_SEEDS_FROM,
    ScanPlan,
    inference_block,
    outside_share,
    scan_dataset,
    training_png,
)

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "sample_data" / "cxr_model"
SCAN_FOLDER = REPO / "sample_data" / "cxr_scans"
HELD_OUT = 200
MIN_ACCURACY = 0.95
MOST = 0.5
"""Issue 15: Grad-CAM maps put MOST of their mass inside the nodule disc on positive images (mean fraction > 0.5)."""
MIN_MEAN_MASS_INSIDE = 0.9
"""Measured when the model was made (its README): on 208 positive validation chests the ensemble's Grad-CAM for
"nodule" puts 0.975 of its mass inside the disc on average (standard deviation 0.019, minimum 0.896, 5th
percentile 0.939), while the disc covers 0.8% of the image; on the 110 positives among the held-out chests here,
0.975 (standard deviation 0.026, minimum 0.795). The mean's standard error is under 0.003, so 0.9 fails only if
the model really got worse."""
MIN_MASS_INSIDE_EACH = 0.6
"""Every positive map: the lowest of the 318 measured is 0.795; 0.6 still means "most" for each image."""
MIN_PEAK_INSIDE = 0.97
"""Measured: the map's maximum lies inside the disc on all 208 validation positives and all 110 here; 0.97 allows
for a few misses should the model be retrained."""


@pytest.fixture(scope="module")
def spec() -> ClassificationSpec:
    return read_classification_folder(MODEL)[0]


@pytest.fixture(scope="module")
def networks() -> list[torch.nn.Module]:
    spec, architecture, paths = read_classification_folder(MODEL)
    return load_classifiers(paths, architecture, spec)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Chest], list[np.ndarray]]:
    """Held-out chests written as DICOM in the shipped encodings and read back in the PNG convention."""
    folder = tmp_path_factory.mktemp("held_out")
    chests, images = [], []
    for k in range(HELD_OUT):
        seed = TEST_SEEDS_FROM + k
        chest = make_chest(seed)
        template = SCANS[k % len(SCANS)]
        plan = ScanPlan(f"{seed}.dcm", seed, chest.has_nodule, template.modality, template.photometric, template.voi)
        path = folder / plan.name
        scan_dataset(plan).save_as(path, enforce_file_format=True)
        chests.append(chest)
        images.append(read_projection_images(path, modalities=["CR", "DX"])[0].pixels)
        # whatever the encoding, the file maps to the PNG this chest would have been trained on
        np.testing.assert_array_equal(images[-1], training_png(chest))
    return chests, images


def test_model_folder_layout_block_and_size(spec: ClassificationSpec) -> None:
    config = json.loads((MODEL / CONFIG_FILE).read_text())
    assert config["inference"] == inference_block() and config["inference"]["task"] == "classification"
    assert sorted(discover_checkpoints(MODEL)) == sorted(config["checkpoint_paths"])
    assert len(config["checkpoint_paths"]) == 3
    assert spec.classes == ("normal", "nodule") and spec.activation == "softmax"
    total = sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file())
    total += sum(p.stat().st_size for p in SCAN_FOLDER.rglob("*") if p.is_file())
    assert total < 2_000_000
    assert "accuracy" in (MODEL / "README.md").read_text()


def test_held_out_accuracy(spec: ClassificationSpec, networks, held_out) -> None:
    chests, images = held_out
    probabilities = classify_batch(networks, network_inputs(images, spec), activation="softmax").mean
    predicted = [labels[0] for labels in predicted_labels(probabilities, spec.classes, spec.activation)]
    truth = ["nodule" if c.has_nodule else "normal" for c in chests]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    assert 0.3 < np.mean([c.has_nodule for c in chests]) < 0.7  # both classes are well represented
    assert accuracy >= MIN_ACCURACY, f"held-out accuracy {accuracy:.3f}"


def test_probabilities_ensemble_and_batching(spec: ClassificationSpec, networks, held_out) -> None:
    _, images = held_out
    batch = network_inputs(images[:16], spec)
    result = classify_batch(networks, batch, activation="softmax", keep_members=True)
    torch.testing.assert_close(result.mean.sum(dim=1), torch.ones(16), rtol=0, atol=1e-6)
    by_hand = []
    with torch.no_grad():
        for network in networks:
            logits = network(batch).double()
            by_hand.append(torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True))
    torch.testing.assert_close(result.mean.double(), sum(by_hand) / 3, rtol=0, atol=1e-6)
    for k in range(16):
        alone = classify_batch(networks, batch[k : k + 1], activation="softmax").mean[0]
        torch.testing.assert_close(result.mean[k], alone, rtol=0, atol=1e-5)


def gradcam_on_image_grid(
    spec: ClassificationSpec, networks: list[torch.nn.Module], images: list[np.ndarray], target: str
) -> list[np.ndarray]:
    """The ensemble's Grad-CAM maps for ``target`` on each image's own grid, as a run computes them."""
    maps = explain_batch(
        networks,
        network_inputs(images, spec),
        [spec.classes.index(target)] * len(images),
        "gradcam",
        layer=spec.gradcam_layer,
        mean=spec.channel_values("mean"),
        std=spec.channel_values("std"),
    )
    return [to_image_grid(heat, image.shape) for image, heat in zip(images, maps, strict=True)]


def test_gradcam_puts_most_of_its_mass_inside_the_nodule(spec: ClassificationSpec, networks, held_out) -> None:
    chests, images = held_out
    positives = [(c, im) for c, im in zip(chests, images, strict=True) if c.has_nodule]
    grids = gradcam_on_image_grid(spec, networks, [im for _, im in positives], "nodule")
    fractions, peaks = [], []
    for (chest, image), grid in zip(positives, grids, strict=True):
        assert grid.shape == image.shape and grid.min() >= 0 and float(grid.max()) == pytest.approx(1.0)
        fractions.append(float(grid[chest.nodule_mask].sum() / grid.sum()))
        peaks.append(bool(chest.nodule_mask.flat[int(np.argmax(grid))]))
    assert len(positives) >= 60
    assert np.mean([c.nodule_mask.mean() for c, _ in positives]) < 0.01  # the disc is a small part of the image
    assert np.mean(fractions) > MOST, f"mean mass inside {np.mean(fractions):.3f}"
    assert np.mean(fractions) >= MIN_MEAN_MASS_INSIDE, f"mean mass inside {np.mean(fractions):.3f}"
    assert min(fractions) >= MIN_MASS_INSIDE_EACH, f"least mass inside {min(fractions):.3f}"
    assert np.mean(peaks) >= MIN_PEAK_INSIDE, f"peak inside on {np.mean(peaks):.3f}"


def test_gradcam_of_normal_chests_is_not_empty(spec: ClassificationSpec, networks, held_out) -> None:
    """A run explains the predicted class; on normal chests that is "normal", whose map must show some evidence
    (the training penalty shapes only the "nodule" evidence). Measured: none of 192 validation maps is empty."""
    chests, images = held_out
    negatives = [im for c, im in zip(chests, images, strict=True) if not c.has_nodule]
    peaks = [float(grid.max()) for grid in gradcam_on_image_grid(spec, networks, negatives, "normal")]
    assert len(negatives) >= 60 and peaks == pytest.approx([1.0] * len(negatives))


def test_the_training_penalty_is_the_share_of_positive_evidence_outside_the_disc() -> None:
    shares = torch.zeros(3, 4, 4)
    shares[:, 1, 1], shares[:, 1, 2] = 1.0, 0.5  # one cell wholly inside the disc, one half inside
    evidence = torch.full((3, 4, 4), -1.0)  # negative evidence counts nowhere (Grad-CAM's ReLU drops it)
    evidence[0, 1, 1] = 2.0  # all positive evidence inside: nothing outside
    evidence[1, 1, 2], evidence[1, 3, 3] = 2.0, 1.0  # 2 half inside, 1 outside: (1 + 1) / 3
    evidence[2] = -evidence[2]  # uniform: the cells' outside shares, 14.5 of 16
    torch.testing.assert_close(
        outside_share(evidence, shares), torch.tensor([0.0, 2 / 3, 14.5 / 16]), atol=1e-5, rtol=0
    )
    assert float(outside_share(torch.full((1, 4, 4), -1.0), shares[:1])) == 0.0  # no positive evidence at all


@pytest.mark.parametrize("plan", SCANS, ids=[p.name for p in SCANS])
def test_shipped_scans_map_to_their_training_png_and_are_classified_right(
    spec: ClassificationSpec, networks, plan: ScanPlan
) -> None:
    path = SCAN_FOLDER / plan.name
    images = read_projection_images(path, modalities=spec.modalities)
    assert len(images) == 1
    expected = training_png(make_chest(plan.seed, nodule=plan.nodule))
    np.testing.assert_array_equal(images[0].pixels, expected)  # DICOM -> PNG equals what training saw
    assert images[0].inverted is (plan.photometric == "MONOCHROME1")
    probabilities = classify_batch(networks, network_inputs([images[0].pixels], spec), activation="softmax").mean
    assert predicted_labels(probabilities, spec.classes, "softmax") == [("nodule" if plan.nodule else "normal",)]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert (ds.Modality, ds.PhotometricInterpretation, str(ds.PatientName)) == (
        plan.modality,
        plan.photometric,
        "Phantom^CXR",
    )


def test_shipped_scans_are_valid_dicom() -> None:
    exe = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
    for plan in SCANS:
        out = subprocess.run([exe, str(SCAN_FOLDER / plan.name)], capture_output=True, text=True, check=False)
        report = out.stdout + out.stderr
        assert ("CRImage" if plan.modality == "CR" else "DXImageForPresentation") in report
        assert [line for line in report.splitlines() if line.startswith("Error")] == [], report
