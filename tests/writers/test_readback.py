"""Read-back checks: a correct DICOM output passes, a flipped, shifted or mis-referenced one fails with a reason."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy.ndimage import find_objects

from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.tasks.base import WorkItem
from innereye_batch.tasks.segmentation import SegmentationPrediction, structure_stats
from innereye_batch.writers import dicom_seg
from innereye_batch.writers.readback import ReadBackError, check_rtstruct
from innereye_batch.writers.registry import WriteContext, WriterOptions
from innereye_batch.writers.rtstruct import structure_masks, write_rtstruct
from innereye_batch.writers.seg_readback import check_seg, seg_stats
from innereye_batch.writers.slice_planes import BoxedMask, SlicePlanes, label_masks
from tests.factory import rotation_direction, write_series
from tests.writers.helpers import blob_labels, dciodvfy_errors, make_package, read_back_labels, series_info_from
from tests.writers.test_rtstruct import tilted_series

OBLIQUE = dict(zip(("row_direction", "column_direction"), rotation_direction((0.3, 1.0, 0.2), 30.0), strict=True))


def _series(tmp_path: Path, **kwargs: object) -> SeriesInfo:
    return series_info_from(write_series(tmp_path / "dicom", shape=(7, 16, 14), **kwargs))  # type: ignore[arg-type]


def _labels(shape: tuple[int, int, int]) -> np.ndarray:
    labels = blob_labels(shape, 3, seed=4)
    labels[1:3, 1:4, 1:3] = 3  # off-centre, so that any mirror moves every structure's centroid
    return labels


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_seg_stats_place_voxels_where_the_label_map_has_them(tmp_path: Path, seg_type: str) -> None:
    series = _series(tmp_path, **OBLIQUE)
    labels = _labels(series.geometry.shape)
    package = make_package(tmp_path / "model")
    out = tmp_path / "seg.dcm"
    dicom_seg.write_dicom_seg(out, labels, series, package, software_version="1", segmentation_type=seg_type)  # type: ignore[arg-type]

    found = seg_stats(out)

    for number, name in enumerate(package.segmentation.structure_names, start=1):
        expected = SlicePlanes.of(series).stats(labels == number)
        independent = series.geometry.index_to_lps(tuple(np.argwhere(labels == number).mean(axis=0)))
        np.testing.assert_allclose(expected.centroid, independent, atol=1e-6)  # type: ignore[arg-type]
        assert found[name].voxel_count == expected.voxel_count > 0
        np.testing.assert_allclose(found[name].centroid, expected.centroid, atol=1e-3)  # type: ignore[arg-type]
    check_seg(out, "segmentation.dcm", labels, series, package.segmentation.structure_names)


def test_slice_plane_stats_count_and_centroid_every_voxel_of_any_mask() -> None:
    """Masks at the edges of the grid (first and last slice, row and column), lone voxels, empty and full masks,
    on irregularly spaced slices: count and centroid equal a voxel-by-voxel computation."""
    rng = np.random.default_rng(3)
    shape = (6, 7, 5)
    planes = SlicePlanes(
        positions=np.cumsum(rng.uniform(0.5, 3.0, (shape[0], 3)), axis=0),
        column_step=np.array([0.7, 0.1, -0.2]),
        row_step=np.array([-0.1, 0.9, 0.3]),
        shape=shape,
    )
    masks = [rng.random(shape) < p for p in (0.0, 0.02, 0.1, 0.5, 1.0)]
    for corner in [(0, 0, 0), (5, 6, 4), (0, 6, 0), (5, 0, 4), (2, 3, 1)]:
        lone = np.zeros(shape, dtype=bool)
        lone[corner] = True
        masks.append(lone)
    for mask in masks:
        found = planes.stats(mask)
        voxels = np.argwhere(mask)
        assert found.voxel_count == len(voxels)
        if not len(voxels):
            assert found.centroid is None
            continue
        points = planes.positions[voxels[:, 0]] + np.outer(voxels[:, 2], planes.column_step)
        points += np.outer(voxels[:, 1], planes.row_step)
        np.testing.assert_allclose(found.centroid, points.mean(axis=0), rtol=0, atol=1e-9)  # type: ignore[arg-type]
        # the same mask cropped to its bounding box, or to any larger box, is placed by the box's corner
        (box,) = find_objects(mask.astype(np.uint8))
        larger = tuple(slice(max(0, b.start - 1), b.stop) for b in box)
        for crop in (box, larger):
            boxed = planes.stats(BoxedMask(crop, mask[crop]))
            assert boxed.voxel_count == found.voxel_count
            np.testing.assert_allclose(boxed.centroid, found.centroid, rtol=0, atol=1e-9)  # type: ignore[arg-type]


def test_label_masks_crop_each_label_to_its_box_in_one_pass() -> None:
    labels = np.zeros((5, 9, 8), np.uint8)
    labels[1:3, 2:7, 1:4] = 1
    labels[4, 8, 7] = 1  # a stray voxel in the far corner widens label 1's box to it
    labels[2, 0:2, 5:8] = 3  # label 2 absent
    one, two, three = label_masks(labels, 3)
    assert two is None
    assert one is not None and three is not None
    assert one.corner == (1, 2, 1) and one.mask.shape == (4, 7, 7) and one.mask.sum() == (labels == 1).sum()
    assert three.corner == (2, 0, 5) and three.mask.shape == (1, 2, 3) and three.mask.all()
    full = np.zeros(labels.shape, bool)
    full[one.box] = one.mask
    np.testing.assert_array_equal(full, labels == 1)


def _prediction(series: SeriesInfo, labels: np.ndarray, names: tuple[str, ...]) -> SegmentationPrediction:
    return SegmentationPrediction(
        WorkItem((series,)), labels, series.geometry, structure_stats(labels, series.geometry, names)
    )


DAMAGES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rows_flipped": lambda labels: labels[:, ::-1],
    "columns_flipped": lambda labels: labels[:, :, ::-1],
    "slices_reversed": lambda labels: labels[::-1],
    "shifted_one_slice": lambda labels: np.roll(labels, 1, axis=0),
}


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_seg_format_refuses_a_damaged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seg_type: str, damage: str
) -> None:
    series = _series(tmp_path)
    labels = _labels(series.geometry.shape)
    package = make_package(tmp_path / "model")
    original = dicom_seg.write_dicom_seg

    def damaging_writer(path: Path, written: np.ndarray, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        original(path, np.ascontiguousarray(DAMAGES[damage](written)), *args, **kwargs)

    monkeypatch.setattr(dicom_seg, "write_dicom_seg", damaging_writer)
    context = WriteContext(package, "1", options=WriterOptions(seg_type=seg_type))  # type: ignore[arg-type]
    prediction = _prediction(series, labels, package.segmentation.structure_names)
    with pytest.raises(ReadBackError, match=r"segmentation\.dcm read back does not match the label map: .*centroid"):
        dicom_seg.FORMAT.write(tmp_path / ".tmp-1-segmentation.dcm", prediction, context)


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_seg_format_writes_the_requested_type_with_the_marker(tmp_path: Path, seg_type: str) -> None:
    series = _series(tmp_path, **OBLIQUE)
    labels = _labels(series.geometry.shape)
    package = make_package(tmp_path / "model")
    out = tmp_path / "segmentation.dcm"
    context = WriteContext(package, "1", options=WriterOptions(seg_type=seg_type))  # type: ignore[arg-type]

    dicom_seg.FORMAT.write(out, _prediction(series, labels, package.segmentation.structure_names), context)

    assert dciodvfy_errors(out) == []
    seg = pydicom.dcmread(out)
    sop_class = {"BINARY": pydicom.uid.SegmentationStorage, "LABELMAP": "1.2.840.10008.5.1.4.1.1.66.7"}[seg_type]
    assert seg.SOPClassUID == sop_class
    assert seg.SegmentationType == seg_type
    assert seg.SeriesDescription == "innereye-batch TestOrgans NOT FOR CLINICAL USE"
    assert seg.ContentDescription.endswith("NOT FOR CLINICAL USE")
    np.testing.assert_array_equal(read_back_labels(out, series), labels)


def test_marker_survives_long_model_names() -> None:
    text = dicom_seg.with_marker("innereye-batch " + "A" * 80, "NOT FOR CLINICAL USE")
    assert len(text) == 64 and text.endswith(" NOT FOR CLINICAL USE")
    assert dicom_seg.with_marker("short", "") == "short"


def test_a_description_too_long_for_the_marker_loses_whole_words_never_half_of_one() -> None:
    """The sample model's SEG said "SamplePhantomAbdomen segmentation, 4 struct NOT FOR CLINICAL USE"."""
    marker = "NOT FOR CLINICAL USE"
    wordings = ("SamplePhantomAbdomen segmentation, 4 structures", "SamplePhantomAbdomen segmentation")
    assert dicom_seg.with_marker(wordings, marker) == "SamplePhantomAbdomen segmentation NOT FOR CLINICAL USE"
    assert dicom_seg.with_marker(wordings, "") == wordings[0]  # it fits without the marker
    long_words = "innereye-batch " + " ".join(["Abdomen"] * 8)
    text = dicom_seg.with_marker(long_words, marker)
    assert text == "innereye-batch Abdomen Abdomen Abdomen NOT FOR CLINICAL USE" and len(text) <= 64


