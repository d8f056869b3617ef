"""Scale-out: throughput with 1 and 2 workers, each way: shards at once, CPU replicas (--devices), Ray actors.

Every worker gets one CPU core (torch and OpenMP at one thread: OMP_NUM_THREADS=1 for shard processes,
``torch.set_num_threads(1)`` for replicas, ``num_cpus=1`` per Ray actor, which Ray turns into one thread), so that
"2 workers" means twice the compute, as two GPUs would be. The ways alternate (1, 2, 1, 2...) so that load from
elsewhere on the machine falls on both alike; the table gives the median and the spread (min-max).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.pipeline_bench import make_inputs

REPO = Path(__file__).resolve().parent.parent
COHORT_SERIES = 8
SHAPE = (40, 112, 112)
REPEATS = 2


def _shards(scans: Path, model: Path, out: Path, count: int) -> float:
    """``count`` CLI processes `run --shard K/count` started at once; seconds until the last has finished."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = ["--model", str(model), "--input", str(scans), "--output", str(out), "--device", "cpu", "--workers", "0"]
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "innereye_batch", "run", *args, "--quiet", "--shard", f"{k}/{count}"],
            cwd=REPO,
            env=env,
        )
        for k in range(count)
    ]
    codes = [p.wait() for p in processes]
    assert codes == [0] * count, codes
    return time.perf_counter() - start


def _run(scans: Path, model: Path, out: Path, **options: object) -> tuple[float, dict[str, float]]:
    from innereye_batch.pipeline.run import RunOptions, run_batch

    start = time.perf_counter()
    report = run_batch(RunOptions(model=model, input=scans, output=out, workers=0, **options))  # type: ignore[arg-type]
    assert report.exit_code == 0, [r.reason for r in report.results if r.status == "failed"]
    return time.perf_counter() - start, dict(report.stage_seconds)


def _replicas(scans: Path, model: Path, out: Path, count: int) -> float:
    return _run(scans, model, out, device="auto", devices=("cpu",) * count)[0]


def _ray(scans: Path, model: Path, out: Path, count: int) -> float:
    from innereye_batch.pipeline.ray_executor import RayOptions

    return _run(scans, model, out, device="cpu", executor="ray", ray=RayOptions(actors=count, cpus_per_actor=1))[0]


def _alternate(
    way: Callable[[Path, Path, Path, int], float], scans: Path, model: Path, root: Path
) -> list[list[float]]:
    times: list[list[float]] = [[], []]
    for r in range(REPEATS):
        for workers in (1, 2):
            times[workers - 1].append(way(scans, model, root / f"{way.__name__}{workers}-{r}", workers))
    return times


def _row(name: str, times: list[list[float]]) -> str:
    one, two = (statistics.median(t) for t in times)
    rate = [60 * COHORT_SERIES / statistics.median(t) for t in times]
    spread = "; ".join(f"{min(t):.1f}-{max(t):.1f}" for t in times)
    return f"| {name} | {one:.1f} | {two:.1f} | {rate[0]:.1f} | {rate[1]:.1f} | **{one / two:.2f}x** | {spread} |"


def run() -> str:
    """Markdown section: wall time and series/min with 1 and 2 workers, each way."""
    import ray
    import torch

    threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        scans, model = make_inputs(root, SHAPE, COHORT_SERIES)
        _, stages = _run(scans, model, root / "stages", device="cpu")  # warm-up, and the stage split
        shards = _alternate(_shards, scans, model, root)
        torch.set_num_threads(1)
        try:
            replicas = _alternate(_replicas, scans, model, root)
        finally:
            torch.set_num_threads(threads)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            actors = _alternate(_ray, scans, model, root)
        finally:
            ray.shutdown()
    load_after = os.getloadavg()[0]
    per_series = {k: v / COHORT_SERIES for k, v in stages.items() if k != "wall"}
    split = ", ".join(f"{k} {v:.2f} s" for k, v in per_series.items())
    return "\n".join(
        [
            "## Scale-out: 1 against 2 workers (shards, CPU replicas, Ray actors)",
            "",
            f"{COHORT_SERIES} CT series of {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} voxels, a 2-member UNet3D ensemble (4 "
            "initial feature channels, whole volume), every default output (NIfTI, DICOM-SEG, RT Structure Set, "
            f"preview, JSON), on the CPU of a {os.cpu_count()}-core machine shared with other work. Each worker "
            "gets one core (one torch thread), so two workers have twice the compute. Median wall time of "
            f"{REPEATS} runs per way, the two counts alternating; spread = min-max of the runs (1 worker; 2 "
            "workers). Shards: separate `innereye-batch run --shard K/N` processes started at once into one folder "
            "(each starts Python and torch and scans the whole input); replicas: `--devices cpu` against "
            "`--devices cpu,cpu` (one process, one loader); Ray: a local instance (started once, outside the timing) "
            "with 1 against 2 actors, model loading in the actors included.",
            "",
            "| way | 1 worker (s) | 2 workers (s) | series/min, 1 | series/min, 2 | speed-up | spread (s) |",
            "|---|---:|---:|---:|---:|---:|---|",
            _row("shards at once (`--shard K/2`)", shards),
            _row("replicas in one process (`--devices cpu,cpu`)", replicas),
            _row("Ray actors (`--executor ray --ray-actors N`)", actors),
            "",
            f"Load average of the machine (1 min) before the bench: {load_before:.1f}, after: {load_after:.1f}, "
            f"on {os.cpu_count()} cores: where it exceeds the core count, a second worker finds no free core.",
            "",
            f"Where a series' time goes, one plain run with {threads} torch threads (per series, summed over "
            f"stages that overlap): {split}.",
            "",
            *_projection(per_series),
        ]
    )


