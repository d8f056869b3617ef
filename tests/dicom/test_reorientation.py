"""``Geometry.reorientation``: a grid's axes swapped and reversed to a wanted orientation, every voxel kept where
it is in the patient (checked against SimpleITK, which resamples the turned image back onto the source grid)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from innereye_batch.dicom.geometry import Geometry

WANTED = ("LPS", "RPI", "RAS", "PIR", "SLA", "IRP")


def _grids() -> list[Geometry]:
    """Every way of laying index axes along the patient's (6 orders x 8 signs), tilted 10 degrees, on a grid of
    three different sizes and spacings."""
    tilt = np.deg2rad(10.0)
    rotation = np.array([[np.cos(tilt), -np.sin(tilt), 0], [np.sin(tilt), np.cos(tilt), 0], [0, 0, 1]])
    grids = []
    for order in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((3, 3))
            for column, (row, sign) in enumerate(zip(order, signs, strict=True)):
                matrix[row, column] = sign
            direction = tuple(float(v) for v in (rotation @ matrix).ravel())
            grids.append(Geometry((5, 6, 7), (2.5, 0.7, 0.9), (10.0, -20.0, 30.0), direction))
    return grids


@pytest.mark.parametrize("wanted", WANTED)
def test_a_turned_grid_holds_every_voxel_where_it_was_in_the_patient(wanted: str) -> None:
    rng = np.random.default_rng(0)
    for source in _grids():
        array = rng.integers(0, 1000, size=(2, *source.shape)).astype(np.float32)
        turn = source.reorientation(wanted)
        turned_geometry = turn.geometry(source)
        turned = turn.turn(torch.from_numpy(array)).numpy()
        assert turned_geometry.axis_codes() == wanted
        assert turned.shape == (2, *turned_geometry.shape)
        assert sorted(turned_geometry.spacing) == sorted(source.spacing)
        assert turn.is_identity == (source.axis_codes() == wanted)
        # SimpleITK, nearest neighbour, brings the turned image back onto the source grid: the same voxels
        back = sitk.Resample(
            turned_geometry.to_sitk(np.ascontiguousarray(turned[1])),
            source.to_sitk(np.zeros(source.shape, np.float32)),
            sitk.Transform(),
            sitk.sitkNearestNeighbor,
            -1.0,
        )
        assert np.array_equal(sitk.GetArrayFromImage(back), array[1]), (source.axis_codes(), wanted)
        labels = turned[0].astype(np.uint8)
        restored = turn.turn_back(labels)
        assert restored.flags.c_contiguous and np.array_equal(restored, array[0].astype(np.uint8))


def test_a_grid_already_in_the_wanted_orientation_is_left_as_it_is() -> None:
    source = Geometry((3, 4, 5), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    turn = source.reorientation("LPS")
    image = torch.arange(60, dtype=torch.float32).reshape(1, 3, 4, 5)
    assert turn.is_identity and turn.turn(image) is image and turn.geometry(source) == source