def _rtstruct(tmp_path: Path) -> tuple[Path, SeriesInfo, dict[str, np.ndarray]]:
    series = _series(tmp_path, **OBLIQUE)
    labels = _labels(series.geometry.shape)
    package = make_package(tmp_path / "model")
    out = tmp_path / "rtstruct.dcm"
    write_rtstruct(out, labels, series, package, software_version="1")
    return out, series, structure_masks(labels, package.segmentation.structures)


def test_rtstruct_check_passes_a_correct_file_and_names_a_contour_on_the_wrong_image(tmp_path: Path) -> None:
    out, series, masks = _rtstruct(tmp_path)
    check_rtstruct(out, "rtstruct.dcm", masks, series)

    rt = pydicom.dcmread(out)
    contour = rt.ROIContourSequence[0].ContourSequence[0]
    uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
    others = [s.sop_instance_uid for s in series.slices if s.sop_instance_uid != uid]
    contour.ContourImageSequence[0].ReferencedSOPInstanceUID = others[0]
    rt.save_as(out)
    with pytest.raises(ReadBackError, match=r"rtstruct\.dcm: ROI 'liver' contour 1: references image"):
        check_rtstruct(out, "rtstruct.dcm", masks, series)


def test_rtstruct_check_refuses_a_contour_off_the_slice_planes(tmp_path: Path) -> None:
    out, series, masks = _rtstruct(tmp_path)
    rt = pydicom.dcmread(out)
    contour = rt.ROIContourSequence[1].ContourSequence[0]
    points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
    points += 0.4 * series.geometry.spacing[0] * series.geometry.direction_matrix[:, 2]  # 0.4 slice up
    contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
    rt.save_as(out)
    with pytest.raises(ReadBackError, match="do not lie on one slice plane"):
        check_rtstruct(out, "rtstruct.dcm", masks, series)


