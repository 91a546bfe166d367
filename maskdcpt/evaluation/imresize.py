"""MATLAB's ``imresize(A, scale)`` with its default bicubic kernel and antialiasing, exactly.

Metrics whose reference implementation is MATLAB code (NIQE's ½-scale features, BRISQUE) resize with it, and
OpenCV's or PIL's bicubic resizes give different numbers (other kernel support when shrinking, other borders).
What MATLAB does, per axis (both axes use the same rule; the result does not depend on their order beyond
float rounding):

* output length ``ceil(scale · n)``; output pixel ``k`` (1-based) samples input position
  ``u = k / scale + (1 − 1 / scale) / 2``;
* Keys' cubic kernel with a = −0.5 on [−2, 2]; when shrinking (scale < 1) with antialiasing it is stretched to
  ``scale · cubic(scale · x)`` on [−2 / scale, 2 / scale];
* the taps are the integer positions within the support, their weights normalised to sum 1;
* taps outside the image are mirrored with the edge pixel repeated (``… 2 1 1 2 … n n n−1 …``).

Computation is in float64; a uint8 image comes back rounded and clipped to uint8, as MATLAB returns it.
"""
from __future__ import annotations

import math

import numpy as np


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = −0.5 (MATLAB's 'bicubic'), zero outside [−2, 2]."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    inner = 1.5 * ax3 - 2.5 * ax2 + 1
    outer = -0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2
    return np.where(ax <= 1, inner, np.where(ax <= 2, outer, 0.0))


def resize_matrix(in_length: int, scale: float, antialias: bool = True) -> np.ndarray:
    """The (ceil(scale · in_length), in_length) float64 matrix ``M`` with ``resized = M @ signal`` along one axis."""
    if in_length < 1 or scale <= 0:
        raise ValueError(f"resize needs a length >= 1 and a scale > 0, got {in_length} and {scale}")
    out_length = math.ceil(scale * in_length)
    shrink = antialias and scale < 1
    width = 4.0 / scale if shrink else 4.0
    u = np.arange(1, out_length + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = left[:, None] + np.arange(math.ceil(width) + 2)[None, :]  # 1-based input positions
    distance = u[:, None] - taps
    weights = scale * cubic(scale * distance) if shrink else cubic(distance)
    weights /= weights.sum(axis=1, keepdims=True)
    # mirror with the edge repeated: positions 1..n, then n..1, periodically
    period = 2 * in_length
    folded = np.mod(taps - 1, period).astype(np.int64)
    index = np.where(folded < in_length, folded, period - 1 - folded)
    matrix = np.zeros((out_length, in_length))
    np.add.at(matrix, (np.repeat(np.arange(out_length), taps.shape[1]), index.ravel()), weights.ravel())
    return matrix


def imresize(img: np.ndarray, scale: float, antialias: bool = True) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) image by ``scale`` like MATLAB's ``imresize(img, scale)`` (bicubic).

    Float input → float64 output (values may overshoot the input range, as MATLAB's do); uint8 input → uint8
    (rounded, clipped)."""
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize expects an (H, W) or (H, W, C) image, got shape {img.shape}")
    x = img.astype(np.float64)
    rows, cols = resize_matrix(x.shape[0], scale, antialias), resize_matrix(x.shape[1], scale, antialias)
    out = np.einsum("ih,hw...->iw...", rows, x)
    out = np.einsum("jw,iw...->ij...", cols, out)
    if img.dtype == np.uint8:
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    return out
