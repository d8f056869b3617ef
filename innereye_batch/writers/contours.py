"""Planar contours of a 2-D mask (scikit-image marching squares) and their rasterisation back onto the pixel grid.

Why scikit-image's ``measure.find_contours`` rather than OpenCV's ``findContours``: marching squares at the 0.5
level of a binary mask puts every vertex half-way between a foreground and a background pixel centre, so each
contour passes at least 0.35 pixel (half a diagonal step) from every pixel centre. Filling the contours by the
even-odd rule and keeping the pixels whose centres fall inside therefore gives back the mask exactly, and a
planning system that rasterises the same way (pixel centres, even-odd) gets the voxels we computed. OpenCV's
contours run through the centres of the boundary pixels, which sit exactly on the polygon's edges, so what a
reader gets back depends on its tie-breaking rule; OpenCV is also a much larger dependency.

Conventions: coordinates are (row, column) in pixel units, pixel centres at integer positions. Every contour is
closed (the mask is padded with background first, so structures touching the image edge close too), listed
without repeating its first point, and has at least 3 points; collinear points are dropped (a straight edge
keeps its two ends), which leaves the polygon unchanged. Holes are separate contours: a slice's contours are
the outer boundaries of every island and the boundaries of every hole, and the even-odd rule (a pixel is inside
when it lies inside an odd number of contours) turns them back into the mask, with no "keyhole" cuts.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

_COLLINEAR_TOLERANCE = 1e-6
"""Douglas-Peucker tolerance (pixels): only points on a straight line between their neighbours go."""


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2-D boolean mask, each an (n, 2) float array of (row, column), n >= 3."""
    from skimage import measure

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask_contours needs a 2-D mask, got shape {mask.shape}")
    if not mask.any():
        return []
    padded = np.pad(mask, 1).astype(np.float32)
    contours = []
    for contour in measure.find_contours(padded, 0.5):
        polygon = measure.approximate_polygon(contour - 1.0, tolerance=_COLLINEAR_TOLERANCE)
        if len(polygon) > 1 and np.allclose(polygon[0], polygon[-1]):
            polygon = polygon[:-1]
        if len(polygon) >= 3:
            contours.append(polygon)
    return contours


def rasterise_contours(contours: Iterable[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The pixels of a ``shape`` grid whose centres lie inside an odd number of the closed ``contours``."""
    from skimage import draw

    mask = np.zeros(shape, dtype=bool)
    for contour in contours:
        mask ^= draw.polygon2mask(shape, np.asarray(contour, dtype=np.float64))
    return mask


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """``mask`` (a 2-D slice) with every enclosed background region filled."""
    from scipy.ndimage import binary_fill_holes

    return np.asarray(binary_fill_holes(mask), dtype=bool)
