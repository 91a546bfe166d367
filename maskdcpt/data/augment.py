"""Geometric augmentation drawn from an explicit generator: a crop window and one of the 8
dihedral transforms (rot90 × flip).

Plain NumPy rather than an augmentation library: the draws come from the sample's own
generator (seeded by (seed, source, epoch, item, crop)), so they never repeat across DataLoader
workers, and LQ and GT receive the very same window and transform by construction — a
library pipeline would need reseeding per call to guarantee either.
"""
from __future__ import annotations

import numpy as np


def draw_geometry(rng: np.random.Generator, height: int, width: int, size: int) -> tuple[int, int, int]:
    """(top, left, dihedral k in 0..7) for a ``size``² crop of an ``height``×``width`` image."""
    if height < size or width < size:
        raise ValueError(f"draw_geometry: image {height}x{width} is smaller than the crop {size}")
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    return top, left, int(rng.integers(0, 8))


def dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """Apply transform ``k``: rotate by 90°·(k mod 4), then mirror left-right if k >= 4."""
    out = np.rot90(image, k % 4, axes=(0, 1))
    if k >= 4:
        out = out[:, ::-1]
    return out


def crop_and_transform(image: np.ndarray, top: int, left: int, size: int, k: int) -> np.ndarray:
    """The augmented crop as a view where possible (H×W×C, same dtype)."""
    return dihedral(image[top:top + size, left:left + size], k)
