"""Type 4 ``gaussian_blur``: Real-ESRGAN's random blur kernel family (iso / aniso / generalised /
plateau Gaussians, and sinc), also stage 1 and 2 of the Real-ESRGAN pipeline (``realesrgan.py``)."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from .kernels import apply_kernel, gaussian_kernel, plateau_kernel, sinc_kernel
from .levels import lerp
from .registry import register

KERNEL_FAMILIES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")

SINC_FLOOR = 0.25  # share of the cut-off range a sinc kernel always goes down, so that it blurs at level 0
FLAT_TOP_MIN_SIGMA = 1.0  # generalised kernels: the smallest σ that reaches the neighbouring pixels

GAUSSIAN_RANGES = {
    "kernel_size": [7, 21],  # odd sizes, drawn uniformly
    # largest σ, level 0 → 1; the minor axis of anisotropic kernels is a random fraction. Real-ESRGAN starts at
    # 0.2, where the sampled kernel is the identity: level 0 must still blur (an unchanged image is not a type).
    "sigma": [0.5, 3.0],
    "family_probs": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    "generalized_beta": [0.5, 4.0],
    "plateau_beta": [1.0, 2.0],
    "sinc_prob": 0.1,
}


def random_kernel(rng: np.random.Generator, severity: float, ranges: Mapping[str, Any]) -> tuple[np.ndarray, dict]:
    """One Real-ESRGAN blur kernel whose σ (or sinc cut-off) is set by ``severity`` in [0, 1].

    All draws come before the kernel is built and do not depend on ``severity``, so that the same
    generator state gives the same kernel shape, only wider, as severity rises.
    """
    lo, hi = (int(v) for v in ranges["kernel_size"])
    size = 2 * int(rng.integers(lo // 2, hi // 2 + 1)) + 1
    sinc = bool(rng.random() < float(ranges["sinc_prob"]))
    probs = np.asarray(ranges["family_probs"], dtype=np.float64)
    if probs.shape != (len(KERNEL_FAMILIES),) or (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(f"gaussian_blur: family_probs must be {len(KERNEL_FAMILIES)} weights for {KERNEL_FAMILIES}")
    family = KERNEL_FAMILIES[int(rng.choice(len(probs), p=probs / probs.sum()))]
    minor_fraction = float(rng.uniform(0.1, 1.0))
    theta = float(rng.uniform(-math.pi, math.pi))
    beta_unit = float(rng.random())
    cutoff_unit = float(rng.random())
    if sinc:
        # Real-ESRGAN: ω_c ∈ [π/3, π] for small kernels, [π/5, π] otherwise; lower cut-off = more blur. At ω_c = π
        # the sampled sinc is the identity, so even severity 0 cuts below it (SINC_FLOOR of the way down).
        lowest = math.pi / 3 if size < 13 else math.pi / 5
        cutoff = lerp([math.pi, lowest], SINC_FLOOR + (1 - SINC_FLOOR) * severity * (0.5 + 0.5 * cutoff_unit))
        return sinc_kernel(size, cutoff), {"family": "sinc", "kernel_size": size, "cutoff": cutoff}
    sigma_x = lerp(ranges["sigma"], severity)
    if family.startswith("generalized"):
        # flat-topped (β > 1): a radius under a pixel holds only the centre pixel, the identity
        sigma_x = max(sigma_x, FLAT_TOP_MIN_SIGMA)
    if family.endswith("aniso"):
        sigma_y = max(float(ranges["sigma"][0]), sigma_x * minor_fraction)
    else:
        sigma_y, theta = sigma_x, 0.0
    params = {"family": family, "kernel_size": size, "sigma_x": sigma_x, "sigma_y": sigma_y, "theta": theta}
    if family.startswith("generalized"):
        beta = lerp(ranges["generalized_beta"], beta_unit)
        kernel = gaussian_kernel(size, sigma_x, sigma_y, theta, beta)
        params["beta"] = beta
    elif family.startswith("plateau"):
        beta = lerp(ranges["plateau_beta"], beta_unit)
        kernel = plateau_kernel(size, sigma_x, sigma_y, theta, beta)
        params["beta"] = beta
    else:
        kernel = gaussian_kernel(size, sigma_x, sigma_y, theta)
    return kernel, params


@register("gaussian_blur", ranges=GAUSSIAN_RANGES)
def gaussian_blur(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """A Real-ESRGAN kernel (iso/aniso/generalised/plateau Gaussian, or sinc) whose width rises with ``level``."""
    kernel, params = random_kernel(rng, level, ranges)
    return apply_kernel(image, kernel), params
