"""Siemens and UIH mosaics unpack into correct 3-D volumes (or are refused with the reason), as dcm2niix reads them;
a series of several mosaic files is split into one volume per file by the scan's own splitting (exact keys)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian, JPEGLSLossless, RLELossless

from innereye_batch.dicom.headers import ImageHeader, SplitValues
from innereye_batch.dicom.mosaic import tiles_to_mosaic
from innereye_batch.dicom.problems import DUPLICATE_POSITIONS, MOSAIC
from innereye_batch.dicom.scan import scan_tree
from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.dicom.splitting import split_repeats
from innereye_batch.dicom.volume import load_volume
from innereye_batch.errors import SeriesError
from tests.dicom.oracle import only_series
from tests.dicom.split_cases import DIRS, siemens
from tests.factory import recode_file, rotation_direction, write_series
from tests.mosaic_factory import GeneratedMosaics, csa2_header, write_siemens_mosaics, write_uih_grid

OBLIQUE = rotation_direction((0.3, 1.0, 0.2), 25.0)
SAGITTAL = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))


def assert_volumes_match(series: list[SeriesInfo], truth: GeneratedMosaics) -> None:
    """One loadable stack per mosaic file, each with the truth's geometry and voxels, tile k as its slice."""
    assert [s.files for s in series] == [(p,) for p in truth.paths]
    for stack, expected in zip(series, truth.volumes, strict=True):
        assert stack.problems == ()
        assert stack.mosaic_size == truth.mosaic_size
        assert stack.geometry.is_close(truth.geometry), (stack.geometry, truth.geometry)
        volume = load_volume(stack)
        np.testing.assert_array_equal(volume.array, expected)


def by_volume(folder: Path) -> list[SeriesInfo]:
    """The scanned stacks in the order their files were written (MOSAIC001, MOSAIC002...)."""
    return sorted(scan_tree(folder).series, key=lambda s: s.files[0].name)


def suffixes(series: list[SeriesInfo], truth: GeneratedMosaics) -> list[str]:
    assert all(s.series_instance_uid == truth.series_instance_uid for s in series)
    return [s.key_suffix for s in series]


def test_siemens_mosaic_geometry_by_hand(tmp_path: Path) -> None:
    # 4 slices of 2 x 3 pixels in a 2 x 2 grid: a 4 x 6 mosaic. Rows 2 mm apart, columns 1 mm, slices 5 mm.
    # Slice 1 lies (6 - 3) / 2 columns and (4 - 2) / 2 rows from the mosaic's corner (10, 20, 30): (11.5, 22, 30).
    common: dict[str, Any] = dict(slices=4, tile=(2, 3), spacing=(5.0, 2.0, 1.0), first_position=(11.5, 22.0, 30.0))
    up = write_siemens_mosaics(tmp_path / "up", **common)
    down = write_siemens_mosaics(tmp_path / "down", descending=True, **common)
    mosaic = pydicom.dcmread(up.paths[0])
    assert [float(v) for v in mosaic.ImagePositionPatient] == [10.0, 20.0, 30.0]
    assert (mosaic.Rows, mosaic.Columns) == (4, 6)
    image = mosaic.pixel_array.astype(np.float32)
    tiles = [image[0:2, 0:3], image[0:2, 3:6], image[2:4, 0:3], image[2:4, 3:6]]  # row-major

    ascending = only_series(tmp_path / "up")
    assert ascending.geometry.shape == (4, 2, 3)
    assert ascending.geometry.spacing == pytest.approx((5.0, 2.0, 1.0))
    assert ascending.geometry.origin == pytest.approx((11.5, 22.0, 30.0))
    assert ascending.geometry.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert [s.position[2] for s in ascending.slices] == pytest.approx([30.0, 35.0, 40.0, 45.0])
    np.testing.assert_array_equal(load_volume(ascending).array, np.stack(tiles))

    # SliceNormalVector (0, 0, -1): slice k at z = 30 - 5k; sorted feet to head, tile 4 comes first.
    descending = only_series(tmp_path / "down")
    assert pydicom.dcmread(down.paths[0]).ImagePositionPatient == mosaic.ImagePositionPatient
    assert descending.geometry.origin == pytest.approx((11.5, 22.0, 15.0))
    assert descending.geometry.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert [s.frame for s in descending.slices] == [3, 2, 1, 0]
    down_image = pydicom.dcmread(down.paths[0]).pixel_array.astype(np.float32)
    np.testing.assert_array_equal(load_volume(descending).array[0], down_image[2:4, 3:6])