def test_rtstruct_check_refuses_a_contour_of_two_points(tmp_path: Path) -> None:
    out, series, masks = _rtstruct(tmp_path)
    rt = pydicom.dcmread(out)
    contour = rt.ROIContourSequence[2].ContourSequence[0]
    contour.ContourData = contour.ContourData[:6]
    contour.NumberOfContourPoints = 2
    rt.save_as(out)
    with pytest.raises(ReadBackError, match="2 points"):
        check_rtstruct(out, "rtstruct.dcm", masks, series)


def test_a_tilted_stack_is_checked_where_its_slices_lie(tmp_path: Path) -> None:
    """Slices sheared by a gantry tilt: SEG frames and contours sit at each image's own position; a check that
    assumed a regular grid would see every centroid moved."""
    series = tilted_series(write_series(tmp_path / "dicom", shape=(9, 16, 14)), shift_mm=1.5)
    labels = _labels(series.geometry.shape)
    package = make_package(tmp_path / "model")
    names = package.segmentation.structure_names
    seg, rt = tmp_path / "seg.dcm", tmp_path / "rt.dcm"
    dicom_seg.write_dicom_seg(seg, labels, series, package, software_version="1")
    write_rtstruct(rt, labels, series, package, software_version="1")

    check_seg(seg, "segmentation.dcm", labels, series, names)
    check_rtstruct(rt, "rtstruct.dcm", structure_masks(labels, package.segmentation.structures), series)
    regular = replace(series, slices=series_info_from(write_series(tmp_path / "other", shape=(9, 16, 14))).slices)
    with pytest.raises(ReadBackError, match=r"frame 1 at .* mm is not on a slice of the source series"):
        check_seg(seg, "segmentation.dcm", labels, regular, names)  # the same file against unsheared slices
    renamed = replace(
        series, slices=tuple(replace(s, sop_instance_uid=f"1.2.3.{i}") for i, s in enumerate(series.slices))
    )
    with pytest.raises(
        ReadBackError, match=r"references \[\('.*', \[\]\)\], but the source image at its plane is 1\.2\.3\."
    ):
        check_seg(seg, "segmentation.dcm", labels, renamed, names)  # right places, other images: wrong references


