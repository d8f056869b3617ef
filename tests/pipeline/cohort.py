"""A small mixed DICOM cohort and a small UNet3D model folder, shared by the end-to-end run tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from innereye_batch.model.architectures import build_network
from innereye_batch.model.export import write_model_folder
from innereye_batch.model.spec import ArchitectureSpec
from tests.factory import GeneratedSeries, rotation_direction, write_series

ARCHITECTURE = {"initial_feature_channels": 4, "num_downsampling_paths": 2}
STRUCTURES = [{"name": "liver", "colour": [220, 120, 60]}, {"name": "spine", "colour": [240, 240, 200]}]


def inference_block(channels: int = 1, **overrides: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "version": 1,
        "task": "segmentation",
        "structures": STRUCTURES,
        "architecture": {"name": "UNet3D", **ARCHITECTURE},
        "channels": [{"name": "ct", "modality": "CT"}, {"name": "mr", "modality": "MR"}][:channels],
        "normalisation": [{"method": "ct_window", "level": -300, "window": 1400}, {"method": "zscore"}][:channels],
        "patch_size": [8, 16, 16],
        "stride": [4, 8, 8],
        "stitching": "gaussian",
        "postprocessing": {"largest_component": ["liver"]},
    }
    block.update(overrides)
    return block


def model_folder(folder: Path, *, members: int = 2, channels: int = 1, **overrides: Any) -> Path:
    """An ensemble of ``members`` small UNet3Ds with different random weights, in InnerEye's layout."""
    networks = []
    for seed in range(members):
        torch.manual_seed(seed)
        spec = ArchitectureSpec("UNet3D", ARCHITECTURE)
        networks.append(build_network(spec, channels, len(STRUCTURES) + 1).eval())
    block = inference_block(channels, **overrides)
    return write_model_folder(folder, networks, model_name="TinyTest", inference_block=block)


@dataclass
class Cohort:
    root: Path
    good: list[GeneratedSeries]
    """CT series every run must segment."""
    mr: GeneratedSeries
    missing_slice: GeneratedSeries
    corrupt_pixels: GeneratedSeries


def uid_in_shard(index: int, count: int) -> str:
    """A fresh random UID whose item key falls in shard ``index`` of ``count``."""
    from pydicom.uid import generate_uid

    from innereye_batch.pipeline.shards import shard_of

    while True:
        uid = str(generate_uid())
        if shard_of(uid, count) == index:
            return uid


def write_cohort(root: Path, *, extra_ct: int = 0) -> Cohort:
    """Two patients: axial and oblique CT, an MR, a CT with a slice removed, a CT with damaged pixel data, junk.
    The ``extra_ct`` CTs alternate between the two shards of two (random UIDs left each shard of two with fewer
    than two good series about once in nine cohorts, and the tests that need two there failed)."""
    shape = (10, 24, 20)
    good = [
        write_series(root / "p1" / "ct_axial", shape=shape, patient_id="P1", shuffle_names=True, seed=1),
        write_series(
            root / "p2" / "ct_oblique",
            shape=shape,
            patient_id="P2",
            seed=2,
            **dict(zip(("row_direction", "column_direction"), rotation_direction((1, 0.5, 0.2), 20), strict=True)),
        ),
    ]
    good += [
        write_series(
            root / "p3" / f"ct_{i}",
            shape=shape,
            patient_id=f"P{3 + i}",
            seed=10 + i,
            series_instance_uid=uid_in_shard(i % 2, 2),
        )
        for i in range(extra_ct)
    ]
    mr = write_series(root / "p1" / "mr", shape=shape, modality="MR", patient_id="P1", seed=3)
    missing = write_series(root / "p2" / "ct_gap", shape=shape, patient_id="P2", remove_slice=4, seed=4)
    corrupt = write_series(root / "p2" / "ct_corrupt", shape=shape, patient_id="P2", seed=5)
    damaged = corrupt.paths[3]
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) - 300])  # pixel data cut short; the header still reads
    (root / "p2" / "notes.txt").write_text("not a DICOM file")
    (root / "p2" / "empty.dcm").write_bytes(b"")
    return Cohort(root, good, mr, missing, corrupt)


def labels_from_nifti(path: Path) -> np.ndarray:
    """A NIfTI label map back in (z, y, x) order."""
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)
