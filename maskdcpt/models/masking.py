"""Patch masking and the sparse-aware building blocks shared by every masked backbone.

Convention: a *keep map* is a float tensor (B, 1, h, w) on the patch grid, 1 = visible,
0 = hidden. ``mask_like(keep, x)`` brings it to a feature's resolution by nearest
up/down-sampling; since the patch size equals the network's total stride, one patch is
one bottleneck pixel and every resolution of the U-Net sees whole patches.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def random_keep_map(
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A fresh keep map per sample: exactly ``round(h·w·(1 − mask_ratio))`` visible cells.

    Returns float (B, 1, h, w) with values in {0, 1}. Noise → argsort → keep the first cells,
    as in MAE's ``random_masking``.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
    h, w = grid
    n = h * w
    n_keep = max(1, int(round(n * (1.0 - mask_ratio))))
    noise = torch.rand(batch, n, generator=generator, device=generator.device if generator is not None else device)
    order = noise.argsort(dim=1)
    keep = torch.zeros(batch, n, device=noise.device)
    keep.scatter_(1, order[:, :n_keep], 1.0)
    keep = keep.view(batch, 1, h, w)
    return keep if device is None else keep.to(device)


def mask_like(keep: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """The keep map at the spatial size of ``x`` (B, C, H, W), in ``x``'s dtype; None passes through."""
    if keep is None:
        return None
    size = x.shape[-2:]
    if keep.shape[-2:] != size:
        keep = F.interpolate(keep, size=size, mode="nearest")
    return keep.to(dtype=x.dtype)


def apply_mask(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Zero the hidden positions of ``x`` (B, C, H, W); identity when ``keep`` is None (dense)."""
    m = mask_like(keep, x)
    return x if m is None else x * m


class LayerNorm2d(nn.LayerNorm):
    """``nn.LayerNorm`` over the channels of a (B, C, H, W) map, sparse-aware when given a keep map.

    LayerNorm statistics are per position, so normalising only the visible positions and
    zeroing the hidden ones (SparK's sparse norm) equals normalising all and multiplying by
    the mask: no statistic ever mixes positions. Being a subclass of ``nn.LayerNorm`` keeps
    the parameter names ``weight``/``bias`` of the release checkpoints.
    """

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return apply_mask(y.permute(0, 3, 1, 2), keep)


class PackedLevel:
    """The visible positions of one resolution, where one keep cell is ``scale × scale`` positions.

    ``index`` (N,) int64: flat indices into the (B·H·W) positions of a (B, C, H, W) map, sample-major; ``sample`` (N,)
    the sample of each; ``counts`` (B, 1) float, visible positions per sample. ``pack`` takes a map's visible positions
    as rows (N, C) and ``unpack`` puts rows back into a map that is 0 at hidden positions: layers that act on each
    position alone (1×1 convolutions, LayerNorm, gates, residual sums) then run on visible positions only, half the
    work at a 50 % mask, and compute what the zero-filled map computes there (hidden positions never enter a row).
    """

    def __init__(self, index: torch.Tensor, sample: torch.Tensor, counts: torch.Tensor, batch: int, size: tuple[int, int]):
        self.index, self.sample, self.counts = index, sample, counts
        self.batch, self.size = batch, size

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → rows (N, C) of the visible positions (a view of x when it is channels-last)."""
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).index_select(0, self.index)

    def unpack(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (N, C) → (B, C, H, W), channels-last in memory, exactly 0 at hidden positions."""
        h, w = self.size
        full = rows.new_zeros(self.batch * h * w, rows.shape[1]).index_copy(0, self.index, rows)
        return full.view(self.batch, h, w, rows.shape[1]).permute(0, 3, 1, 2)

    def mean(self, rows: torch.Tensor) -> torch.Tensor:
        """The per-sample mean of rows (N, C) over visible positions: (B, C); 0 for a sample with none visible."""
        sums = rows.new_zeros(self.batch, rows.shape[1]).index_add(0, self.sample, rows)
        return sums / self.counts.to(sums.dtype).clamp_min(1.0)


class VisiblePositions:
    """The visible cells of a keep map (B, 1, h, w), found once per forward, and their positions at every resolution
    whose size is a multiple of the grid (``at(scale)``, cached). Finding them reads the number of visible cells back
    to the host: on CUDA this is one synchronisation per forward, which packed shapes need."""

    def __init__(self, keep: torch.Tensor):
        self.batch, _, self.h, self.w = keep.shape
        self.cells = (keep.reshape(-1) > 0.5).nonzero().squeeze(1)
        self.cell_counts = (keep > 0.5).flatten(1).sum(1, keepdim=True)
        self._levels: dict[int, PackedLevel] = {}

    def at(self, scale: int) -> PackedLevel:
        if scale not in self._levels:
            h, w = self.h * scale, self.w * scale
            cells = self.cells
            sample = torch.div(cells, self.h * self.w, rounding_mode="floor")
            row = torch.div(cells, self.w, rounding_mode="floor") % self.h
            col = cells % self.w
            offsets = torch.arange(scale, device=cells.device)
            corner = sample * (h * w) + row * scale * w + col * scale
            index = (corner[:, None, None] + offsets[None, :, None] * w + offsets[None, None, :]).reshape(-1)
            self._levels[scale] = PackedLevel(index, sample.repeat_interleave(scale * scale), self.cell_counts * scale * scale,
                                              self.batch, (h, w))
        return self._levels[scale]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (B, C, H, W) on the right and bottom to a multiple; returns the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)
