"""Soft-target cross-entropy with label smoothing: one loss for class indices and for mixup targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(B,) labels -> (B, K) targets: 1 - smoothing + smoothing/K on the label, smoothing/K elsewhere."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    targets.scatter_(1, labels.long().unsqueeze(1), 1.0 - smoothing + off)
    return targets


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k target_k * log softmax(logits)_k, computed in fp32."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return -(targets.to(log_probs.dtype) * log_probs).sum(dim=-1).mean()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The training loss of a batch: `labels` are class indices (B,) or mixup/cutmix targets (B, K).

    Smoothing applies to both: mixed targets become (1 - smoothing) * targets + smoothing / K, which is
    the mix of the smoothed one-hot targets.
    """
    labels = labels.to(logits.device)
    num_classes = logits.shape[-1]
    if labels.ndim == 1:
        targets = smooth_one_hot(labels, num_classes, smoothing)
    else:
        targets = labels.float() * (1.0 - smoothing) + smoothing / num_classes
    return soft_target_cross_entropy(logits, targets)