def _projection(per_series: dict[str, float]) -> list[str]:
    """The projected scaling to N GPUs and nodes, from this run's stage split (no GPU was measured here)."""
    host = per_series.get("load", 0.0) + per_series.get("postprocess", 0.0) + per_series.get("write", 0.0)
    infer = per_series.get("infer", 0.0) + per_series.get("preprocess", 0.0)
    return [
        "### Scale-out: projected scaling to N GPUs and nodes",
        "",
        "This bench runs on the CPU only: this is reasoning from the stage split above and the loading bench "
        "(the GPU section has what one H200 showed). Per series the work is: header scan (once per "
        "run; once per *shard*: every shard scans the whole tree), storage read and decode (CPU: loader "
        "workers, or the actor's threads), inference (the device), post-processing and export (CPU: writer "
        "threads; NIfTI compression, DICOM-SEG, RT Structure Set contours, preview, read-back checks) and the "
        "output write. Throughput of G GPUs with C host cores is about "
        "min(G / t_infer, C / t_host, storage bandwidth / bytes per series, scan rate / files per series).",
        "",
        f"- **On the CPU (the table above)** inference is {infer:.2f} s of every series against {host:.2f} s of "
        "host work, so a second worker adds compute only where a second core is free: on this shared 2-core "
        "machine the other work leaves little of one (see the load average), which is why the speed-ups stay "
        "near 1x and spread widely. Each shard process also pays its own start (Python, torch, a scan of the "
        "whole input, model loading): on a cohort this small that is a large share, on a real cohort a small one.",
        f"- **One GPU**: inference falls by one to two orders of magnitude, so the host work ({host:.2f} s per "
        "series here) becomes the cost: a GPU needs about t_host / t_infer cores (`--workers` decoding, writer "
        "threads) to stay busy. The first stage to saturate on a GPU node is the CPU export (DICOM-SEG and RT "
        "Structure Set with their read-back checks, gzip of the NIfTI, the preview), then decode; inference "
        "itself saturates only with a heavy model (large patches, big ensembles, test-time augmentation).",
        "- **N GPUs in one node** (`--devices all`): linear in N while the node's cores cover N times the host "
        "work per series (one loader feeds all replicas: raise `--workers` with N; the writer pool has 2 threads "
        f"by default); past that, throughput stays at cores / t_host. With 64 cores at {host:.2f} s per series "
        f"(these small series) that ceiling is about {64 / max(host, 1e-3) * 60:.0f} series/min; the stage "
        "totals in summary.json give t_host for real series.",
        "- **Many nodes** (shards or Ray): linear in nodes until shared storage saturates. Each series is read "
        "once (a 300-slice 512x512 CT is 150 MB) and its outputs written once (a few MB): a 1 GB/s NFS server "
        "caps the whole cluster near 6 such series/s (about 400/min) however many GPUs it has; a parallel file "
        "system moves the cap up. With `--shard`, each of N shards also scans every header (the loading bench "
        "measures 0.66 ms per file on one core): 10,000 series of 300 files is 3 million header reads *per "
        "shard*, so with many shards the metadata server is the first to saturate. Prefer one shard per node "
        "with `--devices all` (N = nodes, not GPUs), or Ray, whose driver scans once and ships headers to the "
        "actors (per-item driver overhead: one small message each way).",
        "",
    ]
