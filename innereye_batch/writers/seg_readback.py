"""Read a written DICOM-SEG back and check it against the label map, frame by frame (``readback`` has the rules).

Each frame's functional groups are read once (``SegFrame``: where its first pixel lies, its pixel axes, the segment
it holds, the images it references). Its pixels are then compared within the frame's own box of non-zero pixels
and, for the expected mask, within the structure's box: differing voxels are counted as the frame's voxels plus the
mask's voxels on that slice less twice those they share, so the cost grows with the structures, not with the
frames' full size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.dicom.stacks import ORIENTATION_TOLERANCE
from innereye_batch.writers.readback import Mask, ReadBackError, check_identity, compare_stats, mm_text
from innereye_batch.writers.slice_planes import MaskStats, SlicePlanes, label_masks, overlap_count, slice_counts

if TYPE_CHECKING:
    from pydicom import Dataset

_FIRST_PIXEL_TOLERANCE = 0.01
"""Pixels between a SEG frame's first pixel and its source slice's: the SEG copies the source's positions."""


@dataclass(frozen=True, eq=False)
class SegFrame:
    """What one SEG frame's functional groups say: its placement, its segment and the images it references."""

    origin: np.ndarray
    """The first pixel's position (LPS mm)."""
    column_step: np.ndarray
    """LPS mm from one column to the next (along a row)."""
    row_step: np.ndarray
    """LPS mm from one row to the next (down a column)."""
    segment: int | None
    """A BINARY frame's one segment; None in a LABELMAP, whose pixel values are the segments."""
    references: list[tuple[str, list[int]]]
    """(SOP instance UID, frame numbers) of each source image it names."""


def seg_stats(path: Path, what: str = "") -> dict[str, MaskStats]:
    """Per segment label: voxel count and centroid of a DICOM-SEG (BINARY or LABELMAP), placed by its own
    per-frame positions, shared orientation and pixel spacing."""
    import pydicom

    seg = pydicom.dcmread(path)
    return _compare_frames(seg, seg_frames(seg), _pixels(seg), what or path.name)[0]


def check_seg(path: Path, what: str, labels: np.ndarray, series: SeriesInfo, names: Sequence[str]) -> None:
    """Raise ``ReadBackError`` unless the SEG at ``path`` holds, per structure, the voxels of ``labels`` (on
    ``series``' slices; label i is ``names[i - 1]``), each where the label map has it (``what`` names the file in
    the message)."""
    if series.mosaic_size is not None:
        _check_mosaic_seg(path, what, labels, series, names)
        return
    import pydicom

    seg = pydicom.dcmread(path)
    check_identity(seg, series, what)
    planes = SlicePlanes.of(series)
    frames = seg_frames(seg)
    frame_slices = _check_references(frames, series, planes, what)
    masks = dict(zip(names, label_masks(labels, len(names)), strict=True))
    expected = {name: MaskStats(0, None) if mask is None else planes.stats(mask) for name, mask in masks.items()}
    found, differing = _compare_frames(seg, frames, _pixels(seg), what, (frame_slices, masks, planes.shape[0]))
    compare_stats(expected, found, series.geometry.spacing, what=what, differing=differing)


