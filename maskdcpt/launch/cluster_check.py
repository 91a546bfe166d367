"""A small, exactly reproducible DDP training that checks a cluster end to end.

Linear regression y = x·w* + b* trained with SGD + momentum across all ranks of the job (gloo on CPU,
nccl on GPU). It does what the real trainers do at the scale of milliseconds: reads its distributed
set-up from the environment, checkpoints every ``train.checkpoint_every`` steps to
``RUN_DIR/checkpoints/last.ckpt``, resumes from it, and writes ``RUN_DIR/weights.safetensors`` and
``RUN_DIR/metrics.json``. Each step's batch depends only on (seed, step, rank), so a run that is
interrupted and resumed ends with bit-identical weights. Launch it to check a new cluster:

    python -m maskdcpt.launch.cluster_check --launcher slurm --nodes 2 --tasks-per-node 2 run.output_dir=/shared/runs
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

from maskdcpt.config import load_config


@dataclasses.dataclass
class RunSection:
    output_dir: str = "runs"
    name: str = "cluster_check"


@dataclasses.dataclass
class TrainSection:
    max_steps: int = 20
    checkpoint_every: int = 5
    batch_size: int = 16
    features: int = 8
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0
    # Pause after every step: gives tests and operators time to preempt a running job.
    step_sleep_s: float = 0.0


@dataclasses.dataclass
class ClusterCheckConfig:
    run: RunSection = dataclasses.field(default_factory=RunSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)


def load_cluster_check_config(path: str | None = None, overrides: Sequence[str] = ()) -> ClusterCheckConfig:
    return load_config(ClusterCheckConfig, path, overrides)


def run_dir(cfg: ClusterCheckConfig) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


def _batch(cfg: TrainSection, step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (batch_size, features) and targets (batch_size, 1) of one rank at one step."""
    truth = torch.Generator().manual_seed(cfg.seed)
    w_true = torch.randn(cfg.features, 1, generator=truth)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 4099 + rank)
    x = torch.randn(cfg.batch_size, cfg.features, generator=g)
    return x, x @ w_true + 0.5


def _save_atomically(obj: dict, path: Path) -> None:
    # A preemption may kill the job while it writes: never leave a truncated last.ckpt behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run_cluster_check(cfg: ClusterCheckConfig, resume: bool | str = "auto") -> dict:
    """Train; returns this rank's metrics (``rank``, ``world_size``, ``start_step``, ``loss``, ``weights``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    folder = run_dir(cfg)
    ckpt_path = folder / "checkpoints" / "last.ckpt"
    tc = cfg.train

    torch.manual_seed(tc.seed)
    model = torch.nn.Linear(tc.features, 1)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum)

    start_step = 0
    resume_from = Path(resume) if isinstance(resume, str) and resume != "auto" else ckpt_path
    if resume is not False and (resume_from.is_file() or resume is True):
        state = torch.load(resume_from, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])

    loss = torch.tensor(float("nan"))
    for step in range(start_step, tc.max_steps):
        x, y = _batch(tc, step, rank)
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1
        if rank == 0 and (done % tc.checkpoint_every == 0 or done == tc.max_steps):
            _save_atomically({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": done}, ckpt_path)
        if tc.step_sleep_s > 0:
            time.sleep(tc.step_sleep_s)

    weights = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
    metrics = {"rank": rank, "world_size": world_size, "start_step": start_step, "step": tc.max_steps,
               "loss": float(loss.detach()), "weights": weights}
    if rank == 0:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from maskdcpt.launch.launcher import add_launcher_args, launch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (optional)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    add_launcher_args(parser)
    args = parser.parse_args(argv)
    launch("cluster_check", args.config, args.overrides, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
