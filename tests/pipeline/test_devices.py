"""`--devices`: one model replica per device fed from one loader; two CPU replicas write what one writes."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from innereye_batch.errors import UsageError
from innereye_batch.pipeline.devices import parse_devices, run_devices
from innereye_batch.pipeline.run import RunOptions, run_batch
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


def test_two_replicas_classify_as_one_with_explanations(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    model, scans = repo / "sample_data" / "cxr_model", repo / "sample_data" / "cxr_scans"
    runs = {}
    for name, devices in (("one", ("cpu",)), ("two", ("cpu", "cpu"))):
        out = tmp_path / name
        options = RunOptions(
            model=model, input=scans, output=out, workers=0, batch_size=2, explain=("gradcam",), devices=devices
        )
        assert run_batch(options).exit_code == 0
        runs[name] = {r["key"]: (r["status"], r["probabilities"], r["predicted"]) for r in summary(out)["series"]}
        maps = {p.parent.name: np.load(p)["gradcam"] for p in out.glob("*/explanation.npz")}
        runs[name + "-maps"] = maps
    # the same labels; probabilities equal to float precision (the replicas batch other images together)
    assert len(runs["one"]) == 5 and runs["two"].keys() == runs["one"].keys()
    for key, (status, probabilities, predicted) in runs["one"].items():
        assert runs["two"][key][0] == status == "ok" and runs["two"][key][2] == predicted
        for name, probability in probabilities.items():
            assert runs["two"][key][1][name] == pytest.approx(probability, abs=1e-6)
    assert runs["two-maps"].keys() == runs["one-maps"].keys()
    for key, heat in runs["one-maps"].items():
        np.testing.assert_allclose(runs["two-maps"][key], heat, atol=1e-5)


def test_fail_fast_after_a_failure_at_planning_runs_nothing(tmp_path: Path) -> None:
    """A series failing at planning (a slice missing) with --fail-fast and one device: no series runs after it.
    Before, the single-device loop took the first loaded series before it looked whether to stop."""
    from innereye_batch.pipeline.run import RunOptions, run_batch
    from tests.factory import write_series
    from tests.pipeline.cohort import model_folder

    scans = tmp_path / "scans"
    good = [write_series(scans / name, shape=(6, 16, 16), seed=seed) for seed, name in enumerate("ab", start=1)]
    broken = write_series(scans / "c", shape=(6, 16, 16), seed=3, remove_slice=2)
    options = RunOptions(
        model=model_folder(tmp_path / "model", members=1),
        input=scans,
        output=tmp_path / "out",
        device="cpu",
        workers=0,
        fail_fast=True,
    )
    statuses = {r.series_instance_uid: r.status for r in run_batch(options).results}
    assert statuses[broken.series_instance_uid] == "failed"
    assert [statuses[g.series_instance_uid] for g in good] == ["not_run", "not_run"]


def test_a_replica_whose_last_flush_fails_stops_the_run_with_its_error(tmp_path: Path) -> None:
    """A replica whose final flush raised (a full disk) had taken its stop signal already, then waited for another
    that never came: the run hung for ever in join, its error never told (a reviewer's probe)."""
    from innereye_batch.pipeline import executors

    class Context:
        interrupted = threading.Event()

        @property
        def stopping(self) -> bool:
            return self.interrupted.is_set()

    class Replica:
        def __init__(self, fails: bool) -> None:
            self.device, self.fails, self.added = torch.device("cpu"), fails, 0

        def add(self, job: Any, loaded: Any) -> None:
            self.added += 1

        def flush(self) -> None:
            if self.fails:
                raise OSError("no space left on device")

    class Loaded:
        def __init__(self, index: int) -> None:
            self.index = index

    replicas = [Replica(True), Replica(False)]
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            executors._threaded(Context(), [0, 1, 2], iter([Loaded(i) for i in range(3)]), replicas)  # type: ignore[arg-type]
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the run hung after a replica's last flush failed"
    assert isinstance(outcome[0], OSError) and "no space" in str(outcome[0])
    assert sum(r.added for r in replicas) == 3
