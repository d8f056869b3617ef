"""The images of a multi-frame file, one per frame, each placed in the patient: from the per-frame and shared
functional groups of an enhanced image, or from GridFrameOffsetVector in a legacy one (RT dose). ``file_header``
calls these with the file's top-level header values (by keyword, converted once).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.tag import Tag

from innereye_batch.dicom import headers as h
from innereye_batch.dicom.headers import ImageHeader

_OFFSET_TOLERANCE_MM = 1e-3
"""How far GridFrameOffsetVector's first value may be from either form's (see ``legacy_multiframe_images``)."""
_IN_STACK_POSITION_POINTERS = (Tag("InStackPositionNumber"), Tag("ImagePositionPatient"))


def enhanced_images(
    path: Path, sop_uid: str, header: dict[Any, Any], size: tuple[int, int], frames: int, projection: bool
) -> list[ImageHeader]:
    """One image per frame of an enhanced multi-frame file, from its per-frame and shared groups. When the
    per-frame items are not one per frame (NumberOfFrames), which item describes which frame is unknown: every
    frame is then left unplaced, saying why (never a shorter stack that silently lost frames)."""
    shared = h.first_item(header, "SharedFunctionalGroupsSequence")
    in_stack = _position_dimensions(header)
    images = []
    for index, groups in enumerate(header["PerFrameFunctionalGroupsSequence"]):
        plane = h.first_item(groups, "PlanePositionSequence") or h.first_item(shared, "PlanePositionSequence")
        orientation_item = h.first_item(groups, "PlaneOrientationSequence") or h.first_item(
            shared, "PlaneOrientationSequence"
        )
        measures = h.first_item(groups, "PixelMeasuresSequence") or h.first_item(shared, "PixelMeasuresSequence")
        transform = h.first_item(groups, "PixelValueTransformationSequence") or h.first_item(
            shared, "PixelValueTransformationSequence"
        )
        rescale_source = transform if transform is not None else header
        position, position_issue = h.position(h.value(plane, "ImagePositionPatient"))
        orientation, orientation_issue = h.orientation(h.value(orientation_item, "ImageOrientationPatient"))
        spacing, spacing_source, spacing_issue = h.pixel_spacing(measures, header, projection)
        split = h.split_values(header, (groups, shared))
        if split.dimension_index is not None and in_stack:
            kept = tuple(v for i, v in enumerate(split.dimension_index) if i not in in_stack)
            split = dataclasses.replace(split, dimension_index=kept)
        images.append(
            ImageHeader(
                path=path,
                sop_instance_uid=sop_uid,
                frame=index,
                position=position,
                orientation=orientation,
                pixel_spacing=spacing,
                rows=size[0],
                columns=size[1],
                slice_spacing=h.single_float(h.value(measures, "SpacingBetweenSlices")),
                position_issue=position_issue,
                orientation_issue=orientation_issue,
                spacing_source=spacing_source,
                spacing_issue=spacing_issue,
                slice_thickness=h.single_float(h.value(measures, "SliceThickness")),
                rescale_issue=h.value_mapping_issue(
                    header,
                    h.value(rescale_source, "RescaleSlope"),
                    h.value(rescale_source, "RescaleIntercept"),
                    projection=projection,
                ),
                split=split,
            )
        )
    if len(images) != frames:
        issue = f"unknown: PerFrameFunctionalGroupsSequence has {len(images)} items for NumberOfFrames {frames}"
        return [
            dataclasses.replace(images[min(index, len(images) - 1)], frame=index, position=None, position_issue=issue)
            for index in range(frames)
        ]
    return images


def _position_dimensions(header: dict[Any, Any]) -> set[int]:
    """Indices of DimensionIndexValues that number positions within a stack (not volumes)."""
    dimensions = h.value(header, "DimensionIndexSequence") or []
    return {i for i, item in enumerate(dimensions) if item.get("DimensionIndexPointer") in _IN_STACK_POSITION_POINTERS}


def legacy_multiframe_images(
    path: Path, sop_uid: str, header: dict[Any, Any], size: tuple[int, int], frames: int, projection: bool
) -> list[ImageHeader]:
    """Frames of a multi-frame file without functional groups, placed by GridFrameOffsetVector (RT dose).

    The vector comes in two forms (PS3.3 C.8.8.3.2): offsets along the normal from ImagePositionPatient, the
    first 0; or, for axial images, the frames' z coordinates, the first equal to ImagePositionPatient's. The
    first frame lies at ImagePositionPatient in both, so frame k lies ``offset[k] - offset[0]`` along the normal
    from it; a first value that is neither form's leaves every frame unplaced.
    """
    origin, position_issue = h.position(h.value(header, "ImagePositionPatient"))
    orientation, orientation_issue = h.orientation(h.value(header, "ImageOrientationPatient"))
    raw_offsets = h.value(header, "GridFrameOffsetVector")
    offsets = h.floats(raw_offsets, frames)
    spacing, spacing_source, spacing_issue = h.pixel_spacing(None, header, projection)
    positions: list[tuple[float, float, float] | None] = [None] * frames
    if origin is not None and orientation is not None and offsets is not None:
        normal = np.cross(orientation[:3], orientation[3:])
        first, along = offsets[0], float(np.dot(origin, normal))
        if abs(first) <= _OFFSET_TOLERANCE_MM or abs(first - along) <= _OFFSET_TOLERANCE_MM:
            for index, offset in enumerate(offsets):
                x, y, z = (float(v) for v in np.asarray(origin) + (offset - first) * normal)
                positions[index] = (x, y, z)
        else:
            position_issue = (
                f"unknown: GridFrameOffsetVector starts at {first:g} mm, neither 0 (offsets from "
                f"ImagePositionPatient) nor its {along:g} mm along the slice normal (z coordinates)"
            )
    elif position_issue is None and raw_offsets is None:
        position_issue = "no per-frame positions (multi-frame image without GridFrameOffsetVector)"
    elif position_issue is None:
        position_issue = f"unknown: GridFrameOffsetVector is not {frames} finite numbers, one per frame"
    slope, intercept = h.value(header, "RescaleSlope"), h.value(header, "RescaleIntercept")
    rescale = h.value_mapping_issue(header, slope, intercept, projection=projection)
    split = h.split_values(header)
    return [
        ImageHeader(
            path=path,
            sop_instance_uid=sop_uid,
            frame=index,
            position=frame_position,
            orientation=orientation,
            pixel_spacing=spacing,
            rows=size[0],
            columns=size[1],
            position_issue=position_issue if frame_position is None else None,
            orientation_issue=orientation_issue,
            spacing_source=spacing_source,
            spacing_issue=spacing_issue,
            slice_thickness=h.single_float(h.value(header, "SliceThickness")),
            rescale_issue=rescale,
            split=split,
        )
        for index, frame_position in enumerate(positions)
    ]
