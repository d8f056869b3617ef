"""Write preview.png: a picture of one series' segmentation for a person to look at, drawn with Pillow.

Layout: a title (model, the run's "not for clinical use" marker), then eight panels of the image with the
structures' contours in their colours: six axial slices (first ones that together show every structure found, then
others spread evenly over the slices that hold a structure), one coronal and one sagittal section where they cut
the most of what was found; then a legend with each structure's volume. Views follow the radiological
convention (axial: patient right on the left, anterior up; coronal: right on the left, superior up; sagittal:
anterior on the left, superior up), found from the series' direction cosines, so an oblique or reversed series is
shown upright; each view is scaled with its pixel spacing, so
anatomy keeps its aspect. The image is windowed with the model's CT window when its first channel has one,
else between the 1st and 99th percentiles. Contours come from ``contours.mask_contours`` (the same marching
squares as the RT Structure Set). Pillow rather than matplotlib: no figure machinery, a few tens of
milliseconds per series. No UIDs or patient data are drawn.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.model.spec import ModelPackage, Structure
from innereye_batch.results import StructureStats
from innereye_batch.writers.registry import OutputFormat, WriteContext

if TYPE_CHECKING:
    from PIL import Image

    from innereye_batch.tasks.segmentation import SegmentationPrediction

FILENAME = "preview.png"
PANEL = 220
"""Side of one panel (pixels)."""
AXIAL_PANELS = 6
COLUMNS = 4
_GAP = 4
_TITLE_HEIGHT = 26
_LEGEND_ROW = 20
_BACKGROUND = (24, 24, 24)
_TEXT = (235, 235, 235)
MARKER_COLOUR = (255, 80, 80)


@dataclass(frozen=True)
class _View:
    """An anatomical view of the volume: the array axis it cuts and how its section is shown upright."""

    name: str
    normal_axis: int
    """Array axis (0 z, 1 y, 2 x) across which the sections are taken."""
    transpose: bool
    """Show the section's second remaining array axis vertically."""
    flip_vertical: bool
    flip_horizontal: bool
    spacing: tuple[float, float]
    """(vertical, horizontal) mm per pixel of the upright section."""
    edges: tuple[str, str]
    """Patient directions at the panel's left and top edges."""


# Per view: the patient axis (LPS index) its sections are normal to, the LPS directions that should point right
# and down on the screen, and the letters at its left and top edges.
_CONVENTIONS = {
    "axial": (2, (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), ("R", "A")),
    "coronal": (1, (1.0, 0.0, 0.0), (0.0, 0.0, -1.0), ("R", "S")),
    "sagittal": (0, (0.0, 1.0, 0.0), (0.0, 0.0, -1.0), ("A", "S")),
}


def anatomical_views(geometry: Geometry) -> dict[str, _View]:
    """The axial, coronal and sagittal views of ``geometry``'s array (each the closest array axis, for oblique
    series), oriented by the radiological convention."""
    # Array axis k (0 z, 1 y, 2 x) points along the direction matrix's column 2 - k.
    axis_vectors = [geometry.direction_matrix[:, 2 - k] for k in range(3)]
    alignment = np.abs(np.array([[v[patient] for v in axis_vectors] for patient, *_ in _CONVENTIONS.values()]))
    names = list(_CONVENTIONS)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(alignment[i, p[i]] for i in range(3)))
    views = {}
    for name, normal in zip(names, best, strict=True):
        _, right, down, edges = _CONVENTIONS[name]
        first, second = (k for k in range(3) if k != normal)  # the section's rows, columns before reorienting
        vertical, horizontal = first, second
        if abs(np.dot(axis_vectors[first], right)) > abs(np.dot(axis_vectors[second], right)):
            vertical, horizontal = second, first
        views[name] = _View(
            name=name,
            normal_axis=normal,
            transpose=vertical != first,
            flip_vertical=float(np.dot(axis_vectors[vertical], down)) < 0,
            flip_horizontal=float(np.dot(axis_vectors[horizontal], right)) < 0,
            spacing=(geometry.spacing[vertical], geometry.spacing[horizontal]),
            edges=edges,
        )
    return views


def _section(volume: np.ndarray, view: _View, index: int) -> np.ndarray:
    """The upright 2-D section of ``volume`` at ``index`` along the view's normal axis."""
    section = np.take(volume, index, axis=view.normal_axis)
    if view.transpose:
        section = section.T
    if view.flip_vertical:
        section = section[::-1]
    if view.flip_horizontal:
        section = section[:, ::-1]
    return section


