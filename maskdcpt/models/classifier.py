"""The degradation-classification decoder: a light ResNet-style head over the backbone's multi-scale taps.

Same structure and parameter names as the releases' ``PromptIR_NoImg_DC`` (ODISE-style feature aggregation), so
their classifier checkpoints load strictly:
``mixing_weights`` (L,) — softmax-mixed weights of the L taps; ``bottleneck_layers[i]`` — residual bottlenecks at
dims[i]; ``downsample_layers[i]`` — 1×1 conv to dims[i+1] + MaxPool2 + ReLU; ``last_stage`` — two more bottlenecks;
global average pool; ``fc`` — the class logits.

Normalisation (``norm``): ``"layer"`` is the release's channels-first LayerNorm (eps 1e-6), the layout its
checkpoints need; ``"batch"`` puts a BatchNorm in the same place (same ``weight``/``bias`` names, plus running
statistics). Measured on the embedded photos (CPU, tiny backbones): LayerNorm normalises each position's channel
vector to unit variance and so discards the per-position energy that tells noise, JPEG and streaks apart; the
LayerNorm classifier fed with an image pyramid stayed at the chance loss (2.95 after 250 steps) where BatchNorm
learned like a plain CNN (2.70, the CNN 2.73). Pre-training therefore uses ``"batch"`` unless asked otherwise.

Sparse awareness (``forward(taps, keep)``): with the backbone's keep map the classifier's BatchNorm statistics,
convolutions and final average see the visible positions only (SparK's sparse BatchNorm, :class:`MaskedBatchNorm2d`):
a masked image is then classified from its visible part instead of from a patchwork of content and zeros whose
statistics change with the mask ratio. Without a keep map (dense use, evaluation) it is the plain classifier.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

from degradations import NUM_TYPES

__all__ = ["DegradationClassifier", "Bottleneck", "ConvNorm"]


NORMS = ("layer", "batch")


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics come from the visible positions only (SparK's sparse BatchNorm).

    ``forward(x, mask)`` with mask (B, 1, H, W) in {0, 1}: mean and variance over the positions where mask is 1
    (the running statistics follow them); without a mask, or in eval mode, it is ``nn.BatchNorm2d``. Hidden
    positions are normalised too but carry nothing: callers zero them again.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if mask is None or not self.training:
            return super().forward(x)
        m = mask.to(x.dtype)
        count = m.sum() * 1.0
        if count < 2:
            return super().forward(x)
        mean = (x * m).sum(dim=(0, 2, 3)) / count
        var = (((x - mean[None, :, None, None]) ** 2) * m).sum(dim=(0, 2, 3)) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(var.detach() * count / (count - 1), alpha=momentum)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            return (x - mean[None, :, None, None]) * (scale * self.weight)[None, :, None, None] + self.bias[None, :, None, None]
        return (x - mean[None, :, None, None]) * scale[None, :, None, None]


class ConvNorm(nn.Conv2d):
    """Bias-free k×k conv followed by a norm: channels-first LayerNorm (eps 1e-6, the release's) or BatchNorm.

    The norm is a child of the conv (keys ``conv1.weight``, ``conv1.norm.weight``), as in Detectron2's ``Conv2d``
    that the releases use. Weights get the MSRA fill (He normal, fan_out, ReLU gain). ``forward(x, mask)``: the
    BatchNorm's statistics come from the visible positions (LayerNorm is per position and needs no mask).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: str = "layer"):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = LayerNorm2d(out_channels, eps=1e-6) if norm == "layer" else MaskedBatchNorm2d(out_channels)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        y = super().forward(x)
        return self.norm(y, mask) if isinstance(self.norm, MaskedBatchNorm2d) else self.norm(y)


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


class Bottleneck(nn.Module):
    """Inverted residual bottleneck on (B, C, H, W): 1×1 C→2C, 3×3 2C→2C, 1×1 2C→C (each with its norm, ReLU
    between), plus the identity, then ReLU. With a mask, hidden positions are zeroed after every step, so the 3×3
    conv sees them as zero padding and nothing but visible content reaches the pooled vector."""

    def __init__(self, channels: int, expansion: int = 2, norm: str = "layer"):
        super().__init__()
        hidden = channels * expansion
        self.conv1 = ConvNorm(channels, hidden, 1, norm)
        self.conv2 = ConvNorm(hidden, hidden, 3, norm)
        self.conv3 = ConvNorm(hidden, channels, 1, norm)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = _masked(F.relu(self.conv1(x, mask)), mask)
        y = _masked(F.relu(self.conv2(y, mask)), mask)
        return _masked(F.relu(self.conv3(y, mask) + x), mask)


class Stage(nn.Sequential):
    """Bottlenecks in a row (a Sequential, for the release's key names), each given the mask."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        for block in self:
            x = block(x, mask)
        return x


def _stage(channels: int, depth: int, norm: str) -> Stage:
    return Stage(*(Bottleneck(channels, norm=norm) for _ in range(depth)))


class DegradationClassifier(nn.Module):
    """Classify the degradation from the backbone's taps.

    ``tap_dims`` are the taps' channels in the order they are given, high resolution first: tap i must have
    ``tap_dims[i]`` channels and half the size of tap i−1 (or, with ``tap_downsample``, the full size; it is then
    down-sampled by 2**i, nearest — SwinIR, whose stages all work at full resolution).
    ``forward(taps)`` → (logits (B, num_classes), pooled features (B, tap_dims[-1])); the pooled vector is the global
    average before ``fc``, the embedding a contrastive loss can use.
    """

    def __init__(
        self,
        tap_dims: Sequence[int],
        num_classes: int = NUM_TYPES,  # the degradation registry's built-in types (the pre-training passes its engine's)
        num_res_blocks: int = 2,
        tap_downsample: bool = False,
        norm: str = "layer",
    ):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"classifier norm {norm!r} is not one of {NORMS}")
        if len(tap_dims) == 0 or num_classes < 1 or num_res_blocks < 1:
            raise ValueError(
                f"need at least one tap, one class and one block; got tap_dims={list(tap_dims)}, "
                f"num_classes={num_classes}, num_res_blocks={num_res_blocks}"
            )
        self.tap_dims = [int(d) for d in tap_dims]
        self.num_classes = num_classes
        self.tap_downsample = tap_downsample
        self.norm = norm
        self.bottleneck_layers = nn.ModuleList(_stage(d, num_res_blocks, norm) for d in self.tap_dims)
        next_dims = self.tap_dims[1:] + self.tap_dims[-1:]
        self.downsample_layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, n, kernel_size=1, bias=False), nn.MaxPool2d(2, 2), nn.ReLU())
            for d, n in zip(self.tap_dims, next_dims)
        )
        self.last_stage = _stage(self.tap_dims[-1], num_res_blocks, norm)
        self.mixing_weights = nn.Parameter(torch.ones(len(self.tap_dims)))
        self.fc = nn.Linear(self.tap_dims[-1], num_classes)

    def _check(self, taps: Sequence[torch.Tensor]) -> None:
        if len(taps) != len(self.tap_dims):
            raise ValueError(f"expected {len(self.tap_dims)} taps with channels {self.tap_dims}, got {len(taps)}")
        for i, (tap, dim) in enumerate(zip(taps, self.tap_dims)):
            if tap.dim() != 4 or tap.shape[1] != dim:
                raise ValueError(f"tap {i} must be (B, {dim}, H, W), got {tuple(tap.shape)}")

    def forward(self, taps: Sequence[torch.Tensor], keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """taps as described above; keep (B, 1, h, w) in {0, 1}, the backbone's keep map (any grid that the taps'
        sizes are multiples of), or None. With a keep map the classifier is sparse-aware: normalisation statistics,
        convolutions and the final average see the visible positions only, as if the hidden ones were not there
        (the classifier of a masked image is then a classifier of its visible part, not of a patchwork of content
        and zeros). Returns (logits (B, num_classes), pooled (B, tap_dims[-1]))."""
        self._check(taps)
        weights = torch.softmax(self.mixing_weights, dim=0)
        z: torch.Tensor | int = 0
        mask = None
        for i, tap in enumerate(taps):
            if self.tap_downsample and i > 0:
                tap = F.interpolate(tap, size=(tap.shape[-2] >> i, tap.shape[-1] >> i), mode="nearest")
            if isinstance(z, torch.Tensor) and z.shape[-2:] != tap.shape[-2:]:
                raise ValueError(
                    f"tap {i} is {tuple(tap.shape[-2:])} but the running features are {tuple(z.shape[-2:])}: "
                    "each tap must have half the size of the previous one (inputs a multiple of the backbone stride)"
                )
            if keep is not None:
                mask = F.interpolate(keep.to(tap.dtype), size=tap.shape[-2:], mode="nearest")
            z = self.bottleneck_layers[i](_masked(z + weights[i] * tap, mask), mask)
            z = self.downsample_layers[i](z)
            if mask is not None:  # a coarser cell is visible when any of its four is
                mask = F.max_pool2d(mask, 2, 2)
                z = z * mask
        z = self.last_stage(z, mask)
        if mask is None:
            pooled = z.mean(dim=(-2, -1))
        else:
            pooled = z.sum(dim=(-2, -1)) / mask.sum(dim=(-2, -1)).clamp_min(1.0)
        return self.fc(pooled), pooled
