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

Sparse awareness: none, on purpose. In MaskDCPT the taps are masked features whose hidden positions are exactly 0,
so they carry no information about hidden content; the classifier makes one global decision per image and may mix
visible and (zero) hidden positions freely without leaking anything.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

__all__ = ["DegradationClassifier", "Bottleneck", "ConvNorm"]


NORMS = ("layer", "batch")


class ConvNorm(nn.Conv2d):
    """Bias-free k×k conv followed by a norm: channels-first LayerNorm (eps 1e-6, the release's) or BatchNorm.

    The norm is a child of the conv (keys ``conv1.weight``, ``conv1.norm.weight``), as in Detectron2's ``Conv2d``
    that the releases use. Weights get the MSRA fill (He normal, fan_out, ReLU gain).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: str = "layer"):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = LayerNorm2d(out_channels, eps=1e-6) if norm == "layer" else nn.BatchNorm2d(out_channels)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):
    """Inverted residual bottleneck on (B, C, H, W): 1×1 C→2C, 3×3 2C→2C, 1×1 2C→C (each with LN, ReLU between),
    plus the identity, then ReLU."""

    def __init__(self, channels: int, expansion: int = 2, norm: str = "layer"):
        super().__init__()
        hidden = channels * expansion
        self.conv1 = ConvNorm(channels, hidden, 1, norm)
        self.conv2 = ConvNorm(hidden, hidden, 3, norm)
        self.conv3 = ConvNorm(hidden, channels, 1, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        y = F.relu(self.conv2(y))
        return F.relu(self.conv3(y) + x)


def _stage(channels: int, depth: int, norm: str) -> nn.Sequential:
    return nn.Sequential(*(Bottleneck(channels, norm=norm) for _ in range(depth)))


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
        num_classes: int = 19,
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

    def forward(self, taps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(taps)
        weights = torch.softmax(self.mixing_weights, dim=0)
        z: torch.Tensor | int = 0
        for i, tap in enumerate(taps):
            if self.tap_downsample and i > 0:
                tap = F.interpolate(tap, size=(tap.shape[-2] >> i, tap.shape[-1] >> i), mode="nearest")
            if isinstance(z, torch.Tensor) and z.shape[-2:] != tap.shape[-2:]:
                raise ValueError(
                    f"tap {i} is {tuple(tap.shape[-2:])} but the running features are {tuple(z.shape[-2:])}: "
                    "each tap must have half the size of the previous one (inputs a multiple of the backbone stride)"
                )
            z = self.bottleneck_layers[i](z + weights[i] * tap)
            z = self.downsample_layers[i](z)
        pooled = self.last_stage(z).mean(dim=(-2, -1))
        return self.fc(pooled), pooled
