"""Restormer (Zamir et al., CVPR 2022) as laid out by the MaskDCPT release, dense or sparse-aware masked.

One class serves both forms (``masked`` flag); the masked form has exactly the dense state_dict, so
a masked pre-trained backbone loads strictly into the dense fine-tuning model.

Layout facts (MaskDCPT release ``restormer_arch.py``): a 4-level U-Net of transformer blocks
(MDTA channel attention + gated-dconv FFN); every stage wraps its blocks in ``.blocks``; every norm
is ``nn.LayerNorm`` over channels (affine with bias, eps 1e-5); down/up-sampling are a bias-free 3×3
conv followed by PixelUnshuffle/PixelShuffle; output ``output(x) + inp``. Total stride 8.

Masking (MaskDCPT §3, with the leaks closed): hidden positions are exactly 0 in every feature map
at every step, and nothing computed from a hidden position reaches a visible one:
  * input and stem output × mask;
  * every LayerNorm is sparse (``LayerNorm2d`` with a keep map);
  * q, k, v × mask after the depth-wise 3×3 conv, so hidden positions add nothing to the
    C×C Gram matrix nor to the L2 norms of q and k;
  * the outputs of every 1×1 conv that carries a bias, of attention and of the FFN × mask;
  * down/up-sampling conv outputs × mask (before the pixel (un)shuffle, at the conv's resolution).
The mask patch equals the total stride (8), so every resolution sees whole patches.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import trunc_normal_

from .base import Backbone, BlockStage
from .masking import LayerNorm2d, apply_mask
from .registry import ModelCfg, register_model


# ---------------------------------------------------------------------------------------------
# Building blocks (shared with PromptIR)


class ChannelAttention(nn.Module):
    """MDTA: multi-head transposed attention over channels, with L2-normalised q, k and a learned
    per-head temperature. (B, C, H, W) → (B, C, H, W); its cost is linear in H·W."""

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = x.shape[-2]
        qkv = self.qkv(x)
        if self.qkv.bias is not None:  # a bias would make hidden positions non-zero before the 3×3 conv
            qkv = apply_mask(qkv, mask)
        # Re-mask after the 3×3 conv: it spreads visible values into hidden border positions, which
        # would otherwise enter the Gram matrix and the norms.
        qkv = apply_mask(self.qkv_dwconv(qkv), mask)
        q, k, v = rearrange(qkv, "b (three head c) h w -> three b head c (h w)", three=3, head=self.num_heads)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        out = attn.softmax(dim=-1) @ v
        out = rearrange(out, "b head c (h w) -> b (head c) h w", h=h)
        return apply_mask(self.project_out(out), mask)


class GatedDconvFeedForward(nn.Module):
    """GDFN: 1×1 expand to 2 × hidden, depth-wise 3×3, GELU(x1) · x2, 1×1 project. (B, C, H, W) → same."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool) -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.project_in(x)
        if self.project_in.bias is not None:  # keep hidden positions 0 before the 3×3 conv
            x = apply_mask(x, mask)
        # No mask after dwconv: everything after it is per-position until the final mask.
        x1, x2 = self.dwconv(x).chunk(2, dim=1)
        return apply_mask(self.project_out(F.gelu(x1) * x2), mask)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + MDTA(LN(x)), then x + GDFN(LN(x)). Hidden positions stay exactly 0."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.attn = ChannelAttention(dim, num_heads, bias)
        self.norm2 = LayerNorm2d(dim)
        self.ffn = GatedDconvFeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x, mask), mask)
        return x + self.ffn(self.norm2(x, mask), mask)


class TransformerStage(BlockStage):
    """A run of ``TransformerBlock``s at one resolution, held in ``.blocks`` as in the release."""

    def __init__(self, dim: int, num_heads: int, num_blocks: int, ffn_expansion_factor: float, bias: bool) -> None:
        super().__init__(TransformerBlock(dim, num_heads, ffn_expansion_factor, bias) for _ in range(num_blocks))


