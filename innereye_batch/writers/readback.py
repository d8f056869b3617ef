"""Read a written DICOM output back and check it against the label map: a flipped or shifted file fails its series.

Per structure, the voxel count and the centroid in patient coordinates (LPS, mm) of what the file says are
compared with the label map's. The file is read with pydicom alone and placed with its own geometry (each
frame's ImagePositionPatient, ImageOrientationPatient and PixelSpacing for a SEG; the contours' patient
coordinates for an RT Structure Set), not with the writer's library, so the check is independent of the code
that wrote it.

- DICOM-SEG (BINARY or LABELMAP): lossless, so counts must be equal.
- RT Structure Set: each contour is checked to lie on a slice plane of the source grid and to reference the
  source image at that plane; the contours are rasterised back onto the source grid (pixel centres, even-odd
  rule; see ``contours``). Marching-squares contours never pass within 0.35 pixel of a pixel centre, so the
  round trip is exact in exact arithmetic; the count tolerance (0.1 % of the structure, at least one voxel)
  only absorbs a pixel centre that rounding of the coordinates to DICOM decimal strings could move across an
  edge, and is far below what a lost island, a dropped slice or a wrong structure would change.
- Centroids must agree within half the smallest voxel spacing: any shift by a whole voxel, or a flip of an
  off-centre structure, is caught, while the rounding of positions (about 1e-4 mm) is not mistaken for one.

Label maps given here lie on the source slices (what DICOM outputs reference), and every slice is placed by its
own ImagePositionPatient (``SlicePlanes``), so stacks whose slices are not on a regular grid (gantry tilt,
variable spacing) are placed where the scanner put them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.errors import InnerEyeBatchError
from innereye_batch.writers.slice_planes import BoxedMask, MaskStats, SlicePlanes, label_masks

if TYPE_CHECKING:
    from pydicom import Dataset

_CONTOUR_DATA = 0x30060050
RTSTRUCT_COUNT_TOLERANCE = 0.001
"""Relative voxel-count tolerance for RT Structure Sets (see the module docstring)."""


class ReadBackError(InnerEyeBatchError):
    """A written output, read back, does not say what the label map says."""


def compare_stats(
    expected: Mapping[str, MaskStats],
    found: Mapping[str, MaskStats],
    spacing: Sequence[float],
    *,
    what: str,
    relative_count_tolerance: float = 0.0,
) -> None:
    """Raise ``ReadBackError`` naming ``what`` (the file) and every structure whose count or centroid differ;
    centroids may differ by half the smallest of ``spacing`` (mm)."""
    centroid_tolerance = 0.5 * min(spacing)
    problems = []
    for name, want in expected.items():
        got = found.get(name)
        if got is None:
            problems.append(f"{name!r}: missing from the file")
            continue
        allowed = 0 if relative_count_tolerance == 0 else max(1, int(relative_count_tolerance * want.voxel_count))
        if abs(got.voxel_count - want.voxel_count) > allowed:
            problems.append(f"{name!r}: {got.voxel_count} voxels, the label map has {want.voxel_count}")
            continue
        if want.centroid is not None and got.centroid is not None:
            distance = float(np.linalg.norm(np.subtract(got.centroid, want.centroid)))
            if distance > centroid_tolerance:
                problems.append(
                    f"{name!r}: centroid {_mm(got.centroid)} is {distance:.2f} mm from the label map's "
                    f"{_mm(want.centroid)} (tolerance {centroid_tolerance:.2f} mm)"
                )
    extra = sorted(set(found) - set(expected))
    if extra:
        problems.append(f"structures not in the model: {extra}")
    if problems:
        raise ReadBackError(f"{what} read back does not match the label map: " + "; ".join(problems))


_FIRST_PIXEL_TOLERANCE = 0.01
"""Pixels between a SEG frame's first pixel and its source slice's: the SEG copies the source's positions."""


def _mm(point: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in point) + ") mm"


def seg_stats(path: Path, what: str = "") -> dict[str, MaskStats]:
    """Per segment label: voxel count and centroid of a DICOM-SEG (BINARY or LABELMAP), placed by its own
    per-frame positions, shared orientation and pixel spacing."""
    import pydicom

    return _seg_stats(pydicom.dcmread(path), what or path.name)


def _seg_stats(seg: Dataset, what: str) -> dict[str, MaskStats]:
    frames = seg.pixel_array.reshape(int(seg.get("NumberOfFrames", 1)), int(seg.Rows), int(seg.Columns))
    # A LABELMAP SEG may describe segment 0 (pixel value 0) as the background: not a structure.
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence if int(s.SegmentNumber) != 0}
    shared = seg.SharedFunctionalGroupsSequence[0]
    labelmap = str(seg.get("SegmentationType", "")) == "LABELMAP"
    counts = dict.fromkeys(labels, 0)
    sums = {number: np.zeros(3) for number in labels}
    for index, frame in enumerate(frames):
        groups = seg.PerFrameFunctionalGroupsSequence[index]
        origin, row_step, column_step = _frame_axes(groups, shared)
        if labelmap:
            present = [(int(v), frame == v) for v in np.unique(frame) if v != 0]
        else:
            number = int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            present = [(number, frame != 0)]
        for number, mask in present:
            if number not in counts:
                raise ReadBackError(f"{what}: frame {index + 1} holds segment {number}, not described")
            # index sums from the frame's projections (no index arrays)
            per_row = np.count_nonzero(mask, axis=1)
            count = int(per_row.sum())
            row_sum = int(per_row @ np.arange(mask.shape[0]))
            column_sum = int(np.count_nonzero(mask, axis=0) @ np.arange(mask.shape[1]))
            counts[number] += count
            sums[number] += count * origin + column_sum * row_step + row_sum * column_step
    return {labels[n]: MaskStats.from_sums(counts[n], sums[n]) for n in labels}


