"""UNet3D: parameter names and shapes equal InnerEye's, forward gives logits of the right shape, registry rules."""

from __future__ import annotations

import pytest
import torch

from innereye_batch.model.architectures import (
    architecture_names,
    build_network,
    check_architecture_params,
    size_multiple_of,
)
from innereye_batch.model.spec import ArchitectureSpec

# State-dict names and shapes of InnerEye's UNet3D(input_image_channels=1, initial_feature_channels=2,
# num_classes=3, kernel_size=3, num_downsampling_paths=2), derived by hand from microsoft/InnerEye-DeepLearning
# InnerEye/ML/models/architectures/unet_3d.py (commit 47817c654a55a13afcf3d1da0e91b9f798fcc078):
# _layers = [UNetEncodeBlock(1->2), UNetEncodeBlock(2->4), UNetEncodeBlock(4->8), UNetDecodeBlock(8->4),
# UNetEncodeBlockSynthesis(4), UNetDecodeBlock(4->2), UNetEncodeBlockSynthesis(2)], output_layer Conv3d(2->3, 1).
# BasicLayer (InnerEye/ML/models/layers/basic.py) = conv1 (Conv3d, bias=False) + bn1 (BatchNorm3d, absent when
# use_batchnorm=False); UNetDecodeBlock.upsample_block = [ConvTranspose3d (bias, kernel 2*2=4, from
# InnerEye/ML/utils/layer_util.py get_upsampling_kernel_size), BatchNorm3d, ReLU].
INNEREYE_UNET3D_F2_N2 = [
    ("_layers.0.block1.conv1.weight", (2, 1, 3, 3, 3)),
    ("_layers.0.block1.bn1.weight", (2,)),
    ("_layers.0.block1.bn1.bias", (2,)),
    ("_layers.0.block1.bn1.running_mean", (2,)),
    ("_layers.0.block1.bn1.running_var", (2,)),
    ("_layers.0.block1.bn1.num_batches_tracked", ()),
    ("_layers.0.block2.conv1.weight", (2, 2, 3, 3, 3)),
    ("_layers.0.block2.bn1.weight", (2,)),
    ("_layers.0.block2.bn1.bias", (2,)),
    ("_layers.0.block2.bn1.running_mean", (2,)),
    ("_layers.0.block2.bn1.running_var", (2,)),
    ("_layers.0.block2.bn1.num_batches_tracked", ()),
    ("_layers.1.block1.conv1.weight", (4, 2, 3, 3, 3)),
    ("_layers.1.block1.bn1.weight", (4,)),
    ("_layers.1.block1.bn1.bias", (4,)),
    ("_layers.1.block1.bn1.running_mean", (4,)),
    ("_layers.1.block1.bn1.running_var", (4,)),
    ("_layers.1.block1.bn1.num_batches_tracked", ()),
    ("_layers.1.block2.conv1.weight", (4, 4, 3, 3, 3)),
    ("_layers.1.block2.bn1.weight", (4,)),
    ("_layers.1.block2.bn1.bias", (4,)),
    ("_layers.1.block2.bn1.running_mean", (4,)),
    ("_layers.1.block2.bn1.running_var", (4,)),
    ("_layers.1.block2.bn1.num_batches_tracked", ()),
    ("_layers.2.block1.conv1.weight", (8, 4, 3, 3, 3)),
    ("_layers.2.block1.bn1.weight", (8,)),
    ("_layers.2.block1.bn1.bias", (8,)),
    ("_layers.2.block1.bn1.running_mean", (8,)),
    ("_layers.2.block1.bn1.running_var", (8,)),
    ("_layers.2.block1.bn1.num_batches_tracked", ()),
    ("_layers.2.block2.conv1.weight", (8, 8, 3, 3, 3)),
    ("_layers.2.block2.bn1.weight", (8,)),
    ("_layers.2.block2.bn1.bias", (8,)),
    ("_layers.2.block2.bn1.running_mean", (8,)),
    ("_layers.2.block2.bn1.running_var", (8,)),
    ("_layers.2.block2.bn1.num_batches_tracked", ()),
    ("_layers.3.upsample_block.0.weight", (8, 4, 4, 4, 4)),
    ("_layers.3.upsample_block.0.bias", (4,)),
    ("_layers.3.upsample_block.1.weight", (4,)),
    ("_layers.3.upsample_block.1.bias", (4,)),
    ("_layers.3.upsample_block.1.running_mean", (4,)),
    ("_layers.3.upsample_block.1.running_var", (4,)),
    ("_layers.3.upsample_block.1.num_batches_tracked", ()),
    ("_layers.4.conv1.conv1.weight", (4, 4, 3, 3, 3)),
    ("_layers.4.conv2.conv1.weight", (4, 4, 3, 3, 3)),
    ("_layers.4.activation_block.0.weight", (4,)),
    ("_layers.4.activation_block.0.bias", (4,)),
    ("_layers.4.activation_block.0.running_mean", (4,)),
    ("_layers.4.activation_block.0.running_var", (4,)),
    ("_layers.4.activation_block.0.num_batches_tracked", ()),
    ("_layers.4.block2.conv1.weight", (4, 4, 3, 3, 3)),
    ("_layers.4.block2.bn1.weight", (4,)),
    ("_layers.4.block2.bn1.bias", (4,)),
    ("_layers.4.block2.bn1.running_mean", (4,)),
    ("_layers.4.block2.bn1.running_var", (4,)),
    ("_layers.4.block2.bn1.num_batches_tracked", ()),
    ("_layers.5.upsample_block.0.weight", (4, 2, 4, 4, 4)),
    ("_layers.5.upsample_block.0.bias", (2,)),
    ("_layers.5.upsample_block.1.weight", (2,)),
    ("_layers.5.upsample_block.1.bias", (2,)),
    ("_layers.5.upsample_block.1.running_mean", (2,)),
    ("_layers.5.upsample_block.1.running_var", (2,)),
    ("_layers.5.upsample_block.1.num_batches_tracked", ()),
    ("_layers.6.conv1.conv1.weight", (2, 2, 3, 3, 3)),
    ("_layers.6.conv2.conv1.weight", (2, 2, 3, 3, 3)),
    ("_layers.6.activation_block.0.weight", (2,)),
    ("_layers.6.activation_block.0.bias", (2,)),
    ("_layers.6.activation_block.0.running_mean", (2,)),
    ("_layers.6.activation_block.0.running_var", (2,)),
    ("_layers.6.activation_block.0.num_batches_tracked", ()),
    ("_layers.6.block2.conv1.weight", (2, 2, 3, 3, 3)),
    ("_layers.6.block2.bn1.weight", (2,)),
    ("_layers.6.block2.bn1.bias", (2,)),
    ("_layers.6.block2.bn1.running_mean", (2,)),
    ("_layers.6.block2.bn1.running_var", (2,)),
    ("_layers.6.block2.bn1.num_batches_tracked", ()),
    ("output_layer.weight", (3, 2, 1, 1, 1)),
    ("output_layer.bias", (3,)),
]