def test_a_name_cut_at_a_space_by_dicom_is_written_and_read_back_as_dicom_keeps_it(tmp_path: Path) -> None:
    """A 66-character name whose 64th character is a space: DICOM keeps 63 (trailing spaces are padding), and
    both files are checked against that label (the read-back used to expect 64 and fail every series)."""
    from innereye_batch.model.spec import Structure, dicom_label
    from innereye_batch.writers import rtstruct

    long = "Clinical target volume of the lymph nodes, elective, dose level 1 a"[:63] + " y"
    structures = (Structure(long), Structure("other", (0, 200, 0)))
    package = make_package(tmp_path / "model", structures)
    series = _series(tmp_path)
    labels = _labels(series.geometry.shape)
    labels[labels == 3] = 2
    prediction = _prediction(series, labels, (long, "other"))
    context = WriteContext(package, "1", options=WriterOptions())
    dicom_seg.FORMAT.write(tmp_path / "segmentation.dcm", prediction, context)
    rtstruct.FORMAT.write(tmp_path / "rtstruct.dcm", prediction, context)
    assert len(dicom_label(long)) == 63
    assert str(pydicom.dcmread(tmp_path / "segmentation.dcm").SegmentSequence[0].SegmentLabel) == dicom_label(long)
    assert str(pydicom.dcmread(tmp_path / "rtstruct.dcm").StructureSetROISequence[0].ROIName) == dicom_label(long)


def _l_shape(labels: np.ndarray, value: int, z: int) -> np.ndarray:
    """An asymmetric L on slice ``z`` and the same L turned 180 degrees about its own centroid (same count, same
    centroid), as two label maps."""
    shape = np.zeros(labels.shape[1:], bool)
    shape[10:31, 10:15] = True
    shape[26:31, 10:31] = True  # centroid (23.46, 16.54): turned, it lands on the grid at 2 x centroid - index
    rows, columns = np.nonzero(shape)
    turned = labels.copy()
    labels[z][shape] = value
    turned[z, np.rint(2 * rows.mean() - rows).astype(int), np.rint(2 * columns.mean() - columns).astype(int)] = value
    return turned


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_a_structure_turned_about_its_centroid_is_refused_in_both_formats(tmp_path: Path, seg_type: str) -> None:
    """Same voxel count, same centroid, 135 of 185 voxels elsewhere: a check of counts and centroids alone passed
    it; voxel for voxel it fails."""
    series = series_info_from(write_series(tmp_path / "dicom", shape=(5, 64, 64), spacing=(3.0, 1.0, 1.0)))
    package = make_package(tmp_path / "model")
    names = package.segmentation.structure_names
    labels = np.zeros(series.geometry.shape, np.uint8)
    labels[1:4, 40:60, 40:60] = 2
    turned = _l_shape(labels, 1, 2)
    seg, rt = tmp_path / "seg.dcm", tmp_path / "rt.dcm"
    dicom_seg.write_dicom_seg(seg, turned, series, package, software_version="1", segmentation_type=seg_type)  # type: ignore[arg-type]
    write_rtstruct(rt, turned, series, package, software_version="1")
    masks = structure_masks(labels, package.segmentation.structures)

    message = rf"read back does not match the label map: '{names[0]}': 270 voxel\(s\) differ .*same count and centroid"
    with pytest.raises(ReadBackError, match=message):
        check_seg(seg, "segmentation.dcm", labels, series, names)
    with pytest.raises(ReadBackError, match=message):
        check_rtstruct(rt, "rtstruct.dcm", masks, series)
    check_seg(seg, "segmentation.dcm", turned, series, names)  # against what was written: passes
    check_rtstruct(rt, "rtstruct.dcm", structure_masks(turned, package.segmentation.structures), series)


