"""Read a written DICOM output back and check it against the label map: a flipped, shifted or turned file fails
its series.

Per structure, the file must hold the label map's voxels, every one where the label map has it; the voxel count
and the centroid in patient coordinates (LPS, mm) are compared too, for a message that says how far off a wrong
file is. The file is read with pydicom alone and placed with its own geometry (each frame's ImagePositionPatient,
ImageOrientationPatient and PixelSpacing for a SEG; the contours' patient coordinates for an RT Structure Set),
not with the writer's library, so the check is independent of the code that wrote it.

- DICOM-SEG (BINARY or LABELMAP; ``seg_readback``): each frame must lie on a source slice (its first pixel on the
  slice's), with the series' pixel directions and spacing (within the tolerances by which the scan made the slices
  one stack), and reference that slice's image; its pixels are then compared with the label map's on that slice,
  and a slice of a structure without its frame counts its voxels as missing.
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
from typing import TYPE_CHECKING

import numpy as np

from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.errors import InnerEyeBatchError
from innereye_batch.writers.slice_planes import (
    BoxedMask,
    MaskStats,
    SlicePlanes,
    mask_slice,
    slice_counts,
)

if TYPE_CHECKING:
    from pydicom import Dataset

_CONTOUR_DATA = 0x30060050
Mask = np.ndarray | BoxedMask | None
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
                    f"{name!r}: centroid {mm_text(got.centroid)} is {distance:.2f} mm from the label map's "
                    f"{mm_text(want.centroid)} (tolerance {centroid_tolerance:.2f} mm)"
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


def mm_text(point: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in point) + ") mm"


def rtstruct_stats(path: Path, series: SeriesInfo, what: str = "") -> dict[str, MaskStats]:
    """Per ROI name: voxel count and centroid of its contours rasterised onto ``series``' slices, one slice at a
    time.

    Raises ``ReadBackError`` for a contour that is not closed and planar on a slice of the grid, has fewer than
    3 points, or does not reference the source image at its plane.
    """
    return _read_rtstruct(path, series, what or path.name, {})[0]


def _read_rtstruct(
    path: Path, series: SeriesInfo, what: str, masks: Mapping[str, Mask]
) -> tuple[dict[str, MaskStats], dict[str, int]]:
    """``rtstruct_stats``, and per structure of ``masks`` the voxels in which the rasterised contours differ
    from its mask (slices without contours count all the mask's voxels on them)."""
    import pydicom

    from innereye_batch.writers.contours import rasterise_contours

    rt = pydicom.dcmread(path)
    check_identity(rt, series, what)
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


def check_identity(ds: Dataset, series: SeriesInfo, what: str) -> None:
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


def check_rtstruct(path: Path, what: str, masks: Mapping[str, Mask], series: SeriesInfo) -> None:
    """Raise ``ReadBackError`` unless the RT Structure Set at ``path``, rasterised onto ``series``' grid, gives
    each structure of ``masks`` (name -> contoured (z, y, x) mask, or None when empty), voxel for voxel."""
    planes = SlicePlanes.of(series)
    expected = {name: MaskStats(0, None) if mask is None else planes.stats(mask) for name, mask in masks.items()}
    found, differing = _read_rtstruct(path, series, what, masks)
    compare_stats(expected, found, series.geometry.spacing, what=what, differing=differing)
