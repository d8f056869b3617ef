"""Explanation heat maps for classification networks with captum: Grad-CAM, integrated gradients, GradientShap.

Every method returns, per image, a non-negative map of the evidence *for* the target class, normalised to
[0, 1] (divided by its maximum; all zeros when there is no positive evidence):

- ``gradcam``: captum's ``LayerGradCam`` on the target layer (channel weights = mean gradient of the target
  logit, ReLU of the weighted sum), upsampled bilinearly from the layer's grid to the network input.
- ``integrated-gradients``: captum's ``IntegratedGradients`` from a black image (PNG value 0, normalised as the
  input is), summed over input channels, positive part.
- ``gradient-shap``: captum's ``GradientShap`` (SHAP values approximated by expected gradients) with a black and
  a white image as the baseline distribution and Gaussian noise; summed over channels, positive part. Each
  image is attributed on its own from the same seed, so its map is reproducible and the same whatever else is in
  its batch.

For an ensemble, each member's map is normalised, the maps are averaged and the mean is normalised again.
``to_image_grid`` resamples a map from the network input grid back onto the image's own (y, x) grid. Gradients
run here only (elsewhere inference runs under ``torch.inference_mode``). captum is an optional extra
(``pip install 'innereye-batch[explain]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from innereye_batch.errors import UsageError
from innereye_batch.model.checkpoints import to_eval_mode

if TYPE_CHECKING:
    import torch

ExplainMethod = Literal["gradcam", "integrated-gradients", "gradient-shap"]
EXPLAIN_METHODS: tuple[str, ...] = ("gradcam", "integrated-gradients", "gradient-shap")
INSTALL_HINT = "pip install 'innereye-batch[explain]'"


def captum_attr() -> Any:
    """``captum.attr``, or ``UsageError`` saying how to install it."""
    try:
        import captum.attr as attr
    except ImportError as error:
        raise UsageError(f"explanations need captum, which is not installed: {INSTALL_HINT}") from error
    return attr


def find_layer(network: torch.nn.Module, name: str) -> torch.nn.Module:
    """The submodule called ``name`` (as ``named_modules()`` lists it), or ``ValueError`` listing candidates."""
    try:
        return network.get_submodule(name)
    except AttributeError:
        convolutional = [
            n for n, m in network.named_modules() if n and type(m).__name__.startswith(("Conv", "Sequential"))
        ]
        raise ValueError(
            f"the network has no layer {name!r}; some of its layers: {', '.join(convolutional[-8:]) or '(none)'}"
        ) from None


def _normalise_each(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) non-negative maps divided by their own maximum (zeros stay zeros)."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return maps / peak


def _one_network(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    targets: list[int],
    method: str,
    *,
    layer: str | None,
    baseline: torch.Tensor,
    white: torch.Tensor,
    n_steps: int,
    n_samples: int,
    seed: int,
) -> torch.Tensor:
    """Raw non-negative maps (N, H, W) of one network at the input's size."""
    import torch
    import torch.nn.functional as F

    attr = captum_attr()
    if method == "gradcam":
        if not layer:
            raise ValueError("Grad-CAM needs a target layer: declare gradcam_layer in the model's inference block")
        try:
            cam = attr.LayerGradCam(network, find_layer(network, layer)).attribute(
                inputs, target=targets, relu_attributions=True
            )
        # TorchScript programs have no hookable submodules; in a torch.export program the hook never fires (captum
        # asserts that it did)
        except (RuntimeError, AssertionError) as error:
            raise ValueError(
                f"Grad-CAM cannot hook layer {layer!r} of this network ({error}); for TorchScript or torch.export "
                "programs use integrated-gradients or gradient-shap"
            ) from error
        cam = F.interpolate(cam.float(), size=inputs.shape[-2:], mode="bilinear", align_corners=False)
        return cam[:, 0].clamp_min(0)
    if method == "integrated-gradients":
        attributions = attr.IntegratedGradients(network).attribute(
            inputs, baselines=baseline, target=targets, n_steps=n_steps, internal_batch_size=max(1, inputs.shape[0] * 8)
        )
    elif method == "gradient-shap":
        baselines = torch.cat([baseline, white])
        explainer = attr.GradientShap(network)
        # captum draws the noise with torch and the baseline picks and path points with numpy's global RNG, for
        # all the rows of a call together: attribute one image at a time, each from the same seed, so that an
        # image's map does not depend on the other images in its batch or on its position there; seed both
        # generators, and give numpy its state back afterwards
        numpy_state = np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[inputs.device] if inputs.device.type == "cuda" else []):
                parts = []
                for index in range(inputs.shape[0]):
                    torch.manual_seed(seed)
                    np.random.seed(seed)
                    parts.append(
                        explainer.attribute(
                            inputs[index : index + 1],
                            baselines=baselines,
                            target=targets[index : index + 1],
                            n_samples=n_samples,
                            stdevs=0.1,
                        )
                    )
                attributions = torch.cat(parts)
        finally:
            np.random.set_state(numpy_state)
    else:
        raise ValueError(f"unknown explanation method {method!r}; use one of {', '.join(EXPLAIN_METHODS)}")
    return attributions.float().sum(dim=1).clamp_min(0)


