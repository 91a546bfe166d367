"""Haze (id 6): the atmospheric scattering model I = J·t + A·(1 − t), t = exp(−β·d).

Without a depth network the depth d is a plausible stand-in built from three cues that hold for
most outdoor photos: the top of the frame is farther (vertical ramp), depth varies smoothly
(a low-resolution random field), and bright, low-texture regions are often sky (the image's own
low-frequency luminance). d lies in [d_min, 1], so β is the optical thickness of the farthest point.
"""
from __future__ import annotations

from typing import Any, Mapping

import cv2
import numpy as np

from .fields import coarse_shape, smooth_field
from .levels import log_lerp
from .registry import register
from .rng import uniform

HAZE_RANGES: dict[str, Any] = {
    # β at level 0 and at level 1 (geometric map), the farthest point has t = exp(−β).
    "beta": [0.15, 2.8],
    # relative jitter of β around its level value, so a level is not one fixed thickness
    "beta_jitter": 0.1,
    # airlight brightness, RESIDE: [0.7, 1.0]
    "airlight": [0.7, 1.0],
    # per-channel deviation of the airlight colour (a slightly blue or warm sky)
    "airlight_tint": 0.04,
    # nearest relative depth (bottom of the frame, dark foreground)
    "depth_min": [0.1, 0.3],
    # how much each depth cue weighs, each drawn in this range then normalised
    "ramp_weight": [0.3, 1.0],
    "field_weight": [0.1, 0.6],
    "luminance_weight": [0.0, 0.5],
}


def low_frequency_luminance(image: np.ndarray, cells: int = 12) -> np.ndarray:
    """The image's luminance (H, W) in [0, 1] with only its coarse structure kept."""
    h, w = image.shape[:2]
    luma = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gh, gw = coarse_shape((h, w), cells)
    small = cv2.resize(luma, (gw, gh), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)


def draw_depth_cues(rng: np.random.Generator, ranges: Mapping[str, Any], shape: tuple[int, int]) -> dict[str, Any]:
    """The random part of one plausible depth (shared with the torch path), in draw order: the three
    cue weights as drawn (ramp, field, luminance; not yet normalised), the field's grid size
    ``cells``, the nearest depth ``depth_min`` and the field's coarse values (float32, :func:`coarse_shape`)."""
    weights = [uniform(rng, ranges[key]) for key in ("ramp_weight", "field_weight", "luminance_weight")]
    cells = int(rng.integers(3, 7))
    d_min = uniform(rng, ranges["depth_min"])
    coarse = rng.random(coarse_shape(shape, cells), dtype=np.float32)
    return {"weights": weights, "cells": cells, "depth_min": d_min, "coarse": coarse}


def plausible_depth(
    image: np.ndarray, rng: np.random.Generator, ranges: Mapping[str, Any]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Relative depth (H, W) in [depth_min, 1], far at the top, and the weights that made it."""
    h, w = image.shape[:2]
    cues = draw_depth_cues(rng, ranges, (h, w))
    weights = np.array(cues["weights"], dtype=np.float32)
    weights /= max(float(weights.sum()), 1e-6)
    cells, d_min = cues["cells"], cues["depth_min"]
    ramp = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None]
    field = smooth_field(cues["coarse"], (h, w))
    luma = low_frequency_luminance(image)
    depth = weights[0] * ramp + weights[1] * field + weights[2] * luma
    lo, hi = float(depth.min()), float(depth.max())
    depth = d_min + (1.0 - d_min) * (depth - lo) / max(hi - lo, 1e-6)
    info = {"depth_weights": [round(float(v), 4) for v in weights], "depth_cells": cells, "depth_min": d_min}
    return depth.astype(np.float32), info


def draw_airlight_beta(rng: np.random.Generator, level: float, ranges: Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """The airlight A (3,) float32, slightly tinted, and the jittered optical thickness β at ``level``
    (shared with the torch path); drawn after the depth cues."""
    brightness = uniform(rng, ranges["airlight"])
    tint = float(ranges["airlight_tint"])
    airlight = np.clip(brightness + rng.uniform(-tint, tint, size=3), 0.0, 1.0).astype(np.float32)
    jitter = float(ranges["beta_jitter"])
    beta = log_lerp(ranges["beta"], level) * (1.0 + float(rng.uniform(-jitter, jitter)))
    return airlight, beta


def transmission(depth: np.ndarray, beta: float) -> np.ndarray:
    """t = exp(−β·d) in (0, 1]; decreasing in β for every pixel."""
    return np.exp(-np.float32(beta) * depth).astype(np.float32)


def scatter(image: np.ndarray, t: np.ndarray, airlight: np.ndarray) -> np.ndarray:
    """I = J·t + A·(1 − t): each pixel lies between the clean pixel and the airlight, per channel."""
    t3 = t[..., None]
    return image * t3 + airlight.astype(np.float32) * (1.0 - t3)


@register("haze", ranges=HAZE_RANGES)
def haze(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Haze of thickness rising with ``level``. image: H×W×3 float32 in [0, 1]."""
    # Draw every random quantity first, independent of the level, so one seed at rising levels
    # gives the same scene with thicker haze.
    depth, depth_info = plausible_depth(image, rng, ranges)
    airlight, beta = draw_airlight_beta(rng, level, ranges)
    t = transmission(depth, beta)
    out = scatter(image, t, airlight)
    params = {
        "beta": beta,
        "airlight": [float(v) for v in airlight],
        "transmission_min": float(t.min()),
        "transmission_mean": float(t.mean()),
        **depth_info,
    }
    return out, params
