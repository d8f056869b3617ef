"""Train the sample model (a three-checkpoint UNet3D ensemble) on synthetic phantoms and write sample_data/.

Run from the repository root: ``python -m tools.make_sample`` (CPU only, a few minutes on 2 cores). It writes
``sample_data/final_model/`` (InnerEye's registered-model-folder layout plus our inference block and a README
with the measured figures) and ``sample_data/scans/`` (held-out phantoms as DICOM CT series). The same command
on the same library versions and thread count gives the same weights.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from tools.phantom import DEFAULT_SPACING, STRUCTURE_COLOURS, STRUCTURE_NAMES, make_phantom

if TYPE_CHECKING:
    import torch

    from innereye_batch.model.spec import ModelPackage

MODEL_NAME = "SamplePhantomAbdomen"
TRAIN_SEEDS: tuple[int, ...] = tuple(range(100, 132))
VALIDATION_SEEDS: tuple[int, ...] = (200, 201, 202, 203)
MEMBER_SEEDS: tuple[int, ...] = (0, 1, 2)
"""One training run per seed (network initialisation and batch order); the first is checkpoints/last.ckpt."""

ARCHITECTURE_NAME = "UNet3D"
ARCHITECTURE_PARAMS: dict[str, Any] = {
    "initial_feature_channels": 8,
    "kernel_size": 3,
    "num_downsampling_paths": 3,
}
CT_WINDOW_LEVEL = 150.0
CT_WINDOW_WIDTH = 600.0
"""Window [-150, 450] HU onto [-1, 1]: fat, soft tissue, liver, enhanced kidneys and bone all separate."""
TRAIN_CROP = (16, 64, 80)
"""Training crops (z, y, x); every crop holds x = 16..80, so the spine and both kidneys' columns are in view."""
BATCH_SIZE = 2
RECALIBRATION_BATCHES = 32
LEARNING_RATE = 1e-2


def normalise_ct(hu: np.ndarray) -> np.ndarray:
    """The model's input: the engine's CtWindow normalisation with this model's level and window."""
    import torch

    from innereye_batch.engine.preprocess import normalise
    from innereye_batch.model.spec import Normalisation

    spec = Normalisation(method="ct_window", level=CT_WINDOW_LEVEL, window=CT_WINDOW_WIDTH)
    return normalise(torch.from_numpy(hu), spec).numpy()


def inference_block() -> dict[str, Any]:
    """Our inference block for model_inference_config.json: everything InnerEye's folder does not say."""
    return {
        "version": 1,
        "task": "segmentation",
        "structures": [
            {"name": name, "colour": list(colour)}
            for name, colour in zip(STRUCTURE_NAMES, STRUCTURE_COLOURS, strict=True)
        ],
        "architecture": {"name": ARCHITECTURE_NAME, **ARCHITECTURE_PARAMS},
        "channels": [{"name": "ct", "modality": "CT"}],
        "orientation": "LPS",  # trained on head-first supine axial phantoms: other stacks are turned to it
        "normalisation": [
            {
                "method": "ct_window",
                "level": CT_WINDOW_LEVEL,
                "window": CT_WINDOW_WIDTH,
                "output_range": [-1.0, 1.0],
            }
        ],
        "target_spacing": None,
        "patch_size": None,
        "stitching": "average",
        "postprocessing": {"largest_component": "all"},
    }


def dice(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Dice overlap of one label between two label maps (1.0 when both are empty)."""
    p, t = prediction == label, truth == label
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


def _random_crop(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = [int(rng.integers(0, n - c + 1)) for n, c in zip(image.shape, TRAIN_CROP, strict=True)]
    window = tuple(slice(s, s + c) for s, c in zip(starts, TRAIN_CROP, strict=True))
    return image[window], labels[window]


def _batch(
    rng: np.random.Generator, images: Sequence[np.ndarray], labels: Sequence[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch: random crops of distinct random phantoms, images (B, 1, z, y, x) and labels."""
    import torch

    picks = rng.choice(len(images), size=BATCH_SIZE, replace=False)
    crops = [_random_crop(rng, images[i], labels[i]) for i in picks]
    x = torch.from_numpy(np.stack([c[0] for c in crops])[:, None]).to(memory_format=torch.channels_last_3d)
    y = torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.int64))
    return x, y


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    import torch

    probabilities = torch.softmax(logits, dim=1)[:, 1:]
    one_hot = torch.nn.functional.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3)[:, 1:].float()
    axes = (0, 2, 3, 4)
    overlap = (probabilities * one_hot).sum(axes)
    total = probabilities.sum(axes) + one_hot.sum(axes)
    return 1.0 - ((2.0 * overlap + 1.0) / (total + 1.0)).mean()


