"""DICOM-SEG output validates with dciodvfy, reads back with highdicom into the same masks, on the same grid."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import JPEGLSLossless

from innereye_batch.dicom.series import SeriesInfo, SliceRef
from innereye_batch.errors import SeriesError
from innereye_batch.model.spec import Structure
from innereye_batch.writers.dicom_seg import TYPE2_PATIENT_AND_STUDY, segmented_property_type, write_dicom_seg
from tests.factory import rotation_direction, write_series
from tests.writers.helpers import blob_labels, dciodvfy_errors, make_package, read_back_labels, series_info_from

SOFTWARE_VERSION = "0.1.0-test"


def assert_frames_on_source_grid(path: Path, series: SeriesInfo) -> None:
    """Every frame's position and the shared orientation equal those of the source image it references."""
    seg = pydicom.dcmread(path)
    positions = {s.sop_instance_uid: np.asarray(s.position) for s in series.slices}
    orientation = np.asarray(seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient)
    np.testing.assert_allclose(orientation, series.geometry.direction_matrix[:, :2].T.ravel(), atol=1e-6)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=np.float64)
        np.testing.assert_allclose(position, positions[source_uid], atol=1e-4)


GRIDS = {
    "axial": {},
    "oblique": dict(zip(("row_direction", "column_direction"), rotation_direction((1.0, 2.0, 0.5), 25.0), strict=True)),
    "normal_minus_z": {"column_direction": (0.0, -1.0, 0.0)},
    "mr_jpeg_ls_source": {"modality": "MR", "transfer_syntax": JPEGLSLossless},
}


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_seg_validates_and_reads_back_equal(tmp_path: Path, grid: str) -> None:
    generated = write_series(tmp_path / "dicom", shape=(6, 12, 10), **GRIDS[grid])  # type: ignore[arg-type]
    series = series_info_from(generated)
    package = make_package(tmp_path / "model")
    labels = blob_labels(series.geometry.shape, 3)
    out = tmp_path / "segmentation.dcm"

    write_dicom_seg(out, labels, series, package, software_version=SOFTWARE_VERSION)

    assert dciodvfy_errors(out) == []
    np.testing.assert_array_equal(read_back_labels(out, series), labels)
    assert_frames_on_source_grid(out, series)


