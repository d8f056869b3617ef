"""The writer registry: formats per task, in writing order, requested by name."""

from __future__ import annotations

import pytest

from innereye_batch.errors import UsageError
from innereye_batch.writers.registry import formats_for_task, registered_formats, resolve_formats


def test_segmentation_formats_in_writing_order() -> None:
    names = [f.name for f in formats_for_task("segmentation")]
    assert names == ["nifti", "dicom-seg", "rtstruct", "preview", "json"]  # predictions.json summarises: last
    assert registered_formats()["json"].summarises_outputs
    assert {f.filename for f in formats_for_task("segmentation")} == {
        "segmentation.nii.gz",
        "segmentation.dcm",
        "rtstruct.dcm",
        "preview.png",
        "predictions.json",
    }


def test_resolve_keeps_writing_order_and_refuses_unknown_names() -> None:
    assert [f.name for f in resolve_formats(("json", "nifti"), "segmentation")] == ["nifti", "json"]
    assert [f.name for f in resolve_formats((), "segmentation")] == [
        "nifti",
        "dicom-seg",
        "rtstruct",
        "preview",
        "json",
    ]
    with pytest.raises(UsageError, match="png"):
        resolve_formats(("nifti", "png"), "segmentation")
