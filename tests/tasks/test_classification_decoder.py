"""The classification decoder reads only its work item's frame of a multi-frame projection image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from innereye_batch.dicom.projection import projection_images
from innereye_batch.dicom.scan import scan_tree
from innereye_batch.errors import DicomError
from innereye_batch.model.package import load_model_package
from innereye_batch.tasks import task_for
from innereye_batch.tasks.classification import ImageDecoder
from tests.dicom.test_projection import chest_values, rle_multi_frame
from tools.cxr_phantom import projection_dataset

MODEL = Path(__file__).resolve().parents[2] / "sample_data" / "cxr_model"


def test_an_item_decodes_its_own_frame_only(tmp_path: Path) -> None:
    """Issue: each frame is a work item, but decoding one decoded every frame of the file (memory x frames, time
    quadratic in frames). Frame 0 here cannot be decoded: the items of frames 1 and 2 must still decode."""
    package = load_model_package(MODEL)
    frames = np.stack([chest_values(12, seed=s, shape=(96, 80)) for s in (1, 2, 3)])
    rle_multi_frame(frames, undecodable=0, window=(2000.0, 3000.0)).save_as(
        tmp_path / "mf.dcm", enforce_file_format=True
    )
    items, unmatched = task_for(package.task).plan_items(list(scan_tree(tmp_path, workers=1).series), package)
    assert not unmatched and len(items) == 3
    decoder = ImageDecoder(package.classification, keep_pixels=True)
    by_frame = {item.primary.slices[0].frame or 0: item for item in items}
    for k in (1, 2):
        decoded = decoder(by_frame[k])
        alone = projection_images(projection_dataset(frames[k], modality="DX", window=(2000.0, 3000.0)))[0]
        assert decoded.image.frame_index == k
        np.testing.assert_array_equal(decoded.image.pixels, alone.pixels)
    with pytest.raises(DicomError, match="pixel data cannot be decoded"):
        decoder(by_frame[0])
