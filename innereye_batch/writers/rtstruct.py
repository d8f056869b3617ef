"""Write a (z, y, x) label map as a DICOM RT Structure Set (rtstruct.dcm) that planning systems import.

The IOD is written with pydicom: highdicom (0.28) has no RT Structure Set writer, and rt-utils (last release
1.2.7, January 2023) pulls in OpenCV with its GUI libraries and contours through pixel centres (see
``contours``). What the file holds:

- Patient and study attributes copied from the source image; a new RT series (Modality RTSTRUCT) whose
  SeriesDescription and StructureSetDescription end with the run's "not for clinical use" marker;
  Manufacturer, model name and SoftwareVersions; ApprovalStatus UNAPPROVED.
- Referenced Frame of Reference Sequence > RT Referenced Study > RT Referenced Series > Contour Image Sequence
  listing every source image (SOP Class and Instance UID).
- One ROI per structure of the model, numbered 1..n in structure order: ROIName, ROIDisplayColor (the
  structure's colour), ROIGenerationAlgorithm AUTOMATIC, RTROIInterpretedType from the model folder (ORGAN by
  default). A structure the model did not find is listed with no contours.
- Per slice of the source, CLOSED_PLANAR contours in patient coordinates (mm, LPS) that reference the source
  image of their slice (and its frame, for a multi-frame source): the outer boundary of every island and the
  boundary of every hole, each as its own contour, no "keyhole" cuts; a reader that fills a slice's contours
  by the even-odd rule gets the mask back. Every contour has at least 3 points. Structures the model folder
  lists in ``fill_holes`` have their holes filled slice by slice first (InnerEye's RT conversion does the
  same), so they carry outer boundaries only.

The format writes the file, then reads it back and rasterises its contours onto the source grid
(``readback.check_rtstruct``): a file that disagrees with the label map fails the series.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.model.spec import ModelPackage, Structure, dicom_label
from innereye_batch.writers.dicom_seg import MANUFACTURER, content_label, model_version, set_character_set, with_marker
from innereye_batch.writers.registry import OutputFormat, WriteContext
from innereye_batch.writers.slice_planes import BoxedMask, SlicePlanes, label_masks

if TYPE_CHECKING:
    from pydicom import Dataset
    from pydicom.dataelem import RawDataElement

    from innereye_batch.tasks.segmentation import SegmentationPrediction

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_REFERENCE_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
"""RT Referenced Study items name the study by this SOP Class (Detached Study Management, retired but still what
the standard's RT examples and planning systems use) and its StudyInstanceUID."""
SERIES_NUMBER_OFFSET = 1001
"""The RTSTRUCT series number is the source's plus this (the DICOM-SEG gets plus 1000)."""
FILENAME = "rtstruct.dcm"
CONTOUR_DATA = 0x30060050
_LO_MAX = 64
_COPIED_FROM_SOURCE = (
    # Patient module, then General Study module (type 2 attributes are written empty when the source lacks them).
    ("PatientName", True),
    ("PatientID", True),
    ("IssuerOfPatientID", False),
    ("PatientBirthDate", True),
    ("PatientSex", True),
    ("StudyDate", True),
    ("StudyTime", True),
    ("ReferringPhysicianName", True),
    ("StudyID", True),
    ("AccessionNumber", True),
    ("StudyDescription", False),
)


def structure_masks(
    labels: np.ndarray, structures: Sequence[Structure], fill_holes: Sequence[str] = ()
) -> dict[str, BoxedMask | None]:
    """Per structure name, the (z, y, x) mask that is contoured, within its bounding box (None when the label map
    does not hold it): label i, with holes filled slice by slice for the structures named in ``fill_holes``.

    A hole filled within the box is one in the whole slice: the box holds every voxel of the structure, so
    background on the box's border reaches the slice's border outside it."""
    from innereye_batch.writers.contours import fill_holes_2d

    masks = {}
    for structure, boxed in zip(structures, label_masks(labels, len(structures)), strict=True):
        if boxed is not None and structure.name in fill_holes:
            for k in range(boxed.mask.shape[0]):
                boxed.mask[k] = fill_holes_2d(boxed.mask[k])
        masks[structure.name] = boxed
    return masks


def write_rtstruct(
    path: Path,
    labels: np.ndarray,
    series: SeriesInfo,
    package: ModelPackage,
    *,
    software_version: str,
    clinical_marker: str = "",
    masks: Mapping[str, BoxedMask | None] | None = None,
) -> None:
    """Write ``labels`` (z, y, x on the source slices, rows in ``series.slices`` order; label i = the model's i-th
    structure) to ``path`` as an RT Structure Set referencing ``series``; each slice is placed by its own
    ImagePositionPatient. ``masks``: ``structure_masks`` of ``labels``, when the caller has them already."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from innereye_batch.dicom.file_header import read_source_header

    if tuple(labels.shape) != tuple(series.geometry.shape) or len(series.slices) != labels.shape[0]:
        raise ValueError(f"label map shape {labels.shape} does not match series {series.key} {series.geometry.shape}")
    spec = package.segmentation
    if int(labels.max(initial=0)) > len(spec.structures):
        raise ValueError(f"label map holds label {int(labels.max())}; the model has {len(spec.structures)} structures")
    if not series.frame_of_reference_uid:
        raise ValueError(f"series {series.key} has no FrameOfReferenceUID for the structure set to reference")
    if masks is None:
        masks = structure_masks(labels, spec.structures, spec.postprocessing.fill_holes)
    source = read_source_header(series.files[0])
    now = datetime.datetime.now()
    version = model_version(package)

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    for keyword, type_2 in _COPIED_FROM_SOURCE:
        if keyword in source:
            ds[keyword] = source[keyword]
        elif type_2:
            setattr(ds, keyword, "")
    ds.StudyInstanceUID = series.study_instance_uid
    # Frame of Reference module (part of the RT Structure Set IOD; dciodvfy requires it)
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    # RT Series
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = (series.series_number or 0) + SERIES_NUMBER_OFFSET
    ds.SeriesDate = ds.InstanceCreationDate
    ds.SeriesTime = ds.InstanceCreationTime
    ds.SeriesDescription = with_marker(f"innereye-batch {package.name}", clinical_marker)
    ds.OperatorsName = ""
    # General Equipment
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = package.name[:_LO_MAX]
    ds.SoftwareVersions = software_version[:_LO_MAX]
    ds.DeviceSerialNumber = package.fingerprint()[:16]
    # Structure Set
    ds.StructureSetLabel = content_label(package.name)
    ds.StructureSetName = package.name[:_LO_MAX]
    ds.StructureSetDescription = (
        f"Contours of {len(spec.structures)} structures by the model {package.name} ({version}), "
        f"innereye-batch {software_version}. {clinical_marker}"
    ).strip()
    ds.InstanceNumber = 1
    ds.StructureSetDate = ds.InstanceCreationDate
    ds.StructureSetTime = ds.InstanceCreationTime
    ds.ReferencedFrameOfReferenceSequence = [_referenced_frame_of_reference(series)]
    ds.StructureSetROISequence = [
        _structure_set_roi(number, structure, series, f"{package.name} {version}")
        for number, structure in enumerate(spec.structures, start=1)
    ]
    ds.ROIContourSequence = [
        _roi_contour(number, structure, masks[structure.name], series)
        for number, structure in enumerate(spec.structures, start=1)
    ]
    ds.RTROIObservationsSequence = [
        _observation(number, structure) for number, structure in enumerate(spec.structures, start=1)
    ]
    ds.ApprovalStatus = "UNAPPROVED"
    ours = [str(ds.SeriesDescription), str(ds.StructureSetDescription), str(ds.StructureSetName)]
    set_character_set(ds, ours + [str(roi.ROIName) for roi in ds.StructureSetROISequence], source)
    if _longest_contour_data(ds) > _EXPLICIT_VR_MAX_LENGTH:
        _to_implicit_vr(ds)
    ds.save_as(path, enforce_file_format=True)


_EXPLICIT_VR_MAX_LENGTH = 0xFFFE
"""Longest value an explicit-VR DS element can hold (its length field has 16 bits; lengths are even)."""


def _longest_contour_data(ds: Dataset) -> int:
    return max(
        (
            contour.get_item(CONTOUR_DATA).length
            for roi in ds.ROIContourSequence
            for contour in roi.get("ContourSequence", [])
        ),
        default=0,
    )


def _to_implicit_vr(ds: Dataset) -> None:
    """Implicit VR Little Endian (the DICOM default, 32-bit value lengths) for a structure set with a contour too
    long for an explicit-VR DS element: pydicom would otherwise write that element as UN, which RT readers need
    not accept."""
    from pydicom.uid import ImplicitVRLittleEndian

    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    for roi in ds.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            contour.set_original_encoding(True, True, contour._character_set)


def _referenced_frame_of_reference(series: SeriesInfo) -> Dataset:
    from pydicom import Dataset

    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = series.series_instance_uid
    referenced_series.ContourImageSequence = [
        _image_reference(series.sop_class_uid, uid, None) for uid in series.sop_instance_uids
    ]
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_REFERENCE_SOP_CLASS
    study.ReferencedSOPInstanceUID = series.study_instance_uid
    study.RTReferencedSeriesSequence = [referenced_series]
    frame_of_reference = Dataset()
    frame_of_reference.FrameOfReferenceUID = series.frame_of_reference_uid
    frame_of_reference.RTReferencedStudySequence = [study]
    return frame_of_reference


def _image_reference(sop_class_uid: str, sop_instance_uid: str, frame: int | None) -> Dataset:
    from pydicom import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    if frame is not None:
        item.ReferencedFrameNumber = frame + 1
    return item


def _structure_set_roi(number: int, structure: Structure, series: SeriesInfo, algorithm: str) -> Dataset:
    from pydicom import Dataset

    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
    roi.ROIName = dicom_label(structure.name)
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = algorithm[:_LO_MAX]
    return roi


def _roi_contour(number: int, structure: Structure, mask: BoxedMask | None, series: SeriesInfo) -> Dataset:
    from pydicom import Dataset

    item = Dataset()
    item.ROIDisplayColor = list(structure.colour)
    item.ReferencedROINumber = number
    contours: list[Dataset] = []
    for k, points in slice_contours(mask, SlicePlanes.of(series)) if mask is not None else ():
        image = series.slices[k]
        contour = Dataset()
        contour.ContourImageSequence = [_image_reference(series.sop_class_uid, image.sop_instance_uid, image.frame)]
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = len(points)
        contour.ContourNumber = len(contours) + 1
        contour[CONTOUR_DATA] = _decimal_strings(CONTOUR_DATA, points.ravel())
        # as if read from a file in the encoding it is written in: pydicom then writes the raw ContourData as it
        # is, instead of parsing every number of it back into a DS value first (most of the writer's time)
        contour.set_original_encoding(False, True, contour._character_set)
        contours.append(contour)
    if contours:  # a structure the model did not find has no Contour Sequence at all
        item.ContourSequence = contours
    return item


def slice_contours(mask: BoxedMask, planes: SlicePlanes) -> list[tuple[int, np.ndarray]]:
    """(slice index, (n, 3) LPS points in mm) for every closed contour of a (z, y, x) mask on the source slices
    (within its box of them), each slice placed by its own position."""
    from innereye_batch.writers.contours import mask_contours

    result = []
    first_slice, box_top, box_left = mask.corner
    for k in np.flatnonzero(mask.mask.any(axis=(1, 2))):
        plane = mask.mask[k]
        rows = np.flatnonzero(plane.any(axis=1))
        columns = np.flatnonzero(plane.any(axis=0))
        top, left = int(rows[0]), int(columns[0])
        crop = plane[top : int(rows[-1]) + 1, left : int(columns[-1]) + 1]  # contours only where the mask is
        top, left, index = top + box_top, left + box_left, first_slice + int(k)
        for polygon in mask_contours(crop):
            result.append((index, planes.to_patient(index, polygon[:, 0] + top, polygon[:, 1] + left)))
    return result


def _decimal_strings(tag: int, values: np.ndarray) -> RawDataElement:
    """A DS element holding ``values`` to 0.1 micrometre, its text built at once: assigning a list or a string
    makes pydicom validate every value on assignment as well as on saving, three times the time for a large
    structure set (hundreds of thousands of coordinates)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    encoded = "\\".join(f"{v:.4f}" for v in values.tolist()).encode("ascii")  # Python floats: 2x faster
    if len(encoded) % 2:
        encoded += b" "  # DICOM values have even length; DS pads with a space
    return RawDataElement(Tag(tag), "DS", len(encoded), encoded, 0, False, True)


def _observation(number: int, structure: Structure) -> Dataset:
    from pydicom import Dataset

    observation = Dataset()
    observation.ObservationNumber = number
    observation.ReferencedROINumber = number
    observation.RTROIInterpretedType = structure.interpreted_type
    observation.ROIInterpreter = ""
    return observation


def source_problem(series: SeriesInfo) -> str | None:
    """Why an RT Structure Set cannot reference ``series``, or None: it needs the frame of reference, and one
    image per slice to put each slice's contours on (a mosaic's slices share one image)."""
    if not series.frame_of_reference_uid:
        return "an RT Structure Set needs the source's FrameOfReferenceUID, which its images lack"
    if series.mosaic_size is not None:
        return (
            "an RT Structure Set cannot reference the slices of a mosaic (they share one image); "
            "use --formats without rtstruct"
        )
    return None


def _write(path: Path, prediction: SegmentationPrediction, context: WriteContext) -> None:
    """Write the structure set, then read it back: a file that disagrees with the label map fails the series."""
    from innereye_batch.writers.readback import check_rtstruct

    series = prediction.item.primary
    labels = prediction.labels_on_source_slices()
    spec = context.package.segmentation
    masks = structure_masks(labels, spec.structures, spec.postprocessing.fill_holes)  # written, then checked
    write_rtstruct(
        path,
        labels,
        series,
        context.package,
        software_version=context.tool_version,
        clinical_marker=context.options.clinical_marker,
        masks=masks,
    )
    check_rtstruct(path, FILENAME, {dicom_label(name): mask for name, mask in masks.items()}, series)


FORMAT = OutputFormat(
    name="rtstruct",
    filename=FILENAME,
    tasks=frozenset({"segmentation"}),
    write=_write,
    description="DICOM RT Structure Set: one ROI per structure, closed planar contours per slice (holes as inner "
    "contours), references every source image, read back and checked",
    needs=source_problem,
)
