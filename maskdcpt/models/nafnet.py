"""NAFNet (the release's ``NAFNetBaseline`` layout), dense and masked in one class.

Layout (width C, L = len(enc_blocks) levels, P = 2**L):
``intro`` 3×3 conv 3→C; ``encoders[l]`` NAF blocks at C·2**l; ``downs[l]`` 2×2 stride-2 conv C·2**l → C·2**(l+1);
``middle_blks`` at C·2**L (H/P); ``ups[i]`` 1×1 conv (no bias) doubling channels + PixelShuffle(2), added to the
matching encoder output; ``decoder{i}`` NAF blocks (decoder0 is the deepest, decoder{L-1} works at full resolution);
``ending`` 3×3 conv C→3 plus the global input residual. Parameter names and shapes equal the release's, so its
checkpoints load strictly.

Masked form (``masked=True``), SparK-style sparse semantics: every tensor of the body is exactly 0 at hidden positions.
The input and the stem output are masked; every LayerNorm is sparse (``LayerNorm2d`` with the keep map); the 1×1
expansion feeding the depth-wise 3×3 conv is masked so that a visible position sees its hidden neighbours as zero
padding; SCA pools over visible positions only; both residual branches (spatial and FFN, biases included) and the
down-sampling convs are re-masked. The release re-masks only the spatial branch, so its FFN biases reach hidden cells;
that leak is closed here. Consequence: a visible region's features equal those of the dense model run on that region
alone (tested), and nothing of a hidden patch reaches a visible position.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Backbone, BlockStage
from .masking import LayerNorm2d, PackedLevel, VisiblePositions, apply_mask
from .registry import ModelCfg, register_model

__all__ = [
    "NAFNet", "NAFBlock", "NAFStage", "checkpoint_filter_fn", "default_cfgs", "nafnet_5d", "nafnet_w32", "nafnet_tiny",
]


class SimpleGate(nn.Module):
    """(B, 2C, H, W) → (B, C, H, W): the product of the two channel halves."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class SimplifiedChannelAttention(nn.Sequential):
    """x · conv1×1(mean over space of x), the mean taken over visible positions when a mask is given.

    A Sequential of (pool, conv) only so that the parameters are named ``sca.1.weight``/``sca.1.bias`` as in the
    release; ``forward`` pools itself because the pool must ignore hidden positions.
    """

    def __init__(self, channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, kernel_size=1, bias=True))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if mask is None:
            pooled = x.mean(dim=(2, 3), keepdim=True)
        else:
            m = mask.to(x.dtype)
            # clamp: a sample without any visible cell gets a zero pool instead of NaN
            pooled = (x * m).sum(dim=(2, 3), keepdim=True) / m.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
        return x * self[1](pooled)


