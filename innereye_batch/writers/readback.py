"""Read a written DICOM output back and check it against the label map: a flipped, shifted or turned file fails
its series.

Per structure, the file must hold the label map's voxels, every one where the label map has it; the voxel count
and the centroid in patient coordinates (LPS, mm) are compared too, for a message that says how far off a wrong
file is. The file is read with pydicom alone and placed with its own geometry (each frame's ImagePositionPatient,
ImageOrientationPatient and PixelSpacing for a SEG; the contours' patient coordinates for an RT Structure Set),
not with the writer's library, so the check is independent of the code that wrote it.

- DICOM-SEG (BINARY or LABELMAP): each frame must lie on a source slice (its first pixel on the slice's), with
  the series' pixel directions and spacing (within the tolerances by which the scan made the slices one stack),
  and reference that slice's image; its pixels are then compared with the label
  map's on that slice, and a slice of a structure without its frame counts its voxels as missing.
- RT Structure Set: each contour is checked to lie on a slice plane of the source grid and to reference the
  source image at that plane; the contours are rasterised back onto the source grid (pixel centres, even-odd
  rule; see ``contours``) a slice at a time and compared with the contoured mask. Marching-squares contours never
  pass within 0.35 pixel of a pixel centre, far more than the rounding of coordinates to DICOM decimal strings
  moves them, so the round trip is exact: a lost island or a one-voxel structure left out is caught.

Both must also be in the source's study and frame of reference and name the source series wherever they say
which series they refer to (``_check_identity``).

Label maps given here lie on the source slices (what DICOM outputs reference), and every slice is placed by its
own ImagePositionPatient (``SlicePlanes``), so stacks whose slices are not on a regular grid (gantry tilt,
variable spacing) are placed where the scanner put them. The RT Structure Set's contours are placed with the
same scanned positions the writer used: a wrong position in the scan itself is not something a read-back can see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.dicom.stacks import ORIENTATION_TOLERANCE
from innereye_batch.errors import InnerEyeBatchError
from innereye_batch.writers.slice_planes import (
    BoxedMask,
    MaskStats,
    SlicePlanes,
    label_masks,
    mask_slice,
    slice_counts,
)

if TYPE_CHECKING:
    from pydicom import Dataset

_CONTOUR_DATA = 0x30060050
_Mask = np.ndarray | BoxedMask | None
"""A structure's (z, y, x) mask on the source slices, within its box, or None when it is empty."""


class ReadBackError(InnerEyeBatchError):
    """A written output, read back, does not say what the label map says."""


