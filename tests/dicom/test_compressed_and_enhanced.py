"""Compressed transfer syntaxes, unusual bit depths and enhanced multi-frame files decode to the right voxels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from innereye_batch.dicom.volume import load_volume
from tests.dicom.oracle import assert_matches_truth_and_simpleitk, only_series
from tests.factory import recode_file, rotation_direction, write_enhanced_series, write_series

SYNTAXES = [ImplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian]


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: UID(s).name)
def test_transfer_syntax_matches_truth_and_simpleitk(tmp_path: Path, syntax: UID) -> None:
    row, col = rotation_direction((0.0, 1.0, 1.0), 20.0)
    truth = write_series(tmp_path, shape=(4, 36, 34), row_direction=row, column_direction=col)
    for path in truth.paths:
        recode_file(path, syntax)
    series = only_series(tmp_path)
    assert series.transfer_syntaxes == (syntax,)
    assert series.problems == ()
    assert_matches_truth_and_simpleitk(series, truth)


def test_mixed_compression_in_one_series(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(6, 36, 34), shuffle_names=True)
    cycle = [RLELossless, JPEGLSLossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian]
    for path, syntax in zip(truth.paths, cycle * 2, strict=False):
        recode_file(path, syntax)
    series = only_series(tmp_path)
    assert [p.kind for p in series.problems] == ["mixed_transfer_syntaxes"]
    assert len(series.transfer_syntaxes) == 5
    assert_matches_truth_and_simpleitk(series, truth)


@pytest.mark.parametrize("signed", [True, False])
def test_12_bit_stored_values_ignore_unused_high_bits(tmp_path: Path, signed: bool) -> None:
    voxels = np.arange(-600, 600, 2, dtype=np.float32).reshape(3, 20, 10) * (1 if signed else -1)
    truth = write_series(tmp_path, voxels=voxels, rescale_intercept=0.0 if signed else -1024.0)
    for path in truth.paths:
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit = 12, 11
        raw = np.frombuffer(ds.PixelData, dtype=np.uint16)
        ds.PixelData = (raw & 0x0FFF | (0x5000 if not signed else 0)).astype(np.uint16).tobytes()
        ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(load_volume(only_series(tmp_path)).array, truth.voxels)


def test_enhanced_multiframe_with_per_frame_rescale(tmp_path: Path) -> None:
    row, col = rotation_direction((0.3, 1.0, 0.2), 25.0)
    rescales = [(1.0 + 0.5 * k, -1000.0 + 3 * k) for k in range(6)]
    truth = write_enhanced_series(
        tmp_path / "enhanced.dcm",
        row_direction=row,
        column_direction=col,
        rescale_per_frame=rescales,
        shuffle_frames=True,
    )
    series = only_series(tmp_path)
    assert series.problems == ()
    assert series.geometry.is_close(truth.geometry)
    frames = [s.frame for s in series.slices]
    assert sorted(frames) == list(range(6)) and frames != list(range(6))
    assert series.sop_instance_uids == truth.sop_instance_uids
    np.testing.assert_array_equal(load_volume(series).array, truth.voxels)


def test_enhanced_multiframe_with_shared_rescale_and_normal_to_feet(tmp_path: Path) -> None:
    truth = write_enhanced_series(tmp_path / "e.dcm", column_direction=(0.0, -1.0, 0.0), shape=(5, 9, 7))
    series = only_series(tmp_path)
    assert series.geometry.is_close(truth.geometry)
    np.testing.assert_array_equal(load_volume(series).array, truth.voxels)


def test_a_jpeg_2000_stream_of_values_beyond_bits_stored_fails_its_series(tmp_path: Path) -> None:
    """A JPEG 2000 stream of 16-bit values under a header that says BitsStored 12: the codec returns the stream's
    values (up to 5024 here: metal at 4000 HU), which the 12-bit header never allows; the volume would hold them
    as if they were right. The series fails, saying why."""
    from innereye_batch.errors import SeriesError

    voxels = np.full((3, 36, 34), 40.0, dtype=np.float32)
    voxels[1, 5:8, 3:6] = 4000.0
    truth = write_series(tmp_path, voxels=voxels)
    for path in truth.paths:
        recode_file(path, JPEG2000Lossless)
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit = 12, 11  # the header alone: the codestream keeps its 16-bit values
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(SeriesError, match=r"decoded values 1064\.\.5024 lie outside the 0\.\.4095 that BitsStored 12"):
        load_volume(only_series(tmp_path))
