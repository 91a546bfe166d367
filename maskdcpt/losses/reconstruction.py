"""L1 reconstruction restricted to a region of the patch mask."""
from __future__ import annotations

import torch
import torch.nn.functional as F

REGIONS = ("all", "visible", "hidden")


def masked_l1(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None = None, region: str = "all") -> torch.Tensor:
    """Mean absolute error over ``region`` of the pixels.

    pred, target: (B, C, H, W). keep: (B, 1, h, w) keep map on the patch grid (1 = visible),
    needed for region "visible" or "hidden". The mean is over the selected pixels and channels.
    """
    if region not in REGIONS:
        raise ValueError(f"reconstruction region {region!r} is not one of {REGIONS}")
    err = (pred.float() - target.float()).abs()
    if region == "all":
        return err.mean()
    if keep is None:
        raise ValueError(f"reconstruction region {region!r} needs the keep map")
    weight = F.interpolate(keep.float(), size=pred.shape[-2:], mode="nearest")
    if region == "hidden":
        weight = 1.0 - weight
    denom = weight.sum() * pred.shape[1]
    # An empty region (e.g. nothing hidden) contributes zero rather than NaN.
    return (err * weight).sum() / denom.clamp_min(1.0)
