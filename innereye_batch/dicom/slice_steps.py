"""Steps between the sorted slices of a stack: duplicates, missing slices, variable or uneven spacing, gantry tilt.

Missing slices and variable spacing are told apart by the steps' ratio to the base step (the median step, else the
smallest where the median explains fewer steps): a gap is (close to) a whole multiple of it (two, three... steps:
slices are missing), variable spacing is not (GE's 1.08 to 7.0 mm steps by design). Steps within 10 % of the base
are accepted with a warning and steps within 1 % are regular, while the regular grid from the first slice to the
last (the mean step) holds every slice within half a step: else they are variable spacing too (two hundred steps
1 % longer than two hundred others put the middle slice a whole step off that grid).
"""

from __future__ import annotations

import numpy as np

from innereye_batch.dicom.problems import (
    DUPLICATE_POSITIONS,
    GANTRY_TILT,
    MISSING_SLICES,
    NON_UNIFORM_SPACING,
    VARIABLE_SPACING,
)
from innereye_batch.dicom.series import Problem

DUPLICATE_TOLERANCE_MM = 1e-3
REGULAR_TOLERANCE = 0.01
"""Steps within this fraction of the base step (or 1 micrometre) are regular."""
UNEVEN_TOLERANCE = 0.10
"""Steps within this fraction of the base step are uneven (a warning); further off, they are irregular."""
DRIFT_TOLERANCE = 0.5
"""Steps whose errors put some slice more than this many steps off the grid of the mean step are variable spacing."""
MULTIPLE_TOLERANCE = 0.10
"""A step within this many base steps of a whole multiple k >= 2 of the base step is a gap of k - 1 slices."""


def spacing_problems(steps: np.ndarray, *, regrid_irregular: bool = False) -> tuple[float, list[Problem], bool]:
    """The z spacing to use (the mean step, first slice to last; the median where slices are missing or doubled),
    the problems of the steps, and whether the spacing is variable."""
    problems = []
    duplicates = steps <= DUPLICATE_TOLERANCE_MM
    if duplicates.any():
        problems.append(
            Problem(DUPLICATE_POSITIONS, f"{int(duplicates.sum())} slice(s) share a position with another", True)
        )
    distinct = steps[~duplicates]
    if distinct.size == 0:
        return 1.0, problems, False
    median = float(np.median(distinct))
    base = next((b for b in (median, float(distinct.min())) if _multiples_of(distinct, b).all()), None)
    if base is None:
        variable = int((~_multiples_of(distinct, median)).sum())
        message = (
            f"steps between slices range {float(distinct.min()):.4g}-{float(distinct.max()):.4g} mm and "
            f"{variable} of {distinct.size} are not multiples of the median step {median:.4g} mm: "
            "a regular grid would misplace slices"
        )
        if regrid_irregular:
            message += f"; will be resampled onto a regular grid of {float(distinct.min()):.4g} mm steps"
        problems.append(Problem(VARIABLE_SPACING, message, not regrid_irregular))
        return median, problems, True
    multiple = np.round(distinct / base)
    median = float(np.median(distinct[multiple == 1])) if (multiple == 1).any() else base
    gaps = multiple >= 2
    if gaps.any():
        missing = int(sum(multiple[gaps] - 1))
        problems.append(
            Problem(
                MISSING_SLICES,
                f"{int(gaps.sum())} gap(s) up to {float(distinct[gaps].max()):.3g} mm for a median step of "
                f"{median:.3g} mm: about {missing} slice(s) missing",
                True,
            )
        )
    regular = ~gaps
    uneven = np.abs(distinct[regular] - median) > max(DUPLICATE_TOLERANCE_MM, REGULAR_TOLERANCE * median)
    if gaps.any() or duplicates.any():
        return median, problems, False
    # The regular grid runs from the first slice to the last in equal steps (the mean step: positions rounded to a
    # few decimals, 1.37 and 1.38 mm for 1.375, put every slice on it). Each step within 10 % (or within 1 %:
    # regular), their errors can still add up along the stack when they lean one way: the grid must hold every
    # slice within half a step, as the in-plane drift must stay within half a pixel.
    step = float(steps.sum()) / steps.size
    drift = np.cumsum(steps) - step * np.arange(1, steps.size + 1)
    worst = int(np.argmax(np.abs(drift)))
    if abs(float(drift[worst])) > DRIFT_TOLERANCE * step:
        message = (
            f"steps between slices range {float(distinct.min()):.4g}-{float(distinct.max()):.4g} mm: a regular "
            f"grid from the first slice to the last ({step:.4g} mm steps) would misplace slice {worst + 2} of "
            f"{steps.size + 1} by {abs(float(drift[worst])):.3g} mm (over half a step)"
        )
        if regrid_irregular:
            message += f"; will be resampled onto a regular grid of {float(distinct.min()):.4g} mm steps"
        problems.append(Problem(VARIABLE_SPACING, message, not regrid_irregular))
        return step, problems, True
    if uneven.any():
        problems.append(
            Problem(
                NON_UNIFORM_SPACING,
                f"steps between slices range {float(distinct[regular].min()):.4g}-"
                f"{float(distinct[regular].max()):.4g} mm (their mean {step:.4g} mm used: every slice within "
                f"{abs(float(drift[worst])):.3g} mm of its grid position)",
            )
        )
    return step, problems, False


