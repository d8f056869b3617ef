"""RT Structure Set: dciodvfy-valid, references the source, and its contours rasterise back to the label map.

The round trip uses an oracle independent of the writer and of ``readback``: each contour is placed with the
ImagePositionPatient, ImageOrientationPatient and PixelSpacing of the source image it references (read from the
source file with pydicom) and filled by ray casting (even-odd rule).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.model.spec import ModelPackage, PostProcessing, Structure
from innereye_batch.tasks.base import WorkItem
from innereye_batch.tasks.segmentation import SegmentationPrediction, structure_stats
from innereye_batch.writers import rtstruct
from innereye_batch.writers.readback import ReadBackError, check_rtstruct
from innereye_batch.writers.registry import WriteContext, WriterOptions
from innereye_batch.writers.rtstruct import FORMAT, structure_masks, write_rtstruct
from tests.factory import GeneratedSeries, rotation_direction, write_series
from tests.writers.helpers import dciodvfy_errors, make_package, series_info_from
from tests.writers.test_contours import even_odd_fill, ring
from tests.writers.test_dicom_seg import _multi_frame_series

SOFTWARE_VERSION = "0.1.0-test"
MARKER = "NOT FOR CLINICAL USE"
STRUCTURES = (
    Structure("body", (200, 60, 40), "EXTERNAL"),
    Structure("islands", (40, 160, 220)),
    Structure("Rückenmark", (250, 220, 0), "AVOIDANCE"),
)
GRIDS = {
    "axial": {},
    "oblique": dict(zip(("row_direction", "column_direction"), rotation_direction((1.0, 2.0, 0.5), 25.0), strict=True)),
    "reversed_instance_numbers": {"instance_numbers_descending": True},
    "normal_minus_z": {"column_direction": (0.0, -1.0, 0.0)},
    "sagittal": {"row_direction": (0.0, 1.0, 0.0), "column_direction": (0.0, 0.0, -1.0)},
    "tilted": {},  # gantry tilt: each slice shifted within its plane (see tilted_series)
}


def tilted_series(generated: GeneratedSeries, shift_mm: float = 0.7) -> SeriesInfo:
    """The series with each slice k moved ``k * shift_mm`` along its columns (a gantry tilt's shear), in its
    files and its SliceRefs: slices not on a regular grid, placed by their own ImagePositionPatient."""
    series = series_info_from(generated)
    column_direction = series.geometry.direction_matrix[:, 1]
    slices = []
    for k, ref in enumerate(series.slices):
        position = np.asarray(ref.position) + k * shift_mm * column_direction
        dataset = pydicom.dcmread(ref.path)
        dataset.ImagePositionPatient = [f"{v:.6f}" for v in position]
        dataset.save_as(ref.path)
        slices.append(replace(ref, position=tuple(float(v) for v in position)))
    return replace(series, slices=tuple(slices))


def phantom_labels(shape: tuple[int, int, int]) -> np.ndarray:
    """Label 1: a ring with a hole on most slices; 2: several islands per slice, one inside the hole; 3: a box
    that touches the image edge on some slices."""
    z, y, x = shape
    labels = np.zeros(shape, dtype=np.uint8)
    for k in range(1, z - 1):
        labels[k][ring((y, x), (y / 2, x / 2), min(y, x) / 2.5, min(y, x) / 6)] = 1
        labels[k, 1:3, 1 + k % 3 : 4 + k % 3] = 2
        labels[k, y - 4 : y - 2, 1:3] = 2
        labels[k, int(y / 2), int(x / 2)] = 2  # an island inside the ring's hole
    labels[z // 2 :, y - 3 :, x - 5 :] = 3
    return labels


def oracle_masks(path: Path, series: SeriesInfo) -> dict[str, np.ndarray]:
    """Each ROI rasterised onto the source images, placed by the referenced image's own header."""
    headers = {s.sop_instance_uid: pydicom.dcmread(s.path, stop_before_pixels=True) for s in series.slices}
    slice_of = {s.sop_instance_uid: k for k, s in enumerate(series.slices)}
    rt = pydicom.dcmread(path)
    names = {int(r.ROINumber): str(r.ROIName) for r in rt.StructureSetROISequence}
    masks = {name: np.zeros(series.geometry.shape, dtype=bool) for name in names.values()}
    for roi in rt.ROIContourSequence:
        polygons: dict[int, list[np.ndarray]] = {}
        for contour in roi.get("ContourSequence", []):
            uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
            header = headers[uid]
            position = np.asarray(header.ImagePositionPatient, dtype=float)
            row_cosine = np.asarray(header.ImageOrientationPatient[:3], dtype=float)
            column_cosine = np.asarray(header.ImageOrientationPatient[3:], dtype=float)
            normal = np.cross(row_cosine, column_cosine)
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3) - position
            assert np.abs(points @ normal).max() < 1e-3  # on the referenced image's plane
            rows = points @ column_cosine / float(header.PixelSpacing[0])
            columns = points @ row_cosine / float(header.PixelSpacing[1])
            polygons.setdefault(slice_of[uid], []).append(np.column_stack([rows, columns]))
        for k, slice_polygons in polygons.items():
            masks[names[int(roi.ReferencedROINumber)]][k] = even_odd_fill(slice_polygons, series.geometry.shape[1:])
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _package(tmp_path: Path, fill_holes: tuple[str, ...] = ()) -> ModelPackage:
    package = make_package(tmp_path / "model", structures=STRUCTURES, name="RT Test Model", version="3.0")
    spec = replace(package.segmentation, postprocessing=PostProcessing(fill_holes=fill_holes))
    return replace(package, task_spec=spec)


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_rtstruct_validates_and_rasterises_back_to_the_label_map(tmp_path: Path, grid: str) -> None:
    generated = write_series(tmp_path / "dicom", shape=(7, 24, 22), **GRIDS[grid])  # type: ignore[arg-type]
    series = tilted_series(generated) if grid == "tilted" else series_info_from(generated)
    labels = phantom_labels(series.geometry.shape)
    out = tmp_path / "rtstruct.dcm"

    write_rtstruct(out, labels, series, _package(tmp_path), software_version=SOFTWARE_VERSION, clinical_marker=MARKER)

    assert dciodvfy_errors(out, "RTStructureSet") == []
    check_rtstruct(out, "rtstruct.dcm", structure_masks(labels, STRUCTURES), series)
    back = oracle_masks(out, series)
    for number, structure in enumerate(STRUCTURES, start=1):
        expected = labels == number
        assert dice(back[structure.name], expected) >= 0.97
        np.testing.assert_array_equal(back[structure.name], expected)  # exact, by construction (contours.py)
    rt = pydicom.dcmread(out)
    body_contours = rt.ROIContourSequence[0].ContourSequence
    assert len(body_contours) == 2 * 5  # outer and inner contour on each of the 5 ring slices
    for roi in rt.ROIContourSequence:
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            assert int(contour.NumberOfContourPoints) == len(contour.ContourData) // 3 >= 3