def explain_batch(
    networks: Sequence[torch.nn.Module],
    inputs: torch.Tensor,
    targets: Sequence[int],
    method: ExplainMethod,
    *,
    layer: str | None = None,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    n_steps: int = 32,
    n_samples: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """Heat maps (N, H, W) in [0, 1] on the network input grid for ``inputs`` (N, C, H, W) and one target class
    index per image. ``mean`` / ``std`` are the input normalisation (to build the black and white baselines)."""
    import torch

    if not networks:
        raise ValueError("explain_batch needs at least one network")
    if inputs.dim() != 4 or len(targets) != inputs.shape[0]:
        raise ValueError(f"need (N, C, H, W) inputs and N targets, got {tuple(inputs.shape)} and {len(targets)}")
    channels = inputs.shape[1]
    mean_t = torch.tensor(list(mean) * (channels if len(mean) == 1 else 1), dtype=inputs.dtype, device=inputs.device)
    std_t = torch.tensor(list(std) * (channels if len(std) == 1 else 1), dtype=inputs.dtype, device=inputs.device)
    shape = (1, channels, *inputs.shape[-2:])
    black = ((0.0 - mean_t) / std_t).view(1, -1, 1, 1).expand(shape).contiguous()
    white = ((1.0 - mean_t) / std_t).view(1, -1, 1, 1).expand(shape).contiguous()
    total: torch.Tensor | None = None
    with torch.inference_mode(False), torch.enable_grad():
        inputs = inputs.detach().clone().requires_grad_(True)
        for network in networks:
            to_eval_mode(network)
            maps = _one_network(
                network,
                inputs,
                [int(t) for t in targets],
                method,
                layer=layer,
                baseline=black,
                white=white,
                n_steps=n_steps,
                n_samples=n_samples,
                seed=seed,
            ).detach()
            maps = _normalise_each(maps)
            total = maps if total is None else total + maps
    assert total is not None
    return _normalise_each(total / len(networks))


def to_image_grid(heatmap: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """A (H, W) map on the network input grid -> float32 (y, x) on an image of ``shape``, in [0, 1].

    The network input is the whole image resized, so the map is resized back (bilinear, no antialiasing when
    enlarging), clipped at 0 and divided by its maximum.
    """
    import torch
    import torch.nn.functional as F

    tensor = torch.as_tensor(np.asarray(heatmap, dtype=np.float32) if isinstance(heatmap, np.ndarray) else heatmap)
    tensor = tensor.detach().float().cpu()
    if tensor.dim() != 2:
        raise ValueError(f"a heat map must be 2-D (H, W), got shape {tuple(tensor.shape)}")
    if tuple(tensor.shape) != tuple(shape):
        antialias = shape[0] < tensor.shape[0] or shape[1] < tensor.shape[1]
        tensor = F.interpolate(
            tensor[None, None], size=shape, mode="bilinear", align_corners=False, antialias=antialias
        )[0, 0]
    tensor = tensor.clamp_min(0)
    peak = float(tensor.max())
    return (tensor / peak if peak > 0 else tensor).numpy().astype(np.float32)