def test_seg_header_describes_model_and_references_every_source_image(tmp_path: Path) -> None:
    generated = write_series(tmp_path / "dicom", shape=(5, 8, 8), series_number=7)
    series = series_info_from(generated)
    package = make_package(tmp_path / "model", version="2.1")
    out = tmp_path / "segmentation.dcm"

    write_dicom_seg(out, blob_labels(series.geometry.shape, 3), series, package, software_version=SOFTWARE_VERSION)

    seg = pydicom.dcmread(out)
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage
    assert seg.SegmentationType == "BINARY"
    assert seg.SeriesDescription == "innereye-batch TestOrgans"
    assert seg.Manufacturer == "innereye-batch"
    assert seg.SoftwareVersions == SOFTWARE_VERSION
    assert seg.InstanceNumber == 1
    assert seg.SeriesNumber == 1007
    assert seg.ContentLabel == "TESTORGANS"
    assert seg.SeriesInstanceUID != generated.series_instance_uid
    assert seg.StudyInstanceUID == generated.study_instance_uid
    assert seg.FrameOfReferenceUID == generated.frame_of_reference_uid
    assert "PatientName" in seg  # a SEG belongs to the patient's study, so it carries the patient module
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == generated.series_instance_uid
    assert [i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence] == list(
        generated.sop_instance_uids
    )

    segments = seg.SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["liver", "spleen", "left kidney"]
    assert [s.SegmentNumber for s in segments] == [1, 2, 3]
    for segment, structure in zip(segments, package.segmentation.structures, strict=True):
        colour = hd.color.CIELabColor.from_dicom_value(tuple(segment.RecommendedDisplayCIELabValue))
        assert np.abs(np.subtract(colour.to_rgb(), structure.colour)).max() <= 1
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
        (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
        assert algorithm.AlgorithmName == "TestOrgans"
        assert algorithm.AlgorithmVersion == "2.1"
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        for checkpoint in package.checkpoints:
            assert checkpoint.sha256 in algorithm.AlgorithmParameters
    assert segments[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    kidney_type = segments[2].SegmentedPropertyTypeCodeSequence[0]
    assert kidney_type.CodeMeaning == "Kidney"
    assert kidney_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"


def test_version_defaults_to_checkpoint_hash_prefixes(tmp_path: Path) -> None:
    generated = write_series(tmp_path / "dicom", shape=(3, 6, 6))
    series = series_info_from(generated)
    package = make_package(tmp_path / "model", checkpoints=3)
    out = tmp_path / "segmentation.dcm"

    write_dicom_seg(out, blob_labels(series.geometry.shape, 3), series, package, software_version=SOFTWARE_VERSION)

    algorithm = pydicom.dcmread(out).SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == "sha256:" + "+".join(c.sha256[:8] for c in package.checkpoints)


def test_only_frames_with_foreground_are_stored(tmp_path: Path) -> None:
    generated = write_series(tmp_path / "dicom", shape=(6, 8, 8))
    series = series_info_from(generated)
    package = make_package(tmp_path / "model")
    labels = np.zeros(series.geometry.shape, np.uint8)
    labels[2:4, 3:6, 2:5] = 2  # one structure present, on two slices
    out = tmp_path / "segmentation.dcm"

    write_dicom_seg(out, labels, series, package, software_version=SOFTWARE_VERSION)

    assert dciodvfy_errors(out) == []
    seg = pydicom.dcmread(out)
    assert seg.NumberOfFrames == 2
    assert len(seg.SegmentSequence) == 3  # absent structures are still described
    np.testing.assert_array_equal(read_back_labels(out, series), labels)


def test_empty_label_map_still_writes_a_valid_seg(tmp_path: Path) -> None:
    generated = write_series(tmp_path / "dicom", shape=(4, 8, 8))
    series = series_info_from(generated)
    package = make_package(tmp_path / "model")
    labels = np.zeros(series.geometry.shape, np.uint8)
    out = tmp_path / "segmentation.dcm"

    write_dicom_seg(out, labels, series, package, software_version=SOFTWARE_VERSION)

    assert dciodvfy_errors(out) == []
    assert pydicom.dcmread(out).NumberOfFrames == 4 * 3  # every frame kept, all empty
    np.testing.assert_array_equal(read_back_labels(out, series), labels)


def test_labelmap_segmentation_type(tmp_path: Path) -> None:
    generated = write_series(tmp_path / "dicom", shape=(5, 10, 9))
    series = series_info_from(generated)
    package = make_package(tmp_path / "model")
    labels = blob_labels(series.geometry.shape, 3)
    out = tmp_path / "segmentation.dcm"

    write_dicom_seg(out, labels, series, package, software_version=SOFTWARE_VERSION, segmentation_type="LABELMAP")

    assert dciodvfy_errors(out) == []
    assert pydicom.dcmread(out).SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"  # Label Map Segmentation
    np.testing.assert_array_equal(read_back_labels(out, series), labels)


def _multi_frame_series(tmp_path: Path) -> tuple[SeriesInfo, Path]:
    """A legacy-converted enhanced CT (one multi-frame file) made from a generated single-frame series.

    highdicom orders the frames itself (today: descending along the slice normal); the SliceRefs follow.
    """
    generated = write_series(tmp_path / "dicom", shape=(5, 8, 7))
    datasets = [pydicom.dcmread(p) for p in generated.paths]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        datasets, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1
    )
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    single = series_info_from(generated)
    frame_of = {
        tuple(np.round(np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float), 3)): i
        for i, f in enumerate(enhanced.PerFrameFunctionalGroupsSequence)
    }
    slices = tuple(
        SliceRef(path, enhanced.SOPInstanceUID, s.position, frame=frame_of[tuple(np.round(s.position, 3))])
        for s in single.slices
    )
    series = replace(
        single,
        series_instance_uid=enhanced.SeriesInstanceUID,
        sop_class_uid=enhanced.SOPClassUID,
        slices=slices,
    )
    return series, path


