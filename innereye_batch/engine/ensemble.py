"""Run one network or an ensemble on a pre-processed tensor: outputs (after the task's activation) averaged as a
running mean."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from innereye_batch.engine.sliding_window import Activation, amp_autocast, sliding_window_inference
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
) -> torch.Tensor:
    """Mean outputs (num_outputs, Z, Y, X) of ``networks`` on one (C, Z, Y, X) image: each network's logits go
    through ``activation`` per patch (softmax posteriors for segmentation; None keeps logits), then are averaged.

    Every network sees the same pre-processed tensor and is put in eval mode. The mean is kept as a running
    mean (mean += (p_k - mean) / k), so at most two posterior volumes exist at a time; N copies of one network
    give exactly that network's posteriors. Once the accumulators had to fall back to the CPU for one network,
    the others write to the CPU directly.
    """
    if not networks:
        raise ValueError("predict_posteriors needs at least one network")
    mean: torch.Tensor | None = None
    target = output_device
    for count, network in enumerate(networks, start=1):
        network.eval()
        posteriors = sliding_window_inference(
            network,
            image,
            num_outputs=num_outputs,
            patch_size=spec.patch_size,
            stride=spec.stride,
            stitching=spec.stitching,
            patch_batch=patch_batch,
            size_multiple=spec.size_multiple,
            output_device=target,
            amp=amp,
            max_output_bytes=max_output_bytes,
            activation=activation,
        )
        if mean is None:
            mean = posteriors
            target = posteriors.device
            continue
        mean += posteriors.to(mean.device).sub_(mean).div_(count)
        del posteriors
    assert mean is not None
    return mean


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
