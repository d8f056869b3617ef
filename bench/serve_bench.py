"""Real-time predict through `innereye-batch serve`: requests/s and p50/p99 latency, dynamic batching against the
same service with ``--max-batch 1``, at concurrency 1, 8 and 32.

Two services (the sample chest X-ray classifier only) run side by side; they are loaded in turn, level by level
and repeat by repeat (A B A B), so that load from elsewhere falls on both alike. Each level sends 500 requests
(the five sample images in turn) after 20 warm-up requests.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

REQUESTS = 500
WARM_UP = 20
LEVELS = (1, 8, 32)
DYNAMIC = ("--max-batch", "16", "--max-wait-ms", "5")
SINGLE = ("--max-batch", "1", "--max-wait-ms", "0")


def run(repeats: int = 3) -> str:
    import torch

    from tests.service.harness import CLASSIFICATION_ID, CLASSIFICATION_MODEL, CXR_SCANS, ServiceProcess
    from tests.service.load import LoadResult, fire

    bodies = [path.read_bytes() for path in sorted(CXR_SCANS.glob("*.dcm"))]
    path = f"/v1/model/predict/{CLASSIFICATION_ID}"
    models = [f"{CLASSIFICATION_ID}={CLASSIFICATION_MODEL}"]
    results: dict[tuple[str, int], list[LoadResult]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        services = {
            "dynamic": ServiceProcess(Path(tmp) / "dynamic" / "state", [*DYNAMIC, "--device", "cpu"], models),
            "single": ServiceProcess(Path(tmp) / "single" / "state", [*SINGLE, "--device", "cpu"], models),
        }
        try:
            for service in services.values():
                fire(service.base_url, path, bodies, WARM_UP, 4)
            for _ in range(repeats):
                for level in LEVELS:
                    for name, service in services.items():
                        result = fire(service.base_url, path, bodies, REQUESTS, level)
                        if result.errors:
                            raise RuntimeError(f"{name} at concurrency {level}: {result.errors[:3]}")
                        results.setdefault((name, level), []).append(result)
        finally:
            for service in services.values():
                service.stop()

    def median(name: str, level: int, what: str) -> float:
        values = [_measure(r, what) for r in results[(name, level)]]
        return statistics.median(values)

    def spread(name: str, level: int) -> str:
        rates = [r.requests_per_second for r in results[(name, level)]]
        return f"{statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f})"

    rows = []
    for level in LEVELS:
        ratio = median("dynamic", level, "rate") / median("single", level, "rate")
        ratios = [
            d.requests_per_second / s.requests_per_second
            for d, s in zip(results[("dynamic", level)], results[("single", level)], strict=True)
        ]
        rows.append(
            f"| {level} | {spread('dynamic', level)} | {spread('single', level)} | **{ratio:.2f}x** "
            f"({min(ratios):.2f}-{max(ratios):.2f}) | {1000 * median('dynamic', level, 'p50'):.0f} / "
            f"{1000 * median('dynamic', level, 'p99'):.0f} | {1000 * median('single', level, 'p50'):.0f} / "
            f"{1000 * median('single', level, 'p99'):.0f} |"
        )
    return "\n".join(
        [
            "## `serve`: real-time predict with dynamic batching against `--max-batch 1`",
            "",
            f"`POST /v1/model/predict` of the five 256x256 sample chest X-rays in turn (`sample_data/cxr_scans`, the "
            f"three-member CNN2D ensemble), {REQUESTS} requests per level after {WARM_UP} warm-up requests, from N "
            f"client threads (httpx, one connection each) on the same machine; CPU with {torch.get_num_threads()} "
            f"torch threads. Dynamic: `{' '.join(DYNAMIC)}`; single: `{' '.join(SINGLE)}`. Median of {repeats} "
            "repeats, range in brackets; the two services were loaded in turn (A B A B). Latency is per request, "
            "as the client saw it (upload, scan, decode, queue, forward pass, JSON).",
            "",
            "| concurrency | dynamic (req/s) | max-batch 1 (req/s) | ratio | dynamic p50 / p99 (ms) | "
            "max-batch 1 p50 / p99 (ms) |",
            "|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "At concurrency 1 a request never has company, so both run batches of one (dynamic waits up to 5 ms "
            "for a partner that does not come). The service, the clients and torch share this machine's cores: "
            "each request also pays for its upload, header scan and decoding on the CPU, which batching does not "
            "shorten; on a GPU the forward pass that batching shares is a larger part. Other work shared the "
            "cores while this ran (see the ranges): compare the columns of a row, which ran in turn.",
            "",
        ]
    )


def _measure(result: object, what: str) -> float:
    from tests.service.load import LoadResult

    assert isinstance(result, LoadResult)
    if what == "rate":
        return result.requests_per_second
    return result.percentile(50 if what == "p50" else 99)
