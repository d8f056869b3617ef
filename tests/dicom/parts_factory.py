"""Write series that a scanner put together under one SeriesInstanceUID (echoes, magnitude and phase, time points,
diffusion directions), in one folder, with the truth about each part; and run dcm2niix on a folder."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dcm2niix
import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from innereye_batch.dicom.geometry import Geometry
from tests.factory import GeneratedSeries, write_series


def write_parts(
    folder: Path,
    parts: Sequence[Mapping[Any, Any]],
    *,
    modality: str = "MR",
    shape: tuple[int, int, int] = (5, 10, 8),
    spacing: tuple[float, float, float] = (3.0, 0.9, 0.8),
    row_direction: Sequence[float] = (1.0, 0.0, 0.0),
    column_direction: Sequence[float] = (0.0, 1.0, 0.0),
    **options: Any,
) -> list[GeneratedSeries]:
    """One series whose k-th part has the attributes ``parts[k]`` on every slice (a keyword, or a tag number for
    a private element given as ``(VR, value)``); all parts share UIDs, grid and positions, InstanceNumbers run on."""
    shared = {
        "series_instance_uid": pydicom.uid.generate_uid(),
        "study_instance_uid": pydicom.uid.generate_uid(),
        "frame_of_reference_uid": pydicom.uid.generate_uid(),
    }
    written = []
    for index, attributes in enumerate(parts):

        def edit(k: int, ds: Dataset, attributes: Mapping[Any, Any] = attributes) -> None:
            for key, value in attributes.items():
                if isinstance(key, int):
                    vr, raw = value
                    ds.add_new(key, vr, raw)
                else:
                    setattr(ds, key, value)

        written.append(
            write_series(
                folder,
                modality=modality,
                shape=shape,
                spacing=spacing,
                row_direction=row_direction,
                column_direction=column_direction,
                rescale_intercept=0.0,
                name_prefix=f"P{index}_",
                first_instance=1 + index * shape[0],
                seed=10 + index,
                edit=edit,
                **shared,
                **options,
            )
        )
    return written


def run_dcm2niix(folder: Path, out: Path) -> list[nib.Nifti1Image]:
    """dcm2niix's conversion of ``folder`` (uncompressed NIfTI, no sidecars), every output volume in name order."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [dcm2niix.bin, "-b", "n", "-z", "n", "-f", "%j", "-o", str(out), str(folder)],
        check=True,
        capture_output=True,
    )
    return [nib.load(path) for path in sorted(out.glob("*.nii"))]


def canonical(array_zyx: np.ndarray, geometry: Geometry) -> nib.Nifti1Image:
    """Our volume as a NIfTI image (LPS -> RAS), reoriented to the closest canonical axes like any other."""
    image = nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), geometry.nifti_affine())
    return nib.as_closest_canonical(image)


def volumes_3d(images: Sequence[nib.Nifti1Image]) -> list[nib.Nifti1Image]:
    """Every 3-D volume in dcm2niix's outputs (a 4-D file holds one per time point or diffusion direction)."""
    volumes = []
    for image in images:
        if image.ndim == 3:
            volumes.append(nib.as_closest_canonical(image))
        else:
            for t in range(image.shape[3]):
                volumes.append(nib.as_closest_canonical(image.slicer[..., t]))
    return volumes
