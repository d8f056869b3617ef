"""Group image headers into series, split them into stacks of one grid, sort slices and find their problems.

Works on headers only (built by ``file_header.py``). A series is split first by identity and acquisition
(``splitting.py``), then into stacks: every projection radiograph alone (a 2-D image), images that cannot be placed
in 3-D together in one stack that says why, and the others by grid (orientation, size, pixel spacing), each grid
split again where positions repeat (time points). Each stack is sorted along its slice normal, with its geometry
as SimpleITK defines it, and checked (``slice_steps.py`` for the steps between slices).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
from pydicom.uid import UID

from innereye_batch.dicom import problems as kinds
from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.headers import FileHeader, ImageHeader, plausible_spacing
from innereye_batch.dicom.regrid import regular_grid
from innereye_batch.dicom.series import Problem, SeriesInfo, SliceRef
from innereye_batch.dicom.slice_steps import numbering_gaps, spacing_problems, tilt_problems
from innereye_batch.dicom.splitting import Part, split_acquisition, split_identity, split_repeats

IDENTITY_ROWS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
"""Row and column direction cosines of an axial image, used where an image has none (never to place it)."""
ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between direction cosines of images that belong to one stack."""
_NAMES_SHOWN = 3


def build_series(
    headers: list[FileHeader],
    *,
    regrid_irregular: bool = False,
    numbers_held_elsewhere: Mapping[str, Iterable[int]] | None = None,
) -> list[SeriesInfo]:
    """Every series (stack) formed by ``headers``, each with a unique, stable key. ``numbers_held_elsewhere``:
    per SeriesInstanceUID, InstanceNumbers of its images that are not among ``headers`` (left out as colour)."""
    result = []
    for uid, group in _group_by_series(headers).items():
        own = {n for f in group for im in f.images if (n := im.split.instance_number) is not None}
        held = frozenset(own.union((numbers_held_elsewhere or {}).get(uid, ())))
        for identity in split_identity(group):
            parts = split_acquisition(identity)
            stacks = [info for part in parts for info in _build_part(part, regrid_irregular, held)]
            result += _sibling_problems(stacks)
    return _unique_keys(result)


_NOT_SIBLINGS_BY = ("ImageType", "AcquisitionNumber", "StackID")
"""Split attributes whose stacks may cover different positions by design (derived images, separate acquisitions,
stacks of an enhanced file); stacks that differ only in others (echo, time, component, diffusion) are siblings."""


def _sibling_problems(stacks: list[SeriesInfo]) -> list[SeriesInfo]:
    """``stacks`` of one series, a volume lacking positions that all its sibling volumes hold made fatal: the
    volumes of one acquisition (echoes, time points...) cover the same positions, so a volume that lost its edge
    slice (which the steps between its slices cannot show) would otherwise load as ok with a shorter extent."""
    families: dict[tuple[object, ...], list[int]] = defaultdict(list)
    for index, info in enumerate(stacks):
        if info.slice_spacing_source != "positions" or not info.split_by:  # placed stacks of 2+ slices, split
            continue
        geometry = info.geometry
        grid = (geometry.shape[1:], tuple(round(v, 3) for v in (*geometry.direction, *geometry.spacing[1:])))
        families[(grid, *(info.split_by.get(name) for name in _NOT_SIBLINGS_BY))].append(index)
    result = list(stacks)
    for members in families.values():
        if len(members) < 2:
            continue
        positions = {index: {_rounded(ref.position) for ref in stacks[index].slices} for index in members}
        for index in members:
            others = [positions[other] for other in members if other != index]
            missing = set.intersection(*others) - positions[index]
            if missing:
                names = ", ".join(stacks[other].key_suffix or "(none)" for other in members if other != index)
                message = (
                    f"{len(missing)} slice position(s) that every sibling volume ({names[:200]}) holds are missing "
                    f"from this one ({len(positions[index])} slices): file(s) at its edge may be lost"
                )
                result[index] = _with(result[index], Problem(kinds.MISSING_SLICES, message, True))
    return result


def _rounded(position: tuple[float, float, float]) -> tuple[float, ...]:
    return tuple(round(v, 2) for v in position)


def _group_by_series(headers: list[FileHeader]) -> dict[str, list[FileHeader]]:
    groups: dict[str, list[FileHeader]] = defaultdict(list)
    for header in sorted(headers, key=lambda h: str(h.path)):
        groups[header.series_instance_uid].append(header)
    return groups


def _same_grid(a: ImageHeader, b: ImageHeader) -> bool:
    """Same size, orientation and pixel spacing (an unusable spacing matches any: the stack then says so)."""
    return (
        (a.rows, a.columns) == (b.rows, b.columns)
        and (
            bool(a.spacing_issue or b.spacing_issue)
            or all(abs(x - y) <= 1e-4 + 1e-3 * abs(y) for x, y in zip(a.pixel_spacing, b.pixel_spacing, strict=True))
        )
        and a.orientation is not None
        and b.orientation is not None
        and max(abs(x - y) for x, y in zip(a.orientation, b.orientation, strict=True)) <= ORIENTATION_TOLERANCE
    )


