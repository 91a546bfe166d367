"""A small, exactly reproducible DDP training on the real trainer that checks a cluster end to end.

Linear regression y = x·w* + 0.5 as a :class:`~maskdcpt.training.trainer.Trainer` task, across all ranks of the job
(gloo on CPU, nccl on GPU), at a constant learning rate. Passing it exercises, at the scale of milliseconds, the
path pre-training and fine-tuning take: the distributed set-up read from the environment, the trainer's DDP step,
checkpoints every ``train.checkpoint_every`` steps to ``RUN_DIR/checkpoints/last.ckpt``, resume, the export
(``RUN_DIR/weights.safetensors``) and ``RUN_DIR/metrics.json``. Each step's batch depends only on (seed, step,
rank), so a run that is interrupted and resumed ends with bit-identical weights (on CPU). Launch it to check a new
cluster:

    python -m maskdcpt.launch.cluster_check --launcher slurm --nodes 2 --tasks-per-node 2 run.output_dir=/shared/runs
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskdcpt.cli import parse_args, tool_main
from maskdcpt.config import load_config, ranged
from maskdcpt.io import save_weights
from maskdcpt.training.distributed import DistInfo, cleanup_distributed, configure_threads, init_distributed
from maskdcpt.training.optim import OptimConfig, ParamGroup
from maskdcpt.training.trainer import StepOutput, Task, TrainConfig, Trainer, resolve_device


@dataclasses.dataclass
class RunSection:
    output_dir: str = "runs"
    name: str = "cluster_check"


@dataclasses.dataclass
class CheckTrainConfig(TrainConfig):
    """The trainer's settings at the check's scale, plus the regression's size and a pause per step."""

    max_steps: int = 20
    batch_size: int = 16  # global: split over the ranks
    log_every: int = 1
    image_every: int = 0
    checkpoint_every: int = 5
    progress: bool = False
    features: int = ranged(8, ge=1)
    # Pause after every step: gives tests and operators time to preempt a running job.
    step_sleep_s: float = ranged(0.0, ge=0)


def _constant_lr() -> OptimConfig:
    # min_lr = lr: the schedule is flat, so a run stopped early follows the same rates as an uninterrupted one
    return OptimConfig(lr=0.05, min_lr=0.05)


@dataclasses.dataclass
class ClusterCheckConfig:
    run: RunSection = dataclasses.field(default_factory=RunSection)
    train: CheckTrainConfig = dataclasses.field(default_factory=CheckTrainConfig)
    optim: OptimConfig = dataclasses.field(default_factory=_constant_lr)


def load_cluster_check_config(path: str | None = None, overrides: Sequence[str] = ()) -> ClusterCheckConfig:
    return load_config(ClusterCheckConfig, path, overrides)


def run_dir(cfg: ClusterCheckConfig) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


class _Batches:
    """This rank's endless batches from ``start_step`` on: x (batch_size / world_size, features), y (…, 1).
    Synthetic data has no files to skip."""

    skipped = 0

    def __init__(self, cfg: CheckTrainConfig, dist: DistInfo, start_step: int):
        self.cfg, self.dist, self.start_step = cfg, dist, start_step

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        cfg = self.cfg
        w_true = torch.randn(cfg.features, 1, generator=torch.Generator().manual_seed(cfg.seed))
        per_rank = cfg.batch_size // self.dist.world_size
        for step in itertools.count(self.start_step):
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 4099 + self.dist.rank)
            x = torch.randn(per_rank, cfg.features, generator=g)
            yield {"x": x, "y": x @ w_true + 0.5}

    def log_skips(self) -> None:
        pass


class RegressionTask(Task):
    """Mean squared error of a linear layer; exports its weights as ``weights.safetensors``."""

    def __init__(self, cfg: CheckTrainConfig):
        self.cfg = cfg
        self.model = nn.Linear(cfg.features, 1)
        self.last_loss = float("nan")

    def param_groups(self, optim: OptimConfig) -> list[ParamGroup]:
        return [ParamGroup("linear", list(self.model.parameters()), optim.lr, optim.weight_decay)]

    def step(self, model: nn.Module, batch: dict[str, Any], step: int) -> StepOutput:
        loss = F.mse_loss(model(batch["x"]).float(), batch["y"])
        self.last_loss = float(loss.detach())
        return StepOutput(loss, {"loss/total": loss}, {})

    def after_step(self, step: int) -> None:
        if self.cfg.step_sleep_s > 0:
            time.sleep(self.cfg.step_sleep_s)

    def export(self, run_dir: Path) -> None:
        save_weights(self.model, run_dir / "weights.safetensors", self.weights_metadata())

    def weights_metadata(self) -> dict[str, Any]:
        # one key: safetensors orders metadata as a hash map does, and the check compares the files' bytes
        return {"format": "maskdcpt-cluster-check"}


def run_cluster_check(cfg: ClusterCheckConfig, resume: bool | str = "auto") -> dict:
    """Train; returns this rank's metrics (``rank``, ``world_size``, ``start_step``, ``step``, ``loss``, ``weights``)
    and writes rank 0's to ``RUN_DIR/metrics.json``."""
    tc = cfg.train
    folder = run_dir(cfg)
    dist = init_distributed(resolve_device(tc.device).type)
    try:
        configure_threads(tc.threads)
        torch.manual_seed(tc.seed)  # initialisation (DDP broadcasts rank 0's anyway)
        task = RegressionTask(tc)
        trainer = Trainer(task, tc, cfg.optim, folder, lambda start: _Batches(tc, dist, start), dist)
        trainer.maybe_resume(resume)
        start_step = trainer.step
        trainer.fit(resume=False)  # already resumed above
        weights = torch.cat([p.detach().flatten() for p in task.model.parameters()]).cpu().tolist()
        metrics = {"rank": dist.rank, "world_size": dist.world_size, "start_step": start_step, "step": trainer.step,
                   "loss": task.last_loss, "weights": weights}
        if dist.is_main:
            (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if dist.enabled:
            torch.distributed.barrier()  # every rank returns after rank 0 has written the run's files
        return metrics
    finally:
        cleanup_distributed()


@tool_main
def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from maskdcpt.launch.launcher import add_launcher_args, launch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (optional)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    add_launcher_args(parser)
    args = parse_args(parser, argv)
    if launch("cluster_check", args.config, args.overrides, args) is None:  # --launcher none: run here
        print(json.dumps(run_cluster_check(load_cluster_check_config(args.config, args.overrides)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
