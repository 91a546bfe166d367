"""A batched torch path for the cheap degradation types (GPU or CPU), after Real-ESRGAN's GPU pipeline.

``degrade_batch(images (B, 3, H, W) float32 in [0, 1], type_names, levels, seeds)`` degrades each sample
with its own type, level and seed; samples of one type are processed together.

Randomness. Each sample's *parameters* (kernels, σ, γ, …) are drawn from ``make_rng(seed)`` in exactly the
order of the CPU type, so they equal the CPU path's parameters for the same seed (blur kernels included).
Per-pixel *noise* comes from a per-sample ``torch.Generator`` seeded from a separate stream of that seed:
the torch path draws its own noise, so noisy outputs match the CPU path in distribution, not bit for bit.
Nothing depends on the other samples of the batch (on CPU a sample's output is bit-identical alone or in
any mixed batch).

Where it equals the CPU path: blur outputs (same kernels, same reflect-101 convolution) within 1e-5; the
low-light formula; bilinear demosaicking (OpenCV's, up to its 16-bit quantisation). Where it differs:
``mosaic`` always demosaics bilinearly (VNG / edge-aware have no cheap batched form); ``haze`` resamples the
coarse depth cues with torch instead of OpenCV (mean difference ~1e-4); every pixel-noise draw.

This is the only module of ``degradations`` that imports torch.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .color import DISPLAY_GAMMA, linear_to_display
from .defocus_blur import draw_defocus
from .fields import coarse_shape
from .gaussian_blur import random_kernel
from .haze import draw_airlight_beta, draw_depth_cues
from .kernels import disk_kernel
from .levels import check_level
from .lowlight import INPUT_FLOOR, draw_low_light
from .mosaic import bayer_mask, draw_mosaic
from .motion_blur import draw_motion_kernel
from .noise import LUMA, POISSON_LEVELS, draw_noise
from .registry import resolve
from .rng import SeedLike, make_rng, seed_entropy

# Appended to a sample's seed to get the independent stream that seeds its torch.Generator.
TORCH_NOISE_STREAM = 0x70C4

# One sample's group context: (numpy Generator for parameters, torch.Generator for pixels).
Draws = tuple[np.random.Generator, torch.Generator]
GroupFn = Callable[[torch.Tensor, list[float], list[Draws], Mapping[str, Any]], tuple[torch.Tensor, list[dict]]]


# ----------------------------------------------------------------------------- helpers
def sample_draws(seed: SeedLike, device: torch.device) -> Draws:
    """The parameter generator (identical to the CPU path's) and the pixel-noise torch.Generator of one seed."""
    entropy = seed_entropy(seed)
    torch_seed = int(make_rng([*entropy, TORCH_NOISE_STREAM]).integers(0, 2**63 - 1))
    gen = torch.Generator(device=device)
    gen.manual_seed(torch_seed)
    return make_rng(entropy), gen


def conv_per_sample(images: torch.Tensor, kernels: Sequence[np.ndarray]) -> torch.Tensor:
    """Convolve sample i of images (n, 3, H, W) with kernels[i] (odd square), reflect-101 border.

    A true convolution (kernel flipped; conv2d correlates), equal to ``kernels.apply_kernel``. Samples with
    equal kernel sizes share one grouped conv2d (one group per channel of each sample); no kernel is
    zero-padded, so a sample's result does not depend on the sizes of the others.
    """
    n, c, h, w = images.shape
    if len(kernels) != n:
        raise ValueError(f"conv_per_sample: {len(kernels)} kernels for {n} images")
    out = torch.empty_like(images)
    by_size: dict[int, list[int]] = {}
    for i, k in enumerate(kernels):
        if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0:
            raise ValueError(f"conv_per_sample: kernel {i} must be odd and square, got shape {k.shape}")
        by_size.setdefault(k.shape[0], []).append(i)
    for size, idx in by_size.items():
        pad = size // 2
        if pad >= min(h, w):
            raise ValueError(f"conv_per_sample: kernel size {size} too large for a {h}x{w} image (reflect border)")
        stack = np.stack([kernels[i][::-1, ::-1] for i in idx]).astype(np.float32)  # (m, k, k), flipped
        weight = torch.from_numpy(stack).to(images.device).repeat_interleave(c, dim=0)[:, None]  # (m·c, 1, k, k)
        x = images[idx].reshape(1, len(idx) * c, h, w)
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # torch 'reflect' = reflect-101
        out[idx] = F.conv2d(x, weight, groups=len(idx) * c).reshape(len(idx), c, h, w)
    return out


def _check_ranges(name: str, ranges: Mapping[str, Any]) -> None:
    defaults = resolve(name).ranges
    unknown = sorted(set(ranges) - set(defaults))
    if unknown:
        raise ValueError(f"ranges for {name!r}: unknown key(s) {unknown}; valid: {sorted(defaults)}")


# ----------------------------------------------------------------------------- noise (type 0)
def _luma(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) → (n, 1, H, W) BT.601 luma."""
    weights = torch.as_tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _noise(images: torch.Tensor, levels: list[float], draws: list[Draws], ranges: Mapping[str, Any]):
    """Gaussian (colour/gray), Poisson (colour/gray) or salt-and-pepper: the CPU type's draws and ranges."""
    n, c, h, w = images.shape
    delta = torch.empty_like(images)
    salt_pepper: list[tuple[int, float]] = []
    params = [draw_noise(rng, level, ranges) for (rng, _), level in zip(draws, levels)]  # the CPU draws
    for i, ((_, gen), p) in enumerate(zip(draws, params)):
        if p["model"] == "gaussian":
            z = torch.randn((1 if p["gray"] else c, h, w), generator=gen, device=images.device)
            delta[i] = z * (p["sigma"] / 255.0)
        elif p["model"] == "poisson":
            clean = images[i : i + 1].clamp(0.0, 1.0)
            signal = _luma(clean) if p["gray"] else clean
            counts = torch.poisson(signal * POISSON_LEVELS, generator=gen)
            delta[i] = ((counts / POISSON_LEVELS - signal) * p["scale"])[0]
        else:
            delta[i] = 0.0
            salt_pepper.append((i, p["amount"]))
    out = images + delta
    for i, amount in salt_pepper:
        u = torch.rand((h, w), generator=draws[i][1], device=images.device)
        out[i] = torch.where(u < amount * 0.5, 1.0, torch.where(u < amount, 0.0, out[i]))
    return out.clamp_(0.0, 1.0), params


# ----------------------------------------------------------------------------- blurs (types 2–4)
def _gaussian_blur(images: torch.Tensor, levels: list[float], draws: list[Draws], ranges: Mapping[str, Any]):
    """Real-ESRGAN kernels from ``gaussian_blur.random_kernel`` (the CPU draws), one per sample."""
    kernels, params = zip(*(random_kernel(rng, level, ranges) for (rng, _), level in zip(draws, levels)))
    return conv_per_sample(images, kernels), list(params)


def _motion_blur(images: torch.Tensor, levels: list[float], draws: list[Draws], ranges: Mapping[str, Any]):
    """Shake-trajectory or linear kernels: ``motion_blur.draw_motion_kernel``, the CPU type's own draw."""
    kernels, params = zip(*(draw_motion_kernel(rng, level, ranges) for (rng, _), level in zip(draws, levels)))
    return conv_per_sample(images, kernels), list(params)


def _defocus_blur(images: torch.Tensor, levels: list[float], draws: list[Draws], ranges: Mapping[str, Any]):
    """Disk kernels; depth-varying samples blend a few disk layers by a thin-lens circle of confusion."""
    n, _, h, w = images.shape
    radii, varying, positions, params = [], [], {}, []
    layers = max(2, int(ranges["depth_layers"]))
    for i, ((rng, _), level) in enumerate(zip(draws, levels)):
        radius, pos, p = draw_defocus(rng, level, ranges, (h, w))  # the CPU type's own draws
        radii.append(radius)
        params.append(p)
        if pos is not None:
            positions[i] = torch.from_numpy(pos).to(images.device)
            varying.append(i)
    out = torch.empty_like(images)
    fixed = [i for i in range(n) if i not in positions]
    if fixed:
        out[fixed] = conv_per_sample(images[fixed], [disk_kernel(radii[i]) for i in fixed])
    if varying:
        src = images[varying]
        pos = torch.stack([positions[i] for i in varying])[:, None]  # (m, 1, H, W) fractional layer index
        acc = src * (1.0 - pos).clamp(min=0.0)  # layer 0 is the sharp image
        for j in range(1, layers):
            layer = conv_per_sample(src, [disk_kernel(radii[i] * j / (layers - 1)) for i in varying])
            acc = acc + layer * (1.0 - (pos - j).abs()).clamp(min=0.0)
        out[varying] = acc
    return out, params


# ----------------------------------------------------------------------------- low light (type 12)
def darken_to_linear(images: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """(β·(α·B)^γ) in linear light, i.e. (β α^γ)^2.2 · B^(2.2 γ); per-sample α, β, γ of shape (n,)."""
    a, b, g = (t.view(-1, 1, 1, 1).to(images) for t in (alpha, beta, gamma))
    scale = (b * a.pow(g)).pow(DISPLAY_GAMMA)
    return images.clamp(INPUT_FLOOR, 1.0).pow(g * DISPLAY_GAMMA) * scale


def _low_light(images: torch.Tensor, levels: list[float], draws: list[Draws], ranges: Mapping[str, Any]):
    """Darkening in linear light plus Poisson-Gaussian sensor noise N(0, shot·x + read)."""
    params = [draw_low_light(rng, level, ranges) for (rng, _), level in zip(draws, levels)]
    keys = ("alpha", "beta", "gamma", "shot_noise", "read_noise")
    table = torch.tensor([[p[k] for k in keys] for p in params], dtype=torch.float64)
    linear = darken_to_linear(images, table[:, 0], table[:, 1], table[:, 2])
    z = torch.stack([torch.randn(images.shape[1:], generator=gen, device=images.device) for _, gen in draws])
    shot, read = (table[:, k].to(images).view(-1, 1, 1, 1) for k in (3, 4))
    noisy = linear + z * (linear.clamp(min=0.0) * shot + read).sqrt()
    return linear_to_display(noisy), params


# ----------------------------------------------------------------------------- haze (type 6)
def _upsample_bicubic(coarse: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max to [0, 1] of (n, 1, H, W)."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp(min=1e-6)


def _haze(images: torch.Tensor, levels: list[float], draws: list[Draws], ranges: Mapping[str, Any]):
    """I = J·t + A·(1 − t) with the CPU type's plausible depth (ramp + smooth field + coarse luminance).

    Same draws as ``haze.haze`` (``draw_depth_cues``, ``draw_airlight_beta``); the coarse random field and
    the coarse luminance are resampled by torch (bicubic, area) rather than OpenCV, so the depth differs
    from the CPU one by interpolation details only.
    """
    n, _, h, w = images.shape
    dev = images.device
    weights, d_mins, fields, airlights, betas, params = [], [], [], [], [], []
    for (rng, _), level in zip(draws, levels):
        cues = draw_depth_cues(rng, ranges, (h, w))  # the CPU type's own draws, in its order
        airlight, beta = draw_airlight_beta(rng, level, ranges)
        wts = np.array(cues["weights"])
        wts /= max(float(wts.sum()), 1e-6)
        coarse = torch.from_numpy(cues["coarse"]).to(dev)
        fields.append(_normalise(_upsample_bicubic(coarse[None, None], h, w)))
        weights.append(wts)
        d_mins.append(cues["depth_min"])
        airlights.append(airlight)
        betas.append(beta)
        params.append({"beta": beta, "airlight": [float(v) for v in airlight], "depth_cells": cues["cells"],
                       "depth_min": cues["depth_min"], "depth_weights": [round(float(v), 4) for v in wts]})
    luma_cells = 12
    gh, gw = coarse_shape((h, w), luma_cells)
    luma = _upsample_bicubic(F.interpolate(_luma(images), size=(gh, gw), mode="area"), h, w).clamp(0.0, 1.0)
    ramp = torch.linspace(1.0, 0.0, h, device=dev).view(1, 1, h, 1).expand(n, 1, h, w)
    wt = torch.tensor(np.stack(weights), dtype=torch.float32, device=dev).view(n, 3, 1, 1)
    depth = _normalise(wt[:, 0:1] * ramp + wt[:, 1:2] * torch.cat(fields) + wt[:, 2:3] * luma)
    d_min = torch.tensor(d_mins, dtype=torch.float32, device=dev).view(n, 1, 1, 1)
    depth = d_min + (1.0 - d_min) * depth
    t = torch.exp(-torch.tensor(betas, dtype=torch.float32, device=dev).view(n, 1, 1, 1) * depth)
    air = torch.from_numpy(np.stack(airlights)).to(dev).view(n, 3, 1, 1)
    for p, tt in zip(params, t):
        p.update(transmission_min=float(tt.min()), transmission_mean=float(tt.mean()))
    return images * t + air * (1.0 - t), params


# ----------------------------------------------------------------------------- mosaic (type 11)
def bayer_mask_torch(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(1, 3, H, W) float RGGB sampling mask: ``mosaic.bayer_mask``'s 2×2 tile repeated over the image."""
    tile = torch.from_numpy(bayer_mask()).permute(2, 0, 1).float()  # (3, 2, 2)
    return tile.repeat(1, (h + 1) // 2, (w + 1) // 2)[None, :, :h, :w].to(device)


# Bilinear demosaicking as convolutions of the sparse colour planes: G from its 4 neighbours, R and B
# from 2 or 4 (the classic kernels); each keeps the sample at its own site.
_G_KERNEL = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.float32) / 4.0
_RB_KERNEL = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 4.0


def demosaic_bilinear(images: torch.Tensor) -> torch.Tensor:
    """Bayer-sample (n, 3, H, W) with RGGB, then demosaic bilinearly. Reflect-101 keeps the CFA phase."""
    n, c, h, w = images.shape
    sparse = images * bayer_mask_torch(h, w, images.device)
    weight = torch.from_numpy(np.stack([_RB_KERNEL, _G_KERNEL, _RB_KERNEL])[:, None]).to(images)
    return F.conv2d(F.pad(sparse, (1, 1, 1, 1), mode="reflect"), weight, groups=c)


_UNSHARP_KERNEL = None


def _unsharp_kernel() -> np.ndarray:
    """The 9×9 σ = 1 Gaussian OpenCV's GaussianBlur((0, 0), 1) uses for float images."""
    global _UNSHARP_KERNEL
    if _UNSHARP_KERNEL is None:
        g = cv2.getGaussianKernel(9, 1.0).astype(np.float64)
        _UNSHARP_KERNEL = (g @ g.T).astype(np.float32)
    return _UNSHARP_KERNEL


def _mosaic(images: torch.Tensor, levels: list[float], draws: list[Draws], ranges: Mapping[str, Any]):
    """Bayer sampling, bilinear demosaic, ISP unsharp mask of amount rising with ``level``.

    The torch path always demosaics bilinearly (VNG/EA have no cheap batched form); the CPU draws are
    kept (the CPU method is recorded as ``cpu_method``) so the parameter stream stays aligned.
    """
    amounts, params = [], []
    for (rng, _), level in zip(draws, levels):
        cpu_method, amount = draw_mosaic(rng, level, ranges)
        amounts.append(amount)
        params.append({"method": "bilinear", "cpu_method": cpu_method, "sharpen_amount": amount})
    rgb = demosaic_bilinear(images)
    blurred = conv_per_sample(rgb, [_unsharp_kernel()] * len(levels))
    amount = torch.tensor(amounts, dtype=rgb.dtype, device=rgb.device).view(-1, 1, 1, 1)
    return rgb + amount * (rgb - blurred), params


# ----------------------------------------------------------------------------- API
TORCH_FNS: dict[str, GroupFn] = {
    "noise": _noise,
    "motion_blur": _motion_blur,
    "defocus_blur": _defocus_blur,
    "gaussian_blur": _gaussian_blur,
    "haze": _haze,
    "mosaic": _mosaic,
    "low_light": _low_light,
}
TORCH_TYPES: tuple[str, ...] = tuple(TORCH_FNS)


def merged_ranges(name: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The CPU type's default ranges with ``overrides`` applied (unknown keys are an error)."""
    merged = copy.deepcopy(dict(resolve(name).ranges))
    if overrides:
        _check_ranges(name, overrides)
        merged.update(copy.deepcopy(dict(overrides)))
    return merged


def degrade_batch(
    images: torch.Tensor,
    type_names: Sequence[str],
    levels: torch.Tensor | Sequence[float],
    seeds: Sequence[SeedLike],
    ranges: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Degrade images (B, 3, H, W) float32 in [0, 1] on their own device; one type, level, seed per sample.

    ranges: optional per-type overrides ``{type_name: {key: value}}`` of the CPU defaults.
    Returns lq (B, 3, H, W) float32 in [0, 1], aligned with the input, and one parameter dict per sample
    (the CPU type's keys plus ``type``). A sample's result depends only on its image, type, level and seed.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")
    b = images.shape[0]
    if isinstance(levels, torch.Tensor):
        levels = levels.detach().cpu().reshape(-1).tolist()
    levels = [check_level(float(v)) for v in levels]
    if not len(type_names) == len(levels) == len(seeds) == b:
        raise ValueError(
            f"need one type, level and seed per image: {b} images, {len(type_names)} types, "
            f"{len(levels)} levels, {len(seeds)} seeds"
        )
    for name in type_names:
        if name not in TORCH_FNS:
            raise ValueError(f"degradation type {name!r} has no torch path; supported: {', '.join(TORCH_TYPES)}")
    for name in ranges or {}:
        if name not in TORCH_FNS:
            raise ValueError(f"ranges: type {name!r} has no torch path; supported: {', '.join(TORCH_TYPES)}")
    x = images.float().clamp(0.0, 1.0)
    out = torch.empty_like(x)
    params: list[dict[str, Any]] = [{} for _ in range(b)]
    for name in dict.fromkeys(type_names):  # first-seen order
        idx = [i for i, t in enumerate(type_names) if t == name]
        draws = [sample_draws(seeds[i], x.device) for i in idx]
        lq, group_params = TORCH_FNS[name](x[idx], [levels[i] for i in idx], draws, merged_ranges(name, (ranges or {}).get(name)))
        out[idx] = lq.clamp(0.0, 1.0)
        for i, p in zip(idx, group_params):
            params[i] = {"type": name, **p}
    return out, params
