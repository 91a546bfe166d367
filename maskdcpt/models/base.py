"""The backbone contract, written once: what every restoration backbone is to the rest of the code.

A backbone restores an image and exposes its trunk for the classifier (timm's split)::

    feat, taps = model.forward_features(x, keep)  # x (B, C, H, W) in [0, 1], H and W multiples of ``stride``
    out = model.forward_head(feat, inp)           # (B, C, H, W); ``inp`` given: plus the global input residual
    out = model(x, keep)                          # any size: reflect-pad, features, head, crop

``keep`` is None (dense) or a keep map (B, 1, H/stride, W/stride) in {0, 1} (1 = visible) for a model built with
``masked=True``; one keep cell is one bottleneck pixel. ``taps`` are the classifier's inputs, high resolution first,
with ``tap_dims`` channels; ``tap_downsample`` says they all come at full resolution (the classifier halves them).

Every stage of blocks is a :class:`BlockStage`, so ``set_grad_checkpointing()`` switches activation checkpointing on
for every backbone the same way (recompute each block in the backward pass: less memory, same gradients).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from .masking import apply_mask, pad_to_multiple

__all__ = ["Backbone", "BlockStage"]


class BlockStage(nn.Module):
    """A run of blocks at one resolution, held in ``.blocks`` as in the release checkpoints.

    Each block is called ``block(x, mask)`` with the keep map at the stage's resolution (None when dense). With
    ``grad_checkpointing`` on, each block's activations are recomputed in the backward pass instead of stored.
    """

    def __init__(self, blocks: Iterable[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                # non-reentrant: works with inputs that need no grad and keeps the RNG state for dropout paths
                x = torch.utils.checkpoint.checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return x


class Backbone(nn.Module):
    """Base class of the restoration backbones (NAFNet, Restormer, PromptIR, SwinIR).

    Subclasses set ``in_chans``, ``stride``, ``tap_dims``, ``masked`` (and ``tap_downsample``, ``global_residual``
    when they differ from the defaults) and define ``forward_features`` and ``forward_head``; the input checks, the
    keep-map pyramid, ``forward`` and gradient checkpointing live here.
    """

    in_chans: int = 3
    stride: int
    tap_dims: list[int]
    tap_downsample: bool = False
    masked: bool = False
    # forward() adds the (masked) input to the head's output; SwinIR's masked form has no residual (as released)
    global_residual: bool = True
    head_name: str  # the output projection forward_head applies (ending / output / conv_last)

    def forward_features(
        self, x: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, C, H, W), H and W multiples of ``stride``; keep (B, 1, H/stride, W/stride) in {0, 1} or None.
        Returns the features the head reads and the classifier taps (high resolution first)."""
        raise NotImplementedError

    def forward_head(self, feat: torch.Tensor, inp: torch.Tensor | None = None) -> torch.Tensor:
        """The output projection of ``feat`` to an image (B, C, H, W), plus ``inp`` when given."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Restore x (B, C, H, W) of any size: reflect-pad to a multiple of ``stride``, run, crop back.

        ``keep`` is on the padded image's grid, (B, 1, ⌈H/stride⌉, ⌈W/stride⌉). The global residual adds the input
        the body saw (masked when ``keep`` is given), so hidden pixels never reach the output.
        """
        padded, (h, w) = pad_to_multiple(x, self.stride)
        feat, _ = self.forward_features(padded, keep)
        residual = apply_mask(padded, keep) if self.global_residual else None
        return self.forward_head(feat, residual)[..., :h, :w]

    def zero_init_head(self) -> None:
        """Zero the output projection: the restorer then starts as the identity (output = input) instead of the
        input plus a random image (about 10 dB PSNR on photos), and learns a residual from there."""
        head = self.get_submodule(self.head_name)
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every stage's blocks in the backward pass (timm's name): memory for compute, same gradients."""
        for module in self.modules():
            if isinstance(module, BlockStage):
                module.grad_checkpointing = enable

    def check_inputs(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor | None:
        """Raise ``ValueError`` unless x is (B, in_chans, H, W) with H, W multiples of ``stride`` and ``keep`` is
        None or (B, 1, H/stride, W/stride) given to a masked model. Returns ``keep`` in x's dtype (the release's
        keep maps are bool)."""
        name = type(self).__name__
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{name}: expected input (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        b, _, h, w = x.shape
        p = self.stride
        if h % p or w % p:
            raise ValueError(
                f"{name}.forward_features: input size {h}x{w} is not a multiple of the stride {p}; "
                "use forward(), which pads"
            )
        if keep is None:
            return None
        if not self.masked:
            raise ValueError(
                f"{name}: the dense {name} takes no keep map (the dense model sees every position); "
                "build it with masked=True"
            )
        grid = (b, 1, h // p, w // p)
        if tuple(keep.shape) != grid:
            raise ValueError(
                f"{name}: keep map shape {tuple(keep.shape)} does not match the input: the keep map must have shape "
                f"{grid} for input {tuple(x.shape)} and patch size {p}"
            )
        return keep.to(dtype=x.dtype)

    @staticmethod
    def keep_pyramid(keep: torch.Tensor | None, x: torch.Tensor, levels: int) -> list[torch.Tensor | None]:
        """The keep map at x's resolution H and at each of ``levels`` halvings (H/2 … H/2**levels): levels + 1 maps,
        all None when dense. Computed once per forward so that blocks only multiply."""
        if keep is None:
            return [None] * (levels + 1)
        h, w = x.shape[-2:]
        # integer scale factors: nearest up-sampling repeats each cell exactly, so every level sees whole patches
        return [F.interpolate(keep, size=(h >> i, w >> i), mode="nearest") for i in range(levels + 1)]
