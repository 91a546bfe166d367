"""Progressive synthetic → real mixing (the RealRestorer recipe) as a pure function of the step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class MixingSchedule:
    """The synthetic share of the samples, piecewise linear in the training step.

    ``points``: (step, synthetic share in [0, 1]) with increasing steps; before the first
    point the first share holds, after the last the last. Being a pure function of the step,
    a resumed run continues the schedule exactly.
    """

    points: tuple[tuple[int, float], ...]

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("schedule: give at least one (step, synthetic share) point")
        steps = [int(p[0]) for p in self.points]
        if any(b <= a for a, b in zip(steps, steps[1:])) or steps[0] < 0:
            raise ValueError(f"schedule: steps must be non-negative and strictly increasing, got {steps}")
        for step, share in self.points:
            if not 0.0 <= float(share) <= 1.0:
                raise ValueError(f"schedule: synthetic share at step {step} must lie in [0, 1], got {share}")

    @classmethod
    def from_ratios(cls, spec: Sequence[Sequence[float]]) -> "MixingSchedule":
        """From config rows ``[step, synthetic, real]``, e.g. ``[[0, 100, 0], [50000, 20, 80]]``."""
        points = []
        for row in spec:
            if len(row) != 3:
                raise ValueError(f"schedule: each row must be [step, synthetic, real], got {list(row)}")
            step, syn, real = row
            if syn < 0 or real < 0 or syn + real <= 0:
                raise ValueError(f"schedule: ratio {syn}:{real} at step {step} must be non-negative, not 0:0")
            points.append((int(step), float(syn) / float(syn + real)))
        return cls(tuple(points))

    def synthetic_share(self, step):
        """Share of synthetic samples at ``step`` (int or integer array)."""
        xs = np.array([p[0] for p in self.points], np.float64)
        ys = np.array([p[1] for p in self.points], np.float64)
        out = np.interp(np.asarray(step, np.float64), xs, ys)
        return float(out) if np.ndim(out) == 0 else out
