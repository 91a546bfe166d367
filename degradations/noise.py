"""Type 0 ``noise``: additive Gaussian, Poisson (photon counting) or salt-and-pepper noise.

The building blocks are public so that other types (camera noise, low light, the Real-ESRGAN
pipeline, the mixed types) add noise the same way. Every function takes an explicit
``numpy.random.Generator``; nothing global is used.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .levels import lerp
from .registry import register

# Real-ESRGAN counts photons on an 8-bit grid: the number of distinct values rounded up to a power of two.
# Images here come from uint8, so that count is 256; fixing it avoids a costly ``np.unique`` per sample.
POISSON_LEVELS = 256.0
# ITU-R BT.601 luma weights, used for "gray" noise (the same noise on all channels).
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def add_gaussian_noise(image: np.ndarray, sigma: float, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """image (H, W, 3) in [0, 1] + N(0, sigma²); ``gray`` draws one noise plane for all channels.

    Returns float32, not clipped (the caller clips once at the end of its pipeline).
    """
    h, w = image.shape[:2]
    if gray:
        noise = rng.standard_normal((h, w, 1), dtype=np.float32)
    else:
        noise = rng.standard_normal((h, w, 3), dtype=np.float32)
    noise *= np.float32(sigma)
    return image + noise


# Above this mean count a Poisson draw is replaced by its normal approximation N(λ, λ) (skewness
# 1/√λ < 0.3): numpy's Poisson sampler costs ~15x a normal draw, and only dark pixels need it.
EXACT_POISSON_BELOW = 12.0


def poisson_counts(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photon counts ~ Poisson(lam) (float32, same shape): exact where lam < 12, normal approximation above."""
    lam = lam.astype(np.float32, copy=False)
    counts = rng.standard_normal(lam.shape, dtype=np.float32)
    counts *= np.sqrt(lam)
    counts += lam
    dark = lam < EXACT_POISSON_BELOW
    if dark.any():
        counts[dark] = rng.poisson(lam[dark]).astype(np.float32)
    return counts


def add_poisson_noise(image: np.ndarray, scale: float, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """Real-ESRGAN-style Poisson noise: ``img + scale · (Poisson(img·N) / N − img)`` with N = 256.

    ``gray`` computes the shot noise of the luma and adds it to all channels. Returns float32, not clipped.
    """
    clean = np.clip(image, 0.0, 1.0)
    if gray:
        signal = (clean @ LUMA)[..., None]
    else:
        signal = clean
    counts = poisson_counts(signal * np.float32(POISSON_LEVELS), rng)
    noise = counts / np.float32(POISSON_LEVELS) - signal
    return image + noise * np.float32(scale)


def add_salt_pepper(image: np.ndarray, amount: float, rng: np.random.Generator, salt_ratio: float = 0.5) -> np.ndarray:
    """Set a fraction ``amount`` of pixels (all channels) to 1 (salt, share ``salt_ratio``) or 0 (pepper)."""
    h, w = image.shape[:2]
    u = rng.random((h, w), dtype=np.float32)
    out = image.copy()
    out[u < amount * salt_ratio] = 1.0
    out[(u >= amount * salt_ratio) & (u < amount)] = 0.0
    return out


def add_heteroscedastic_noise(linear: np.ndarray, shot: float, read: float, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise in linear light: x + N(0, shot·x + read) (the Poisson-Gaussian model of Brooks et al.).

    ``linear`` is any float32 array of linear intensities (a raw mosaic or an RGB image). Not clipped.
    """
    variance = np.maximum(linear, 0.0) * np.float32(shot) + np.float32(read)
    noise = rng.standard_normal(linear.shape, dtype=np.float32)
    noise *= np.sqrt(variance, dtype=np.float32)
    return linear + noise


NOISE_MODELS = ("gaussian", "poisson", "salt_pepper")

DEFAULT_RANGES = {
    "sigma": [1.0, 50.0],  # Gaussian σ in 8-bit units, level 0 → 1 (DCPT: U[1, 50])
    "gray_prob": 0.4,  # Real-ESRGAN: same noise on all channels with p 0.4
    "poisson_scale": [0.05, 3.0],  # Real-ESRGAN Poisson scale, level 0 → 1
    "salt_pepper_amount": [0.002, 0.05],  # fraction of pixels hit, level 0 → 1
    "model_probs": [0.6, 0.25, 0.15],  # gaussian, poisson, salt_pepper
}


def _choose(rng: np.random.Generator, probs) -> int:
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (len(NOISE_MODELS),) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(
            f"noise: model_probs must be {len(NOISE_MODELS)} non-negative weights for {NOISE_MODELS}, got {probs}"
        )
    return int(rng.choice(len(p), p=p / p.sum()))


def draw_noise(rng: np.random.Generator, level: float, ranges: Mapping[str, Any]) -> dict[str, Any]:
    """One sample's noise model and strength, the type's params (shared with the torch path):
    {"model", "sigma", "gray"}, {"model", "scale", "gray"} or {"model", "amount"}."""
    model = NOISE_MODELS[_choose(rng, ranges["model_probs"])]
    gray = bool(rng.random() < float(ranges["gray_prob"]))
    params: dict[str, Any] = {"model": model}
    if model == "gaussian":
        params.update(sigma=lerp(ranges["sigma"], level), gray=gray)
    elif model == "poisson":
        params.update(scale=lerp(ranges["poisson_scale"], level), gray=gray)
    else:
        params.update(amount=lerp(ranges["salt_pepper_amount"], level))
    return params


@register("noise", ranges=DEFAULT_RANGES)
def noise(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """The model is drawn at random; its strength rises linearly with ``level``.

    Draws happen in a fixed order independent of ``level``, so with one seed the same model and
    noise pattern are only scaled up as the level rises (severity is monotone per seed).
    """
    params = draw_noise(rng, level, ranges)
    if params["model"] == "gaussian":
        out = add_gaussian_noise(image, params["sigma"] / 255.0, params["gray"], rng)
    elif params["model"] == "poisson":
        out = add_poisson_noise(image, params["scale"], params["gray"], rng)
    else:
        out = add_salt_pepper(image, params["amount"], rng)
    return np.clip(out, 0.0, 1.0), params
