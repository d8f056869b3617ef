"""A bounded load test of real-time predict: requests at concurrency 1, 8 and 32, no errors, every answer equal to
the answer to the same image sent alone, and concurrent images really batched (small counts here, so that CI
stays a few seconds; ``bench/serve_bench.py`` runs 500 requests per level and times them).
"""

from __future__ import annotations

import pytest

from tests.service.harness import CLASSIFICATION_ID, CXR_SCANS, ServiceProcess
from tests.service.load import fire

REQUESTS = {1: 10, 8: 40, 32: 96}
PATH = f"/v1/model/predict/{CLASSIFICATION_ID}"


def _batch_counts(service: ServiceProcess) -> tuple[float, float]:
    """(batches run, batches of one image) so far, from /metrics."""
    with service.client() as client:
        lines = client.get("/metrics").text.splitlines()
    value = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if not line.startswith("#")}
    return value["innereye_batch_predict_batch_size_count"], value['innereye_batch_predict_batch_size_bucket{le="1.0"}']


@pytest.mark.load
def test_concurrent_predicts_all_succeed_with_the_answers_of_single_requests(service: ServiceProcess) -> None:
    bodies = [path.read_bytes() for path in sorted(CXR_SCANS.glob("*.dcm"))]
    alone = fire(service.base_url, PATH, bodies, len(bodies), 1)
    assert alone.errors == []
    expected = {index: answer["classification"] for index, answer in alone.answers}
    for concurrency, requests in REQUESTS.items():
        batches_before, singles_before = _batch_counts(service)
        result = fire(service.base_url, PATH, bodies, requests, concurrency)
        assert result.errors == [] and result.statuses == [200] * requests
        for index, answer in result.answers:
            got, want = answer["classification"], expected[index]
            assert got["predicted"] == want["predicted"]
            for name, probability in want["probabilities"].items():
                assert got["probabilities"][name] == pytest.approx(probability, abs=1e-6)  # float32 batch rounding
        batches, singles = _batch_counts(service)
        if concurrency == 32:  # images that arrive together share forward passes
            assert (batches - batches_before) - (singles - singles_before) > 0
            assert batches - batches_before < requests
