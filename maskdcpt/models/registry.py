"""A timm-style model registry: ``@register_model`` factories found by ``create_model(name)``, each with its
default config (timm's ``default_cfgs``): what is known of a variant without building it.

The registry imports no model file: the package's ``__init__`` imports every module of ``maskdcpt/models/``, whose
``@register_model`` factories register themselves. A new backbone is one new file there (docs/extending.md); one
defined elsewhere registers when its module is imported."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

__all__ = ["ModelCfg", "register_model", "list_models", "get_model_cfg", "create_model"]


@dataclass(frozen=True)
class ModelCfg:
    """The default config of a registered variant, declared in its arch file's ``default_cfgs`` dict.

    stem: the convolution reading the image (``add_prior_channels`` widens it).
    stride: total down-sampling = mask patch size; ``forward_features`` takes multiples of it.
    tap_dims: channels of the classifier taps, high resolution first; ``tap_downsample``: the taps all come at full
        resolution (SwinIR) and the classifier halves them.
    param_key: the wrapper key the release's test configs load its ``.pth`` from (``params_ema``; SwinIR-5D:
        ``params``); ``load_pretrained`` asks for it unless told otherwise.

    ``stride`` and ``tap_dims`` describe the variant as registered: constructor overrides can change them, and the
    built model's own attributes are what the code reads.
    """

    stem: str
    stride: int
    tap_dims: tuple[int, ...]
    tap_downsample: bool = False
    param_key: str = "params_ema"


_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CFGS: dict[str, ModelCfg] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory ``fn(masked=False, **overrides) -> nn.Module`` under its function name; its module must
    declare ``default_cfgs[fn.__name__]`` (a :class:`ModelCfg`) above it."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    cfg = getattr(sys.modules[fn.__module__], "default_cfgs", {}).get(name)
    if not isinstance(cfg, ModelCfg):
        raise ValueError(f"model {name!r}: {fn.__module__}.default_cfgs has no ModelCfg for it")
    _MODELS[name] = fn
    _CFGS[name] = cfg
    return fn


def _check_name(name: str) -> None:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}")


def list_models(pattern: str = "") -> list[str]:
    """Registered model names containing ``pattern``, sorted."""
    return sorted(name for name in _MODELS if pattern in name)


def get_model_cfg(name: str) -> ModelCfg:
    """The default config of a registered model, without building it."""
    _check_name(name)
    return _CFGS[name]


def create_model(name: str, masked: bool = False, grad_checkpointing: bool = False, **overrides) -> nn.Module:
    """Build a registered backbone; ``masked=True`` gives its sparse-aware masked form (identical state_dict keys and
    shapes). ``overrides`` replace constructor arguments. The model carries its config as ``model.default_cfg``;
    ``grad_checkpointing=True`` calls ``model.set_grad_checkpointing()``."""
    _check_name(name)
    model = _MODELS[name](masked=masked, **overrides)
    model.default_cfg = _CFGS[name]
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model
