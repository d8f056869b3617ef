"""A bounded load generator: N predict requests at a given concurrency, each thread with its own connection.

Used by the load test (small counts) and by ``bench/serve_bench.py`` (the full counts).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from tests.service.harness import HEADER, SECRET


@dataclass
class LoadResult:
    """What a load run saw: per request, its body's index, status, latency and answer."""

    concurrency: int
    wall_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    answers: list[tuple[int, dict]] = field(default_factory=list)
    """(index of the body sent, JSON answer) of every 200."""
    errors: list[str] = field(default_factory=list)

    @property
    def requests_per_second(self) -> float:
        return len(self.statuses) / self.wall_seconds if self.wall_seconds else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def fire(base_url: str, path: str, bodies: Sequence[bytes], requests: int, concurrency: int) -> LoadResult:
    """POST ``requests`` bodies (cycling through ``bodies``) to ``path`` from ``concurrency`` threads."""
    result = LoadResult(concurrency)
    counter = itertools.count()
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(base_url=base_url, headers={HEADER: SECRET}, timeout=300) as client:
            while (index := next(counter)) < requests:
                body = index % len(bodies)
                start = time.perf_counter()
                try:
                    response = client.post(path, content=bodies[body])
                except httpx.HTTPError as error:
                    with lock:
                        result.errors.append(f"{type(error).__name__}: {error}")
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    result.latencies.append(elapsed)
                    result.statuses.append(response.status_code)
                    if response.status_code == 200:
                        result.answers.append((body, response.json()))
                    else:
                        result.errors.append(f"{response.status_code}: {response.text[:200]}")

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    result.wall_seconds = time.perf_counter() - start
    return result
