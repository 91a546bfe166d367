"""Type 1 ``camera_noise``: real sensor noise by unprocessing (Brooks et al., CVPR 2019).

sRGB → inverse tone curve → inverse gamma → camera RGB (inverse CCM) → inverse white balance → RGGB
mosaic → shot + read noise → demosaic → white balance → CCM → gamma → tone curve.

``unprocess(img, meta)`` and ``process(raw, meta)`` work on full H×W×3 camera-RGB images so that the
pair can be tested as an exact round trip; the type itself mosaics and demosaics in between.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import cv2
import numpy as np

from .color import linear_to_srgb, srgb_to_linear
from .levels import lerp
from .mosaic import bayer_rggb, demosaic
from .noise import add_heteroscedastic_noise
from .registry import register
from .rng import uniform

# XYZ → camera-RGB colour matrices of four real cameras (the set Brooks et al. mix; they are the
# ColorMatrix entries of the cameras' DNG profiles, as in the Darmstadt Noise Dataset).
XYZ_TO_CAMS = np.array(
    [
        [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
        [[0.4913, -0.0541, -0.0202], [-0.6130, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
        [[0.8380, -0.2630, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
        [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.0970, 0.1581, 0.5181]],
    ]
)
# Linear sRGB (D65) → XYZ.
RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
# Highlights above this gray level keep (part of) their brightness in safe gain inversion.
HIGHLIGHT_THRESHOLD = 0.9


@dataclass
class CameraMeta:
    """What one sampled camera needs: sRGB → camera matrix and the white-balance gains."""

    rgb2cam: list[list[float]]  # 3×3, rows sum to 1 (white maps to white before white balance)
    rgb_gain: float  # overall brightness gain (Brooks: 1 / N(0.8, 0.1))
    red_gain: float
    blue_gain: float

    @property
    def cam2rgb(self) -> np.ndarray:
        return np.linalg.inv(np.asarray(self.rgb2cam, dtype=np.float64))


def random_meta(rng: np.random.Generator, ranges: Mapping[str, Any]) -> CameraMeta:
    """A random camera: a convex mix of the four XYZ→camera matrices, random white-balance gains."""
    weights = rng.uniform(1e-8, 1.0, size=len(XYZ_TO_CAMS))
    xyz2cam = np.tensordot(weights / weights.sum(), XYZ_TO_CAMS, axes=1)
    rgb2cam = xyz2cam @ RGB_TO_XYZ
    rgb2cam = rgb2cam / rgb2cam.sum(axis=1, keepdims=True)
    rgb_gain = 1.0 / float(np.clip(rng.normal(ranges["rgb_gain_mean"], ranges["rgb_gain_std"]), 0.5, 1.5))
    return CameraMeta(
        rgb2cam=rgb2cam.tolist(),
        rgb_gain=rgb_gain,
        red_gain=uniform(rng, ranges["red_gain"]),
        blue_gain=uniform(rng, ranges["blue_gain"]),
    )


def _apply_matrix(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    # (H, W, 3) @ (3, 3)ᵀ; cv2.transform is a fast per-pixel 3×3 product.
    return cv2.transform(image, np.asarray(matrix, dtype=np.float32))


def _gains(meta: CameraMeta) -> np.ndarray:
    return np.array([meta.red_gain, 1.0, meta.blue_gain], dtype=np.float32) * np.float32(meta.rgb_gain)


def unprocess(image: np.ndarray, meta: CameraMeta) -> np.ndarray:
    """sRGB (H, W, 3) in [0, 1] → linear camera RGB before white balance (H, W, 3) in [0, 1]."""
    x = _apply_matrix(srgb_to_linear(image), meta.rgb2cam)
    # Safe inversion of the gains: near-white pixels are divided by less, so that processing
    # (which multiplies and clips) keeps them white rather than inventing colour in highlights.
    inv = (1.0 / _gains(meta)).astype(np.float32)
    gray = cv2.transform(x, np.full((1, 3), 1.0 / 3.0, dtype=np.float32))
    bright = gray > HIGHLIGHT_THRESHOLD
    highlights = x[bright]  # (N, 3) copy, usually few pixels: the soft inversion runs on them only
    x *= inv
    if highlights.size:
        mask = np.square((gray[bright] - HIGHLIGHT_THRESHOLD) / (1.0 - HIGHLIGHT_THRESHOLD))[:, None]
        x[bright] = highlights * np.maximum(mask + (1.0 - mask) * inv, inv)
    return np.clip(x, 0.0, 1.0, out=x)


def process(raw: np.ndarray, meta: CameraMeta) -> np.ndarray:
    """Linear camera RGB (H, W, 3) → sRGB (H, W, 3) in [0, 1]: white balance, CCM, gamma, tone curve."""
    x = np.clip(raw * _gains(meta), 0.0, 1.0)
    return linear_to_srgb(_apply_matrix(x, meta.cam2rgb))


DEFAULT_RANGES = {
    "shot_noise": [1e-4, 1.2e-2],  # shot-noise variance factor, level 0 → 1 (log-linear)
    "read_noise_slope": 2.18,  # log read = slope · log shot + intercept + N(0, std)
    "read_noise_intercept": 1.20,
    "read_noise_std": 0.26,
    "red_gain": [1.9, 2.4],
    "blue_gain": [1.5, 1.9],
    "rgb_gain_mean": 0.8,
    "rgb_gain_std": 0.1,
}


@register("camera_noise", ranges=DEFAULT_RANGES)
def camera_noise(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Shot noise rises log-linearly with ``level``; the camera, gains and read-noise jitter are random."""
    meta = random_meta(rng, ranges)
    lo, hi = ranges["shot_noise"]
    log_shot = lerp([math.log(lo), math.log(hi)], level)
    log_read = (
        float(ranges["read_noise_slope"]) * log_shot
        + float(ranges["read_noise_intercept"])
        + float(rng.normal(0.0, float(ranges["read_noise_std"])))
    )
    shot, read = math.exp(log_shot), math.exp(log_read)
    bayer = bayer_rggb(unprocess(image, meta))
    noisy = add_heteroscedastic_noise(bayer, shot, read, rng)
    out = process(demosaic(noisy, "bilinear"), meta)
    params = {"shot_noise": shot, "read_noise": read, **asdict(meta)}
    return out, params
