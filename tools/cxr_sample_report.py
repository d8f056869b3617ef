"""Measure the sample classifier on held-out chests (accuracy, where its Grad-CAM maps lie) and write its README.

The Grad-CAM measure is the one issue 15 states: the ensemble's Grad-CAM map for "nodule" (``explain_batch`` on
the declared layer, resampled onto the image grid by ``to_image_grid``: non-negative, peak 1), its sum inside the
nodule disc divided by its total sum, per positive chest. ``tests/test_cxr_sample.py`` measures the same on
other held-out seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tools.cxr_phantom import NODULE_RADIUS_PX, Chest, make_chest
from tools.make_cxr_sample import (
    ARCHITECTURE,
    BATCH_SIZE,
    CLASSES,
    EPOCHS,
    INPUT_SIZE,
    INTENSITY_MEAN,
    INTENSITY_STD,
    LEARNING_RATE,
    MEMBER_SEEDS,
    MODEL_NAME,
    OUTSIDE_EVIDENCE_WEIGHT,
    SCANS,
    TEST_SEEDS_FROM,
    TRAIN_SEEDS,
    VALIDATION_SEEDS,
    sample_spec,
    training_png,
)

if TYPE_CHECKING:
    import torch

CHECKPOINT_NAMES = ("checkpoints/last.ckpt", "checkpoints/OTHER_RUNS/1/last.ckpt", "checkpoints/OTHER_RUNS/2/last.ckpt")
"""Where ``write_model_folder`` puts the members, in ``MEMBER_SEEDS`` order."""

DESIGN_RUNS: tuple[tuple[str, str, float, float, float, float], ...] = (
    ("max", "L1: 0.5 x mean absolute class evidence (the previous sample)", 0.990, 0.23, 0.02, 0.995),
    ("max", "L1 + 1 x mean positive nodule evidence outside the disc", 0.688, 0.02, 0.00, 0.034),
    ("max", "L1 + 5 x mean positive nodule evidence outside the disc", 0.903, 0.20, 0.00, 0.567),
    ("max", "1 x binary cross-entropy of the nodule evidence against the disc", 0.960, 0.15, 0.00, 0.139),
    ("max", "L1 + 1 x share outside the disc", 0.938, 0.72, 0.00, 0.87),
    ("max", "L1 + 3 x share outside the disc", 0.985, 0.55, 0.00, 0.591),
    ("max, 48 x 48", "L1", 0.928, 0.01, 0.00, 0.0),
    ("max, 48 x 48", "L1 + 1 x share outside the disc", 0.995, 0.96, 0.00, 0.976),
    ("class_max", "nothing", 0.988, 0.08, 0.02, 0.087),
    ("class_max", "0.05 x mean absolute class evidence", 0.993, 0.13, 0.02, 0.567),
    ("class_max", "L1 (did not learn)", 0.518, 0.00, 0.00, 0.0),
    ("class_max", "L1 + 1 x share outside the disc", 0.990, 0.85, 0.60, 1.0),
    ("class_max", "0.3 x share outside the disc", 0.995, 0.65, 0.46, 0.995),
    ("class_max", "1 x share outside the disc", 0.995, 0.87, 0.63, 1.0),
    ("class_max", "3 x share outside the disc", 0.990, 0.89, 0.64, 1.0),
    ("class_max, 48 x 48", "nothing (did not learn)", 0.520, 0.01, 0.00, 0.0),
    ("class_max, 48 x 48", "1 x share outside the disc (chosen)", 0.998, 0.97, 0.76, 1.0),
)
"""Measured while choosing the design: one checkpoint (seed 0, 5 epochs), the 400 validation chests; pooling
(and Grad-CAM grid, 24 x 24 unless said), training objective, accuracy, Grad-CAM mass inside the disc (mean,
minimum), share of maps whose peak lies in the disc."""


def held_out(seeds: Sequence[int]) -> tuple[list[Chest], list[np.ndarray]]:
    """Chests drawn from ``seeds`` and their images mapped as DICOM is mapped (the training PNG convention)."""
    chests = [make_chest(seed) for seed in seeds]
    return chests, [training_png(chest) for chest in chests]


def ensemble_probabilities(
    networks: Sequence[torch.nn.Module], images: Sequence[np.ndarray], batch: int = 64
) -> np.ndarray:
    """(N, K) mean probabilities through the engine: network inputs -> batched classification."""
    from innereye_batch.engine.classify import classify_batch
    from innereye_batch.engine.classify_input import network_inputs

    spec = sample_spec()
    rows = []
    for start in range(0, len(images), batch):
        inputs = network_inputs(images[start : start + batch], spec)
        rows.append(classify_batch(networks, inputs, activation=spec.activation).mean.numpy())
    return np.concatenate(rows)


def accuracy(networks: Sequence[torch.nn.Module], chests: Sequence[Chest], images: Sequence[np.ndarray]) -> float:
    """Share of ``chests`` whose most probable class (ensemble mean) is the truth."""
    predicted = ensemble_probabilities(networks, images).argmax(axis=1)
    truth = np.array([int(c.has_nodule) for c in chests])
    return float((predicted == truth).mean())


def disc_mask(chest: Chest, radius_factor: float = 1.0) -> np.ndarray:
    """Pixels whose centre lies within ``radius_factor`` times the nodule's radius of its centre."""
    assert chest.nodule_centre is not None and chest.nodule_radius is not None
    yy, xx = np.indices(chest.density.shape)
    distance = np.hypot(yy - chest.nodule_centre[0], xx - chest.nodule_centre[1])
    return distance <= chest.nodule_radius * radius_factor


