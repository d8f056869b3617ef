"""Explanation maps on networks whose answer is known: Grad-CAM, integrated gradients, GradientShap."""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np
import pytest
import torch

from innereye_batch.engine.explain import ExplainMethod, explain_batch, to_image_grid
from innereye_batch.errors import UsageError
from tests.engine.classifiers import cnn


class LinearScorer(torch.nn.Module):
    """logit_1 = sum(w * x) over pixels, logit_0 = -logit_1; ``features`` is an identity layer (for Grad-CAM)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.features = torch.nn.Identity()
        self.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (self.features(x) * self.weight).flatten(1).sum(dim=1, keepdim=True)
        return torch.cat([-score, score], dim=1)


def disc_image(centre: tuple[int, int], size: int = 24) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= 9).float()


def test_gradcam_of_an_identity_layer_is_the_normalised_activation() -> None:
    """Grad-CAM = ReLU(mean gradient x activation); with a uniform positive weight it is the image itself."""
    net = LinearScorer(torch.full((1, 24, 24), 0.5)).eval()
    inputs = torch.stack([disc_image((6, 7)), disc_image((15, 18))])[:, None] * 3.0
    maps = explain_batch([net], inputs, [1, 1], "gradcam", layer="features")
    assert maps.shape == (2, 24, 24) and float(maps.max()) == pytest.approx(1.0)
    torch.testing.assert_close(maps, inputs[:, 0] / 3.0, rtol=0, atol=1e-6)
    # for the other class the gradients are negative: no positive evidence, an all-zero map
    assert float(explain_batch([net], inputs, [0, 0], "gradcam", layer="features").abs().max()) == 0.0


def test_integrated_gradients_of_a_linear_model_is_weight_times_input_minus_baseline() -> None:
    rng = np.random.default_rng(0)
    weight = torch.from_numpy(rng.uniform(-1, 1, size=(1, 16, 16)).astype(np.float32))
    net = LinearScorer(weight).eval()
    inputs = torch.from_numpy(rng.uniform(0, 1, size=(2, 1, 16, 16)).astype(np.float32))
    mean, std = 0.4, 0.25
    normalised = (inputs - mean) / std
    maps = explain_batch([net], normalised, [1, 1], "integrated-gradients", mean=[mean], std=[std])
    black = (0.0 - mean) / std
    expected = ((normalised - black) * weight)[:, 0].clamp_min(0)
    expected = expected / expected.flatten(1).amax(dim=1).view(-1, 1, 1)
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-5)


def test_gradient_shap_is_seeded_and_follows_the_expected_gradient() -> None:
    rng = np.random.default_rng(1)
    weight = torch.from_numpy(rng.uniform(-1, 1, size=(1, 16, 16)).astype(np.float32))
    net = LinearScorer(weight).eval()
    inputs = torch.from_numpy(rng.uniform(0, 1, size=(1, 1, 16, 16)).astype(np.float32))
    first = explain_batch([net], inputs, [1], "gradient-shap", n_samples=64)
    second = explain_batch([net], inputs, [1], "gradient-shap", n_samples=64)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    # a linear model's gradient is its weight; the baselines are black (0) and white (1) in this scale
    expected = (weight * (inputs[0] - 0.5))[0].clamp_min(0).flatten()
    correlation = np.corrcoef(first[0].flatten().numpy(), expected.numpy())[0, 1]
    assert correlation > 0.8


def test_a_gradient_shap_map_does_not_depend_on_the_rest_of_the_batch() -> None:
    """Issue: the service batches unrelated requests; an image's map must be the same alone, at any position in a
    batch and next to any other image (for every method, gradient-shap with its random noise included)."""
    networks = [cnn(seed, classes=2) for seed in (5, 6)]
    generator = torch.Generator().manual_seed(7)
    x, y, z = (torch.randn(1, 1, 32, 32, generator=generator) for _ in range(3))
    methods: tuple[ExplainMethod, ...] = ("gradient-shap", "integrated-gradients", "gradcam")
    for method in methods:
        options: dict[str, Any] = {"layer": "features", "n_steps": 8, "n_samples": 8}
        alone = explain_batch(networks, x, [1], method, **options)[0]
        second = explain_batch(networks, torch.cat([y, x]), [0, 1], method, **options)[1]
        third = explain_batch(networks, torch.cat([z, y, x]), [1, 1, 1], method, **options)[2]
        torch.testing.assert_close(second, alone, rtol=0, atol=1e-6, msg=f"{method}: second of two")
        torch.testing.assert_close(third, alone, rtol=0, atol=1e-6, msg=f"{method}: third of three")


def test_an_ensemble_averages_its_members_normalised_maps() -> None:
    networks = [cnn(seed, classes=2) for seed in (0, 1)]
    inputs = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    together = explain_batch(networks, inputs, [1, 0, 1], "gradcam", layer="features")
    alone = [explain_batch([n], inputs, [1, 0, 1], "gradcam", layer="features") for n in networks]
    mean = (alone[0] + alone[1]) / 2
    expected = mean / mean.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    torch.testing.assert_close(together, expected, rtol=0, atol=1e-6)
    assert float(together.min()) >= 0.0 and float(together.max()) <= 1.0


def test_gradients_work_inside_inference_mode() -> None:
    net = cnn(4, classes=2)
    with torch.inference_mode():
        inputs = torch.randn(2, 1, 32, 32)
        maps = explain_batch([net], inputs, [0, 1], "integrated-gradients", n_steps=8)
    assert maps.shape == (2, 32, 32) and float(maps.max()) == pytest.approx(1.0)


def test_to_image_grid_resamples_back_and_normalises() -> None:
    grid = to_image_grid(torch.full((8, 8), 0.25), (30, 20))
    assert grid.shape == (30, 20) and grid.dtype == np.float32
    np.testing.assert_allclose(grid, 1.0, rtol=0, atol=1e-6)
    peak = torch.zeros(8, 8)
    peak[2, 5] = 1.0
    grid = to_image_grid(peak, (80, 80))
    y, x = np.unravel_index(np.argmax(grid), grid.shape)
    assert abs(y - 25) <= 5 and abs(x - 55) <= 5  # the cell (2, 5) of 8 covers pixels 20-29, 50-59 of 80
    assert float(to_image_grid(np.zeros((4, 4)), (9, 9)).max()) == 0.0


def test_errors_are_clear() -> None:
    net = cnn(0, classes=2)
    inputs = torch.randn(1, 1, 32, 32)
    with pytest.raises(ValueError, match=r"no layer 'head'.*features"):
        explain_batch([net], inputs, [0], "gradcam", layer="head")
    with pytest.raises(ValueError, match="needs a target layer"):
        explain_batch([net], inputs, [0], "gradcam")
    with pytest.raises(ValueError, match="unknown explanation method"):
        explain_batch([net], inputs, [0], "lime")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="N targets"):
        explain_batch([net], inputs, [0, 1], "gradcam", layer="features")


def test_without_captum_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_captum(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("captum"):
            raise ImportError("No module named 'captum'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_captum)
    with pytest.raises(UsageError, match=r"innereye-batch\[explain\]"):
        explain_batch([cnn(0, classes=2)], torch.randn(1, 1, 32, 32), [0], "integrated-gradients")
