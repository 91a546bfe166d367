"""The held-out validation set shared by pre-training and fine-tuning.

Two kinds of tasks:

* synthetic — clean held-out images (the embedded ``HELD_OUT_PHOTOS`` unless ``val.photos`` names a
  folder) cut into fixed crops and degraded by the run's engine with fixed seeds: one task per degradation
  type (pre-training) or per restoration task (fine-tuning, e.g. denoising at σ 25);
* paired — real LQ/GT folders (``val.paired``), used whole, replacing the synthetic tasks.

Every sample is a pure function of (``val.seed``, task position, sample position): the same crops, levels and
degradations at every validation of a run, in every run with the same config, on any machine. Crops do not
depend on the task, so the tasks of one set degrade the very same crops and their figures compare directly.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from degradations import DegradationEngine, EngineConfig
from degradations.rng import make_rng

from ..config import check_ranges, ranged
from ..errors import ConfigError, DataError, MissingFileError
from .augment import draw_geometry
from .decode import SkipImage, read_image, reason_counts, to_float
from .default import held_out_paths
from .index import IMAGE_EXTENSIONS, match_pairs
from .mixture import type_id_of

_CROP_TAG, _LEVEL_TAG, _DEGRADE_TAG = 0x5643, 0x564C, 0x5644  # separate streams of one (seed, task, sample)


@dataclass
class ValTask:
    """A synthetic task: ``type`` (a degradation type name of the run's engine) at ``level`` (None: each sample
    draws its level in ``val.level_range``), with ``params`` overriding the type's parameter ranges (for example
    ``{sigma: [25, 25]}`` for denoising at σ 25). ``name`` defaults to the type."""

    type: str
    name: str = ""
    level: float | None = ranged(None, ge=0, le=1)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or self.type


@dataclass
class PairedValTask:
    """Real pairs: LQ and GT folders whose files match by name (or stem). ``type``: the degradation type of the
    pairs (a name or id), needed by pre-training's classifier figures; optional for fine-tuning."""

    name: str
    lq: str
    gt: str
    type: str | int | None = ranged(None, ge=0)


@dataclass
class ValConfig:
    """Validation in the loop (both trainers).

    every:            validate every this many steps, once before the first step and after the last;
                      0 switches validation off.
    photos:           a folder of clean held-out images; "" = the embedded held-out photos (never trained on).
    tasks:            synthetic tasks; [] = the run's default (pre-training: every type of the engine;
                      fine-tuning: the 5D tasks).
    paired:           real paired folders; when given, they replace the synthetic tasks.
    samples_per_task: synthetic crops per task (cycling over the photos).
    crop_size:        side of the synthetic crops; 0 = ``data.crop_size``.
    level_range:      levels of tasks without a fixed level are drawn uniformly in it.
    seed:             the seed of every crop, level and degradation.
    batch_size:       samples per forward pass.
    best:             the metric that selects ``best.safetensors``; "" = the run's default (pre-training
                      ``top1``, fine-tuning ``psnr``), "none" = keep no best weights.
    """

    every: int = ranged(100, ge=0)
    photos: str = ""
    tasks: list[ValTask] = field(default_factory=list)
    paired: list[PairedValTask] = field(default_factory=list)
    samples_per_task: int = ranged(24, ge=1)
    crop_size: int = ranged(0, ge=0)
    level_range: tuple[float, float] = ranged((0.2, 1.0), ge=0, le=1)
    seed: int = ranged(0, ge=0)
    batch_size: int = ranged(16, ge=1)
    best: str = ""

    def __post_init__(self) -> None:
        check_ranges(self, "val")
        if 0 < self.crop_size < 32:
            raise ConfigError(f"val.crop_size must be 0 (= data.crop_size) or >= 32, got {self.crop_size}")
        lo, hi = (float(v) for v in self.level_range)
        if lo > hi:
            raise ConfigError(f"val.level_range must satisfy lo <= hi, got {list(self.level_range)}")
        self.level_range = (lo, hi)
        names = [t.name for t in self.tasks] + [t.name for t in self.paired]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"val: task names must be unique, repeated: {duplicates}")

    @property
    def enabled(self) -> bool:
        return self.every > 0


@dataclass
class ValSample:
    """lq, gt (3, H, W) float32 in [0, 1]; ``task`` the task's position; ``type_id`` the degradation label
    (-1 unknown); ``level`` in [0, 1] (-1 for real pairs); ``index`` the sample's position in the whole set."""

    lq: torch.Tensor
    gt: torch.Tensor
    task: int
    type_id: int
    level: float
    index: int


