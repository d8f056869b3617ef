"""3-D convolutions routed to oneDNN on the CPU: the same result as PyTorch's own path, other cases untouched."""

from __future__ import annotations

import copy

import pytest
import torch

from innereye_batch.engine.cpu_convolution import use_onednn_conv3d
from innereye_batch.model.architectures import build_network
from innereye_batch.model.spec import ArchitectureSpec

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")


def _unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(ArchitectureSpec("UNet3D", {"initial_feature_channels": 4, "num_downsampling_paths": 2}), 1, 3)


def test_routed_network_equals_pytorchs_own_path() -> None:
    native = _unet().eval()
    routed = copy.deepcopy(native)
    assert use_onednn_conv3d([routed]) == sum(isinstance(m, torch.nn.Conv3d) for m in routed.modules()) > 0
    x = torch.randn(1, 1, 16, 32, 32)  # a batch of one: PyTorch's heuristic picks its slow path here
    with torch.inference_mode():
        torch.testing.assert_close(routed(x), native(x), rtol=0, atol=1e-5)
        with torch.profiler.profile() as profile:
            routed(x)
    names = {event.key for event in profile.key_averages()}
    assert "aten::mkldnn_convolution" in names and "aten::slow_conv3d_forward" not in names


def test_gradients_and_other_dtypes_take_pytorchs_path() -> None:
    routed = _unet().eval()
    use_onednn_conv3d([routed])
    x = torch.randn(1, 1, 16, 32, 32, requires_grad=True)
    routed(x).sum().backward()  # with gradients: PyTorch's own convolution, differentiable
    assert x.grad is not None and torch.isfinite(x.grad).all()
    double = copy.deepcopy(routed).double()
    with torch.inference_mode():
        assert double(x.detach().double()).dtype == torch.float64
