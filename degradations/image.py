"""Image arrays and files: the input checks and conversions every degradation shares, and the one
reader and writer of image files (uint8 RGB)."""
from __future__ import annotations

import math

import os

import cv2
import numpy as np

MIN_SIZE = 32
# The literature's pixel ranges (streak length, drop radius, flake size) are for crops of about 256².
REFERENCE_SIZE = 256.0


def as_float_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return ``image`` as a contiguous H×W×3 float32 array in [0, 1].

    Accepts uint8 (divided by 255) or float arrays already in [0, 1]. Raises ``ValueError``
    naming ``name`` for a wrong shape, a side under 32 px, NaN/inf, or values outside [0, 1].
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: expected shape H×W×3, got {tuple(image.shape)}")
    h, w = image.shape[:2]
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ValueError(f"{name}: {h}×{w} is smaller than the minimum {MIN_SIZE}×{MIN_SIZE}")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image, dtype=np.float32) / np.float32(255.0)
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"{name}: dtype {image.dtype} is not supported; use uint8 or float in [0, 1]")
    out = np.ascontiguousarray(image, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{name}: contains NaN or inf")
    lo, hi = float(out.min()), float(out.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{name}: values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
    return np.clip(out, 0.0, 1.0, out=out) if (lo < 0 or hi > 1) else out


def pixel_scale(shape: tuple[int, ...]) -> float:
    """√(H·W) / REFERENCE_SIZE for ``shape`` (H, W, …): lengths given at 256² are multiplied by this."""
    return math.sqrt(shape[0] * shape[1]) / REFERENCE_SIZE


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] → uint8 with rounding (the convention of OpenCV and BasicSR)."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)



def read_rgb(path: str) -> np.ndarray | None:
    """An image file as H×W×3 uint8 RGB (gray and alpha are converted), or None if OpenCV cannot read it."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_png(path: str, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image (PNG, or the format the suffix names). Encoded by OpenCV but written by Python, so that a missing folder, a
    read-only one or a full disk raises an OSError naming the path and the reason (``cv2.imwrite`` only says False)."""
    suffix = os.path.splitext(path)[1] or ".png"
    try:
        ok, encoded = cv2.imencode(suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"cannot write image {path!r}: OpenCV has no encoder for {suffix!r}")
    with open(path, "wb") as f:
        f.write(encoded.tobytes())
