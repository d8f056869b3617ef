"""Train the sample classification model (normal vs nodule, a three-checkpoint CNN2D ensemble) on synthetic chest
X-rays saved as 16-bit PNGs, and write sample_data/cxr_model/ and sample_data/cxr_scans/.

Run from the repository root: ``python -m tools.make_cxr_sample`` (CPU only, a few minutes on 2 cores). Each
training image is drawn by ``tools.cxr_phantom.make_chest(seed)``, stored as a 12-bit MONOCHROME2 CR image,
mapped to the 16-bit PNG convention by ``innereye_batch.dicom.projection`` (exactly as inference maps DICOM) and
written as a 16-bit grey PNG to a temporary folder; training reads those PNGs back, with the disc mask drawn with
each chest (the training loss penalises "nodule" evidence outside it, so Grad-CAM points at the nodule). The
PNGs are deleted afterwards; only the checkpoints, the inference block, a README with the figures measured by
``tools.cxr_sample_report`` and a few held-out images written as CR / DX DICOM files are kept. Same command,
library versions and thread count: same weights.
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

from tools.cxr_phantom import Chest, identity_voi_lut, make_chest, projection_dataset, quantise

if TYPE_CHECKING:
    import torch

    from innereye_batch.model.architectures.cnn2d import CNN2D
    from innereye_batch.model.classification import ClassificationSpec
    from innereye_batch.model.spec import ArchitectureSpec

MODEL_NAME = "SampleChestNodule"
CLASSES = ("normal", "nodule")
ARCHITECTURE: dict[str, Any] = {
    "name": "CNN2D",
    "initial_feature_channels": 8,
    "num_blocks": 3,
    "num_downsamplings": 1,
    "dropout": 0.1,
    "global_pool": "class_max",
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
OUTSIDE_EVIDENCE_WEIGHT = 1.0
"""Weight of the penalty on the share of "nodule" evidence outside the disc, on positive training images (0.3
left 0.65 of the Grad-CAM mass inside the disc, 3 no better than 1; see the model README)."""


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


@dataclass(frozen=True)
class TrainingImage:
    """One training PNG, its label (1: nodule) and the disc mask drawn with it (all False without a nodule)."""

    path: Path
    label: int
    nodule_mask: np.ndarray


def write_training_pngs(folder: Path, seeds: Sequence[int]) -> list[TrainingImage]:
    """One PNG per seed, with its label and nodule disc mask."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for seed in seeds:
        chest = make_chest(seed)
        path = folder / f"chest_{seed}.png"
        write_png(path, training_png(chest))
        written.append(TrainingImage(path, int(chest.has_nodule), chest.nodule_mask))
    return written


def nodule_evidence(network: CNN2D, features: torch.Tensor) -> torch.Tensor:
    """(N, h, w) per-location evidence for "nodule" (the classifier's nodule weights x the last block's features),
    which is what Grad-CAM on that block shows: for a CNN2D with ``class_max`` pooling, Grad-CAM's channel weights
    are these weights / (h * w), so its map is ReLU of this evidence, scaled."""
    import torch

    weights = network.classifier.weight[CLASSES.index("nodule")]
    return torch.einsum("c,nchw->nhw", weights, features)


def outside_share(evidence: torch.Tensor, disc_share: torch.Tensor) -> torch.Tensor:
    """(N,) share of each map's positive evidence that lies outside the disc; ``disc_share`` (N, h, w) is the
    fraction of each cell inside the disc. A map with no positive evidence scores 0."""
    positive = evidence.clamp_min(0).flatten(1)
    return (positive * (1 - disc_share.flatten(1))).sum(dim=1) / (positive.sum(dim=1) + 1e-6)


def train_member(
    seed: int, inputs: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, epochs: int
) -> torch.nn.Module:
    """Train one CNN2D from ``seed`` on network inputs (N, 1, H, W) with their disc masks (N, y, x) on the image
    grid, with random left-right flips.

    The loss is cross-entropy plus ``OUTSIDE_EVIDENCE_WEIGHT`` x the mean, over the positive images of the batch,
    of the share of "nodule" evidence outside the disc. That penalty uses the known disc of these synthetic
    images (real training data would need outlined findings for it): it teaches the network to keep its evidence,
    and so Grad-CAM, on the finding.
    """
    import torch
    import torch.nn.functional as F

    from innereye_batch.model.architectures import build_network
    from innereye_batch.model.architectures.cnn2d import CNN2D

    spec = sample_spec()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = build_network(sample_architecture(), spec.input_channels, spec.num_outputs)
    assert isinstance(network, CNN2D)
    network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    inputs = inputs.to(memory_format=torch.channels_last)
    with torch.no_grad():
        grid = network.features(inputs[:1]).shape[-2:]
    disc_shares = F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0]  # share of each cell inside the disc
    optimiser = torch.optim.AdamW(network.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
    steps = epochs * ((len(inputs) + BATCH_SIZE - 1) // BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=LEARNING_RATE, total_steps=steps)
    network.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), BATCH_SIZE):
            picks = order[start : start + BATCH_SIZE]
            x, y, shares = inputs[picks], labels[picks], disc_shares[picks]
            flip = torch.rand(len(picks), generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            shares = torch.where(flip.view(-1, 1, 1), shares.flip(-1), shares)
            features = network.features(x)
            logits = network.head(features)
            positive = (y == 1).float()
            outside = (outside_share(nodule_evidence(network, features), shares) * positive).sum()
            loss = F.cross_entropy(logits, y) + OUTSIDE_EVIDENCE_WEIGHT * outside / positive.sum().clamp_min(1)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return network.eval()


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
        sop_instance_uid=str(generate_uid(entropy_srcs=["innereye-batch cxr sample", "image", plan.name])),
        description=f"Synthetic chest {plan.modality} {plan.photometric} VOI {plan.voi}, seed {plan.seed}",
    )


def write_scans(folder: Path) -> list[Path]:
    """Write ``SCANS`` under ``folder`` (study, series and instance UIDs are derived from the file names, so the
    files are the same each time)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for plan in SCANS:
        path = folder / plan.name
        scan_dataset(plan).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """Write the training PNGs, train three checkpoints, write the model folder, scans and README."""
    import torch

    from innereye_batch.engine.classify_input import network_inputs
    from innereye_batch.model.export import write_model_folder
    from tools.cxr_sample_report import measure, write_readme

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
        training = write_training_pngs(Path(temporary), TRAIN_SEEDS)
        inputs = network_inputs([read_png(image.path) for image in training], spec)
    labels = torch.tensor([image.label for image in training])
    masks = torch.from_numpy(np.stack([image.nodule_mask for image in training]))
    print(f"{len(training)} training PNGs, {int(labels.sum())} with a nodule", flush=True)

    networks, seconds = [], []
    for seed in MEMBER_SEEDS:
        start = time.perf_counter()
        networks.append(train_member(seed, inputs, labels, masks, args.epochs))
        seconds.append(time.perf_counter() - start)
        print(f"checkpoint seed {seed}: trained in {seconds[-1]:.0f} s", flush=True)

    figures = measure(networks, seconds)
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
