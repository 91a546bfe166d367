"""Type 3 ``defocus_blur``: an anti-aliased disk (pillbox) kernel, optionally varying with a smooth
random depth map by the thin-lens circle of confusion."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .fields import smooth_field
from .kernels import apply_kernel, apply_kernels_dft, disk_kernel
from .levels import lerp
from .registry import register

DEFOCUS_RANGES = {
    "radius": [1.0, 10.0],  # disk radius in px, level 0 → 1
    "depth_varying_prob": 0.3,
    "depth_layers": 4,  # blur layers blended per pixel when the depth varies
}
DEPTH_CELLS = 4  # the random depth map varies over about this many cells per side


@register("defocus_blur", ranges=DEFOCUS_RANGES)
def defocus_blur(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Disk blur of radius rising with ``level``; with p ``depth_varying_prob`` the radius varies by depth.

    Depth-varying: thin-lens circle of confusion ∝ |1/d − 1/d_f| over a smooth random depth map,
    scaled so that its largest value is the level's radius. The image is blurred at a few radii and
    each pixel blends the two layers bracketing its own radius.
    """
    radius, pos, params = draw_defocus(rng, level, ranges, image.shape[:2])
    if pos is None:
        return apply_kernel(image, disk_kernel(radius)), params
    n = params["layers"]
    radii = np.linspace(0.0, radius, n)
    layers = [image] + apply_kernels_dft(image, [disk_kernel(r) for r in radii[1:]])
    out = np.zeros_like(image)
    for j, layer in enumerate(layers):
        # tent weights: each pixel blends the two layers that bracket its own radius
        weight = np.maximum(np.float32(0.0), np.float32(1.0) - np.abs(pos - np.float32(j)))
        out += layer * weight[..., None]
    return out, params


def draw_defocus(rng: np.random.Generator, level: float, ranges: Mapping[str, Any],
                 shape: tuple[int, int]) -> tuple[float, np.ndarray | None, dict]:
    """One sample's defocus draws (shared with the torch path): the disk radius, and for a
    depth-varying sample the fractional blur-layer index per pixel (H, W) float32, else None."""
    radius = lerp(ranges["radius"], level)
    varying = bool(rng.random() < float(ranges["depth_varying_prob"]))
    # depth in [1, 5] (arbitrary units), smooth over a square DEPTH_CELLS² grid; drawn always
    coarse = rng.random((DEPTH_CELLS, DEPTH_CELLS)).astype(np.float32)
    depth = 1.0 + 4.0 * smooth_field(coarse, shape, margin=1e-6)
    focus = float(rng.uniform(1.0, 5.0))
    if not varying:
        return radius, None, {"radius": radius, "depth_varying": False}
    coc = np.abs(1.0 / depth - 1.0 / focus)
    coc = coc / (float(coc.max()) + 1e-12) * radius  # per-pixel radius in [0, radius]
    n = max(2, int(ranges["depth_layers"]))
    pos = (coc / (radius / (n - 1))).astype(np.float32)  # fractional layer index per pixel
    return radius, pos, {"radius": radius, "depth_varying": True, "focus_depth": focus, "layers": n}
