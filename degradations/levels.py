"""Levels: a level in [0, 1] is a type's severity, mapped monotonically onto its parameters."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def check_level(level: float) -> float:
    """``level`` as a float; ValueError unless it is finite and in [0, 1]."""
    level = float(level)
    if not np.isfinite(level) or not 0.0 <= level <= 1.0:
        raise ValueError(f"level must lie in [0, 1], got {level}")
    return level


def lerp(bounds: Sequence[float], level: float) -> float:
    """Linear map of ``level`` in [0, 1] onto ``bounds = (at level 0, at level 1)``."""
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo + (hi - lo) * float(level)


def log_lerp(bounds: Sequence[float], level: float) -> float:
    """Geometric map of ``level`` onto positive ``bounds``: equal level steps, equal ratios."""
    lo, hi = float(bounds[0]), float(bounds[1])
    return math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * float(level))