def seg_frames(seg: Dataset) -> list[SegFrame]:
    """Every frame's functional groups, read once: a frame's own macro, else the shared one."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    labelmap = _is_labelmap(seg)
    shared_axes = _axes(shared) if "PlaneOrientationSequence" in shared and "PixelMeasuresSequence" in shared else None
    frames = []
    for groups in seg.PerFrameFunctionalGroupsSequence:
        own = "PlaneOrientationSequence" in groups or "PixelMeasuresSequence" in groups
        column_step, row_step = _axes(groups, shared) if own or shared_axes is None else shared_axes
        position = groups if "PlanePositionSequence" in groups else shared
        frames.append(
            SegFrame(
                origin=np.asarray(position.PlanePositionSequence[0].ImagePositionPatient, dtype=np.float64),
                column_step=column_step,
                row_step=row_step,
                segment=None if labelmap else int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
                references=[
                    (str(reference.ReferencedSOPInstanceUID), _frame_numbers(reference))
                    for derivation in groups.get("DerivationImageSequence", [])
                    for reference in derivation.get("SourceImageSequence", [])
                ],
            )
        )
    return frames


def _axes(groups: Dataset, shared: Dataset | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The patient-space steps of one column and of one row from a frame's (else the shared) groups."""

    def item(sequence: str) -> Any:
        return groups[sequence][0] if sequence in groups or shared is None else shared[sequence][0]

    orientation = np.asarray(item("PlaneOrientationSequence").ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in item("PixelMeasuresSequence").PixelSpacing)
    # ImageOrientationPatient: direction along a row (column index grows), then down a column (row index grows).
    return orientation[:3] * column_spacing, orientation[3:] * row_spacing


def _pixels(seg: Dataset) -> np.ndarray:
    return seg.pixel_array.reshape(int(seg.get("NumberOfFrames", 1)), int(seg.Rows), int(seg.Columns))


def _segment_labels(seg: Dataset) -> dict[int, str]:
    """Segment number -> label; a LABELMAP SEG may describe segment 0 (pixel value 0) as the background: not a
    structure."""
    return {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence if int(s.SegmentNumber) != 0}


def _is_labelmap(seg: Dataset) -> bool:
    return str(seg.get("SegmentationType", "")) == "LABELMAP"