@pytest.mark.parametrize(
    "orientation, descending",
    [((None, None), False), ((None, None), True), (OBLIQUE, False), (OBLIQUE, True), (SAGITTAL, True)],
    ids=["axial", "axial-descending", "oblique", "oblique-descending", "sagittal-descending"],
)
def test_siemens_mosaic_matches_truth(tmp_path: Path, orientation: tuple[Any, Any], descending: bool) -> None:
    row, col = orientation
    directions = {"row_direction": row, "column_direction": col} if row is not None else {}
    truth = write_siemens_mosaics(tmp_path, slices=11, tile=(14, 12), descending=descending, **directions)
    (series,) = scan_tree(tmp_path).series
    assert series.key == truth.series_instance_uid and series.sop_instance_uids == truth.sop_instance_uids
    assert series.geometry.shape == (11, 14, 12)
    assert_volumes_match([series], truth)


def test_fmri_series_is_one_volume_per_file_named_by_acquisition_number(tmp_path: Path) -> None:
    row, col = OBLIQUE
    truth = write_siemens_mosaics(
        tmp_path, volumes=3, acquisition_numbers=[5, 6, 7], row_direction=row, column_direction=col
    )
    series = by_volume(tmp_path)
    assert suffixes(series, truth) == [".acq5", ".acq6", ".acq7"]
    assert [s.split_by for s in series] == [{"AcquisitionNumber": str(n)} for n in (5, 6, 7)]
    assert_volumes_match(series, truth)
    assert not np.array_equal(truth.volumes[0], truth.volumes[1])  # each part holds its own file's voxels


@pytest.mark.parametrize("numbers", [[None, None, None], [1, 1, 1]], ids=["absent", "all-equal"])
def test_volumes_without_distinct_acquisition_numbers_use_instance_numbers(
    tmp_path: Path, numbers: list[int | None]
) -> None:
    """Each file holds every position once: runs of InstanceNumbers, as GE fMRI slices are told apart."""
    truth = write_siemens_mosaics(tmp_path, volumes=3, acquisition_numbers=numbers)
    series = by_volume(tmp_path)
    assert suffixes(series, truth) == [".vol1", ".vol2", ".vol3"]
    assert [s.split_by for s in series] == [{"InstanceNumber": str(n)} for n in (1, 2, 3)]
    assert_volumes_match(series, truth)


def test_volumes_named_in_instance_number_order_not_file_order(tmp_path: Path) -> None:
    truth = write_siemens_mosaics(tmp_path, volumes=3, acquisition_numbers=[None] * 3)
    for path, number in zip(truth.paths, (30, 10, 20), strict=True):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = number
        ds.save_as(path)
    series = by_volume(tmp_path)
    assert suffixes(series, truth) == [".vol3", ".vol1", ".vol2"]
    assert_volumes_match(series, truth)


def test_mosaic_files_nothing_tells_apart_are_refused_not_merged(tmp_path: Path) -> None:
    """Two volumes at the same positions with equal AcquisitionNumber and InstanceNumber: no key from file names."""
    truth = write_siemens_mosaics(tmp_path, volumes=2, acquisition_numbers=[1, 1])
    ds = pydicom.dcmread(truth.paths[1])
    ds.InstanceNumber = 1
    ds.save_as(truth.paths[1])
    (series,) = scan_tree(tmp_path).series
    assert series.key == truth.series_instance_uid
    assert [p.kind for p in series.fatal_problems] == [DUPLICATE_POSITIONS]
    with pytest.raises(SeriesError, match="duplicate_positions"):
        load_volume(series)


