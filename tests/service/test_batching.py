"""Dynamic batching and the device queue, in-process with the sample chest X-ray classifier: batches close at
``max_batch`` or when the first image has waited ``max_wait``; answers equal single predictions; a bad image fails
alone; predict batches go before job work on the device."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from innereye_batch.dicom.scan import scan_tree
from innereye_batch.engine.device import resolve_device
from innereye_batch.model.checkpoints import load_networks
from innereye_batch.model.package import load_model_package
from innereye_batch.pipeline.plan import plan_run
from innereye_batch.pipeline.run import make_predictor
from innereye_batch.service.batching import DynamicBatcher
from innereye_batch.service.device import JOB, PREDICT, DeviceQueue
from innereye_batch.tasks.base import Decoded, Predictor, PredictorOptions, WorkItem
from innereye_batch.tasks.classification import ClassificationPrediction
from tests.service.harness import CLASSIFICATION_MODEL, CXR_SCANS


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Predictor, list[WorkItem], list[Decoded]]:
    package = load_model_package(CLASSIFICATION_MODEL)
    predictor = make_predictor(package, load_networks(package), resolve_device("cpu"), PredictorOptions(batch_size=8))
    jobs, _ = plan_run(scan_tree(CXR_SCANS), package, (), tmp_path_factory.mktemp("unused"))
    items = [job.item for job in jobs]
    return predictor, items, [predictor.decoder(item) for item in items]


def _run(batcher: DynamicBatcher, items: list[WorkItem], decoded: list[Decoded]) -> list[object]:
    futures = [batcher.submit(item, one) for item, one in zip(items, decoded, strict=True)]
    outcomes: list[object] = []
    for future in futures:
        try:
            outcomes.append(future.result(timeout=120))
        except Exception as error:
            outcomes.append(error)
    return outcomes


@pytest.mark.parametrize(("max_batch", "max_wait_s", "sizes"), [(4, 30.0, [4, 4]), (1, 30.0, [1] * 8), (8, 0.5, [8])])
def test_batches_close_when_full_and_answers_equal_single_predictions(
    loaded: tuple[Predictor, list[WorkItem], list[Decoded]], max_batch: int, max_wait_s: float, sizes: list[int]
) -> None:
    predictor, items, decoded = loaded
    items, decoded = [*items, *items[:3]], [*decoded, *decoded[:3]]  # 8 images
    device, seen = DeviceQueue(), []
    batcher = DynamicBatcher(predictor, device, max_batch=max_batch, max_wait_s=max_wait_s, on_batch=seen.append)
    try:
        outcomes = _run(batcher, items, decoded)
    finally:
        batcher.close()
        device.close()
    assert seen == sizes  # with a 30 s wait, only a full batch can have closed them
    for item, one, outcome in zip(items, decoded, outcomes, strict=True):
        alone = predictor.predict(item, one)
        assert isinstance(outcome.prediction, ClassificationPrediction)  # type: ignore[attr-defined]
        assert outcome.prediction.labels == alone.labels  # type: ignore[attr-defined]
        for name, p in alone.probabilities.items():  # type: ignore[attr-defined]
            assert outcome.prediction.probabilities[name] == pytest.approx(p, abs=1e-6)  # type: ignore[attr-defined]


def test_a_bad_image_fails_alone(loaded: tuple[Predictor, list[WorkItem], list[Decoded]]) -> None:
    predictor, items, decoded = loaded
    broken = replace(decoded[1], tensor=torch.zeros(5, 3, 3))  # type: ignore[type-var]
    device = DeviceQueue()
    batcher = DynamicBatcher(predictor, device, max_batch=3, max_wait_s=30.0)
    try:
        outcomes = _run(batcher, items[:3], [decoded[0], broken, decoded[2]])
    finally:
        batcher.close()
        device.close()
    assert isinstance(outcomes[1], Exception)
    assert [isinstance(o, Exception) for o in (outcomes[0], outcomes[2])] == [False, False]


def test_the_device_runs_predict_batches_before_job_work(tmp_path: Path) -> None:
    device, order, gate = DeviceQueue(), [], threading.Event()
    blocker = device.submit(gate.wait, JOB, "job")  # the device is busy
    futures = [device.submit(lambda n=n: order.append(f"job{n}"), JOB, "job") for n in range(2)]
    futures += [device.submit(lambda n=n: order.append(f"predict{n}"), PREDICT, "predict") for n in range(2)]
    gate.set()
    for future in [blocker, *futures]:
        future.result(timeout=30)
    device.close()
    assert order == ["predict0", "predict1", "job0", "job1"]
    failing = DeviceQueue()
    with pytest.raises(ZeroDivisionError):
        failing.run(lambda: 1 / 0, PREDICT, "predict")
    assert failing.run(lambda: 42, PREDICT, "predict") == 42  # an error never stops the device thread
    failing.close()


def test_a_cancelled_request_is_dropped_and_the_batcher_goes_on(
    loaded: tuple[Predictor, list[WorkItem], list[Decoded]],
) -> None:
    """A request whose handler was cancelled (its future with it) made answering it raise in the batcher's
    thread, which died: the rest of its batch, and every later request of that model, waited for ever."""
    predictor, items, decoded = loaded
    device, seen = DeviceQueue(), []
    batcher = DynamicBatcher(predictor, device, max_batch=3, max_wait_s=2.0, on_batch=seen.append)
    try:
        cancelled = batcher.submit(items[0], decoded[0])
        assert cancelled.cancel()
        outcomes = _run(batcher, items[1:3], decoded[1:3])  # the batch of three closes, the cancelled one in it
        later = _run(batcher, items[:1], decoded[:1])  # a batch of its own, closed by the 2 s wait
    finally:
        batcher.close()
        device.close()
    assert all(isinstance(o.prediction, ClassificationPrediction) for o in [*outcomes, *later])  # type: ignore[attr-defined]
    assert seen == [2, 1]


def test_a_failing_metrics_call_leaves_the_device_thread_serving() -> None:
    """The device thread records each call's time; a recorder that raised killed it, and every later call (every
    job and predict request of the service) waited for ever."""
    device = DeviceQueue()

    def broken_metrics(kind: str, seconds: float) -> None:
        raise ValueError("metrics backend gone")

    device.on_run = broken_metrics
    try:
        assert device.submit(lambda: 1, PREDICT, "predict").result(timeout=30) == 1
        assert device.submit(lambda: 2, JOB, "job").result(timeout=30) == 2
    finally:
        device.close()