def test_multi_frame_source(tmp_path: Path) -> None:
    series, _ = _multi_frame_series(tmp_path)
    assert sorted(s.frame for s in series.slices) == [0, 1, 2, 3, 4]  # type: ignore[type-var]
    package = make_package(tmp_path / "model")
    labels = blob_labels(series.geometry.shape, 3)
    out = tmp_path / "segmentation.dcm"

    write_dicom_seg(out, labels, series, package, software_version=SOFTWARE_VERSION)

    assert dciodvfy_errors(out) == []
    seg = hd.seg.segread(out)
    (source_uid,) = series.sop_instance_uids
    by_frame = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=source_uid,
        source_frame_numbers=[s.frame + 1 for s in series.slices],  # type: ignore[operator]
        combine_segments=True,
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(by_frame, labels)


def test_multi_frame_stack_over_several_files_is_refused(tmp_path: Path) -> None:
    series, path = _multi_frame_series(tmp_path)
    other = tmp_path / "copy.dcm"
    shutil.copy(path, other)
    split = replace(series, slices=(*series.slices[:2], *(replace(s, path=other) for s in series.slices[2:])))
    with pytest.raises(SeriesError, match="multi-frame"):
        write_dicom_seg(
            tmp_path / "x.dcm",
            blob_labels(series.geometry.shape, 3),
            split,
            make_package(tmp_path / "model"),
            software_version=SOFTWARE_VERSION,
        )


def test_labels_beyond_the_structures_are_refused(tmp_path: Path) -> None:
    generated = write_series(tmp_path / "dicom", shape=(3, 6, 6))
    series = series_info_from(generated)
    package = make_package(tmp_path / "model", structures=[Structure("liver")])
    labels = np.full(series.geometry.shape, 2, np.uint8)
    with pytest.raises(ValueError, match="label 2"):
        write_dicom_seg(tmp_path / "x.dcm", labels, series, package, software_version=SOFTWARE_VERSION)


@pytest.mark.parametrize(
    ("name", "meaning", "side"),
    [
        ("liver", "Liver", None),
        ("spinal_cord", "Spinal cord", None),
        ("SpinalCord", "Spinal cord", None),
        ("kidney_l", "Kidney", "Left"),
        ("Right Kidney", "Kidney", "Right"),
        ("seminal vesicles", "Seminal Vesicle", None),
        ("external", codes.SCT.Organ.meaning, None),
        ("tumour_mass_x", codes.SCT.Organ.meaning, None),
    ],
)
def test_segmented_property_type_by_name(name: str, meaning: str, side: str | None) -> None:
    code, laterality = segmented_property_type(name)
    assert code.meaning == meaning
    assert (laterality.meaning if laterality else None) == side


@pytest.mark.parametrize("source_charset", [None, "ISO_IR 100"])
def test_non_ascii_structure_name_is_written_in_utf8(tmp_path: Path, source_charset: str | None) -> None:
    """Structure names are the model's text: one that is not ASCII makes the SEG UTF-8 (with no character set
    declared only ASCII is valid; Latin-1 would not hold 肝臓); the patient's name keeps its letters."""
    generated = write_series(tmp_path / "dicom", shape=(4, 8, 8))
    if source_charset:
        for path in generated.paths:
            ds = pydicom.dcmread(path)
            ds.SpecificCharacterSet, ds.PatientName = source_charset, "Müller^Jörg"
            ds.save_as(path, enforce_file_format=True)
    series = series_info_from(generated)
    package = make_package(tmp_path / "model", structures=[Structure("Leber_ä"), Structure("肝臓")])
    labels = blob_labels(series.geometry.shape, 2)
    out = tmp_path / "segmentation.dcm"

    write_dicom_seg(out, labels, series, package, software_version=SOFTWARE_VERSION)

    assert dciodvfy_errors(out) == []
    seg = pydicom.dcmread(out)
    assert seg.SpecificCharacterSet == "ISO_IR 192"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Leber_ä", "肝臓"]
    assert str(seg.PatientName) == ("Müller^Jörg" if source_charset else "Doe^Jane")
    np.testing.assert_array_equal(read_back_labels(out, series), labels)


