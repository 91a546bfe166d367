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


_BACKBONE_MODULES = ("nafnet", "promptir", "restormer", "swinir")


def _ensure_loaded() -> None:
    """Import every backbone module (importing registers its factories). A backbone file that does not exist
    (yet) is skipped; any other import error, including one raised inside an existing file, propagates."""
    import importlib

    for name in _BACKBONE_MODULES:
        full = f"{__package__}.{name}"
        try:
            importlib.import_module(full)
        except ModuleNotFoundError as err:
            if err.name != full:
                raise


def list_models(pattern: str = "") -> list[str]:
    """Registered model names containing ``pattern``, sorted."""
    _ensure_loaded()
    return sorted(name for name in _MODELS if pattern in name)


def create_model(name: str, masked: bool = False, **overrides) -> nn.Module:
    """Build a registered backbone; ``masked=True`` gives its sparse-aware masked form
    (identical state_dict keys and shapes). ``overrides`` replace constructor arguments."""
    _ensure_loaded()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](masked=masked, **overrides)
