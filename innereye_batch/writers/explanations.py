"""Explanation heat maps of a classification prediction as output formats (the drawing is ``heatmap.py``'s).

- ``explanation-png`` (``explanation.png``): for people; the overlay of each requested method, side by side in
  the order of ``--explain``, each panel the image's own size, under a strip with the run's clinical marker ("NOT
  FOR CLINICAL USE" unless ``--clinical-marker`` says otherwise; no strip without a marker).
- ``explanation-npz`` (``explanation.npz``): for programs; one float32 (y, x) array in [0, 1] per method, on the
  image's grid, named by the method (``numpy.load(path)["gradcam"]``).
- ``explanation-dicom`` (``explanation.dcm``, not written unless asked for): a DICOM Secondary Capture of the
  first method's overlay, referencing the source image, so that a PACS viewer shows it beside the image; its
  series and derivation descriptions end with the clinical marker.
All three need ``--explain``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from innereye_batch.writers.registry import OutputFormat, WriteContext

if TYPE_CHECKING:
    from innereye_batch.tasks.classification import ClassificationPrediction

_GAP = 8
"""Pixels of black between panels of the PNG."""
MARKER_STRIP = 20
"""Pixels of black above the panels of the PNG, holding the clinical marker."""


def _maps(prediction: ClassificationPrediction) -> dict[str, np.ndarray]:
    if not prediction.heatmaps:
        raise ValueError("this prediction has no explanation maps (run with --explain)")
    return prediction.heatmaps


def write_explanation_png(path: Path, prediction: ClassificationPrediction, context: WriteContext) -> None:
    from PIL import Image

    from innereye_batch.writers.heatmap import overlay_rgb

    panels = [overlay_rgb(prediction.image.pixels, heat) for heat in _maps(prediction).values()]
    marker = context.options.clinical_marker
    top = MARKER_STRIP if marker else 0
    rows = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + _GAP * (len(panels) - 1)
    montage = np.zeros((top + rows, width, 3), dtype=np.uint8)
    x = 0
    for panel in panels:
        montage[top : top + panel.shape[0], x : x + panel.shape[1]] = panel
        x += panel.shape[1] + _GAP
    picture = Image.fromarray(montage)
    if marker:
        from PIL import ImageDraw

        from innereye_batch.writers.preview import MARKER_COLOUR, label_font

        ImageDraw.Draw(picture).text((width - 4, 3), marker, fill=MARKER_COLOUR, font=label_font(13), anchor="ra")
    picture.save(path, format="PNG")


def write_explanation_npz(path: Path, prediction: ClassificationPrediction, context: WriteContext) -> None:
    arrays = {method: np.asarray(heat, dtype=np.float32) for method, heat in _maps(prediction).items()}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    Path(path).write_bytes(buffer.getvalue())


def write_explanation_dicom(path: Path, prediction: ClassificationPrediction, context: WriteContext) -> None:
    from innereye_batch.writers.heatmap import write_heatmap_secondary_capture

    method, heat = next(iter(_maps(prediction).items()))
    image = prediction.image
    write_heatmap_secondary_capture(
        path,
        image.pixels,
        heat,
        prediction.item.primary.slices[0].path,
        frame_index=image.frame_index if image.number_of_frames > 1 else None,
        description=f"{method} for class {prediction.explained_class}",
        model_name=context.package.name,
        software_version=context.tool_version,
        clinical_marker=context.options.clinical_marker,
    )


_TASKS = frozenset({"classification"})
FORMATS = (
    OutputFormat(
        name="explanation-png",
        filename="explanation.png",
        tasks=_TASKS,
        write=write_explanation_png,
        description="overlay of each --explain method's heat map on the image, side by side (PNG)",
        needs_explanations=True,
    ),
    OutputFormat(
        name="explanation-npz",
        filename="explanation.npz",
        tasks=_TASKS,
        write=write_explanation_npz,
        description="raw heat maps, float32 in [0, 1] on the image grid, one array per method (NumPy .npz)",
        needs_explanations=True,
    ),
    OutputFormat(
        name="explanation-dicom",
        filename="explanation.dcm",
        tasks=_TASKS,
        write=write_explanation_dicom,
        description="DICOM Secondary Capture of the first method's overlay, referencing the source image",
        needs_explanations=True,
        default=False,
    ),
)
