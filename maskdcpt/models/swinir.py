"""SwinIR as released with MaskDCPT, dense and sparse-aware masked, in one class.

The release's SwinIR (MaskDCPT ``basicsr/archs/swinir_arch.py``) differs from the original
SwinIR: windows carry no relative-position bias and the shifted windows no attention mask
(odd blocks still roll the map by half a window), and the six RSTBs are split into
``encode_layers`` (a ModuleList, RSTB 0–2) and ``decode_layers0..2`` (attributes, RSTB 3–5).
Parameter names and order follow that release so its checkpoints load strictly.

Layout: conv_first → patch-embed LayerNorm → RSTBs → LayerNorm → conv_after_body
(+ conv_first output) → conv_last. ``patch_size`` is 1, so one token is one pixel and the
tokens are kept as a channels-last map (B, H, W, C) throughout.

Masked form (``masked=True``, METHOD.md §3): the input, conv_first, every Swin block, every RSTB
conv and conv_after_body are multiplied by the keep map; every LayerNorm zeroes hidden tokens;
window attention treats hidden tokens as absent keys (the release lets them into the softmax,
so a visible token's output depends on how much of its window is hidden). No mean shift and
no global input residual. Hidden positions are exactly 0 everywhere in the body, so no value
of a hidden patch reaches a visible position.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp, trunc_normal_

from .base import Backbone, BlockStage
from .masking import apply_mask, mask_like
from .registry import ModelCfg, register_model

RGB_MEAN = (0.4488, 0.4371, 0.4040)

# Keys of the original SwinIR that the release dropped with the position bias and shift mask.
_REMOVED_KEY_SUFFIXES = ("relative_position_bias_table", "relative_position_index", "attn_mask")


class TokenLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a channels-last map (B, H, W, C); hidden tokens set to 0.

    LayerNorm statistics are per token, so normalising all tokens and zeroing the hidden ones
    equals the release's gather-normalise-scatter ``MaskLayerNorm``. ``keep`` is (B, H, W, 1)
    in {0, 1} or None (dense).
    """

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        y = super().forward(x)
        return y if keep is None else y * keep


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) → (B·nW, window², C), windows in raster order."""
    return rearrange(x, "b (nh p1) (nw p2) c -> (b nh nw) (p1 p2) c", p1=window, p2=window)


def window_merge(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B·nW, window², C) → (B, H, W, C)."""
    return rearrange(
        windows, "(b nh nw) (p1 p2) c -> b (nh p1) (nw p2) c",
        nh=height // window, nw=width // window, p1=window, p2=window,
    )


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, no position bias (as released).

    ``key_keep`` (B·nW, N) bool marks the keys that exist; hidden keys get a logit of the
    dtype's most negative finite value, so their softmax weight underflows to exactly 0 for
    every query of a window with at least one visible key. A window whose keys are all hidden
    gets uniform weights instead of NaN (−inf everywhere would give 0/0); its queries are hidden
    too and are zeroed by the block.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, key_keep: torch.Tensor | None = None) -> torch.Tensor:
        """x (B·nW, N, C) → (B·nW, N, C)."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        bias = None
        if key_keep is not None:
            bias = torch.zeros(key_keep.shape, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(~key_keep, torch.finfo(q.dtype).min)[:, None, None, :]
            bias = bias.expand(-1, self.num_heads, q.shape[2], -1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        return self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))


class SwinTransformerBlock(nn.Module):
    """(S)W-MSA + MLP on a channels-last map (B, H, W, C); H, W multiples of ``window``.

    ``shift`` > 0 rolls the map by −shift before partitioning and back afterwards, with no
    attention mask across the wrapped edges (as released). Masked: norms zero hidden tokens,
    hidden keys are masked in attention (unless ``mask_keys`` is False, the release's leaky
    behaviour), and the block output is multiplied by the keep map.
    """

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, mask_keys: bool = True) -> None:
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"shift {shift} must lie in [0, window {window})")
        self.window, self.shift, self.mask_keys = window, shift, mask_keys
        self.norm1 = TokenLayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = TokenLayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def _roll(self, x: torch.Tensor, sign: int) -> torch.Tensor:
        return torch.roll(x, shifts=(sign * self.shift, sign * self.shift), dims=(1, 2)) if self.shift else x

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, H, W, C); keep (B, H, W, 1) in {0, 1} or None."""
        _, height, width, _ = x.shape
        h = self._roll(self.norm1(x, keep), -1)
        key_keep = None
        if keep is not None and self.mask_keys:
            key_keep = window_partition(self._roll(keep, -1), self.window)[..., 0] > 0
        h = self.attn(window_partition(h, self.window), key_keep)
        h = self._roll(window_merge(h, self.window, height, width), +1)
        x = x + self.drop_path(h)
        x = x + self.drop_path(self.mlp(self.norm2(x, keep)))
        return x if keep is None else x * keep


