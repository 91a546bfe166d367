"""Type 12 ``low_light``: darkening I = β·(α·B)^γ (Lv et al.) with Poisson-Gaussian noise in linear light."""
from __future__ import annotations

import math
from typing import Any, Mapping

import cv2
import numpy as np

from .color import DISPLAY_GAMMA, linear_to_display
from .levels import lerp
from .noise import add_heteroscedastic_noise
from .registry import register
from .rng import uniform

# Floor that keeps OpenCV's pow on normal floats: exact zeros and denormal results take a slow path
# (10x). (1e-3)^(2.2·5) = 1e-33 is still a normal float32, far below one 8-bit step once displayed.
INPUT_FLOOR = 1e-3


def darken(image: np.ndarray, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """β·(α·B)^γ on an (H, W, 3) image in [0, 1] (Lv et al.'s low-light synthesis). float32 in [0, β]."""
    scale = np.float32(beta * alpha**gamma)
    out = cv2.pow(np.clip(image, INPUT_FLOOR, 1.0).astype(np.float32, copy=False), gamma)
    out *= scale
    return out


def darken_linear(image: np.ndarray, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """``darken`` followed by sRGB → linear light, fused into a single power: (β α^γ)^2.2 · B^(2.2 γ)."""
    scale = np.float32((beta * alpha**gamma) ** DISPLAY_GAMMA)
    # one vectorised power for both steps (OpenCV's pow is ~5x numpy's)
    out = cv2.pow(np.clip(image, INPUT_FLOOR, 1.0).astype(np.float32, copy=False), gamma * DISPLAY_GAMMA)
    out *= scale
    return out


DEFAULT_RANGES = {
    "gamma": [1.5, 5.0],  # darkening exponent γ, level 0 → 1
    "alpha": [0.9, 1.0],  # drawn uniformly
    "beta": [0.5, 1.0],  # drawn uniformly
    "shot_noise": [1e-4, 1e-2],  # linear-light shot-noise factor, drawn log-uniformly
    "read_noise": [1e-7, 1e-4],  # linear-light read-noise variance, drawn log-uniformly
}


def draw_low_light(rng: np.random.Generator, level: float, ranges: Mapping[str, Any]) -> dict[str, float]:
    """α, β, γ and the sensor noise of one sample (shared with the torch path)."""
    alpha = uniform(rng, ranges["alpha"])
    beta = uniform(rng, ranges["beta"])
    shot = math.exp(uniform(rng, [math.log(v) for v in ranges["shot_noise"]]))
    read = math.exp(uniform(rng, [math.log(v) for v in ranges["read_noise"]]))
    gamma = lerp(ranges["gamma"], level)
    return {"alpha": alpha, "beta": beta, "gamma": gamma, "shot_noise": shot, "read_noise": read}


@register("low_light", ranges=DEFAULT_RANGES)
def low_light(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """γ rises with ``level``; α, β and the sensor noise are random (drawn independently of the level).

    The noise is added after darkening in linear light, so its visibility grows as the image gets
    darker: the signal-to-noise ratio falls as a real sensor's does when light is scarce.
    """
    p = draw_low_light(rng, level, ranges)
    dark = darken_linear(image, p["alpha"], p["beta"], p["gamma"])
    dark = add_heteroscedastic_noise(dark, p["shot_noise"], p["read_noise"], rng)
    return linear_to_display(dark), p
