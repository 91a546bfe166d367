"""PromptIR (Potlapalli et al., NeurIPS 2023) as laid out by the MaskDCPT release, dense or masked.

PromptIR is Restormer (whose blocks it reuses from ``restormer.py``) plus three prompt stages in
the decoder: a ``PromptGenBlock`` turns the features' global mean into softmax weights over
``prompt_len`` learned prompt tensors, whose weighted sum is resized to the feature map and
convolved; the prompt is concatenated to the features, passed through one transformer block
(``noise_level*``) and reduced back by a 1×1 conv (``reduce_noise_level*``).

Layout facts (MaskDCPT release ``promptir_arch.py``, dim d = 48): prompt1/2/3 = (64, 5, 64, 2d),
(128, 5, 32, 4d), (320, 5, 16, 8d) as (prompt_dim, len, size, lin_dim); ``up4_3`` up-samples the
4d-channel reduced latent to 2d channels; the ``noise_level*`` blocks all use heads[2]; the dense
class default is bias=True (biases in every attention/FFN conv and 1×1 reduction; the stem,
resamplers and prompt convs are bias-free); no custom init (PyTorch defaults, prompts ~ U[0, 1)).

Masking: as Restormer's, plus the prompt is generated from the mean over VISIBLE positions only,
resized, × mask, conv3×3, × mask, so it adds nothing at hidden positions and reads nothing there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .masking import apply_mask
from .registry import ModelCfg, register_model
from .restormer import (
    Downsample,
    PatchEmbed,
    RestorationUNetBase,
    RestormerConfig,
    TransformerBlock,
    TransformerStage,
    Upsample,
    checkpoint_filter_fn,
    make_config,
)

__all__ = [
    "PromptGenBlock", "PromptIR", "PromptIRConfig", "checkpoint_filter_fn", "default_cfgs", "promptir", "promptir_tiny",
]


class PromptGenBlock(nn.Module):
    """Input-conditioned prompt: (B, lin_dim, H, W) → (B, prompt_dim, H, W).

    weights = softmax(Linear(mean_{visible} x)) over ``prompt_len`` prompts of (prompt_dim, size, size);
    prompt = bilinear-resize(Σ weights · prompts) to (H, W), then a bias-free 3×3 conv.
    """

    def __init__(self, prompt_dim: int, prompt_len: int, prompt_size: int, lin_dim: int) -> None:
        super().__init__()
        self.prompt_param = nn.Parameter(torch.rand(1, prompt_len, prompt_dim, prompt_size, prompt_size))
        self.linear_layer = nn.Linear(lin_dim, prompt_len)
        self.conv3x3 = nn.Conv2d(prompt_dim, prompt_dim, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            emb = x.mean(dim=(-2, -1))
        else:
            # Hidden positions of x are exactly 0, so the plain sum is the visible sum.
            visible = mask.to(x.dtype).sum(dim=(-2, -1)).clamp_min(1.0)
            emb = x.sum(dim=(-2, -1)) / visible
        weights = F.softmax(self.linear_layer(emb), dim=1)  # (B, prompt_len)
        prompt = torch.einsum("bl,lchw->bchw", weights, self.prompt_param[0].to(weights.dtype))
        prompt = F.interpolate(prompt, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return apply_mask(self.conv3x3(apply_mask(prompt, mask)), mask)


@dataclass
class PromptIRConfig(RestormerConfig):
    """PromptIR hyper-parameters: Restormer's plus the prompts; defaults are the MaskDCPT release's
    dense class at window_size 8."""

    bias: bool = True  # the dense release class's default; its fine-tuned checkpoints have these biases
    prompt_dims: tuple[int, int, int] = (64, 128, 320)  # prompt1 (H/2), prompt2 (H/4), prompt3 (H/8)
    prompt_len: int = 5
    prompt_sizes: tuple[int, int, int] = (64, 32, 16)


class PromptIR(RestorationUNetBase):
    """PromptIR U-Net, dense (``masked=False``) or sparse-aware masked (``masked=True``).

    ``forward_features(x, keep)``: x (B, 3, H, W), H and W multiples of 8; keep (B, 1, H/8, W/8) in
    {0, 1} or None (a masked model given None computes what the dense model does). Returns the
    refinement output (B, 2·dim, H, W) and the taps, shallow first: reduce_noise_level1
    (2·dim @ H/2), reduce_noise_level2 (4·dim @ H/4), reduce_noise_level3 (4·dim @ H/8).
    """

    def __init__(self, config: PromptIRConfig | None = None, masked: bool = False) -> None:
        super().__init__()
        cfg = config or PromptIRConfig()
        self.config = cfg
        self.masked = masked
        self.in_chans = cfg.in_channels
        d, nb, hd, ffn, bias = cfg.dim, cfg.num_blocks, cfg.heads, cfg.ffn_expansion_factor, cfg.bias
        p1, p2, p3 = cfg.prompt_dims
        s1, s2, s3 = cfg.prompt_sizes

        def stage(dim: int, heads: int, blocks: int) -> TransformerStage:
            return TransformerStage(dim, heads, blocks, ffn, bias)

        def conv1x1(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, kernel_size=1, bias=bias)

        # Attribute order follows the release, so state_dict keys come out in the same order.
        self.patch_embed = PatchEmbed(cfg.in_channels, d)
        self.prompt1 = PromptGenBlock(p1, cfg.prompt_len, s1, lin_dim=2 * d)
        self.prompt2 = PromptGenBlock(p2, cfg.prompt_len, s2, lin_dim=4 * d)
        self.prompt3 = PromptGenBlock(p3, cfg.prompt_len, s3, lin_dim=8 * d)
        self.encoder_level1 = stage(d, hd[0], nb[0])
        self.down1_2 = Downsample(d)
        self.encoder_level2 = stage(2 * d, hd[1], nb[1])
        self.down2_3 = Downsample(2 * d)
        self.encoder_level3 = stage(4 * d, hd[2], nb[2])
        self.down3_4 = Downsample(4 * d)
        self.latent = stage(8 * d, hd[3], nb[3])
        self.up4_3 = Upsample(4 * d)  # from the reduced latent (4d), unlike Restormer's 8d
        self.reduce_chan_level3 = conv1x1(2 * d + 4 * d, 4 * d)
        self.noise_level3 = TransformerBlock(8 * d + p3, hd[2], ffn, bias)
        self.reduce_noise_level3 = conv1x1(8 * d + p3, 4 * d)
        self.decoder_level3 = stage(4 * d, hd[2], nb[2])
        self.up3_2 = Upsample(4 * d)
        self.reduce_chan_level2 = conv1x1(2 * d + 2 * d, 2 * d)
        self.noise_level2 = TransformerBlock(4 * d + p2, hd[2], ffn, bias)
        self.reduce_noise_level2 = conv1x1(4 * d + p2, 4 * d)
        self.decoder_level2 = stage(2 * d, hd[1], nb[1])
        self.up2_1 = Upsample(2 * d)
        self.noise_level1 = TransformerBlock(2 * d + p1, hd[2], ffn, bias)
        self.reduce_noise_level1 = conv1x1(2 * d + p1, 2 * d)
        self.decoder_level1 = stage(2 * d, hd[0], nb[0])
        self.refinement = stage(2 * d, hd[0], cfg.num_refinement_blocks)
        self.output = nn.Conv2d(2 * d, cfg.out_channels, kernel_size=3, padding=1, bias=bias)
        self.tap_dims = [2 * d, 4 * d, 4 * d]

    def _prompted(
        self, x: torch.Tensor, mask: torch.Tensor | None,
        prompt: PromptGenBlock, block: TransformerBlock, reduce: nn.Conv2d,
    ) -> torch.Tensor:
        """concat(x, prompt(x)) → transformer block → 1×1 reduction (× mask: it carries a bias)."""
        x = block(torch.cat([x, prompt(x, mask)], dim=1), mask)
        return apply_mask(reduce(x), mask)

    def forward_features(
        self, x: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        (m1, m2, m3, m4), (enc1, enc2, enc3, latent) = self.encode(x, keep)
        tap3 = self._prompted(latent, m4, self.prompt3, self.noise_level3, self.reduce_noise_level3)

        dec3 = torch.cat([self.up4_3(tap3, m4), enc3], dim=1)
        dec3 = self.decoder_level3(apply_mask(self.reduce_chan_level3(dec3), m3), m3)
        tap2 = self._prompted(dec3, m3, self.prompt2, self.noise_level2, self.reduce_noise_level2)

        dec2 = torch.cat([self.up3_2(tap2, m3), enc2], dim=1)
        dec2 = self.decoder_level2(apply_mask(self.reduce_chan_level2(dec2), m2), m2)
        tap1 = self._prompted(dec2, m2, self.prompt1, self.noise_level1, self.reduce_noise_level1)

        dec1 = self.decoder_level1(torch.cat([self.up2_1(tap1, m2), enc1], dim=1), m1)
        return self.refinement(dec1, m1), [tap1, tap2, tap3]


# Release checkpoints of PromptIR load from 'params_ema' (every MaskDCPT test config).
default_cfgs = {
    "promptir": ModelCfg(stem="patch_embed.proj", stride=8, tap_dims=(96, 192, 192)),
    "promptir_tiny": ModelCfg(stem="patch_embed.proj", stride=8, tap_dims=(16, 32, 32)),
}


@register_model
def promptir(masked: bool = False, **overrides: Any) -> PromptIR:
    """The MaskDCPT release's PromptIR (5D config, bias=True): 35,539,290 parameters."""
    return PromptIR(make_config(PromptIRConfig, PromptIRConfig(), overrides), masked=masked)


@register_model
def promptir_tiny(masked: bool = False, **overrides: Any) -> PromptIR:
    """A small PromptIR of the same layout, prompts included (scaled down), for tests and smoke runs."""
    base = PromptIRConfig(
        dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2),
        prompt_dims=(8, 16, 24), prompt_len=3, prompt_sizes=(16, 8, 4),
    )
    return PromptIR(make_config(PromptIRConfig, base, overrides), masked=masked)