def _grids(images: list[ImageHeader]) -> list[list[ImageHeader]]:
    """Placed images grouped by grid (orientation, size, pixel spacing)."""
    grids: list[list[ImageHeader]] = []
    for image in images:
        home = next((g for g in grids if _same_grid(g[0], image)), None)
        if home is None:
            grids.append([image])
        else:
            home.append(image)
    return grids


def _stack_order(images: list[ImageHeader]) -> tuple[object, ...]:
    """A sort key from the images' own values (never from file order): first InstanceNumber, grid, position."""
    numbers = [im.split.instance_number for im in images if im.split.instance_number is not None]
    first = images[0]
    normal = np.cross(first.orientation[:3], first.orientation[3:]) if first.orientation else np.zeros(3)
    along = min(float(np.asarray(im.position) @ normal) for im in images) if first.position else 0.0
    return (
        min(numbers) if numbers else float("inf"),
        tuple(round(v, 3) for v in first.orientation or ()),
        first.rows,
        first.columns,
        round(along, 2),
        min(str(im.path) for im in images),
    )


def _build_part(part: Part, regrid_irregular: bool, held: frozenset[int]) -> list[SeriesInfo]:
    """The part's stacks. ``held``: the InstanceNumbers of every image of the SeriesInstanceUID (numbering_gaps)."""
    by_path = {f.path: f for f in part.files}
    projection = [im for im in part.images if by_path[im.path].is_projection]
    unplaced = [
        im
        for im in part.images
        if not by_path[im.path].is_projection and (im.position is None or im.orientation is None)
    ]
    placed = [im for im in part.images if im.position is not None and im.orientation is not None]
    placed = [im for im in placed if not by_path[im.path].is_projection]
    stacks = sorted([[im] for im in projection] + _grids(placed), key=_stack_order)
    result: list[SeriesInfo] = []
    for number, images in enumerate(stacks, start=1):
        stack = number if len(stacks) > 1 else 0
        suffix = part.suffix + (f".stack{number}" if stack else "")
        if by_path[images[0].path].is_projection:
            result.append(_projection_stack(part, images[0], suffix, stack))
            continue
        for more, split_by, repeat in split_repeats(images):
            result.append(_placed_stack(part, repeat, suffix + more, split_by, stack, regrid_irregular, held))
    if unplaced:
        key = part.files[0].series_instance_uid + part.suffix + (".unplaced" if result else "")
        result = [
            _with(
                info,
                Problem(
                    kinds.IMAGES_WITHOUT_GEOMETRY,
                    f"{len(unplaced)} image(s) of this series have no usable position or orientation (split off as "
                    f"{key}): they may be slices of this stack",
                    True,
                ),
            )
            for info in result
        ]
        result.append(_unplaced_stack(part, unplaced, part.suffix + (".unplaced" if result else "")))
    return result


def _with(info: SeriesInfo, problem: Problem) -> SeriesInfo:
    return replace(info, problems=(*info.problems, problem))


def _series_info(
    part: Part,
    images: list[ImageHeader],
    slices: tuple[SliceRef, ...],
    geometry: Geometry,
    problems: list[Problem],
    **extra: object,
) -> SeriesInfo:
    """The SeriesInfo of one stack, with the problems every stack is checked for."""
    by_path = {f.path: f for f in part.files}
    first = by_path[images[0].path]
    files = [by_path[p] for p in dict.fromkeys(im.path for im in images)]
    syntaxes = tuple(sorted({f.transfer_syntax for f in files}))
    problems = list(part.problems) + problems + _image_problems(images, first.is_projection)
    problems += dict.fromkeys(p for f in files for p in f.problems)  # of its files: no decoder, refused mosaic
    if len(syntaxes) > 1:
        names = ", ".join(UID(t).name or t for t in syntaxes)
        problems.append(Problem(kinds.MIXED_TRANSFER_SYNTAXES, f"files use {len(syntaxes)} syntaxes: {names}"))
    if not first.frame_of_reference_uid:
        problems.append(
            Problem(kinds.NO_FRAME_OF_REFERENCE, "FrameOfReferenceUID missing: DICOM-SEG and RTSTRUCT outputs need it")
        )
    sources = {im.spacing_source for im in images}
    return SeriesInfo(
        series_instance_uid=first.series_instance_uid,
        study_instance_uid=first.study_instance_uid,
        frame_of_reference_uid=first.frame_of_reference_uid,
        modality=first.modality,
        sop_class_uid=first.sop_class_uid,
        series_description=first.series_description,
        slices=slices,
        geometry=geometry,
        transfer_syntaxes=syntaxes,
        problems=tuple(problems),
        series_number=first.series_number,
        pixel_spacing_source="unknown" if "unknown" in sources else images[0].spacing_source,
        **extra,  # type: ignore[arg-type]
    )


