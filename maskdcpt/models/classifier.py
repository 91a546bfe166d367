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

from .masking import PackedLevel, VisiblePositions

__all__ = ["DegradationClassifier", "Bottleneck", "ConvNorm", "MaskedBatchNorm2d", "SyncMaskedBatchNorm2d"]


NORMS = ("layer", "batch")


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics come from the visible positions only (SparK's sparse BatchNorm).

    ``forward(x, mask)`` with mask (B, 1, H, W) in {0, 1}: mean and variance over the positions where mask is 1
    (the running statistics follow them); without a mask, or in eval mode, it is ``nn.BatchNorm2d``. Hidden
    positions are normalised too but carry nothing: callers zero them again. The statistics are taken in float32
    whatever the input's dtype (under bf16 autocast a sum over 10⁵ positions in bf16 loses the variance), and without
    reading anything back to the host (a batch with fewer than 2 visible positions leaves the running statistics as
    they were instead of branching on the count).
    """

    # the process group whose ranks share statistics (SyncMaskedBatchNorm2d); None: this process's batch alone
    process_group: object | None = None
    synchronised = False

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if not self.training or (mask is None and not self.synchronised):
            return super().forward(x)
        count, mean, m2 = _local_moments(x, mask)
        if self.synchronised:
            count, mean, m2 = _global_moments(count, mean, m2, self.process_group)
        var = m2 / count.clamp_min(1.0)
        if self.track_running_stats and self.running_mean is not None:
            self._update_running_stats(count, mean, m2)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale, shift = scale * self.weight, shift * self.weight + self.bias
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (_wide(x) * scale.view(shape) + shift.view(shape)).to(x.dtype)

    def forward_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (N, C): the visible positions alone (packed, see ``PackedLevel``): the statistics of the rows are the
        masked statistics. Returns (N, C) in the rows' dtype."""
        if self.training and (self.synchronised or rows.shape[0] < 2):
            count, mean, m2 = _local_moments(rows, None)
            if self.synchronised:
                count, mean, m2 = _global_moments(count, mean, m2, self.process_group)
            if self.track_running_stats and self.running_mean is not None:
                self._update_running_stats(count, mean, m2)
            scale = torch.rsqrt(m2 / count.clamp_min(1.0) + self.eps)
            shift = -mean * scale
            if self.affine:
                scale, shift = scale * self.weight, shift * self.weight + self.bias
            return (_wide(rows) * scale + shift).to(rows.dtype)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as nn.BatchNorm2d (reads the count: rare, not the default)
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        running = (self.running_mean, self.running_var) if not self.training or self.track_running_stats else (None, None)
        out = F.batch_norm(_wide(rows), *running, self.weight, self.bias, use_batch_stats, momentum, self.eps)
        return out.to(rows.dtype)

    @torch.no_grad()
    def _update_running_stats(self, count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative average, as nn.BatchNorm2d
            momentum = 1.0 / self.num_batches_tracked.float()
        else:
            momentum = torch.full_like(count, self.momentum)
        momentum = torch.where(count >= 2, momentum, torch.zeros_like(momentum))
        unbiased = m2 / (count - 1).clamp_min(1.0)
        self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), momentum)


