"""The NIfTI label map sits exactly on the source DICOM grid, as SimpleITK (GDCM) reads that grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from innereye_batch.writers.nifti import write_label_map
from tests.factory import read_with_simpleitk, rotation_direction, write_series
from tests.writers.helpers import blob_labels

OBLIQUE_ROW, OBLIQUE_COL = (tuple(v) for v in rotation_direction((1.0, 2.0, 0.5), 25.0))

GRIDS = {
    "axial": {},
    "oblique": {"row_direction": OBLIQUE_ROW, "column_direction": OBLIQUE_COL, "spacing": (3.0, 0.9, 0.6)},
    # row x column = (1,0,0) x (0,-1,0) = (0,0,-1): slices ascend towards the feet.
    "normal_minus_z": {"row_direction": (1.0, 0.0, 0.0), "column_direction": (0.0, -1.0, 0.0)},
    "sagittal": {"row_direction": (0.0, 1.0, 0.0), "column_direction": (0.0, 0.0, -1.0)},
}


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_label_map_matches_dicom_grid(tmp_path: Path, grid: str) -> None:
    generated = write_series(tmp_path / "dicom", shape=(7, 10, 9), **GRIDS[grid])  # type: ignore[arg-type]
    labels = blob_labels(generated.geometry.shape, 3)
    out = tmp_path / "segmentation.nii.gz"

    write_label_map(out, labels, generated.geometry)

    source = read_with_simpleitk(generated.paths)
    written = sitk.ReadImage(str(out))
    np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), source.GetDirection(), atol=1e-4)
    assert written.GetSize() == source.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels)


def test_normal_minus_z_really_points_down(tmp_path: Path) -> None:
    generated = write_series(tmp_path / "dicom", column_direction=(0.0, -1.0, 0.0))
    assert generated.geometry.direction_matrix[2, 2] == pytest.approx(-1.0)


def test_header_is_uint8_with_scanner_sform_and_qform(tmp_path: Path) -> None:
    generated = write_series(
        tmp_path / "dicom", row_direction=OBLIQUE_ROW, column_direction=OBLIQUE_COL, shape=(4, 6, 5)
    )
    labels = blob_labels(generated.geometry.shape, 2)
    out = tmp_path / "seg.nii.gz"

    write_label_map(out, labels, generated.geometry)

    image: Any = nib.load(str(out))
    assert image.get_data_dtype() == np.uint8
    assert int(image.header["sform_code"]) == 1
    assert int(image.header["qform_code"]) == 1  # scanner coordinates, as dcm2niix writes (it was "aligned")
    np.testing.assert_allclose(image.get_sform(), generated.geometry.nifti_affine(), atol=1e-6)
    np.testing.assert_allclose(image.get_qform(), generated.geometry.nifti_affine(), atol=1e-4)
    assert image.header.get_xyzt_units()[0] == "mm"
    # NIfTI stores (x, y, z): the first axis is the column index.
    np.testing.assert_array_equal(np.asarray(image.dataobj), labels.transpose(2, 1, 0))


def test_shape_mismatch_is_refused(tmp_path: Path) -> None:
    generated = write_series(tmp_path / "dicom", shape=(4, 6, 5))
    with pytest.raises(ValueError, match="does not match"):
        write_label_map(tmp_path / "x.nii.gz", np.zeros((4, 5, 6), np.uint8), generated.geometry)
    assert not (tmp_path / "x.nii.gz").exists()
