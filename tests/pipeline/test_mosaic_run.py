"""`run` over mosaic series: one row per volume, the NIfTI on the tile grid, the DICOM-SEG laid out as the source
mosaic (one frame) and valid (dciodvfy), holding the NIfTI's labels tile by tile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.mosaic import tiles_to_mosaic
from innereye_batch.dicom.scan import scan_tree
from innereye_batch.model.architectures import build_network
from innereye_batch.model.export import write_model_folder
from innereye_batch.model.spec import ArchitectureSpec
from innereye_batch.pipeline.run import RunOptions, run_batch
from tests.factory import rotation_direction
from tests.mosaic_factory import GeneratedMosaics, write_siemens_mosaics, write_uih_grid
from tests.pipeline.cohort import ARCHITECTURE, STRUCTURES, inference_block, labels_from_nifti
from tests.writers.helpers import dciodvfy_errors, read_back_labels

OBLIQUE = rotation_direction((0.3, 1.0, 0.2), 25.0)


@pytest.fixture(scope="module")
def mr_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cohort's small UNet3D with one MR channel (z-scored)."""
    torch.manual_seed(0)
    network = build_network(ArchitectureSpec("UNet3D", ARCHITECTURE), 1, len(STRUCTURES) + 1).eval()
    block = inference_block()
    block.update(channels=[{"name": "mr", "modality": "MR"}], normalisation=[{"method": "zscore"}])
    folder = tmp_path_factory.mktemp("model") / "model"
    return write_model_folder(folder, [network], model_name="TinyMR", inference_block=block)


MOSAIC_FORMATS = ("nifti", "dicom-seg", "preview", "json")
"""Every segmentation output but the RT Structure Set, which cannot put contours on a mosaic's tiles."""


def run_all_formats(scans: Path, out: Path, model: Path) -> list[tuple[str, str, str]]:
    report = run_batch(RunOptions(model=model, input=scans, output=out, workers=1, formats=MOSAIC_FORMATS))
    return sorted((r.key, r.status, r.reason) for r in report.results)


def test_an_rt_structure_set_of_a_mosaic_is_refused_at_planning(tmp_path: Path, mr_model: Path) -> None:
    scans = tmp_path / "scans"
    write_siemens_mosaics(scans / "bold", volumes=1, slices=4, tile=(16, 16))
    report = run_batch(RunOptions(model=mr_model, input=scans, output=tmp_path / "out", dry_run=True))
    ((result),) = report.results
    assert result.status == "failed" and "output rtstruct" in result.reason and "mosaic" in result.reason


def assert_outputs_match_the_mosaic(folder: Path, series_key: str, scans: Path, truth: GeneratedMosaics) -> None:
    """NIfTI on the tile grid; SEG valid, one frame of the mosaic's size referencing the mosaic, equal to the NIfTI
    re-tiled; predictions.json names the one source instance."""
    (series,) = [s for s in scan_tree(scans).series if s.key == series_key]
    labels = labels_from_nifti(folder / "segmentation.nii.gz")
    assert labels.shape == series.geometry.shape == truth.geometry.shape
    nifti = sitk.ReadImage(str(folder / "segmentation.nii.gz"))
    assert Geometry.from_sitk(nifti).is_close(truth.geometry, tol_mm=1e-3)
    assert labels.any()  # something to compare

    seg_path = folder / "segmentation.dcm"
    assert dciodvfy_errors(seg_path) == []
    seg = pydicom.dcmread(seg_path)
    source = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    assert (seg.Rows, seg.Columns) == truth.mosaic_size == (source.Rows, source.Columns)
    referenced = {
        item.ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
        for item in frame.DerivationImageSequence[0].SourceImageSequence
    }
    assert referenced == {source.SOPInstanceUID}
    np.testing.assert_array_equal(read_back_labels(seg_path, series), labels)  # tile by tile, in slice order
    import highdicom as hd

    frame = hd.seg.segread(seg_path).get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], combine_segments=True, dtype=np.uint8
    )
    np.testing.assert_array_equal(frame, tiles_to_mosaic(labels, series)[None])  # the source's layout
    document = json.loads((folder / "predictions.json").read_text())
    assert document["input"]["shape"] == list(truth.geometry.shape)


def test_two_volume_siemens_mosaic_series_runs_with_every_output(tmp_path: Path, mr_model: Path) -> None:
    scans = tmp_path / "scans"
    row, col = OBLIQUE
    truth = write_siemens_mosaics(
        scans / "bold", volumes=2, slices=9, tile=(24, 20), descending=True, row_direction=row, column_direction=col
    )
    uid = truth.series_instance_uid
    assert run_all_formats(scans, tmp_path / "out", mr_model) == [(f"{uid}.acq1", "ok", ""), (f"{uid}.acq2", "ok", "")]
    for number in (1, 2):
        key = f"{uid}.acq{number}"
        assert_outputs_match_the_mosaic(tmp_path / "out" / key, key, scans, truth)


def test_refused_mosaic_fails_its_row_and_writes_nothing(tmp_path: Path, mr_model: Path) -> None:
    scans = tmp_path / "scans"
    truth = write_siemens_mosaics(scans / "bold", csa_count=None, tag_count=None)
    ((key, status, reason),) = run_all_formats(scans, tmp_path / "out", mr_model)
    assert (key, status) == (truth.series_instance_uid, "failed")
    assert "mosaic: Siemens mosaic MOSAIC001.dcm: ImageType MOSAIC without NumberOfImagesInMosaic" in reason
    assert not (tmp_path / "out" / key).exists()


def test_uih_grid_runs_with_every_output(tmp_path: Path, mr_model: Path) -> None:
    scans = tmp_path / "scans"
    truth = write_uih_grid(scans / "uih", slices=7, tile=(16, 18))
    uid = truth.series_instance_uid
    assert run_all_formats(scans, tmp_path / "out", mr_model) == [(uid, "ok", "")]
    assert_outputs_match_the_mosaic(tmp_path / "out" / uid, uid, scans, truth)


def test_a_mosaic_seg_out_of_place_fails_its_series(
    tmp_path: Path, mr_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from innereye_batch.writers import dicom_seg

    original = dicom_seg.write_dicom_seg

    def mirrored(path: Path, labels: np.ndarray, *args: object, **kwargs: object) -> None:
        original(path, labels[:, :, ::-1].copy(), *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dicom_seg, "write_dicom_seg", mirrored)
    scans = tmp_path / "scans"
    truth = write_siemens_mosaics(scans / "bold", volumes=1, slices=9, tile=(24, 20))
    ((key, status, reason),) = run_all_formats(scans, tmp_path / "out", mr_model)
    assert (key, status) == (truth.series_instance_uid, "failed")
    assert "read back does not match the label map laid out as the mosaic" in reason