class ValidationSet:
    """The samples of a validation, in task order, and their batches."""

    def __init__(self, task_names: list[str], samples: list[ValSample], batch_size: int):
        self.task_names = task_names
        self.samples = samples
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.samples)

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of up to ``batch_size`` consecutive samples of one size: lq, gt (B, 3, H, W), task, type_id,
        index (B,) int64, level (B,) float32."""
        group: list[ValSample] = []
        for sample in self.samples:
            if group and (len(group) == self.batch_size or group[0].lq.shape != sample.lq.shape):
                yield _collate(group)
                group = []
            group.append(sample)
        if group:
            yield _collate(group)


def _collate(group: list[ValSample]) -> dict[str, torch.Tensor]:
    return {
        "lq": torch.stack([s.lq for s in group]),
        "gt": torch.stack([s.gt for s in group]),
        "task": torch.tensor([s.task for s in group], dtype=torch.int64),
        "type_id": torch.tensor([s.type_id for s in group], dtype=torch.int64),
        "index": torch.tensor([s.index for s in group], dtype=torch.int64),
        "level": torch.tensor([s.level for s in group], dtype=torch.float32),
    }


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(to_float(image).transpose(2, 0, 1)))


def _clean_images(folder: str) -> list[tuple[str, np.ndarray]]:
    if folder:
        if not os.path.isdir(folder):
            raise MissingFileError(f"val.photos: {folder!r} is not a folder of clean images")
        paths = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                       if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
    else:
        paths = held_out_paths()
    images = []
    for path in paths:
        try:
            images.append((path, read_image(path)))
        except SkipImage as skip:  # a broken file must not end the run; it is named and left out
            print(f"validation: skipping {skip.path}: {skip.reason}", flush=True)
    if not images:
        raise DataError(f"val.photos: no readable image in {folder or 'the embedded held-out photos'}")
    return images


def build_synthetic(cfg: ValConfig, tasks: list[ValTask], engine_cfg: EngineConfig, crop_size: int) -> ValidationSet:
    """Fixed crops of the held-out images, degraded per task by an engine built from ``engine_cfg`` with the
    task's parameter overrides."""
    images = _clean_images(cfg.photos)
    size = cfg.crop_size or crop_size
    small = [p for p, im in images if min(im.shape[:2]) < size]
    if small:
        raise DataError(f"val: held-out images smaller than the {size}px crop: {small}; lower val.crop_size")
    crops = []
    for j in range(cfg.samples_per_task):
        path, image = images[j % len(images)]
        top, left, _ = draw_geometry(make_rng((cfg.seed, _CROP_TAG, j)), image.shape[0], image.shape[1], size)
        crops.append(to_float(image[top:top + size, left:left + size]))
    lo, hi = cfg.level_range
    samples = []
    shared = DegradationEngine(engine_cfg)
    for t, task in enumerate(tasks):
        engine = shared
        if task.params:
            params = {**engine_cfg.params, task.type: {**engine_cfg.params.get(task.type, {}), **task.params}}
            engine = DegradationEngine(dataclasses.replace(engine_cfg, params=params))
        for j, gt in enumerate(crops):
            level = task.level if task.level is not None else float(make_rng((cfg.seed, _LEVEL_TAG, t, j)).uniform(lo, hi))
            out = engine.apply(gt, task.type, level, (cfg.seed, _DEGRADE_TAG, t, j))
            samples.append(ValSample(_chw(out.lq), _chw(gt), t, out.type_id, level, len(samples)))
    return ValidationSet([t.name for t in tasks], samples, cfg.batch_size)


def build_paired(cfg: ValConfig) -> ValidationSet:
    """Every pair of every folder, whole (batches then hold one size each)."""
    samples = []
    for t, task in enumerate(cfg.paired):
        type_id = type_id_of(task.type)
        root = os.path.commonpath([os.path.abspath(task.lq), os.path.abspath(task.gt)])
        lq_rel, gt_rel = os.path.relpath(task.lq, root), os.path.relpath(task.gt, root)
        lq_paths, gt_paths, _ = match_pairs(root, lq_rel, gt_rel)
        if not lq_paths:
            raise DataError(f"val.paired {task.name!r}: no matching LQ/GT files in {task.lq!r} and {task.gt!r}")
        reasons = []
        for lq_path, gt_path in zip(lq_paths, gt_paths):
            try:
                lq = read_image(os.path.join(root, lq_path))
                gt = read_image(os.path.join(root, gt_path))
                if lq.shape != gt.shape:
                    raise SkipImage(lq_path, f"LQ and GT differ in size (LQ {lq.shape[1]}x{lq.shape[0]}, "
                                             f"GT {gt.shape[1]}x{gt.shape[0]})")
            except SkipImage as skip:
                print(f"validation: skipping {skip.path}: {skip.reason}", flush=True)
                reasons.append(skip.reason)
                continue
            samples.append(ValSample(_chw(lq), _chw(gt), t, -1 if type_id is None else type_id, -1.0, len(samples)))
        if len(reasons) == len(lq_paths):
            raise DataError(f"val.paired {task.name!r}: none of its {len(lq_paths)} pairs is usable "
                            f"({reason_counts(reasons)}; named above)")
    return ValidationSet([t.name for t in cfg.paired], samples, cfg.batch_size)


def build_validation_set(cfg: ValConfig, default_tasks: list[ValTask], engine_cfg: EngineConfig,
                         crop_size: int) -> ValidationSet:
    """The paired folders when configured, else the synthetic tasks (``cfg.tasks`` or ``default_tasks``)."""
    if cfg.paired:
        return build_paired(cfg)
    return build_synthetic(cfg, cfg.tasks or default_tasks, engine_cfg, crop_size)
