"""Write a (z, y, x) label map as a DICOM Segmentation (highdicom) that references every source image.

One segment per structure of the model package (label i = segment i), labelled with the structure's name, its
colour as the recommended CIELab display value, SNOMED-CT category "Anatomical Structure" and a property type
looked up by name in DICOM CID 7192 (with a Left/Right modifier when the name says so; SCT "Organ" otherwise),
and algorithm identification naming the model, its version and its checkpoints.

Empty frames are omitted. A label map with no foreground at all is still written (every frame, all empty):
"nothing found" is a result, and a SEG cannot have zero frames; dciodvfy accepts it.

The format writes BINARY (Segmentation Storage) by default, LABELMAP (Label Map Segmentation Storage) with
``--seg-type labelmap``; either way the file is read back and checked against the label map (``readback``)
before it is accepted, and the series description carries the run's "not for clinical use" marker.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydicom.tag import Tag
from pydicom.valuerep import format_number_as_ds

from innereye_batch.dicom.mosaic import tiles_to_mosaic
from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.errors import SeriesError
from innereye_batch.model.spec import ModelPackage, Structure, dicom_label
from innereye_batch.writers.predictions import checkpoint_relative_path
from innereye_batch.writers.registry import OutputFormat, WriteContext

if TYPE_CHECKING:
    from pydicom import Dataset
    from pydicom.sr.coding import Code

    from innereye_batch.tasks.segmentation import SegmentationPrediction

SegmentationType = Literal["BINARY", "LABELMAP"]

MANUFACTURER = "innereye-batch"
SERIES_NUMBER_OFFSET = 1000
"""The SEG series number is the source's plus this (1000 when the source has none)."""
_LO_MAX = 64  # DICOM "Long String" length limit
_CS_MAX = 16  # DICOM "Code String" length limit
_LEFT_WORDS = frozenset({"left", "l", "lt", "links"})
_RIGHT_WORDS = frozenset({"right", "r", "rt", "rechts"})


def write_dicom_seg(
    path: Path,
    labels: np.ndarray,
    series: SeriesInfo,
    package: ModelPackage,
    *,
    software_version: str,
    segmentation_type: SegmentationType = "BINARY",
    clinical_marker: str = "",
) -> None:
    """Write ``labels`` (z, y, x; 0 background, i = the model's i-th structure) to ``path`` as DICOM-SEG.

    ``labels`` rows follow ``series.slices``. ``BINARY`` (Segmentation Storage) is what viewers and PACS read
    today; ``LABELMAP`` (Label Map Segmentation Storage, 2024) is smaller and faster but newer.
    Multi-frame sources are supported when the whole stack comes from one file. ``clinical_marker`` (e.g.
    "NOT FOR CLINICAL USE") ends the series and content descriptions.
    """
    import highdicom as hd

    if tuple(labels.shape) != tuple(series.geometry.shape):
        raise ValueError(f"label map shape {labels.shape} does not match series shape {series.geometry.shape}")
    if len(series.slices) != labels.shape[0]:
        raise ValueError(f"label map has {labels.shape[0]} slices, series {series.key} has {len(series.slices)}")
    labels = np.asarray(labels, dtype=np.uint8)
    structures = package.segmentation.structures
    num_structures = len(structures)
    if num_structures == 0:
        raise ValueError(f"model {package.name} has no structures to write as segments")
    if int(labels.max(initial=0)) > num_structures:
        raise ValueError(f"label map holds label {int(labels.max())} but the model has {num_structures} structures")

    source_images, frames, frame_numbers = _source_images_and_frames(series, labels)
    algorithm = _algorithm_identification(package)
    segments = [
        _segment_description(number, structure, algorithm) for number, structure in enumerate(structures, start=1)
    ]
    segmentation = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=frames,
        segmentation_type=segmentation_type,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=(series.series_number or 0) + SERIES_NUMBER_OFFSET,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=package.name[:_LO_MAX],
        software_versions=software_version[:_LO_MAX],
        device_serial_number=package.fingerprint()[:16],
        # A SEG needs at least one frame: with no foreground anywhere, keep them all (empty).
        omit_empty_frames=bool(frames.any()),
        content_label=content_label(package.name),
        content_description=with_marker(
            (f"{package.name} segmentation, {num_structures} structures", f"{package.name} segmentation"),
            clinical_marker,
        ),
        series_description=with_marker(f"innereye-batch {package.name}", clinical_marker),
    )
    if frame_numbers is not None:
        _refer_to_source_frames(segmentation, frame_numbers)
    carry_lossy_compression(segmentation, source_images)
    shared = segmentation.SharedFunctionalGroupsSequence[0]
    if labels.shape[0] == 1 and "PixelMeasuresSequence" in shared:  # one plane: no spacing between slices to
        shared.PixelMeasuresSequence[0].pop("SpacingBetweenSlices", None)  # state (highdicom wrote 1 mm)
    set_character_set(segmentation, _our_texts(segmentation), source_images[0])
    if "PlaneOrientationSequence" not in segmentation.SharedFunctionalGroupsSequence[0]:
        # A source without a top-level position (a UIH grid: its tiles' positions are private), so highdicom wrote
        # no plane geometry; General Image then needs PatientOrientation (type 2C): the source's, else empty.
        segmentation.PatientOrientation = source_images[0].get("PatientOrientation", "")
    segmentation.save_as(path, enforce_file_format=True)


