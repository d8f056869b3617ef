"""What preview.png costs: its writing time against a whole run's wall time, on the shipped sample model and scans."""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

RUNS = 3
"""`run` with and without previews, alternately, this many times each (medians reported)."""
ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "sample_data" / "final_model"
SCANS = ROOT / "sample_data" / "scans"


def _sequential_with_timed_preview(out: Path) -> tuple[float, list[float]]:
    """`process_item` over the sample (every default output), the preview writer timed per series."""
    from innereye_batch.dicom.scan import scan_tree
    from innereye_batch.engine.device import resolve_device
    from innereye_batch.model.checkpoints import load_networks
    from innereye_batch.model.package import load_model_package
    from innereye_batch.pipeline.plan import plan_run
    from innereye_batch.pipeline.process import process_item
    from innereye_batch.pipeline.run import make_predictor
    from innereye_batch.writers.registry import resolve_formats

    start = time.perf_counter()
    package = load_model_package(MODEL)
    preview_seconds: list[float] = []

    def timed(write: Any) -> Any:
        def write_and_time(path: Path, prediction: Any, context: Any) -> None:
            began = time.perf_counter()
            write(path, prediction, context)
            preview_seconds.append(time.perf_counter() - began)

        return write_and_time

    formats = tuple(
        dataclasses.replace(f, write=timed(f.write)) if f.name == "preview" else f
        for f in resolve_formats((), package.task)
    )
    predictor = make_predictor(package, load_networks(package), resolve_device("cpu"))
    jobs, _ = plan_run(scan_tree(SCANS), package, formats, out)
    for job in jobs:
        result = process_item(job, predictor, formats, package, package.fingerprint())
        assert result.status == "ok", result.reason
    return time.perf_counter() - start, preview_seconds


def _run_wall(out: Path, preview: bool) -> float:
    from innereye_batch.pipeline.run import RunOptions, run_batch

    start = time.perf_counter()
    report = run_batch(RunOptions(model=MODEL, input=SCANS, output=out, device="cpu", workers=1, preview=preview))
    assert report.exit_code == 0, [r.reason for r in report.results]
    return time.perf_counter() - start


def run() -> str:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        sequential_wall, previews = _sequential_with_timed_preview(root / "sequential")
        walls: dict[bool, list[float]] = {True: [], False: []}
        for attempt in range(RUNS):  # alternately, so that load from elsewhere falls on both alike
            for preview in (False, True):
                walls[preview].append(_run_wall(root / f"{preview}-{attempt}", preview=preview))
    with_preview, without_preview = statistics.median(walls[True]), statistics.median(walls[False])
    total = sum(previews)
    share = total / sequential_wall
    return f"""## preview.png: its cost in a run

The shipped sample (`sample_data/final_model`, a 3-checkpoint ensemble, over the 4 scans of `sample_data/scans`,
40x96x96 each), on CPU, every default output. Preview writing timed inside a sequential `process_item` loop
(decode, predict, write, one series after another), the first call's imports included:

| | seconds |
|---|---:|
| sequential loop, wall | {sequential_wall:.1f} |
| preview.png, 4 series | {total:.2f} (per series {", ".join(f"{s:.2f}" for s in previews)}) |

Preview share of the sequential wall time: **{100 * share:.1f} %** (the target is under 10 %).
`innereye-batch run` (1 loader worker, 2 writer threads), {RUNS} runs each way, alternately, medians:
{with_preview:.1f} s with previews, {without_preview:.1f} s with `--no-preview`
({100 * (with_preview - without_preview) / without_preview:+.1f} %; all runs, with: {_seconds(walls[True])};
without: {_seconds(walls[False])}. On 2 cores shared with other work, single runs vary by more than the preview
costs).
"""


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)