def test_header_names_colours_types_and_references(tmp_path: Path) -> None:
    generated = write_series(tmp_path / "dicom", shape=(6, 20, 20), series_number=4, instance_numbers_descending=True)
    series = series_info_from(generated)
    package = _package(tmp_path)
    out = tmp_path / "rtstruct.dcm"

    write_rtstruct(
        out, phantom_labels(series.geometry.shape), series, package, software_version="9.9", clinical_marker=MARKER
    )

    rt = pydicom.dcmread(out)
    assert rt.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert rt.Modality == "RTSTRUCT"
    assert rt.SoftwareVersions == "9.9"
    assert rt.Manufacturer == "innereye-batch"
    assert rt.SeriesDescription == f"innereye-batch RT Test Model {MARKER}"
    assert MARKER in rt.StructureSetDescription
    assert rt.ApprovalStatus == "UNAPPROVED"
    assert rt.SeriesNumber == 1005
    assert rt.SeriesInstanceUID != generated.series_instance_uid
    assert rt.StudyInstanceUID == generated.study_instance_uid
    assert rt.FrameOfReferenceUID == generated.frame_of_reference_uid
    assert (rt.PatientName, rt.PatientID, rt.AccessionNumber) == ("Doe^Jane", "PAT001", "ACC1")  # the patient's own
    assert rt.SpecificCharacterSet == "ISO_IR 192"  # a structure name needs UTF-8

    (frame_of_reference,) = rt.ReferencedFrameOfReferenceSequence
    assert frame_of_reference.FrameOfReferenceUID == generated.frame_of_reference_uid
    (study,) = frame_of_reference.RTReferencedStudySequence
    assert study.ReferencedSOPInstanceUID == generated.study_instance_uid
    (referenced_series,) = study.RTReferencedSeriesSequence
    assert referenced_series.SeriesInstanceUID == generated.series_instance_uid
    images = referenced_series.ContourImageSequence
    assert [i.ReferencedSOPInstanceUID for i in images] == list(generated.sop_instance_uids)
    assert {i.ReferencedSOPClassUID for i in images} == {pydicom.uid.CTImageStorage}

    rois = rt.StructureSetROISequence
    assert [r.ROINumber for r in rois] == [1, 2, 3]
    assert [r.ROIName for r in rois] == ["body", "islands", "Rückenmark"]
    assert {r.ReferencedFrameOfReferenceUID for r in rois} == {generated.frame_of_reference_uid}
    assert {r.ROIGenerationAlgorithm for r in rois} == {"AUTOMATIC"}
    assert [[int(v) for v in c.ROIDisplayColor] for c in rt.ROIContourSequence] == [list(s.colour) for s in STRUCTURES]
    assert [c.ReferencedROINumber for c in rt.ROIContourSequence] == [1, 2, 3]
    observations = rt.RTROIObservationsSequence
    assert [o.ReferencedROINumber for o in observations] == [1, 2, 3]
    assert [o.RTROIInterpretedType for o in observations] == ["EXTERNAL", "ORGAN", "AVOIDANCE"]
    # each contour references the source image of the slice it lies on
    position_of = {s.sop_instance_uid: np.asarray(s.position) for s in series.slices}
    normal = series.geometry.direction_matrix[:, 2]
    for roi in rt.ROIContourSequence:
        for contour in roi.ContourSequence:
            (image,) = contour.ContourImageSequence
            assert image.ReferencedSOPClassUID == pydicom.uid.CTImageStorage
            first_point = np.asarray(contour.ContourData[:3], dtype=float)
            assert abs((first_point - position_of[image.ReferencedSOPInstanceUID]) @ normal) < 1e-3


