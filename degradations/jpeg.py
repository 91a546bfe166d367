"""Type 5 ``jpeg``: JPEG compression by OpenCV's encoder, quality falling with the level."""
from __future__ import annotations

from typing import Any, Mapping

import cv2
import numpy as np

from .image import to_uint8
from .levels import lerp
from .registry import register

# libjpeg chroma subsampling codes understood by IMWRITE_JPEG_SAMPLING_FACTOR.
SAMPLING_420 = 0x221111
SAMPLING_444 = 0x111111


def jpeg_roundtrip_uint8(rgb: np.ndarray, quality: int, subsample_chroma: bool = True) -> np.ndarray:
    """Encode an (H, W, 3) uint8 RGB image as JPEG at ``quality`` and decode it again (uint8 RGB)."""
    flags = [
        cv2.IMWRITE_JPEG_QUALITY,
        int(quality),
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
        SAMPLING_420 if subsample_chroma else SAMPLING_444,
    ]
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), flags)
    if not ok:
        raise RuntimeError(f"cv2.imencode failed at JPEG quality {quality}")
    return cv2.cvtColor(cv2.imdecode(buffer, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def jpeg_compress(image: np.ndarray, quality: int, subsample_chroma: bool = True) -> np.ndarray:
    """Float (H, W, 3) in [0, 1] → JPEG at ``quality`` → float32 in [0, 1] (quantised to 8 bits)."""
    decoded = jpeg_roundtrip_uint8(to_uint8(image), quality, subsample_chroma)
    return decoded.astype(np.float32) * np.float32(1.0 / 255.0)


DEFAULT_RANGES = {
    "quality": [95, 10],  # JPEG quality at level 0 → level 1
    "chroma_420_prob": 0.8,  # 4:2:0 chroma subsampling (the common default), else 4:4:4
}


@register("jpeg", ranges=DEFAULT_RANGES)
def jpeg(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Quality = round(lerp(quality, level)); chroma subsampling is drawn at random."""
    subsample = bool(rng.random() < float(ranges["chroma_420_prob"]))
    quality = int(round(lerp(ranges["quality"], level)))
    quality = min(100, max(1, quality))
    params = {"quality": quality, "chroma_subsampling": "420" if subsample else "444"}
    return jpeg_compress(image, quality, subsample), params