def _image_problems(images: list[ImageHeader], projection: bool) -> list[Problem]:
    """Rescale and pixel spacing problems of the images of one stack."""
    problems = []
    total = len(images)
    rescale = [im for im in images if im.rescale_issue]
    if rescale:
        problems.append(
            Problem(
                kinds.INVALID_RESCALE,
                f"{rescale[0].rescale_issue} in {_where(rescale[0])} ({len(rescale)} of {total} images)",
                True,
            )
        )
    if projection:
        if any(im.spacing_source == "unknown" for im in images):
            problems.append(
                Problem(
                    kinds.UNKNOWN_PIXEL_SPACING,
                    "neither PixelSpacing nor ImagerPixelSpacing: spacing unknown (1 mm written)",
                )
            )
        return problems
    spacing = [im for im in images if im.spacing_issue]
    if spacing:
        problems.append(
            Problem(
                kinds.INVALID_PIXEL_SPACING,
                f"{spacing[0].spacing_issue} in {_where(spacing[0])} ({len(spacing)} of {total} images)",
                True,
            )
        )
    return problems


def _where(image: ImageHeader) -> str:
    return image.path.name + (f" frame {image.frame + 1}" if image.frame is not None else "")


def _slice_refs(images: list[ImageHeader], positions: np.ndarray) -> tuple[SliceRef, ...]:
    return tuple(
        SliceRef(
            path=im.path,
            sop_instance_uid=im.sop_instance_uid,
            position=(float(p[0]), float(p[1]), float(p[2])),
            frame=im.frame,
            pixel=im.pixel,
            monochrome1=im.monochrome1,
            mosaic_size=im.mosaic_size,
            file_status=im.file_status,
        )
        for im, p in zip(images, positions, strict=True)
    )


def _projection_stack(part: Part, image: ImageHeader, suffix: str, stack: int) -> SeriesInfo:
    """A projection radiograph: a 2-D image of its own, at its position if it has one (as SimpleITK reads it)."""
    cosines = image.orientation or IDENTITY_ROWS
    row, col = np.asarray(cosines[:3]), np.asarray(cosines[3:])
    origin = image.position or (0.0, 0.0, 0.0)
    geometry = Geometry(
        shape=(1, image.rows, image.columns),
        spacing=(1.0, float(image.pixel_spacing[0]), float(image.pixel_spacing[1])),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=tuple(float(v) for v in np.stack([row, col, np.cross(row, col)], axis=1).ravel()),
    )
    slices = _slice_refs([image], np.asarray([origin], dtype=np.float64))
    return _series_info(
        part,
        [image],
        slices,
        geometry,
        [],
        stack=stack,
        key_suffix=suffix,
        split_by=dict(part.split_by),
        slice_spacing_source="unknown",
    )


def _unplaced_stack(part: Part, images: list[ImageHeader], suffix: str) -> SeriesInfo:
    """Cross-sectional images that cannot be placed in 3-D: one stack, never loadable, saying exactly why."""
    images = sorted(images, key=lambda im: (im.split.instance_number or 0, str(im.path), im.frame or 0))
    total = len(images)
    problems = []
    positions = Counter(im.position_issue for im in images if im.position_issue)
    for issue, count in positions.most_common(1):
        problems.append(Problem(kinds.NO_POSITION, f"ImagePositionPatient {issue} in {count} of {total} images", True))
    orientations = Counter(im.orientation_issue for im in images if im.orientation_issue)
    for issue, count in orientations.most_common(1):
        kind = kinds.NO_ORIENTATION if issue == "missing" else kinds.INVALID_ORIENTATION
        problems.append(Problem(kind, f"ImageOrientationPatient {issue} in {count} of {total} images", True))
    first = images[0]
    cosines = first.orientation or IDENTITY_ROWS
    row, col = np.asarray(cosines[:3]), np.asarray(cosines[3:])
    origin = np.asarray(first.position or (0.0, 0.0, 0.0), dtype=np.float64)
    geometry = Geometry(
        shape=(total, first.rows, first.columns),
        spacing=(1.0, float(first.pixel_spacing[0]), float(first.pixel_spacing[1])),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=tuple(float(v) for v in np.stack([row, col, np.cross(row, col)], axis=1).ravel()),
    )
    positions_array = np.asarray([im.position or tuple(origin) for im in images], dtype=np.float64)
    return _series_info(
        part,
        images,
        _slice_refs(images, positions_array),
        geometry,
        problems,
        key_suffix=suffix,
        split_by=dict(part.split_by),
        slice_spacing_source="unknown",
    )


