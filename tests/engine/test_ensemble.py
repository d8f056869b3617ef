"""Ensembles: N copies equal one network, different networks give the hand-computed mean; classification."""

from __future__ import annotations

import copy

import pytest
import torch

from innereye_batch.engine.ensemble import classify, predict_posteriors
from innereye_batch.engine.sliding_window import sliding_window_inference
from innereye_batch.model.spec import InferenceSpec
from tests.engine.conftest import conv_net

SPEC = InferenceSpec(patch_size=(8, 8, 8), stride=(4, 4, 4), stitching="gaussian")


def test_copies_of_one_network_equal_that_network(image: torch.Tensor) -> None:
    net = conv_net(2, 3, seed=11)
    single = predict_posteriors([net], image, SPEC, num_outputs=3, activation="softmax")
    copies = predict_posteriors(
        [copy.deepcopy(net) for _ in range(3)], image, SPEC, num_outputs=3, activation="softmax"
    )
    assert copies.shape == (3, 20, 18, 22)
    assert torch.equal(copies, single)


def test_different_networks_give_the_mean_by_hand(image: torch.Tensor) -> None:
    nets = [conv_net(2, 3, seed=s) for s in (21, 22, 23)]
    each = [
        sliding_window_inference(n, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8), stride=(4, 4, 4))
        for n in nets
    ]
    by_hand = (each[0] + each[1] + each[2]) / 3
    assert float((each[0] - each[1]).abs().max()) > 1e-2  # the members really differ
    result = predict_posteriors(nets, image, SPEC, num_outputs=3, activation="softmax", patch_batch=3)
    torch.testing.assert_close(result, by_hand, rtol=0, atol=1e-6)


def test_networks_are_put_in_eval_mode(image: torch.Tensor) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 1), torch.nn.Dropout3d(0.9)).train()
    whole = InferenceSpec(patch_size=None)
    first = predict_posteriors([net], image, whole, num_outputs=3, activation="softmax")
    second = predict_posteriors([net], image, whole, num_outputs=3, activation="softmax")
    assert not net.training
    assert torch.equal(first, second)


def test_no_networks_is_an_error(image: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="at least one"):
        predict_posteriors([], image, SPEC, num_outputs=3, activation="softmax")


class _Classifier(torch.nn.Module):
    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor([logits]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1) + 0.0 * x.mean()


def test_classify_averages_probabilities() -> None:
    image = torch.randn((1, 4, 6, 6))
    nets = [_Classifier([0.0, 1.0]), _Classifier([2.0, -1.0])]
    softmax = classify(nets, image, activation="softmax")
    expected = (torch.softmax(torch.tensor([0.0, 1.0]), 0) + torch.softmax(torch.tensor([2.0, -1.0]), 0)) / 2
    torch.testing.assert_close(softmax, expected)
    sigmoid = classify(nets, image, activation="sigmoid")
    torch.testing.assert_close(
        sigmoid, (torch.sigmoid(torch.tensor([0.0, 1.0])) + torch.sigmoid(torch.tensor([2.0, -1.0]))) / 2
    )
    assert torch.equal(
        classify([nets[0]] * 3, image, activation="sigmoid"), classify([nets[0]], image, activation="sigmoid")
    )
