"""Projection images become network inputs: scaled to [0, 1], antialiased resize (as PIL), channels, mean/std."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from innereye_batch.engine.classify_input import network_input, network_inputs
from tests.engine.classifiers import spec


def test_same_size_is_scaled_and_normalised_only() -> None:
    image = np.random.default_rng(1).integers(0, 65536, size=(32, 40), dtype=np.uint16)
    result = network_input(image, spec(size=(32, 40)))
    assert result.shape == (1, 32, 40) and result.dtype == torch.float32
    expected = (image.astype(np.float64) / 65535 - 0.4) / 0.25
    np.testing.assert_allclose(result[0].numpy(), expected, rtol=0, atol=1e-5)


def test_downsizing_matches_pil_antialiased_bilinear_resize() -> None:
    """PIL's bilinear resize widens its filter when shrinking (antialiasing); torch's antialias=True copies it."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 65536, size=(200, 150), dtype=np.uint16)
    result = network_input(image, spec(size=(64, 48)))[0].numpy() * 0.25 + 0.4
    pil = Image.fromarray(image.astype(np.float32) / 65535.0, mode="F").resize((48, 64), Image.Resampling.BILINEAR)
    np.testing.assert_allclose(result, np.asarray(pil), rtol=0, atol=2e-4)


def test_antialiasing_removes_a_pattern_finer_than_the_new_grid() -> None:
    checkerboard = ((np.indices((128, 128)).sum(axis=0) % 2) * 65535).astype(np.uint16)
    shrunk = network_input(checkerboard, spec(size=(32, 32)))[0] * 0.25 + 0.4
    assert float(shrunk.min()) > 0.45 and float(shrunk.max()) < 0.55  # grey, not an aliased pattern


def test_channels_are_replicated_and_normalised_per_channel() -> None:
    from innereye_batch.model.classification import ClassificationSpec, IntensitySpec

    base = spec(channels=3)
    three = ClassificationSpec(
        classes=base.classes,
        input_size=(16, 16),
        input_channels=3,
        intensity=IntensitySpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    )
    image = np.full((16, 16), 32768, dtype=np.uint16)
    result = network_input(image, three)
    value = 32768 / 65535
    for c, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)):
        np.testing.assert_allclose(result[c].numpy(), (value - m) / s, rtol=0, atol=1e-6)


def test_a_batch_of_different_sizes_equals_one_by_one() -> None:
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 65536, size=s, dtype=np.uint16) for s in [(50, 60), (32, 40), (90, 20)]]
    batch = network_inputs(images, spec())
    assert batch.shape == (3, 1, 32, 40)
    for k, image in enumerate(images):
        torch.testing.assert_close(batch[k], network_input(image, spec()), rtol=0, atol=0)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        network_input(np.zeros((2, 8, 8), dtype=np.uint16), spec())
    with pytest.raises(ValueError, match="at least one"):
        network_inputs([], spec())
