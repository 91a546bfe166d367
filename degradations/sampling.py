"""Random draws and level mapping.

Every draw comes from a ``numpy.random.Generator`` built from an explicit seed, so the same
(seed, index) gives the same sample in any process and no global RNG state is read or changed.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

SeedLike = int | Sequence[int] | np.random.SeedSequence | np.random.Generator


def make_rng(seed: SeedLike) -> np.random.Generator:
    """A generator from an int, a sequence of ints such as (seed, epoch, index), or a Generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.SeedSequence):
        return np.random.Generator(np.random.PCG64(seed))
    entropy = [int(seed)] if np.isscalar(seed) else [int(s) for s in seed]
    if any(s < 0 for s in entropy):
        raise ValueError(f"seed entries must be non-negative integers, got {entropy}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def lerp(bounds: Sequence[float], level: float) -> float:
    """Linear map of ``level`` in [0, 1] onto ``bounds = (at level 0, at level 1)``."""
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo + (hi - lo) * float(level)


def log_lerp(bounds: Sequence[float], level: float) -> float:
    """Geometric map of ``level`` onto positive ``bounds``: equal level steps, equal ratios."""
    lo, hi = float(bounds[0]), float(bounds[1])
    return math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * float(level))


def uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    return float(rng.uniform(float(bounds[0]), float(bounds[1])))