def _placed_stack(
    part: Part,
    images: list[ImageHeader],
    suffix: str,
    split_by: dict[str, str],
    stack: int,
    regrid_irregular: bool,
    held: frozenset[int] = frozenset(),
) -> SeriesInfo:
    """Sort along the slice normal; geometry as SimpleITK defines it; the stack's spacing problems."""
    reference = images[0]
    assert reference.orientation is not None
    row, col = np.asarray(reference.orientation[:3]), np.asarray(reference.orientation[3:])
    normal = np.cross(row, col)
    positions = np.array([im.position for im in images], dtype=np.float64)
    along = positions @ normal
    order = sorted(range(len(images)), key=lambda i: (along[i], str(images[i].path), images[i].frame or 0))
    images = [images[i] for i in order]
    positions, along = positions[order], along[order]
    problems: list[Problem] = _shared_instances(images)
    irregular = variable = False
    if len(images) == 1:
        spacing_z, source = _single_slice_spacing(reference)
        if source == "unknown":
            problems.append(
                Problem(
                    kinds.UNKNOWN_SLICE_SPACING,
                    "single slice without SpacingBetweenSlices or SliceThickness: z spacing unknown (1 mm written)",
                )
            )
    else:
        source = "positions"
        spacing_z, spacing_found, variable = spacing_problems(np.diff(along), regrid_irregular=regrid_irregular)
        tilt_found, tilted = tilt_problems(
            positions, normal, min(reference.pixel_spacing), regrid_irregular=regrid_irregular
        )
        problems += spacing_found + tilt_found
        if variable and regrid_irregular and all(im.frame is None for im in images):
            problems += numbering_gaps([im.split.instance_number for im in images], held)
        irregular = variable or tilted
    geometry = Geometry(
        shape=(len(images), reference.rows, reference.columns),
        spacing=(float(spacing_z), float(reference.pixel_spacing[0]), float(reference.pixel_spacing[1])),
        origin=(float(positions[0][0]), float(positions[0][1]), float(positions[0][2])),
        direction=tuple(float(v) for v in np.stack([row, col, normal], axis=1).ravel()),
    )
    return _series_info(
        part,
        images,
        _slice_refs(images, positions),
        geometry,
        problems,
        stack=stack,
        key_suffix=suffix,
        split_by={**part.split_by, **split_by},
        slice_spacing_source=source,
        irregular=irregular,
        regrid_geometry=regular_grid(geometry, positions, smallest_step=variable) if irregular else None,
    )


def _shared_instances(images: list[ImageHeader]) -> list[Problem]:
    """A fatal problem when files of the stack that lie at different positions carry one SOPInstanceUID (frames of
    one file share theirs; copies of one file at one position are ``duplicate_positions``): the DICOM-SEG's and RT
    Structure Set's references to their source images would be ambiguous."""
    files: dict[str, set[Path]] = {}
    positions: dict[str, set[tuple[float, float, float]]] = {}
    for image in images:
        if image.sop_instance_uid:
            files.setdefault(image.sop_instance_uid, set()).add(image.path)
            positions.setdefault(image.sop_instance_uid, set()).add(image.position or (0.0, 0.0, 0.0))
    shared = sorted(uid for uid, paths in files.items() if len(paths) > 1 and len(positions[uid]) > 1)
    if not shared:
        return []
    names = ", ".join(sorted(path.name for path in files[shared[0]])[:3])
    reason = f"{len(shared)} SOPInstanceUID(s) carried by files at different positions (one by {names})"
    return [Problem(kinds.DUPLICATE_INSTANCES, reason, True)]


def _single_slice_spacing(image: ImageHeader) -> tuple[float, str]:
    """SpacingBetweenSlices, else SliceThickness, else unknown (1 mm, said by a problem): never silently 1 mm."""
    if image.slice_spacing is not None and plausible_spacing(image.slice_spacing):
        return image.slice_spacing, "SpacingBetweenSlices"
    if image.slice_thickness is not None and plausible_spacing(image.slice_thickness):
        return image.slice_thickness, "SliceThickness"
    return 1.0, "unknown"


def _unique_keys(series: list[SeriesInfo]) -> list[SeriesInfo]:
    """``series`` with later duplicates of a key renamed ``.dupN`` (only hostile UIDs can make keys collide)."""
    taken: set[str] = set()
    result = []
    for info in sorted(series, key=lambda s: (s.key, s.study_instance_uid, str(s.files[:1]))):
        number = 2
        while info.key in taken:
            base = info.key_suffix if number == 2 else info.key_suffix.rsplit(".dup", 1)[0]
            info = replace(info, key_suffix=f"{base}.dup{number}")
            number += 1
        taken.add(info.key)
        result.append(info)
    return result
