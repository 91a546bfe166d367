"""Type 18 ``downsample_noise_blur_jpeg``: the Real-ESRGAN second-order degradation, same-size output.

Stage 1: blur → random resize → Gaussian/Poisson noise → JPEG. Stage 2: blur (p 0.8) → random resize
→ noise, then in random order [resize to the low-resolution size + sinc (p 0.8)] and [JPEG]. Finally the
low-resolution image is resized back (bicubic) to the exact input size, so pairs are same-size and aligned
(OpenCV's resize maps pixel centres with the half-pixel convention: no shift).

Level. Each continuous severity (blur σ, down-scale, noise, JPEG quality, final scale factor) is
``lerp(mildest → harshest, level · u)`` with its own uniform u drawn independently of the level: level 1
reproduces Real-ESRGAN's uniform ranges, lower levels shrink every range towards its mild end, and with
a fixed seed each severity only grows as the level rises.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import cv2
import numpy as np

from .gaussian_blur import GAUSSIAN_RANGES, random_kernel
from .jpeg import jpeg_compress
from .kernels import apply_kernel, sinc_kernel
from .levels import lerp
from .noise import add_gaussian_noise, add_poisson_noise
from .registry import register

INTERPOLATIONS = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
# Intermediate images never go below this side, so that a 21-px kernel's reflect border still fits.
MIN_SIDE = 24

DEFAULT_RANGES = {
    "final_scale": [1.0, 4.0],  # overall down-scale factor of the low-resolution image (Real-ESRGAN: 4)
    "resize_probs": [0.2, 0.7, 0.1],  # stage 1: up, down, keep
    "resize_range": [0.15, 1.5],
    "sigma": [1.0, 30.0],
    "poisson_scale": [0.05, 3.0],
    "jpeg_quality": [95, 30],  # mild → harsh
    "blur_sigma": [0.2, 3.0],
    "second_blur_prob": 0.8,
    "resize_probs2": [0.3, 0.4, 0.3],
    "resize_range2": [0.3, 1.2],
    "sigma2": [1.0, 25.0],
    "poisson_scale2": [0.05, 2.5],
    "blur_sigma2": [0.2, 1.5],
    "gaussian_noise_prob": 0.5,
    "gray_noise_prob": 0.4,
    "final_sinc_prob": 0.8,
}


def _resize(image: np.ndarray, width: int, height: int, interp: str) -> np.ndarray:
    out = cv2.resize(image, (width, height), interpolation=INTERPOLATIONS[interp])
    return out if out.ndim == 3 else out[..., None]


class _Stages:
    """Shared draws and helpers of one sample: every severity is lerp(range, level · u)."""

    def __init__(self, rng: np.random.Generator, level: float, ranges: Mapping[str, Any]):
        self.rng, self.level, self.ranges = rng, level, ranges
        self.params: dict[str, Any] = {}

    def severity(self) -> float:
        return self.level * float(self.rng.random())

    def blur(self, image: np.ndarray, sigma_key: str, tag: str) -> np.ndarray:
        kernel_ranges = dict(GAUSSIAN_RANGES, sigma=self.ranges[sigma_key])
        kernel, info = random_kernel(self.rng, self.severity(), kernel_ranges)
        self.params[tag] = info
        return apply_kernel(image, kernel)

    def resize(self, image: np.ndarray, probs_key: str, range_key: str, tag: str) -> np.ndarray:
        probs = np.asarray(self.ranges[probs_key], dtype=np.float64)
        mode = ("up", "down", "keep")[int(self.rng.choice(3, p=probs / probs.sum()))]
        interp = tuple(INTERPOLATIONS)[int(self.rng.integers(len(INTERPOLATIONS)))]
        t = self.severity()
        lo, hi = (float(v) for v in self.ranges[range_key])
        scale = {"up": lerp([1.0, hi], t), "down": lerp([1.0, lo], t), "keep": 1.0}[mode]
        h, w = image.shape[:2]
        # Scales compound over the stages; the floor keeps small crops from collapsing below a kernel's reach.
        new_h = max(MIN_SIDE, int(round(h * scale)))
        new_w = max(MIN_SIDE, int(round(w * scale)))
        self.params[tag] = {"mode": mode, "scale": scale, "interpolation": interp, "size": [new_h, new_w]}
        return image if (new_h, new_w) == (h, w) else _resize(image, new_w, new_h, interp)

    def noise(self, image: np.ndarray, sigma_key: str, poisson_key: str, tag: str) -> np.ndarray:
        gaussian = bool(self.rng.random() < float(self.ranges["gaussian_noise_prob"]))
        gray = bool(self.rng.random() < float(self.ranges["gray_noise_prob"]))
        t = self.severity()
        if gaussian:
            sigma = lerp(self.ranges[sigma_key], t)
            self.params[tag] = {"model": "gaussian", "sigma": sigma, "gray": gray}
            return np.clip(add_gaussian_noise(image, sigma / 255.0, gray, self.rng), 0.0, 1.0)
        scale = lerp(self.ranges[poisson_key], t)
        self.params[tag] = {"model": "poisson", "scale": scale, "gray": gray}
        return np.clip(add_poisson_noise(image, scale, gray, self.rng), 0.0, 1.0)

    def jpeg(self, image: np.ndarray, tag: str) -> np.ndarray:
        quality = int(round(lerp(self.ranges["jpeg_quality"], self.severity())))
        self.params[tag] = {"quality": quality}
        return jpeg_compress(image, quality)


@register("downsample_noise_blur_jpeg", ranges=DEFAULT_RANGES)
def downsample_noise_blur_jpeg(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    h, w = image.shape[:2]
    st = _Stages(rng, level, ranges)
    # Draws that do not depend on the image come first, in a fixed order.
    factor = lerp(ranges["final_scale"], st.severity())
    lr_h, lr_w = max(MIN_SIDE, int(round(h / factor))), max(MIN_SIDE, int(round(w / factor)))
    second_blur = bool(rng.random() < float(ranges["second_blur_prob"]))
    final_sinc = bool(rng.random() < float(ranges["final_sinc_prob"]))
    jpeg_last = bool(rng.random() < 0.5)
    sinc_size = 2 * int(rng.integers(3, 11)) + 1  # 7..21
    sinc_t = st.severity()
    st.params.update(final_scale=factor, lr_size=[lr_h, lr_w], jpeg_last=jpeg_last)

    x = st.blur(image, "blur_sigma", "blur1")
    x = st.resize(x, "resize_probs", "resize_range", "resize1")
    x = st.noise(x, "sigma", "poisson_scale", "noise1")
    x = st.jpeg(x, "jpeg1")
    if second_blur:
        x = st.blur(x, "blur_sigma2", "blur2")
    x = st.resize(x, "resize_probs2", "resize_range2", "resize2")
    x = st.noise(x, "sigma2", "poisson_scale2", "noise2")

    def to_lr_with_sinc(y: np.ndarray) -> np.ndarray:
        y = _resize(y, lr_w, lr_h, "bicubic" if y.shape[0] < lr_h else "area")
        if final_sinc:
            lowest = math.pi / 3
            cutoff = lerp([math.pi, lowest], sinc_t)
            st.params["final_sinc"] = {"kernel_size": sinc_size, "cutoff": cutoff}
            y = apply_kernel(y, sinc_kernel(sinc_size, cutoff))
        return y

    if jpeg_last:
        x = st.jpeg(np.clip(to_lr_with_sinc(x), 0.0, 1.0), "jpeg2")
    else:
        x = to_lr_with_sinc(st.jpeg(x, "jpeg2"))
    out = _resize(np.clip(x, 0.0, 1.0), w, h, "bicubic")
    return out, st.params