def test_source_without_type2_patient_and_study_attributes(tmp_path: Path) -> None:
    """An anonymising export may delete PatientName and the like: the SEG then has them empty, as type 2 allows
    (highdicom failed with an AttributeError, and the series with it)."""
    generated = write_series(tmp_path / "dicom", shape=(4, 8, 8))
    for path in generated.paths:
        ds = pydicom.dcmread(path)
        for keyword in TYPE2_PATIENT_AND_STUDY:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(path, enforce_file_format=True)
    series = series_info_from(generated)
    labels = blob_labels(series.geometry.shape, 3)
    out = tmp_path / "segmentation.dcm"

    write_dicom_seg(out, labels, series, make_package(tmp_path / "model"), software_version=SOFTWARE_VERSION)

    assert dciodvfy_errors(out) == []
    seg = pydicom.dcmread(out)
    assert all(seg[keyword].value in ("", None) for keyword in TYPE2_PATIENT_AND_STUDY)
    np.testing.assert_array_equal(read_back_labels(out, series), labels)


def test_source_without_slice_thickness(tmp_path: Path) -> None:
    """SliceThickness is type 2 and anonymising exports delete it: the SEG is written, valid and checked, its
    frames as thick as the slices are apart (highdicom read it from every source image, and every such series
    failed when its SEG was written)."""

    def without_thickness(index: int, ds: pydicom.Dataset) -> None:
        del ds.SliceThickness

    generated = write_series(tmp_path / "dicom", shape=(4, 8, 8), edit=without_thickness)
    assert "SliceThickness" not in pydicom.dcmread(generated.paths[0])

    series = series_info_from(generated)

    out = _written_and_checked(tmp_path, series, "segmentation")

    measures = pydicom.dcmread(out).SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(series.geometry.spacing[0])  # the frames tile the stack


def _scanned(folder: Path) -> list[SeriesInfo]:
    from innereye_batch.dicom.scan import scan_tree

    return sorted(scan_tree(folder).series, key=lambda s: s.key)


def _written_and_checked(tmp_path: Path, series: SeriesInfo, name: str) -> Path:
    """The SEG of ``series`` written, valid for dciodvfy and passing the run's read-back check (its frames on the
    source's slices, each referencing the image at its plane and only it)."""
    from innereye_batch.writers.seg_readback import check_seg

    package = make_package(tmp_path / "model")
    labels = blob_labels(series.geometry.shape, 3)
    out = tmp_path / f"{name}.dcm"
    write_dicom_seg(out, labels, series, package, software_version=SOFTWARE_VERSION)
    assert dciodvfy_errors(out) == []
    check_seg(out, out.name, labels, series, package.segmentation.structure_names)
    return out


def test_a_stack_whose_orientation_is_written_with_jitter_gets_its_seg(tmp_path: Path) -> None:
    """ImageOrientationPatient differing by 2e-6 from slice to slice is one orientation for the scan (and the
    standard's DS precision); highdicom needs it written identically: the SEG is written, not the series failed."""
    generated = write_series(tmp_path / "dicom", shape=(6, 12, 10))
    for path in generated.paths[1::2]:
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [float(v) + 2e-6 for v in ds.ImageOrientationPatient]
        ds.save_as(path, enforce_file_format=True)
    (series,) = _scanned(tmp_path / "dicom")
    assert not series.problems
    seg = pydicom.dcmread(_written_and_checked(tmp_path, series, "jitter"))
    written = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert [float(v) for v in written] == [float(v) for v in pydicom.dcmread(series.files[0]).ImageOrientationPatient]