def test_fill_holes_structures_carry_outer_contours_only(tmp_path: Path) -> None:
    generated = write_series(tmp_path / "dicom", shape=(5, 24, 22))
    series = series_info_from(generated)
    labels = phantom_labels(series.geometry.shape)
    out = tmp_path / "rtstruct.dcm"

    write_rtstruct(out, labels, series, _package(tmp_path, ("body",)), software_version=SOFTWARE_VERSION)

    rt = pydicom.dcmread(out)
    assert len(rt.ROIContourSequence[0].ContourSequence) == 3  # one outer contour on each of the 3 ring slices
    back = oracle_masks(out, series)
    filled = np.stack([fill_each_slice_with_scipy(s) for s in labels == 1])
    np.testing.assert_array_equal(back["body"], filled)
    np.testing.assert_array_equal(back["islands"], labels == 2)  # structures not listed keep their holes


def fill_each_slice_with_scipy(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_fill_holes

    return np.asarray(binary_fill_holes(mask))


def test_holes_filled_within_a_structure_box_are_those_of_the_whole_slice() -> None:
    """The contoured masks are cropped to each structure's box: a cove open at the box's edge stays open (its
    background reaches the slice's border outside the box), an enclosed hole is filled, as on the whole slice;
    another structure's voxels inside the box are not this one's."""
    labels = np.zeros((3, 16, 15), np.uint8)
    labels[1, 3:10, 4:11] = 1
    labels[1, 5:8, 6:9] = 0  # an enclosed hole
    labels[1, 4:9, 10] = 0  # a cove: open at the box's right edge, only in the box's last column
    labels[1, 3, 5] = 2  # another structure inside the box of the first, on its edge
    labels[2, 12, 10] = 1  # a voxel of label 1 on the next slice widens its box downwards
    masks = structure_masks(labels, STRUCTURES, fill_holes=("body",))

    body = masks["body"]
    assert body is not None and body.corner == (1, 3, 4) and masks["Rückenmark"] is None
    full = np.zeros(labels.shape, bool)
    full[body.box] = body.mask
    np.testing.assert_array_equal(full, np.stack([fill_each_slice_with_scipy(s) for s in labels == 1]))
    assert full[1, 6, 7] and not full[1, 6, 10] and not full[1, 3, 5]
    islands = masks["islands"]
    assert islands is not None and islands.corner == (1, 3, 5) and islands.mask.shape == (1, 1, 1)


def test_contours_of_a_boxed_mask_are_placed_on_the_grid() -> None:
    """slice_contours of a mask cropped to its box gives the points of the uncropped mask's contours."""
    from innereye_batch.writers.slice_planes import BoxedMask, SlicePlanes

    rng = np.random.default_rng(1)
    shape = (4, 12, 10)
    planes = SlicePlanes(
        positions=np.cumsum(rng.uniform(0.5, 3.0, (shape[0], 3)), axis=0),
        column_step=np.array([0.7, 0.1, -0.2]),
        row_step=np.array([-0.1, 0.9, 0.3]),
        shape=shape,
    )
    mask = np.zeros(shape, bool)
    mask[1, 3:7, 2:5] = True
    mask[2, 5:11, 4:9] = True
    mask[2, 7, 6] = False
    box = (slice(1, 3), slice(3, 11), slice(2, 9))
    whole = rtstruct.slice_contours(BoxedMask((slice(0, 4), slice(0, 12), slice(0, 10)), mask), planes)
    cropped = rtstruct.slice_contours(BoxedMask(box, mask[box]), planes)
    assert [k for k, _ in cropped] == [k for k, _ in whole] == [1, 2, 2]
    for (_, expected), (_, found) in zip(whole, cropped, strict=True):
        np.testing.assert_allclose(found, expected, rtol=0, atol=1e-9)


def test_absent_structure_is_listed_without_contours(tmp_path: Path) -> None:
    generated = write_series(tmp_path / "dicom", shape=(4, 12, 12))
    series = series_info_from(generated)
    labels = np.zeros(series.geometry.shape, dtype=np.uint8)
    labels[1:3, 4:8, 4:8] = 2
    out = tmp_path / "rtstruct.dcm"

    write_rtstruct(out, labels, series, _package(tmp_path), software_version=SOFTWARE_VERSION)

    assert dciodvfy_errors(out, "RTStructureSet") == []
    rt = pydicom.dcmread(out)
    assert len(rt.StructureSetROISequence) == 3
    assert "ContourSequence" not in rt.ROIContourSequence[0]
    assert len(rt.ROIContourSequence[1].ContourSequence) == 2


def test_multi_frame_source_references_frames(tmp_path: Path) -> None:
    series, _ = _multi_frame_series(tmp_path)
    labels = np.zeros(series.geometry.shape, dtype=np.uint8)
    labels[:, 2:6, 2:5] = 1
    out = tmp_path / "rtstruct.dcm"
    prediction = SegmentationPrediction(
        WorkItem((series,)), labels, series.geometry, structure_stats(labels, series.geometry, ["body", "a", "b"])
    )

    FORMAT.write(out, prediction, WriteContext(package=_package(tmp_path), tool_version=SOFTWARE_VERSION))

    assert dciodvfy_errors(out, "RTStructureSet") == []
    rt = pydicom.dcmread(out)
    frames = {
        int(c.ContourImageSequence[0].ReferencedFrameNumber): np.asarray(c.ContourData[:3], dtype=float)
        for c in rt.ROIContourSequence[0].ContourSequence
    }
    assert sorted(frames) == sorted(s.frame + 1 for s in series.slices)  # type: ignore[operator]
    for ref in series.slices:
        assert abs((frames[ref.frame + 1] - np.asarray(ref.position)) @ series.geometry.direction_matrix[:, 2]) < 1e-3  # type: ignore[operator]


def _prediction(series: SeriesInfo, labels: np.ndarray) -> SegmentationPrediction:
    names = [s.name for s in STRUCTURES]
    return SegmentationPrediction(
        WorkItem((series,)), labels, series.geometry, structure_stats(labels, series.geometry, names)
    )


def test_format_writes_and_accepts_a_correct_file(tmp_path: Path) -> None:
    generated = write_series(tmp_path / "dicom", shape=(6, 20, 18), column_direction=(0.0, -1.0, 0.0))
    series = series_info_from(generated)
    out = tmp_path / "rtstruct.dcm"
    context = WriteContext(
        package=_package(tmp_path, ("body",)), tool_version="1.2.3", options=WriterOptions(clinical_marker="")
    )

    FORMAT.write(out, _prediction(series, phantom_labels(series.geometry.shape)), context)

    rt = pydicom.dcmread(out)
    assert rt.SeriesDescription == "innereye-batch RT Test Model"  # no marker asked for
    assert rt.SoftwareVersions == "1.2.3"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda labels: labels[:, ::-1], "centroid"),  # rows flipped: mirrored front to back
        (lambda labels: labels[:, :, ::-1], "centroid"),  # columns flipped: left-right mirror
        (lambda labels: labels[::-1], "centroid"),  # slices reversed
        (lambda labels: np.roll(labels, 1, axis=2), "centroid"),  # shifted by one voxel
        (lambda labels: np.where(labels == 2, 0, labels), "voxels"),  # a structure lost
    ],
)
def test_read_back_catches_a_damaged_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage, message) -> None:  # type: ignore[no-untyped-def]
    generated = write_series(tmp_path / "dicom", shape=(8, 24, 22))
    series = series_info_from(generated)
    labels = phantom_labels(series.geometry.shape)
    labels[2:5, 3:9, 2:7] = 3  # off-centre, so that every mirror moves it
    original = rtstruct.write_rtstruct

    def damaging_writer(path: Path, written: np.ndarray, series, package, *args, masks, **kwargs) -> None:  # type: ignore[no-untyped-def]
        damaged = np.ascontiguousarray(damage(written))
        contoured = rtstruct.structure_masks(damaged, package.segmentation.structures)
        assert set(contoured) == set(masks)
        original(path, damaged, series, package, *args, masks=contoured, **kwargs)

    monkeypatch.setattr(rtstruct, "write_rtstruct", damaging_writer)
    with pytest.raises(ReadBackError, match=f"rtstruct.dcm read back does not match the label map: .*{message}"):
        FORMAT.write(
            tmp_path / ".tmp-1-rtstruct.dcm", _prediction(series, labels), WriteContext(_package(tmp_path), "1")
        )