class PatchEmbed(nn.Module):
    """3×3 conv stem (no bias): (B, in_c, H, W) → (B, dim, H, W)."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return apply_mask(self.proj(x), mask)


class Downsample(nn.Module):
    """3×3 conv C → C/2, then PixelUnshuffle(2): (B, C, H, W) → (B, 2C, H/2, W/2).
    ``mask`` is at the input resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels // 2, kernel_size=3, padding=1, bias=False)
        self.downsample = nn.PixelUnshuffle(2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.downsample(apply_mask(self.conv(x), mask))


class Upsample(nn.Module):
    """3×3 conv C → 2C, then PixelShuffle(2): (B, C, H, W) → (B, C/2, 2H, 2W).
    ``mask`` is at the input resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * 2, kernel_size=3, padding=1, bias=False)
        self.upsample = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.upsample(apply_mask(self.conv(x), mask))


# ---------------------------------------------------------------------------------------------
# Shared plumbing of the Restormer-family U-Nets


def make_config(cls: type, base: Any, overrides: Mapping[str, Any]) -> Any:
    """``base`` (a dataclass instance) with ``overrides`` applied; unknown keys raise ``ValueError``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; valid: {sorted(names)}")
    return dataclasses.replace(base, **overrides)


class RestorationUNetBase(Backbone):
    """The encoder half and ``forward_head`` of the Restormer family; subclasses define
    ``forward_features`` (the decoder half) and an ``output`` conv."""

    head_name = "output"

    stride: int = 8
    output: nn.Conv2d

    def encode(self, x: torch.Tensor, keep: torch.Tensor | None):
        """The encoder half both families share: the per-level masks (m1..m4 at H … H/8, None when
        dense) and the encoder features enc1..enc3 and the latent."""
        m1, m2, m3, m4 = self.keep_pyramid(self.check_inputs(x, keep), x, 3)
        enc1 = self.encoder_level1(self.patch_embed(apply_mask(x, m1), m1), m1)
        enc2 = self.encoder_level2(self.down1_2(enc1, m1), m2)
        enc3 = self.encoder_level3(self.down2_3(enc2, m2), m3)
        latent = self.latent(self.down3_4(enc3, m3), m4)
        return (m1, m2, m3, m4), (enc1, enc2, enc3, latent)

    def forward_head(self, feat: torch.Tensor, inp: torch.Tensor | None = None) -> torch.Tensor:
        """``output`` conv on the final features (B, 2·dim, H, W) → (B, out, H, W), plus ``inp`` if given."""
        out = self.output(feat)
        return out if inp is None else out + inp


def init_conv_weights(module: nn.Module) -> None:
    """The release's Restormer init: truncated normal (std 0.02) conv weights, zero conv biases."""
    if isinstance(module, nn.Conv2d):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# Restormer


@dataclass
class RestormerConfig:
    """Restormer hyper-parameters; defaults are the MaskDCPT release's 5D config."""

    in_channels: int = 3
    out_channels: int = 3
    dim: int = 48
    num_blocks: tuple[int, int, int, int] = (4, 6, 6, 8)
    num_refinement_blocks: int = 4
    heads: tuple[int, int, int, int] = (1, 2, 4, 8)
    ffn_expansion_factor: float = 2.66
    # The release hard-codes bias-free attention/FFN convs and applies ``bias`` only to
    # ``reduce_chan_level*`` and ``output``; at the release value (False) both readings agree.
    bias: bool = False


class Restormer(RestorationUNetBase):
    """Restormer U-Net, dense (``masked=False``) or sparse-aware masked (``masked=True``).

    ``forward_features(x, keep)``: x (B, 3, H, W), H and W multiples of 8; keep (B, 1, H/8, W/8) in
    {0, 1} or None. A masked model given ``keep=None`` computes exactly what the dense model does.
    Returns the refinement output (B, 2·dim, H, W) and the taps, shallow first:
    decoder_level1 (2·dim @ H), decoder_level2 (2·dim @ H/2), decoder_level3 (4·dim @ H/4).
    """

    def __init__(self, config: RestormerConfig | None = None, masked: bool = False) -> None:
        super().__init__()
        cfg = config or RestormerConfig()
        self.config = cfg
        self.masked = masked
        self.in_chans = cfg.in_channels
        d, nb, hd, ffn, bias = cfg.dim, cfg.num_blocks, cfg.heads, cfg.ffn_expansion_factor, cfg.bias

        def stage(dim: int, heads: int, blocks: int) -> TransformerStage:
            return TransformerStage(dim, heads, blocks, ffn, bias)

        self.patch_embed = PatchEmbed(cfg.in_channels, d)
        self.encoder_level1 = stage(d, hd[0], nb[0])
        self.down1_2 = Downsample(d)
        self.encoder_level2 = stage(2 * d, hd[1], nb[1])
        self.down2_3 = Downsample(2 * d)
        self.encoder_level3 = stage(4 * d, hd[2], nb[2])
        self.down3_4 = Downsample(4 * d)
        self.latent = stage(8 * d, hd[3], nb[3])
        self.up4_3 = Upsample(8 * d)
        self.reduce_chan_level3 = nn.Conv2d(8 * d, 4 * d, kernel_size=1, bias=bias)
        self.decoder_level3 = stage(4 * d, hd[2], nb[2])
        self.up3_2 = Upsample(4 * d)
        self.reduce_chan_level2 = nn.Conv2d(4 * d, 2 * d, kernel_size=1, bias=bias)
        self.decoder_level2 = stage(2 * d, hd[1], nb[1])
        self.up2_1 = Upsample(2 * d)  # no channel reduction at level 1: the decoder runs at 2·dim
        self.decoder_level1 = stage(2 * d, hd[0], nb[0])
        self.refinement = stage(2 * d, hd[0], cfg.num_refinement_blocks)
        self.output = nn.Conv2d(2 * d, cfg.out_channels, kernel_size=3, padding=1, bias=bias)
        self.tap_dims = [2 * d, 2 * d, 4 * d]
        self.apply(init_conv_weights)

    def forward_features(
        self, x: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        (m1, m2, m3, m4), (enc1, enc2, enc3, latent) = self.encode(x, keep)

        dec3 = torch.cat([self.up4_3(latent, m4), enc3], dim=1)
        dec3 = self.decoder_level3(self._reduce(self.reduce_chan_level3, dec3, m3), m3)
        dec2 = torch.cat([self.up3_2(dec3, m3), enc2], dim=1)
        dec2 = self.decoder_level2(self._reduce(self.reduce_chan_level2, dec2, m2), m2)
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2, m2), enc1], dim=1), m1)
        return self.refinement(dec1, m1), [dec1, dec2, dec3]

    @staticmethod
    def _reduce(conv: nn.Conv2d, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        y = conv(x)
        return y if conv.bias is None else apply_mask(y, mask)  # only a bias can make hidden positions non-zero


# ---------------------------------------------------------------------------------------------
# Foreign checkpoint layouts


_STAGE_NAMES = r"(encoder_level\d|latent|decoder_level\d|refinement|noise_level\d)"


def map_dcpt_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the DCPT release / original Restormer-PromptIR layout onto ours.

    DCPT keys: stage blocks as ``encoder_level1.body.0.`` (Restormer) or ``encoder_level1.0.``
    (PromptIR), norms as ``norm1.body.weight``/``.bias``, resamplers as ``down1_2.body.0.weight``.
    Only the WithBias LayerNorm (mean-centred, eps 1e-5 — numerically our ``nn.LayerNorm``) maps;
    a BiasFree LayerNorm (no centring, DCPT Restormer's default) computes something else, so it
    raises ``ValueError`` rather than loading weights that would silently mean something different.
    """
    bias_free = sorted(
        k for k in state_dict
        if re.search(r"norm\d\.body\.weight$", k) and k[: -len("weight")] + "bias" not in state_dict
    )
    if bias_free:
        raise ValueError(
            f"checkpoint uses BiasFree LayerNorm (e.g. {bias_free[0]!r} has no bias): DCPT/original Restormer "
            "BiasFree norms do not centre the features and cannot be mapped onto nn.LayerNorm; "
            "use a MaskDCPT-release (nn.LayerNorm) or WithBias checkpoint"
        )
    out = {}
    for key, value in state_dict.items():
        key = re.sub(rf"^{_STAGE_NAMES}\.body\.(\d+)\.", r"\1.blocks.\2.", key)
        key = re.sub(r"^((?:encoder_level|decoder_level)\d|latent|refinement)\.(\d+)\.", r"\1.blocks.\2.", key)
        key = re.sub(r"\.(norm\d)\.body\.(weight|bias)$", r".\1.\2", key)
        key = re.sub(r"^((?:down|up)\d_\d)\.body\.0\.", r"\1.conv.", key)
        out[key] = value
    return out


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a Restormer/PromptIR state_dict of any known layout onto ``model``'s key names.

    Takes the state_dict itself (``maskdcpt.io.read_state_dict`` has already taken
    off BasicSR's wrapper and DDP's ``module.``) and renames the DCPT layout (see
    ``map_dcpt_layout``; BiasFree norms raise ``ValueError``). Names only: keys that fit nothing
    (e.g. biases of a bias=True checkpoint given to a bias=False model) pass through unchanged, so
    the loader (``maskdcpt.models.checkpoint.load_pretrained``) names them.
    """
    del model  # every known layout maps without looking at the target
    return map_dcpt_layout(state_dict)


# ---------------------------------------------------------------------------------------------
# Registered variants


# Release checkpoints of Restormer load from 'params_ema' (every MaskDCPT test config).
default_cfgs = {
    "restormer": ModelCfg(stem="patch_embed.proj", stride=8, tap_dims=(96, 96, 192)),
    "restormer_tiny": ModelCfg(stem="patch_embed.proj", stride=8, tap_dims=(16, 16, 32)),
}


@register_model
def restormer(masked: bool = False, **overrides: Any) -> Restormer:
    """The MaskDCPT release's Restormer (5D/12D config): 26,126,644 parameters."""
    return Restormer(make_config(RestormerConfig, RestormerConfig(), overrides), masked=masked)


@register_model
def restormer_tiny(masked: bool = False, **overrides: Any) -> Restormer:
    """A 0.21 M-parameter Restormer of the same layout (dim 8, one block per level), for tests and smoke runs."""
    base = RestormerConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2))
    return Restormer(make_config(RestormerConfig, base, overrides), masked=masked)