def carry_lossy_compression(derived: Dataset, sources: list[Dataset]) -> None:
    """An image derived from images of which any had lossy compression says so, with that image's ratio and
    method: highdicom copies LossyImageCompression from the first image alone (a SEG) or not at all (a Secondary
    Capture), and "01" may never be reset. An image stored in a lossy transfer syntax was lossy compressed
    whatever its attributes say (or lack)."""
    if str(derived.get("LossyImageCompression", "")) == "01":
        return
    found = next(((s, method) for s in sources if (method := _lossy_method(s)) is not None), None)
    if found is None:
        return
    lossy, method = found
    derived.LossyImageCompression = "01"
    for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if keyword in lossy:
            setattr(derived, keyword, lossy[keyword].value)
    if method and "LossyImageCompressionMethod" not in derived:
        derived.LossyImageCompressionMethod = method


def _lossy_method(source: Dataset) -> str | None:
    """How ``source`` was lossy compressed ("" where it says it was and not how), or None where it was not."""
    syntax = str(getattr(getattr(source, "file_meta", None), "TransferSyntaxUID", ""))
    method = _LOSSY_SYNTAX_METHODS.get(syntax)
    if method is not None:
        return method
    return "" if str(source.get("LossyImageCompression", "")).strip() == "01" else None


_LOSSY_SYNTAX_METHODS = {
    **dict.fromkeys(  # JPEG Baseline, Extended, and the retired lossy processes (spectral, progressive, hierarchical)
        (f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 52, 53, 54, 55, 56, 59, 60, 61, 62, 63, 64)), "ISO_10918_1"
    ),
    "1.2.840.10008.1.2.4.111": "ISO_10918_1",  # JPEG XL recompression of a (lossy) JPEG
    **dict.fromkeys(("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"), "ISO_13818_2"),  # MPEG2
    **dict.fromkeys((f"1.2.840.10008.1.2.4.{n}" for n in range(102, 107)), "ISO_14496_10"),  # MPEG-4 AVC
    **dict.fromkeys(("1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"), "ISO_23008_2"),  # HEVC
}
"""Transfer syntaxes that are lossy by definition (PS3.5 8.2, 8.4), with their LossyImageCompressionMethod
(PS3.3 C.7.6.1.1.5.1). JPEG-LS near-lossless and JPEG 2000 may be either: there LossyImageCompression says."""


_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC"})
_OUR_TOP_LEVEL_TEXTS = ("SeriesDescription", "ContentDescription", "ManufacturerModelName", "SoftwareVersions")


def _our_texts(segmentation: Dataset) -> list[str]:
    """The texts this writer puts in a SEG (segment labels and descriptions, algorithm, model name, marker)."""
    texts = [str(segmentation.get(keyword, "")) for keyword in _OUR_TOP_LEVEL_TEXTS]

    def walk(dataset: Dataset) -> None:
        for element in dataset:
            if element.VR == "SQ":
                for item in element.value:
                    walk(item)
            elif element.VR in _TEXT_VRS and element.value is not None:
                texts.extend(str(v) for v in (element.value if element.VM > 1 else [element.value]))

    for segment in segmentation.SegmentSequence:
        walk(segment)
    return texts


