"""Type 11 ``mosaic``: sample an RGGB Bayer pattern and demosaic it with OpenCV.

Severity. Demosaicking error depends mostly on the image and the method, not on a continuous knob.
Measured on photo crops, OpenCV's VNG is the gentlest (it keeps the Bayer samples and interpolates
along gradients) while bilinear and edge-aware (EA) leave clearly more zipper and false colour. So
``level`` moves (a) the probability of a harsh method (bilinear/EA instead of VNG) from
``harsh_method_prob[0]`` to ``[1]`` and (b) the strength of the unsharp masking that camera ISPs
apply after demosaicking, which amplifies zipper and false colour exactly as phones do. One uniform
draw decides the method against the level's probability, so with a fixed seed a method can only get
harsher as the level rises: severity is monotone per seed.
"""
from __future__ import annotations

from typing import Any, Mapping

import cv2
import numpy as np

from .levels import lerp
from .registry import register

# method → (OpenCV code, bit depth it supports best). VNG exists only for 8-bit input.
DEMOSAIC_CODES = {
    "bilinear": (cv2.COLOR_BayerRGGB2RGB, np.uint16),
    "edge_aware": (cv2.COLOR_BayerRGGB2RGB_EA, np.uint16),
    "vng": (cv2.COLOR_BayerRGGB2RGB_VNG, np.uint8),
}
HARSH_METHODS = ("bilinear", "edge_aware")
# Methods whose output equals the Bayer sample at its own site (checked in the tests; with our
# CFA-phase-preserving padding all three do).
SAMPLE_PRESERVING = ("bilinear", "edge_aware", "vng")


def bayer_rggb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) → (H, W) Bayer plane: R at (even, even), G at (even, odd) and (odd, even), B at (odd, odd)."""
    bayer = image[..., 1].copy()
    bayer[0::2, 0::2] = image[0::2, 0::2, 0]
    bayer[1::2, 1::2] = image[1::2, 1::2, 2]
    return bayer


def bayer_mask() -> np.ndarray:
    """The 2×2×3 boolean RGGB tile: mask[y % 2, x % 2, c] is True where channel c is sampled."""
    tile = np.zeros((2, 2, 3), dtype=bool)
    tile[0, 0, 0] = tile[0, 1, 1] = tile[1, 0, 1] = tile[1, 1, 2] = True
    return tile


def demosaic(bayer: np.ndarray, method: str) -> np.ndarray:
    """Demosaic an RGGB plane (H, W) float in [0, 1] → (H, W, 3) float32 with an OpenCV ``method``.

    The plane is quantised to the method's bit depth (16 bits for bilinear/EA, 8 for VNG). A 2-px
    reflect-101 pad keeps the CFA phase (mirroring about a pixel maps even rows to even rows) and gives
    OpenCV's border rows real neighbours; it is cropped off afterwards.
    """
    if method not in DEMOSAIC_CODES:
        raise ValueError(f"unknown demosaic method {method!r}; valid: {', '.join(DEMOSAIC_CODES)}")
    code, dtype = DEMOSAIC_CODES[method]
    scale = float(np.iinfo(dtype).max)
    padded = cv2.copyMakeBorder(np.ascontiguousarray(bayer, dtype=np.float32), 2, 2, 2, 2, cv2.BORDER_REFLECT_101)
    q = (np.clip(padded, 0.0, 1.0) * scale + 0.5).astype(dtype)
    rgb = cv2.cvtColor(q, code)[2:-2, 2:-2]
    return rgb.astype(np.float32) * np.float32(1.0 / scale)


def unsharp(image: np.ndarray, amount: float, sigma: float = 1.0) -> np.ndarray:
    """ISP-style sharpening: image + amount · (image − Gaussian(image, sigma)). Centred, unclipped."""
    if amount <= 0:
        return image
    blurred = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    return image + np.float32(amount) * (image - blurred)


DEFAULT_RANGES = {
    "harsh_method_prob": [0.3, 1.0],  # P(bilinear or EA instead of VNG), level 0 → 1
    "sharpen_amount": [0.0, 1.5],  # post-demosaic unsharp-mask amount, level 0 → 1
}


def draw_mosaic(rng: np.random.Generator, level: float, ranges: Mapping[str, Any]) -> tuple[str, float]:
    """One sample's demosaicking method and unsharp amount (the torch path draws them too, to keep
    its parameter stream aligned, and records the method as ``cpu_method``)."""
    harsh_draw = float(rng.random())
    harsh_pick = HARSH_METHODS[int(rng.integers(len(HARSH_METHODS)))]
    method = harsh_pick if harsh_draw < lerp(ranges["harsh_method_prob"], level) else "vng"
    return method, lerp(ranges["sharpen_amount"], level)


@register("mosaic", ranges=DEFAULT_RANGES)
def mosaic(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    method, amount = draw_mosaic(rng, level, ranges)
    out = unsharp(demosaic(bayer_rggb(image), method), amount)
    return out, {"method": method, "sharpen_amount": amount}
