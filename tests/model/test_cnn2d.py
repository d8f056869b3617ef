"""CNN2D's finer Grad-CAM grid (``num_downsamplings``) and ``class_max`` pooling, whose Grad-CAM is its evidence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from innereye_batch.engine.explain import explain_batch
from innereye_batch.model.architectures import build_network
from innereye_batch.model.spec import ArchitectureSpec


def cnn2d(**params: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(ArchitectureSpec("CNN2D", {"initial_feature_channels": 4, "num_blocks": 3, **params}), 1, 2)


@pytest.mark.parametrize(
    ("downsamplings", "grid", "dilations"),
    [(None, 16, [1] * 6), (2, 16, [1] * 6), (1, 32, [1, 1, 1, 1, 2, 2]), (0, 64, [1, 1, 2, 2, 4, 4])],
)
def test_num_downsamplings_sets_the_grid_of_the_last_block_and_keeps_parameter_names(
    downsamplings: int | None, grid: int, dilations: list[int]
) -> None:
    network = cnn2d(num_downsamplings=downsamplings).eval()
    with torch.no_grad():
        features = network.features(torch.randn(2, 1, 64, 64))
    assert features.shape == (2, 16, grid, grid)
    reference = cnn2d().state_dict()
    assert {k: v.shape for k, v in network.state_dict().items()} == {k: v.shape for k, v in reference.items()}
    # the blocks that do not pool dilate instead (2, 4, ...), padded to keep their size
    convolutions = [(name, m) for name, m in network.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.dilation[0] for _, m in convolutions] == dilations
    assert all(m.padding == m.dilation for _, m in convolutions)


def test_num_downsamplings_outside_its_range_is_refused() -> None:
    for value in (-1, 3, 1.0, True):
        with pytest.raises(ValueError, match="num_downsamplings"):
            cnn2d(num_downsamplings=value)


def test_class_max_scores_every_location_and_takes_each_class_best() -> None:
    network = cnn2d(num_downsamplings=1, global_pool="class_max").eval()
    image = torch.randn(3, 1, 48, 40)
    with torch.no_grad():
        features = network.features(image)
        scores = torch.einsum("kc,nchw->nkhw", network.classifier.weight, features)
        scores = scores + network.classifier.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(network(image), scores.flatten(2).amax(dim=2))
        assert network(image).shape == (3, 2)
        # not the same as pooling each channel first (the "max" pooling)
        per_channel = network.classifier(features.amax(dim=(2, 3)))
    assert not torch.allclose(network(image).detach(), per_channel, atol=1e-3)


def test_gradcam_of_a_class_max_network_is_its_positive_class_evidence() -> None:
    """Only the best location gets a gradient (the classifier weight), so Grad-CAM's channel weights are the
    classifier weights / (h * w) and its map is ReLU(classifier weights x features), upsampled and normalised."""
    network = cnn2d(num_downsamplings=1, global_pool="class_max").eval()
    image = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        features = network.features(image)
    for target in (0, 1):
        maps = explain_batch([network], image, [target, target], "gradcam", layer="features")
        evidence = torch.einsum("c,nchw->nhw", network.classifier.weight[target].detach(), features).clamp_min(0)
        assert float(evidence.amax()) > 0  # the comparison below is not between two empty maps
        expected = F.interpolate(evidence[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
        expected = expected / expected.flatten(1).amax(dim=1).view(-1, 1, 1)
        torch.testing.assert_close(maps, expected, rtol=0, atol=1e-5)
