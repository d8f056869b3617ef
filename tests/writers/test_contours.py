"""Planar contours: closed, at least 3 points, holes as separate contours, and the even-odd fill gives the mask back."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from innereye_batch.writers.contours import fill_holes_2d, mask_contours, rasterise_contours


def even_odd_fill(contours: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Independent oracle: pixel centres inside an odd number of polygons, by ray casting (no scikit-image)."""
    rows, columns = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    inside = np.zeros(shape, dtype=bool)
    for contour in contours:
        r0, c0 = contour[:, 0], contour[:, 1]
        r1, c1 = np.roll(r0, -1), np.roll(c0, -1)
        crossings = np.zeros(shape, dtype=bool)
        for a_r, a_c, b_r, b_c in zip(r0, c0, r1, c1, strict=True):
            straddles = (a_r > rows) != (b_r > rows)
            with np.errstate(divide="ignore", invalid="ignore"):
                at = a_c + (rows - a_r) * (b_c - a_c) / (b_r - a_r)
            crossings ^= straddles & (columns < at)
        inside ^= crossings
    return inside


def ring(shape: tuple[int, int], centre: tuple[float, float], outer: float, inner: float) -> np.ndarray:
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    distance = np.hypot(rows - centre[0], columns - centre[1])
    return (distance <= outer) & (distance > inner)


def test_ring_gives_an_outer_and_an_inner_contour_and_fills_back() -> None:
    mask = ring((40, 40), (20, 20), 12, 5)
    contours = mask_contours(mask)
    assert len(contours) == 2  # the boundary of the island and that of its hole, no keyhole
    assert all(len(c) >= 3 for c in contours)
    np.testing.assert_array_equal(rasterise_contours(contours, mask.shape), mask)
    np.testing.assert_array_equal(even_odd_fill(contours, mask.shape), mask)


def test_islands_nested_in_holes_and_edges_of_the_image() -> None:
    mask = ring((50, 60), (25, 30), 20, 12)
    mask |= ring((50, 60), (25, 30), 6, -1)  # an island inside the hole
    mask[0:5, 0:8] = True  # touches two image edges
    mask[45:50, 50:60] = True  # touches the opposite corner
    mask[30, 55] = True  # a single pixel
    contours = mask_contours(mask)
    assert len(contours) == 6
    np.testing.assert_array_equal(even_odd_fill(contours, mask.shape), mask)
    np.testing.assert_array_equal(rasterise_contours(contours, mask.shape), mask)


@pytest.mark.parametrize("seed", range(12))
def test_random_masks_round_trip_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    noise = rng.random((30, 36))
    mask = ndimage.binary_opening(noise < 0.55) if seed % 2 else noise < 0.3  # blobs, or salt with diagonals
    contours = mask_contours(mask)
    for contour in contours:
        assert contour.shape[1] == 2 and len(contour) >= 3
        assert not np.allclose(contour[0], contour[-1])  # closed implicitly: the first point is not repeated
        # every vertex lies half-way between pixel centres, so no pixel centre is on the polygon
        assert np.all(np.isclose(np.abs(contour - np.round(contour)).max(axis=1), 0.5))
    np.testing.assert_array_equal(even_odd_fill(contours, mask.shape), mask)
    np.testing.assert_array_equal(rasterise_contours(contours, mask.shape), mask)


def test_straight_edges_keep_only_their_corners() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[4:15, 6:25] = True
    (contour,) = mask_contours(mask)
    assert len(contour) == 8  # four sides, each corner cut by marching squares


def test_empty_mask_has_no_contours_and_3d_is_refused() -> None:
    assert mask_contours(np.zeros((5, 5), dtype=bool)) == []
    with pytest.raises(ValueError, match="2-D"):
        mask_contours(np.zeros((2, 5, 5), dtype=bool))


def test_fill_holes_2d_fills_enclosed_background_only() -> None:
    mask = ring((30, 30), (15, 15), 10, 4)
    mask[0:3, 0:3] = True
    filled = fill_holes_2d(mask)
    assert filled[15, 15] and filled[0, 0] and not filled[29, 29]
    assert len(mask_contours(filled)) == 2  # the hole is gone; two islands remain


def test_rasterise_fills_only_where_the_contours_cross_yet_equals_the_full_width_fill() -> None:
    """Random polygons (self-crossing, partly off the grid, several per slice, nested): the boxed scanline fill
    equals the whole-grid even-odd fill of the oracle pixel for pixel."""
    rng = np.random.default_rng(11)
    shape = (40, 37)
    for _ in range(60):
        contours = [rng.uniform(-6, 45, size=(int(rng.integers(3, 9)), 2)) for _ in range(int(rng.integers(1, 4)))]
        np.testing.assert_array_equal(rasterise_contours(contours, shape), even_odd_fill(contours, shape))
    assert not rasterise_contours([np.array([[50.0, 1.0], [60.0, 5.0], [55.0, 9.0]])], shape).any()  # off the grid
