"""Shared checks for DICOM tests: scan a folder, load a series, and compare with the truth and SimpleITK."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
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


def right_handed(image: sitk.Image) -> tuple[Geometry, np.ndarray]:
    """SimpleITK's geometry and voxels, its slice axis flipped where it keeps a multi-frame file's frame order
    against the slice normal (a left-handed direction): the same voxels in space, in our slice order."""
    geometry, array = Geometry.from_sitk(image), sitk.GetArrayFromImage(image)
    matrix = geometry.direction_matrix
    if np.linalg.det(matrix) > 0:
        return geometry, array
    last = geometry.index_to_lps((geometry.shape[0] - 1, 0, 0))
    matrix[:, 2] = -matrix[:, 2]
    flipped = dataclasses.replace(
        geometry, origin=tuple(float(v) for v in last), direction=tuple(float(v) for v in matrix.ravel())
    )
    return flipped, array[::-1]


def assert_geometry_matches_simpleitk(series: SeriesInfo, image: sitk.Image) -> None:
    """Our geometry equals SimpleITK's (made right-handed), except the z spacing of a single slice that SimpleITK
    sets to 1 mm where SpacingBetweenSlices is absent and we read SliceThickness (see stacks.py)."""
    theirs, _ = right_handed(image)
    if series.slice_spacing_source == "SliceThickness" and series.geometry.shape[0] == 1:
        assert theirs.spacing[0] == 1.0
        theirs = dataclasses.replace(theirs, spacing=(series.geometry.spacing[0], *theirs.spacing[1:]))
    assert theirs.is_close(series.geometry), (series.key, theirs, series.geometry)


def read_files_with_simpleitk(paths: Sequence[Path], scratch: Path) -> sitk.Image:
    """SimpleITK's reading of exactly these files, sorted by GDCM: they are linked into an empty folder first."""
    scratch.mkdir(parents=True)
    for index, path in enumerate(paths):
        (scratch / f"{index:05d}_{path.name}").symlink_to(path.resolve())
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(scratch))
    assert len(names) == len(paths), (len(names), len(paths))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    return reader.Execute()


def one_folder_per_file(files: Sequence[Path], root: Path) -> Path:
    """Each file linked into a folder of its own under ``root`` (as hospital exports keep series apart)."""
    for file in files:
        folder = root / file.name
        folder.mkdir(parents=True)
        (folder / file.name).symlink_to(file.resolve())
    return root
