"""The shipped sample model and scans: layout, size, and real accuracy on held-out phantoms through the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from innereye_batch.model.spec import ModelPackage
from tests.factory import rotation_direction, write_series
from tools.make_sample import SCANS as SHIPPED_SCANS
from tools.phantom import STRUCTURE_NAMES, Phantom, make_phantom

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
MODEL = SAMPLE / "final_model"
SCANS = SAMPLE / "scans"
CHECKPOINTS = {"checkpoints/last.ckpt", "checkpoints/OTHER_RUNS/1/last.ckpt", "checkpoints/OTHER_RUNS/2/last.ckpt"}
HELD_OUT_SEEDS = (1000, 1001)
"""New seeds: not training (100-131), validation (200-203) nor the shipped scans (300-303)."""
MIN_DICE = 0.9
PER_STRUCTURE_SLACK = 0.005
"""Per structure the ensemble may trail its members' mean by a hair; over all structures it must not."""


def dice(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    p, t = prediction == label, truth == label
    return 2.0 * float((p & t).sum()) / float(p.sum() + t.sum())


def dice_per_structure(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {name: dice(prediction, truth, i) for i, name in enumerate(STRUCTURE_NAMES, start=1)}


def read_label_map(path: Path) -> np.ndarray:
    """The (z, y, x) label map of a NIfTI written by the run (NIfTI stores (x, y, z))."""
    import nibabel as nib

    image = nib.load(str(path))
    assert isinstance(image, nib.Nifti1Image)
    return np.asarray(image.dataobj).transpose(2, 1, 0)


def single_checkpoint_labels(package: ModelPackage, network: torch.nn.Module, phantom: Phantom) -> np.ndarray:
    """One checkpoint's label map, through the library: normalise -> posteriors -> post-processing."""
    import torch

    from innereye_batch.engine.ensemble import predict_posteriors
    from innereye_batch.engine.postprocess import postprocess
    from innereye_batch.engine.preprocess import normalise

    image = normalise(torch.from_numpy(phantom.ct_hu), package.segmentation.normalisation[0])[None]
    posteriors = predict_posteriors(
        [network], image, package.segmentation.inference, num_outputs=package.num_outputs, activation="softmax"
    )
    return postprocess(
        posteriors, phantom.spacing, package.segmentation.postprocessing, package.segmentation.structure_names
    )


def test_phantom_is_reproducible_and_places_structures_as_documented() -> None:
    first, again, other = make_phantom(7), make_phantom(7), make_phantom(8)
    assert np.array_equal(first.ct_hu, again.ct_hu) and np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.ct_hu, other.ct_hu)
    assert first.ct_hu.dtype == np.float32 and first.labels.dtype == np.uint8
    assert first.structure_names == STRUCTURE_NAMES
    centres = {
        name: np.argwhere(first.labels == label).mean(axis=0) for label, name in enumerate(STRUCTURE_NAMES, start=1)
    }
    z, y, x = 0, 1, 2
    # LPS grid: x grows to the patient's left, y to the back, z to the head.
    assert centres["liver"][x] < centres["spine"][x] < centres["kidney_left"][x]
    assert centres["kidney_right"][x] < centres["spine"][x]
    assert centres["spine"][y] > centres["liver"][y]
    assert centres["liver"][z] > centres["kidney_left"][z]
    by_label = [float(np.median(first.ct_hu[first.labels == label])) for label in range(5)]
    assert by_label[0] < by_label[1] < by_label[2] < by_label[4]  # background < liver < kidney < bone
    assert float(first.ct_hu.min()) < -900


def test_shipped_model_folder_has_innereye_ensemble_layout_and_loads() -> None:
    import torch

    from innereye_batch.model.checkpoints import load_networks
    from innereye_batch.model.package import load_model_package

    package = load_model_package(MODEL)
    assert {ref.path.relative_to(MODEL).as_posix() for ref in package.checkpoints} == CHECKPOINTS
    assert package.segmentation.structure_names == STRUCTURE_NAMES
    assert package.task == "segmentation"
    assert package.architecture.name.lower() == "unet3d"
    assert package.segmentation.normalisation[0].method == "ct_window"
    assert set(package.segmentation.postprocessing.largest_component) == set(STRUCTURE_NAMES)
    hashes = {ref.sha256 for ref in package.checkpoints}
    assert len(hashes) == 3, "three different checkpoints, not one copied"
    for ref in package.checkpoints:
        content = torch.load(ref.path, map_location="cpu", weights_only=True)
        assert all(key.startswith("model.") for key in content["state_dict"])
    assert len(load_networks(package)) == 3
    assert (MODEL / "README.md").read_text().count("Dice") >= 1


def test_sample_data_is_small() -> None:
    total = sum(path.stat().st_size for path in SAMPLE.rglob("*") if path.is_file())
    assert 0 < total < 20 * 1024 * 1024


def test_shipped_scans_are_synthetic_ct_series_axial_oblique_and_compressed() -> None:
    series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for path in SCANS.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        series[ds.SeriesInstanceUID].append(ds)
    assert len(series) >= 3
    headers = [files[0] for files in series.values()]
    assert all(h.Modality == "CT" and str(h.PatientName).startswith("PHANTOM^") for h in headers)
    assert len({h.PatientID for h in headers}) >= 2
    axial = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert any(not np.allclose([float(v) for v in h.ImageOrientationPatient], axial) for h in headers)
    assert any(h.file_meta.TransferSyntaxUID.is_compressed for h in headers)
    assert all(len(files) == len({f.SOPInstanceUID for f in files}) > 1 for files in series.values())
    assert "synthetic" in (SCANS / "README.md").read_text().lower()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Phantom], dict[str, Phantom], Path]:
    """One `innereye-batch run` with the shipped model over new phantoms (one axial, one oblique and
    RLE-compressed) and a copy of the shipped scans; returns the truth by SeriesInstanceUID and the output."""
    root = tmp_path_factory.mktemp("sample_run")
    held_out = {}
    row, column = rotation_direction((0.3, 1.0, 0.0), 15.0)
    oblique_rle = {"row_direction": row, "column_direction": column, "transfer_syntax": RLELossless}
    for seed, options in zip(HELD_OUT_SEEDS, ({}, oblique_rle), strict=True):
        phantom = make_phantom(seed)
        written = write_series(
            root / "dicom" / f"held_out_{seed}",
            voxels=phantom.ct_hu,
            spacing=phantom.spacing,
            patient_id=f"HELDOUT{seed}",
            patient_name=f"PHANTOM^HELDOUT{seed}",
            seed=seed,
            **options,  # type: ignore[arg-type]
        )
        held_out[written.series_instance_uid] = phantom
    shutil.copytree(SCANS, root / "dicom" / "shipped")
    shipped = {}
    for plan in SHIPPED_SCANS:
        first = next((SCANS / plan.folder).glob("*.dcm"))
        shipped[pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID] = make_phantom(plan.seed)
    output = root / "out"
    command = [sys.executable, "-m", "innereye_batch", "run", "--model", str(MODEL), "--input", str(root / "dicom")]
    command += ["--output", str(output), "--device", "cpu", "--workers", "0", "--formats", "nifti", "--quiet"]
    finished = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return held_out, shipped, output


