"""Exponential moving average of a model's weights (the weights we evaluate and release)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


class ModelEMA:
    """An fp32 shadow copy of ``model`` updated as ``ema = decay·ema + (1 − decay)·param`` each step.

    Floating-point parameters are averaged; buffers (e.g. BatchNorm running statistics, integer counters)
    are copied as they are, since averaging them has no meaning. The shadow lives on the model's device,
    never receives gradients and is always in eval mode.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.decay = decay
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
        ema_params = dict(self.module.named_parameters())
        for name, p in source.named_parameters():
            shadow = ema_params[name]
            if shadow.is_floating_point():
                shadow.mul_(self.decay).add_(p.detach().to(shadow.dtype), alpha=1.0 - self.decay)
            else:
                shadow.copy_(p)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in source.named_buffers():
            ema_buffers[name].copy_(b)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the EMA weights (and buffers) into ``model``, cast to its dtypes."""
        _unwrap(model).load_state_dict(self.module.state_dict())

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        missing = {"decay", "num_updates", "module"} - set(state)
        if missing:
            raise ValueError(f"EMA state_dict lacks keys {sorted(missing)}")
        self.decay = float(state["decay"])
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