class BasicLayer(BlockStage):
    """``depth`` Swin blocks on (B, H, W, C) with a keep map (B, H, W, 1) or None; odd blocks shift
    by half a window. Holds ``.blocks`` (release name)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 qkv_bias: bool, qk_scale: float | None, drop: float, attn_drop: float,
                 drop_path: list[float], mask_keys: bool) -> None:
        super().__init__(
            SwinTransformerBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio,
                                 qkv_bias, qk_scale, drop, attn_drop, drop_path[i], mask_keys)
            for i in range(depth)
        )


class RSTB(nn.Module):
    """Residual Swin Transformer Block: x + conv3×3(Swin blocks(x)), on (B, H, W, C).

    Masked: the conv output is multiplied by the keep map (its bias would fill hidden
    positions; its 3×3 support reads only zeros from hidden neighbours).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 qkv_bias: bool, qk_scale: float | None, drop: float, attn_drop: float,
                 drop_path: list[float], mask_keys: bool, resi_connection: str) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, num_heads, window, mlp_ratio, qkv_bias, qk_scale,
                                         drop, attn_drop, drop_path, mask_keys)
        self.conv = _residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, H, W, C); keep (B, H, W, 1) or None → (B, H, W, C)."""
        y = self.residual_group(x, keep).permute(0, 3, 1, 2)
        y = self.conv(y).permute(0, 2, 3, 1)
        if keep is not None:
            y = y * keep
        return y + x


class PatchEmbed(nn.Module):
    """The release's patch embedding at patch size 1: only its LayerNorm (``patch_embed.norm``) has weights."""

    def __init__(self, dim: int, patch_norm: bool) -> None:
        super().__init__()
        self.norm = TokenLayerNorm(dim) if patch_norm else None

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return x if self.norm is None else self.norm(x, keep)


def _residual_conv(dim: int, resi_connection: str) -> nn.Module:
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":  # the original SwinIR's light variant
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    raise ValueError(f"resi_connection must be '1conv' or '3conv', got {resi_connection!r}")


