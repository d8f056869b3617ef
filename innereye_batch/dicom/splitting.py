"""Split the images of one SeriesInstanceUID into the parts a scanner (or a PACS) put together, as dcm2niix does.

Three kinds of split, in this order, each giving the parts a key suffix that says what differs:

1. **Identity** (``split_identity``): images of another study, frame of reference or patient that carry the same
   SeriesInstanceUID. The part with most images keeps the plain key; the others become ``.studyN``, ``.forN``
   or ``.patientN`` (N its rank, 2 onwards), and every part gets a ``uid_collision`` problem.
2. **Acquisition** (``split_acquisition``): always split when they vary, as dcm2niix never stacks them: echo
   (``.echoN``: EchoNumbers, else the rank of EchoTime), complex component (``.mag``, ``.phase``, ``.real``,
   ``.imag``), ORIGINAL vs DERIVED (``.original``, ``.derived``), diffusion (``.bB`` and ``.dirN``, N the rank of
   the gradient direction within that b-value by first InstanceNumber) and enhanced StackID (``.stackidS``).
3. **Repeats** (``split_repeats``): where positions still repeat within one grid, the first of
   TemporalPositionIdentifier/Index (``.tN``), TriggerTime (``.trigN``, rank), AcquisitionNumber (``.acqN``),
   the enhanced DimensionIndexValues less the in-stack position (``.idxA-B``) and, last, runs of consecutive
   InstanceNumbers that each hold every position once (``.volN``, GE fMRI; a mosaic file is such a run on its
   own) that tells the repeats apart (it takes at most as many values as the largest number of images sharing
   a position).

Numbers come from the images' values, never from file or folder order, so keys are stable across reruns.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from innereye_batch.dicom.headers import FileHeader, ImageHeader, SplitValues
from innereye_batch.dicom.problems import POSSIBLY_INCOMPLETE, UID_COLLISION
from innereye_batch.dicom.series import Problem

_COMPONENT_LABELS = {"MAGNITUDE": "mag", "PHASE": "phase", "REAL": "real", "IMAGINARY": "imag"}
_POSITION_DECIMALS = 2
"""Positions equal to 0.01 mm are the same position (for finding repeats)."""


@dataclass
class Part:
    """Images of one SeriesInstanceUID that belong together, and what sets them apart from the others."""

    files: list[FileHeader]
    images: list[ImageHeader]
    suffix: str = ""
    split_by: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


_NOUNS = {
    "study": ("study", "studies"),
    "for": ("frame of reference", "frames of reference"),
    "patient": ("patient", "patients"),
}


def split_identity(files: list[FileHeader]) -> list[Part]:
    """Parts by study, frame of reference and patient (see module docstring), with their completeness checks."""
    groups: dict[tuple[str, str, str], list[FileHeader]] = defaultdict(list)
    for file in files:
        groups[(file.study_instance_uid, file.frame_of_reference_uid, file.patient_id)].append(file)
    ordered = sorted(groups.items(), key=lambda item: (-sum(len(f.images) for f in item[1]), item[0]))
    parts = [Part(group, [im for f in group for im in f.images]) for _, group in ordered]
    uid = files[0].series_instance_uid
    if len(parts) > 1:
        (study, frame, _), _ = ordered[0]
        kinds = []
        for rank, ((other_study, other_frame, _), _) in enumerate(ordered[1:], start=2):
            if other_study != study:
                kind, attribute, shown = "study", "StudyInstanceUID", other_study
            elif other_frame != frame:
                kind, attribute, shown = "for", "FrameOfReferenceUID", other_frame or "(none)"
            else:
                kind, attribute, shown = "patient", "PatientID", "differs"  # never the ID itself
            part = parts[rank - 1]
            part.suffix, part.split_by = f".{kind}{rank}", {attribute: shown}
            kinds.append(kind)
            part.problems.append(
                Problem(
                    UID_COLLISION,
                    f"{len(part.images)} image(s) of another {_NOUNS[kind][0]} carry SeriesInstanceUID {uid}: split "
                    f"off from the {len(parts[0].images)} image(s) kept under that key",
                )
            )
        nouns = " / ".join(_NOUNS[k][1] for k in dict.fromkeys(kinds))
        moved = sum(len(p.images) for p in parts[1:])
        keys = ", ".join(uid + p.suffix for p in parts[1:])
        parts[0].problems.append(
            Problem(
                UID_COLLISION,
                f"{len(parts)} {nouns} share this SeriesInstanceUID; {moved} image(s) split off as {keys}",
            )
        )
    for part in parts:
        part.problems += completeness_problems(part.files)
    return parts


def completeness_problems(files: list[FileHeader]) -> list[Problem]:
    """Second line of defence against lost edge files: InstanceNumbers and ImagesInAcquisition."""
    problems = []
    numbers = [f.images[0].split.instance_number for f in files]
    if len(numbers) > 1 and all(n is not None for n in numbers):
        known = sorted(n for n in numbers if n is not None)
        if len(set(known)) == len(known) and known[-1] - known[0] + 1 == len(known) and known[0] > 1:
            problems.append(
                Problem(
                    POSSIBLY_INCOMPLETE,
                    f"InstanceNumbers run {known[0]}-{known[-1]} without a gap but do not start at 1: "
                    "the first file(s) may be missing",
                )
            )
    by_acquisition: dict[Any, list[FileHeader]] = defaultdict(list)
    for file in files:
        by_acquisition[file.images[0].split.acquisition_number].append(file)
    for acquisition, group in sorted(by_acquisition.items(), key=lambda item: str(item[0])):
        announced = max((f.images_in_acquisition or 0) for f in group)
        found = sum(len(f.images) for f in group)
        if announced > found:
            where = f" (acquisition {acquisition})" if acquisition is not None else ""
            problems.append(
                Problem(
                    POSSIBLY_INCOMPLETE, f"ImagesInAcquisition announces {announced} image(s), {found} found{where}"
                )
            )
    return problems


def split_acquisition(part: Part) -> list[Part]:
    """``part`` split by echo, complex component, ORIGINAL/DERIVED, diffusion and StackID, where they vary."""
    parts = [part]
    for labeller in (_echo_labels, _component_labels, _derived_labels, _diffusion_labels, _stack_id_labels):
        parts = [piece for p in parts for piece in _split_by(p, labeller)]
    return parts


def split_repeats(images: list[ImageHeader]) -> list[tuple[str, dict[str, str], list[ImageHeader]]]:
    """Images of one grid split by the first temporal attribute that tells repeated positions apart: one whose
    every group holds each position fewer times than the whole grid does. An attribute that varies from slice to
    slice but repeats in every volume (GE writes each slice's acquisition time as TriggerTime) groups slices,
    not volumes: each group would still repeat every position it holds, and splitting by it would cut each volume
    into evenly spaced thin stacks that look whole."""
    multiplicity = _multiplicity(images)
    if multiplicity <= 1:
        return [("", {}, images)]
    for labeller in (_temporal_labels, _trigger_labels, _acquisition_labels, _index_labels, _instance_block_labels):
        labels = labeller(images)
        distinct = set(labels.values())
        if 1 < len(distinct) <= multiplicity:
            groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[ImageHeader]] = defaultdict(list)
            for image in images:
                suffix, split_by = labels[id(image)]
                groups[(suffix, split_by)].append(image)
            if any(_multiplicity(group) >= multiplicity for group in groups.values()):
                continue  # it does not tell repeats apart
            result = []
            for (suffix, split_by), group in sorted(groups.items()):
                for more, more_by, sub in split_repeats(group):
                    result.append((suffix + more, {**dict(split_by), **more_by}, sub))
            return result
    return [("", {}, images)]


def _multiplicity(images: list[ImageHeader]) -> int:
    """The most images at one position."""
    return max(Counter(_position_key(im) for im in images).values())


def _position_key(image: ImageHeader) -> Hashable:
    return tuple(round(v, _POSITION_DECIMALS) for v in image.position) if image.position else None


_Labels = dict[int, tuple[str, tuple[tuple[str, str], ...]]]
"""Per image (by id): its key suffix and what it is split by, for one attribute."""


def _split_by(part: Part, labeller: Callable[[list[ImageHeader]], _Labels]) -> list[Part]:
    labels = labeller(part.images)
    if len(set(labels.values())) <= 1:
        return [part]
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[ImageHeader]] = defaultdict(list)
    for image in part.images:
        groups[labels[id(image)]].append(image)
    parts = []
    for (suffix, split_by), images in sorted(groups.items()):
        paths = {im.path for im in images}
        parts.append(
            Part(
                files=[f for f in part.files if f.path in paths],
                images=images,
                suffix=part.suffix + suffix,
                split_by={**part.split_by, **dict(split_by)},
                problems=list(part.problems),
            )
        )
    return parts


def _ranked(values: list[Any], images: list[ImageHeader]) -> dict[Any, int]:
    """1-based rank of each distinct value, by the lowest InstanceNumber that carries it, then by the value."""
    first: dict[Any, float] = {}
    for value, image in zip(values, images, strict=True):
        number = image.split.instance_number
        first[value] = min(first.get(value, float("inf")), float("inf") if number is None else number)
    order = sorted(first, key=lambda v: (first[v], str(v)))
    return {v: rank for rank, v in enumerate(order, start=1)}


def _echo_labels(images: list[ImageHeader]) -> _Labels:
    values = [(im.split.echo_number, im.split.echo_time) for im in images]
    distinct = sorted(set(values), key=lambda v: (v[1] if v[1] is not None else float("inf"), v[0] or 0))
    numbers = [n for n, _ in distinct]
    use_numbers = all(n is not None for n in numbers) and len(set(numbers)) == len(numbers)
    names = {v: f".echo{v[0] if use_numbers else rank}" for rank, v in enumerate(distinct, start=1)}
    return {
        id(im): (names[v], (("EchoNumbers", str(v[0])), ("EchoTime", f"{v[1]:g}" if v[1] is not None else "")))
        for im, v in zip(images, values, strict=True)
    }


def _component_labels(images: list[ImageHeader]) -> _Labels:
    return {
        id(im): (
            f".{_COMPONENT_LABELS[im.split.complex_component]}",
            (("ComplexImageComponent", im.split.complex_component),),
        )
        for im in images
    }


def _derived_labels(images: list[ImageHeader]) -> _Labels:
    return {
        id(im): (".derived", (("ImageType", "DERIVED"),))
        if im.split.derived
        else (".original", (("ImageType", "ORIGINAL"),))
        for im in images
    }


def _diffusion_labels(images: list[ImageHeader]) -> _Labels:
    values = [(im.split.b_value, im.split.gradient) for im in images]
    by_b: dict[int | None, list[tuple[Any, ImageHeader]]] = defaultdict(list)
    for value, image in zip(values, images, strict=True):
        by_b[value[0]].append((value[1], image))
    directions: dict[tuple[Any, Any], int] = {}
    for b, pairs in by_b.items():
        with_direction = [(g, im) for g, im in pairs if g is not None]
        ranks = _ranked([g for g, _ in with_direction], [im for _, im in with_direction])
        directions.update({(b, g): rank for g, rank in ranks.items()})
    labels: _Labels = {}
    for image, (b, gradient) in zip(images, values, strict=True):
        suffix = f".b{b}" if b is not None else ".bnone"
        split_by = [("DiffusionBValue", str(b) if b is not None else "")]
        if gradient is not None:
            suffix += f".dir{directions[(b, gradient)]}"
            split_by.append(("DiffusionGradientOrientation", "\\".join(f"{v:g}" for v in gradient)))
        labels[id(image)] = (suffix, tuple(split_by))
    return labels


def _stack_id_labels(images: list[ImageHeader]) -> _Labels:
    return {id(im): (f".stackid{im.split.stack_id}", (("StackID", str(im.split.stack_id)),)) for im in images}


def _attribute_labels(
    images: list[ImageHeader], get: Callable[[SplitValues], Any], prefix: str, name: str, rank: bool
) -> _Labels:
    values = [get(im.split) for im in images]
    ranks = _ranked(values, images) if rank else {}
    labels: _Labels = {}
    for image, value in zip(images, values, strict=True):
        shown = "none" if value is None else str(ranks[value] if rank else value)
        text = "" if value is None else ("-".join(str(v) for v in value) if isinstance(value, tuple) else f"{value:g}")
        labels[id(image)] = (f".{prefix}{shown}", ((name, text),))
    return labels


def _temporal_labels(images: list[ImageHeader]) -> _Labels:
    return _attribute_labels(images, lambda s: s.temporal_position, "t", "TemporalPosition", rank=False)


def _trigger_labels(images: list[ImageHeader]) -> _Labels:
    return _attribute_labels(images, lambda s: s.trigger_time, "trig", "TriggerTime", rank=True)


def _acquisition_labels(images: list[ImageHeader]) -> _Labels:
    return _attribute_labels(images, lambda s: s.acquisition_number, "acq", "AcquisitionNumber", rank=False)


def _index_labels(images: list[ImageHeader]) -> _Labels:
    labels = _attribute_labels(images, lambda s: s.dimension_index, "idx", "DimensionIndexValues", rank=False)
    return {k: (suffix.replace(", ", "-").replace("(", "").replace(")", ""), by) for k, (suffix, by) in labels.items()}


def _instance_block_labels(images: list[ImageHeader]) -> _Labels:
    """The last resort (GE fMRI, where nothing else tells time points apart): consecutive runs of InstanceNumbers
    that each hold every position exactly once are volumes, ``.volN`` in InstanceNumber order (dcm2niix's order).
    Images that share an InstanceNumber must be frames of one file (a mosaic's tiles), which then stay in one run:
    a series of mosaic files told apart by nothing else is one volume per file.
    Every image gets the same label (no split) unless the images fall exactly into such runs."""
    unsplit: _Labels = {id(im): ("", ()) for im in images}
    files: dict[int | None, set[Any]] = defaultdict(set)
    for image in images:
        files[image.split.instance_number].add(image.path)
    positions = {_position_key(im) for im in images}
    if None in files or any(len(paths) > 1 for paths in files.values()) or len(images) % len(positions):
        return unsplit
    ordered = sorted(images, key=lambda im: (im.split.instance_number or 0, im.frame or 0))
    size = len(positions)
    blocks = [ordered[start : start + size] for start in range(0, len(ordered), size)]
    if any({_position_key(im) for im in block} != positions for block in blocks):
        return unsplit
    numbers = [(block[0].split.instance_number, block[-1].split.instance_number) for block in blocks]
    if any(last == following for (_, last), (following, _) in pairwise(numbers)):
        return unsplit  # one file's frames in two runs
    labels: _Labels = {}
    for number, (block, (first, last)) in enumerate(zip(blocks, numbers, strict=True), start=1):
        shown = f"{first}-{last}" if first != last else f"{first}"
        labels.update({id(im): (f".vol{number}", (("InstanceNumber", shown),)) for im in block})
    return labels
