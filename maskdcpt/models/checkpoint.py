"""Weight files and models: loading a file into a model by name, and the restorer file that rebuilds a model on
its own. The files themselves are written and read in :mod:`maskdcpt.io` (atomic writes, weights-only reads,
wrappers taken off).

* ``load_pretrained``: compares the checkpoint to the model by name before anything is copied and reports every
  problem by key; the wrapper key defaults to the model's registry config (``param_key``); a stem widened for
  prior channels (``prior.py``) takes plain 3-channel weights.
* ``save_restorer`` / ``load_restorer``: a ``.safetensors`` whose metadata names how to rebuild the model::

      {"format": "maskdcpt-restorer", "model_name": "nafnet_5d", "model_kwargs": "{\\"width\\": 32}"}

  Every weight file the project writes says what it is in ``format`` (``maskdcpt.io.save_weights`` requires it): a
  restorer, a pre-training encoder export (``maskdcpt-encoder``), the trainer's weights of a run
  (``maskdcpt-pretraining``: backbone and classifier), … ``load_restorer`` refuses a file whose format is not a
  restorer's.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from ..errors import CheckpointError, MissingFileError
from ..io import StateDict, read_metadata, read_state_dict, save_weights
from .prior import add_prior_channels, widen_stem_weights
from .registry import create_model

__all__ = [
    "LoadReport", "load_pretrained", "save_restorer", "load_restorer", "resolve_restorer_path", "RESTORER_FORMAT",
    "RESTORER_FILENAME", "ENCODER_FORMAT",
]

_LIST_LIMIT = 20  # names listed per category in an error message
RESTORER_FORMAT = "maskdcpt-restorer"
ENCODER_FORMAT = "maskdcpt-encoder"  # a pre-trained backbone, for fine-tuning
# What a file of each format is, for errors that refuse it.
FORMAT_DESCRIPTIONS = {
    ENCODER_FORMAT: "a pre-trained encoder (backbone) export, which fine-tuning turns into a restorer "
                    "(tools/finetune.py --pretrained FILE)",
    "maskdcpt-pretraining": "the weights of a pre-training run (backbone, reconstruction head and classifier); "
                            "fine-tune its encoder first (tools/finetune.py --pretrained RUN_FOLDER)",
}
RESTORER_FILENAME = "restorer.safetensors"


# ----------------------------------------------------------------------------------------- loading into a model


@dataclass
class LoadReport:
    """What ``load_pretrained`` found: keys the model has but the file lacks, keys the file has but the model lacks,
    and keys present in both with different shapes ((name, file shape, model shape)). ``source_key`` is the wrapper
    key the weights came from (``params_ema``, ``params``) or None for a bare state_dict / safetensors file; ``new``
    names what the model has beyond the checkpoint by design (prior channels of a widened stem)."""

    path: str
    source_key: str | None
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    new: list[str] = field(default_factory=list)

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


def default_filter_fn(model: nn.Module) -> Callable[[StateDict, nn.Module], StateDict] | None:
    """The ``checkpoint_filter_fn`` of the module that defines the model's class (timm's convention), if any."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike,
    strict: bool = True,
    key: str | None = None,
    filter_fn: Callable[[StateDict, nn.Module], StateDict] | None = None,
) -> LoadReport:
    """Load a checkpoint into ``model`` and report what matched, by name.

    ``key``: the wrapper key of a ``.pth`` (default: the model's ``default_cfg.param_key``, else ``params_ema``).
    ``filter_fn(state_dict, model)`` maps a foreign layout onto the model's names; by default the
    ``checkpoint_filter_fn`` of the model's own module is used when it defines one. A stem widened for prior
    channels takes plain weights in its first channels (``prior.widen_stem_weights``; listed in ``report.new``).
    ``strict=True`` raises a ValueError listing every missing, unexpected and mis-shaped key and copies nothing;
    ``strict=False`` copies the keys that match in name and shape and returns the report of the rest.
    """
    if key is None:
        key = getattr(getattr(model, "default_cfg", None), "param_key", "params_ema")
    state, used = read_state_dict(path, key)
    filter_fn = filter_fn or default_filter_fn(model)
    if filter_fn is not None:
        state = filter_fn(state, model)
    state, new = widen_stem_weights(model, state)
    own = model.state_dict()
    report = LoadReport(path=str(path), source_key=used, new=new)
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    report.mismatched = [
        (k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape
    ]
    if strict and not report.ok:
        raise CheckpointError(f"{path}: checkpoint does not match {type(model).__name__} strictly:\n{report.describe()}")
    bad = {k for k, _, _ in report.mismatched}
    matching = {k: v for k, v in state.items() if k in own and k not in bad}
    model.load_state_dict(matching, strict=strict)
    report.loaded = list(matching)
    return report


# ----------------------------------------------------------------------------------------- the restorer file


def save_restorer(model: nn.Module, path: str | os.PathLike, model_name: str,
                  model_kwargs: Mapping[str, Any] | None = None,
                  extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model``'s state_dict as a restorer file that :func:`load_restorer` can rebuild on its own.

    ``model_kwargs`` are the overrides passed to ``create_model(model_name, **model_kwargs)`` (JSON-serialisable).
    """
    try:
        kwargs_json = json.dumps(dict(model_kwargs or {}), sort_keys=True)
    except TypeError as err:
        raise ValueError(f"model_kwargs for {model_name!r} must be JSON-serialisable: {err}") from None
    metadata = {str(k): str(v) for k, v in (extra_metadata or {}).items()}
    metadata.update(format=RESTORER_FORMAT, model_name=model_name, model_kwargs=kwargs_json)
    return save_weights(model, path, metadata=metadata)


def resolve_restorer_path(path: str | os.PathLike) -> Path:
    """A file as given, or ``<run folder>/restorer.safetensors``; errors name what is missing."""
    path = Path(path)
    if path.is_dir():
        candidate = path / RESTORER_FILENAME
        if not candidate.is_file():
            raise MissingFileError(f"run folder {path} holds no {RESTORER_FILENAME}")
        return candidate
    if not path.is_file():
        raise MissingFileError(f"restorer checkpoint {path} does not exist")
    if path.suffix == ".ckpt":  # a trainer's state (weights, optimiser, schedule) for resuming, not for restoring
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        weights = [run / RESTORER_FILENAME, path.with_suffix(".safetensors"), path.parent / "best.safetensors"]
        usable = [str(w) for w in weights if w.is_file()]
        hint = (f"restore with {' or '.join(usable)} (the run's restorer: its EMA weights; then the weights of "
                "that checkpoint; then the best validated)" if usable else
                "give the run's restorer.safetensors, written when fine-tuning ends")
        raise CheckpointError(f"{path} is a training checkpoint (for --resume), not a restorer file; {hint}")
    return path


def load_restorer(path: str | os.PathLike, device: str | torch.device = "cpu", arch: str | None = None,
                  arch_kwargs: Mapping[str, Any] | None = None, any_format: bool = False) -> nn.Module:
    """Rebuild a dense restorer in eval mode on ``device`` from a restorer file, a run folder holding
    ``restorer.safetensors``, or a release ``.pth`` / metadata-less ``.safetensors`` together with ``arch``.

    ``arch`` (a registered model name) and ``arch_kwargs`` are needed for files without restorer metadata (a
    release ``.pth`` loads from its model's ``param_key``, falling back to the other wrapper); when given for a
    restorer file they override its metadata. Weights must match the model exactly (strict). A file whose
    ``format`` metadata says it is something else (a pre-training encoder export, …) is refused unless
    ``any_format``: its backbone may load into the restorer and produce images that mean nothing.
    """
    file = resolve_restorer_path(path)
    metadata = read_metadata(file) if file.suffix == ".safetensors" else {}
    fmt = metadata.get("format")
    if fmt is not None and fmt != RESTORER_FORMAT and not any_format:
        what = FORMAT_DESCRIPTIONS.get(fmt, f"a file of format {fmt!r}")
        raise CheckpointError(f"{file} is not a restorer but {what}; restoring with it gives meaningless images "
                              "(use a fine-tuning run's restorer.safetensors, or --any-format to run it anyway)")
    name = arch or metadata.get("model_name")
    if name is None:
        raise CheckpointError(f"{file}: no 'model_name' in its metadata; pass the architecture (--arch NAME)")
    if arch_kwargs is not None:
        kwargs = dict(arch_kwargs)
    elif arch is None or arch == metadata.get("model_name"):
        try:
            kwargs = json.loads(metadata.get("model_kwargs", "{}"))
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{file}: metadata 'model_kwargs' is not valid JSON: {err}") from None
        if not isinstance(kwargs, dict):
            raise CheckpointError(f"{file}: metadata 'model_kwargs' must be a JSON object, got {kwargs!r}")
    else:
        kwargs = {}
    try:
        model = create_model(name, **kwargs)
    except ValueError as err:
        raise CheckpointError(f"{file}: {err}") from None
    prior_channels = int(metadata.get("prior_channels", "0") or 0)
    if prior_channels:  # fine-tuned with generative priors as extra input channels
        add_prior_channels(model, prior_channels)
    load_pretrained(model, file, strict=True)
    return model.to(device).eval()
