"""Variable spacing is told from missing slices; gantry tilt and variable spacing are refused by default and, when
asked, resampled onto a regular orthogonal grid that equals an analytic phantom (and dcm2niix's correction)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.scan import scan_tree
from innereye_batch.dicom.slice_steps import numbering_gaps
from innereye_batch.dicom.volume import load_volume
from innereye_batch.errors import SeriesError
from tests.dicom.oracle import only_series
from tests.dicom.parts_factory import canonical, run_dcm2niix
from tests.factory import write_series

TILT = np.deg2rad(15.0)
TILTED_ROW, TILTED_COLUMN = (1.0, 0.0, 0.0), (0.0, float(np.cos(TILT)), float(np.sin(TILT)))
GE_STEPS = (1.08, 1.08, 2.5, 7.0, 7.0, 2.5, 1.08)
"""Variable spacing by design (GE): dense where it matters, sparse elsewhere."""


def phantom(points_lps: np.ndarray) -> np.ndarray:
    """An analytic image in patient space: linear, so linear interpolation reproduces it exactly."""
    x, y, z = points_lps[..., 0], points_lps[..., 1], points_lps[..., 2]
    return -500.0 + 3.0 * x + 2.0 * y - 4.0 * z


def sampled(
    shape: tuple[int, int, int],
    positions: Sequence[Sequence[float]],
    row: Sequence[float],
    column: Sequence[float],
    spacing: tuple[float, float],
) -> np.ndarray:
    """The phantom on each slice's own grid (rounded: stored as integers)."""
    i, j = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    planes = [
        np.asarray(p)[None, None, :]
        + j[..., None] * spacing[1] * np.asarray(row)
        + i[..., None] * spacing[0] * np.asarray(column)
        for p in positions
    ]
    return np.round(phantom(np.stack(planes))).astype(np.float32)