def set_character_set(ds: Dataset, ours: list[str], source: Dataset) -> None:
    """SpecificCharacterSet of an output that copies the source's patient and study texts and adds ``ours``
    (structure and model names, the marker): the source's, so copied names keep their encoding; UTF-8 (ISO_IR
    192, which pydicom re-encodes the copied texts into) when one of ours is not ASCII, as the source's
    repertoire may not hold it (and without one, only ASCII is allowed)."""
    if not all(text.isascii() for text in ours):
        ds.SpecificCharacterSet = "ISO_IR 192"
    elif "SpecificCharacterSet" in source:
        ds.SpecificCharacterSet = source.SpecificCharacterSet


TYPE2_PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
)
"""Patient and study attributes an output copies from its source: required, but may be empty (type 2)."""


_VALID_DATE_TIME = {
    "PatientBirthDate": re.compile(r"\d{8}"),
    "StudyDate": re.compile(r"\d{8}"),
    "StudyTime": re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?"),
}


def with_type2_patient_and_study(source: Dataset) -> Dataset:
    """``source`` with each of ``TYPE2_PATIENT_AND_STUDY`` it lacks present and empty, as the standard allows for
    an unknown value (an anonymising export often deletes them; highdicom reads every one of them); a date or time
    that is not one (an anonymiser's ``***``, which highdicom refuses) is emptied the same way."""
    for keyword in TYPE2_PATIENT_AND_STUDY:
        if keyword not in source:
            setattr(source, keyword, "")
    for keyword, form in _VALID_DATE_TIME.items():
        element = source.get_item(keyword)
        raw = element.value if element is not None else None
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(source[keyword].value or "")
        if text.strip() and not form.fullmatch(text.strip()):
            setattr(source, keyword, "")
    return source


def _source_images_and_frames(
    series: SeriesInfo, labels: np.ndarray
) -> tuple[list[Dataset], np.ndarray, list[int] | None]:
    """Source headers (no pixel data) as highdicom is to see them, the label frames in the order it pairs them
    with the sources, and for a multi-frame source each of those frames' number in the file (1-based).

    highdicom needs one orientation and pixel spacing written identically: single-frame headers get the first
    one's ImageOrientationPatient and PixelSpacing (the scan made them one stack, so they agree within its
    tolerance), and a multi-frame header keeps only this stack's frames (another stack of the file, e.g. a second
    time point, would repeat its positions), with per-frame orientation and pixel measures moved to the shared
    groups (``_SHARED_FOR_HIGHDICOM``). Headers are copies in memory: the SEG's references are then pointed back
    at the file's own frames (``_refer_to_source_frames``).
    """
    import pydicom

    if series.mosaic_size is not None:  # mosaic hook: one frame laid out as the source mosaic (dicom/mosaic.py)
        return [_source_header(series.files[0], series)], tiles_to_mosaic(labels, series)[None], None
    multi_frame = [s for s in series.slices if s.frame is not None]
    if not multi_frame:
        sources = [_source_header(p, series, whole=index == 0) for index, p in enumerate(series.files)]
        for keyword in ("ImageOrientationPatient", "PixelSpacing"):  # as the scan read them: one of each
            if keyword in sources[0]:
                for source in sources[1:]:
                    setattr(source, keyword, sources[0][keyword].value)
        return sources, labels, None
    if len(series.files) != 1 or len(multi_frame) != len(series.slices):
        raise SeriesError(
            series.key, "DICOM-SEG output supports a multi-frame source only when one file holds the whole stack"
        )
    source = _source_header(series.files[0], series)
    if not source.get("PerFrameFunctionalGroupsSequence"):
        raise SeriesError(
            series.key, "DICOM-SEG output needs a multi-frame source with functional groups (an enhanced image)"
        )
    frames = [s.frame for s in multi_frame if s.frame is not None]
    items = [source.PerFrameFunctionalGroupsSequence[f] for f in frames]
    if not source.get("SharedFunctionalGroupsSequence"):  # type 2: may be empty when every macro is per frame
        source.SharedFunctionalGroupsSequence = [pydicom.Dataset()]
    shared = source.SharedFunctionalGroupsSequence[0]
    for macro in _SHARED_FOR_HIGHDICOM:  # one stack: one orientation and pixel spacing (the scan checked them)
        if macro not in shared and macro in items[0]:
            setattr(shared, macro, items[0][macro].value)
            for item in items:
                if macro in item:
                    delattr(item, macro)
    source.PerFrameFunctionalGroupsSequence = items
    source.NumberOfFrames = len(items)
    return [source], labels, [f + 1 for f in frames]


