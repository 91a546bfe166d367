"""Paired sources: LQ/GT folders of one declared degradation type (Rain13K, SIDD, GoPro, …)."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .augment import crop_and_transform, draw_geometry
from .decode import SkipImage
from .index import CorpusIndex
from .source import CroppingSource

UNKNOWN_LEVEL = -1.0  # real pairs carry no engine level


def find_prior(prior_dir: str | os.PathLike, lq_path: str | os.PathLike) -> str:
    """The generative restoration of ``lq_path`` in ``prior_dir``: the same file name, or the same
    stem with another image extension; the same-name path (missing) when neither exists."""
    base = os.path.basename(lq_path)
    exact = os.path.join(prior_dir, base)
    if os.path.isfile(exact):
        return exact
    stem = os.path.splitext(base)[0]
    for ext in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"):
        candidate = os.path.join(prior_dir, stem + ext)
        if os.path.isfile(candidate):
            return candidate
    return exact


class PairedSource(CroppingSource):
    """Aligned LQ/GT pairs; the same crop window and flip/rot90 are applied to both.

    ``sample(key)`` → lq, gt (3, S, S) float32 in [0, 1], ``type_id`` (declared), level -1.
    A pair whose LQ and GT sizes differ is skipped like an unreadable file.
    """

    def __init__(self, index: CorpusIndex, type_id: int, *, source_id: int, seed: int, crop_size: int = 128,
                 min_size: int = 0, name: str = "paired", prior_dir: str = ""):
        super().__init__(index, source_id=source_id, seed=seed, crop_size=crop_size, min_size=min_size, name=name)
        if index.sources[int(index.source[0])].kind != "paired":
            raise ValueError(f"paired source {name!r}: its index holds clean images, not LQ/GT folders")
        if not 0 <= int(type_id):
            raise ValueError(f"paired source {name!r}: declare its degradation type (got type id {type_id})")
        self.type_id = int(type_id)
        self.prior_dir = prior_dir
        if prior_dir and not os.path.isdir(prior_dir):
            raise ValueError(f"paired source {name!r}: prior folder {prior_dir!r} does not exist")

    def prior_path(self, lq_path: str) -> str:
        return find_prior(self.prior_dir, lq_path)

    def _read(self, item: int) -> tuple[np.ndarray, ...]:
        gt = self.read_checked(self.index.path(item))
        lq_path = self.index.lq_path(item)
        lq = self.read_checked(lq_path)
        if lq.shape != gt.shape:
            raise SkipImage(lq_path, f"LQ and GT differ in size (LQ {lq.shape[1]}x{lq.shape[0]}, GT {gt.shape[1]}x{gt.shape[0]})")
        if not self.prior_dir:
            return lq, gt
        prior_path = self.prior_path(lq_path)
        prior = self.read_checked(prior_path)
        if prior.shape != lq.shape:
            raise SkipImage(prior_path, f"prior and LQ differ in size (prior {prior.shape[1]}x{prior.shape[0]}, LQ {lq.shape[1]}x{lq.shape[0]})")
        return lq, gt, prior

    def sample(self, key: tuple[int, ...]) -> dict[str, Any]:
        _, epoch, item, crop, position = (int(v) for v in key)
        skipped: list[str] = []
        used, (lq, gt, *prior) = self.load(epoch, item, skipped)
        top, left, k = draw_geometry(self.geometry_rng(epoch, item, crop), gt.shape[0], gt.shape[1], self.crop_size)
        lq_crop = self.to_chw(crop_and_transform(lq, top, left, self.crop_size, k))
        gt_crop = self.to_chw(crop_and_transform(gt, top, left, self.crop_size, k))
        params = {"pair": self.index.relpath(used), "source": self.name}
        record = self.record(lq_crop, gt_crop, self.type_id, UNKNOWN_LEVEL, self.source_id, params,
                             (self.source_id, epoch, item, crop), position, skipped)
        if prior:  # the same window and flip/rot90 as LQ and GT
            record["prior"] = self.to_chw(crop_and_transform(prior[0], top, left, self.crop_size, k))
        return record
