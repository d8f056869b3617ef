"""Memory on the device loop: what one series' device work took at its peak, the run's peaks, and a GPU budget.

- ``SeriesPeak``: a context around one series' device work; ``gib`` is then the process's peak resident memory
  while it ran (``host``, sampled) and each CUDA device's peak allocation by torch (``cuda:N``).
- ``run_peak_memory_gib``: the whole run's peaks (this process, its worker processes, each CUDA device).
- ``limit_device_memory`` / ``free_device_bytes``: ``--gpu-memory``: torch's allocator may not take more than the
  budget on a device, and every choice made from free memory (patch batch, where accumulators live) sees at most
  what the budget leaves.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

from innereye_batch.errors import UsageError

if TYPE_CHECKING:
    import torch

_SAMPLE_SECONDS = 0.02
"""How often ``SeriesPeak`` reads the resident set: an array that briefly raises it takes longer than this to fill."""
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_lock = threading.Lock()
_budgets: dict[int, int] = {}
"""CUDA device index -> bytes torch may allocate there (``limit_device_memory``)."""
_cuda_peaks: dict[int, int] = {}
"""CUDA device index -> the largest peak allocation seen before torch's peak statistics were last reset."""
_series_peaks: dict[int, int] = {}
"""CUDA device index -> the same, since the ``SeriesPeak`` open on that device began (one per device at a time)."""


def resident_bytes() -> int | None:
    """This process's resident set now (Linux ``/proc``); None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


class SeriesPeak:
    """Peak memory while the ``with`` block runs: ``gib`` after it, e.g. ``{"host": 2.4, "cuda:0": 11.2}``.

    ``host``: the process's resident set, read every 20 ms by a sampling thread (Linux; left out elsewhere); it
    covers the whole process, so whatever else runs in it at the time (another replica, writer threads on a CPU
    run) is counted too. ``cuda:N``: torch's peak allocation on ``device`` (its peak statistics are reset on
    entry; the run's peak is kept by ``run_peak_memory_gib``).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.gib: dict[str, float] = {}
        self._host = 0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> SeriesPeak:
        if self.device.type == "cuda":
            reset_cuda_peak(self.device)
            with _lock:
                _series_peaks[self.device.index or 0] = 0
        first = resident_bytes()
        if first is not None:
            self._host = first
            self._sampler = threading.Thread(target=self._sample, name="innereye-memory", daemon=True)
            self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self._host = max(self._host, resident_bytes() or 0)
            self.gib["host"] = round(self._host / 2**30, 3)
        if self.device.type == "cuda":
            import torch

            with _lock:
                before = _series_peaks.pop(self.device.index or 0, 0)
            peak = max(before, torch.cuda.max_memory_allocated(self.device))
            self.gib[f"cuda:{self.device.index or 0}"] = round(peak / 2**30, 3)

    def _sample(self) -> None:
        while not self._stop.wait(_SAMPLE_SECONDS):
            self._host = max(self._host, resident_bytes() or 0)


def reset_cuda_peak(device: torch.device) -> None:
    """Reset torch's peak statistics on ``device``, keeping the peak so far for ``run_peak_memory_gib``."""
    import torch

    index = device.index or 0
    peak = torch.cuda.max_memory_allocated(device)
    with _lock:
        _cuda_peaks[index] = max(_cuda_peaks.get(index, 0), peak)
        if index in _series_peaks:
            _series_peaks[index] = max(_series_peaks[index], peak)
    torch.cuda.reset_peak_memory_stats(device)


def run_peak_memory_gib() -> dict[str, float]:
    """Peak memory of the run so far, GiB: this process's resident set (``host``), the largest of its finished
    worker processes' (``workers``: decoding and writer processes), and what torch allocated on each CUDA device
    it used (``cuda:N``)."""
    import resource  # POSIX only: imported where used

    scale = 2**30 if sys.platform == "darwin" else 2**20  # ru_maxrss: bytes on macOS, KiB on Linux
    peaks = {
        "host": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale,
        "workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / scale,
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            peak = max(_cuda_peaks.get(index, 0), torch.cuda.max_memory_allocated(index))
            peaks[f"cuda:{index}"] = peak / 2**30
    return {name: round(value, 3) for name, value in peaks.items()}


def limit_device_memory(device: torch.device, gib: float | None) -> None:
    """Hold torch to ``gib`` GiB on a CUDA ``device`` (``--gpu-memory``: a shared GPU, or a small one's budget on
    a large one); None lifts a budget an earlier run in this process set (each run's options decide); nothing on
    a CPU. UsageError when the device has less than ``gib``."""
    if device.type != "cuda":
        return
    import torch

    index = device.index or 0
    if gib is None:
        with _lock:
            lifted = _budgets.pop(index, None)
        if lifted is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        return
    total = torch.cuda.get_device_properties(device).total_memory
    budget = int(gib * 2**30)
    if budget <= 0 or budget > total:
        raise UsageError(f"--gpu-memory {gib:g} GiB: {device} has {total / 2**30:.1f} GiB in all")
    torch.cuda.set_per_process_memory_fraction(budget / total, device)
    with _lock:
        _budgets[index] = budget


def free_device_bytes(device: torch.device) -> int:
    """Bytes torch may still allocate on a CUDA ``device``: what the device has free, and no more than the
    ``--gpu-memory`` budget leaves (memory torch holds in its cache counts as free: it reuses it first)."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    free += cached
    budget = _budgets.get(device.index or 0)
    if budget is not None:
        free = min(free, budget - torch.cuda.memory_allocated(device))
    return max(0, free)