def test_an_rtstruct_without_a_one_voxel_structure_or_a_small_island_is_refused(tmp_path: Path) -> None:
    series = series_info_from(write_series(tmp_path / "dicom", shape=(5, 64, 64), spacing=(3.0, 1.0, 1.0)))
    package = make_package(tmp_path / "model")
    names = package.segmentation.structure_names
    labels = np.zeros(series.geometry.shape, np.uint8)
    labels[0, 50, 50] = 1  # one voxel
    labels[1:4, 35:63, 35:63] = 2  # 2352 voxels
    labels[3, 5, 60] = 2  # and an island of one voxel
    masks = structure_masks(labels, package.segmentation.structures)
    out = tmp_path / "rt.dcm"
    write_rtstruct(out, labels, series, package, software_version="1")
    check_rtstruct(out, "rtstruct.dcm", masks, series)

    rt = pydicom.dcmread(out)
    del rt.ROIContourSequence[0].ContourSequence
    rt.save_as(tmp_path / "no_dot.dcm")
    with pytest.raises(ReadBackError, match=rf"'{names[0]}': 0 voxels, the label map has 1"):
        check_rtstruct(tmp_path / "no_dot.dcm", "rtstruct.dcm", masks, series)

    rt = pydicom.dcmread(out)
    contours = rt.ROIContourSequence[1].ContourSequence
    rt.ROIContourSequence[1].ContourSequence = [c for c in contours if int(c.NumberOfContourPoints) > 4]
    assert len(rt.ROIContourSequence[1].ContourSequence) == len(contours) - 1  # the island's square is gone
    rt.save_as(tmp_path / "no_island.dcm")
    with pytest.raises(ReadBackError, match=rf"'{names[1]}': 2352 voxels, the label map has 2353"):
        check_rtstruct(tmp_path / "no_island.dcm", "rtstruct.dcm", masks, series)


def _seg_to_damage(
    tmp_path: Path, seg_type: str = "BINARY"
) -> tuple[SeriesInfo, np.ndarray, list[str], Path, pydicom.Dataset]:
    """A series, its label map and structure names, and the SEG written of them: its path and its dataset read
    back, for a test to damage and save over it."""
    series = _series(tmp_path)
    labels = _labels(series.geometry.shape)
    package = make_package(tmp_path / "model")
    out = tmp_path / "seg.dcm"
    dicom_seg.write_dicom_seg(out, labels, series, package, software_version="1", segmentation_type=seg_type)  # type: ignore[arg-type]
    return series, labels, list(package.segmentation.structure_names), out, pydicom.dcmread(out)


