"""Exponential moving average of a model's weights (the weights we evaluate and release)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


def warmup_decay(decay: float, updates: int, power: float = 2 / 3) -> float:
    """The effective decay of update number ``updates`` (0, 1, …): ``1 − (1 + updates)^−power``, capped at ``decay``.

    The warm-up of timm's ``ModelEmaV3`` (γ = 1, power 2/3): the average starts as the weights themselves and
    lengthens with the run (0.80 after 10 updates, 0.95 after 100, 0.986 after 600, 0.999 after ~31 600). Without
    it, a 600-step run's EMA at 0.999 would still hold 0.999^600 ≈ 55 % of the random initialisation.
    """
    return min(decay, 1.0 - (1.0 + updates) ** -power)


class ModelEMA:
    """An fp32 shadow copy of ``model`` updated as ``ema = d·ema + (1 − d)·param`` each step, with d the
    ``decay`` or, with ``warmup``, :func:`warmup_decay` of the update count (never above ``decay``).

    Floating-point parameters are averaged; buffers (e.g. BatchNorm running statistics, integer counters)
    are copied as they are, since averaging them has no meaning. The shadow lives on the model's device,
    never receives gradients and is always in eval mode.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(_unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
            if p.is_floating_point():
                p.data = p.data.float()  # fp32 shadow even if the model trains in bf16/fp16

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step from the current weights of ``model`` (same architecture)."""
        source = _unwrap(model)
        decay = warmup_decay(self.decay, self.num_updates) if self.warmup else self.decay
        ema_params = dict(self.module.named_parameters())
        for name, p in source.named_parameters():
            shadow = ema_params[name]
            if shadow.is_floating_point():
                shadow.mul_(decay).add_(p.detach().to(shadow.dtype), alpha=1.0 - decay)
            else:
                shadow.copy_(p)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in source.named_buffers():
            ema_buffers[name].copy_(b)
        self.num_updates += 1

    def to(self, device: torch.device | str) -> "ModelEMA":
        """Move the shadow to ``device`` (it stays float32)."""
        self.module.to(device)
        return self

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the EMA weights (and buffers) into ``model``, cast to its dtypes."""
        _unwrap(model).load_state_dict(self.module.state_dict())

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        missing = {"decay", "num_updates", "module"} - set(state)
        if missing:
            raise ValueError(f"EMA state_dict lacks keys {sorted(missing)}")
        self.decay = float(state["decay"])
        self.warmup = bool(state.get("warmup", False))  # checkpoints from before the warm-up had none
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(state["module"])


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model