class SwinIR(Backbone):
    """SwinIR restorer (upscale 1), dense or sparse-aware masked.

    Args:
        masked: build the sparse-aware masked form (same parameters and state_dict keys).
        embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale, drop_rate,
        attn_drop_rate, drop_path_rate, patch_norm, img_range, resi_connection: as in the release.
            ``depths`` has an even length; its first half are ``encode_layers``, the second
            half ``decode_layers{i}`` (the classifier taps).
        mean_shift: subtract ``RGB_MEAN`` at the input and add it back at the output.
            Default: on for the dense model, off for the masked one (as released).
        mask_attention_keys: masked form only; False reproduces the release, whose attention
            lets hidden (zero) tokens take part in the softmax as keys.

    ``stride`` = window size = mask patch size P; inputs of forward_features must be
    multiples of it, ``forward`` pads any size.

    Keep maps: float (B, 1, H/P, W/P) in {0, 1}, 1 = visible. The masked model treats
    ``keep=None`` as an all-ones keep map; the dense model accepts no keep map.
    """

    head_name = "conv_last"

    tap_downsample = True

    def __init__(
        self,
        masked: bool = False,
        in_chans: int = 3,
        embed_dim: int = 180,
        depths: tuple[int, ...] | list[int] = (6, 6, 6, 6, 6, 6),
        num_heads: tuple[int, ...] | list[int] = (6, 6, 6, 6, 6, 6),
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        patch_norm: bool = True,
        img_range: float = 1.0,
        resi_connection: str = "1conv",
        mean_shift: bool | None = None,
        mask_attention_keys: bool = True,
    ) -> None:
        super().__init__()
        depths, num_heads = list(depths), list(num_heads)
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} must have the same length")
        if len(depths) < 2 or len(depths) % 2:
            raise ValueError(f"depths {depths} needs an even number (>= 2) of RSTBs: half encode, half decode")
        if window_size < 2:
            raise ValueError(f"window_size must be >= 2, got {window_size}")
        self.masked = masked
        self.global_residual = not masked  # the masked release model adds no input residual
        self.in_chans = in_chans
        self.mean_shift = (not masked) if mean_shift is None else mean_shift
        self.img_range = img_range
        self.window_size = window_size
        self.stride = window_size
        self.embed_dim = embed_dim
        self.num_layers = len(depths)
        n_half = self.num_layers // 2
        self.tap_dims = [embed_dim] * n_half
        # A plain attribute, not a buffer: the release's state_dict holds no mean.
        self.mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()

        def make_rstb(i: int) -> RSTB:
            return RSTB(embed_dim, depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias, qk_scale,
                        drop_rate, attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])],
                        masked and mask_attention_keys, resi_connection)

        self.encode_layers = nn.ModuleList(make_rstb(i) for i in range(n_half))
        for i in range(n_half):
            setattr(self, f"decode_layers{i}", make_rstb(n_half + i))
        self.norm = TokenLayerNorm(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)
        self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def decode_layers(self) -> list[RSTB]:
        """The decode RSTBs in forward order (RSTB 3, 4, 5 at the release config)."""
        return [getattr(self, f"decode_layers{i}") for i in range(self.num_layers // 2)]

    def forward_features(self, x: torch.Tensor, keep: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, 3, H, W) in [0, 1], H and W multiples of ``stride``; keep (B, 1, H/P, W/P) or None.

        Returns the map fed to ``conv_last`` — conv_after_body(body) + conv_first(x), (B, C, H, W) —
        and the decode-RSTB outputs as (B, C, H, W) maps in classifier order (last RSTB first).
        Masked: both are exactly 0 at hidden positions.
        """
        keep = self.check_inputs(x, keep)
        if keep is None and self.masked:  # the masked model runs with everything visible (as released)
            keep = x.new_ones(x.shape[0], 1, x.shape[2] // self.stride, x.shape[3] // self.stride)
        if self.mean_shift:
            x = x - self.mean.to(x)
        x = x * self.img_range
        keep_px = mask_like(keep, x)
        keep_tok = None if keep_px is None else keep_px.permute(0, 2, 3, 1)  # (B, H, W, 1)

        x_first = apply_mask(self.conv_first(apply_mask(x, keep_px)), keep_px)
        t = self.pos_drop(self.patch_embed(x_first.permute(0, 2, 3, 1), keep_tok))
        for layer in self.encode_layers:
            t = layer(t, keep_tok)
        taps = []
        for layer in self.decode_layers:
            t = layer(t, keep_tok)
            taps.append(t.permute(0, 3, 1, 2))
        body = self.norm(t, keep_tok).permute(0, 3, 1, 2)
        feat = apply_mask(self.conv_after_body(body), keep_px) + x_first
        return feat, taps[::-1]

    def forward_head(self, feat: torch.Tensor, inp: torch.Tensor | None = None) -> torch.Tensor:
        """conv_last(feat) in image units, (B, 3, H, W).

        With ``inp`` (the un-normalised input image, padded like ``feat``) the global residual is
        added: ``inp + conv_last(feat) / img_range`` — the release's ``(x_n + conv_last)/range + mean``
        with x_n = (inp − mean)·range, where the mean cancels. Without ``inp`` the output is
        ``conv_last(feat) / img_range``, plus the mean when mean shift is on (the dense model).
        """
        out = self.conv_last(feat) / self.img_range
        if inp is not None:
            return out + inp
        return out + self.mean.to(out) if self.mean_shift else out


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: SwinIR) -> dict[str, torch.Tensor]:
    """Map a SwinIR state_dict onto ``model``'s key names.

    Takes the state_dict itself: ``maskdcpt.io.read_state_dict`` has already taken
    off BasicSR's wrapper (``default_cfgs``' ``param_key``: the release's SwinIR-5D config loads
    ``params``) and DDP's ``module.``. The release's layout passes unchanged. The original SwinIR's
    layout (all RSTBs in one ``layers`` list, plus relative-position tables, their index buffers
    and shift masks, which the release removed) is renamed to ``encode_layers.i`` /
    ``decode_layers{i}`` and the removed entries are dropped. Keys that fit nothing pass through
    unchanged, so the loader (``maskdcpt.models.checkpoint.load_pretrained``) can name them.
    """
    n_half = model.num_layers // 2
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(_REMOVED_KEY_SUFFIXES):
            continue
        parts = key.split(".", 2)
        if parts[0] == "layers" and len(parts) == 3 and parts[1].isdigit():  # original SwinIR
            i = int(parts[1])
            key = f"encode_layers.{i}.{parts[2]}" if i < n_half else f"decode_layers{i - n_half}.{parts[2]}"
        out[key] = value
    return out


# The release's SwinIR-5D test config names no param_key, so BasicSR loads 'params' (METHOD.md §13);
# the tiny variant follows its family.
default_cfgs = {
    "swinir": ModelCfg(stem="conv_first", stride=8, tap_dims=(180,) * 3, tap_downsample=True, param_key="params"),
    "swinir_tiny": ModelCfg(stem="conv_first", stride=8, tap_dims=(24,) * 3, tap_downsample=True, param_key="params"),
}


@register_model
def swinir(masked: bool = False, **overrides) -> SwinIR:
    """The MaskDCPT 5D SwinIR: embed 180, depths [6]*6, heads [6]*6, window 8, mlp 2 (11,455,563 parameters)."""
    return SwinIR(masked=masked, **overrides)


@register_model
def swinir_tiny(masked: bool = False, **overrides) -> SwinIR:
    """A small SwinIR of the same layout for tests and smoke runs: embed 24, depths [2]*6, heads [2]*6, window 8."""
    cfg = dict(embed_dim=24, depths=(2,) * 6, num_heads=(2,) * 6, window_size=8, mlp_ratio=2.0)
    cfg.update(overrides)
    return SwinIR(masked=masked, **cfg)
