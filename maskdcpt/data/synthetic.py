"""Synthetic pairs: clean image → crop with flip/rot90 → a degradation drawn by the engine."""
from __future__ import annotations

from typing import Any

import numpy as np

from degradations import DegradationEngine, EngineConfig

from .augment import crop_and_transform, draw_geometry
from .decode import to_float
from .index import CorpusIndex
from .source import CroppingSource

_DEGRADE_TAG = 1  # the engine's draws use (seed, source, epoch, item, crop, 1); geometry uses ..., 0


class SyntheticSource(CroppingSource):
    """Clean images of ``index`` degraded on the fly.

    ``sample(key)`` with key = (source, epoch, item, crop) gives lq, gt (3, S, S) float32 in
    [0, 1], the drawn type id, level and parameters. The crop is degraded, not the photo, and
    the K crops of an image share one decode (see :class:`CroppingSource`).
    """

    def __init__(self, index: CorpusIndex, engine: DegradationEngine | EngineConfig | dict | None, *,
                 source_id: int, seed: int, crop_size: int = 128, min_size: int = 0, name: str = "synthetic"):
        super().__init__(index, source_id=source_id, seed=seed, crop_size=crop_size, min_size=min_size, name=name)
        self.engine = engine if isinstance(engine, DegradationEngine) else DegradationEngine(engine)

    def _read(self, item: int, epoch: int = 0) -> np.ndarray:
        return self.read_checked(self.index.path(item))

    def sample(self, key: tuple[int, ...]) -> dict[str, Any]:
        _, epoch, item, crop, position = (int(v) for v in key)
        skipped: list[str] = []
        _, image = self.load(epoch, item, skipped)
        # Seeds use the *requested* item, so two items that fall back on the same substitute
        # still give different samples.
        top, left, k = draw_geometry(self.geometry_rng(epoch, item, crop), image.shape[0], image.shape[1], self.crop_size)
        gt = to_float(crop_and_transform(image, top, left, self.crop_size, k))
        out = self.engine.sample(gt, (self.seed, self.source_id, epoch, item, crop, _DEGRADE_TAG))
        params = dict(out.params, type=out.type_name)
        return self.record(np.ascontiguousarray(out.lq.transpose(2, 0, 1)), np.ascontiguousarray(gt.transpose(2, 0, 1)),
                           out.type_id, out.level, self.source_id, params, (self.source_id, epoch, item, crop), position, skipped)
