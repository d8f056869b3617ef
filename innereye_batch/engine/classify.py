"""Batched classification: logits of N images -> activation -> mean over the ensemble -> labels.

An ensemble's probabilities are the mean of its members' probabilities (softmax or sigmoid applied per member,
then averaged, as InnerEye averages its classification models' posteriors), kept as a running mean in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from innereye_batch.engine.sliding_window import amp_autocast

if TYPE_CHECKING:
    import torch

Activation = Literal["softmax", "sigmoid"]


@dataclass(frozen=True)
class BatchProbabilities:
    """Probabilities of a batch: the ensemble mean (N, K) and, when asked for, each member's (M, N, K)."""

    mean: torch.Tensor
    members: torch.Tensor | None = None


def probabilities_from_logits(logits: torch.Tensor, activation: Activation) -> torch.Tensor:
    """(N, K) logits -> (N, K) float32 probabilities: softmax over classes, or sigmoid per class."""
    import torch

    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"unknown activation {activation!r}: use 'softmax' or 'sigmoid'")
    if logits.dim() != 2:
        raise ValueError(f"a classifier must return (N, K) logits, got shape {tuple(logits.shape)}")
    logits = logits.float()
    return torch.softmax(logits, dim=1) if activation == "softmax" else torch.sigmoid(logits)


def classify_batch(
    networks: Sequence[torch.nn.Module],
    batch: torch.Tensor,
    *,
    activation: Activation,
    amp: bool = False,
    keep_members: bool = False,
) -> BatchProbabilities:
    """Mean class probabilities of ``networks`` on ``batch`` (N, C, H, W), under ``torch.inference_mode``.

    Each network must return (N, K) logits; all must agree on K. ``keep_members`` also returns each member's
    probabilities (M, N, K).
    """
    import torch

    if not networks:
        raise ValueError("classify_batch needs at least one network")
    if batch.dim() != 4:
        raise ValueError(f"classify_batch takes a (N, C, H, W) batch, got shape {tuple(batch.shape)}")
    mean: torch.Tensor | None = None
    members = []
    for count, network in enumerate(networks, start=1):
        with torch.inference_mode(), amp_autocast(batch.device, amp):
            logits = network(batch)
        if logits.dim() != 2 or logits.shape[0] != batch.shape[0]:
            raise ValueError(
                f"a classifier must return ({batch.shape[0]}, K) logits for {batch.shape[0]} images, "
                f"got shape {tuple(logits.shape)}"
            )
        probabilities = probabilities_from_logits(logits, activation)
        if mean is not None and probabilities.shape != mean.shape:
            raise ValueError(f"ensemble members disagree on the number of classes: {tuple(probabilities.shape)}")
        if keep_members:
            members.append(probabilities)
        mean = probabilities.clone() if mean is None else mean.add_(probabilities.sub(mean).div_(count))
    assert mean is not None
    return BatchProbabilities(mean, torch.stack(members) if keep_members else None)


def predicted_labels(
    probabilities: torch.Tensor, classes: Sequence[str], activation: Activation, thresholds: Sequence[float] = ()
) -> list[tuple[str, ...]]:
    """Per image, the predicted class names: the most probable (softmax), or each class at or above its
    threshold (sigmoid, possibly none)."""
    if probabilities.dim() != 2 or probabilities.shape[1] != len(classes):
        raise ValueError(f"probabilities {tuple(probabilities.shape)} do not match {len(classes)} classes")
    rows = probabilities.detach().float().cpu().tolist()
    if activation == "softmax":
        return [(classes[max(range(len(row)), key=row.__getitem__)],) for row in rows]
    if len(thresholds) != len(classes):
        raise ValueError(f"sigmoid labels need one threshold per class ({len(classes)}), got {len(thresholds)}")
    return [tuple(c for c, p, t in zip(classes, row, thresholds, strict=True) if p >= t) for row in rows]
