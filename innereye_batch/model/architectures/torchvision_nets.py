"""torchvision's ResNet and DenseNet as registered architectures (``ResNet``, ``DenseNet``), built lazily.

Chest X-ray classifiers are usually torchvision models trained from ImageNet weights; their state dicts load
here strictly because the network *is* torchvision's (``torchvision.models.resnet18(num_classes=K)`` and so
on, weights never downloaded). With ``in_channels`` other than 3 the first convolution (``conv1`` or
``features.conv0``) is replaced by one of the same shape but that many input channels, as models trained on
single-channel X-rays do; the parameter names stay torchvision's.

torchvision is an optional extra (``pip install 'innereye-batch[torchvision]'``) and must be the build made for
the installed torch (PyPI's Linux wheels are CUDA builds and fail to import beside a CPU-only torch with
"operator torchvision::nms does not exist"). Building a network without a working torchvision raises
``ModelFolderError`` saying so. A torchvision model exported as TorchScript or ``torch.export`` runs without
torchvision through ``"architecture": {"name": "from_checkpoint"}`` (``--trust-checkpoint``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from innereye_batch.errors import ModelFolderError
from innereye_batch.model.architectures import register_architecture

if TYPE_CHECKING:
    from torch import nn

RESNET_DEPTHS = (18, 34, 50, 101, 152)
DENSENET_DEPTHS = (121, 161, 169, 201)
INSTALL_HINT = (
    "install the torchvision build that matches your torch (pip install 'innereye-batch[torchvision]' on a "
    "CUDA torch from PyPI; for a CPU-only torch, torchvision from the same PyTorch index), or export the model as "
    'TorchScript and use "architecture": {"name": "from_checkpoint"} with --trust-checkpoint'
)


def torchvision_models() -> Any:
    """``torchvision.models``, or ``ModelFolderError`` when torchvision is missing or does not import."""
    try:
        import torchvision.models as models
    except ImportError as error:
        raise ModelFolderError(
            f"this architecture needs torchvision, which is not installed: {INSTALL_HINT}"
        ) from error
    except RuntimeError as error:  # a torchvision built for another torch: its C++ operators fail to register
        raise ModelFolderError(
            f"this architecture needs torchvision, but it fails to import ({error}); its build does not match "
            f"the installed torch: {INSTALL_HINT}"
        ) from error
    return models


def _replace_first_convolution(network: nn.Module, path: str, in_channels: int) -> None:
    """Swap the convolution at ``path`` (e.g. ``conv1``) for one with ``in_channels`` inputs, same otherwise."""
    from torch import nn

    parent_name, _, name = path.rpartition(".")
    parent = network.get_submodule(parent_name) if parent_name else network
    old = getattr(parent, name)
    assert isinstance(old, nn.Conv2d)
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        bias=old.bias is not None,
    )
    setattr(parent, name, new)


@register_architecture("ResNet")
def build_resnet(in_channels: int, out_channels: int, depth: int = 18) -> nn.Module:
    """torchvision ``resnet<depth>`` with ``out_channels`` classes (Grad-CAM default layer: ``layer4``)."""
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"ResNet depth must be one of {RESNET_DEPTHS}, got {depth!r}")
    network = getattr(torchvision_models(), f"resnet{depth}")(weights=None, num_classes=out_channels)
    if in_channels != 3:
        _replace_first_convolution(network, "conv1", in_channels)
    return network


@register_architecture("DenseNet")
def build_densenet(in_channels: int, out_channels: int, depth: int = 121) -> nn.Module:
    """torchvision ``densenet<depth>`` with ``out_channels`` classes (Grad-CAM default: ``features.denseblock4``)."""
    if depth not in DENSENET_DEPTHS:
        raise ValueError(f"DenseNet depth must be one of {DENSENET_DEPTHS}, got {depth!r}")
    network = getattr(torchvision_models(), f"densenet{depth}")(weights=None, num_classes=out_channels)
    if in_channels != 3:
        _replace_first_convolution(network, "features.conv0", in_channels)
    return network