def test_an_enhanced_source_with_per_frame_orientation_gets_its_seg(tmp_path: Path) -> None:
    """Philips, Siemens XA30 and Agfa enhanced MR write PlaneOrientationSequence and PixelMeasuresSequence per
    frame (all equal), which highdicom refuses as a source: the header copy it gets has them shared."""
    from tests.factory import write_enhanced_series

    generated = write_enhanced_series(tmp_path / "dicom" / "enhanced.dcm", shuffle_frames=True)
    ds = pydicom.dcmread(generated.paths[0])
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation, measures = shared.PlaneOrientationSequence, shared.PixelMeasuresSequence
    del shared.PlaneOrientationSequence, shared.PixelMeasuresSequence  # per frame, as Philips, XA30 and Agfa write
    for frame in ds.PerFrameFunctionalGroupsSequence:
        frame.PlaneOrientationSequence, frame.PixelMeasuresSequence = orientation, measures
        frame.PixelValueTransformationSequence = shared.PixelValueTransformationSequence
    ds.SharedFunctionalGroupsSequence = []  # type 2: present and empty when every macro is per frame
    ds.save_as(generated.paths[0], enforce_file_format=True)
    (series,) = _scanned(tmp_path / "dicom")
    _written_and_checked(tmp_path, series, "per_frame")


def test_each_stack_of_a_two_time_point_enhanced_file_gets_its_own_seg(tmp_path: Path) -> None:
    """One enhanced file, two temporal positions interleaved (the scan splits it into .t1 and .t2): every frame
    of a stack's SEG references that stack's own frame at its plane, never the other time point's."""
    from tests.factory import write_enhanced_series

    generated = write_enhanced_series(tmp_path / "dicom" / "enhanced.dcm", shape=(5, 10, 8))
    ds = pydicom.dcmread(generated.paths[0])
    pixels = ds.pixel_array
    frames = []
    for k, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        for time in (1, 2):
            item = pydicom.Dataset()
            item.PlanePositionSequence = frame.PlanePositionSequence
            content = pydicom.Dataset()
            content.TemporalPositionIndex, content.DimensionIndexValues = time, [time, k + 1]
            item.FrameContentSequence = [content]
            frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.NumberOfFrames = len(frames)
    ds.PixelData = np.repeat(pixels, 2, axis=0).tobytes()
    ds.save_as(generated.paths[0], enforce_file_format=True)
    stacks = _scanned(tmp_path / "dicom")
    assert [s.key.rsplit(".", 1)[-1] for s in stacks] == ["t1", "t2"]
    for stack, parity in zip(stacks, (1, 0), strict=True):
        assert {s.frame % 2 for s in stack.slices if s.frame is not None} == {1 - parity}
        seg = pydicom.dcmread(_written_and_checked(tmp_path, stack, stack.key.rsplit(".", 1)[-1]))
        referenced = {
            int(reference.ReferencedFrameNumber)
            for frame in seg.PerFrameFunctionalGroupsSequence
            for reference in frame.DerivationImageSequence[0].SourceImageSequence
        }
        assert referenced <= {s.frame + 1 for s in stack.slices if s.frame is not None}


def test_dates_an_anonymiser_starred_out_are_written_empty(tmp_path: Path) -> None:
    """A real UIH corpus carries PatientBirthDate "***": highdicom refuses it, and every series failed with all
    its outputs. Such a date or time is type 2 and unknown: written empty."""
    generated = write_series(tmp_path / "dicom", shape=(4, 12, 10))
    for path in generated.paths:
        ds = pydicom.dcmread(path)
        ds.PatientBirthDate, ds.StudyTime = "***", "ab"
        ds.save_as(path, enforce_file_format=True)
    (series,) = _scanned(tmp_path / "dicom")
    seg = pydicom.dcmread(_written_and_checked(tmp_path, series, "starred"))
    assert (
        seg.PatientBirthDate == ""
        and seg.StudyTime == ""
        and seg.StudyDate == pydicom.dcmread(generated.paths[0]).StudyDate
    )


