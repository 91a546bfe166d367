"""Checkpoints written atomically: a temporary file in the same folder, then ``os.replace``.

A run killed at any instant leaves either the previous checkpoint or the new one, never a
half-written file. Training state goes in ``*.ckpt`` (torch.save of tensors and plain types
only, so it loads with ``weights_only=True``); model weights also go to ``*.safetensors``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_state(state: Mapping[str, Any], path: str | Path) -> None:
    _atomic_write(Path(path), lambda tmp: torch.save(dict(state), tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file: name it
        raise ValueError(f"cannot load checkpoint {str(path)!r}: {err}") from None


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, Any] | None = None) -> None:
    """Weights as safetensors; metadata values are stored as JSON strings."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU / CUDA); our own draws are seeded explicitly, but
    library code may still touch the global generators."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
