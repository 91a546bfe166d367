"""Optimiser parameter groups and the learning-rate schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class OptimConfig:
    """AdamW for the restorer and, as its own group, for the classifier (DCPT's recipe:
    G 3e-4 wd 0, DC 1e-4 wd 1e-4, cosine to 1e-6, no warm-up)."""

    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    classifier_lr: float = 1e-4
    classifier_weight_decay: float = 1e-4
    min_lr: float = 1e-6
    warmup_steps: int = 0
    grad_clip: float = 0.0  # max global grad norm; 0 switches clipping off
    fused: bool = False  # fused AdamW kernels (CUDA)


@dataclass
class ParamGroup:
    name: str
    params: list[torch.nn.Parameter]
    lr: float
    weight_decay: float


def build_optimizer(groups: Sequence[ParamGroup], cfg: OptimConfig) -> torch.optim.AdamW:
    param_groups = [
        {"params": g.params, "lr": g.lr, "weight_decay": g.weight_decay, "name": g.name, "initial_lr": g.lr}
        for g in groups
        if g.params
    ]
    kwargs = {"fused": True} if cfg.fused else {}
    return torch.optim.AdamW(param_groups, betas=tuple(cfg.betas), **kwargs)


def cosine_factor(step: int, total: int, warmup: int, floor: float) -> float:
    """lr / base_lr at ``step``: linear warm-up from 0, then cosine from 1 down to ``floor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    lambdas = [
        (lambda step, floor=min(1.0, cfg.min_lr / g["initial_lr"]) if g["initial_lr"] > 0 else 0.0: cosine_factor(
            step, total_steps, cfg.warmup_steps, floor
        ))
        for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