def test_diffusion_mosaics_split_by_b_value_and_direction(tmp_path: Path) -> None:
    """Siemens DTI: one mosaic file per direction, b-value and gradient in Siemens' private elements."""
    values = [(0, None), *((1000, g) for g in DIRS)]

    def diffusion(t: int, ds: pydicom.Dataset) -> None:
        for tag, element in siemens(*values[t]).items():
            if isinstance(tag, int) and tag != 0x00190010:  # the creator of block 0x10 is written already
                ds.add_new(tag, *element)

    truth = write_siemens_mosaics(tmp_path, volumes=4, acquisition_numbers=[1] * 4, edit=diffusion)
    series = by_volume(tmp_path)
    assert suffixes(series, truth) == [".b0", ".b1000.dir1", ".b1000.dir2", ".b1000.dir3"]
    assert_volumes_match(series, truth)


@pytest.mark.parametrize(
    "orientation, descending, volumes",
    [((None, None), False, 1), ((None, None), True, 1), (OBLIQUE, True, 2)],
    ids=["axial", "axial-descending", "oblique-descending-2-volumes"],
)
def test_uih_grid_matches_truth(tmp_path: Path, orientation: tuple[Any, Any], descending: bool, volumes: int) -> None:
    row, col = orientation
    directions = {"row_direction": row, "column_direction": col} if row is not None else {}
    truth = write_uih_grid(tmp_path, slices=7, tile=(8, 9), descending=descending, volumes=volumes, **directions)
    assert pydicom.dcmread(truth.paths[0]).Rows == 3 * 8  # 7 slices: 3 columns of tiles, 3 rows
    assert "ImagePositionPatient" not in pydicom.dcmread(truth.paths[0])
    series = by_volume(tmp_path)
    assert suffixes(series, truth) == ([""] if volumes == 1 else [".vol1", ".vol2"])  # no AcquisitionNumber
    assert_volumes_match(series, truth)


@pytest.mark.parametrize("vendor", ["Siemens", "UIH"])
@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, RLELossless, JPEGLSLossless], ids=lambda s: s.name)
def test_mosaics_in_other_transfer_syntaxes(tmp_path: Path, syntax: pydicom.uid.UID, vendor: str) -> None:
    """Implicit VR: the private elements are read without their VR (UIH's per-tile sequence as UN)."""
    write = write_siemens_mosaics if vendor == "Siemens" else write_uih_grid
    truth = write(tmp_path, volumes=2, descending=True)
    for path in truth.paths:
        recode_file(path, syntax)
    series = by_volume(tmp_path)
    assert all(s.transfer_syntaxes == (syntax,) for s in series)
    assert suffixes(series, truth) == ([".acq1", ".acq2"] if vendor == "Siemens" else [".vol1", ".vol2"])
    assert_volumes_match(series, truth)


def test_spacing_falls_back_to_slice_thickness(tmp_path: Path) -> None:
    truth = write_siemens_mosaics(tmp_path, spacing=(4.0, 2.0, 2.0), spacing_between_slices=False)
    assert_volumes_match(by_volume(tmp_path), truth)


def test_mosaic_and_ordinary_images_of_one_series_are_separate_stacks(tmp_path: Path) -> None:
    def echo_time(t: int, ds: pydicom.Dataset) -> None:
        ds.EchoTime = "10"  # as the factory's MR slices: no echo split

    truth = write_siemens_mosaics(tmp_path / "mosaic", edit=echo_time)
    ordinary = write_series(
        tmp_path / "slices",
        modality="MR",
        series_instance_uid=truth.series_instance_uid,
        study_instance_uid=truth.study_instance_uid,
        frame_of_reference_uid=truth.frame_of_reference_uid,
        first_instance=100,
    )
    keys = {s.key: s for s in scan_tree(tmp_path).series}
    uid = truth.series_instance_uid
    assert set(keys) == {f"{uid}.stack1", f"{uid}.stack2"}  # two grids, in order of first InstanceNumber
    assert keys[f"{uid}.stack2"].files == ordinary.paths and keys[f"{uid}.stack2"].problems == ()
    assert keys[f"{uid}.stack2"].mosaic_size is None
    np.testing.assert_array_equal(load_volume(keys[f"{uid}.stack2"]).array, ordinary.voxels)
    assert_volumes_match([keys[f"{uid}.stack1"]], truth)


REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("no-count", {"csa_count": None, "tag_count": None}, "ImageType MOSAIC without NumberOfImagesInMosaic"),
    ("counts-differ", {"csa_count": 10, "tag_count": 12}, "is 10 in the CSA header but 12 in (0019,100A)"),
    ("count-too-large", {"csa_count": 30, "tag_count": 30}, "does not divide into the 6x6 grid of tiles"),
    ("no-normal", {"slice_normal": None}, "no SliceNormalVector in the CSA header"),
    ("oblique-normal", {"slice_normal": (0.0, 0.5, 0.866)}, "30.00 degrees off the normal"),
    ("no-spacing", {"spacing_between_slices": False, "slice_thickness": False}, "no SpacingBetweenSlices"),
    ("not-flagged", {"image_type": ("ORIGINAL", "PRIMARY", "M", "ND")}, "ImageType has no MOSAIC"),
]


@pytest.mark.parametrize("changes, reason", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_inconsistent_siemens_mosaic_is_refused_with_the_reason(
    tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    truth = write_siemens_mosaics(tmp_path / "mosaic", slices=10, tile=(12, 10), **changes)
    good = write_series(tmp_path / "good", shape=(4, 8, 8))
    series = {s.series_instance_uid: s for s in scan_tree(tmp_path).series}
    refused = series[truth.series_instance_uid]
    (problem,) = refused.fatal_problems
    assert problem.kind == MOSAIC and reason in problem.message and truth.paths[0].name in problem.message
    assert refused.geometry.shape == (1, 48, 40)  # left as the one image it claims to be
    assert refused.mosaic_size is None
    with pytest.raises(SeriesError, match="mosaic"):
        load_volume(refused)
    assert series[good.series_instance_uid].problems == ()
    np.testing.assert_array_equal(load_volume(series[good.series_instance_uid]).array, good.voxels)


def test_uih_grid_without_a_position_per_tile_is_refused(tmp_path: Path) -> None:
    write_uih_grid(tmp_path, slices=7, item_count=5)
    (series,) = scan_tree(tmp_path).series
    assert [p.kind for p in series.fatal_problems] == [MOSAIC]  # stands alone: no position problem of its own
    assert "gives 5 tile position(s) for NumberOfImagesInGrid 7" in series.fatal_problems[0].message


def test_one_refused_uih_grid_leaves_the_others_loadable(tmp_path: Path) -> None:
    """A refused grid has no ImagePositionPatient: it stands alone, never "images without geometry" of the others."""
    truth = write_uih_grid(tmp_path, volumes=2)
    ds = pydicom.dcmread(truth.paths[1])
    ds.private_block(0x0065, "Image Private Header")[0x51].value = []
    ds.save_as(truth.paths[1])
    first, second = by_volume(tmp_path)
    assert suffixes([first, second], truth) == [".stack1", ".stack2"]
    assert first.problems == () and [p.kind for p in second.fatal_problems] == [MOSAIC]
    np.testing.assert_array_equal(load_volume(first).array, truth.volumes[0])


def test_unreadable_csa_header_is_refused(tmp_path: Path) -> None:
    truth = write_siemens_mosaics(tmp_path)
    ds = pydicom.dcmread(truth.paths[0])
    ds.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value = b"SV10\x04\x03\x02\x01" + b"\xff" * 8
    ds.save_as(truth.paths[0])
    (series,) = scan_tree(tmp_path).series
    (problem,) = series.fatal_problems
    assert "CSA image header unreadable" in problem.message and "direction of its slices is unknown" in problem.message


def test_one_refused_volume_leaves_the_others_loadable(tmp_path: Path) -> None:
    truth = write_siemens_mosaics(tmp_path, volumes=2)
    ds = pydicom.dcmread(truth.paths[1])
    csa = csa2_header({"NumberOfImagesInMosaic": ("US", [10])})  # no SliceNormalVector
    ds.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value = csa
    ds.save_as(truth.paths[1])
    first, second = by_volume(tmp_path)
    assert suffixes([first, second], truth) == [".stack1", ".stack2"]  # the tiles' grid, and the refused image
    assert first.problems == () and [p.kind for p in second.fatal_problems] == [MOSAIC]
    np.testing.assert_array_equal(load_volume(first).array, truth.volumes[0])
    with pytest.raises(SeriesError, match="mosaic"):
        load_volume(second)


def test_tiles_go_back_where_they_came_from(tmp_path: Path) -> None:
    row, col = SAGITTAL
    truth = write_siemens_mosaics(tmp_path, slices=7, descending=True, row_direction=row, column_direction=col)
    series = only_series(tmp_path)
    mosaic = tiles_to_mosaic(load_volume(series).array, series)
    np.testing.assert_array_equal(mosaic, pydicom.dcmread(truth.paths[0]).pixel_array.astype(np.float32))
    with pytest.raises(ValueError, match="not the tiles of one mosaic file"):
        tiles_to_mosaic(np.zeros((1, 4, 4)), only_series(write_series(tmp_path / "ct", shape=(1, 4, 4)).folder))


def test_mosaic_rewritten_after_the_scan_fails_the_load(tmp_path: Path) -> None:
    truth = write_siemens_mosaics(tmp_path)
    series = only_series(tmp_path)
    ds = pydicom.dcmread(truth.paths[0])
    cropped = ds.pixel_array[:24, :20]
    ds.Rows, ds.Columns = 24, 20
    ds.PixelData = cropped.tobytes()
    ds.save_as(truth.paths[0])
    with pytest.raises(SeriesError, match="mosaic size changed since the scan"):
        load_volume(series)


def test_files_copied_together_keep_their_volumes_apart(tmp_path: Path) -> None:
    """Two fMRI runs of one session in one folder: each series keeps its own parts."""
    first = write_siemens_mosaics(tmp_path / "a", volumes=2, seed=1)
    second = write_siemens_mosaics(tmp_path / "b", volumes=2, seed=2)
    for path in first.paths + second.paths:
        shutil.move(path, tmp_path / f"{path.parent.name}_{path.name}")
    keys = sorted(s.key for s in scan_tree(tmp_path).series)
    expected = [f"{t.series_instance_uid}.acq{n}" for t in (first, second) for n in (1, 2)]
    assert keys == sorted(expected)


def test_cropped_scanner_mosaics_are_refused(tmp_path: Path) -> None:
    """nibabel's 0.dcm and 1.dcm: Siemens DWI mosaics cut to 256 x 256, whose CSA header still says 48 slices."""
    import nibabel

    data = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"
    for name in ("0.dcm", "1.dcm"):
        shutil.copy(data / name, tmp_path)
    series = scan_tree(tmp_path).series
    assert [s.key_suffix for s in series] == [".stack1", ".stack2"]  # each stands alone
    for stack, name in zip(series, ("0.dcm", "1.dcm"), strict=True):
        (problem,) = stack.fatal_problems
        assert problem.kind == MOSAIC and problem.message == (
            f"Siemens mosaic {name}: a 256x256 image does not divide into the 7x7 grid of tiles that 48 slices need"
        )
        with pytest.raises(SeriesError, match="mosaic"):
            load_volume(stack)


def _frames(path: str, instance_number: int, positions: list[float]) -> list[ImageHeader]:
    """Frames of one file at z = ``positions`` (as the scan makes a mosaic's tiles), sharing its InstanceNumber."""
    return [
        ImageHeader(
            path=Path(path),
            sop_instance_uid=path,
            frame=k,
            position=(0.0, 0.0, z),
            orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            pixel_spacing=(1.0, 1.0),
            rows=4,
            columns=4,
            split=SplitValues(instance_number=instance_number),
        )
        for k, z in enumerate(positions)
    ]


def test_files_whose_frames_hold_every_position_are_runs_of_one_instance_number() -> None:
    """The splitting rule mosaic series rely on, and where it must not apply."""
    two_files = _frames("b", 7, [0.0, 3.0, 6.0]) + _frames("a", 4, [6.0, 3.0, 0.0])
    parts = split_repeats(two_files)
    assert [(suffix, by) for suffix, by, _ in parts] == [
        (".vol1", {"InstanceNumber": "4"}),
        (".vol2", {"InstanceNumber": "7"}),
    ]
    assert [{im.path.name for im in images} for _, _, images in parts] == [{"a"}, {"b"}]
    one_file_twice = _frames("a", 1, [0.0, 3.0, 0.0, 3.0])  # one file's frames would fall in two runs
    assert [suffix for suffix, _, _ in split_repeats(one_file_twice)] == [""]
    shared_number = _frames("a", 1, [0.0, 3.0]) + _frames("b", 1, [0.0, 3.0])  # two files, one InstanceNumber
    assert [suffix for suffix, _, _ in split_repeats(shared_number)] == [""]
