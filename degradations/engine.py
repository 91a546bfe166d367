"""The on-the-fly degradation engine: clean image + seed → labelled degraded sample."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import EngineConfig
from .image import as_float_image
from .levels import check_level
from .registry import resolve
from .rng import SeedLike, make_rng


@dataclass
class DegradedSample:
    """lq, gt: H×W×3 float32 in [0, 1], aligned. params: JSON-serialisable parameters."""

    lq: np.ndarray
    gt: np.ndarray
    type_id: int
    type_name: str
    level: float
    params: dict[str, Any] = field(default_factory=dict)


class DegradationEngine:
    """Draws a type (by the config's weights) and a level, and applies it.

    Determinism: ``sample(image, seed)`` depends only on the image, the config and ``seed``
    (an int or a tuple such as (seed, epoch, index)); nothing global is read or changed.
    """

    def __init__(self, config: EngineConfig | dict | None = None):
        if config is None or isinstance(config, dict):
            config = EngineConfig.from_dict(config)
        self.config = config
        self.types = [config.resolve(name) for name in config.type_names]
        self.type_ids = [t.id for t in self.types]
        weights = np.array([float(config.weights.get(t.name, 1.0)) for t in self.types], dtype=np.float64)
        if weights.sum() <= 0:
            raise ValueError("weights: at least one selected type needs a positive weight")
        self.probabilities = weights / weights.sum()
        self._ranges = {t.name: config.ranges_for(t.name) for t in self.types}

    @property
    def label_names(self) -> tuple[str, ...]:
        """The name of every type id this engine can label, in id order (the 19, then its extra types)."""
        return self.config.label_names

    @property
    def num_labels(self) -> int:
        return len(self.config.label_names)

    def resolve(self, type_: str | int):
        """A type of this engine (built-in or extra) by name or id."""
        return self.config.resolve(type_)

    def draw(self, seed: SeedLike) -> tuple[str, float, np.random.Generator]:
        """The type name and level that ``seed`` selects, and the generator to continue with."""
        rng = make_rng(seed)
        choice = int(rng.choice(len(self.types), p=self.probabilities))
        lo, hi = self.config.level_range
        level = float(rng.uniform(lo, hi)) if hi > lo else lo
        return self.types[choice].name, level, rng

    def sample(self, image: np.ndarray, seed: SeedLike) -> DegradedSample:
        """Degrade ``image`` with a randomly drawn type and level."""
        name, level, rng = self.draw(seed)
        return self.apply(image, name, level, rng)

    def apply(self, image: np.ndarray, type_: str | int, level: float, seed: SeedLike) -> DegradedSample:
        """Degrade ``image`` with a given type at ``level`` in [0, 1]."""
        gt = as_float_image(image)
        level = check_level(level)
        spec = self.config.resolve(type_)
        ranges = self._ranges.get(spec.name)
        if ranges is None:  # a type outside the selection may still be applied explicitly
            ranges = self.config.ranges_for(spec.name)
        lq, params = spec.fn(gt.copy(), level, make_rng(seed), ranges)
        if lq.shape != gt.shape:
            raise RuntimeError(f"{spec.name} changed the image shape {gt.shape} → {lq.shape}")
        lq = np.clip(lq, 0.0, 1.0).astype(np.float32, copy=False)
        return DegradedSample(lq, gt, spec.id, spec.name, level, params)


def degrade(image: np.ndarray, type_: str | int, level: float, seed: SeedLike = 0, **overrides: Any) -> DegradedSample:
    """One-call convenience: ``degrade(img, "haze", 0.7, seed=3, beta=[0.5, 2])``."""
    name = resolve(type_).name
    config = EngineConfig(types=[name], params={name: overrides} if overrides else {})
    return DegradationEngine(config).apply(image, name, level, seed)