def tiny_spec(**params: object) -> ArchitectureSpec:
    return ArchitectureSpec("UNet3D", {"initial_feature_channels": 2, "num_downsampling_paths": 2, **params})


def test_parameter_names_and_shapes_match_innereye() -> None:
    network = build_network(tiny_spec(), 1, 3)
    ours = [(name, tuple(tensor.shape)) for name, tensor in network.state_dict().items()]
    assert ours == INNEREYE_UNET3D_F2_N2


def test_innereye_state_dict_loads_strictly() -> None:
    foreign = {name: torch.randn(shape) if shape else torch.tensor(7) for name, shape in INNEREYE_UNET3D_F2_N2}
    network = build_network(tiny_spec(), 1, 3)
    result = network.load_state_dict(foreign, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(network.state_dict()["output_layer.weight"], foreign["output_layer.weight"])


def test_forward_returns_logits_whose_softmax_is_a_distribution() -> None:
    network = build_network(tiny_spec(), 1, 3).eval()
    with torch.inference_mode():
        logits = network(torch.randn(2, 1, 8, 12, 4))
    assert logits.shape == (2, 3, 8, 12, 4)
    posteriors = torch.softmax(logits, dim=1)
    assert torch.allclose(posteriors.sum(dim=1), torch.ones(2, 8, 12, 4), atol=1e-6)
    assert not torch.allclose(logits.sum(dim=1), torch.ones(2, 8, 12, 4))  # logits, not posteriors


def test_anisotropic_downsampling_follows_innereye_kernel_rule() -> None:
    network = build_network(tiny_spec(downsampling_factor=[1, 2, 2], downsampling_dilation=[1, 2, 2]), 2, 4)
    state = network.state_dict()
    assert tuple(state["_layers.3.upsample_block.0.weight"].shape) == (8, 4, 1, 4, 4)
    assert tuple(state["_layers.1.block1.conv1.weight"].shape) == (4, 2, 3, 3, 3)
    assert network(torch.randn(1, 2, 3, 8, 8)).shape == (1, 4, 3, 8, 8)
    assert size_multiple_of(tiny_spec(downsampling_factor=[1, 2, 2])) == (1, 4, 4)


def test_size_multiple_is_two_to_the_downsampling_paths() -> None:
    assert size_multiple_of(ArchitectureSpec("UNet3D", {"initial_feature_channels": 4})) == (16, 16, 16)
    assert size_multiple_of(tiny_spec()) == (4, 4, 4)


def test_registry_matches_names_in_any_case_and_rejects_bad_parameters() -> None:
    assert "UNet3D" in architecture_names()
    assert isinstance(build_network(ArchitectureSpec("unet3d", {"initial_feature_channels": 2}), 1, 2), torch.nn.Module)
    assert check_architecture_params("UNet3D", {"initial_feature_channels": 2}) == []
    assert check_architecture_params("UNet3D", {}) == ["missing parameter 'initial_feature_channels'"]
    problems = check_architecture_params("UNet3D", {"initial_feature_channels": 2, "feature_channels": [2]})
    assert len(problems) == 1 and "unknown parameter 'feature_channels'" in problems[0]
    assert "unknown architecture 'VNet'" in check_architecture_params("VNet", {})[0]
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network(ArchitectureSpec("VNet", {}), 1, 2)


def test_unet3d_compiles_with_torchscript() -> None:
    network = build_network(tiny_spec(), 1, 3).eval()
    scripted = torch.jit.script(network)
    x = torch.randn(1, 1, 8, 8, 8)
    assert torch.equal(scripted(x), network(x))