def numbering_gaps(numbers: list[int | None], held: frozenset[int] = frozenset()) -> list[Problem]:
    """A fatal ``missing_slices`` problem when the InstanceNumbers of a variable-spacing stack to be resampled
    (``numbers``, in slice order, one per file) skip where their stride says a slice should be, and no image of
    the series (``held``: the numbers of all its images, other stacks and echoes included) holds the skipped
    number: uneven steps cannot show a missing slice, and resampling would fill it in silently. Nothing where a
    number is absent or repeated, or the numbers do not run with the slices (they then say nothing of gaps)."""
    if len(numbers) < 3 or any(n is None for n in numbers) or len(set(numbers)) != len(numbers):
        return []
    known = [int(n) for n in numbers if n is not None]
    steps = np.diff(np.asarray(known, dtype=np.int64))
    if not ((steps > 0).all() or (steps < 0).all()):
        return []
    stride = int(np.abs(steps).min())  # 1; 2 where another echo or phase holds every other number
    gaps = []
    for k, step in enumerate(steps.tolist()):
        direction = stride if step > 0 else -stride
        skipped = [n for n in range(known[k] + direction, known[k + 1], direction) if n not in held]
        if skipped:
            gaps.append((k, skipped))
    if not gaps:
        return []
    first = gaps[0][0]
    missing = sum(len(numbers_skipped) for _, numbers_skipped in gaps)
    message = (
        f"InstanceNumbers skip from {known[first]} to {known[first + 1]} between slices {first + 1} and "
        f"{first + 2} (about {missing} number(s) missing in all, held by no image of the series): a slice may be "
        "missing, which variable spacing cannot show; not resampled"
    )
    return [Problem(MISSING_SLICES, message, True)]


def _multiples_of(steps: np.ndarray, base: float) -> np.ndarray:
    """Which steps are (close to) a whole multiple k >= 1 of ``base``."""
    ratio = steps / base
    multiple = np.round(ratio)
    return (np.abs(ratio - multiple) <= MULTIPLE_TOLERANCE) & (multiple >= 1)


def tilt_problems(
    positions: np.ndarray, normal: np.ndarray, pixel_mm: float, *, regrid_irregular: bool = False
) -> tuple[list[Problem], bool]:
    """Slices whose positions drift within the image plane (gantry tilt, a sheared stack); whether to regrid."""
    offsets = positions - positions[0]
    lateral = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.linalg.norm(lateral, axis=1).max())
    if drift <= 0.01 * pixel_mm:
        return [], False
    span = float(abs((positions[-1] - positions[0]) @ normal)) or 1.0
    angle = float(np.degrees(np.arctan2(float(np.linalg.norm(lateral[-1])), span)))
    message = f"slices drift {drift:.3g} mm within the image plane (tilt about {angle:.2f} degrees)"
    if drift <= 0.5 * pixel_mm:
        return [Problem(GANTRY_TILT, message + "; under half a pixel, ignored")], False
    if regrid_irregular:
        return [Problem(GANTRY_TILT, message + "; will be resampled onto an orthogonal grid")], True
    return [Problem(GANTRY_TILT, message, True)], True