def _check_references(frames: list[SegFrame], series: SeriesInfo, planes: SlicePlanes, what: str) -> list[int]:
    """Every SEG frame lies on a source slice, on its pixel grid (first pixel, directions and spacing), and
    references that slice's image, and only it (with its frame number for a multi-frame source); each frame's
    slice index."""
    slices = []
    for index, frame in enumerate(frames):
        located = planes.locate(frame.origin[None])
        if located is None or max(abs(float(located[1][0])), abs(float(located[2][0]))) > _FIRST_PIXEL_TOLERANCE:
            raise ReadBackError(
                f"{what}: frame {index + 1} at {mm_text(frame.origin.tolist())} is not on a slice of the source series"
            )
        if not (
            _same_pixel_axis(frame.column_step, planes.column_step)
            and _same_pixel_axis(frame.row_step, planes.row_step)
        ):
            raise ReadBackError(
                f"{what}: frame {index + 1} has other pixel directions or spacing than the source series' grid"
            )
        image = series.slices[located[0]]
        expected = [(image.sop_instance_uid, [image.frame + 1] if image.frame is not None else [])]
        if frame.references != expected:
            source = image.sop_instance_uid + (f" frame {image.frame + 1}" if image.frame is not None else "")
            raise ReadBackError(
                f"{what}: frame {index + 1} references {frame.references or 'no image'}, but the source image at its "
                f"plane is {source}"
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


_Against = tuple[Sequence[int], Mapping[str, Mask], int]
"""What frames are compared with: each frame's slice, the structures' masks, the grid's number of slices."""


def _compare_frames(
    seg: Dataset, frames: list[SegFrame], pixels: np.ndarray, what: str, against: _Against | None = None
) -> tuple[dict[str, MaskStats], dict[str, int]]:
    """Per segment label: voxel count and centroid of the frames' pixels, each frame placed by its own groups;
    and with ``against``, per structure of its masks the voxels in which the frames, each on its slice, differ
    from the mask: a slice of the mask that no frame of its segment covers counts all its voxels, a second frame
    of a segment on one slice all of its own."""
    if len(frames) != pixels.shape[0]:  # a frame without its groups lies nowhere: its voxels would go uncounted
        raise ReadBackError(
            f"{what}: {pixels.shape[0]} frame(s) of pixels but {len(frames)} per-frame functional group item(s)"
        )
    labels = _segment_labels(seg)
    labelmap = _is_labelmap(seg)
    counts = dict.fromkeys(labels, 0)
    sums = {number: np.zeros(3) for number in labels}
    frame_slices, masks, slices = against or ((), {}, 0)
    per_slice = {
        name: np.zeros(slices, np.int64) if m is None else slice_counts(m, slices) for name, m in masks.items()
    }
    differing = dict.fromkeys(masks, 0)
    covered: dict[str, set[int]] = {name: set() for name in masks}
    rows_held = pixels.max(axis=2) != 0 if pixels.size else np.zeros(pixels.shape[:2], bool)
    columns_held = pixels.max(axis=1) != 0 if pixels.size else np.zeros((pixels.shape[0], pixels.shape[2]), bool)
    for index, frame in enumerate(frames):
        rows, columns = np.flatnonzero(rows_held[index]), np.flatnonzero(columns_held[index])
        top, left = (int(rows[0]), int(columns[0])) if rows.size else (0, 0)
        crop = (
            pixels[index, top : int(rows[-1]) + 1, left : int(columns[-1]) + 1] if rows.size else pixels[index, :0, :0]
        )
        held = _held_segments(crop) if frame.segment is None else [frame.segment]
        found_masks: dict[int, np.ndarray] = {}
        for number in held:
            if number not in counts:
                raise ReadBackError(f"{what}: frame {index + 1} holds segment {number}, not described")
            mask = found_masks[number] = crop == number if labelmap else crop != 0
            per_row = np.count_nonzero(mask, axis=1)
            count = int(per_row.sum())
            row_sum = int(per_row @ np.arange(top, top + mask.shape[0]))
            column_sum = int(np.count_nonzero(mask, axis=0) @ np.arange(left, left + mask.shape[1]))
            counts[number] += count
            sums[number] += count * frame.origin + column_sum * frame.column_step + row_sum * frame.row_step
        if against is None:
            continue
        z = frame_slices[index]
        if labelmap:  # a LABELMAP frame also says its slice holds none of the other segments
            held = [n for n in labels if n in found_masks or (labels[n] in masks and per_slice[labels[n]][z])]
        for number in held:
            name = labels.get(number)
            if name is None or name not in masks:
                continue  # a segment of no structure: compare_stats names it
            found = found_masks.get(number)
            found_count = 0 if found is None else int(np.count_nonzero(found))
            if z in covered[name]:
                differing[name] += found_count
                continue
            covered[name].add(z)
            want = masks[name]
            shared = 0 if found is None or want is None else overlap_count(want, z, found, (top, left))
            differing[name] += found_count + int(per_slice[name][z]) - 2 * shared
    for name, on_slices in per_slice.items():
        differing[name] += int(sum(int(n) for z, n in enumerate(on_slices) if n and z not in covered[name]))
    return {labels[n]: MaskStats.from_sums(counts[n], sums[n]) for n in labels}, differing


def _held_segments(labelmap_pixels: np.ndarray) -> list[int]:
    """The segment numbers a LABELMAP frame's pixels hold (its values other than 0)."""
    return [int(v) for v in np.flatnonzero(np.bincount(labelmap_pixels.ravel())) if v != 0]


def _check_mosaic_seg(path: Path, what: str, labels: np.ndarray, series: SeriesInfo, names: Sequence[str]) -> None:
    """A mosaic's SEG is one frame laid out as the source mosaic (each slice in its tile): its segments must equal
    the label map re-tiled, pixel for pixel (a flip or a tile out of place changes pixels)."""
    import pydicom

    from innereye_batch.dicom.mosaic import tiles_to_mosaic

    seg = pydicom.dcmread(path)
    check_identity(seg, series, what)
    frames = _pixels(seg)
    expected = tiles_to_mosaic(labels, series)
    numbers = _segment_labels(seg)
    found = np.zeros(expected.shape, dtype=np.int32)
    if _is_labelmap(seg):
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
