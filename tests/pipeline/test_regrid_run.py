"""`run --regrid-irregular` on a gantry-tilted series: the model sees a regular grid, the NIfTI lies on it, the
DICOM-SEG is mapped back onto the source slices it references, and predictions.json says so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.scan import scan_tree
from innereye_batch.pipeline.run import RunOptions, run_batch
from tests.dicom.test_regrid import write_tilted
from tests.pipeline.cohort import labels_from_nifti, model_folder
from tests.writers.helpers import read_back_labels


def test_tilted_series_refused_by_default_and_resampled_on_request(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    write_tilted(scans / "tilted", slices=12)
    model = model_folder(tmp_path / "model", members=1)

    refused = run_batch(RunOptions(model=model, input=scans, output=tmp_path / "refused", workers=0))
    (result,) = refused.results
    assert result.status == "failed" and "gantry_tilt" in result.reason and "degrees" in result.reason

    options = RunOptions(model=model, input=scans, output=tmp_path / "out", workers=1, regrid_irregular=True)
    report = run_batch(options)
    (result,) = report.results
    assert result.status == "ok", result.reason
    series = scan_tree(scans, regrid_irregular=True).series[0]
    assert series.irregular and series.regrid_geometry is not None
    folder = tmp_path / "out" / series.key
    nifti = sitk.ReadImage(str(folder / "segmentation.nii.gz"))
    assert Geometry.from_sitk(nifti).is_close(series.regrid_geometry, tol_mm=1e-3)  # on the regular grid
    document = json.loads((folder / "predictions.json").read_text())
    assert document["input"]["resampled_onto_regular_grid"] is True
    assert document["input"]["shape"] == list(series.regrid_geometry.shape)

    # the SEG references every source image and holds the label map brought back onto those slices
    from innereye_batch.dicom.volume import load_volume

    regridding = load_volume(series).regridding
    assert regridding is not None
    expected = regridding.to_source(labels_from_nifti(folder / "segmentation.nii.gz"))
    np.testing.assert_array_equal(read_back_labels(folder / "segmentation.dcm", series), expected)
    assert expected.shape == series.geometry.shape and expected.any()


def test_a_result_made_before_a_problem_was_seen_goes_when_the_series_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier version resampled a variable-spacing stack across a missing slice and reported it ok. Its
    files unchanged, the fixed version refuses the series, but kept that result (same input and model
    fingerprints) with its done record: it still looked done. Now it is removed, and the reason says so."""
    from innereye_batch.dicom import stacks
    from tests.dicom.test_regrid import GE_STEPS, write_variable

    scans, out = tmp_path / "scans", tmp_path / "out"
    write_variable(scans, steps=(*GE_STEPS[:3], GE_STEPS[3] + GE_STEPS[4], *GE_STEPS[5:]))  # a slice of 7 mm gone
    for path in sorted(scans.iterdir())[4:]:  # the numbers after the gap skip one, as the scanner numbered them
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = int(ds.InstanceNumber) + 1
        ds.save_as(path)
    model = model_folder(tmp_path / "model", members=1)
    options = RunOptions(model=model, input=scans, output=out, workers=0, regrid_irregular=True, formats=("nifti",))
    monkeypatch.setattr(stacks, "numbering_gaps", lambda *args: [])  # as the version that did not look
    (before,) = run_batch(options).results
    assert before.status == "ok"
    monkeypatch.undo()
    folder = out / before.key
    assert (folder / "done.json").is_file()

    (after,) = run_batch(options).results
    assert after.status == "failed" and "missing_slices" in after.reason
    assert "the result an earlier run made of these files was removed" in after.reason
    assert sorted(p.name for p in folder.iterdir()) == []
