"""Loading weights safely: release ``.pth`` files and our own ``.safetensors``.

Every ``.pth`` is read with ``torch.load(weights_only=True)``: a file whose pickle would call anything but the
tensor constructors is refused (ValueError naming the file) and nothing in it runs. Checkpoints are compared to
the model by name before anything is copied, and every problem is reported by key.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

__all__ = ["LoadReport", "unwrap_state_dict", "read_state_dict", "load_pretrained", "save_safetensors"]

StateDict = dict[str, torch.Tensor]
_LIST_LIMIT = 20  # names listed per category in an error message
WRAPPER_KEYS = ("params_ema", "params", "state_dict")  # BasicSR's EMA / plain weights; Lightning-style files


@dataclass
class LoadReport:
    """What ``load_pretrained`` found: keys the model has but the file lacks, keys the file has but the model lacks,
    and keys present in both with different shapes ((name, file shape, model shape)). ``source_key`` is the wrapper
    key the weights came from (``params_ema``, ``params``) or None for a bare state_dict / safetensors file."""

    path: str
    source_key: str | None
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        def names(items: list[str]) -> str:
            more = f", … and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
            return ", ".join(items[:_LIST_LIMIT]) + more

        lines = []
        if self.missing:
            lines.append(f"missing in the checkpoint ({len(self.missing)}): {names(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected in the checkpoint ({len(self.unexpected)}): {names(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k} (checkpoint {list(a)} vs model {list(b)})" for k, a, b in self.mismatched]
            lines.append(f"shape mismatch ({len(self.mismatched)}): {names(shown)}")
        return "\n".join(lines) if lines else "all keys matched"


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler's refusals and corrupt files alike: never retry without weights_only
        raise ValueError(
            f"{path}: cannot read as a weights-only checkpoint (refused or corrupt; nothing in it was executed): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def unwrap_state_dict(obj: Any, key: str = "params_ema", source: str = "checkpoint") -> tuple[StateDict, str | None]:
    """The state_dict inside a loaded checkpoint: ``obj[key]``, else the first of ``params_ema``, ``params``,
    ``state_dict`` present (the release's loader falls back from the asked key the same way), else ``obj`` itself.
    A leading ``module.`` (DDP) is stripped from every key. Returns (state_dict, the wrapper key used or None);
    ``source`` names the file in the error raised when no name → tensor mapping is found."""
    order = [key, *(k for k in WRAPPER_KEYS if k != key)]
    used = next((k for k in order if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)), None)
    state = obj if used is None else obj[used]
    if not _is_state_dict(state):
        top = list(obj.keys())[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"{source}: no state_dict found under {order[0]!r} or {', '.join(map(repr, order[1:]))}, and the file "
            f"is not a bare name→tensor mapping (top level: {top})"
        )
    prefix = "module."
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}, used


def read_state_dict(path: str | Path, key: str = "params_ema") -> tuple[StateDict, str | None]:
    """Read the tensors of a checkpoint: ``.safetensors``, or a ``.pth`` holding a wrapped or bare state_dict
    (see ``unwrap_state_dict``; the one place that takes wrappers off). Returns (state_dict, the wrapper key used
    or None)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), None
        except SafetensorError as err:
            raise ValueError(f"{path}: not a valid safetensors file: {err}") from None
    return unwrap_state_dict(_torch_load(path), key, source=str(path))


def default_filter_fn(model: nn.Module) -> Callable[[StateDict, nn.Module], StateDict] | None:
    """The ``checkpoint_filter_fn`` of the module that defines the model's class (timm's convention), if any."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    strict: bool = True,
    key: str | None = None,
    filter_fn: Callable[[StateDict, nn.Module], StateDict] | None = None,
) -> LoadReport:
    """Load a checkpoint into ``model`` and report what matched, by name.

    ``key``: the wrapper key of a ``.pth`` (default: the model's ``default_cfg.param_key``, else ``params_ema``).
    ``filter_fn(state_dict, model)`` maps a foreign layout onto the model's names; by default the
    ``checkpoint_filter_fn`` of the model's own module is used when it defines one. ``strict=True`` raises a
    ValueError listing every missing, unexpected and mis-shaped key and copies nothing; ``strict=False`` copies the
    keys that match in name and shape and returns the report of the rest.
    """
    if key is None:
        key = getattr(getattr(model, "default_cfg", None), "param_key", "params_ema")
    state, used = read_state_dict(path, key)
    filter_fn = filter_fn or default_filter_fn(model)
    if filter_fn is not None:
        state = filter_fn(state, model)
    own = model.state_dict()
    report = LoadReport(path=str(path), source_key=used)
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    report.mismatched = [
        (k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape
    ]
    if strict and not report.ok:
        raise ValueError(f"{path}: checkpoint does not match {type(model).__name__}:\n{report.describe()}")
    bad = {k for k, _, _ in report.mismatched}
    matching = {k: v for k, v in state.items() if k in own and k not in bad}
    model.load_state_dict(matching, strict=strict)
    report.loaded = list(matching)
    return report


def save_safetensors(state: Mapping[str, torch.Tensor] | nn.Module, path: str | Path,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write a state_dict (or a module's) as ``.safetensors`` (contiguous CPU copies; no code can ride along)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a safetensors file must end in .safetensors")
    if isinstance(state, nn.Module):
        state = state.state_dict()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=dict(metadata) if metadata else None)
    return path
