"""A secondary channel must cover the primary channel's grid: the share of the primary's voxel centres outside
the secondary's voxels, checked against counting them one by one."""

from __future__ import annotations

import numpy as np
import pytest

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.tasks.segmentation import uncovered_share

PRIMARY = Geometry(
    shape=(10, 20, 30), spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel())
)


def _counted(secondary: Geometry, primary: Geometry) -> float:
    """The oracle: every primary voxel centre mapped into the secondary's index space, one by one."""
    inverse = np.linalg.inv(secondary.lps_affine())
    outside = 0
    for z in range(primary.shape[0]):
        for y in range(primary.shape[1]):
            for x in range(primary.shape[2]):
                index = (inverse @ np.append(primary.index_to_lps((z, y, x)), 1.0))[:3]
                limit = np.array(secondary.shape[::-1]) - 0.5
                outside += not (np.all(index >= -0.5 - 1e-6) and np.all(index <= limit + 1e-6))
    return outside / np.prod(primary.shape)


@pytest.mark.parametrize(
    "secondary",
    [
        PRIMARY.with_grid((5, 10, 15), (4.0, 2.0, 2.0)),  # coarser, same extent: covered
        Geometry((6, 20, 30), (2.0, 1.0, 1.0), (0.0, 0.0, 8.0), PRIMARY.direction),  # the last 6 of 10 slices
        Geometry((10, 20, 30), (2.0, 1.0, 1.0), (10.0, -5.0, 0.0), PRIMARY.direction),  # shifted in plane
        Geometry(  # turned 90 degrees about z (rows along -x, columns along y): the same region
            (10, 30, 20), (2.0, 1.0, 1.0), (29.0, 0.0, 0.0), (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
        ),
        Geometry(  # turned so, and 5 mm on along y: a quarter of it
            (10, 30, 20), (2.0, 1.0, 1.0), (29.0, 5.0, 0.0), (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
        ),
    ],
)
def test_uncovered_share_counts_the_primary_voxels_outside(secondary: Geometry) -> None:
    assert uncovered_share(secondary, PRIMARY) == pytest.approx(_counted(secondary, PRIMARY))


def test_a_grid_that_ends_half_a_voxel_beyond_the_centres_covers_them() -> None:
    secondary = Geometry((10, 20, 30), (2.0, 1.0, 1.0), (0.0, 0.0, 0.999), PRIMARY.direction)  # 0.999 of 1 mm
    assert uncovered_share(secondary, PRIMARY) == 0.0
    beyond = Geometry((10, 20, 30), (2.0, 1.0, 1.0), (0.0, 0.0, 1.2), PRIMARY.direction)  # the first slice out
    assert uncovered_share(beyond, PRIMARY) == pytest.approx(0.1)