def test_cli_segments_new_phantoms_with_dice_at_least_0_9(
    cli_run: tuple[dict[str, Phantom], dict[str, Phantom], Path],
) -> None:
    held_out, _, output = cli_run
    for uid, phantom in held_out.items():
        labels = read_label_map(output / uid / "segmentation.nii.gz")
        assert labels.shape == phantom.labels.shape
        scores = dice_per_structure(labels, phantom.labels)
        assert min(scores.values()) >= MIN_DICE, f"series {uid}: {scores}"


def test_demo_command_segments_every_shipped_scan(
    cli_run: tuple[dict[str, Phantom], dict[str, Phantom], Path],
) -> None:
    _, shipped, output = cli_run
    assert len(shipped) == len(SHIPPED_SCANS)
    for uid, phantom in shipped.items():
        scores = dice_per_structure(read_label_map(output / uid / "segmentation.nii.gz"), phantom.labels)
        assert min(scores.values()) >= MIN_DICE, f"shipped series {uid}: {scores}"


def test_ensemble_is_not_worse_than_its_mean_single_checkpoint(
    cli_run: tuple[dict[str, Phantom], dict[str, Phantom], Path],
) -> None:
    from innereye_batch.model.checkpoints import load_networks
    from innereye_batch.model.package import load_model_package

    phantoms, _, output = cli_run
    package = load_model_package(MODEL)
    networks = load_networks(package)
    ensemble: dict[str, list[float]] = defaultdict(list)
    single: dict[str, list[float]] = defaultdict(list)
    for uid, phantom in phantoms.items():
        cli_labels = read_label_map(output / uid / "segmentation.nii.gz")
        for name, score in dice_per_structure(cli_labels, phantom.labels).items():
            ensemble[name].append(score)
        for network in networks:
            labels = single_checkpoint_labels(package, network, phantom)
            for name, score in dice_per_structure(labels, phantom.labels).items():
                single[name].append(score)
    ensemble_mean = {name: float(np.mean(v)) for name, v in ensemble.items()}
    single_mean = {name: float(np.mean(v)) for name, v in single.items()}
    assert np.mean(list(ensemble_mean.values())) >= np.mean(list(single_mean.values())), (ensemble_mean, single_mean)
    for name in STRUCTURE_NAMES:
        assert ensemble_mean[name] >= single_mean[name] - PER_STRUCTURE_SLACK, (name, ensemble_mean, single_mean)
