"""Run one network or an ensemble on a pre-processed tensor: outputs (after the task's activation) averaged as a
running mean."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from innereye_batch.engine.sliding_window import Activation, amp_autocast, sliding_window_inference
from innereye_batch.model.checkpoints import to_eval_mode
from innereye_batch.model.spec import InferenceSpec

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def predict_posteriors(
    networks: Sequence[torch.nn.Module],
    image: torch.Tensor,
    spec: InferenceSpec,
    *,
    num_outputs: int,
    patch_batch: int = 1,
    amp: bool = False,
    output_device: torch.device | None = None,
    max_output_bytes: int | None = None,
    activation: Activation | None = None,
    channels_last: bool = False,
    chosen_batches: dict[tuple[object, ...], int] | None = None,
) -> torch.Tensor:
    """Mean outputs (num_outputs, Z, Y, X) of ``networks`` on one (C, Z, Y, X) image: each network's logits go
    through ``activation`` (softmax posteriors for segmentation; None keeps logits), then are averaged.

    ``channels_last``: patches go to the networks in the channels-last 3-D memory format (give it networks
    converted by ``to_channels_last``): faster convolutions with oneDNN and cuDNN. ``chosen_batches``: the
    caller's memo of automatic patch batches (see ``sliding_window_inference``).

    One sliding window for the whole ensemble: every batch of patches is cut out and copied once, each member
    runs on it, and the members' activated outputs are averaged (a running mean in float32) before stitching.
    Stitching is linear, so this equals averaging each member's own stitched volume, with one set of full-volume
    accumulators instead of one per member. N copies of one network give exactly that network's posteriors.
    """
    if not networks:
        raise ValueError("predict_posteriors needs at least one network")
    for network in networks:
        to_eval_mode(network)
    window = functools.partial(
        sliding_window_inference,
        image=image,
        num_outputs=num_outputs,
        patch_size=spec.patch_size,
        stride=spec.stride,
        stitching=spec.stitching,
        patch_batch=patch_batch,
        size_multiple=spec.size_multiple,
        output_device=output_device,
        amp=amp,
        max_output_bytes=max_output_bytes,
        chosen_batches=chosen_batches,
    )
    if len(networks) == 1:
        member = networks[0]
        return window(_in_channels_last(member) if channels_last else member, activation=activation)

    def every_member(patches: torch.Tensor) -> torch.Tensor:
        if channels_last:
            patches = _channels_last(patches)
        mean: torch.Tensor | None = None
        for count, network in enumerate(networks, start=1):
            outputs = _activate(network(patches), activation)
            mean = outputs if mean is None else mean.add_(outputs.sub_(mean).div_(count))
        assert mean is not None
        return mean

    return window(every_member, activation=None)  # applied per member above, before averaging


def to_channels_last(networks: Sequence[torch.nn.Module]) -> bool:
    """Convert 3-D conv networks to the channels-last 3-D memory format, in place; False (nothing changed) when one
    of them cannot be converted (a TorchScript or torch.export program)."""
    import torch

    try:
        converted = [n.to(memory_format=torch.channels_last_3d) for n in networks]  # type: ignore[call-overload]
    except (RuntimeError, TypeError, AttributeError, NotImplementedError):
        return False
    return all(isinstance(n, torch.nn.Module) for n in converted)


def _channels_last(batch: torch.Tensor) -> torch.Tensor:
    import torch

    return batch.contiguous(memory_format=torch.channels_last_3d) if batch.dim() == 5 else batch


def _in_channels_last(network: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(patches: torch.Tensor) -> torch.Tensor:
        return network(_channels_last(patches))

    return forward


def _activate(logits: torch.Tensor, activation: Activation | None) -> torch.Tensor:
    import torch

    logits = logits.float()
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    return logits.clone()


def classify(
    networks: Sequence[torch.nn.Module],
    image: torch.Tensor,
    *,
    activation: Activation = "softmax",
    amp: bool = False,
) -> torch.Tensor:
    """Class probabilities (K,) of one image (C, ...) averaged over ``networks`` (InnerEye averages sigmoids).

    Each network gets the image with a batch axis added and must return (1, K) logits; ``activation`` turns
    them into probabilities (softmax over classes, or sigmoid per class) before a running mean, in float32.
    """
    import torch

    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"unknown activation {activation!r}: use 'softmax' or 'sigmoid'")
    if not networks:
        raise ValueError("classify needs at least one network")
    mean: torch.Tensor | None = None
    for count, network in enumerate(networks, start=1):
        network.eval()
        with torch.inference_mode(), amp_autocast(image.device, amp):
            logits = network(image[None])
        if logits.dim() != 2 or logits.shape[0] != 1:
            raise ValueError(f"a classifier must return (1, K) logits, got shape {tuple(logits.shape)}")
        logits = logits[0].float()
        probabilities = torch.softmax(logits, dim=0) if activation == "softmax" else torch.sigmoid(logits)
        mean = probabilities if mean is None else mean + (probabilities - mean) / count
    assert mean is not None
    return mean