class SyncMaskedBatchNorm2d(MaskedBatchNorm2d):
    """:class:`MaskedBatchNorm2d` whose statistics are those of the visible positions of every rank's batch together:
    N processes normalise exactly as one process does with the global batch (``nn.SyncBatchNorm`` for the masked
    statistic; it also runs on CPU with gloo). Each rank contributes (count, mean, sum of squared deviations) and the
    ranks combine them with Chan's parallel formula; gradients flow back to every rank's input. In a training forward
    without a mask every position counts, as in ``nn.SyncBatchNorm``."""

    synchronised = True

    @classmethod
    def from_module(cls, bn: MaskedBatchNorm2d, process_group: object | None = None) -> "SyncMaskedBatchNorm2d":
        """The same parameters and buffers (shared, not copied) in a synchronised module."""
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                  device=bn.running_mean.device if bn.running_mean is not None else None)
        if bn.affine:
            new.weight, new.bias = bn.weight, bn.bias
        if bn.track_running_stats:
            new.running_mean, new.running_var = bn.running_mean, bn.running_var
            new.num_batches_tracked = bn.num_batches_tracked
        new.train(bn.training)
        new.process_group = process_group
        return new


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in float32 at least (bf16/fp16 widened; float64 kept): the precision statistics are taken in."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _local_moments(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count (), mean (C,), sum of squared deviations (C,)) in float32 (or float64) of x (B, C, H, W) or rows (N, C)
    over the positions where mask (B, 1, H, W) is 1, or over every position when mask is None."""
    xf = _wide(x)
    dims = (0,) + tuple(range(2, x.dim()))
    if mask is None:
        var, mean = torch.var_mean(xf, dim=dims, correction=0)
        count = xf.new_tensor(float(xf.numel() // xf.shape[1]))
        return count, mean, var * count
    m = mask.to(xf.dtype)
    count = m.sum()
    mean = (xf * m).sum(dim=dims) / count.clamp_min(1.0)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    dev = (xf - mean.view(shape)) * m
    return count, mean, (dev * dev).sum(dim=dims)


class _GatherStatistics(torch.autograd.Function):
    """(D,) on every rank → (world, D), differentiable: a rank's input receives the sum over ranks of the gradient
    of its row (an all-reduce of the whole, small, gradient works on every backend, gloo included)."""

    @staticmethod
    def forward(ctx, stats: torch.Tensor, group: object | None) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        ctx.group = group
        parts = [torch.empty_like(stats) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, stats.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None


def _global_moments(count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor,
                    group: object | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Combine every rank's (count, mean, m2) into those of the union (Chan et al.'s pairwise update, summed)."""
    c = mean.shape[0]
    rows = _GatherStatistics.apply(torch.cat([count.view(1), mean, m2]), group)
    counts, means, m2s = rows[:, :1], rows[:, 1 : 1 + c], rows[:, 1 + c :]
    total = counts.sum()
    mean_all = (counts * means).sum(dim=0) / total.clamp_min(1.0)
    m2_all = (m2s + counts * (means - mean_all) ** 2).sum(dim=0)
    return total, mean_all, m2_all


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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | PackedLevel | None = None) -> torch.Tensor:  # type: ignore[override]
        if isinstance(mask, PackedLevel):
            return self._forward_rows(x, mask)
        y = super().forward(x)
        return self.norm(y, mask) if isinstance(self.norm, MaskedBatchNorm2d) else self.norm(y)

    def _forward_rows(self, rows: torch.Tensor, level: PackedLevel) -> torch.Tensor:
        """rows (N, C_in) of the visible positions → (N, C_out): a 1×1 conv acts per row; a k×k conv runs on the map
        (hidden neighbours as zero padding) and keeps its visible positions; the norm's statistics are the rows'."""
        if self.kernel_size == (1, 1):
            y = F.linear(rows, self.weight.view(self.out_channels, self.in_channels))
        else:  # dense k×k convs run faster (backward above all) on contiguous maps than channels-last on CPU
            y = level.pack(super().forward(level.unpack(rows).contiguous()))
        if isinstance(self.norm, MaskedBatchNorm2d):
            return self.norm.forward_rows(y)
        return F.layer_norm(y, (y.shape[1],), self.norm.weight, self.norm.bias, self.norm.eps)


def _masked(x: torch.Tensor, mask: torch.Tensor | PackedLevel | None) -> torch.Tensor:
    # packed rows hold visible positions only: nothing to zero
    return x * mask if isinstance(mask, torch.Tensor) else x


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

    # with a keep map, compute on the visible positions alone (packed rows; the same function as the zero-filled maps)
    pack_visible = True

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
        if keep is not None and self.pack_visible and not torch.compiler.is_compiling():
            return self._forward_packed(taps, keep, weights)
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

    def _forward_packed(self, taps: Sequence[torch.Tensor], keep: torch.Tensor,
                        weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sparse-aware forward on the visible positions alone (packed rows, ``PackedLevel``): the same function
        as the zero-filled maps of ``forward``, at about half the work of everything but the 3×3 convs at a 50 % mask.
        Levels coarser than the keep grid (a cell visible when any of its four is) get their own positions."""
        visible = VisiblePositions(keep)
        mask = keep.to(taps[0].dtype)
        z: torch.Tensor | None = None

        def positions(size: torch.Size) -> PackedLevel:
            scale = size[-2] // keep.shape[-2]
            if scale >= 1 and tuple(size[-2:]) == (keep.shape[-2] * scale, keep.shape[-1] * scale):
                return visible.at(scale)
            return VisiblePositions(mask).at(1)

        for i, tap in enumerate(taps):
            if self.tap_downsample and i > 0:
                tap = F.interpolate(tap, size=(tap.shape[-2] >> i, tap.shape[-1] >> i), mode="nearest")
            if z is not None and z.shape[-2:] != tap.shape[-2:]:
                raise ValueError(
                    f"tap {i} is {tuple(tap.shape[-2:])} but the running features are {tuple(z.shape[-2:])}: "
                    "each tap must have half the size of the previous one (inputs a multiple of the backbone stride)"
                )
            mask = F.interpolate(keep.to(tap.dtype), size=tap.shape[-2:], mode="nearest")
            level = positions(tap.shape)
            rows = weights[i] * level.pack(tap)
            if z is not None:
                rows = level.pack(z) + rows
            # the 1×1 conv has no bias and ReLU(0) = 0: hidden positions stay 0 through the max-pool
            z = self.downsample_layers[i](level.unpack(self.bottleneck_layers[i](rows, level)))
            mask = F.max_pool2d(mask, 2, 2)  # a coarser cell is visible when any of its four is
        level = positions(z.shape)
        rows = self.last_stage(level.pack(z), level)
        pooled = level.mean(rows)
        return self.fc(pooled), pooled
