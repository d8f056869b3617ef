"""Shared checks for DICOM tests: scan a folder, load a series, and compare with the truth and SimpleITK."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.scan import scan_tree
from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.dicom.volume import load_volume
from tests.factory import GeneratedSeries, read_with_simpleitk


def only_series(folder: Path) -> SeriesInfo:
    result = scan_tree(folder)
    assert len(result.series) == 1, [s.key for s in result.series]
    return result.series[0]


def without_layouts(series: SeriesInfo) -> SeriesInfo:
    """The same series as a scan that recorded no PixelLayout would give: every file parsed again to load."""
    slices = tuple(dataclasses.replace(ref, pixel=None) for ref in series.slices)
    return dataclasses.replace(series, slices=slices)


def assert_matches_truth_and_simpleitk(series: SeriesInfo, truth: GeneratedSeries) -> None:
    """Geometry, slice order and voxels equal the factory's truth and SimpleITK's reading of the same files."""
    assert series.series_instance_uid == truth.series_instance_uid
    assert series.geometry.is_close(truth.geometry), (series.geometry, truth.geometry)
    assert series.files == truth.paths
    assert series.sop_instance_uids == truth.sop_instance_uids
    volume = load_volume(series)
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, truth.voxels)
    image = read_with_simpleitk(truth.paths)
    assert Geometry.from_sitk(image).is_close(series.geometry), (Geometry.from_sitk(image), series.geometry)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume.array)
