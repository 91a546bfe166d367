"""Snow (id 10), Snow100K style: three flake layers over a veiled background.

I = B'·(1 − M) + M·s, with B' = B·(1 − v) + A·v the background behind a thin veil of airborne snow
(v rises with the level), M = 1 − Π_k (1 − M_k) the union of the small, medium and large flake
layers, and s a near-white flake colour. Each layer is rendered on a grid coarser by its flake
size (large, near flakes are blurry and smooth), so all three layers cost about the same.
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

# (name, downscale of the render grid at 256², density at level 0, density at level 1)
FLAKE_LAYERS: tuple[tuple[str, int, float, float], ...] = (
    ("small", 1, 0.0015, 0.02),
    ("medium", 2, 0.001, 0.015),
    ("large", 4, 0.0008, 0.012),
)

SNOW_RANGES: dict[str, Any] = {
    "density_scale": [0.7, 1.3],  # multiplies every layer's level density
    "flake_radius": [0.8, 1.6],  # σ of a flake's soft disc, in render-grid px
    "fall_angle": [-35.0, 35.0],  # degrees from vertical
    "motion": [0.0, 3.0],  # motion-blur length in render-grid px, level 0 → 1 upper bound
    "opacity": [0.6, 1.0],
    "flake_color": [0.88, 1.0],
    "veil": [0.0, 0.3],  # veiling haze, level 0 → 1
    "veil_color": [0.75, 0.95],
}


def _flake_kernel(sigma: float, angle_deg: float, motion: float) -> np.ndarray:
    """A soft disc (Gaussian with a flattened top) smeared along the fall direction; peak 1."""
    half = int(math.ceil(2.5 * sigma + motion / 2 + 1))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    theta = math.radians(angle_deg)
    dx, dy = math.sin(theta), math.cos(theta)
    kernel = np.zeros_like(xx)
    steps = max(1, int(math.ceil(motion)) + 1)
    for t in np.linspace(-motion / 2, motion / 2, steps):
        r2 = (xx - t * dx) ** 2 + (yy - t * dy) ** 2
        kernel += np.exp(-0.5 * r2 / sigma**2)
    kernel /= kernel.max()
    return np.clip(kernel * 1.4, 0.0, 1.0)  # flat-topped: a disc with a soft edge, not a dot


def flake_layer(shape: tuple[int, int], grid: tuple[int, int], seeds_xy: np.ndarray, opacities: np.ndarray,
                kernel: np.ndarray) -> np.ndarray:
    """One layer's flake alpha (H, W) in [0, 1]: seeds at ``seeds_xy`` in [0, 1)² of a coarse
    ``grid`` (gh, gw), stamped with ``kernel``, upsampled to ``shape``."""
    h, w = shape
    gh, gw = grid
    seeds = np.zeros((gh, gw), dtype=np.float32)
    seeds[(seeds_xy[:, 1] * gh).astype(np.intp), (seeds_xy[:, 0] * gw).astype(np.intp)] = opacities
    layer = cv2.filter2D(seeds, -1, kernel, borderType=cv2.BORDER_CONSTANT)
    if layer.shape != (h, w):
        layer = cv2.resize(layer, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(layer, 0.0, 1.0)


def snow_mask(
    shape: tuple[int, int], level: float, rng: np.random.Generator, ranges: Mapping[str, Any]
) -> tuple[np.ndarray, dict[str, Any]]:
    """The flake alpha M (H, W) in [0, 1] at ``level``, and its parameters."""
    h, w = shape
    scale = pixel_scale(shape)
    density_scale = uniform(rng, ranges["density_scale"])
    angle = uniform(rng, ranges["fall_angle"])
    mask = np.zeros((h, w), dtype=np.float32)
    layers = []
    for name, down, d0, d1 in FLAKE_LAYERS:
        factor = max(1.0, down * scale)
        gh, gw = max(8, round(h / factor)), max(8, round(w / factor))
        # seeds drawn sparsely at the top density; a level keeps the first ones (nested in level)
        max_seeds = int(math.ceil(d1 * float(ranges["density_scale"][1]) * gh * gw))
        seeds_xy = rng.random((max_seeds, 2), dtype=np.float32)
        opacities = rng.uniform(*ranges["opacity"], size=max_seeds).astype(np.float32)
        sigma = uniform(rng, ranges["flake_radius"])
        motion = lerp((0.0, float(rng.uniform(*ranges["motion"]))), level)
        layer_angle = angle + float(rng.uniform(-10, 10))
        density = math.exp(lerp((math.log(d0), math.log(d1)), level)) * density_scale
        kernel = _flake_kernel(sigma, layer_angle, motion)
        n = min(max_seeds, int(round(density * gh * gw)))
        layer = flake_layer((h, w), (gh, gw), seeds_xy[:n], opacities[:n], kernel)
        mask = 1.0 - (1.0 - mask) * (1.0 - layer)
        layers.append(
            {"name": name, "grid_downscale": factor, "density": density, "sigma": sigma, "motion": motion, "flakes": n}
        )
    return mask, {"fall_angle": angle, "layers": layers}


def composite_snow(
    image: np.ndarray, mask: np.ndarray, flake_color: np.ndarray, veil: float, veil_color: np.ndarray
) -> np.ndarray:
    """B' = B·(1 − v) + A·v, then I = B'·(1 − M) + M·s: every output pixel lies between B' and s."""
    veiled = image * (1.0 - veil) + veil_color * veil
    m = mask[..., None]
    return veiled * (1.0 - m) + flake_color * m


@register("snow", ranges=SNOW_RANGES)
def snow(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Falling snow, denser and more veiled as ``level`` rises. image: H×W×3 float32 in [0, 1]."""
    mask, info = snow_mask(image.shape[:2], level, rng, ranges)
    white = uniform(rng, ranges["flake_color"])
    flake_color = np.clip(white + rng.uniform(-0.02, 0.03, size=3), 0, 1).astype(np.float32)
    veil_color = np.clip(uniform(rng, ranges["veil_color"]) + rng.uniform(-0.02, 0.03, size=3), 0, 1)
    veil = lerp(ranges["veil"], level) * float(rng.uniform(0.7, 1.0))
    out = composite_snow(image, mask, flake_color, veil, veil_color.astype(np.float32))
    info.update(
        flake_color=[float(v) for v in flake_color],
        veil=veil,
        veil_color=[float(v) for v in veil_color],
        coverage=float((mask > 0.3).mean()),
    )
    return out, info
