"""Robust image reading: any common file → H×W×3 RGB array, or a typed skip with a reason.

Conversions (never silent failures):
- 16-bit images stay uint16 until a crop is taken (``to_float`` divides by 65535); float TIFFs
  are clipped to [0, 1].
- gray → the same value in R, G and B; palette / GIF → their RGB colours.
- alpha → composited on **white**. Pixels under zero alpha often hold arbitrary colour (black,
  or leftovers of an editor); compositing makes what the file *shows* the ground truth, and
  white is the background every viewer draws. Dropping alpha would expose those hidden pixels.

Files that cannot serve as training images raise :class:`SkipImage` with a short reason:
``missing``, ``empty``, ``truncated``, ``undecodable``, ``too small (H×W < min)``.
The data sets count these and name them in a log line; nothing is replaced without the count.

"Truncated" is the decoder's verdict, not a guess from the file's last bytes: a JPEG is complete when
its data reaches the end-of-image marker, wherever that lies, so a phone's "motion photo" (a JPEG
followed by a video) decodes like any JPEG. OpenCV 5 refuses a JPEG or PNG that ends early; an
OpenCV that instead pads the missing rows with gray (libjpeg's default, as 4.x did) is detected once
on a tiny file, and JPEGs then go to PIL, which refuses them too.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Iterable

import cv2
import numpy as np


class SkipImage(Exception):
    """A file that cannot be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def reason_counts(reasons: Iterable[str]) -> str:
    """How many files were skipped for each kind of reason, most first: "12 too small, 3 unreadable". A reason's
    kind is its words before any figures in parentheses ("too small (30x30 < 64)" → "too small")."""
    kinds = Counter(re.split(r"\s*[(:]", reason, maxsplit=1)[0].strip() or reason for reason in reasons)
    return ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())


def _is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8"


@functools.lru_cache(maxsize=None)
def opencv_pads_truncated_jpeg() -> bool:
    """Whether this OpenCV decodes a JPEG cut short (filling the rest with gray) instead of refusing it."""
    tile = (np.arange(32 * 32 * 3, dtype=np.uint32) * 2654435761 % 251).astype(np.uint8).reshape(32, 32, 3)
    whole = cv2.imencode(".jpg", tile)[1].tobytes()
    return cv2.imdecode(np.frombuffer(whole[: len(whole) // 2], np.uint8), cv2.IMREAD_UNCHANGED) is not None


def _decode_with_pil(data: bytes) -> tuple[np.ndarray | None, str]:
    """Formats OpenCV's build lacks, JPEGs where OpenCV pads truncated ones, and the reason OpenCV refused a
    file: (BGR(A) or gray array, "") or (None, "truncated" | "undecodable")."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "1"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            array = np.asarray(im)
    except Exception as err:  # noqa: BLE001 — any decoder error means the file cannot be used
        # PIL names a premature end "image file is truncated" (it never pads unless told to).
        return None, "truncated" if "truncated" in str(err).lower() else "undecodable"
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = array[..., [2, 1, 0, 3][: array.shape[2]]]  # to OpenCV's BGR(A) order
    return np.ascontiguousarray(array), ""


def decode(data: bytes) -> tuple[np.ndarray | None, str]:
    """Image file bytes → (array as OpenCV reads it: BGR(A) or gray, ""), or (None, why): "truncated" when the
    data ends before the image does, else "undecodable". Data after the image's end (a motion photo's video)
    is ignored."""
    if not (_is_jpeg(data) and opencv_pads_truncated_jpeg()):
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if array is not None and array.size:
            return array, ""
    array, reason = _decode_with_pil(data)
    if array is None or array.size == 0:
        return None, reason or "undecodable"
    return array, ""


def _to_rgb(array: np.ndarray, keep_gray: bool = False) -> np.ndarray:
    """OpenCV BGR / BGRA / gray / gray+alpha → RGB, alpha composited on white; gray stays
    (H, W) with ``keep_gray``."""
    if array.dtype not in (np.uint8, np.uint16, np.float32):
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        else:
            raise ValueError(f"unsupported pixel type {array.dtype}")
    if array.dtype == np.float32:
        array = np.clip(np.nan_to_num(array), 0.0, 1.0)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return array if keep_gray else cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    channels = array.shape[2]
    if channels == 2:  # gray + alpha
        array = np.concatenate([array[..., :1]] * 3 + [array[..., 1:]], axis=2)
        channels = 4
    if channels == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if channels == 4:
        peak = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(array.dtype, 1.0)
        rgb = array[..., 2::-1].astype(np.float32)
        alpha = array[..., 3:4].astype(np.float32) / peak
        out = rgb * alpha + peak * (1.0 - alpha)
        if array.dtype == np.float32:
            return np.ascontiguousarray(out)
        return np.clip(out + 0.5, 0, peak).astype(array.dtype)
    raise ValueError(f"unsupported channel count {channels}")


def read_image(path: str, min_size: int = 1, keep_gray: bool = False) -> np.ndarray:
    """Read ``path`` → H×W×3 RGB, dtype uint8 / uint16 / float32 ([0, 1]); raises :class:`SkipImage`.

    ``min_size``: images with a side under it are skipped as ``too small``.
    ``keep_gray``: a gray file (without alpha) stays H×W instead of becoming three equal channels.
    """
    return decode_image(read_bytes(path), path, min_size, keep_gray)


def read_bytes(path: str) -> bytes:
    """The file's bytes, as stored; :class:`SkipImage` ("missing", "unreadable (…)") when they cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise SkipImage(path, "missing") from None
    except OSError as err:
        raise SkipImage(path, f"unreadable ({err.strerror})") from None


def decode_image(data: bytes, name: str, min_size: int = 1, keep_gray: bool = False) -> np.ndarray:
    """An image file's bytes (read from disk or out of a shard) → as :func:`read_image`; ``name`` says where
    they came from in the :class:`SkipImage` raised for unusable data."""
    if not data:
        raise SkipImage(name, "empty")
    array, reason = decode(data)
    if array is None:
        raise SkipImage(name, reason)
    try:
        rgb = _to_rgb(array, keep_gray)
    except ValueError as err:
        raise SkipImage(name, str(err)) from None
    h, w = rgb.shape[:2]
    if h < min_size or w < min_size:
        raise SkipImage(name, f"too small ({h}x{w} < {min_size})")
    return rgb


def to_float(array: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float32 image (a crop, ideally) → contiguous float32 in [0, 1]."""
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array, dtype=np.float32) / np.float32(255.0)
    if array.dtype == np.uint16:
        return np.ascontiguousarray(array, dtype=np.float32) / np.float32(65535.0)
    if array.dtype == np.float32:
        return np.ascontiguousarray(array)
    raise ValueError(f"to_float: unsupported dtype {array.dtype}")