def _frame_axes(groups: Dataset, shared: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame's first-pixel position and the patient-space steps of one column and of one row (mm)."""

    def item(sequence: str) -> Any:
        return groups[sequence][0] if sequence in groups else shared[sequence][0]

    origin = np.asarray(item("PlanePositionSequence").ImagePositionPatient, dtype=np.float64)
    orientation = np.asarray(item("PlaneOrientationSequence").ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in item("PixelMeasuresSequence").PixelSpacing)
    # ImageOrientationPatient: direction along a row (column index grows), then down a column (row index grows).
    return origin, orientation[:3] * column_spacing, orientation[3:] * row_spacing


def rtstruct_stats(path: Path, series: SeriesInfo, what: str = "") -> dict[str, MaskStats]:
    """Per ROI name: voxel count and centroid of its contours rasterised onto ``series``' slices, one slice at a
    time.

    Raises ``ReadBackError`` for a contour that is not closed and planar on a slice of the grid, has fewer than
    3 points, or does not reference the source image at its plane.
    """
    import pydicom

    from innereye_batch.writers.contours import rasterise_contours

    rt = pydicom.dcmread(path)
    what = what or path.name
    planes = SlicePlanes.of(series)
    names = {int(roi.ROINumber): str(roi.ROIName) for roi in rt.StructureSetROISequence}
    sums = {name: (0, np.zeros(3)) for name in names.values()}
    for roi in rt.get("ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        if number not in names:
            raise ReadBackError(f"{what}: contours for ROI {number}, which the structure set does not list")
        name = names[number]
        by_slice: dict[int, list[np.ndarray]] = {}
        for index, contour in enumerate(roi.get("ContourSequence", [])):
            where = f"{what}: ROI {name!r} contour {index + 1}"
            slice_index, points = _contour_on_slice(contour, planes, where)
            _check_contour_reference(contour, series, slice_index, where)
            by_slice.setdefault(slice_index, []).append(points)
        for slice_index, polygons in by_slice.items():
            mask = rasterise_contours(polygons, planes.shape[1:])[None]
            box = (slice(slice_index, slice_index + 1), slice(0, mask.shape[1]), slice(0, mask.shape[2]))
            count, total = planes.sums(BoxedMask(box, mask))
            sums[name] = (sums[name][0] + count, sums[name][1] + total)
    return {name: MaskStats.from_sums(count, total) for name, (count, total) in sums.items()}


def _contour_on_slice(contour: Dataset, planes: SlicePlanes, where: str) -> tuple[int, np.ndarray]:
    """The slice a contour lies on and its points as (row, column) pixel positions."""
    if str(contour.ContourGeometricType) != "CLOSED_PLANAR":
        raise ReadBackError(f"{where}: geometric type {contour.ContourGeometricType}, not CLOSED_PLANAR")
    points = contour_points(contour)
    if len(points) < 3 or int(contour.NumberOfContourPoints) != len(points):
        raise ReadBackError(f"{where}: {len(points)} points (NumberOfContourPoints {contour.NumberOfContourPoints})")
    located = planes.locate(points)
    if located is None:
        raise ReadBackError(f"{where}: points do not lie on one slice plane of the source series")
    slice_index, rows, columns = located
    return slice_index, np.column_stack([rows, columns])


def contour_points(contour: Dataset) -> np.ndarray:
    """A contour's ContourData as (n, 3) float64 (parsed from the text at once when pydicom has not yet)."""
    element = contour.get_item(_CONTOUR_DATA)
    value = element.value if element is not None else None
    if isinstance(value, bytes):
        values = np.array(value.split(b"\\"), dtype=np.float64) if value.strip() else np.zeros(0)
    else:
        values = np.asarray(contour.get("ContourData", []), dtype=np.float64)
    if values.size % 3:
        raise ReadBackError(f"ContourData holds {values.size} numbers, not (x, y, z) triplets")
    return values.reshape(-1, 3)


def _check_contour_reference(contour: Dataset, series: SeriesInfo, slice_index: int, where: str) -> None:
    image = series.slices[slice_index]
    references = contour.get("ContourImageSequence", [])
    uids = [str(r.ReferencedSOPInstanceUID) for r in references]
    if uids != [image.sop_instance_uid]:
        raise ReadBackError(
            f"{where}: references image(s) {uids}, but the source image at its plane is {image.sop_instance_uid}"
        )
    if image.frame is not None and int(references[0].get("ReferencedFrameNumber", 0)) != image.frame + 1:
        raise ReadBackError(f"{where}: does not reference frame {image.frame + 1} of {image.sop_instance_uid}")


def check_seg(path: Path, what: str, labels: np.ndarray, series: SeriesInfo, names: Sequence[str]) -> None:
    """Raise ``ReadBackError`` unless the SEG at ``path`` holds, per structure, the count and centroid of
    ``labels`` (on ``series``' slices; ``what`` names the file in the message)."""
    if series.mosaic_size is not None:
        _check_mosaic_seg(path, what, labels, series, names)
        return
    import pydicom

    seg = pydicom.dcmread(path)
    planes = SlicePlanes.of(series)
    _check_seg_references(seg, series, planes, what)
    masks = label_masks(labels, len(names))
    expected = {
        name: MaskStats(0, None) if mask is None else planes.stats(mask)
        for name, mask in zip(names, masks, strict=True)
    }
    compare_stats(expected, _seg_stats(seg, what), series.geometry.spacing, what=what)


def _check_seg_references(seg: Dataset, series: SeriesInfo, planes: SlicePlanes, what: str) -> None:
    """Every SEG frame lies on a source slice (its first pixel on the slice's) and references that slice's
    image, and only it (with its frame number for a multi-frame source)."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    for index, groups in enumerate(seg.PerFrameFunctionalGroupsSequence):
        origin = _frame_axes(groups, shared)[0]
        located = planes.locate(origin[None])
        if located is None or max(abs(float(located[1][0])), abs(float(located[2][0]))) > _FIRST_PIXEL_TOLERANCE:
            raise ReadBackError(
                f"{what}: frame {index + 1} at {_mm(origin.tolist())} is not on a slice of the source series"
            )
        image = series.slices[located[0]]
        expected = [(image.sop_instance_uid, [image.frame + 1] if image.frame is not None else [])]
        found = [
            (str(reference.ReferencedSOPInstanceUID), _frame_numbers(reference))
            for derivation in groups.get("DerivationImageSequence", [])
            for reference in derivation.get("SourceImageSequence", [])
        ]
        if found != expected:
            source = image.sop_instance_uid + (f" frame {image.frame + 1}" if image.frame is not None else "")
            raise ReadBackError(
                f"{what}: frame {index + 1} references {found or 'no image'}, but the source image at its plane is "
                f"{source}"
            )


def _frame_numbers(reference: Dataset) -> list[int]:
    numbers = reference.get("ReferencedFrameNumber")
    if numbers is None:
        return []
    return [int(numbers)] if isinstance(numbers, int | str) else [int(n) for n in numbers]


def _check_mosaic_seg(path: Path, what: str, labels: np.ndarray, series: SeriesInfo, names: Sequence[str]) -> None:
    """A mosaic's SEG is one frame laid out as the source mosaic (each slice in its tile): its segments must equal
    the label map re-tiled, pixel for pixel (a flip or a tile out of place changes pixels)."""
    import pydicom

    from innereye_batch.dicom.mosaic import tiles_to_mosaic

    seg = pydicom.dcmread(path)
    frames = seg.pixel_array.reshape(int(seg.get("NumberOfFrames", 1)), int(seg.Rows), int(seg.Columns))
    expected = tiles_to_mosaic(labels, series)
    numbers = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence if int(s.SegmentNumber) != 0}
    found = np.zeros(expected.shape, dtype=np.int32)
    if str(seg.get("SegmentationType", "")) == "LABELMAP":
        found = frames.max(axis=0).astype(np.int32)
    else:
        for index, frame in enumerate(frames):
            number = int(
                seg.PerFrameFunctionalGroupsSequence[index].SegmentIdentificationSequence[0].ReferencedSegmentNumber
            )
            found[frame != 0] = number
    wrong = [
        f"{label!r}: {int(np.count_nonzero((found == number) != (expected == number)))} pixel(s) differ"
        for number, label in numbers.items()
        if not np.array_equal(found == number, expected == number)
    ]
    if wrong or [numbers.get(i) for i in range(1, len(names) + 1)] != list(names):
        details = "; ".join(wrong) or f"segments {sorted(numbers.values())} are not the structures {list(names)}"
        raise ReadBackError(f"{what} read back does not match the label map laid out as the mosaic: {details}")


def check_rtstruct(
    path: Path, what: str, masks: Mapping[str, np.ndarray | BoxedMask | None], series: SeriesInfo
) -> None:
    """Raise ``ReadBackError`` unless the RT Structure Set at ``path``, rasterised onto ``series``' grid, gives
    each structure of ``masks`` (name -> contoured (z, y, x) mask, or None when empty) within the tolerances."""
    planes = SlicePlanes.of(series)
    expected = {name: MaskStats(0, None) if mask is None else planes.stats(mask) for name, mask in masks.items()}
    compare_stats(
        expected,
        rtstruct_stats(path, series, what),
        series.geometry.spacing,
        what=what,
        relative_count_tolerance=RTSTRUCT_COUNT_TOLERANCE,
    )
