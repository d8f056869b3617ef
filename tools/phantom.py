"""Synthetic abdominal CT phantoms (HU voxels + ground-truth labels) for the sample model and its tests.

Orientation: the (z, y, x) grid is axial in LPS with an identity direction, so x runs towards the patient's
left, y towards the back (posterior) and z towards the head. The patient's right side is therefore on the
image's left (small x), as radiologists view it: the liver and ``kidney_right`` sit at small x,
``kidney_left`` at large x, the spine at the centre and at the back (large y), the liver high (large z) and
the kidneys lower. Every structure differs from soft tissue in intensity (contrast-enhanced, portal-venous
phase) and all of them are told apart by position as well, so a small U-Net learns them quickly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRUCTURE_NAMES: tuple[str, ...] = ("liver", "kidney_left", "kidney_right", "spine")
"""Foreground structures; label i + 1 in ``Phantom.labels`` is ``STRUCTURE_NAMES[i]``."""

STRUCTURE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (170, 85, 40),  # liver: brown
    (230, 200, 40),  # kidney_left: yellow
    (60, 180, 75),  # kidney_right: green
    (240, 240, 240),  # spine: bone white
)

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
LIVER_HU = 110.0
KIDNEY_HU = 190.0
SPINE_HU = 550.0
NOISE_HU = 12.0

DEFAULT_SHAPE = (40, 96, 96)
DEFAULT_SPACING = (3.0, 2.0, 2.0)


@dataclass(frozen=True)
class Phantom:
    """One synthetic CT: voxels in HU and labels (0 background, i + 1 = ``structure_names[i]``), both (z, y, x)."""

    ct_hu: np.ndarray
    labels: np.ndarray
    structure_names: tuple[str, ...]
    spacing: tuple[float, float, float]
    """Voxel size (z, y, x) in mm."""


def _canonical_coordinates(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel centres in the phantom's own frame (mm, x left, y posterior, z superior), randomly posed.

    The pose is a rotation about the body axis (and a slight tilt), a shift and a uniform scale; we apply its
    inverse to the grid so the anatomy below can be described once in fixed coordinates.
    """
    z, y, x = ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True))
    gz, gy, gx = np.meshgrid(z, y, x, indexing="ij")
    points = np.stack([gx.ravel(), gy.ravel(), gz.ravel()])
    shift = rng.uniform(-6.0, 6.0, size=3) * np.array([1.0, 1.0, 1.5])
    yaw = np.deg2rad(rng.uniform(-10.0, 10.0))
    tilt = np.deg2rad(rng.uniform(-4.0, 4.0))
    scale = rng.uniform(0.93, 1.05)
    cz, sz = np.cos(yaw), np.sin(yaw)
    ct, st = np.cos(tilt), np.sin(tilt)
    rotate_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rotate_x = np.array([[1, 0, 0], [0, ct, -st], [0, st, ct]])
    rotation = rotate_z @ rotate_x
    canonical = rotation.T @ (points - shift[:, None]) / scale
    cx, cy, czz = (c.reshape(shape).astype(np.float32) for c in canonical)
    return cx, cy, czz


def _ellipsoid(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
    yaw_degrees: float = 0.0,
) -> np.ndarray:
    """Mask of an ellipsoid (centre and radii in x, y, z mm), turned by ``yaw_degrees`` in the axial plane."""
    t = np.deg2rad(yaw_degrees)
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    u = np.cos(t) * dx + np.sin(t) * dy
    v = -np.sin(t) * dx + np.cos(t) * dy
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (dz / radii[2]) ** 2 <= 1.0


def _smooth(image: np.ndarray, sigma_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    """A little Gaussian blur, like a scanner's point spread, so edges are not perfect steps."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image, sigma=[sigma_mm / s for s in spacing], mode="nearest")


def make_phantom(
    seed: int,
    *,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> Phantom:
    """A reproducible abdominal phantom: the same ``seed``, shape and spacing always give the same voxels."""
    rng = np.random.default_rng(seed)
    x, y, z = _canonical_coordinates(shape, spacing, rng)

    def jitter(scale: float) -> float:
        """A random factor in [1 - scale, 1 + scale]: a little anatomical variation."""
        return float(rng.uniform(1.0 - scale, 1.0 + scale))

    # Body outline: an ellipse, slightly wider at the bottom; 8 mm of subcutaneous fat inside the skin.
    body_a, body_b = 78.0 * jitter(0.05), 58.0 * jitter(0.05)
    taper = 1.0 - 0.0015 * z
    body_r = (x / (body_a * taper)) ** 2 + (y / (body_b * taper)) ** 2
    body = body_r <= 1.0
    inner = (x / (body_a * taper - 8.0)) ** 2 + (y / (body_b * taper - 8.0)) ** 2 <= 1.0

    # Liver: a large ellipsoid on the patient's right, high, cut flat towards the midline.
    liver = _ellipsoid(
        x, y, z, (-30.0 + rng.uniform(-3, 3), -8.0, 36.0), (44.0 * jitter(0.08), 38.0 * jitter(0.08), 36.0), 15.0
    )
    liver &= x < 18.0 + rng.uniform(-3, 3)

    # Kidneys: beans either side of the spine, low and posterior; a hilum notch on the medial side.
    kidneys = []
    for side in (1.0, -1.0):  # left (large x) first, then right
        centre = (side * 46.0 + rng.uniform(-3, 3), 24.0 + rng.uniform(-3, 3), -22.0 + rng.uniform(-4, 4))
        radii = (17.0 * jitter(0.08), 24.0 * jitter(0.08), 28.0 * jitter(0.08))
        kidney = _ellipsoid(x, y, z, centre, radii, yaw_degrees=-side * 25.0)
        hilum = _ellipsoid(x, y, z, (centre[0] - side * 17.0, centre[1] - 4.0, centre[2]), (9.0, 9.0, 12.0))
        kidneys.append(kidney & ~hilum)

    # Spine: a vertebral-body cylinder at the back of the midline, all along the body axis.
    spine = (x / (14.0 * jitter(0.06))) ** 2 + ((y - 34.0) / (13.0 * jitter(0.06))) ** 2 <= 1.0

    labels = np.zeros(shape, dtype=np.uint8)
    labels[liver & inner] = 1
    labels[kidneys[0] & inner] = 2
    labels[kidneys[1] & inner] = 3
    labels[spine & inner] = 4

    ct = np.full(shape, AIR_HU, dtype=np.float32)
    ct[body] = FAT_HU
    ct[inner] = SOFT_TISSUE_HU
    for label, hu in ((1, LIVER_HU), (2, KIDNEY_HU), (3, KIDNEY_HU), (4, SPINE_HU)):
        ct[labels == label] = hu + rng.uniform(-10.0, 10.0)
    ct = _smooth(ct, 1.0, spacing)
    ct += rng.normal(0.0, NOISE_HU, size=shape).astype(np.float32)
    return Phantom(
        ct_hu=np.round(ct).astype(np.float32),
        labels=labels,
        structure_names=STRUCTURE_NAMES,
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
    )
