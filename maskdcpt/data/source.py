"""What every source data set shares: decoding with a small per-process cache, and bad files
skipped deterministically with a record of each skip."""
from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import numpy as np

from degradations.rng import make_rng

from ..errors import DataError
from .decode import SkipImage, read_image, reason_counts, to_float
from .index import CorpusIndex

MAX_SUBSTITUTES = 16
_SUBSTITUTE_TAG = 7  # separates the substitute-item stream from other draws of the same key


class CroppingSource:
    """Base of the synthetic and paired sources: ``load(epoch, item)`` → decoded arrays.

    Cache: the last few decoded images of this process, so the K crops of one image (which the
    sampler puts next to each other in a batch) decode once. ``decodes`` counts file reads.
    Bad files: :class:`SkipImage` → a substitute item drawn from (seed, source, epoch, item,
    attempt), identical in every process; each skip is recorded as "path: reason".
    """

    cache_size = 4

    def __init__(self, index: CorpusIndex, *, source_id: int, seed: int, crop_size: int, min_size: int, name: str):
        if len(index) == 0:
            raise ValueError(f"source {name!r} has no images")
        self.index = index
        self.source_id = int(source_id)
        self.seed = int(seed)
        self.crop_size = int(crop_size)
        self.min_size = max(int(min_size), self.crop_size)
        self.name = name
        self.decodes = 0
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._bad: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()  # never ship decoded pixels to workers
        return state

    def _read(self, item: int) -> Any:
        """Decode item ``item``; subclasses return an array or a tuple of arrays."""
        raise NotImplementedError

    def load(self, epoch: int, item: int, skipped: list[str]) -> tuple[int, Any]:
        """(item actually used, decoded data); appends "path: reason" to ``skipped`` per bad file."""
        original = item
        reasons: list[str] = []
        for attempt in range(MAX_SUBSTITUTES + 1):
            if item in self._cache:
                self._cache.move_to_end(item)
                return item, self._cache[item]
            if item in self._bad:
                skipped.append(self._bad[item][0])
                reasons.append(self._bad[item][1])
            else:
                try:
                    data = self._read(item)
                    self.decodes += 1
                    self._cache[item] = data
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
                    return item, data
                except SkipImage as skip:
                    self._bad[item] = (f"{skip.path}: {skip.reason}", skip.reason)
                    skipped.append(self._bad[item][0])
                    reasons.append(skip.reason)
            rng = make_rng((self.seed, self.source_id, epoch, original, _SUBSTITUTE_TAG, attempt))
            item = int(rng.integers(len(self.index)))
        raise DataError(
            f"source {self.name!r}: {MAX_SUBSTITUTES + 1} unusable files in a row around item {original} "
            f"({reason_counts(reasons)}; last: {skipped[-1]}): is the corpus readable, and are its images at least "
            f"data.crop_size={self.crop_size} px?")

    def read_checked(self, path: str) -> np.ndarray:
        return read_image(path, self.min_size)

    def geometry_rng(self, epoch: int, item: int, crop: int) -> np.random.Generator:
        return make_rng((self.seed, self.source_id, epoch, item, crop, 0))

    @staticmethod
    def to_chw(image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(to_float(image).transpose(2, 0, 1))

    @staticmethod
    def record(lq: np.ndarray, gt: np.ndarray, type_id: int, level: float, source_id: int, params: dict,
               key: tuple[int, int, int, int], position: int, skipped: list[str]) -> dict[str, Any]:
        """One sample as the collate function expects it (arrays (3, H, W) float32 in [0, 1])."""
        return {
            "lq": lq, "gt": gt, "type_id": int(type_id), "level": float(level), "source": int(source_id),
            "params": json.dumps(params, sort_keys=True, default=_json_default), "key": key, "index": int(position), "skipped": skipped,
        }


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"parameter of type {type(value).__name__} is not JSON-serialisable")


