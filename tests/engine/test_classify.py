"""Batched classification: probabilities per activation, the ensemble mean, labels, batch-independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from innereye_batch.engine.classify import classify_batch, predicted_labels, probabilities_from_logits
from innereye_batch.engine.classify_input import network_inputs
from innereye_batch.engine.ensemble import classify
from tests.engine.classifiers import cnn, spec, uint16_images


@pytest.fixture(scope="module")
def networks() -> list[torch.nn.Module]:
    return [cnn(seed) for seed in (0, 1, 2)]


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return network_inputs(uint16_images(7), spec())


def test_softmax_probabilities_sum_to_one_and_sigmoid_are_independent(networks, batch) -> None:
    softmax = classify_batch(networks, batch, activation="softmax").mean
    assert softmax.shape == (7, 3) and softmax.dtype == torch.float32
    torch.testing.assert_close(softmax.sum(dim=1), torch.ones(7), rtol=0, atol=1e-6)
    sigmoid = classify_batch(networks, batch, activation="sigmoid").mean
    assert bool(((sigmoid > 0) & (sigmoid < 1)).all())
    assert float((sigmoid.sum(dim=1) - 1).abs().max()) > 1e-3  # multi-label: no reason to sum to one


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_ensemble_mean_equals_the_hand_computed_mean(networks, batch, activation) -> None:
    result = classify_batch(networks, batch, activation=activation, keep_members=True)
    by_hand = []
    with torch.no_grad():
        for network in networks:
            logits = network(batch).double().numpy()
            if activation == "softmax":
                exp = np.exp(logits - logits.max(axis=1, keepdims=True))
                by_hand.append(exp / exp.sum(axis=1, keepdims=True))
            else:
                by_hand.append(1.0 / (1.0 + np.exp(-logits)))
    np.testing.assert_allclose(result.mean.numpy(), np.mean(by_hand, axis=0), rtol=0, atol=1e-6)
    assert result.members is not None and result.members.shape == (3, 7, 3)
    np.testing.assert_allclose(result.members.numpy(), np.stack(by_hand), rtol=0, atol=1e-6)


def test_batched_and_one_by_one_agree(networks, batch) -> None:
    together = classify_batch(networks, batch, activation="softmax").mean
    for k in range(batch.shape[0]):
        alone = classify_batch(networks, batch[k : k + 1], activation="softmax").mean[0]
        torch.testing.assert_close(together[k], alone, rtol=0, atol=1e-5)
        # the older one-image function of ensemble.py gives the same
        torch.testing.assert_close(classify(networks, batch[k], activation="softmax"), alone, rtol=0, atol=1e-6)


def test_copies_of_one_network_give_that_network(networks, batch) -> None:
    one = classify_batch(networks[:1], batch, activation="softmax").mean
    three = classify_batch([networks[0]] * 3, batch, activation="softmax").mean
    torch.testing.assert_close(one, three, rtol=0, atol=1e-6)


def test_inference_runs_without_gradients(networks, batch) -> None:
    result = classify_batch(networks, batch, activation="softmax").mean
    assert not result.requires_grad


def test_predicted_labels_softmax_argmax_and_sigmoid_thresholds() -> None:
    probabilities = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    classes = ("a", "b", "c")
    assert predicted_labels(probabilities, classes, "softmax") == [("b",), ("a",)]
    sig = torch.tensor([[0.9, 0.4, 0.31], [0.1, 0.2, 0.29]])
    assert predicted_labels(sig, classes, "sigmoid", (0.5, 0.5, 0.3)) == [("a", "c"), ()]
    with pytest.raises(ValueError, match="one threshold per class"):
        predicted_labels(sig, classes, "sigmoid", (0.5,))


def test_bad_shapes_and_activations_are_refused(networks, batch) -> None:
    with pytest.raises(ValueError, match="unknown activation"):
        probabilities_from_logits(torch.zeros(2, 3), "relu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        classify_batch(networks, batch[0], activation="softmax")
    with pytest.raises(ValueError, match="logits"):
        classify_batch([torch.nn.Conv2d(1, 2, 1)], batch, activation="softmax")
    with pytest.raises(ValueError, match="disagree"):
        classify_batch([networks[0], cnn(5, classes=2)], batch, activation="softmax")