def test_needs_a_frame_of_reference(tmp_path: Path) -> None:
    series = series_info_from(write_series(tmp_path / "dicom", shape=(3, 8, 8)))
    assert FORMAT.needs is not None
    assert FORMAT.needs(series) is None
    assert "FrameOfReferenceUID" in (FORMAT.needs(replace(series, frame_of_reference_uid="")) or "")


def test_a_contour_longer_than_explicit_vr_allows_makes_the_file_implicit_vr(tmp_path: Path) -> None:
    """One coastline-like contour of over 2,000 points: its ContourData exceeds the 64 KiB an explicit-VR DS
    element can hold, so the structure set is written in Implicit VR Little Endian (never as an UN element), is
    valid, and rasterises back to the mask exactly."""
    from scipy.ndimage import binary_fill_holes, gaussian_filter
    from scipy.ndimage import label as components

    generated = write_series(tmp_path / "dicom", shape=(2, 512, 512))
    series = series_info_from(generated)
    field = gaussian_filter(np.random.default_rng(5).normal(size=(512, 512)), 2.0) > 0
    parts, _ = components(field)
    largest = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
    labels = np.zeros(series.geometry.shape, dtype=np.uint8)
    labels[1] = binary_fill_holes(largest)  # one outer contour, no holes
    out = tmp_path / "rtstruct.dcm"

    write_rtstruct(out, labels, series, _package(tmp_path), software_version=SOFTWARE_VERSION)

    rt = pydicom.dcmread(out)
    assert rt.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    (contour,) = rt.ROIContourSequence[0].ContourSequence
    assert contour.get_item(0x30060050).length > 0xFFFE  # the precondition: too long for explicit VR
    assert contour["ContourData"].VR == "DS"
    assert dciodvfy_errors(out, "RTStructureSet") == []
    check_rtstruct(out, "rtstruct.dcm", structure_masks(labels, STRUCTURES), series)
    np.testing.assert_array_equal(oracle_masks(out, series)["body"], labels == 1)


def test_ordinary_structure_sets_stay_explicit_vr(tmp_path: Path) -> None:
    generated = write_series(tmp_path / "dicom", shape=(6, 20, 18))
    series = series_info_from(generated)
    out = tmp_path / "rtstruct.dcm"
    write_rtstruct(out, phantom_labels(series.geometry.shape), series, _package(tmp_path), software_version="1")
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