@dataclass(frozen=True)
class GradcamFigures:
    """How well the Grad-CAM maps for "nodule" find the disc, per positive chest."""

    inside: np.ndarray
    """Fraction of the map's mass inside the disc."""
    inside_twice: np.ndarray
    """Fraction inside a disc of twice the radius, same centre."""
    peak_inside: np.ndarray
    """Whether the map's maximum lies inside the disc."""


def gradcam_maps(
    networks: Sequence[torch.nn.Module], images: Sequence[np.ndarray], target: str, batch: int = 32
) -> list[np.ndarray]:
    """The ensemble's Grad-CAM map for class ``target`` of each image, on the image grid (non-negative, peak 1)."""
    from innereye_batch.engine.classify_input import network_inputs
    from innereye_batch.engine.explain import explain_batch, to_image_grid

    spec = sample_spec()
    grids = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        maps = explain_batch(
            networks,
            network_inputs(chunk, spec),
            [CLASSES.index(target)] * len(chunk),
            "gradcam",
            layer=spec.gradcam_layer,
            mean=spec.channel_values("mean"),
            std=spec.channel_values("std"),
        )
        grids += [to_image_grid(heat, image.shape) for image, heat in zip(chunk, maps, strict=True)]
    return grids


def gradcam_figures(
    networks: Sequence[torch.nn.Module], chests: Sequence[Chest], images: Sequence[np.ndarray]
) -> GradcamFigures:
    """Grad-CAM of ``networks`` for "nodule" on the positive chests, resampled to the image grid, measured."""
    positives = [(c, im) for c, im in zip(chests, images, strict=True) if c.has_nodule]
    grids = gradcam_maps(networks, [im for _, im in positives], "nodule")
    inside, twice, peak = [], [], []
    for (chest, _), grid in zip(positives, grids, strict=True):
        total = float(grid.sum())
        inside.append(float(grid[chest.nodule_mask].sum()) / total if total > 0 else 0.0)
        twice.append(float(grid[disc_mask(chest, 2.0)].sum()) / total if total > 0 else 0.0)
        peak.append(total > 0 and bool(chest.nodule_mask.flat[int(np.argmax(grid))]))
    return GradcamFigures(np.array(inside), np.array(twice), np.array(peak))


def measure(networks: Sequence[torch.nn.Module], seconds: Sequence[float]) -> dict[str, Any]:
    """Accuracy of each member and of the ensemble, and the ensemble's Grad-CAM figures, on the validation
    chests; plus how many "normal" maps on the negative ones are empty (no positive evidence at all)."""
    chests, images = held_out(VALIDATION_SEEDS)
    figures: dict[str, Any] = {"seconds": list(seconds), "accuracy": {}}
    for name, network in zip(CHECKPOINT_NAMES, networks, strict=True):
        figures["accuracy"][name] = accuracy([network], chests, images)
    figures["accuracy"]["ensemble"] = accuracy(networks, chests, images)
    figures["gradcam"] = gradcam_figures(networks, chests, images)
    figures["disc_share"] = float(np.mean([c.nodule_mask.mean() for c in chests if c.has_nodule]))
    negatives = [im for c, im in zip(chests, images, strict=True) if not c.has_nodule]
    figures["normal_empty"] = sum(float(grid.max()) == 0 for grid in gradcam_maps(networks, negatives, "normal"))
    figures["negatives"] = len(negatives)
    return figures