def _start_from_class_priors(network: torch.nn.Module, labels: Sequence[np.ndarray]) -> None:
    """Output biases = log class frequencies, so training starts from the prior instead of learning it first."""
    import torch

    counts = np.bincount(np.concatenate([lab.ravel() for lab in labels]), minlength=len(STRUCTURE_NAMES) + 1)
    output = network.output_layer  # UNet3D's final 1x1x1 convolution
    assert isinstance(output, torch.nn.Conv3d) and output.bias is not None
    with torch.no_grad():
        output.bias.copy_(torch.from_numpy(np.log(counts / counts.sum()).astype(np.float32)))


def train_member(seed: int, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], steps: int) -> torch.nn.Module:
    """Train one UNet3D from ``seed`` on random crops of the (normalised) training phantoms."""
    import torch

    from innereye_batch.model.architectures import build_network
    from innereye_batch.model.spec import ArchitectureSpec

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec = ArchitectureSpec(name=ARCHITECTURE_NAME, params=ARCHITECTURE_PARAMS)
    network = build_network(spec, 1, len(STRUCTURE_NAMES) + 1)
    _start_from_class_priors(network, labels)
    network = network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    optimiser = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=LEARNING_RATE, total_steps=steps)
    network.train()
    for _ in range(steps):
        x, y = _batch(rng, images, labels)
        logits = network(x)
        loss = torch.nn.functional.cross_entropy(logits, y) + _soft_dice_loss(logits, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    recalibrate_batch_norm(network, images, labels, seed)
    return network


def recalibrate_batch_norm(
    network: torch.nn.Module, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], seed: int
) -> None:
    """Set every BatchNorm's running statistics to their average over training crops, then eval mode.

    The running averages kept during training lag behind the weights (high learning rate, few steps); the same
    statistics recomputed with the final weights, on crops like the training batches, fix that. A convolution
    is local, so at inference the whole volume then sees the same per-channel transform as in training.
    """
    import torch

    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the passes below
    rng = np.random.default_rng(seed)
    network.train()
    with torch.no_grad():
        for _ in range(RECALIBRATION_BATCHES):
            network(_batch(rng, images, labels)[0])
    for norm in norms:
        norm.momentum = 0.1
    network.eval()


def segment(package: ModelPackage, networks: Sequence[torch.nn.Module], hu: np.ndarray) -> np.ndarray:
    """Label map of one phantom through the engine, as ``innereye-batch run`` does it on the native grid."""
    import torch

    from innereye_batch.engine.ensemble import predict_posteriors
    from innereye_batch.engine.postprocess import postprocess
    from innereye_batch.engine.preprocess import normalise

    image = normalise(torch.from_numpy(hu), package.segmentation.normalisation[0])[None]
    posteriors = predict_posteriors(
        networks, image, package.segmentation.inference, num_outputs=package.num_outputs, activation="softmax"
    )
    return postprocess(
        posteriors, DEFAULT_SPACING, package.segmentation.postprocessing, package.segmentation.structure_names
    )


def validation_dice(folder: Path) -> dict[str, dict[str, float]]:
    """Mean Dice per structure on the validation phantoms, for each checkpoint of the written model folder and
    for the ensemble, through the engine with the folder's own settings (post-processing included)."""
    from innereye_batch.model.checkpoints import load_networks
    from innereye_batch.model.package import load_model_package

    package = load_model_package(folder)
    networks = load_networks(package)
    named = sorted(
        (
            (ref.path.relative_to(folder).as_posix(), net)
            for ref, net in zip(package.checkpoints, networks, strict=True)
        ),
        key=lambda item: (item[0] != "checkpoints/last.ckpt", item[0]),
    )
    members: dict[str, list[torch.nn.Module]] = {name: [network] for name, network in named}
    members["ensemble"] = networks
    scores: dict[str, dict[str, list[float]]] = {}
    for seed in VALIDATION_SEEDS:
        phantom = make_phantom(seed)
        for who, nets in members.items():
            prediction = segment(package, nets, phantom.ct_hu)
            for label, name in enumerate(STRUCTURE_NAMES, start=1):
                scores.setdefault(who, {}).setdefault(name, []).append(dice(prediction, phantom.labels, label))
    return {who: {name: float(np.mean(v)) for name, v in by_name.items()} for who, by_name in scores.items()}


