"""Prometheus metrics of the service, in the text exposition format (prometheus-client, one registry per app).

- ``innereye_batch_http_requests_total{method, route, status}`` and
  ``innereye_batch_http_request_duration_seconds{method, route}``: every answered request, by route template
  (``/v1/model/results/{run_id}``), so run ids never become labels; a method not in ``METHODS`` is ``other`` (a
  client may send any token as its method, refused or not), so no label holds text a client chose. Status 499: the
  client disconnected before its answer.
- ``innereye_batch_queue_depth{queue}``: jobs queued, predict images waiting for a batch, calls waiting for the
  device; ``innereye_batch_jobs{state}``: jobs in the store per state.
- ``innereye_batch_device_call_duration_seconds{kind}``: time on the device per call (``predict`` batch, ``job``);
  ``innereye_batch_predict_batch_size``: images per real-time batch.
- ``innereye_batch_jobs_finished_total{model_id, state}``.
- ``innereye_batch_gpu_memory_bytes{device, kind}``: allocated, reserved and peak memory of the CUDA device
  (absent on CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"})
"""HTTP methods that are labels of their own; any other is counted as ``other``."""


class _Snapshot:
    """Gauges read when scraped: queue depths, jobs per state, GPU memory."""

    def __init__(
        self,
        queue_depths: Callable[[], dict[str, int]],
        job_counts: Callable[[], dict[str, int]],
        device: torch.device | None,
    ) -> None:
        self.queue_depths = queue_depths
        self.job_counts = job_counts
        self.device = device

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        depth = GaugeMetricFamily("innereye_batch_queue_depth", "Work waiting, per queue", labels=["queue"])
        for name, value in self.queue_depths().items():
            depth.add_metric([name], value)
        yield depth
        jobs = GaugeMetricFamily("innereye_batch_jobs", "Jobs in the store, per state", labels=["state"])
        for state, value in self.job_counts().items():
            jobs.add_metric([state], value)
        yield jobs
        if self.device is not None and self.device.type == "cuda":
            import torch

            memory = GaugeMetricFamily(
                "innereye_batch_gpu_memory_bytes", "CUDA memory of the model device", labels=["device", "kind"]
            )
            name = str(self.device)
            memory.add_metric([name, "allocated"], torch.cuda.memory_allocated(self.device))
            memory.add_metric([name, "reserved"], torch.cuda.memory_reserved(self.device))
            memory.add_metric([name, "max_allocated"], torch.cuda.max_memory_allocated(self.device))
            yield memory


class ServiceMetrics:
    """The service's metrics, in a registry of their own (several apps in one process never mix)."""

    def __init__(
        self,
        queue_depths: Callable[[], dict[str, int]],
        job_counts: Callable[[], dict[str, int]],
        device: torch.device | None,
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "innereye_batch_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "innereye_batch_http_request_duration_seconds",
            "Time to answer a request",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.device_seconds = Histogram(
            "innereye_batch_device_call_duration_seconds",
            "Time on the device per call",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "innereye_batch_predict_batch_size",
            "Images per real-time predict batch",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "innereye_batch_jobs_finished", "Jobs finished", ["model_id", "state"], registry=self.registry
        )
        self.registry.register(_Snapshot(queue_depths, job_counts, device))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def observe_device(self, kind: str, seconds: float) -> None:
        self.device_seconds.labels(kind).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