def _source_header(path: Path, series: SeriesInfo, *, whole: bool = True) -> Dataset:
    """A source image's header (no pixel data) with the attributes highdicom reads present: patient and study
    (``with_type2_patient_and_study``) and, in a single-frame image, SliceThickness (Image Plane, type 2), which
    anonymising exports delete too (every such series failed its SEG). The SEG's pixel measures need a thickness
    (type 1C), so a missing one becomes the series' spacing between slices, as its frames tile the stack.

    ``whole``: every element; else only ``SOURCE_TAGS``, what highdicom reads from a series' other images (the
    first one's header gives the SEG its patient, study and equipment)."""
    from innereye_batch.dicom.file_header import read_source_header, read_tags

    header = read_source_header(path) if whole else read_tags(path, SOURCE_TAGS)
    source = with_type2_patient_and_study(header)
    if not source.get("SliceThickness") and "PerFrameFunctionalGroupsSequence" not in source:
        source.SliceThickness = format_number_as_ds(float(series.geometry.spacing[0]))
    return source


SOURCE_TAGS = [
    int(Tag(keyword))
    for keyword in (
        *TYPE2_PATIENT_AND_STUDY,
        "SpecificCharacterSet",
        "ImageType",
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "InstanceNumber",
        "FrameOfReferenceUID",
        "PositionReferenceIndicator",
        "PatientOrientation",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "SpacingBetweenSlices",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "Rows",
        "Columns",
        "NumberOfFrames",
        "BitsAllocated",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
    )
]
"""What a DICOM-SEG reads from a single-frame series' images after the first: identity, plane geometry, the image
pixel description, and the patient and study attributes every source gets (the written file is the same as from
whole headers: ``tests/writers/test_dicom_seg.py``)."""

_SHARED_FOR_HIGHDICOM = ("PlaneOrientationSequence", "PixelMeasuresSequence")
"""Functional group macros highdicom reads from a multi-frame source's shared groups only."""


def _refer_to_source_frames(segmentation: Dataset, frame_numbers: list[int]) -> None:
    """Point each SEG frame's source references at the file's own frame numbers: highdicom numbered them in the
    header copy that holds only this stack's frames, in stack order. highdicom shares one reference item
    between the frames of several segments at one plane: each item is renumbered once."""
    renumbered: set[int] = set()
    for item in segmentation.PerFrameFunctionalGroupsSequence:
        for derivation in item.get("DerivationImageSequence", []):
            for reference in derivation.get("SourceImageSequence", []):
                if "ReferencedFrameNumber" in reference and id(reference) not in renumbered:
                    renumbered.add(id(reference))
                    numbers = reference.ReferencedFrameNumber
                    if isinstance(numbers, int | str):
                        reference.ReferencedFrameNumber = frame_numbers[int(numbers) - 1]
                    else:
                        reference.ReferencedFrameNumber = [frame_numbers[int(n) - 1] for n in numbers]


def _algorithm_identification(package: ModelPackage) -> Any:
    """AlgorithmIdentificationSequence: AI family, model name, version and checkpoint hashes as parameters."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    version = model_version(package)
    parameters = {
        "architecture": package.architecture.name,
        "fingerprint": package.fingerprint(),
        **{f"checkpoint {checkpoint_relative_path(package, c)}": f"sha256 {c.sha256}" for c in package.checkpoints},
    }
    return hd.AlgorithmIdentificationSequence(
        name=package.name[:_LO_MAX],
        family=codes.cid7162.ArtificialIntelligence,
        version=version,
        source=MANUFACTURER,
        parameters={k.replace(",", " ").replace("=", " "): v.replace(",", " ") for k, v in parameters.items()},
    )


def _segment_description(number: int, structure: Structure, algorithm: Any) -> Any:
    """One segment: the structure's name, colour, coded category and type, and the algorithm."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    property_type, laterality = segmented_property_type(structure.name)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=dicom_label(structure.name),
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=property_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*structure.colour),
    )
    if laterality is not None:
        type_item = description.SegmentedPropertyTypeCodeSequence[0]
        type_item.SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept(laterality.value, laterality.scheme_designator, laterality.meaning)
        ]
    return description


