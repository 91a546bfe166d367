"""PIQE, the no-reference "Perception based Image Quality Evaluator" (Venkatanath et al., NCC 2015), as MATLAB's
``piqe`` computes it. Weight-free: nothing is fitted or loaded.

**Scale.** [0, 100], lower is better: MATLAB's bands are 0–20 excellent, 21–35 good, 36–50 fair, 51–80 poor,
81–100 bad. A flat image (no block with spatial activity) scores 100. Within 1 of pyiqa's port on the
8-bit images of ``tests/data/iqa`` (see ``scale_to_max`` for the one place pyiqa departs from MATLAB).

**Conventions** (MATLAB's):

* grey = ``round(255 · (0.298936 R + 0.587043 G + 0.114021 B))`` (``rgb2gray``, then 8-bit levels);
* the grey image is padded by replicating its last row/column up to a multiple of 16, then normalised to
  MSCN coefficients ``(I − μ) / (σ + 1)`` (7×7 Gaussian window, σ_w = 7/6, replicated borders);
* per 16×16 block with variance (n − 1 normalised) above 0.1 (an *active* block):
  - *noticeable artifact*: some run of 6 consecutive pixels along one of its four edges has a standard
    deviation below 0.1 (blockiness, sudden flat patches);
  - *noise*: σ_block > 2·β with β = |σ_block − r| / max(σ_block, r), r = std(centre) / std(surround), the centre
    being the block's 8th and 9th columns and the surround every column but the 8th and 10th (MATLAB deletes
    the 8th, then the 9th of what is left);
* score = 100 · (1 + Σ_active [artifact·(1 − var) + noise·var]) / (1 + number of active blocks).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import convolve

from .metrics import to_unit_array

BLOCK_SIZE = 16
ACTIVITY_THRESHOLD = 0.1
IMPAIRED_THRESHOLD = 0.1
SEGMENT = 6  # pixels per edge segment
_GRAY_WEIGHTS = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])  # MATLAB rgb2gray
_YIQ_Y_WEIGHTS = np.array([0.299, 0.587, 0.114])  # pyiqa's grey
CONVENTIONS = ("matlab", "pyiqa")


def _gaussian_window() -> np.ndarray:
    r = np.arange(-3, 4)
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (7 / 6) ** 2))
    return g / g.sum()


def _gray_levels(img: np.ndarray | torch.Tensor, convention: str) -> np.ndarray:
    unit = to_unit_array(img)
    if unit.ndim == 3:
        unit = unit @ (_GRAY_WEIGHTS if convention == "matlab" else _YIQ_Y_WEIGHTS)
    if convention == "pyiqa" and unit.max() > 0:
        unit = unit / unit.max()
    return np.round(255.0 * unit)


def _pad(gray: np.ndarray, convention: str) -> np.ndarray:
    h, w = gray.shape
    if convention == "matlab":
        return np.pad(gray, ((0, -h % BLOCK_SIZE), (0, -w % BLOCK_SIZE)), mode="edge")
    # pyiqa mirrors by the remainder itself and later drops what does not fill a block
    return np.pad(gray, ((0, h % BLOCK_SIZE), (0, w % BLOCK_SIZE)), mode="symmetric")


def _std(x: np.ndarray, axis) -> np.ndarray:
    return np.std(x, axis=axis, ddof=1)


def piqe(img: np.ndarray | torch.Tensor, convention: str = "matlab") -> float:
    """PIQE of an image: uint8/uint16 or float [0, 1] (H, W, 3) RGB or (H, W) grey, or a (3, H, W) tensor on
    [0, 1]; lower is better (module docstring).

    ``convention='pyiqa'`` reproduces pyiqa's port, which departs from MATLAB in three places: its grey is
    0.299 R + 0.587 G + 0.114 B **stretched to the image's own maximum** before rounding (so an image whose
    brightest grey is not white, a blurred or a low-light one, scores differently: 68.5 → 78.7 on
    ``tests/data/iqa/chelsea_blur2.png``); and a height or width that is not a multiple of 16 is mirrored by
    its remainder and the incomplete blocks dropped. Use it only to put numbers next to papers computed with
    pyiqa; the default is MATLAB's definition.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"PIQE convention must be one of {CONVENTIONS}, got {convention!r}")
    padded = _pad(_gray_levels(img, convention), convention)
    window = _gaussian_window()
    mu = convolve(padded, window, mode="nearest")
    sigma = np.sqrt(np.abs(convolve(padded * padded, window, mode="nearest") - mu * mu))
    coeffs = (padded - mu) / (sigma + 1.0)

    rows, cols = padded.shape[0] // BLOCK_SIZE, padded.shape[1] // BLOCK_SIZE
    coeffs = coeffs[: rows * BLOCK_SIZE, : cols * BLOCK_SIZE]
    blocks = coeffs.reshape(rows, BLOCK_SIZE, cols, BLOCK_SIZE).swapaxes(1, 2).reshape(-1, BLOCK_SIZE, BLOCK_SIZE)
    variance = np.var(blocks, axis=(1, 2), ddof=1)
    active = variance > ACTIVITY_THRESHOLD
    if not active.any():
        return 100.0
    blocks, variance = blocks[active], variance[active]

    # noticeable artifacts: a flat run of SEGMENT pixels along an edge
    edges = np.stack([blocks[:, 0, :], blocks[:, :, -1], blocks[:, -1, :], blocks[:, :, 0]], axis=1)
    runs = np.lib.stride_tricks.sliding_window_view(edges, SEGMENT, axis=-1)  # (N, 4, 11, SEGMENT)
    artifact = (_std(runs, axis=-1) < IMPAIRED_THRESHOLD).any(axis=(1, 2))

    # noise: centre-surround deviation against the block's own deviation
    block_sigma = np.sqrt(variance)
    centre = blocks[:, :, 7:9]
    surround = blocks[:, :, [c for c in range(BLOCK_SIZE) if c not in (7, 9)]]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = _std(centre.reshape(len(blocks), -1), axis=1) / _std(surround.reshape(len(blocks), -1), axis=1)
        ratio = np.where(np.isnan(ratio), 0.0, ratio)
        beta = np.abs(block_sigma - ratio) / np.maximum(block_sigma, ratio)
        noise = block_sigma > 2 * beta

    distortion = np.sum(artifact * (1 - variance) + noise * variance)
    return float(100.0 * (distortion + 1) / (active.sum() + 1))
