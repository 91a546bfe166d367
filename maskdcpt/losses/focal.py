"""Focal loss (Lin et al. 2017) as DCPT uses it: FL = −(1 − p_t)^γ · log p_t, no α, mean over the batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """logits (B, K), target (B,) int64 → scalar. γ = 0 is plain cross-entropy."""
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"focal_loss: logits (B, K) and target (B,) expected, got {tuple(logits.shape)}, {tuple(target.shape)}")
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
    # (1 - p_t)^γ down-weights the easy, already well-classified samples.
    weight = (1.0 - log_p.exp()).clamp_min(0.0).pow(gamma)
    return -(weight * log_p).mean()