def test_a_seg_frame_on_another_pixel_grid_than_its_source_slice_is_refused(tmp_path: Path) -> None:
    series, labels, names, out, seg = _seg_to_damage(tmp_path)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.PixelSpacing = [float(v) * 1.1 for v in measures.PixelSpacing]
    seg.save_as(out)
    with pytest.raises(ReadBackError, match=r"frame 1 has other pixel directions or spacing than the source series'"):
        check_seg(out, "segmentation.dcm", labels, series, names)


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
@pytest.mark.parametrize("change", [1, -1], ids=["a-frame-more", "a-frame-fewer"])
def test_a_seg_whose_pixel_frames_and_per_frame_groups_differ_in_number_is_refused(
    tmp_path: Path, seg_type: str, change: int
) -> None:
    """Pixel data with one frame more than the per-frame groups describe (NumberOfFrames raised to match: a frame
    full of foreground that lies on no slice), or one fewer: the file is refused, saying so (a reviewer's find:
    the frame more was accepted, its voxels counted nowhere)."""
    from pydicom.pixels.utils import pack_bits

    series, labels, names, out, seg = _seg_to_damage(tmp_path, seg_type)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    frames = np.concatenate([frames, np.ones_like(frames[:1])]) if change > 0 else frames[:-1]
    seg.NumberOfFrames = frames.shape[0]
    seg.PixelData = pack_bits(frames.ravel()) if seg_type == "BINARY" else frames.astype(np.uint8).tobytes()
    seg.save_as(out)

    items = len(seg.PerFrameFunctionalGroupsSequence)
    message = rf"{items + change} frame\(s\) of pixels but {items} per-frame functional group item\(s\)"
    with pytest.raises(ReadBackError, match=message):
        check_seg(out, "segmentation.dcm", labels, series, names)


def test_a_frame_s_own_pixel_measures_come_before_the_shared_ones(tmp_path: Path) -> None:
    """One frame that carries pixel measures of its own, other than the shared ones: the frame's are the ones
    that place it (the read-back reads the shared groups once for every frame that has none of its own)."""
    series, labels, names, out, seg = _seg_to_damage(tmp_path)
    shared = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    own = pydicom.Dataset()
    own.PixelSpacing = [float(v) * 1.1 for v in shared.PixelSpacing]
    own.SliceThickness = shared.SliceThickness
    seg.PerFrameFunctionalGroupsSequence[2].PixelMeasuresSequence = [own]
    seg.save_as(out)
    with pytest.raises(ReadBackError, match=r"frame 3 has other pixel directions or spacing than the source series'"):
        check_seg(out, "segmentation.dcm", labels, series, names)


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_a_seg_passes_for_cosines_written_to_four_decimals_and_spacings_rounded_per_slice(
    tmp_path: Path, seg_type: str
) -> None:
    """Valid series the pixel-grid check must not refuse: an oblique whose cosines are written to 4 decimals (unit
    length 6e-5 off; the scan normalises them, the SEG copies them as written), and slices whose PixelSpacing
    strings differ by 0.04 % (one stack for the scan; the SEG copies the first file's)."""
    cosines = ["0.9135", "0.4067", "0", "-0.4067", "0.9135", "0"]
    oblique = write_series(
        tmp_path / "oblique",
        shape=(4, 8, 300),
        row_direction=[float(v) for v in cosines[:3]],
        column_direction=[float(v) for v in cosines[3:]],
        edit=lambda k, ds: setattr(ds, "ImageOrientationPatient", cosines),
    )
    rounded = write_series(
        tmp_path / "rounded",
        shape=(4, 8, 512),
        spacing=(2.5, 0.7, 0.7),
        edit=lambda k, ds: setattr(ds, "PixelSpacing", ["0.7", "0.7"] if k == 0 else ["0.7003", "0.7003"]),
        instance_numbers_descending=True,
    )
    package = make_package(tmp_path / "model")
    for generated in (oblique, rounded):
        series = series_info_from(generated)
        labels = np.zeros(series.geometry.shape, np.uint8)
        labels[1:3, 2:6, 5:200] = 1
        out = tmp_path / f"{generated.series_instance_uid}.dcm"
        dicom_seg.write_dicom_seg(out, labels, series, package, software_version="1", segmentation_type=seg_type)  # type: ignore[arg-type]
        check_seg(out, "segmentation.dcm", labels, series, package.segmentation.structure_names)


