"""report.html: one row per series, failed first, hostile text escaped, self-contained, previews shown in a browser."""

from __future__ import annotations

import html.parser
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.model.spec import Structure
from innereye_batch.results import ItemResult, StructureStats
from innereye_batch.tasks.segmentation import structure_stats
from innereye_batch.writers.preview import write_preview
from innereye_batch.writers.run_report import REPORT_HTML, write_run_report
from tests.writers.helpers import make_package

STRUCTURES = (Structure("liver", (255, 0, 200)), Structure("spleen", (0, 220, 255)))
HOSTILE_KEY = '1.2.3"><img src=x onerror=alert(1)>'
HOSTILE_REASON = "series 1.2: <script>alert('x')</script>\x1b[31m & more"
RUN_INFO = {
    "tool_version": "0.1.0",
    "model_name": "Test<Model>",
    "model_task": "segmentation",
    "model_fingerprint": "ab" * 32,
    "device": "cpu",
    "formats": ["nifti", "preview"],
    "started": "2026-01-01T02:00:00+00:00",
    "finished": "2026-01-01T02:10:00+00:00",
    "stage_seconds": {"load": 1.0, "infer": 20.0, "wall": 30.0},
}


def _result(key: str, status: str, reason: str = "", outputs: dict[str, str] | None = None) -> ItemResult:
    structures = (StructureStats("liver", 1000, 12.5), StructureStats("spleen", 0, 0.0)) if status == "ok" else ()
    timings = {"load": 0.5, "infer": 3.25, "write": 0.25} if status != "skipped" else {}
    return ItemResult(
        key=key,
        series_instance_uid=key,
        study_instance_uid="1.2.9",
        modality="CT",
        status=status,  # type: ignore[arg-type]
        reason=reason,
        structures=structures,
        timings=timings,
        outputs=outputs or {},
    )


def _preview(out: Path, folder: str) -> str:
    geometry = Geometry((8, 40, 40), (3.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    labels = np.zeros(geometry.shape, dtype=np.uint8)
    labels[2:6, 5:20, 5:20] = 1
    labels[3:7, 22:36, 20:36] = 2
    image = np.where(labels > 0, 60.0, -50.0).astype(np.float32)
    package = make_package(out / "model", structures=STRUCTURES)
    (out / folder).mkdir(parents=True)
    stats = structure_stats(labels, geometry, [s.name for s in STRUCTURES])
    write_preview(out / folder / "preview.png", image, labels, geometry, package, stats)
    return f"{folder}/preview.png"


def _results(out: Path) -> list[ItemResult]:
    return [
        _result("1.2.826.1", "ok", outputs={"preview": _preview(out, "1.2.826.1")}),
        _result("1.2.826.2", "ok", outputs={"preview": "1.2.826.2/preview.png"}),  # the file is gone
        _result(HOSTILE_KEY, "failed", HOSTILE_REASON),
        _result("1.2.826.4", "skipped", "already done with this model and input"),
    ]


class _Collector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_report_rows_escaping_and_links(tmp_path: Path) -> None:
    path = write_run_report(tmp_path, _results(tmp_path), RUN_INFO)

    assert path == tmp_path / REPORT_HTML
    document = path.read_text(encoding="utf-8")
    parsed = _Collector()
    parsed.feed(document)
    tags = [tag for tag, _ in parsed.tags]
    assert "script" not in tags and "link" not in tags  # hostile text stays text; no external stylesheet
    assert "http://" not in document and "https://" not in document  # nothing fetched from elsewhere
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert [i["src"] for i in images] == ["1.2.826.1/preview.png"]  # only previews that exist are shown
    assert all(i["alt"] == "preview" for i in images)
    text = "".join(parsed.text)
    assert HOSTILE_KEY in text and "<script>alert('x')</script>" in text  # shown as the characters they are
    assert "\\x1b[31m" in text and "\x1b" not in document  # control characters escaped
    assert "Test<Model>" in text
    rows = [t for t in tags if t == "tr"]
    assert len(rows) == 1 + 4  # header and one row per series
    assert text.index(HOSTILE_KEY) < text.index("1.2.826.1") < text.index("1.2.826.4")  # failed first
    assert "liver: 12.5 mL" in text and "spleen: not found" in text
    assert "1 failed" in text and "2 ok" in text and "1 skipped" in text


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_opens_in_a_headless_browser_and_shows_the_previews(tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's)")
    report = write_run_report(tmp_path, _results(tmp_path), RUN_INFO)
    screenshot = tmp_path / "screenshot.png"
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=4",  # thumbnails drawn from the full-size preview, colours intact
        f"--screenshot={screenshot}",
        "--window-size=1100,700",
        f"--user-data-dir={tmp_path / 'profile'}",
        report.as_uri(),
    ]
    subprocess.run(command, capture_output=True, timeout=120, check=False)

    assert screenshot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    assert pixels.shape[0] >= 700 * 4 - 8 and pixels.shape[1] >= 1100 * 4 - 8

    def count(colour: tuple[int, int, int], tolerance: int = 20) -> int:
        return int(np.count_nonzero(np.abs(pixels - np.asarray(colour)).max(axis=-1) <= tolerance))

    for structure in STRUCTURES:  # the thumbnail's contours in the structures' colours
        assert count(structure.colour) > 200, structure.name
    assert count((198, 40, 40)) > 200  # the red "failed" badge: the page itself rendered


def test_classified_images_show_probabilities_labels_and_their_overlay(tmp_path: Path) -> None:
    (tmp_path / "1.2.7").mkdir()
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "1.2.7" / "explanation.png")
    result = ItemResult(
        key="1.2.7",
        series_instance_uid="1.2.7",
        study_instance_uid="1.2",
        modality="CR",
        status="ok",
        probabilities={"normal": 0.25, "nodule": 0.75},
        labels=("nodule",),
        outputs={"json": "1.2.7/predictions.json", "explanation-png": "1.2.7/explanation.png"},
    )
    document = write_run_report(tmp_path, [result], {**RUN_INFO, "model_task": "classification"}).read_text()
    parsed = _Collector()
    parsed.feed(document)
    text = "".join(parsed.text)
    assert "normal: 0.250" in text and "nodule: 0.750" in text and "predicted: nodule" in text
    assert [attrs["src"] for tag, attrs in parsed.tags if tag == "img"] == ["1.2.7/explanation.png"]