class NAFBlock(nn.Module):
    """NAFNet block on (B, C, H, W): spatial branch (LN → 1×1 → dw3×3 → SimpleGate → SCA → 1×1) scaled by ``beta``,
    then FFN branch (LN → 1×1 → SimpleGate → 1×1) scaled by ``gamma``; ``beta``/``gamma`` start at zero so the block
    starts as the identity. ``mask`` (B, 1, H, W) in {0, 1} switches on the sparse semantics (see the module doc)."""

    def __init__(self, channels: int, dw_expand: int = 2, ffn_expand: int = 2):
        super().__init__()
        dw_channels = channels * dw_expand
        ffn_channels = channels * ffn_expand
        self.conv1 = nn.Conv2d(channels, dw_channels, kernel_size=1, bias=True)
        self.conv2 = nn.Conv2d(dw_channels, dw_channels, kernel_size=3, padding=1, groups=dw_channels, bias=True)
        self.conv3 = nn.Conv2d(dw_channels // 2, channels, kernel_size=1, bias=True)
        self.sca = SimplifiedChannelAttention(dw_channels // 2)
        self.sg = SimpleGate()
        self.conv4 = nn.Conv2d(channels, ffn_channels, kernel_size=1, bias=True)
        self.conv5 = nn.Conv2d(ffn_channels // 2, channels, kernel_size=1, bias=True)
        self.norm1 = LayerNorm2d(channels, eps=1e-5)
        self.norm2 = LayerNorm2d(channels, eps=1e-5)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, inp: torch.Tensor, mask: torch.Tensor | PackedLevel | None = None) -> torch.Tensor:
        if isinstance(mask, PackedLevel):
            return self._forward_packed(inp, mask)
        x = apply_mask(self.conv1(self.norm1(inp, mask)), mask)
        x = self.sg(self.conv2(x))
        x = self.sca(x, mask)
        y = inp + apply_mask(self.conv3(x), mask) * self.beta
        x = self.sg(self.conv4(self.norm2(y, mask)))
        return y + apply_mask(self.conv5(x), mask) * self.gamma

    def _forward_packed(self, rows: torch.Tensor, level: PackedLevel) -> torch.Tensor:
        """The masked forward on the visible positions alone, rows (N, C) (see ``PackedLevel``): every 1×1 conv, norm
        and gate acts per position, so only the depth-wise 3×3 conv needs the map (hidden neighbours as zeros)."""
        c = rows.shape[1]
        x = _pointwise(self.conv1, F.layer_norm(rows, (c,), self.norm1.weight, self.norm1.bias, self.norm1.eps))
        x = self.sg(level.pack(self.conv2(level.unpack(x))))
        x = x * _pointwise(self.sca[1], level.mean(x)).index_select(0, level.sample)
        y = rows + _pointwise(self.conv3, x) * self.beta.view(1, c)
        x = self.sg(_pointwise(self.conv4, F.layer_norm(y, (c,), self.norm2.weight, self.norm2.bias, self.norm2.eps)))
        return y + _pointwise(self.conv5, x) * self.gamma.view(1, c)


def _pointwise(conv: nn.Conv2d, rows: torch.Tensor) -> torch.Tensor:
    """A 1×1 convolution applied to rows (N, C_in) → (N, C_out)."""
    return F.linear(rows, conv.weight.view(conv.out_channels, conv.in_channels), conv.bias)


class NAFStage(BlockStage):
    """A run of ``depth`` NAF blocks at one resolution, held in ``.blocks`` (the release's ``NAFBlocks``)."""

    def __init__(self, channels: int, depth: int):
        super().__init__(NAFBlock(channels) for _ in range(depth))


class NAFNet(Backbone):
    """NAFNet U-Net restorer, (B, 3, H, W) in [0, 1] → (B, 3, H, W).

    ``stride`` = 2**len(enc_blocks) is the mask patch size and the multiple inputs of ``forward_features`` must have.
    ``tap_dims`` are the channels of the decoder-stage outputs fed to the degradation classifier, high resolution
    first (decoder{L-1} … decoder0). With ``masked=True`` the model follows the sparse semantics of the module doc when
    given a keep map; given ``keep=None`` a masked model runs densely (all positions visible) and computes exactly
    what the dense model computes.
    """

    head_name = "ending"
    # masked forward with a keep map: run the NAF blocks on the visible positions alone (packed rows, about half the
    # work of the zero-filled maps at a 50 % mask, same function); False keeps the zero-filled maps throughout
    pack_visible = True

    def __init__(
        self,
        img_channels: int = 3,
        width: int = 64,
        middle_blocks: int = 1,
        enc_blocks: Sequence[int] = (1, 1, 1, 28),
        dec_blocks: Sequence[int] = (1, 1, 1, 1),
        masked: bool = False,
    ):
        super().__init__()
        if len(enc_blocks) != len(dec_blocks) or len(enc_blocks) == 0:
            raise ValueError(
                f"enc_blocks {list(enc_blocks)} and dec_blocks {list(dec_blocks)} must be non-empty and of equal length"
            )
        self.masked = masked
        self.in_chans = img_channels
        self.levels = len(enc_blocks)
        self.stride = 2**self.levels

        # Attribute order follows the release so state_dict keys come out in the same order.
        self.intro = nn.Conv2d(img_channels, width, kernel_size=3, padding=1, bias=True)
        self.ending = nn.Conv2d(width, img_channels, kernel_size=3, padding=1, bias=True)
        encoders, downs = [], []
        channels = width
        for depth in enc_blocks:
            encoders.append(NAFStage(channels, depth))
            downs.append(nn.Conv2d(channels, 2 * channels, kernel_size=2, stride=2))
            channels *= 2
        self.encoders = nn.ModuleList(encoders)
        self.middle_blks = NAFStage(channels, middle_blocks)
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList(downs)
        decoder_dims = []
        for i, depth in enumerate(dec_blocks):
            self.ups.append(nn.Sequential(nn.Conv2d(channels, 2 * channels, kernel_size=1, bias=False), nn.PixelShuffle(2)))
            channels //= 2
            setattr(self, f"decoder{i}", NAFStage(channels, depth))
            decoder_dims.append(channels)
        self.tap_dims = decoder_dims[::-1]

    def decoders(self) -> list[NAFStage]:
        """decoder0 … decoder{L-1}, deepest first (forward order)."""
        return [getattr(self, f"decoder{i}") for i in range(self.levels)]

    def forward_features(
        self, x: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, 3, H, W), H and W multiples of ``stride``; keep (B, 1, H/stride, W/stride) in {0, 1} or None.

        Returns the last decoder's features (B, width, H, W) and the taps (decoder{L-1} … decoder0 outputs,
        (B, tap_dims[i], H/2**i, W/2**i)).
        """
        # masks[l]: the keep map at H/2**l, l = 0 … L (L = the patch grid)
        keep = self.check_inputs(x, keep)
        masks = self.keep_pyramid(keep, x, self.levels)
        # under torch.compile the zero-filled maps keep every shape static (packed shapes depend on the keep map)
        visible = (VisiblePositions(keep) if keep is not None and self.pack_visible
                   and not torch.compiler.is_compiling() else None)

        def stage(blocks: NAFStage, x: torch.Tensor, level: int) -> torch.Tensor:
            if visible is None:
                return blocks(x, masks[level])
            packed = visible.at(2 ** (self.levels - level))
            return packed.unpack(blocks(packed.pack(x), packed))

        x = apply_mask(self.intro(apply_mask(x, masks[0])), masks[0])
        skips = []
        for level, (encoder, down) in enumerate(zip(self.encoders, self.downs)):
            x = stage(encoder, x, level)
            skips.append(x)
            x = apply_mask(down(x), masks[level + 1])
        x = stage(self.middle_blks, x, self.levels)
        taps = []
        for i, (up, decoder) in enumerate(zip(self.ups, self.decoders())):
            level = self.levels - 1 - i
            # the 1×1 up conv has no bias and the shuffle keeps whole patches: hidden positions stay exactly 0
            x = stage(decoder, up(x) + skips[level], level)
            taps.append(x)
        return x, taps[::-1]

    def forward_head(self, feat: torch.Tensor, inp: torch.Tensor | None = None) -> torch.Tensor:
        """The output projection ``ending`` (B, width, H, W) → (B, 3, H, W), plus the global residual ``inp``."""
        out = self.ending(feat)
        return out if inp is None else out + inp


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Map foreign NAFNet layouts onto ours; keys already in our layout pass unchanged.

    The MaskDCPT release (dense ``NAFNetBaseline`` and masked ``MaskNAFNetBaseline``) uses our names. The DCPT
    release holds its stages as plain Sequentials (``encoders.{i}.{j}``, ``middle_blks.{j}``, ``decoder{i}.{j}``) and
    the original NAFNet keeps its decoder stages in a list (``decoders.{i}.{j}``, decoders.0 the deepest): both are
    renamed to ``….blocks.{j}``. Their custom LayerNorm stores the same ``weight``/``bias`` (its eps, 1e-6 vs our
    1e-5, is not part of a state_dict).
    """
    del model  # the layout is recognised from the keys alone
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        head = parts[0]
        if head == "decoders" and len(parts) > 2:
            parts = [f"decoder{parts[1]}", *parts[2:]]
            head = parts[0]
        if head in ("encoders",) and len(parts) > 2 and parts[2] != "blocks":
            parts = [head, parts[1], "blocks", *parts[2:]]
        elif (head == "middle_blks" or (head.startswith("decoder") and head[7:].isdigit())) and parts[1] != "blocks":
            parts = [head, "blocks", *parts[1:]]
        out[".".join(parts)] = value
    return out


# Release checkpoints of NAFNet load from 'params_ema' (every MaskDCPT test config).
default_cfgs = {
    "nafnet_5d": ModelCfg(stem="intro", stride=16, tap_dims=(64, 128, 256, 512)),
    "nafnet_w32": ModelCfg(stem="intro", stride=16, tap_dims=(32, 64, 128, 256)),
    "nafnet_tiny": ModelCfg(stem="intro", stride=16, tap_dims=(8, 16, 32, 64)),
}


@register_model
def nafnet_5d(masked: bool = False, **overrides) -> NAFNet:
    """The MaskDCPT 5D/12D configuration: width 64, enc [1, 1, 1, 28], middle 1, dec [1, 1, 1, 1] (67,888,835 params)."""
    cfg = dict(width=64, middle_blocks=1, enc_blocks=(1, 1, 1, 28), dec_blocks=(1, 1, 1, 1))
    return NAFNet(masked=masked, **{**cfg, **overrides})


@register_model
def nafnet_w32(masked: bool = False, **overrides) -> NAFNet:
    """NAFNet-width32 (the original paper's denoising model): enc [2, 2, 4, 8], middle 12, dec [2, 2, 2, 2]."""
    cfg = dict(width=32, middle_blocks=12, enc_blocks=(2, 2, 4, 8), dec_blocks=(2, 2, 2, 2))
    return NAFNet(masked=masked, **{**cfg, **overrides})


@register_model
def nafnet_tiny(masked: bool = False, **overrides) -> NAFNet:
    """A small NAFNet for tests and CPU runs: width 8, one block per stage, the same 4 levels (stride 16)."""
    cfg = dict(width=8, middle_blocks=1, enc_blocks=(1, 1, 1, 1), dec_blocks=(1, 1, 1, 1))
    return NAFNet(masked=masked, **{**cfg, **overrides})
