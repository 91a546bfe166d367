"""Display values ↔ linear light: the gamma conversions of every type that works in linear light.

Two pairs. The plain power law (the usual approximation of sRGB's transfer curve), used by low
light, the mixed types and the torch path; and the camera pipeline's curve of Brooks et al. (CVPR
2019), the same power law behind a smoothstep tone curve, used by camera noise's unprocessing.
OpenCV's vectorised ``pow`` is ~5x numpy's on float32 (same result to 2e-7).
"""
from __future__ import annotations

import cv2
import numpy as np

DISPLAY_GAMMA = 2.2
# Linear values are floored above 0 before a fractional power: OpenCV's pow takes a slow path (10x)
# on exact zeros and denormals. 1e-10 displays as 3e-5, far below one 8-bit step.
LINEAR_FLOOR = 1e-10
# Floor of the camera curve's linear values (Brooks et al.'s epsilon).
CAMERA_FLOOR = 1e-8


def display_to_linear(image: np.ndarray) -> np.ndarray:
    """Display values (H, W, 3) float32 in [0, 1] → linear light: x^2.2. float32."""
    return cv2.pow(image, DISPLAY_GAMMA)


def linear_to_display(linear):
    """Linear light → display values in [0, 1]: clipped to [LINEAR_FLOOR, 1], then x^(1/2.2).

    ``linear`` is a float32 NumPy array, or a torch tensor (the torch path's batches, any shape);
    the result is of the same kind.
    """
    if isinstance(linear, np.ndarray):
        out = np.clip(linear, LINEAR_FLOOR, 1.0).astype(np.float32, copy=False)
        return cv2.pow(out, 1.0 / DISPLAY_GAMMA)
    return linear.clamp(LINEAR_FLOOR, 1.0).pow(1.0 / DISPLAY_GAMMA)


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """Camera sRGB in [0, 1] → linear light: inverse smoothstep tone curve (of 3x² − 2x³), then x^2.2. float32."""
    t = np.clip(image, 0.0, 1.0).astype(np.float32)
    t *= np.float32(-2.0)
    t += np.float32(1.0)
    np.arcsin(t, out=t)
    t *= np.float32(1.0 / 3.0)
    np.sin(t, out=t)
    np.subtract(np.float32(0.5), t, out=t)
    np.maximum(t, np.float32(CAMERA_FLOOR), out=t)
    return cv2.pow(t, DISPLAY_GAMMA)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Linear light → camera sRGB in [0, 1]: clip, x^(1/2.2), then the smoothstep tone curve. float32."""
    x = np.clip(linear, np.float32(CAMERA_FLOOR), np.float32(1.0)).astype(np.float32)
    x = cv2.pow(x, 1.0 / DISPLAY_GAMMA)
    # smoothstep: x²(3 − 2x)
    y = x * np.float32(-2.0)
    y += np.float32(3.0)
    y *= x
    y *= x
    return y
