"""A timm-style model registry: ``@register_model`` factories found by ``create_model(name)``."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory ``fn(masked=False, **overrides) -> nn.Module`` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def _ensure_loaded() -> None:
    from . import nafnet, promptir, restormer, swinir  # noqa: F401  (importing registers)


def list_models(pattern: str = "") -> list[str]:
    """Registered model names containing ``pattern``, sorted."""
    _ensure_loaded()
    return sorted(name for name in _MODELS if pattern in name)


def create_model(name: str, masked: bool = False, grad_checkpointing: bool = False, **overrides) -> nn.Module:
    """Build a registered backbone; ``masked=True`` gives its sparse-aware masked form
    (identical state_dict keys and shapes). ``overrides`` replace constructor arguments;
    ``grad_checkpointing=True`` calls ``model.set_grad_checkpointing()``."""
    _ensure_loaded()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}")
    model = _MODELS[name](masked=masked, **overrides)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model