def ct_window(package: ModelPackage, image: np.ndarray) -> tuple[float, float]:
    """Display window: the model's CT window for its first channel, else the 1st-99th percentile range."""
    first = package.segmentation.normalisation[0]
    if first.method == "ct_window" and first.level is not None and first.window is not None:
        return first.level - first.window / 2, first.level + first.window / 2
    sample = image[:: max(1, image.shape[0] // 32), ::4, ::4]
    low, high = (float(v) for v in np.percentile(sample, [1, 99]))
    return (low, high) if high > low else (low, low + 1.0)


def _section_indices(labels: np.ndarray, views: dict[str, _View]) -> dict[str, list[int]]:
    """Axial sections: first, slices that together hold every structure found (each of its slices chosen for the
    most structures not yet shown, then their area), then slices spread evenly over the rest of those holding a
    structure; one coronal and one sagittal section where they cut the most of what was found (the middle of the
    volume when nothing was found). A small structure on a slice between evenly spread ones was shown in no panel
    while the legend gave its volume."""

    def found_along(axis: int) -> np.ndarray:
        return np.count_nonzero(labels, axis=tuple(a for a in range(3) if a != axis))

    axial = views["axial"].normal_axis
    chosen: dict[str, list[int]] = {}
    holding = np.flatnonzero(found_along(axial))
    if holding.size:
        covering = _covering_slices(labels, axial)[:AXIAL_PANELS]
        rest = np.setdiff1d(holding, covering)
        spread = np.linspace(0, len(rest) - 1, min(AXIAL_PANELS - len(covering), len(rest))).round().astype(int)
        chosen["axial"] = sorted({*covering, *(int(rest[p]) for p in spread)})
    else:
        size = labels.shape[axial]
        chosen["axial"] = sorted({int(v) for v in np.linspace(0, size - 1, min(AXIAL_PANELS, size)).round()})
    for name in ("coronal", "sagittal"):
        axis = views[name].normal_axis
        counts = found_along(axis)
        chosen[name] = [int(counts.argmax()) if counts.any() else (labels.shape[axis] - 1) // 2]
    return chosen


def _covering_slices(labels: np.ndarray, axis: int) -> list[int]:
    """Slices across ``axis`` that together hold every label found, greedily: each the slice holding the most
    labels not yet held (ties: the most of their voxels). Labels are counted within their own boxes."""
    from innereye_batch.boxes import label_boxes

    boxes = label_boxes(labels, int(labels.max(initial=0)))
    area: dict[int, np.ndarray] = {}  # label -> its voxels on each slice
    for label, box in enumerate(boxes, start=1):
        if box is not None:
            counts = np.zeros(labels.shape[axis], np.int64)
            others = tuple(a for a in range(3) if a != axis)
            counts[box[axis]] = np.count_nonzero(labels[box] == label, axis=others)
            area[label] = counts
    picked: list[int] = []
    while area:
        held = np.stack([counts > 0 for counts in area.values()])  # (labels left, slices)
        voxels = np.stack(list(area.values())).sum(axis=0)
        best = int(np.lexsort((-voxels, -held.sum(axis=0)))[0])
        picked.append(best)
        area = {label: counts for label, counts in area.items() if counts[best] == 0}
    return picked


def render_preview(
    image: np.ndarray,
    labels: np.ndarray,
    geometry: Geometry,
    structures: Sequence[Structure],
    stats: Sequence[StructureStats],
    *,
    window: tuple[float, float],
    title: str,
    marker: str = "",
) -> Image.Image:
    """The preview picture of ``image`` (z, y, x, modality units) with ``labels`` (label i = ``structures[i-1]``)."""
    from PIL import Image, ImageDraw

    font = label_font(13)
    views = anatomical_views(geometry)
    sections = _section_indices(labels, views)
    # axial sections from the head down, whichever way the series' slices run
    superior = geometry.direction_matrix[2, 2 - views["axial"].normal_axis]
    sections["axial"].sort(reverse=bool(superior > 0))
    panels = [
        _panel(image, window, labels, views[name], index, structures, font)
        for name, indices in sections.items()
        for index in indices
    ]
    rows = -(-len(panels) // COLUMNS)
    legend_height = _LEGEND_ROW * (-(-len(structures) // 2)) + _GAP * 2
    width = COLUMNS * PANEL + (COLUMNS + 1) * _GAP
    height = _TITLE_HEIGHT + rows * (PANEL + _GAP) + _GAP + legend_height
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    marker_width = draw.textlength(marker, font=font) + 3 * _GAP if marker else 0
    draw.text((_GAP + 2, 6), _fitted(draw, title, font, width - 2 * _GAP - marker_width), fill=_TEXT, font=font)
    if marker:  # never overwritten by a long title
        draw.text((width - _GAP - 2, 6), marker, fill=MARKER_COLOUR, font=font, anchor="ra")
    for i, panel in enumerate(panels):
        row, column = divmod(i, COLUMNS)
        canvas.paste(panel, (_GAP + column * (PANEL + _GAP), _TITLE_HEIGHT + row * (PANEL + _GAP)))
    top = _TITLE_HEIGHT + rows * (PANEL + _GAP) + _GAP
    for i, (structure, stat) in enumerate(zip(structures, stats, strict=True)):
        row, column = divmod(i, 2)
        x, y = _GAP + 2 + column * (width // 2), top + row * _LEGEND_ROW
        draw.rectangle((x, y + 3, x + 12, y + 15), fill=tuple(structure.colour))
        volume = f": {stat.volume_text}"  # kept whole: a long name is shortened to fit its column
        name = _fitted(draw, structure.name, font, width // 2 - 24 - draw.textlength(volume, font=font))
        draw.text((x + 18, y + 2), name + volume, fill=_TEXT, font=font)
    return canvas


def _fitted(draw: Any, text: str, font: Any, room: float) -> str:
    """``text`` shortened with an ellipsis to at most ``room`` pixels wide in ``font``."""
    if draw.textlength(text, font=font) <= room:
        return text
    while text and draw.textlength(text + "...", font=font) > room:
        text = text[:-1]
    return text + "..."  # ASCII: the bitmap font has no ellipsis


def _panel(
    image: np.ndarray,
    window: tuple[float, float],
    labels: np.ndarray,
    view: _View,
    index: int,
    structures: Sequence[Structure],
    font: Any,
) -> Image.Image:
    """One panel: the section windowed, scaled to its aspect and centred, the structures' contours, its name."""
    from PIL import Image, ImageDraw

    from innereye_batch.writers.contours import mask_contours

    low, high = window
    section = (np.clip((_section(image, view, index) - low) / (high - low), 0.0, 1.0) * 255).astype(np.uint8)
    section_labels = _section(labels, view, index)
    rows, columns = section.shape
    mm_high, mm_wide = rows * view.spacing[0], columns * view.spacing[1]
    scale = (PANEL - 2) / max(mm_high, mm_wide)  # panel pixels per mm
    size = (max(1, round(mm_wide * scale)), max(1, round(mm_high * scale)))
    picture = Image.fromarray(np.ascontiguousarray(section)).resize(size, Image.Resampling.BILINEAR).convert("RGB")
    panel = Image.new("RGB", (PANEL, PANEL), (0, 0, 0))
    left, top = (PANEL - size[0]) // 2, (PANEL - size[1]) // 2
    panel.paste(picture, (left, top))
    draw = ImageDraw.Draw(panel)
    y_scale, x_scale = view.spacing[0] * scale, view.spacing[1] * scale
    for number, structure in enumerate(structures, start=1):
        for contour in mask_contours(section_labels == number):
            points = [(left + (c + 0.5) * x_scale, top + (r + 0.5) * y_scale) for r, c in contour]
            ring = [*points, points[0]]
            draw.line(ring, fill=(0, 0, 0), width=4)  # a dark edge keeps light colours visible on bone
            draw.line(ring, fill=tuple(structure.colour), width=2)
    size_along = labels.shape[view.normal_axis]
    outline = {"fill": _TEXT, "font": font, "stroke_width": 2, "stroke_fill": (0, 0, 0)}
    draw.text((4, PANEL - 4), f"{view.name} {index + 1}/{size_along}", anchor="ld", **outline)  # clear of the edges
    draw.text((4, PANEL // 2), view.edges[0], anchor="lm", **outline)
    draw.text((PANEL // 2, 4), view.edges[1], anchor="ma", **outline)
    return panel


def label_font(size: int) -> Any:
    """Pillow's default font at ``size`` (its small bitmap font where Pillow lacks FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError, TypeError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def write_preview(
    path: Path,
    image: np.ndarray,
    labels: np.ndarray,
    geometry: Geometry,
    package: ModelPackage,
    stats: Sequence[StructureStats],
    *,
    marker: str = "",
) -> None:
    """Write the preview of one series to ``path`` (PNG)."""
    if tuple(image.shape) != tuple(labels.shape) or tuple(labels.shape) != tuple(geometry.shape):
        raise ValueError(f"image {image.shape}, labels {labels.shape} and grid {geometry.shape} differ")
    picture = render_preview(
        image,
        labels,
        geometry,
        package.segmentation.structures,
        stats,
        window=ct_window(package, image),
        title=f"{package.name}: {len(package.segmentation.structures)} structures",
        marker=marker,
    )
    picture.save(path, format="PNG", compress_level=3)


def _write(path: Path, prediction: SegmentationPrediction, context: WriteContext) -> None:
    image = getattr(prediction, "image", None)
    if image is None:  # a prediction that did not keep its image: decode the series again
        from innereye_batch.dicom.volume import load_volume

        image = load_volume(prediction.item.primary).array
    write_preview(
        path,
        np.asarray(image),
        prediction.labels,
        prediction.geometry,
        context.package,
        prediction.structures,
        marker=context.options.clinical_marker,
    )


FORMAT = OutputFormat(
    name="preview",
    filename=FILENAME,
    tasks=frozenset({"segmentation"}),
    write=_write,
    description="PNG for people: axial, coronal and sagittal sections with the structures' contours, volumes",
)
