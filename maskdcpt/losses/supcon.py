"""Supervised contrastive loss (Khosla et al. 2020): positives are samples of the same degradation type."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def supervised_contrastive_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.07,
    all_features: torch.Tensor | None = None,
    all_labels: torch.Tensor | None = None,
    anchor_offset: int = 0,
) -> torch.Tensor:
    """SupCon "L_out": mean over anchors with ≥ 1 positive of −mean_p log softmax(sim)_p.

    features (B, D) are the local anchors; ``all_features``/``all_labels`` (N, D)/(N,) the
    contrast set (the batch gathered across ranks; defaults to the local batch), in which the
    anchors sit at rows ``anchor_offset .. anchor_offset + B``. Features are L2-normalised here.
    Returns the sum over local anchors divided by the number of anchors with a positive in
    the whole contrast set, so that the per-rank values SUM to the loss of the global batch.
    """
    if all_features is None:
        all_features, all_labels, anchor_offset = features, labels, 0
    # float32 throughout: under autocast the matmul would run in bf16 (8 bits of mantissa), and at τ 0.07 a
    # similarity off by 0.004 moves a logit by 0.06; autocast ignores the .float() of the inputs, so switch it off
    with torch.autocast(features.device.type, enabled=False):
        return _supcon(features, labels, temperature, all_features, all_labels, anchor_offset)


def _supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float, all_features: torch.Tensor,
            all_labels: torch.Tensor, anchor_offset: int) -> torch.Tensor:
    z = F.normalize(features.float(), dim=1)
    z_all = F.normalize(all_features.float(), dim=1)
    logits = z @ z_all.t() / temperature  # (B, N)
    b, n = logits.shape
    rows = torch.arange(b, device=logits.device)
    self_mask = torch.zeros(b, n, dtype=torch.bool, device=logits.device)
    self_mask[rows, rows + anchor_offset] = True
    # Subtracting the row max leaves the softmax unchanged and keeps exp() finite.
    logits = logits - logits.masked_fill(self_mask, float("-inf")).amax(dim=1, keepdim=True).detach()
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    positives = (labels[:, None] == all_labels[None, :]) & ~self_mask
    n_pos = positives.sum(dim=1)
    has_pos = n_pos > 0
    per_anchor = -(log_prob * positives).sum(dim=1) / n_pos.clamp_min(1)
    # Count anchors with positives over the whole contrast set (identical on every rank).
    all_pos = (all_labels[:, None] == all_labels[None, :]).sum(dim=1) > 1
    return (per_anchor * has_pos).sum() / all_pos.sum().clamp_min(1)