@dataclass(frozen=True)
class ScanPlan:
    """One shipped sample series: its folder under scans/, phantom seed, patient and how it is written."""

    folder: str
    seed: int
    patient: str
    series_number: int
    description: str
    oblique: bool = False
    transfer_syntax: str = ExplicitVRLittleEndian


SCANS: tuple[ScanPlan, ...] = (
    ScanPlan("phantom_one_axial", 300, "ONE", 1, "axial"),
    ScanPlan("phantom_one_oblique", 301, "ONE", 2, "oblique", oblique=True),
    ScanPlan("phantom_two_rle", 302, "TWO", 1, "RLE lossless", transfer_syntax=RLELossless),
    ScanPlan("phantom_two_j2k", 303, "TWO", 2, "JPEG 2000 lossless", transfer_syntax=JPEG2000Lossless),
)
"""Written to sample_data/scans/ from seeds no training or validation run uses; tests use seeds >= 1000."""
OBLIQUE_AXIS, OBLIQUE_DEGREES = (1.0, 0.2, 0.0), 12.0


def _uid(*parts: object) -> str:
    """A UID derived from ``parts``, so regenerating the scans keeps their study, series and frame UIDs."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["innereye-batch sample_data", *map(str, parts)]))


def write_scans(folder: Path) -> list[Path]:
    """Write ``SCANS`` as DICOM CT series (one file per slice) under ``folder``; return their folders."""
    from tests.factory import rotation_direction, write_series

    written = []
    for plan in SCANS:
        target = folder / plan.folder
        shutil.rmtree(target, ignore_errors=True)
        phantom = make_phantom(plan.seed)
        row, column = rotation_direction(OBLIQUE_AXIS, OBLIQUE_DEGREES) if plan.oblique else ((1.0, 0, 0), (0, 1.0, 0))
        write_series(
            target,
            voxels=phantom.ct_hu,
            spacing=phantom.spacing,
            origin=(-95.0, -95.0, -150.0),
            row_direction=[float(v) for v in row],
            column_direction=[float(v) for v in column],
            patient_id=f"PHANTOM{plan.patient}",
            patient_name=f"PHANTOM^{plan.patient}",
            study_instance_uid=_uid("study", plan.patient),
            series_instance_uid=_uid("series", plan.folder),
            frame_of_reference_uid=_uid("frame", plan.folder),
            series_number=plan.series_number,
            series_description=f"Synthetic phantom abdomen CT, {plan.description}, seed {plan.seed}",
            transfer_syntax=UID(plan.transfer_syntax),
            seed=plan.seed,
        )
        written.append(target)
    return written


def _format_dice_table(scores: dict[str, dict[str, float]]) -> str:
    header = "| | " + " | ".join(STRUCTURE_NAMES) + " |"
    rule = "|---" * (len(STRUCTURE_NAMES) + 1) + "|"
    rows = [
        f"| {who} | " + " | ".join(f"{by_name[n]:.3f}" for n in STRUCTURE_NAMES) + " |"
        for who, by_name in scores.items()
    ]
    return "\n".join([header, rule, *rows])


def write_model_readme(
    folder: Path, scores: dict[str, dict[str, float]], seconds: list[float], steps: int, threads: int
) -> None:
    """The model folder's README: how it was made and how well it does on the validation phantoms."""
    params = ", ".join(f"{k} {v}" for k, v in ARCHITECTURE_PARAMS.items())
    text = f"""# Sample model: {MODEL_NAME}

A genuinely trained, tiny InnerEye-style 3-D U-Net ensemble that segments {", ".join(STRUCTURE_NAMES)}
on **synthetic** CT phantoms (`tools/phantom.py`). It exists so that `make demo` does real work on a fresh
machine; it knows nothing about real patients.

Made by `python -m tools.make_sample --steps {steps} --threads {threads}` (CPU only, from the repository root),
which also writes `../scans/`. Same command, library versions and thread count: same weights.

- Layout: InnerEye's registered model folder: `model_inference_config.json` (InnerEye's three fields plus our
  `inference` block) and three Lightning-style checkpoints (`state_dict` keyed `model.<name>`):
  `checkpoints/last.ckpt`, `checkpoints/OTHER_RUNS/1/last.ckpt`, `checkpoints/OTHER_RUNS/2/last.ckpt`.
- Network: `{ARCHITECTURE_NAME}` ({params}); 1 input channel (CT), {len(STRUCTURE_NAMES) + 1} outputs
  (background + structures).
- Inference block: CT window level {CT_WINDOW_LEVEL:g} HU, width {CT_WINDOW_WIDTH:g} HU onto [-1, 1];
  whole-volume inference on the native grid (no resampling); largest connected component for every structure;
  orientation LPS (trained on head-first supine axial stacks: feet-first, prone or sagittal ones are turned to it).
- Training data: {len(TRAIN_SEEDS)} phantoms, seeds {TRAIN_SEEDS[0]}..{TRAIN_SEEDS[-1]}, each 40 x 96 x 96
  voxels at 3 x 2 x 2 mm (z, y, x).
- Training: random crops {" x ".join(map(str, TRAIN_CROP))}, batch {BATCH_SIZE}, {steps} steps per checkpoint,
  Adam with a one-cycle learning rate (peak {LEARNING_RATE:g}), cross-entropy + soft Dice, output biases
  started at the class frequencies; afterwards the batch-norm statistics are recomputed with the final weights
  on {RECALIBRATION_BATCHES} training batches.
- Checkpoint seeds: `checkpoints/last.ckpt` {MEMBER_SEEDS[0]}, `OTHER_RUNS/1` {MEMBER_SEEDS[1]},
  `OTHER_RUNS/2` {MEMBER_SEEDS[2]} (initial weights and batch order).
- Training time: {" + ".join(f"{s:.0f}" for s in seconds)} = {sum(seconds):.0f} s on {threads} CPU threads
  (a shared machine: the spread is other load).
- Held out: validation phantoms {", ".join(map(str, VALIDATION_SEEDS))}; the scans in `../scans/` use seeds
  {", ".join(str(plan.seed) for plan in SCANS)}; tests use seeds from 1000 up.

Validation Dice, mean over the validation phantoms, computed through the engine with this folder's own settings
(largest component included), as `innereye-batch run` segments:

{_format_dice_table(scores)}
"""
    (folder / "README.md").write_text(text)