def grid_points(geometry: Geometry) -> np.ndarray:
    """LPS position of every voxel of a grid, (z, y, x, 3)."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in geometry.shape), indexing="ij")
    index = np.stack([x, y, z, np.ones_like(x)], axis=-1).astype(np.float64)
    return (index @ geometry.lps_affine().T)[..., :3]


def write_tilted(folder: Path, slices: int = 10) -> list[tuple[float, float, float]]:
    positions = [(-50.0, -60.0, 20.0 + 2.5 * k) for k in range(slices)]  # the table moves along z
    voxels = sampled((slices, 24, 20), positions, TILTED_ROW, TILTED_COLUMN, (0.9, 0.8))
    write_series(
        folder,
        voxels=voxels,
        spacing=(2.5, 0.9, 0.8),
        row_direction=TILTED_ROW,
        column_direction=TILTED_COLUMN,
        positions=positions,
        rescale_intercept=0.0,
    )
    return positions


def write_variable(folder: Path, steps: Sequence[float] = GE_STEPS) -> list[tuple[float, float, float]]:
    offsets = np.concatenate([[0.0], np.cumsum(steps)])
    positions = [(-50.0, -60.0, 20.0 + float(d)) for d in offsets]
    voxels = sampled((len(positions), 24, 20), positions, (1, 0, 0), (0, 1, 0), (0.8, 0.7))
    write_series(folder, voxels=voxels, positions=positions, rescale_intercept=0.0)
    return positions


def kinds(series: object) -> dict[str, bool]:
    return {p.kind: p.fatal for p in series.problems}  # type: ignore[attr-defined]


def test_variable_spacing_is_not_missing_slices(tmp_path: Path) -> None:
    write_variable(tmp_path / "ge")
    series = only_series(tmp_path / "ge")
    assert kinds(series) == {"variable_spacing": True} and series.irregular
    assert series.problems[0].message.startswith("steps between slices range 1.08-7 mm")
    write_variable(tmp_path / "gap", steps=(2.5, 2.5, 5.0, 2.5, 7.5, 2.5))  # 1 and 2 slices missing
    gapped = only_series(tmp_path / "gap")
    assert kinds(gapped) == {"missing_slices": True} and not gapped.irregular
    assert "about 3 slice(s) missing" in gapped.problems[0].message
    write_variable(tmp_path / "gap_after_short", steps=(5.0, 2.5))  # too few steps for the median: the smallest
    assert kinds(only_series(tmp_path / "gap_after_short")) == {"missing_slices": True}
    write_variable(tmp_path / "uneven", steps=(2.5, 2.5, 2.6, 2.4, 2.5))  # within 10 %: a warning
    assert kinds(only_series(tmp_path / "uneven")) == {"non_uniform_spacing": False}


DRIFTING_STEPS = (2.0,) * 12 + (2.19,) * 12
"""Each step within 10 % of the median (2.095 mm), yet the middle slice lies 1.14 mm (0.54 of a step) off the grid
from the first slice to the last."""


def test_uneven_steps_that_add_up_to_half_a_step_are_variable_spacing(tmp_path: Path) -> None:
    write_variable(tmp_path / "drift", steps=DRIFTING_STEPS)
    series = only_series(tmp_path / "drift")
    assert kinds(series) == {"variable_spacing": True} and series.irregular
    assert "would misplace slice 13 of 25 by 1.14 mm (over half a step)" in series.problems[0].message
    with pytest.raises(SeriesError, match="variable_spacing"):
        load_volume(series)
    write_variable(tmp_path / "alternating", steps=(2.0, 2.15) * 10)  # errors that cancel: within half a step
    assert kinds(only_series(tmp_path / "alternating")) == {"non_uniform_spacing": False}


def test_steps_each_within_one_percent_that_add_up_to_a_step_are_variable_spacing(tmp_path: Path) -> None:
    """Every step is regular (within 1 % of the median), but 200 of them are 1 % longer than the other 200: the
    middle slice lies 1.98 mm off the regular grid, where the NIfTI would have put it without a word."""
    write_variable(tmp_path / "drift", steps=(2.0,) * 200 + (2.0198,) * 200)
    series = only_series(tmp_path / "drift")
    assert kinds(series) == {"variable_spacing": True} and series.irregular
    assert "would misplace slice 201 of 401 by 1.98 mm (over half a step)" in series.problems[0].message


def test_positions_rounded_to_a_few_decimals_make_a_regular_stack_of_their_mean_step(tmp_path: Path) -> None:
    """A 1.375 mm step written to two decimals: steps of 1.37 and 1.38 mm. The grid of the median step (1.37 or
    1.38) put the last of 302 slices 1.5 mm off; the mean step puts every slice within 0.005 mm of its own."""
    positions = np.round(np.arange(302) * 1.375, 2)
    write_variable(tmp_path / "rounded", steps=tuple(np.diff(positions)))
    series = only_series(tmp_path / "rounded")
    assert series.problems == () and not series.irregular
    assert series.geometry.spacing[0] == pytest.approx(1.375, abs=1e-4)


def test_drifting_steps_resampled_equal_the_phantom(tmp_path: Path) -> None:
    positions = write_variable(tmp_path, steps=DRIFTING_STEPS)
    series = scan_tree(tmp_path, regrid_irregular=True).series[0]
    assert kinds(series) == {"variable_spacing": False} and "will be resampled" in series.problems[0].message
    volume = load_volume(series)
    assert volume.geometry.shape[0] == round((positions[-1][2] - positions[0][2]) / 2.0) + 1
    np.testing.assert_allclose(volume.array, phantom(grid_points(volume.geometry)), atol=0.5 + 1e-3)


def test_tilt_is_refused_by_default_with_the_measured_angle(tmp_path: Path) -> None:
    write_tilted(tmp_path)
    series = only_series(tmp_path)
    assert kinds(series) == {"gantry_tilt": True} and series.irregular
    assert "tilt about 15.00 degrees" in series.problems[0].message
    with pytest.raises(SeriesError, match="gantry_tilt"):
        load_volume(series)


@pytest.mark.parametrize("when", ["scan", "load"])
def test_tilted_stack_resampled_equals_the_phantom(tmp_path: Path, when: str) -> None:
    positions = write_tilted(tmp_path)
    series = scan_tree(tmp_path, regrid_irregular=when == "scan").series[0]
    assert kinds(series) == {"gantry_tilt": when != "scan"}
    volume = load_volume(series, regrid_irregular=when == "load")
    target = volume.geometry
    assert target == series.regrid_geometry and volume.regridding is not None
    assert target.shape == (10, 31, 20)  # 7 rows added where the slices drift (as dcm2niix widens them)
    direction = target.direction_matrix
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-12)  # an orthogonal grid
    np.testing.assert_allclose(direction[:, 2], np.cross(TILTED_ROW, TILTED_COLUMN), atol=1e-12)
    assert target.spacing == pytest.approx((2.5 * np.cos(TILT), 0.9, 0.8))
    assert target.origin == pytest.approx(positions[0])
    truth = phantom(grid_points(target))
    covered = volume.array > volume.array.min()
    assert covered.mean() > 0.7
    assert np.abs(volume.array - truth)[covered].max() <= 0.5 + 1e-3  # the phantom, within its integer rounding


def test_variable_spacing_resampled_equals_the_phantom_and_maps_labels_back(tmp_path: Path) -> None:
    positions = write_variable(tmp_path)
    series = scan_tree(tmp_path, regrid_irregular=True).series[0]
    assert kinds(series) == {"variable_spacing": False} and "will be resampled" in series.problems[0].message
    volume = load_volume(series)
    target = volume.geometry
    span = positions[-1][2] - positions[0][2]
    assert target.shape == (round(span / 1.08) + 1, 24, 20)  # the smallest step, fitted to the span
    assert target.spacing[0] == pytest.approx(span / (target.shape[0] - 1))
    np.testing.assert_allclose(volume.array, phantom(grid_points(target)), atol=0.5 + 1e-3)
    labels = np.arange(np.prod(target.shape), dtype=np.int64).reshape(target.shape) + 1  # each voxel its own id
    back = volume.regridding.to_source(labels)  # type: ignore[union-attr]
    assert back.shape == series.geometry.shape
    for k, position in enumerate(positions):  # each source pixel gets the id of the nearest target voxel
        z = round((position[2] - target.origin[2]) / target.spacing[0])
        np.testing.assert_array_equal(back[k], labels[z])


def test_tilted_labels_map_back_to_the_nearest_target_voxel(tmp_path: Path) -> None:
    write_tilted(tmp_path, slices=6)
    series = scan_tree(tmp_path, regrid_irregular=True).series[0]
    regridding = load_volume(series).regridding
    assert regridding is not None
    target = regridding.target
    labels = np.arange(np.prod(target.shape), dtype=np.int64).reshape(target.shape) + 1
    back = regridding.to_source(labels)
    inverse = np.linalg.inv(target.lps_affine())
    for k, ref in enumerate(series.slices):
        source = series.geometry.with_grid((1, *series.geometry.shape[1:]), series.geometry.spacing)
        points = grid_points(Geometry(source.shape, source.spacing, ref.position, source.direction))[0]
        index = np.floor(
            (np.concatenate([points, np.ones((*points.shape[:2], 1))], axis=-1) @ inverse.T)[..., :3] + 0.5
        )
        x, y, z = (index[..., a].astype(int) for a in range(3))
        np.testing.assert_array_equal(back[k], labels[z, y, x])


@pytest.mark.parametrize(
    ("pixel", "rows", "origin"),
    [(2.0, 16, (-10.0, -20.0, 5.0)), (0.488, 512, (-123.4, -201.3, 57.1))],
    ids=["exact halves", "halves float arithmetic leaves 1e-15 short"],
)
def test_slices_half_a_pixel_off_the_grid_map_back_as_a_rigid_shift(
    tmp_path: Path, pixel: float, rows: int, origin: tuple[float, float, float]
) -> None:
    """Each slice of this tilted stack lies half a row further along the columns than the last: every source row
    must take the target row half a row on, rounding halves one way. Half-to-even rounding sent alternate rows
    opposite ways, and rounding each row of an offset of 0.4999999999999996 sent low rows down and high rows up:
    a structure one row thick vanished from some slices."""
    shape = (8, rows, 12)
    positions = [np.array(origin) + np.array([0.0, k * pixel / 2, k * 3.0]) for k in range(shape[0])]
    write_series(tmp_path, shape=shape, spacing=(3.0, pixel, pixel), origin=origin, positions=positions)
    series = scan_tree(tmp_path, regrid_irregular=True).series[0]
    regridding = load_volume(series).regridding
    assert regridding is not None
    target = regridding.target
    row_ids = np.broadcast_to(np.arange(target.shape[1])[None, :, None] + 1, target.shape).astype(np.int64)
    back = regridding.to_source(row_ids)
    line = np.zeros(target.shape, np.uint8)
    line[:, 5, 2:8] = 1
    counts = regridding.to_source(line).reshape(shape[0], -1).sum(axis=1)
    for k in range(shape[0]):
        used = back[k, :, 0][back[k, :, 0] > 0]
        assert np.all(np.diff(used) == 1), f"slice {k}: target rows {used.tolist()}"
    assert counts.tolist() == [6] * shape[0]


def test_dcm2niix_tilt_and_equalised_outputs_agree(tmp_path: Path) -> None:
    """dcm2niix writes _Tilt and _Eq volumes: same grid shape and axes as ours for tilt, the same voxels inside,
    and its equalised volume is the same phantom. (Its _Tilt origin is 6 mm off the phantom: we check ours
    against the phantom above, theirs only by axes and voxels.)"""
    write_tilted(tmp_path / "tilt")
    write_variable(tmp_path / "variable")
    tilted = load_volume(scan_tree(tmp_path / "tilt", regrid_irregular=True).series[0])
    ours = canonical(tilted.array, tilted.geometry)
    (their_tilt,) = [
        nib.as_closest_canonical(i) for i in run_dcm2niix(tmp_path / "tilt", tmp_path / "o1") if i.shape[1] == 31
    ]
    assert their_tilt.shape == ours.shape
    np.testing.assert_allclose(their_tilt.affine[:3, :3], ours.affine[:3, :3], atol=1e-3)
    interior = (slice(None), slice(8, 23), slice(None))  # rows that every slice covers
    assert np.abs(their_tilt.get_fdata()[interior] - ours.get_fdata()[interior]).max() <= 1.0  # they round to integers
    equalised = [nib.as_closest_canonical(i) for i in run_dcm2niix(tmp_path / "variable", tmp_path / "o2")]
    (their_eq,) = [i for i in equalised if i.shape[2] != len(GE_STEPS) + 1]
    variable = load_volume(scan_tree(tmp_path / "variable", regrid_irregular=True).series[0])
    mine = canonical(variable.array, variable.geometry)
    np.testing.assert_allclose(their_eq.affine[:3, :2], mine.affine[:3, :2], atol=1e-3)  # same in-plane grid
    np.testing.assert_allclose(their_eq.affine[:3, 3], mine.affine[:3, 3], atol=1e-3)  # both start at slice 1
    z = np.arange(their_eq.shape[2])
    points = np.stack(np.meshgrid(np.arange(20), np.arange(24), z, indexing="ij"), -1) @ their_eq.affine[:3, :3].T
    points = points + their_eq.affine[:3, 3]
    lps = points * np.array([-1.0, -1.0, 1.0])
    assert np.abs(their_eq.get_fdata() - phantom(lps)).max() <= 1.0  # dcm2niix: the same phantom, rounded


@pytest.mark.parametrize("descending", [False, True])
def test_a_slice_missing_from_a_variable_spacing_stack_is_refused_even_when_resampling(
    tmp_path: Path, descending: bool
) -> None:
    """Uneven steps cannot show a missing slice: with --regrid-irregular, the gap it leaves was filled in by the
    resampling and the series was ok. Its InstanceNumbers show it."""
    offsets = np.concatenate([[0.0], np.cumsum(GE_STEPS)])
    positions = [(-50.0, -60.0, 20.0 + float(d)) for d in offsets]
    voxels = sampled((len(positions), 24, 20), positions, (1, 0, 0), (0, 1, 0), (0.8, 0.7))
    written = write_series(
        tmp_path, voxels=voxels, positions=positions, rescale_intercept=0.0, instance_numbers_descending=descending
    )
    assert kinds(scan_tree(tmp_path, regrid_irregular=True).series[0]) == {"variable_spacing": False}
    written.paths[4].unlink()  # between the two 7 mm steps: one 14 mm step, still no multiple of any base step
    series = scan_tree(tmp_path, regrid_irregular=True).series[0]
    assert kinds(series) == {"variable_spacing": False, "missing_slices": True}
    gap = next(p.message for p in series.problems if p.kind == "missing_slices")
    assert ("from 5 to 3" if descending else "from 4 to 6") in gap and "between slices 4 and 5" in gap
    with pytest.raises(SeriesError, match="missing_slices"):
        load_volume(series)
    assert kinds(scan_tree(tmp_path).series[0]) == {"variable_spacing": True}  # refused as before without the flag


@pytest.mark.parametrize(
    ("numbers", "held", "gap"),
    [
        ([1, 2, 3, 4], (), None),
        ([2, 4, 6, 8], (), None),  # every other number: another echo's
        ([2, 4, 8, 10], (), "from 4 to 8"),
        ([2, 4, 8, 10], (6,), None),  # the series holds 6 (another stack, another grid)
        ([1, 2, 4, 5, 7], (3,), "from 5 to 7"),  # 3 is held, 6 is not
        ([9, 7, 3, 1], (), "from 7 to 3"),
        ([1, 3, 2, 5], (), None),  # numbered in another order than the slices: says nothing
        ([1, None, 4, 5], (), None),
        ([1, 1, 3, 4], (), None),
    ],
)
def test_numbering_gaps(numbers: list[int | None], held: tuple[int, ...], gap: str | None) -> None:
    found = numbering_gaps(numbers, frozenset(held))
    assert [p.kind for p in found] == ([] if gap is None else ["missing_slices"])
    if gap is not None:
        assert gap in found[0].message and found[0].fatal


def test_a_number_another_stack_of_the_series_holds_is_no_gap(tmp_path: Path) -> None:
    """A reviewer's case: a complete variable-spacing axial stack numbered 1-4 and 6-9, number 5 being a coronal
    image of the same series, was refused as missing a slice."""
    offsets = np.concatenate([[0.0], np.cumsum(GE_STEPS)])
    positions = [(-50.0, -60.0, 20.0 + float(d)) for d in offsets]
    numbers = [1, 2, 3, 4, 6, 7, 8, 9]

    def renumber(k: int, ds: object) -> None:
        ds.InstanceNumber = numbers[k]  # type: ignore[attr-defined]

    axial = write_series(tmp_path, shape=(len(positions), 16, 16), positions=positions, edit=renumber)
    common = {"shape": (1, 16, 16), "series_instance_uid": axial.series_instance_uid, "name_prefix": "COR"}
    coronal = dict(row_direction=(1, 0, 0), column_direction=(0, 0, -1), first_instance=5)
    write_series(
        tmp_path,
        **common,  # type: ignore[arg-type]
        **coronal,  # type: ignore[arg-type]
        study_instance_uid=axial.study_instance_uid,
        frame_of_reference_uid=axial.frame_of_reference_uid,
    )
    stacks = {len(s.slices): kinds(s) for s in scan_tree(tmp_path, regrid_irregular=True).series}
    assert stacks == {8: {"variable_spacing": False}, 1: {}}
    (tmp_path / "COR0000.dcm").unlink()  # now no image holds number 5
    colour = pydicom.dcmread(axial.paths[0])  # a colour image (left out of the series) holds it: no gap either
    colour.SamplesPerPixel, colour.PhotometricInterpretation, colour.PlanarConfiguration = 3, "RGB", 0
    colour.BitsAllocated, colour.BitsStored, colour.HighBit, colour.PixelRepresentation = 8, 8, 7, 0
    colour.PixelData = np.zeros((colour.Rows, colour.Columns, 3), np.uint8).tobytes()
    colour.SOPInstanceUID, colour.InstanceNumber = pydicom.uid.generate_uid(), 5
    colour.save_as(tmp_path / "SUMMARY.dcm")
    with_colour = scan_tree(tmp_path, regrid_irregular=True).series[0]
    assert kinds(with_colour) == {"variable_spacing": False, "unsupported_images": False}
    (tmp_path / "SUMMARY.dcm").unlink()
    assert kinds(scan_tree(tmp_path, regrid_irregular=True).series[0]) == {
        "variable_spacing": False,
        "missing_slices": True,
    }
