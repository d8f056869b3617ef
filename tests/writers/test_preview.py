"""preview.png: upright views for any acquisition direction, the right aspect, structure colours, a useful window."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.model.spec import Normalisation
from innereye_batch.tasks.base import WorkItem
from innereye_batch.tasks.segmentation import SegmentationPrediction, structure_stats
from innereye_batch.writers import preview
from innereye_batch.writers.registry import WriteContext, WriterOptions
from tests.factory import rotation_direction, write_series
from tests.writers.helpers import DEFAULT_STRUCTURES, make_package, series_info_from

DIRECTIONS = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "rows_flipped": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "columns_flipped": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "feet_first_prone": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "oblique": rotation_direction((1.0, 2.0, 0.5), 25.0),
    "coronal_acquisition": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal_acquisition": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


def _geometry(direction: str, shape: tuple[int, int, int] = (12, 14, 16)) -> Geometry:
    row, column = (np.asarray(v, dtype=float) for v in DIRECTIONS[direction])
    normal = np.cross(row, column)
    return Geometry(shape, (2.0, 1.0, 1.5), (0.0, 0.0, 0.0), tuple(np.stack([row, column, normal], axis=1).ravel()))


def _octant_labels(geometry: Geometry) -> np.ndarray:
    """Label 1 where the voxel lies toward the patient's right, anterior and superior (LPS x < 0, y < 0, z > 0) of
    the volume's centre."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in geometry.shape), indexing="ij"), axis=-1).reshape(-1, 3)
    affine = geometry.lps_affine()
    lps = index[:, ::-1] @ affine[:3, :3].T + affine[:3, 3]
    centre = geometry.index_to_lps(tuple((n - 1) / 2 for n in geometry.shape))  # type: ignore[arg-type]
    offset = lps - centre
    inside = (offset[:, 0] < -1) & (offset[:, 1] < -1) & (offset[:, 2] > 1)
    return inside.reshape(geometry.shape).astype(np.uint8)


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
def test_views_are_upright_in_the_radiological_convention(direction: str) -> None:
    geometry = _geometry(direction)
    labels = _octant_labels(geometry)
    views = preview.anatomical_views(geometry)
    assert sorted(v.normal_axis for v in views.values()) == [0, 1, 2]
    # patient right is shown on the left (axial, coronal), anterior on the left (sagittal); anterior (axial) and
    # superior (coronal, sagittal) up: the right-anterior-superior octant is in the top-left quadrant of every view
    for name, view in views.items():
        others = tuple(axis for axis in range(3) if axis != view.normal_axis)
        index = int(np.count_nonzero(labels, axis=others).argmax())
        section = preview._section(labels, view, index)
        rows, columns = np.nonzero(section)
        assert rows.size, (name, index)
        assert rows.mean() < section.shape[0] / 2, f"{name}: not at the top"
        assert columns.mean() < section.shape[1] / 2, f"{name}: not on the left"