def main(argv: Sequence[str] | None = None) -> None:
    """Train the three checkpoints, write the model folder and the scans, print the figures."""
    import torch

    from innereye_batch.model.export import write_model_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("sample_data"), help="Folder to write into.")
    parser.add_argument("--steps", type=int, default=200, help="Training steps per checkpoint.")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (changes the exact weights).")
    parser.add_argument("--scans-only", action="store_true", help="Rewrite scans/ only; no training.")
    args = parser.parse_args(argv)
    if args.scans_only:
        print(f"wrote {len(write_scans(args.output / 'scans'))} series under {args.output / 'scans'}")
        return

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    phantoms = [make_phantom(seed) for seed in TRAIN_SEEDS]
    images = [normalise_ct(p.ct_hu) for p in phantoms]
    labels = [p.labels for p in phantoms]

    networks, seconds = [], []
    for seed in MEMBER_SEEDS:
        start = time.perf_counter()
        networks.append(train_member(seed, images, labels, args.steps))
        seconds.append(time.perf_counter() - start)
        print(f"checkpoint seed {seed}: trained in {seconds[-1]:.0f} s", flush=True)

    model_folder = args.output / "final_model"
    write_model_folder(
        model_folder,
        networks,
        model_name=MODEL_NAME,
        inference_block=inference_block(),
        model_configs_namespace=f"tools.make_sample.{MODEL_NAME}",
    )
    scores = validation_dice(model_folder)
    print(_format_dice_table(scores))
    write_model_readme(model_folder, scores, seconds, args.steps, args.threads)
    scans = write_scans(args.output / "scans")
    print(f"wrote {model_folder} and {len(scans)} series under {args.output / 'scans'}")


if __name__ == "__main__":
    main()
