"""Write a (z, y, x) label map as NIfTI-1 whose affine puts every voxel where the DICOM series has it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.writers.registry import OutputFormat, WriteContext

if TYPE_CHECKING:
    from innereye_batch.tasks.segmentation import SegmentationPrediction

_XFORM_CODE_SCANNER = 1
"""NIfTI xform code 1: scanner-based anatomical coordinates (a grid converted from DICOM, as dcm2niix writes both)."""


def write_label_map(path: Path, labels: np.ndarray, geometry: Geometry) -> None:
    """Write ``labels`` (z, y, x, uint8) to ``path`` (``.nii.gz``) on ``geometry``'s grid, RAS affine.

    NIfTI stores arrays (x, y, z); the affine is ``geometry.nifti_affine()`` for that order. Both sform and
    qform carry it: the qform is exact because a DICOM grid's direction is a rotation (a reflection would go
    into qfac).
    """
    import nibabel as nib

    if tuple(labels.shape) != tuple(geometry.shape):
        raise ValueError(f"label map shape {labels.shape} does not match geometry shape {geometry.shape}")
    # (x, y, z) as a view: NIfTI stores x fastest (Fortran order), which the view of a C-ordered (z, y, x) map
    # already is, so nibabel writes it without a copy (a C-ordered copy made it transpose twice: 3x the time)
    data = np.asarray(labels, dtype=np.uint8).transpose(2, 1, 0)
    affine = geometry.nifti_affine()
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    image = nib.Nifti1Image(data, affine, header)
    image.set_sform(affine, code=_XFORM_CODE_SCANNER)
    image.set_qform(affine, code=_XFORM_CODE_SCANNER)
    image.header.set_xyzt_units(xyz="mm")
    # A label map: readers should not rescale it.
    image.header["scl_slope"] = 1.0
    image.header["scl_inter"] = 0.0
    nib.save(image, str(path))


def _write(path: Path, prediction: SegmentationPrediction, context: WriteContext) -> None:
    write_label_map(path, prediction.labels, prediction.geometry)


FORMAT = OutputFormat(
    name="nifti",
    filename="segmentation.nii.gz",
    tasks=frozenset({"segmentation"}),
    write=_write,
    description="uint8 label map on the DICOM grid, RAS affine (NIfTI-1, gzipped)",
)
