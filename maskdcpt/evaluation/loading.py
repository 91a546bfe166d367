"""The restorer checkpoint we standardise on, and loading any restorer for evaluation or inference.

A restorer file is a ``.safetensors`` whose tensors are the (EMA) weights of a dense backbone and whose metadata
names how to rebuild it::

    {"format": "maskdcpt-restorer", "model_name": "nafnet_5d", "model_kwargs": "{\"width\": 32}"}

``load_restorer`` accepts that file, a run folder holding ``restorer.safetensors`` (written by the trainer),
or a release ``.pth`` / metadata-less ``.safetensors`` together with ``arch=NAME``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

RESTORER_FORMAT = "maskdcpt-restorer"
RESTORER_FILENAME = "restorer.safetensors"


def save_restorer(model: nn.Module, path: str | os.PathLike, model_name: str,
                  model_kwargs: Mapping[str, Any] | None = None,
                  extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model``'s state_dict as a restorer file that :func:`load_restorer` can rebuild on its own.

    ``model_kwargs`` are the overrides passed to ``create_model(model_name, **model_kwargs)`` (JSON-serialisable).
    """
    from maskdcpt.models import save_safetensors

    try:
        kwargs_json = json.dumps(dict(model_kwargs or {}), sort_keys=True)
    except TypeError as err:
        raise ValueError(f"model_kwargs for {model_name!r} must be JSON-serialisable: {err}") from None
    metadata = {str(k): str(v) for k, v in (extra_metadata or {}).items()}
    metadata.update(format=RESTORER_FORMAT, model_name=model_name, model_kwargs=kwargs_json)
    return save_safetensors(model, path, metadata=metadata)


def read_restorer_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file ({} when it has none)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a valid safetensors file: {err}") from None


def resolve_restorer_path(path: str | os.PathLike) -> Path:
    """A file as given, or ``<run folder>/restorer.safetensors``; errors name what is missing."""
    path = Path(path)
    if path.is_dir():
        candidate = path / RESTORER_FILENAME
        if not candidate.is_file():
            raise FileNotFoundError(f"run folder {path} holds no {RESTORER_FILENAME}")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"restorer checkpoint {path} does not exist")
    return path


def load_restorer(path: str | os.PathLike, device: str | torch.device = "cpu", arch: str | None = None,
                  arch_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Rebuild a dense restorer in eval mode on ``device`` from a checkpoint.

    ``arch`` (a registered model name) and ``arch_kwargs`` are needed for files without restorer metadata
    (release ``.pth`` files: their ``params_ema`` is preferred, then ``params``); when given for a restorer file
    they override its metadata. Weights must match the model exactly (strict).
    """
    from maskdcpt.models import create_model, load_pretrained

    file = resolve_restorer_path(path)
    metadata = read_restorer_metadata(file) if file.suffix == ".safetensors" else {}
    name = arch or metadata.get("model_name")
    if name is None:
        raise ValueError(f"{file}: no 'model_name' in its metadata; pass the architecture (--arch NAME)")
    if arch_kwargs is not None:
        kwargs = dict(arch_kwargs)
    elif arch is None or arch == metadata.get("model_name"):
        try:
            kwargs = json.loads(metadata.get("model_kwargs", "{}"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: metadata 'model_kwargs' is not valid JSON: {err}") from None
        if not isinstance(kwargs, dict):
            raise ValueError(f"{file}: metadata 'model_kwargs' must be a JSON object, got {kwargs!r}")
    else:
        kwargs = {}
    try:
        model = create_model(name, **kwargs)
    except ValueError as err:
        raise ValueError(f"{file}: {err}") from None
    prior_channels = int(metadata.get("prior_channels", "0") or 0)
    if prior_channels:  # fine-tuned with generative priors as extra input channels
        from maskdcpt.models.prior import add_prior_channels

        add_prior_channels(model, prior_channels)
    load_pretrained(model, file, strict=True)
    return model.to(device).eval()
