"""Optimiser parameter groups and the learning-rate schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ..config import ranged


@dataclass
class OptimConfig:
    """AdamW for the restorer and, as its own group, for the classifier (DCPT's recipe:
    G 3e-4 wd 0, DC 1e-4 wd 1e-4, cosine to 1e-6, no warm-up). Weight decay spares norms,
    biases and other 1-D parameters (``weight_decay_groups``)."""

    lr: float = ranged(3e-4, gt=0)
    weight_decay: float = ranged(0.0, ge=0)
    betas: tuple[float, float] = ranged((0.9, 0.999), ge=0, lt=1)
    classifier_lr: float = ranged(1e-4, ge=0)  # 0 freezes the classifier
    classifier_weight_decay: float = ranged(1e-4, ge=0)
    min_lr: float = ranged(1e-6, ge=0)
    warmup_steps: int = ranged(0, ge=0)
    grad_clip: float = ranged(0.0, ge=0)  # max global grad norm; 0 switches clipping off
    fused: bool = False  # fused AdamW kernels (CUDA)


@dataclass
class ParamGroup:
    name: str
    params: list[torch.nn.Parameter]
    lr: float
    weight_decay: float


def weight_decay_groups(
    name: str, named_params: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float
) -> list[ParamGroup]:
    """``name`` with ``weight_decay`` for weight matrices and kernels, and ``{name}_no_decay`` with none for norms,
    biases and other 1-D parameters (scales, mixing weights).

    Exempting 1-D parameters is timm's (``param_groups_weight_decay``) and MAE's practice: a norm's gain or a bias
    does not set how complex the function is the way a weight matrix does, and pulling norm gains towards 0 works
    against the normalisation. The release's BasicSR AdamW applies its weight decay to all parameters; at the
    release's values this differs only for the classifier (wd 1e-4; the backbone's wd is 0). A group with
    ``weight_decay`` 0 is not split, so such runs keep their optimiser state layout.
    """
    named = list(named_params)
    if weight_decay == 0:
        return [ParamGroup(name, [p for _, p in named], lr, 0.0)]
    exempt = [p for n, p in named if p.ndim <= 1 or n.endswith(".bias")]
    decay = [p for n, p in named if not (p.ndim <= 1 or n.endswith(".bias"))]
    return [ParamGroup(name, decay, lr, weight_decay), ParamGroup(f"{name}_no_decay", exempt, lr, 0.0)]


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