def segmented_property_type(structure_name: str) -> tuple[Code, Code | None]:
    """SNOMED-CT type for a structure name (CID 7192 keyword match, else "Organ") and its laterality, if any.

    Words such as ``left``/``l``/``right``/``r`` give the laterality; the other words, joined, are matched
    case-insensitively against the keywords of CID 7192 ("Anatomical Structure Segmentation Property Type"),
    also without a plural ``s``: ``spinal_cord`` -> Spinal cord, ``kidney_l`` -> Kidney + Left.
    """
    from pydicom.sr.codedict import codes

    words = [w for w in re.split(r"[^a-z0-9]+", structure_name.lower()) if w]
    laterality = None
    if len(words) > 1:  # a lone "l" or "right" is a name, not a side
        if any(w in _LEFT_WORDS for w in words):
            laterality = codes.SCT.Left
        elif any(w in _RIGHT_WORDS for w in words):
            laterality = codes.SCT.Right
        if laterality is not None:
            words = [w for w in words if w not in _LEFT_WORDS | _RIGHT_WORDS]
    key = "".join(words)
    keywords = _anatomical_type_keywords()
    keyword = keywords.get(key) or keywords.get(key.removesuffix("s"))
    if keyword is None:
        return codes.SCT.Organ, laterality
    return getattr(codes.CID7192, keyword), laterality


@functools.lru_cache(maxsize=1)
def _anatomical_type_keywords() -> dict[str, str]:
    """CID 7192 keywords by their lower-case form."""
    from pydicom.sr.codedict import codes

    return {keyword.lower(): keyword for keyword in codes.CID7192.dir()}


def content_label(model_name: str) -> str:
    """ContentLabel (a DICOM Code String): upper-case letters, digits, underscores, at most 16 characters."""
    label = re.sub(r"[^A-Z0-9_]+", "_", model_name.upper()).strip("_")[:_CS_MAX]
    return label or "SEGMENTATION"


def model_version(package: ModelPackage) -> str:
    """The model's version for DICOM headers (a Long String): its own, else its checkpoints' hash prefixes."""
    version = package.version or "sha256:" + "+".join(c.sha256[:8] for c in package.checkpoints)
    if len(version) > _LO_MAX:
        version = f"fingerprint:{package.fingerprint()[:16]}"
    return version


def with_marker(text: str | tuple[str, ...], marker: str, limit: int = _LO_MAX) -> str:
    """``text`` followed by ``marker`` within ``limit`` characters: ``text`` is shortened, never the marker.

    ``text`` may be several wordings, longest first: the first that fits is taken. The last is cut at a word
    boundary (no word cut in two) where that keeps at least half the room, else at the limit (a long model name
    is kept in part rather than dropped)."""
    wordings = (text,) if isinstance(text, str) else text
    if len(marker) >= limit:
        return marker[:limit]
    room = limit - (len(marker) + 1 if marker else 0)
    chosen = next((w for w in wordings if len(w) <= room), None)
    if chosen is None:
        last = wordings[-1]
        cut = last[: room + 1].rsplit(" ", 1)[0].rstrip(" ,;:") if " " in last[: room + 1] else ""
        chosen = cut if len(cut) >= room // 2 else last[:room]
    return f"{chosen} {marker}" if marker else chosen


def source_problem(series: SeriesInfo) -> str | None:
    """Why a DICOM-SEG cannot reference ``series``, or None: it needs a frame of reference, and a multi-frame
    source only when one file holds the whole stack."""
    if not series.frame_of_reference_uid:
        return "DICOM-SEG needs the source's FrameOfReferenceUID, which its images lack"
    if any(s.frame is not None for s in series.slices) and len(series.files) != 1:
        return "DICOM-SEG output supports a multi-frame source only when one file holds the whole stack"
    return None


FILENAME = "segmentation.dcm"


def _write(path: Path, prediction: SegmentationPrediction, context: WriteContext) -> None:
    """Write the SEG, then read it back: a file that disagrees with the label map fails the series."""
    from innereye_batch.writers.seg_readback import check_seg

    labels = prediction.labels_on_source_slices()
    write_dicom_seg(
        path,
        labels,
        prediction.item.primary,
        context.package,
        software_version=context.tool_version,
        segmentation_type=context.options.seg_type,
        clinical_marker=context.options.clinical_marker,
    )
    names = context.package.segmentation.structure_names
    check_seg(path, FILENAME, labels, prediction.item.primary, [dicom_label(n) for n in names])


FORMAT = OutputFormat(
    name="dicom-seg",
    filename=FILENAME,
    tasks=frozenset({"segmentation"}),
    write=_write,
    description="DICOM Segmentation (highdicom, BINARY or --seg-type labelmap): one segment per structure, "
    "references every source image, read back and checked",
    needs=source_problem,
)
