"""Train the sample classification model (normal vs nodule, a three-checkpoint CNN2D ensemble) on synthetic chest
X-rays saved as 16-bit PNGs, and write sample_data/cxr_model/ and sample_data/cxr_scans/.

Run from the repository root: ``python -m tools.make_cxr_sample`` (CPU only, a few minutes on 2 cores). Each
training image is drawn by ``tools.cxr_phantom.make_chest(seed)``, stored as a 12-bit MONOCHROME2 CR image,
mapped to the 16-bit PNG convention by ``innereye_batch.dicom.projection`` (exactly as inference maps DICOM) and
written as a 16-bit grey PNG to a temporary folder; training reads those PNGs back. The PNGs are deleted
afterwards; only the checkpoints, the inference block, a README with the measured figures and a few held-out
images written as CR / DX DICOM files are kept. Same command, library versions and thread count: same weights.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tools.cxr_phantom import NODULE_RADIUS_PX, Chest, identity_voi_lut, make_chest, projection_dataset, quantise

if TYPE_CHECKING:
    import torch

    from innereye_batch.model.classification import ClassificationSpec
    from innereye_batch.model.spec import ArchitectureSpec

MODEL_NAME = "SampleChestNodule"
CLASSES = ("normal", "nodule")
ARCHITECTURE: dict[str, Any] = {
    "name": "CNN2D",
    "initial_feature_channels": 8,
    "num_blocks": 3,
    "dropout": 0.1,
    "global_pool": "max",
}
INPUT_SIZE = (96, 96)
INTENSITY_MEAN, INTENSITY_STD = 0.4, 0.25
BITS_STORED = 12
TRAIN_SEEDS: tuple[int, ...] = tuple(range(10_000, 10_800))
VALIDATION_SEEDS: tuple[int, ...] = tuple(range(20_000, 20_400))
TEST_SEEDS_FROM = 30_000
"""Tests regenerate held-out images from this seed up; training, validation and scans never use them."""
MEMBER_SEEDS: tuple[int, ...] = (0, 1, 2)
EPOCHS = 5
BATCH_SIZE = 32
LEARNING_RATE = 3e-3
CAM_SPARSITY = 0.5
"""Weight of the L1 penalty on the class evidence map (0.05 left Grad-CAM diffuse, 2 stopped learning)."""


def inference_block() -> dict[str, Any]:
    """Our classification block for model_inference_config.json."""
    return {
        "version": 1,
        "task": "classification",
        "classes": list(CLASSES),
        "activation": "softmax",
        "architecture": dict(ARCHITECTURE),
        "input_size": list(INPUT_SIZE),
        "input_channels": 1,
        "intensity": {"apply_voi": True, "png_scaling": "full_range", "mean": [INTENSITY_MEAN], "std": [INTENSITY_STD]},
        "modalities": ["CR", "DX"],
        "gradcam_layer": "features",
    }


def sample_spec() -> ClassificationSpec:
    from innereye_batch.model.classification import parse_classification_block

    return parse_classification_block(inference_block(), Path("tools/make_cxr_sample.py"))


def sample_architecture() -> ArchitectureSpec:
    from innereye_batch.model.classification import parse_classification_architecture

    return parse_classification_architecture(inference_block(), Path("tools/make_cxr_sample.py"))


def training_png(chest: Chest) -> np.ndarray:
    """The 16-bit PNG a chest is trained on: a 12-bit MONOCHROME2 CR without VOI, mapped as inference maps it."""
    from innereye_batch.dicom.projection import projection_images

    ds = projection_dataset(quantise(chest.density, BITS_STORED), modality="CR", bits_stored=BITS_STORED)
    return projection_images(ds)[0].pixels


def write_png(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit grey PNG (Pillow mode ``I;16``)."""
    from PIL import Image

    if pixels.dtype != np.uint16:
        raise ValueError(f"a 16-bit PNG needs uint16 pixels, got {pixels.dtype}")
    Image.fromarray(pixels).save(path)  # uint16 (y, x) is mode "I;16"


