"""A complete run in its folder, shared by pre-training and fine-tuning: join the process
group, seed the initialisation, write the resolved config, build the task, train, report."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import save_config
from .distributed import DistInfo, cleanup_distributed, init_distributed
from .trainer import Task, Trainer, resolve_device


@dataclass
class RunConfig:
    """Where a run lives: ``output_dir/name``; name None: the task's default (``pretrain_<model.name>``, …)."""

    output_dir: str = "runs"
    name: str | None = None


def build_loader_factory(cfg: Any, dist: DistInfo) -> Callable[[int], Any]:
    """start_step → this rank's batch stream (``cfg.data``, ``cfg.train``); the global batch is
    split evenly over the ranks."""
    from ..data.loader import build_train_loader

    per_rank = cfg.train.batch_size // dist.world_size

    def make(start_step: int):
        return build_train_loader(
            cfg.data, seed=cfg.train.seed, batch_size=per_rank, rank=dist.rank, world_size=dist.world_size,
            num_workers=cfg.data.num_workers, start_step=start_step,
        )

    return make


def run_task(cfg: Any, out_dir: Path, make_task: Callable[[Any, DistInfo], Task], resume: bool | str,
             announce: Callable[[Task], str] | None = None,
             finished: Callable[[dict[str, Any]], str] | None = None) -> dict[str, Any]:
    """Train ``make_task(cfg, dist)`` in ``out_dir`` (resuming per ``resume``); ``announce`` and
    ``finished`` give what rank 0 prints before and after."""
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device.type)
    try:
        torch.manual_seed(cfg.train.seed)  # model initialisation
        if dist.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out_dir / "config.yaml")
        task = make_task(cfg, dist)
        if dist.is_main and announce is not None:
            print(announce(task), flush=True)
        trainer = Trainer(task, cfg.train, cfg.optim, out_dir, build_loader_factory(cfg, dist), dist, val_every=cfg.val.every)
        if dist.is_main:
            print(f"run folder: {out_dir.resolve()}", flush=True)
        metrics = trainer.fit(resume)
        if dist.is_main and finished is not None:
            print(finished(metrics), flush=True)
        return metrics
    finally:
        cleanup_distributed()
