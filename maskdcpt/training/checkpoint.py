"""The trainer's state in ``*.ckpt``: step, weights, optimiser, schedule, task state and RNG.

Written with torch.save of tensors and plain types only, so it reads back with ``weights_only=True``; written and
read through the files' module (``maskdcpt/io.py``: ``atomic_write``, ``torch_load``), so a run killed at any
instant leaves the previous checkpoint or the new one and a foreign pickle is refused. Model weights for other
tools go to ``*.safetensors`` with ``maskdcpt.io.save_weights``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..io import atomic_write, torch_load


def save_state(state: Mapping[str, Any], path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(dict(state), tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    state = torch_load(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a training checkpoint (a {type(state).__name__}, not a dict)")
    return state


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU / CUDA); our own draws are seeded explicitly, but
    library code may still touch the global generators."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``rng_state`` saved. A run resumed on fewer (or more) GPUs than it was saved with restores the
    devices both have: ``torch.cuda.set_rng_state_all`` would index past the visible devices. Nothing of ours
    draws from these generators (every draw is seeded by (seed, position)), so the others need no state."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(list(state["cuda"])[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
