"""`--devices`: one model replica per device fed from one loader; two CPU replicas write what one writes."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from innereye_batch.errors import UsageError
from innereye_batch.pipeline.devices import parse_devices, run_devices
from innereye_batch.pipeline.run import run_batch
from innereye_batch.tasks.segmentation import SegmentationPredictor
from tests.pipeline.scale_helpers import ScaleCase, assert_same_as_reference, make_case, summary


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> ScaleCase:
    return make_case(tmp_path_factory.mktemp("devices"))


def test_device_lists() -> None:
    assert parse_devices(["cpu", "cpu"]) == [torch.device("cpu")] * 2
    assert run_devices("cpu", []) == [torch.device("cpu")]
    with pytest.raises(UsageError, match="give one of them"):
        run_devices("cuda:0", ["cpu"])
    with pytest.raises(UsageError, match="combined"):
        parse_devices(["all", "cpu"])
    with pytest.raises(UsageError, match="not one of"):
        parse_devices(["tpu"])
    if not torch.cuda.is_available():
        assert run_devices("auto", []) == [torch.device("cpu")]
        with pytest.raises(UsageError, match="no CUDA GPU"):
            parse_devices(["all"])
        with pytest.raises(UsageError, match="CUDA GPU"):
            parse_devices(["0", "1"])
    else:
        assert parse_devices(["0"]) == [torch.device("cuda", 0)]
        assert parse_devices(["all"]) == [torch.device("cuda", i) for i in range(torch.cuda.device_count())]


def test_two_cpu_replicas_write_what_one_writes(
    case: ScaleCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[tuple[str, int]] = []
    original = SegmentationPredictor.predict_batch

    def recording(self: SegmentationPredictor, items: Sequence[Any], decoded: Sequence[Any]) -> list[Any]:
        used.append((threading.current_thread().name, id(self)))
        return original(self, items, decoded)

    monkeypatch.setattr(SegmentationPredictor, "predict_batch", recording)
    out = tmp_path / "out"
    report = run_batch(case.options(out, devices=("cpu", "cpu")))
    assert report.exit_code == 1
    assert_same_as_reference(case, out)
    assert summary(out)["run"]["device"] == "cpu,cpu"
    assert len(used) == 6  # each good series predicted once
    threads = {name for name, _ in used}
    assert len(threads) == 2 and all(name.startswith("replica-") for name in threads), used
    assert len({predictor for _, predictor in used}) == 2, "each replica has its own predictor (own networks)"


def test_fail_fast_with_replicas_stops_and_accounts_for_every_item(case: ScaleCase, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run_batch(case.options(out, devices=("cpu", "cpu"), fail_fast=True))
    statuses = {r.key: r.status for r in report.results}
    assert len(statuses) == len(report.results) == len(summary(case.reference)["series"])
    assert "failed" in statuses.values()