def test_a_multi_frame_source_without_functional_groups_is_refused_clearly(tmp_path: Path) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "X", "1", "CT", 1, 1
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [-10, -10, 5], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1, 1], 2
    ds.NumberOfFrames, ds.FrameIncrementPointer, ds.GridFrameOffsetVector = 6, 0x3004000C, [0, 2, 4, 6, 8, 10]
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = np.zeros((6, 16, 16), np.int16).tobytes()
    (tmp_path / "dicom").mkdir()
    ds.save_as(tmp_path / "dicom" / "legacy.dcm", enforce_file_format=True)
    (series,) = _scanned(tmp_path / "dicom")
    with pytest.raises(SeriesError, match="needs a multi-frame source with functional groups"):
        write_dicom_seg(
            tmp_path / "seg.dcm",
            blob_labels(series.geometry.shape, 3),
            series,
            make_package(tmp_path / "model"),
            software_version=SOFTWARE_VERSION,
        )


_WRITTEN_PER_FILE = (
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "ContentDate",
    "ContentTime",
    "SeriesDate",
    "SeriesTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
)
"""Top-level elements each writing gives a new value (UIDs and the time of writing)."""
_NESTED_PER_FILE = frozenset({"ContributionDateTime", "DimensionOrganizationUID"})


def _without_values_of_the_writing(ds: pydicom.Dataset, top: bool = True) -> pydicom.Dataset:
    """``ds`` with the UIDs and times each writing makes emptied (in place), references to the sources kept."""
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                _without_values_of_the_writing(item, top=False)
        elif element.keyword in _NESTED_PER_FILE or (top and element.keyword in _WRITTEN_PER_FILE):
            element.value = ""
    return ds


def _lossy(index: int, ds: pydicom.Dataset) -> None:
    ds.LossyImageCompression, ds.LossyImageCompressionRatio, ds.LossyImageCompressionMethod = "01", "8", "ISO_10918_1"


def _latin_names(index: int, ds: pydicom.Dataset) -> None:
    ds.SpecificCharacterSet, ds.PatientName, ds.StudyDescription = "ISO_IR 100", "Müller^Jörg", "Thorax"
    del ds.SliceThickness