def test_sections_are_shown_with_their_aspect(tmp_path: Path) -> None:
    geometry = Geometry((10, 40, 40), (4.0, 0.5, 0.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    image = np.full(geometry.shape, 1000.0, dtype=np.float32)
    labels = np.zeros(geometry.shape, dtype=np.uint8)
    labels[3:6, 10:20, 10:20] = 1
    picture = preview.render_preview(
        image, labels, geometry, DEFAULT_STRUCTURES, _stats(labels, geometry), window=(0, 500), title="t"
    )
    # the coronal panel (7th): 40 mm tall (10 slices x 4 mm), 20 mm wide (40 columns x 0.5 mm)
    x0 = preview._GAP + 2 * (preview.PANEL + preview._GAP)
    y0 = preview._TITLE_HEIGHT + preview.PANEL + preview._GAP
    panel = np.asarray(picture.crop((x0, y0, x0 + preview.PANEL, y0 + preview.PANEL)).convert("L"))
    centre = preview.PANEL // 2
    tall = np.count_nonzero(panel[:, centre + 30] > 200)
    wide = np.count_nonzero(panel[centre + 30, :] > 200)
    assert tall == pytest.approx(2 * wide, rel=0.05)


def _stats(labels: np.ndarray, geometry: Geometry) -> tuple:  # type: ignore[type-arg]
    return structure_stats(labels, geometry, [s.name for s in DEFAULT_STRUCTURES])


def _colour_pixels(picture: Image.Image, colour: tuple[int, int, int], tolerance: int = 8) -> int:
    pixels = np.asarray(picture.convert("RGB")).astype(int)
    return int(np.count_nonzero(np.abs(pixels - np.asarray(colour)).max(axis=-1) <= tolerance))


def test_format_draws_contours_in_structure_colours_and_the_marker(tmp_path: Path) -> None:
    generated = write_series(tmp_path / "dicom", shape=(10, 32, 30))
    series = series_info_from(generated)
    labels = np.zeros(series.geometry.shape, dtype=np.uint8)
    labels[2:6, 5:15, 5:15] = 1
    labels[4:8, 18:28, 15:25] = 2  # structure 3 absent: "not found" in the legend
    package = make_package(tmp_path / "model")
    prediction = SegmentationPrediction(
        WorkItem((series,)), labels, series.geometry, _stats(labels, series.geometry), image=generated.voxels
    )
    out = tmp_path / "preview.png"

    preview.FORMAT.write(out, prediction, WriteContext(package, "1"))

    picture = Image.open(out)
    assert picture.format == "PNG" and picture.size[0] == preview.COLUMNS * preview.PANEL + 5 * preview._GAP
    for structure in DEFAULT_STRUCTURES[:2]:
        assert _colour_pixels(picture, structure.colour) > 100  # contours and legend swatch
    assert _colour_pixels(picture, DEFAULT_STRUCTURES[2].colour) < 200  # legend swatch only (12 x 12)
    assert _colour_pixels(picture, preview.MARKER_COLOUR, tolerance=40) > 20  # the "not for clinical use" marker

    without_image = replace(prediction, image=None)  # decoded again from the series: the same picture
    out_again = tmp_path / "again.png"
    preview.FORMAT.write(out_again, without_image, WriteContext(package, "1"))
    np.testing.assert_array_equal(np.asarray(Image.open(out_again)), np.asarray(picture))

    unmarked = tmp_path / "unmarked.png"
    preview.FORMAT.write(unmarked, prediction, WriteContext(package, "1", options=WriterOptions(clinical_marker="")))
    assert _colour_pixels(Image.open(unmarked), preview.MARKER_COLOUR, tolerance=40) == 0


def test_window_is_the_models_ct_window_else_percentiles(tmp_path: Path) -> None:
    package = make_package(tmp_path / "model")
    image = np.random.default_rng(1).uniform(-1000, 1000, (8, 128, 128)).astype(np.float32)
    low, high = preview.ct_window(package, image)  # no CT window in the model: the 1st and 99th percentiles
    assert low == pytest.approx(-980, abs=15) and high == pytest.approx(980, abs=15)
    windowed = replace(
        package,
        task_spec=replace(package.segmentation, normalisation=(Normalisation("ct_window", level=40.0, window=400.0),)),
    )
    assert preview.ct_window(windowed, image) == (-160.0, 240.0)
    assert preview.ct_window(package, np.zeros((2, 4, 4), dtype=np.float32)) == (0.0, 1.0)  # flat image


def test_empty_label_map_still_gives_a_preview(tmp_path: Path) -> None:
    geometry = _geometry("axial")
    image = np.random.default_rng(0).normal(0, 100, geometry.shape).astype(np.float32)
    labels = np.zeros(geometry.shape, dtype=np.uint8)
    out = tmp_path / "preview.png"
    preview.write_preview(out, image, labels, geometry, make_package(tmp_path / "m"), _stats(labels, geometry))
    assert Image.open(out).size[1] > preview.PANEL * 2
    with pytest.raises(ValueError, match="differ"):
        preview.write_preview(out, image[1:], labels, geometry, make_package(tmp_path / "m"), _stats(labels, geometry))


def test_every_structure_found_is_in_a_panel_and_a_small_one_reads_not_zero() -> None:
    """A structure of 9 voxels on one slice between the evenly spread axial sections: it was in no panel while the
    legend gave its volume, "0.0 mL". Each structure found is now on one of the axial panels, and its volume reads
    with two significant digits."""
    geometry = Geometry((24, 40, 40), (2.5, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    labels = np.zeros(geometry.shape, np.uint8)
    labels[:, 5:20, 5:20] = 1  # on every slice
    labels[10, 30:33, 30:33] = 2  # 9 voxels on slice 10 alone
    names = [s.name for s in DEFAULT_STRUCTURES]
    stats = structure_stats(labels, geometry, names)
    sections = preview._section_indices(labels, preview.anatomical_views(geometry))
    assert 10 in sections["axial"] and len(sections["axial"]) == preview.AXIAL_PANELS
    assert (
        stats[1].volume_text == "0.022 mL" and stats[0].volume_text == "13.5 mL" and stats[2].volume_text == "not found"
    )
    picture = preview.render_preview(
        np.zeros(geometry.shape, np.float32), labels, geometry, DEFAULT_STRUCTURES, stats, window=(0, 1), title="t"
    )
    panels = np.asarray(picture)[: preview._TITLE_HEIGHT + 2 * (preview.PANEL + preview._GAP)].astype(int)
    drawn = np.abs(panels - np.array(DEFAULT_STRUCTURES[1].colour)).max(axis=-1) <= 8
    assert np.count_nonzero(drawn) > 20  # its contour is drawn on a panel


def test_axial_panels_run_from_the_head_down_and_long_text_is_shortened_not_overlapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A preview reviewer's finds: axial panels followed the series' slice order (the head first in one series,
    the feet in another); a long model name ran under the marker (and a long structure name over the next legend
    column)."""
    drawn: list[tuple[str, int]] = []
    real_panel = preview._panel

    def recording(image, window, labels, view, index, structures, font):  # type: ignore[no-untyped-def]
        drawn.append((view.name, index))
        return real_panel(image, window, labels, view, index, structures, font)

    monkeypatch.setattr(preview, "_panel", recording)
    for direction, head_first in (("axial", True), ("columns_flipped", False)):  # normal +z, then -z
        geometry = _geometry(direction)
        labels = np.ones(geometry.shape, np.uint8)
        drawn.clear()
        stats = structure_stats(labels, geometry, [s.name for s in DEFAULT_STRUCTURES])
        preview.render_preview(
            np.zeros(geometry.shape), labels, geometry, DEFAULT_STRUCTURES, stats, window=(0, 1), title="t"
        )
        axial = [index for name, index in drawn if name == "axial"]
        assert axial == sorted(axial, reverse=head_first) and len(axial) == preview.AXIAL_PANELS
    monkeypatch.undo()

    geometry = _geometry("axial")
    labels = np.zeros(geometry.shape, np.uint8)
    labels[4:8, 4:8, 4:8] = 1
    long_names = [replace(s, name=s.name + " with a very long qualifier " * 2) for s in DEFAULT_STRUCTURES]
    stats = structure_stats(labels, geometry, [s.name for s in long_names])
    marker = "NOT FOR CLINICAL USE"
    picture = preview.render_preview(
        np.zeros(geometry.shape), labels, geometry, long_names, stats, window=(0, 1), title="M" * 64, marker=marker
    )
    from PIL import ImageDraw

    draw = ImageDraw.Draw(picture)
    marker_left = picture.width - preview._GAP - 2 - draw.textlength(marker, font=preview.label_font(13))
    title_strip = np.asarray(picture)[:20].astype(int)
    white = np.abs(title_strip - np.array(preview._TEXT)).max(axis=-1) <= 40
    assert not white[:, int(marker_left) - 4 :].any()  # the title ends before the marker
    assert preview._fitted(draw, "x" * 200, preview.label_font(13), 100).endswith("...")
