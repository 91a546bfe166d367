"""Type 7 ``rain_streaks`` (Rain100L/H): sparse noise motion-blurred along a near-vertical angle gives a
streak layer R in [0, 1], blended so rain only brightens: screen 1 − (1 − B)(1 − R) or add B + R.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import cv2
import numpy as np

from .image import pixel_scale
from .levels import lerp
from .registry import register
from .rng import uniform

STREAK_RANGES: dict[str, Any] = {
    "density": [0.0008, 0.004],  # fraction of pixels seeding a streak, per layer, level 0 → 1
    "length": [10.0, 40.0],  # px at 256², level 0 → 1
    "angle": [-30.0, 30.0],  # degrees from vertical, clipped normal around 0
    "angle_sigma": 12.0,
    "layers": [1, 3],  # Rain100H: extra layers fade in with the level
    "layer_angle_spread": 15.0,  # degrees between layers
    "brightness": [0.3, 0.8],  # peak of a streak; the streak layer is semi-transparent
    "width": [0.4, 1.0],  # Gaussian σ across a streak, px at 256²
    "blend": ["screen", "add"],
}


def _across_kernel(width: float) -> np.ndarray:
    """Gaussian profile across a streak, peak 1 (a lone streak keeps its seed's brightness)."""
    half = max(1, int(math.ceil(2.5 * width)))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1, dtype=np.float32) / max(width, 1e-3)) ** 2)
    return kernel / kernel.max()


def streak_layer(
    shape: tuple[int, int],
    seeds_xy: np.ndarray,
    intensities: np.ndarray,
    angle_deg: float,
    length: float,
    width: float,
) -> np.ndarray:
    """One streak layer (H, W) in [0, 1] from seed points on an upright canvas.

    seeds_xy: (N, 2) positions in [0, 1)² of the canvas; intensities: (N,) streak peaks. The canvas
    covers the image rotated by ``angle_deg``; there every streak is vertical, so two box filters
    (a triangular, tapered profile along) and a short Gaussian across are enough; the canvas is
    then rotated onto the image. The rain layer has no scene content to misalign.
    """
    h, w = shape
    theta = math.radians(angle_deg)
    cw = int(math.ceil(w * abs(math.cos(theta)) + h * abs(math.sin(theta)))) + 4
    ch = int(math.ceil(h * abs(math.cos(theta)) + w * abs(math.sin(theta)) + length)) + 4
    canvas = np.zeros((ch, cw), dtype=np.float32)
    cols = (seeds_xy[:, 0] * cw).astype(np.intp)
    rows = (seeds_xy[:, 1] * ch).astype(np.intp)
    canvas[rows, cols] = intensities
    half = max(1, int(round(length / 2)))
    # box ∗ box = a tapered (triangular) streak of length ~L and peak 1/half: the across kernel
    # carries the factor ``half`` back, so a streak's centre reaches its seed's brightness
    canvas = cv2.blur(canvas, (1, half), borderType=cv2.BORDER_CONSTANT)
    canvas = cv2.blur(canvas, (1, half), borderType=cv2.BORDER_CONSTANT)
    across = _across_kernel(width) * np.float32(half)
    canvas = cv2.sepFilter2D(canvas, -1, across, np.ones(1, np.float32), borderType=cv2.BORDER_CONSTANT)
    centre = ((cw - 1) / 2.0, (ch - 1) / 2.0)
    rot = cv2.getRotationMatrix2D(centre, angle_deg, 1.0)
    # move the canvas centre onto the image centre
    rot[0, 2] += (w - 1) / 2.0 - centre[0]
    rot[1, 2] += (h - 1) / 2.0 - centre[1]
    layer = cv2.warpAffine(canvas, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return np.clip(layer, 0.0, 1.0)


def blend_rain(image: np.ndarray, rain: np.ndarray, mode: str) -> np.ndarray:
    """Blend a rain layer (H, W) in [0, 1] onto an image: both modes only brighten."""
    r = rain[..., None]
    if mode == "screen":
        return image + r * (1.0 - image)  # = 1 − (1 − B)(1 − R), exact where R = 0
    if mode == "add":
        return np.minimum(image + r, 1.0)
    raise ValueError(f"rain_streaks: blend must be 'screen' or 'add', got {mode!r}")


def rain_streak_layer(
    shape: tuple[int, int], level: float, rng: np.random.Generator, ranges: Mapping[str, Any], scale: float
) -> tuple[np.ndarray, dict[str, Any]]:
    """The combined streak layer (H, W) in [0, 1] at ``level``, and its parameters."""
    h, w = shape
    lo_layers, hi_layers = (int(v) for v in ranges["layers"])
    if not 1 <= lo_layers <= hi_layers:
        raise ValueError(f"rain_streaks: layers must be [lo, hi] with 1 <= lo <= hi, got {ranges['layers']}")
    a_lo, a_hi = (float(v) for v in ranges["angle"])
    base_angle = float(np.clip(rng.normal(0.0, float(ranges["angle_sigma"])), a_lo, a_hi))
    blend_modes = list(ranges["blend"])
    blend = str(blend_modes[int(rng.integers(len(blend_modes)))])
    # seeds per layer: density × canvas area (about the image area), drawn sparsely
    area = float(h * w)
    max_seeds = int(math.ceil(float(ranges["density"][1]) * area * 1.3))
    density_full = lerp(ranges["density"], level)
    length = lerp(ranges["length"], level) * scale
    # a layer index fades in as the level rises: continuous in level, Rain100H-like at the top
    active = lo_layers + (hi_layers - lo_layers) * level
    rain = np.zeros((h, w), dtype=np.float32)
    layers = []
    for k in range(hi_layers):
        # draw every layer's randomness whatever the level, so levels share their seeds; a higher
        # level keeps the first seeds of a lower one and adds more
        seeds_xy = rng.random((max_seeds, 2), dtype=np.float32)
        intensities = rng.uniform(*ranges["brightness"], size=max_seeds).astype(np.float32)
        spread = float(ranges["layer_angle_spread"])
        angle = base_angle if k == 0 else float(np.clip(base_angle + rng.uniform(-spread, spread), a_lo, a_hi))
        width = uniform(rng, ranges["width"]) * scale
        layer_length = length * float(rng.uniform(0.8, 1.2))
        weight = float(np.clip(active - k, 0.0, 1.0))
        if weight <= 0.0:
            continue
        density = density_full * weight / (1.0 + 0.5 * k)  # farther layers are sparser
        n = min(max_seeds, int(round(density * area)))
        layer = streak_layer((h, w), seeds_xy[:n], intensities[:n], angle, layer_length, width)
        rain = 1.0 - (1.0 - rain) * (1.0 - layer)
        layers.append({"angle": angle, "length": layer_length, "width": width, "density": density, "streaks": n})
    return rain, {"blend": blend, "layers": layers}


@register("rain_streaks", ranges=STREAK_RANGES)
def rain_streaks(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Rain streaks, denser, longer and in more layers as ``level`` rises. image: H×W×3 float32 [0, 1]."""
    scale = pixel_scale(image.shape)
    rain, info = rain_streak_layer(image.shape[:2], level, rng, ranges, scale)
    out = blend_rain(image, rain, info["blend"])
    info["coverage"] = float((rain > 0.1).mean())
    return out, info