@pytest.mark.parametrize(
    "variant",
    [GRIDS["oblique"], GRIDS["mr_jpeg_ls_source"], {"edit": _lossy}, {"edit": _latin_names}],
    ids=["oblique", "mr-jpeg-ls", "lossy", "latin1-no-thickness"],
)
def test_a_seg_from_the_other_images_tags_alone_equals_the_seg_from_their_whole_headers(
    tmp_path: Path, variant: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The images after a series' first are read for ``SOURCE_TAGS`` only (a scanner's header has hundreds of
    elements): every element of the SEG, frames and references included, equals what their whole headers give."""
    from innereye_batch.writers import dicom_seg

    series = series_info_from(write_series(tmp_path / "dicom", shape=(5, 12, 10), **variant))  # type: ignore[arg-type]
    package = make_package(tmp_path / "model")
    labels = blob_labels(series.geometry.shape, 3)
    tags_alone, whole = tmp_path / "tags.dcm", tmp_path / "whole.dcm"
    write_dicom_seg(tags_alone, labels, series, package, software_version=SOFTWARE_VERSION)
    read_whole = dicom_seg._source_header
    monkeypatch.setattr(dicom_seg, "_source_header", lambda path, series, whole=True: read_whole(path, series))
    write_dicom_seg(whole, labels, series, package, software_version=SOFTWARE_VERSION)

    written = [_without_values_of_the_writing(pydicom.dcmread(path)) for path in (tags_alone, whole)]
    assert len(written[1].PerFrameFunctionalGroupsSequence) > 1
    assert written[0] == written[1]


def test_a_seg_says_lossy_when_an_image_after_the_first_was_lossy_compressed(tmp_path: Path) -> None:
    """LossyImageCompression "01" may never be reset: highdicom copied it from the first image alone, so a series
    whose later images had been lossy compressed gave a SEG that said "00" (a reviewer's observation)."""

    def later_lossy(index: int, ds: pydicom.Dataset) -> None:
        if index > 0:
            _lossy(index, ds)

    series = series_info_from(write_series(tmp_path / "dicom", shape=(4, 8, 8), edit=later_lossy))
    assert "LossyImageCompression" not in pydicom.dcmread(series.files[0])

    seg = pydicom.dcmread(_written_and_checked(tmp_path, series, "segmentation"))

    assert seg.LossyImageCompression == "01"
    assert (seg.LossyImageCompressionRatio, seg.LossyImageCompressionMethod) == (8, "ISO_10918_1")


def _as_jpeg_baseline(path: Path) -> None:
    """``path`` stored again as JPEG Baseline (8-bit, lossy by definition) the way an old PACS export stores it:
    with no LossyImageCompression attribute."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(np.float64)
    eight_bit = np.round(255 * (pixels - pixels.min()) / max(float(np.ptp(pixels)), 1.0)).astype(np.uint8)
    stream = io.BytesIO()
    Image.fromarray(eight_bit).save(stream, format="JPEG", quality=80)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([stream.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path, enforce_file_format=True)


def test_a_seg_says_lossy_when_its_images_lie_in_a_lossy_transfer_syntax_without_saying_so(tmp_path: Path) -> None:
    """JPEG Baseline is lossy by definition (PS3.5 8.2.1): images stored in it are lossy compressed even where
    they lack LossyImageCompression, and a SEG derived from them must say "01" (it said "00")."""
    series = series_info_from(write_series(tmp_path / "dicom", shape=(4, 8, 8)))
    for path in series.files[1:]:
        _as_jpeg_baseline(path)
    later = pydicom.dcmread(series.files[1])
    assert "LossyImageCompression" not in later and later.pixel_array.dtype == np.uint8  # a decodable JPEG

    seg = pydicom.dcmread(_written_and_checked(tmp_path, series, "segmentation"))

    assert seg.LossyImageCompression == "01"
    assert seg.LossyImageCompressionMethod == "ISO_10918_1" and "LossyImageCompressionRatio" not in seg


def test_a_seg_of_one_slice_states_no_spacing_between_slices(tmp_path: Path) -> None:
    """highdicom wrote SpacingBetweenSlices 1 mm for a single plane whatever the slice (3 mm thick here), against
    the NIfTI's and predictions.json's 3 mm (a reviewer's probe): one plane has no spacing to state."""
    series = series_info_from(write_series(tmp_path / "dicom", shape=(1, 12, 10), spacing=(3.0, 0.8, 0.7)))
    seg = pydicom.dcmread(_written_and_checked(tmp_path, series, "segmentation"))
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == 3.0 and "SpacingBetweenSlices" not in measures


@pytest.mark.parametrize(
    ("syntax", "lossy"),
    [("1.2.840.10008.1.2.4.55", True), ("1.2.840.10008.1.2.4.111", True), ("1.2.840.10008.1.2.4.57", False)],
    ids=["jpeg-progressive", "jpeg-xl-recompression", "jpeg-lossless"],
)
def test_retired_lossy_jpeg_processes_and_jpeg_xl_recompression_are_lossy(syntax: str, lossy: bool) -> None:
    from pydicom.dataset import FileMetaDataset

    from innereye_batch.writers.dicom_seg import carry_lossy_compression

    source, derived = pydicom.Dataset(), pydicom.Dataset()
    source.file_meta = FileMetaDataset()
    source.file_meta.TransferSyntaxUID = syntax
    carry_lossy_compression(derived, [source])
    assert derived.get("LossyImageCompression") == ("01" if lossy else None)