def read_png(path: Path) -> np.ndarray:
    """A 16-bit grey PNG as uint16 (y, x)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image, dtype=np.uint16)


def write_training_pngs(folder: Path, seeds: Sequence[int]) -> list[tuple[Path, int]]:
    """One PNG per seed; returns (path, label) pairs, label 1 for a nodule."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for seed in seeds:
        chest = make_chest(seed)
        path = folder / f"chest_{seed}.png"
        write_png(path, training_png(chest))
        written.append((path, int(chest.has_nodule)))
    return written


def train_member(seed: int, inputs: torch.Tensor, labels: torch.Tensor, epochs: int) -> torch.nn.Module:
    """Train one CNN2D from ``seed`` on network inputs (N, 1, H, W), with random left-right flips."""
    import torch

    from innereye_batch.model.architectures import build_network

    spec = sample_spec()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = build_network(sample_architecture(), spec.input_channels, spec.num_outputs)
    network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    inputs = inputs.to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(network.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
    steps = epochs * ((len(inputs) + BATCH_SIZE - 1) // BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=LEARNING_RATE, total_steps=steps)
    network.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), BATCH_SIZE):
            picks = order[start : start + BATCH_SIZE]
            x, y = inputs[picks], labels[picks]
            flip = torch.rand(len(picks), generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            features = network.features(x)
            logits = network.classifier(network.dropout(network.pool(features).flatten(1)))
            # per-location class evidence (the class activation map); its L1 norm keeps the evidence where the
            # finding is, so that Grad-CAM, which reads this map, points at the nodule rather than everywhere
            evidence = torch.einsum("kc,nchw->nkhw", network.classifier.weight, features)
            loss = torch.nn.functional.cross_entropy(logits, y) + CAM_SPARSITY * evidence.abs().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return network.eval()


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


def gradcam_figures(
    networks: Sequence[torch.nn.Module], chests: Sequence[Chest], images: Sequence[np.ndarray]
) -> GradcamFigures:
    """Grad-CAM of ``networks`` for "nodule" on the positive chests, resampled to the image grid, measured."""
    from innereye_batch.engine.classify_input import network_inputs
    from innereye_batch.engine.explain import explain_batch, to_image_grid

    spec = sample_spec()
    positives = [(c, im) for c, im in zip(chests, images, strict=True) if c.has_nodule]
    inside, twice, peak = [], [], []
    for start in range(0, len(positives), 32):
        chunk = positives[start : start + 32]
        inputs = network_inputs([im for _, im in chunk], spec)
        maps = explain_batch(
            networks,
            inputs,
            [CLASSES.index("nodule")] * len(chunk),
            "gradcam",
            layer=spec.gradcam_layer,
            mean=spec.channel_values("mean"),
            std=spec.channel_values("std"),
        )
        for (chest, image), heat in zip(chunk, maps, strict=True):
            grid = to_image_grid(heat, image.shape)
            total = max(float(grid.sum()), 1e-12)
            inside.append(float(grid[chest.nodule_mask].sum()) / total)
            twice.append(float(grid[disc_mask(chest, 2.0)].sum()) / total)
            peak.append(bool(chest.nodule_mask.flat[int(np.argmax(grid))]))
    return GradcamFigures(np.array(inside), np.array(twice), np.array(peak))


@dataclass(frozen=True)
class ScanPlan:
    """One shipped sample DICOM file: name, chest seed and whether it has a nodule, and how it is encoded."""

    name: str
    seed: int
    nodule: bool
    modality: str
    photometric: str
    voi: str
    """``none``, ``window`` (the whole stored range, LINEAR), ``window_exact`` (LINEAR_EXACT) or ``lut``."""


SCANS: tuple[ScanPlan, ...] = (
    ScanPlan("cr_mono2_normal.dcm", 40_000, False, "CR", "MONOCHROME2", "none"),
    ScanPlan("cr_mono1_window_nodule.dcm", 40_001, True, "CR", "MONOCHROME1", "window"),
    ScanPlan("dx_mono2_voilut_nodule.dcm", 40_002, True, "DX", "MONOCHROME2", "lut"),
    ScanPlan("dx_mono1_voilut_normal.dcm", 40_003, False, "DX", "MONOCHROME1", "lut"),
    ScanPlan("dx_mono2_window_exact_nodule.dcm", 40_004, True, "DX", "MONOCHROME2", "window_exact"),
)
"""Each encoding maps to exactly the training PNG of its chest (the windows and LUTs span the stored range)."""


def scan_dataset(plan: ScanPlan) -> Any:
    """The DICOM dataset of one sample scan (12-bit; MONOCHROME1 stores the inverted values)."""
    from pydicom.uid import generate_uid

    chest = make_chest(plan.seed, nodule=plan.nodule)
    stored = quantise(chest.density, BITS_STORED)
    top = 2**BITS_STORED - 1
    if plan.photometric == "MONOCHROME1":
        stored = (top - stored.astype(np.int32)).astype(np.uint16)
    window = {"window": (2**BITS_STORED / 2, 2.0**BITS_STORED), "window_exact": (top / 2, float(top))}.get(plan.voi)
    return projection_dataset(
        stored,
        modality=plan.modality,
        photometric=plan.photometric,
        bits_stored=BITS_STORED,
        window=window,
        voi_function="LINEAR_EXACT" if plan.voi == "window_exact" else None,
        voi_lut=identity_voi_lut(BITS_STORED) if plan.voi == "lut" else None,
        pixel_spacing=(1.4, 1.4) if plan.modality == "DX" else None,
        study_instance_uid=str(generate_uid(entropy_srcs=["innereye-batch cxr sample", "study", plan.name])),
        series_instance_uid=str(generate_uid(entropy_srcs=["innereye-batch cxr sample", "series", plan.name])),
        description=f"Synthetic chest {plan.modality} {plan.photometric} VOI {plan.voi}, seed {plan.seed}",
    )


def write_scans(folder: Path) -> list[Path]:
    """Write ``SCANS`` under ``folder`` (instance UIDs are new each time; study and series UIDs are derived)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for plan in SCANS:
        path = folder / plan.name
        scan_dataset(plan).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_readme(folder: Path, figures: dict[str, Any], threads: int) -> None:
    """The model folder's README: how it was made and what it measured."""
    members = "\n".join(f"| {name} | {value:.3f} |" for name, value in figures["accuracy"].items())
    cams: GradcamFigures = figures["gradcam"]
    fractions, wider = cams.inside, cams.inside_twice
    cam = INPUT_SIZE[0] // 2 ** (ARCHITECTURE["num_blocks"] - 1)
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
- Network: `CNN2D` ({", ".join(f"{k} {v}" for k, v in ARCHITECTURE.items() if k != "name")}), 1 input channel,
  input {INPUT_SIZE[0]} x {INPUT_SIZE[1]}; Grad-CAM layer `features` (the last block, {cam} x {cam}). Global max
  pooling: the strongest location decides, which suits one small finding.
- Training images: {len(TRAIN_SEEDS)} chests, seeds {TRAIN_SEEDS[0]}..{TRAIN_SEEDS[-1]}, 256 x 256 pixels, about
  half with a nodule (radius {NODULE_RADIUS_PX[0]:g}-{NODULE_RADIUS_PX[1]:g} pixels). Each was stored as 12-bit
  MONOCHROME2 CR, mapped to the 16-bit PNG convention by `innereye_batch.dicom.projection` and saved as a
  16-bit PNG (in a temporary folder, not kept); training read the PNGs back.
- Input: PNG / 65535, resized to {INPUT_SIZE[0]} x {INPUT_SIZE[1]} with antialiasing, then
  (x - {INTENSITY_MEAN}) / {INTENSITY_STD}.
- Training: {EPOCHS} epochs, batch {BATCH_SIZE}, AdamW with a one-cycle learning rate (peak {LEARNING_RATE:g}),
  cross-entropy plus {CAM_SPARSITY:g} x the mean absolute per-location class evidence (the class activation
  map: classifier weights x last-block features), which keeps the evidence where the finding is and so makes
  Grad-CAM point at the nodule rather than spread over the chest; random left-right flips; checkpoint seeds
  {", ".join(map(str, MEMBER_SEEDS))} (initial weights, batch order).
- Training time: {" + ".join(f"{s:.0f}" for s in figures["seconds"])} s on {threads} CPU threads (a shared machine).
- Held out: validation seeds {VALIDATION_SEEDS[0]}..{VALIDATION_SEEDS[-1]}; the files in `../cxr_scans/` use
  seeds {", ".join(str(p.seed) for p in SCANS)}; tests use seeds from {TEST_SEEDS_FROM} up.

Accuracy on the {len(VALIDATION_SEEDS)} validation chests, mapped as DICOM is mapped:

| | accuracy |
|---|---|
{members}

Grad-CAM of the ensemble for "nodule" on the {len(fractions)} positive validation chests, on the image grid:
the fraction of the map's mass inside the nodule disc is {np.mean(fractions):.2f} on average (minimum
{np.min(fractions):.2f}, median {np.median(fractions):.2f}), inside a disc of twice the radius around it
{np.mean(wider):.2f} (minimum {np.min(wider):.2f}); the disc itself covers {figures["disc_share"] * 100:.1f}% of
the image on average, so that is {np.mean(fractions) / figures["disc_share"]:.0f} times chance. The rest is a
faint haze over the whole chest; the map's maximum lies inside the disc on {np.mean(cams.peak_inside) * 100:.1f}%
of these chests.
"""
    (folder / "README.md").write_text(text)


def main(argv: Sequence[str] | None = None) -> None:
    """Write the training PNGs, train three checkpoints, write the model folder, scans and README."""
    import torch

    from innereye_batch.engine.classify_input import network_inputs
    from innereye_batch.model.export import write_model_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("sample_data"), help="Folder to write into.")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="Training epochs per checkpoint.")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (changes the exact weights).")
    parser.add_argument("--scans-only", action="store_true", help="Rewrite cxr_scans/ only; no training.")
    args = parser.parse_args(argv)
    if args.scans_only:
        print(f"wrote {len(write_scans(args.output / 'cxr_scans'))} files under {args.output / 'cxr_scans'}")
        return

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    spec = sample_spec()
    with tempfile.TemporaryDirectory(prefix="cxr_pngs_") as temporary:
        pairs = write_training_pngs(Path(temporary), TRAIN_SEEDS)
        inputs = network_inputs([read_png(path) for path, _ in pairs], spec)
    labels = torch.tensor([label for _, label in pairs])
    print(f"{len(pairs)} training PNGs, {int(labels.sum())} with a nodule", flush=True)

    networks, seconds = [], []
    for seed in MEMBER_SEEDS:
        start = time.perf_counter()
        networks.append(train_member(seed, inputs, labels, args.epochs))
        seconds.append(time.perf_counter() - start)
        print(f"checkpoint seed {seed}: trained in {seconds[-1]:.0f} s", flush=True)

    chests, images = held_out(VALIDATION_SEEDS)
    figures: dict[str, Any] = {"seconds": seconds, "accuracy": {}}
    for name, nets in zip(
        ["checkpoints/last.ckpt", "checkpoints/OTHER_RUNS/1/last.ckpt", "checkpoints/OTHER_RUNS/2/last.ckpt"],
        [[n] for n in networks],
        strict=True,
    ):
        figures["accuracy"][name] = accuracy(nets, chests, images)
    figures["accuracy"]["ensemble"] = accuracy(networks, chests, images)
    figures["gradcam"] = gradcam_figures(networks, chests, images)
    figures["disc_share"] = float(np.mean([c.nodule_mask.mean() for c in chests if c.has_nodule]))
    cams = figures["gradcam"]
    print(figures["accuracy"], f"Grad-CAM inside {cams.inside.mean():.3f} (min {cams.inside.min():.3f}),")
    print(f"inside twice the radius {cams.inside_twice.mean():.3f}, peak inside {cams.peak_inside.mean():.3f}")

    model_folder = args.output / "cxr_model"
    write_model_folder(
        model_folder,
        networks,
        model_name=MODEL_NAME,
        inference_block=inference_block(),
        model_configs_namespace=f"tools.make_cxr_sample.{MODEL_NAME}",
    )
    write_readme(model_folder, figures, args.threads)
    scans = write_scans(args.output / "cxr_scans")
    print(f"wrote {model_folder} and {len(scans)} files under {args.output / 'cxr_scans'}")


if __name__ == "__main__":
    main()