def _replace_uid(dataset: pydicom.Dataset, keyword: str, value: str) -> None:
    """Every ``keyword`` element in ``dataset``, its sequences included, set to ``value``."""
    for element in list(dataset):
        if element.keyword == keyword:
            element.value = value
        elif element.VR == "SQ":
            for item in element.value:
                _replace_uid(item, keyword, value)


@pytest.mark.parametrize(
    "keyword", ["FrameOfReferenceUID", "StudyInstanceUID", "SeriesInstanceUID", "ReferencedFrameOfReferenceUID"]
)
def test_outputs_in_another_study_space_or_series_are_refused(tmp_path: Path, keyword: str) -> None:
    """A mutation-testing reviewer's find: a SEG or RT Structure Set whose frame of reference, study or referenced
    series was another was accepted (its voxels right, but a viewer overlays it in the wrong space, or refuses it).
    Each such UID, wherever the file names it, must be the source's."""
    series = _series(tmp_path / "seg")
    labels = _labels(series.geometry.shape)
    package = make_package(tmp_path / "seg" / "model")
    names = package.segmentation.structure_names
    seg = tmp_path / "seg.dcm"
    dicom_seg.write_dicom_seg(seg, labels, series, package, software_version="1")
    rt, rt_series, masks = _rtstruct(tmp_path)
    for path, check in (
        (seg, lambda p: check_seg(p, "seg", labels, series, names)),
        (rt, lambda p: check_rtstruct(p, "rt", masks, rt_series)),
    ):
        check(path)  # as written: accepted
        dataset = pydicom.dcmread(path)
        if keyword == "SeriesInstanceUID":  # only where the file names the series it refers to
            for sequence in ("ReferencedSeriesSequence", "ReferencedFrameOfReferenceSequence"):
                for item in dataset.get(sequence, []):
                    _replace_uid(item, keyword, "1.2.3.4")
        else:
            _replace_uid(dataset, keyword, "1.2.3.4")
        changed = tmp_path / f"changed-{path.name}"
        dataset.save_as(changed)
        if pydicom.dcmread(changed) == pydicom.dcmread(path):
            continue  # a SEG names no ReferencedFrameOfReferenceUID
        with pytest.raises(ReadBackError, match="not the source series'"):
            check(changed)


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
@pytest.mark.parametrize(
    "destinations",
    [((1, 10, 3), (3, 29, 36)), ((1, 3, 18), (3, 36, 21)), ((5, 15, 20), (0, 35, 2))],
    ids=["same-slice", "box-corner", "no-frame"],
)
def test_the_seg_check_counts_each_moved_voxel_where_frame_and_mask_boxes_only_partly_meet(
    tmp_path: Path, seg_type: str, destinations: tuple[tuple[int, int, int], ...]
) -> None:
    """Voxels of a structure moved out of its box (within a slice, to a corner of the box, to a slice without its
    frame): the file's frames are compared within their own boxes, so the count of differing voxels must still
    be the voxel-by-voxel one."""
    series = series_info_from(write_series(tmp_path / "dicom", shape=(6, 40, 40), spacing=(2.0, 1.0, 1.0)))
    package = make_package(tmp_path / "model")
    names = package.segmentation.structure_names
    labels = np.zeros(series.geometry.shape, np.uint8)
    labels[1:4, 10:30, 12:28] = 1
    labels[2:4, 5:9, 30:36] = 2  # a neighbour, so that a frame of a LABELMAP holds two segments
    written = labels.copy()
    for corner, destination in zip([(1, 10, 12), (3, 29, 27)], destinations, strict=True):
        written[corner] = 0  # the same count, two voxels elsewhere: the centroid moves by far less than tolerance
        written[destination] = 1
    seg = tmp_path / "seg.dcm"
    dicom_seg.write_dicom_seg(seg, written, series, package, software_version="1", segmentation_type=seg_type)  # type: ignore[arg-type]

    expected = int(np.count_nonzero((labels == 1) != (written == 1)))
    assert expected == 4
    with pytest.raises(ReadBackError, match=rf"'{names[0]}': {expected} voxel\(s\) differ"):
        check_seg(seg, "segmentation.dcm", labels, series, names)
    check_seg(seg, "segmentation.dcm", written, series, names)
