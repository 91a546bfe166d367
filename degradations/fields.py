"""Smooth random fields: random values on a coarse grid, upsampled bicubically, rescaled to [0, 1].

The defocus type's depth map is one; haze mixes one into its plausible depth (the torch path
resamples haze's coarse grid with torch).
"""
from __future__ import annotations

import cv2
import numpy as np


def coarse_shape(shape: tuple[int, int], cells: int) -> tuple[int, int]:
    """(gh, gw): ``cells`` cells along the longer side of ``shape`` (H, W), the aspect kept, at least 2 each."""
    h, w = shape
    return max(2, round(cells * h / max(h, w))), max(2, round(cells * w / max(h, w)))


def smooth_field(coarse: np.ndarray, shape: tuple[int, int], margin: float = 0.0) -> np.ndarray:
    """``coarse`` (gh, gw) float32 upsampled bicubically to ``shape`` (H, W) and min-max rescaled to [0, 1].

    The span is divided by max(range, 1e-6) + ``margin``: a positive margin keeps the top just under 1
    (the defocus depth map's 1e-6).
    """
    h, w = shape
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / (max(hi - lo, 1e-6) + margin)