def write_readme(folder: Path, figures: dict[str, Any], threads: int) -> None:
    """The model folder's README: how it was made and what it measured."""
    members = "\n".join(f"| {name} | {value:.3f} |" for name, value in figures["accuracy"].items())
    cams: GradcamFigures = figures["gradcam"]
    inside, wider = cams.inside, cams.inside_twice
    cam = INPUT_SIZE[0] // 2 ** ARCHITECTURE["num_downsamplings"]
    design = "\n".join(
        f"| {pool} | {objective} | {acc:.3f} | {mean:.2f} | {low:.2f} | {peak * 100:.1f}% |"
        for pool, objective, acc, mean, low, peak in DESIGN_RUNS
    )
    text = f"""# Sample classification model: {MODEL_NAME}

A genuinely trained, tiny 2-D CNN ensemble that tells **synthetic** chest X-rays with a nodule-like disc from
those without (`tools/cxr_phantom.py`). It exists so that the classification path does real work on a fresh
machine; it knows nothing about real patients or real nodules.

Made by `python -m tools.make_cxr_sample --threads {threads}` (CPU only, from the repository root), which also
writes `../cxr_scans/`. Same command, library versions and thread count: same weights.

- Layout: InnerEye's registered model folder: `model_inference_config.json` (InnerEye's three fields plus our
  `inference` block with `"task": "classification"`) and three Lightning-style checkpoints:
  `checkpoints/last.ckpt`, `checkpoints/OTHER_RUNS/1/last.ckpt`, `checkpoints/OTHER_RUNS/2/last.ckpt`.
- Classes: {", ".join(CLASSES)}, softmax (one finding, mutually exclusive with "normal", so the two
  probabilities sum to one).
- Network: `CNN2D`, 1 input channel, input {INPUT_SIZE[0]} x {INPUT_SIZE[1]}, with
  {", ".join(f"{k} {v}" for k, v in ARCHITECTURE.items() if k != "name")}.
  One downsampling only, the last block dilated instead, so the Grad-CAM layer `features` (the last block) is a
  {cam} x {cam} grid (a cell is {256 / cam:.1f} image pixels). `class_max` pooling: the linear layer scores every
  location of that grid and each class takes its best location, so a "nodule" answer comes from the very place
  where the class evidence, and so Grad-CAM, is highest.
- Training images: {len(TRAIN_SEEDS)} chests, seeds {TRAIN_SEEDS[0]}..{TRAIN_SEEDS[-1]}, 256 x 256 pixels, about
  half with a nodule (radius {NODULE_RADIUS_PX[0]:g}-{NODULE_RADIUS_PX[1]:g} pixels). Each was stored as 12-bit
  MONOCHROME2 CR, mapped to the 16-bit PNG convention by `innereye_batch.dicom.projection` and saved as a
  16-bit PNG (in a temporary folder, not kept); training read the PNGs back.
- Input: PNG / 65535, resized to {INPUT_SIZE[0]} x {INPUT_SIZE[1]} with antialiasing, then
  (x - {INTENSITY_MEAN}) / {INTENSITY_STD}.
- Training: {EPOCHS} epochs, batch {BATCH_SIZE}, AdamW with a one-cycle learning rate (peak {LEARNING_RATE:g}),
  random left-right flips, checkpoint seeds {", ".join(map(str, MEMBER_SEEDS))} (initial weights, batch order).
  Loss: cross-entropy plus {OUTSIDE_EVIDENCE_WEIGHT:g} x the share of the positive "nodule" evidence
  (classifier weights x last-block features, per location: the map Grad-CAM shows) that lies outside the disc,
  averaged over the positive images of the batch. **That penalty uses the known disc of each synthetic
  training image**: fair for a sample whose explanations must be checkable, but the maps did not learn it
  unaided, and real images would need outlined findings for it. Without it the maps are a haze over the chest
  (the table below).
- Training time: {" + ".join(f"{s:.0f}" for s in figures["seconds"])} s on {threads} CPU threads (a shared machine).
- Held out: validation seeds {VALIDATION_SEEDS[0]}..{VALIDATION_SEEDS[-1]}; the files in `../cxr_scans/` use
  seeds {", ".join(str(p.seed) for p in SCANS)}; tests use seeds from {TEST_SEEDS_FROM} up.

Accuracy on the {len(VALIDATION_SEEDS)} validation chests, mapped as DICOM is mapped:

| | accuracy |
|---|---|
{members}

Grad-CAM of the ensemble for "nodule" on the {len(inside)} positive validation chests, on the image grid
(`explain_batch` + `to_image_grid`: non-negative, peak 1); the map's sum inside the nodule disc over its total:

| mean | standard deviation | minimum | 5th percentile | median | within twice the radius: mean, minimum |
|---|---|---|---|---|---|
| {np.mean(inside):.3f} | {np.std(inside):.3f} | {np.min(inside):.3f} | {np.percentile(inside, 5):.3f} \
| {np.median(inside):.3f} | {np.mean(wider):.3f}, {np.min(wider):.3f} |

The disc covers {figures["disc_share"] * 100:.1f}% of the image on average. The map's maximum lies inside the
disc on {np.mean(cams.peak_inside) * 100:.1f}% of these chests. On the {figures["negatives"]} negative chests the
map for "normal" (the class a run explains there) is empty (no positive evidence) on {figures["normal_empty"]}.

How the design was chosen (one checkpoint, seed 0, {EPOCHS} epochs, the {len(VALIDATION_SEEDS)} validation
chests; Grad-CAM grid 24 x 24 unless said; "share outside the disc" is the penalty above):

| pooling | objective (cross-entropy +) | accuracy | mass inside, mean | minimum | peak inside |
|---|---|---|---|---|---|
{design}
"""
    (folder / "README.md").write_text(text)
