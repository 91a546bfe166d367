"""Seeded random generators: every draw of the engine comes from one of these.

A ``numpy.random.Generator`` is built from an explicit seed, so the same (seed, index) gives the same
sample in any process and no global RNG state is read or changed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

SeedLike = int | Sequence[int] | np.random.SeedSequence | np.random.Generator


def seed_entropy(seed: int | Sequence[int]) -> list[int]:
    """An int or a sequence of ints such as (seed, epoch, index) as a list of non-negative ints."""
    entropy = [int(seed)] if np.isscalar(seed) else [int(s) for s in seed]
    if any(s < 0 for s in entropy):
        raise ValueError(f"seed entries must be non-negative integers, got {entropy}")
    return entropy


def make_rng(seed: SeedLike) -> np.random.Generator:
    """A generator from an int, a sequence of ints such as (seed, epoch, index), or a Generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.SeedSequence):
        return np.random.Generator(np.random.PCG64(seed))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed_entropy(seed))))


def uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    """One draw from U[bounds[0], bounds[1]) as a Python float."""
    return float(rng.uniform(float(bounds[0]), float(bounds[1])))