def compare_stats(
    expected: Mapping[str, MaskStats],
    found: Mapping[str, MaskStats],
    spacing: Sequence[float],
    *,
    what: str,
    differing: Mapping[str, int] | None = None,
) -> None:
    """Raise ``ReadBackError`` naming ``what`` (the file) and every structure whose count or centroid differ
    (centroids may differ by half the smallest of ``spacing``, mm: the rounding of positions), or which has
    ``differing`` voxels (in the file and not in the label map, or the other way round) where both agree."""
    centroid_tolerance = 0.5 * min(spacing)
    problems = []
    for name, want in expected.items():
        got = found.get(name)
        if got is None:
            problems.append(f"{name!r}: missing from the file")
            continue
        if got.voxel_count != want.voxel_count:
            problems.append(f"{name!r}: {got.voxel_count} voxels, the label map has {want.voxel_count}")
            continue
        if want.centroid is not None and got.centroid is not None:
            distance = float(np.linalg.norm(np.subtract(got.centroid, want.centroid)))
            if distance > centroid_tolerance:
                problems.append(
                    f"{name!r}: centroid {_mm(got.centroid)} is {distance:.2f} mm from the label map's "
                    f"{_mm(want.centroid)} (tolerance {centroid_tolerance:.2f} mm)"
                )
                continue
        wrong = (differing or {}).get(name, 0)
        if wrong:
            problems.append(
                f"{name!r}: {wrong} voxel(s) differ from the label map's (same count and centroid: turned, mirrored "
                "or moved in part)"
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

    seg = pydicom.dcmread(path)
    return _seg_stats(seg, _seg_frames(seg), what or path.name)


def _seg_frames(seg: Dataset) -> np.ndarray:
    return seg.pixel_array.reshape(int(seg.get("NumberOfFrames", 1)), int(seg.Rows), int(seg.Columns))


def _segment_labels(seg: Dataset) -> dict[int, str]:
    """Segment number -> label; a LABELMAP SEG may describe segment 0 (pixel value 0) as the background: not a
    structure."""
    return {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence if int(s.SegmentNumber) != 0}


def _is_labelmap(seg: Dataset) -> bool:
    return str(seg.get("SegmentationType", "")) == "LABELMAP"


def _frame_segments(seg: Dataset, index: int, frame: np.ndarray) -> list[int]:
    """The segment numbers frame ``index`` holds: the values in a LABELMAP frame, a BINARY frame's one segment."""
    if _is_labelmap(seg):
        return [int(v) for v in np.flatnonzero(np.bincount(frame.ravel())) if v != 0]
    groups = seg.PerFrameFunctionalGroupsSequence[index]
    return [int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]


def _segment_mask(seg: Dataset, frame: np.ndarray, number: int) -> np.ndarray:
    return frame == number if _is_labelmap(seg) else frame != 0


def _seg_stats(seg: Dataset, frames: np.ndarray, what: str) -> dict[str, MaskStats]:
    labels = _segment_labels(seg)
    shared = seg.SharedFunctionalGroupsSequence[0]
    counts = dict.fromkeys(labels, 0)
    sums = {number: np.zeros(3) for number in labels}
    for index, frame in enumerate(frames):
        groups = seg.PerFrameFunctionalGroupsSequence[index]
        origin, row_step, column_step = _frame_axes(groups, shared)
        for number in _frame_segments(seg, index, frame):
            if number not in counts:
                raise ReadBackError(f"{what}: frame {index + 1} holds segment {number}, not described")
            mask = _segment_mask(seg, frame, number)
            # index sums from the frame's projections (no index arrays)
            per_row = np.count_nonzero(mask, axis=1)
            count = int(per_row.sum())
            row_sum = int(per_row @ np.arange(mask.shape[0]))
            column_sum = int(np.count_nonzero(mask, axis=0) @ np.arange(mask.shape[1]))
            counts[number] += count
            sums[number] += count * origin + column_sum * row_step + row_sum * column_step
    return {labels[n]: MaskStats.from_sums(counts[n], sums[n]) for n in labels}


def _seg_differences(
    seg: Dataset, frames: np.ndarray, frame_slices: Sequence[int], masks: Mapping[str, _Mask], slices: int
) -> dict[str, int]:
    """Per structure of ``masks`` (on a grid of ``slices``): the voxels in which the SEG's frames, each on its
    source slice (``frame_slices``), differ from the mask; a slice of the mask that no frame of its segment covers
    counts all its voxels, a second frame of a segment on one slice all of its own."""
    labels = _segment_labels(seg)
    shape = (int(frames.shape[1]), int(frames.shape[2]))
    per_slice = {
        name: np.zeros(slices, np.int64) if m is None else slice_counts(m, slices) for name, m in masks.items()
    }
    differing = dict.fromkeys(masks, 0)
    covered: dict[str, set[int]] = {name: set() for name in masks}
    for index, frame in enumerate(frames):
        z = frame_slices[index]
        held = _frame_segments(seg, index, frame)
        if _is_labelmap(seg):  # a LABELMAP frame also says its slice holds none of the other segments
            held = [n for n in labels if n in held or (labels[n] in masks and per_slice[labels[n]][z])]
        for number in held:
            name = labels.get(number)
            if name is None or name not in masks:
                continue  # a segment of no structure: compare_stats names it
            found = _segment_mask(seg, frame, number)
            if z in covered[name]:
                differing[name] += int(np.count_nonzero(found))
                continue
            covered[name].add(z)
            mask = masks[name]
            expected = np.zeros(shape, bool) if mask is None else mask_slice(mask, z, shape)
            differing[name] += int(np.count_nonzero(found != expected))
    for name, counts in per_slice.items():
        differing[name] += int(sum(int(n) for z, n in enumerate(counts) if n and z not in covered[name]))
    return differing


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
    return _read_rtstruct(path, series, what or path.name, {})[0]


def _read_rtstruct(
    path: Path, series: SeriesInfo, what: str, masks: Mapping[str, _Mask]
) -> tuple[dict[str, MaskStats], dict[str, int]]:
    """``rtstruct_stats``, and per structure of ``masks`` the voxels in which the rasterised contours differ
    from its mask (slices without contours count all the mask's voxels on them)."""
    import pydicom

    from innereye_batch.writers.contours import rasterise_contours

    rt = pydicom.dcmread(path)
    _check_identity(rt, series, what)
    planes = SlicePlanes.of(series)
    names = {int(roi.ROINumber): str(roi.ROIName) for roi in rt.StructureSetROISequence}
    sums = {name: (0, np.zeros(3)) for name in names.values()}
    differing = {
        name: 0 if mask is None else int(slice_counts(mask, planes.shape[0]).sum()) for name, mask in masks.items()
    }
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
            want = masks.get(name)
            if name in masks:  # its voxels on this slice were counted as missing: count what differs instead
                expected = (
                    np.zeros(mask.shape[1:], bool) if want is None else mask_slice(want, slice_index, mask.shape[1:])
                )
                differing[name] += int(np.count_nonzero(mask[0] != expected)) - int(np.count_nonzero(expected))
    return {name: MaskStats.from_sums(count, total) for name, (count, total) in sums.items()}, differing


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
    """Raise ``ReadBackError`` unless the SEG at ``path`` holds, per structure, the voxels of ``labels`` (on
    ``series``' slices; label i is ``names[i - 1]``), each where the label map has it (``what`` names the file in
    the message)."""
    if series.mosaic_size is not None:
        _check_mosaic_seg(path, what, labels, series, names)
        return
    import pydicom

    seg = pydicom.dcmread(path)
    _check_identity(seg, series, what)
    planes = SlicePlanes.of(series)
    frame_slices = _check_seg_references(seg, series, planes, what)
    masks = dict(zip(names, label_masks(labels, len(names)), strict=True))
    expected = {name: MaskStats(0, None) if mask is None else planes.stats(mask) for name, mask in masks.items()}
    frames = _seg_frames(seg)
    found = _seg_stats(seg, frames, what)
    differing = _seg_differences(seg, frames, frame_slices, masks, planes.shape[0])
    compare_stats(expected, found, series.geometry.spacing, what=what, differing=differing)


def _check_identity(ds: Dataset, series: SeriesInfo, what: str) -> None:
    """The output is in the source's study and frame of reference, and names the source series wherever it says
    which series it refers to: a SEG's ReferencedSeriesSequence, an RT Structure Set's referenced frame of
    reference, its RT referenced series and each ROI's frame of reference. A file placed in another space would be
    overlaid wrongly, or refused, by a viewer, whatever its voxels."""
    found: list[tuple[str, str, str]] = [
        ("StudyInstanceUID", str(ds.get("StudyInstanceUID", "")), series.study_instance_uid)
    ]
    frame = series.frame_of_reference_uid
    if frame:
        if "FrameOfReferenceUID" in ds:
            found.append(("FrameOfReferenceUID", str(ds.FrameOfReferenceUID), frame))
        for item in ds.get("ReferencedFrameOfReferenceSequence", []):
            found.append(("ReferencedFrameOfReferenceSequence", str(item.get("FrameOfReferenceUID", "")), frame))
            for study in item.get("RTReferencedStudySequence", []):
                for referenced in study.get("RTReferencedSeriesSequence", []):
                    uid = str(referenced.get("SeriesInstanceUID", ""))
                    found.append(("RTReferencedSeriesSequence", uid, series.series_instance_uid))
        for roi in ds.get("StructureSetROISequence", []):
            found.append(("ReferencedFrameOfReferenceUID", str(roi.get("ReferencedFrameOfReferenceUID", "")), frame))
    for referenced in ds.get("ReferencedSeriesSequence", []):
        found.append(
            ("ReferencedSeriesSequence", str(referenced.get("SeriesInstanceUID", "")), series.series_instance_uid)
        )
    wrong = sorted({name for name, value, expected in found if value != expected})
    if wrong:
        raise ReadBackError(f"{what}: {', '.join(wrong)} not the source series' (another study, space or series)")


def _check_seg_references(seg: Dataset, series: SeriesInfo, planes: SlicePlanes, what: str) -> list[int]:
    """Every SEG frame lies on a source slice, on its pixel grid (first pixel, directions and spacing), and
    references that slice's image, and only it (with its frame number for a multi-frame source); each frame's
    slice index."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    slices = []
    for index, groups in enumerate(seg.PerFrameFunctionalGroupsSequence):
        origin, along_row, along_column = _frame_axes(groups, shared)
        located = planes.locate(origin[None])
        if located is None or max(abs(float(located[1][0])), abs(float(located[2][0]))) > _FIRST_PIXEL_TOLERANCE:
            raise ReadBackError(
                f"{what}: frame {index + 1} at {_mm(origin.tolist())} is not on a slice of the source series"
            )
        if not (_same_pixel_axis(along_row, planes.column_step) and _same_pixel_axis(along_column, planes.row_step)):
            raise ReadBackError(
                f"{what}: frame {index + 1} has other pixel directions or spacing than the source series' grid"
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
        slices.append(located[0])
    return slices


def _same_pixel_axis(step: np.ndarray, reference: np.ndarray) -> bool:
    """One pixel step of a SEG frame and of the source grid agree as the scan's slices of one stack must
    (``stacks._same_grid``): unit directions within ``ORIENTATION_TOLERANCE``, spacings within 1e-4 mm + 0.1 %.
    Directions are compared normalised: the SEG copies the source's cosines as written (4 decimals, say)."""
    length, expected = float(np.linalg.norm(step)), float(np.linalg.norm(reference))
    if length == 0 or abs(length - expected) > 1e-4 + 1e-3 * expected:
        return False
    return float(np.abs(step / length - reference / expected).max()) <= ORIENTATION_TOLERANCE


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
    _check_identity(seg, series, what)
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


def check_rtstruct(path: Path, what: str, masks: Mapping[str, _Mask], series: SeriesInfo) -> None:
    """Raise ``ReadBackError`` unless the RT Structure Set at ``path``, rasterised onto ``series``' grid, gives
    each structure of ``masks`` (name -> contoured (z, y, x) mask, or None when empty), voxel for voxel."""
    planes = SlicePlanes.of(series)
    expected = {name: MaskStats(0, None) if mask is None else planes.stats(mask) for name, mask in masks.items()}
    found, differing = _read_rtstruct(path, series, what, masks)
    compare_stats(expected, found, series.geometry.spacing, what=what, differing=differing)
