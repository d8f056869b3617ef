"""engine/memory.py: a series' peak memory (host sampled, CUDA from torch's statistics), the run's peaks, and the
--gpu-memory budget that the patch batch and the accumulators' placement keep to.

The CUDA parts run here against a stand-in for ``torch.cuda`` (this machine has no GPU): what they must do with
torch's numbers is exactly what is checked.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from innereye_batch.engine import memory
from innereye_batch.engine.memory import (
    SeriesPeak,
    free_device_bytes,
    limit_device_memory,
    reset_cuda_peak,
    resident_bytes,
    run_peak_memory_gib,
)
from innereye_batch.engine.sliding_window import _accumulators_too_big, accumulator_bytes
from innereye_batch.errors import UsageError
from innereye_batch.writers.predictions import load_predictions_schema
from tests.factory import write_series
from tests.pipeline.cohort import model_folder

GIB = 2**30
CUDA = torch.device("cuda", 0)


class FakeCuda:
    """What the memory module reads of one CUDA device of ``total`` bytes, with torch holding ``allocated`` (and
    ``reserved`` in its cache) and ``free`` left on the device."""

    def __init__(self, total: int, free: int, allocated: int, reserved: int) -> None:
        self.total, self.free, self.allocated, self.reserved = total, free, allocated, reserved
        self.peak = allocated
        self.fraction: float | None = None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "mem_get_info", lambda device=None: (self.free, self.total))
        monkeypatch.setattr(cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(cuda, "memory_reserved", lambda device=None: self.reserved)
        monkeypatch.setattr(cuda, "max_memory_allocated", lambda device=None: self.peak)
        monkeypatch.setattr(cuda, "reset_peak_memory_stats", lambda device=None: setattr(self, "peak", self.allocated))
        monkeypatch.setattr(
            cuda, "get_device_properties", lambda device=None: type("P", (), {"total_memory": self.total})
        )
        monkeypatch.setattr(
            cuda, "set_per_process_memory_fraction", lambda f, device=None: setattr(self, "fraction", f)
        )
        monkeypatch.setattr(cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: 1)

    def _limit(self, fraction: float) -> None:
        self.fraction = fraction

    def use(self, nbytes: int) -> None:
        """torch allocates ``nbytes`` more (and frees them again with a negative number)."""
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)


@pytest.fixture
def clean_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_budgets", {})
    monkeypatch.setattr(memory, "_cuda_peaks", {})
    monkeypatch.setattr(memory, "_series_peaks", {})


def test_series_peak_catches_a_short_lived_host_array() -> None:
    before = resident_bytes()
    assert before is not None and before > 50 * 2**20  # this process holds torch
    with SeriesPeak(torch.device("cpu")) as peak:
        array = np.ones(300 * 2**20, np.uint8)  # 300 MiB touched, then freed inside the block
        time.sleep(0.2)
        del array
    assert set(peak.gib) == {"host"}
    assert peak.gib["host"] * GIB >= before + 250 * 2**20
    with SeriesPeak(torch.device("cpu")) as quiet:
        time.sleep(0.05)
    assert quiet.gib["host"] < peak.gib["host"]  # the freed array is not counted again


def test_series_peak_on_cuda_keeps_what_a_reset_inside_it_would_lose(
    monkeypatch: pytest.MonkeyPatch, clean_state: None
) -> None:
    fake = FakeCuda(total=80 * GIB, free=70 * GIB, allocated=1 * GIB, reserved=1 * GIB)
    fake.install(monkeypatch)
    fake.use(9 * GIB)  # a peak of 10 GiB before the series: not the series'
    fake.use(-9 * GIB)
    with SeriesPeak(CUDA) as peak:
        fake.use(6 * GIB)  # the series' image and accumulators: 7 GiB
        fake.use(-5 * GIB)
        reset_cuda_peak(CUDA)  # auto_patch_batch's probe resets torch's statistics
        fake.use(2 * GIB)  # 4 GiB after the reset
        fake.use(-2 * GIB)
    assert peak.gib["cuda:0"] == 7.0
    assert run_peak_memory_gib()["cuda:0"] == 10.0  # the run's peak survives both resets


def test_gpu_memory_budget_caps_free_memory_and_torch(monkeypatch: pytest.MonkeyPatch, clean_state: None) -> None:
    fake = FakeCuda(total=80 * GIB, free=70 * GIB, allocated=2 * GIB, reserved=3 * GIB)
    fake.install(monkeypatch)
    assert free_device_bytes(CUDA) == 71 * GIB  # torch's cache counts as free: it reuses it first
    limit_device_memory(CUDA, 16)
    assert fake.fraction == pytest.approx(16 / 80)  # torch's allocator refuses past the budget
    assert free_device_bytes(CUDA) == 14 * GIB  # the budget less what torch holds
    limit_device_memory(torch.device("cpu"), 1)  # no effect on a CPU
    with pytest.raises(UsageError, match=r"80\.0 GiB in all"):
        limit_device_memory(CUDA, 100)
    assert free_device_bytes(CUDA) == 14 * GIB  # a refused budget leaves the one in force
    limit_device_memory(CUDA, None)  # a later run in this process without --gpu-memory: the whole GPU again
    assert fake.fraction == 1.0 and free_device_bytes(CUDA) == 71 * GIB


def test_accumulators_leave_a_16_gib_gpu_for_a_300_slice_ct(monkeypatch: pytest.MonkeyPatch, clean_state: None) -> None:
    """The accumulators of a 512x512x300 CT with 9 outputs, kept on the original grid (2.9 GiB): on the device
    within a 16 GiB budget while it is free; on the CPU once what is left of the budget cannot hold them."""
    fake = FakeCuda(total=80 * GIB, free=78 * GIB, allocated=1 * GIB, reserved=1 * GIB)
    fake.install(monkeypatch)
    limit_device_memory(CUDA, 16)
    needed = accumulator_bytes(9, (300, 512, 512))
    assert 2.9 * GIB < needed < 3.0 * GIB
    assert _accumulators_too_big(needed, CUDA, None) is None
    fake.use(11 * GIB)  # 12 of the 16 GiB in use: 4 GiB left, the accumulators may take only part of it
    reason = _accumulators_too_big(needed, CUDA, None)
    assert reason is not None and "4.00 GiB free" in reason


def test_run_reports_each_series_peak_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the command line, with a GPU budget (handed to every replica's device; a CPU ignores it); a budget
    of nothing is refused."""
    from typer.testing import CliRunner

    from innereye_batch.cli import app

    budgets: list[tuple[str, float | None]] = []
    real_limit = memory.limit_device_memory
    monkeypatch.setattr(
        memory, "limit_device_memory", lambda d, gib: budgets.append((str(d), gib)) or real_limit(d, gib)
    )

    model = model_folder(tmp_path / "model", members=1)
    for i in range(2):
        write_series(tmp_path / "scans" / f"s{i}", shape=(8, 16, 16), seed=20 + i)
    out = tmp_path / "out"
    args = ["run", "--model", str(model), "--input", str(tmp_path / "scans"), "--device", "cpu", "--workers", "0"]
    result = CliRunner().invoke(app, [*args, "--output", str(out), "--gpu-memory", "16", "-q"])
    assert result.exit_code == 0, result.output
    assert budgets == [("cpu", 16.0)]
    bad = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "bad"), "--gpu-memory", "0"])
    assert bad.exit_code == 2 and "--gpu-memory" in bad.output
    summary = json.loads((out / "summary.json").read_text())
    run_host = summary["run"]["peak_memory_gib"]["host"]
    schema = load_predictions_schema("segmentation")
    import jsonschema

    for row in summary["series"]:
        peak = row["peak_memory_gib"]
        assert set(peak) == {"host"}
        assert 0.05 < peak["host"] <= run_host + 0.01  # a series' peak lies within the run's
        document: dict[str, Any] = json.loads((out / row["outputs"]["json"]).read_text())
        jsonschema.validate(document, schema)
        assert document["peak_memory_gib"] == peak


def test_serve_hands_its_gpu_budget_to_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from innereye_batch.service.models import load_served_models
    from innereye_batch.service.options import ModelSource, ServeOptions

    budgets: list[tuple[str, float | None]] = []
    monkeypatch.setattr(memory, "limit_device_memory", lambda device, gib: budgets.append((str(device), gib)))
    options = ServeOptions(
        models=(ModelSource(Path("sample_data/final_model")),), device="cpu", gpu_memory_gib=12.5, no_auth=True
    )
    served = load_served_models(options)
    assert budgets == [("cpu", 12.5)] and len(served) == 1
