"""Helpers shared by the test files: sample photos, textures, cheap degradation types, tiny runs.

Tests import them as ``from conftest import ...``: ``tests/`` has no ``__init__.py``, so pytest's default
(prepend) import mode puts it on ``sys.path`` and this module is the one pytest loaded.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import degradations
from degradations.photos import sample_photos

# Small and quick, but every part of the real path: embedded photos, data pipeline, optimiser, logging.
TINY_RUN = ["data.crop_size=64", "data.crops_per_image=2", "train.batch_size=4", "train.progress=false",
            "val.samples_per_task=2"]  # validation runs (before the first step and after the last), on 2 crops a task
# The tiny real pre-training (embedded photos, degradation engine, masking, 3 losses) on 64² crops.
TINY_PRETRAIN = [*TINY_RUN, "train.log_every=1", "data.engine={types: [noise, jpeg, motion_blur, haze]}"]


@functools.cache
def _sample_photos() -> dict[str, np.ndarray]:
    return dict(sample_photos())


def photo_crop(name: str, top: int, left: int, height: int, width: int) -> np.ndarray:
    """A crop of the bundled sample photo ``name`` (e.g. ``"chelsea"``): (height, width, 3) float32 RGB in [0, 1]."""
    image = _sample_photos()[name][top:top + height, left:left + width]
    assert image.shape[:2] == (height, width), f"{name} is too small for that crop"
    return image.astype(np.float32) / 255.0


def texture(side: int, sigma: float, seed: int, gray: float = 0.0, contrast: float | None = 0.18) -> np.ndarray:
    """(side, side, 3) float32 texture in [0, 1]: uniform noise, a ``gray`` share of it common to the three
    channels, smoothed by a Gaussian of σ = ``sigma`` px; then scaled to standard deviation ``contrast`` around
    0.5 and clipped, or, with ``contrast=None``, stretched to fill [0, 1]."""
    rng = np.random.default_rng(seed)
    shared = rng.random((side, side, 1), dtype=np.float32) if gray > 0 else 0.0
    own = rng.random((side, side, 3), dtype=np.float32) if gray < 1 else 0.0
    base = np.ascontiguousarray(np.broadcast_to(shared * gray + own * (1 - gray), (side, side, 3)))
    smooth = cv2.GaussianBlur(base, (0, 0), sigma)
    if contrast is None:
        return ((smooth - smooth.min()) / (smooth.max() - smooth.min())).astype(np.float32)
    return np.clip((smooth - smooth.mean()) / smooth.std() * contrast + 0.5, 0.0, 1.0).astype(np.float32)


def cheap_types() -> list[str]:
    """Registered degradation types that are quick to apply; skips the test when none is registered."""
    names = [t.name for t in degradations.all_types()]
    chosen = [n for n in ("noise", "jpeg", "haze", "low_light") if n in names]
    if not chosen:
        pytest.skip("no degradation type is registered yet")
    return chosen


def write_offset_pairs(root: Path, n: int, shape: tuple[int, int], seed: int, offset: int) -> None:
    """``n`` pairs ``gt/{i}.png``, ``lq/{i}.png`` under ``root``: random (H, W, 3) uint8 GT below 200 and
    LQ = GT + ``offset``, so any misalignment of LQ and GT shows as a difference other than the constant."""
    (root / "gt").mkdir(parents=True)
    (root / "lq").mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        gt = rng.integers(0, 200, (*shape, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "gt" / f"{i}.png"), gt)
        cv2.imwrite(str(root / "lq" / f"{i}.png"), gt + offset)


def run_env() -> dict[str, str]:
    """Environment for a tool run as a subprocess: one thread, unbuffered, and not part of anyone's DDP job."""
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE"):
        env.pop(key, None)
    return env


def last_weights(run: str | Path) -> dict[str, torch.Tensor]:
    """The weights a run folder's last checkpoint holds."""
    return load_file(str(Path(run) / "checkpoints" / "last.safetensors"))


def visible(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Boolean (B, C, H, W) selector of t's visible positions under the keep map (B, 1, h, w)."""
    return F.interpolate(keep, size=t.shape[-2:], mode="nearest").bool().expand_as(t)


# The IQA test images and the reference values computed once from BasicSR and pyiqa (tests/data/iqa/make_reference.py)
IQA_DATA = Path(__file__).parent / "data" / "iqa"
IQA_REFERENCE = json.loads((IQA_DATA / "reference.json").read_text())


def iqa_image(name: str) -> np.ndarray:
    """An image of tests/data/iqa as RGB uint8."""
    return np.ascontiguousarray(cv2.imread(str(IQA_DATA / name), cv2.IMREAD_COLOR)[..., ::-1])
