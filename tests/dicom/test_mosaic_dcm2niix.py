"""Our mosaic volumes equal dcm2niix's NIfTI of the same files: shape, affine (RAS) and voxels, volume by volume."""

from __future__ import annotations

import gzip
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dcm2niix  # the PyPI package of dcm2niix (dev extra): its binary is the oracle
import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import JPEGLSLossless

from innereye_batch.dicom.scan import scan_tree
from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.dicom.volume import load_volume
from tests.factory import recode_file, rotation_direction
from tests.mosaic_factory import GeneratedMosaics, write_siemens_mosaics, write_uih_grid

OBLIQUE = rotation_direction((0.3, 1.0, 0.2), 25.0)


def dcm2niix_volumes(folder: Path, out: Path) -> list[nib.Nifti1Image]:
    """dcm2niix's conversion of ``folder``: one 3-D image per volume (a 4-D output split along time)."""
    out.mkdir()
    command = [str(dcm2niix.bin), "-z", "n", "-b", "n", "-f", "%s", "-o", str(out), str(folder)]
    subprocess.run(command, check=True, capture_output=True)
    (image,) = [nib.load(p) for p in out.glob("*.nii")]
    data = np.asanyarray(image.dataobj)
    frames = [data] if data.ndim == 3 else [data[..., t] for t in range(data.shape[3])]
    return [nib.Nifti1Image(frame, image.affine) for frame in frames]


def assert_equal_to_dcm2niix(truth: GeneratedMosaics, out: Path) -> None:
    assert_files_equal_to_dcm2niix(truth.folder, truth.paths, out)


def assert_files_equal_to_dcm2niix(folder: Path, paths: Sequence[Path], out: Path) -> list[SeriesInfo]:
    """Volume by volume, in acquisition order (``paths``, one mosaic file per volume), ours equal dcm2niix's;
    returns our stacks in that order."""
    ours = sorted(scan_tree(folder).series, key=lambda s: list(paths).index(s.files[0]))
    theirs = dcm2niix_volumes(folder, out)
    assert len(ours) == len(theirs) == len(paths)
    assert [s.files for s in ours] == [(p,) for p in paths]
    for series, reference in zip(ours, theirs, strict=True):
        volume = load_volume(series)
        mine = nib.as_closest_canonical(
            nib.Nifti1Image(volume.array.transpose(2, 1, 0), volume.geometry.nifti_affine())
        )
        other = nib.as_closest_canonical(reference)
        assert mine.shape == other.shape
        np.testing.assert_allclose(mine.affine, other.affine, atol=1e-4)  # dcm2niix stores float32
        np.testing.assert_array_equal(np.asanyarray(mine.dataobj), np.asanyarray(other.dataobj).astype(np.float32))
    return ours


SIEMENS_CASES: list[tuple[str, dict[str, Any]]] = [
    ("axial", {}),
    ("axial-descending", {"descending": True}),
    ("sagittal-descending", {"row_direction": (0, 1, 0), "column_direction": (0, 0, -1), "descending": True}),
    ("oblique-2-volumes", {"row_direction": OBLIQUE[0], "column_direction": OBLIQUE[1], "volumes": 2}),
    (
        "oblique-descending-13-slices",
        {
            "row_direction": OBLIQUE[0],
            "column_direction": OBLIQUE[1],
            "descending": True,
            "slices": 13,
            "tile": (10, 14),
        },
    ),
]


@pytest.mark.parametrize("options", [c[1] for c in SIEMENS_CASES], ids=[c[0] for c in SIEMENS_CASES])
def test_siemens_mosaic_equals_dcm2niix(tmp_path: Path, options: dict[str, Any]) -> None:
    truth = write_siemens_mosaics(tmp_path / "in", **options)
    assert_equal_to_dcm2niix(truth, tmp_path / "out")


def test_compressed_siemens_mosaic_equals_dcm2niix(tmp_path: Path) -> None:
    truth = write_siemens_mosaics(tmp_path / "in", volumes=2, descending=True)
    for path in truth.paths:
        recode_file(path, JPEGLSLossless)
    assert_equal_to_dcm2niix(truth, tmp_path / "out")


@pytest.mark.parametrize(
    "options",
    [{}, {"descending": True}, {"row_direction": OBLIQUE[0], "column_direction": OBLIQUE[1], "volumes": 2}],
    ids=["axial", "axial-descending", "oblique-2-volumes"],
)
def test_uih_grid_equals_dcm2niix(tmp_path: Path, options: dict[str, Any]) -> None:
    truth = write_uih_grid(tmp_path / "in", **options)
    assert_equal_to_dcm2niix(truth, tmp_path / "out")


NIBABEL_DATA = Path(nib.__file__).parent / "nicom" / "tests" / "data"
"""nibabel's test files: two Siemens DWI mosaics as the scanner wrote them (anonymised: pixel data zero)."""


def test_siemens_dwi_mosaics_from_the_scanner_equal_dcm2niix(tmp_path: Path) -> None:
    """Real Siemens files: 48 slices of 128 x 128 in 896 x 896, oblique, b = 0 and b = 1000 (private elements)."""
    folder = tmp_path / "in"
    folder.mkdir()
    paths = []
    for name in ("siemens_dwi_0.dcm.gz", "siemens_dwi_1000.dcm.gz"):
        paths.append(folder / name.removesuffix(".gz"))
        paths[-1].write_bytes(gzip.decompress((NIBABEL_DATA / name).read_bytes()))
    b0, b1000 = assert_files_equal_to_dcm2niix(folder, paths, tmp_path / "out")
    assert (b0.key_suffix, b1000.key_suffix) == (".b0", ".b1000.dir1")
    assert b0.geometry.shape == (48, 128, 128) and b0.mosaic_size == (896, 896)
    assert b0.geometry.spacing == pytest.approx((3.0, 1.796875, 1.796875))
    assert b0.problems == () and b1000.problems == ()
