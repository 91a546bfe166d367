"""Weight files, in one place: writing them atomically, reading them safely, loading them into a model by name,
and the restorer file that rebuilds a model on its own.

* ``atomic_write``: a temporary file in the same folder, then ``os.replace``: a process killed at any instant leaves
  the previous file or the new one, never half of one. Every file we write goes through it (the trainer's
  ``.ckpt`` too, in ``maskdcpt/training/checkpoint.py``). Files get the permissions the umask allows (as ``open``
  gives), not the private 0600 of a temporary file; ``remove_stale_temporaries`` clears what a killed write left.
* ``torch_load``: every ``.pth``/``.ckpt`` is read with ``torch.load(weights_only=True)``: a file whose pickle would
  call anything but the tensor constructors is refused (CheckpointError naming the file) and nothing in it runs.
* ``read_state_dict``: the one place that takes a checkpoint's wrappers off (BasicSR's ``params_ema`` / ``params``,
  a ``state_dict`` entry, DDP's ``module.``). Arch files' ``checkpoint_filter_fn`` only rename layouts.
* ``load_pretrained``: compares the checkpoint to the model by name before anything is copied and reports every
  problem by key; the wrapper key defaults to the model's registry config (``param_key``); a stem widened for
  prior channels (``prior.py``) takes plain 3-channel weights.
* ``save_weights`` (safetensors: no code can ride along), ``save_restorer`` / ``load_restorer``: a ``.safetensors``
  whose metadata names how to rebuild the model::

      {"format": "maskdcpt-restorer", "model_name": "nafnet_5d", "model_kwargs": "{\\"width\\": 32}"}

  Every weight file the project writes says what it is in ``format`` (``save_weights`` requires it): a restorer,
  a pre-training encoder export (``maskdcpt-encoder``), the trainer's weights of a run (``maskdcpt-pretraining``:
  backbone and classifier), … ``load_restorer`` refuses a file whose format is not a restorer's.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from ..errors import CheckpointError, ConfigError, MissingFileError
from .prior import add_prior_channels, widen_stem_weights
from .registry import create_model, list_models

__all__ = [
    "LoadReport", "atomic_write", "torch_load", "unwrap_state_dict", "read_state_dict", "load_pretrained",
    "save_weights", "read_metadata", "save_restorer", "load_restorer", "resolve_restorer_path",
    "remove_stale_temporaries", "RESTORER_FORMAT", "RESTORER_FILENAME", "ENCODER_FORMAT",
]

StateDict = dict[str, torch.Tensor]
_LIST_LIMIT = 20  # names listed per category in an error message
WRAPPER_KEYS = ("params_ema", "params", "state_dict")  # BasicSR's EMA / plain weights; Lightning-style files
RESTORER_FORMAT = "maskdcpt-restorer"
ENCODER_FORMAT = "maskdcpt-encoder"  # a pre-trained backbone, for fine-tuning
# What a file of each format is, for errors that refuse it.
FORMAT_DESCRIPTIONS = {
    ENCODER_FORMAT: "a pre-trained encoder (backbone) export, which fine-tuning turns into a restorer "
                    "(tools/finetune.py --pretrained FILE)",
    "maskdcpt-pretraining": "the weights of a pre-training run (backbone, reconstruction head and classifier); "
                            "fine-tune its encoder first (tools/finetune.py --pretrained RUN_FOLDER)",
}
_TMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # atomic_write's temporaries: .<name>.<random>.tmp
RESTORER_FILENAME = "restorer.safetensors"


# ----------------------------------------------------------------------------------------- writing and reading


def current_umask() -> int:
    """The process's umask (read without changing it where /proc says it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only where /proc is missing)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, then move it onto ``path``.

    The file ends with mode ``0666 & ~umask``, as ``open(path, "w")`` would give (a temporary file is created
    private, 0600, which would keep colleagues on a shared cluster from reading checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as err:
        full = isinstance(err, Exception) and _disk_full(err, path.parent)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full:
            raise OSError(full, os.strerror(full), str(path)) from None
        if isinstance(err, OSError) and err.filename in (None, tmp):
            raise OSError(err.errno, err.strerror, str(path)) from None  # name the file the user knows
        raise
    return path


def _disk_full(err: Exception, folder: Path) -> int:
    """ENOSPC or EDQUOT if ``err`` is a write that ran out of room, else 0. Libraries say so in their own words
    (torch.save: "unexpected pos …" from a short write; safetensors: "No space left on device" inside its own
    error type), so a failed write with no space left where it was going counts too."""
    if isinstance(err, OSError):
        return err.errno if err.errno in (errno.ENOSPC, errno.EDQUOT) else 0
    text = str(err)
    if "No space left on device" in text:
        return errno.ENOSPC
    if "Disk quota exceeded" in text:
        return errno.EDQUOT
    try:
        stat = os.statvfs(folder)
    except OSError:
        return 0
    return errno.ENOSPC if stat.f_bavail * stat.f_frsize < (1 << 20) else 0


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writes killed midway (``kill -9``, a node failure) left in ``folder``;
    returns them. Call it where no other process is writing into ``folder`` (a run's rank 0 at its start)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if _TMP_NAME.match(entry.name) and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
            except FileNotFoundError:
                continue
            removed.append(entry)
    return removed


def torch_load(path: str | os.PathLike) -> Any:
    """``torch.load`` on the CPU, weights only: tensors, containers and plain types; anything else is refused.

    Never retried without ``weights_only``, and the error never suggests it: a file that needs more than tensors
    to load could run any code.
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):  # not a pickle torch could read at all
            raise CheckpointError(f"{path}: damaged or not a PyTorch checkpoint: {str(err).splitlines()[0]}") from None
        culprit = re.search(r"GLOBAL ([\w.]+)", str(err))
        asks = f"it would call {culprit.group(1)} while loading" if culprit else "it holds Python objects besides tensors"
        raise CheckpointError(
            f"{path}: refused: {asks}, and loading it could run any code. Nothing in it was executed. Use a file "
            "that holds only tensors (a state_dict saved with torch.save, or .safetensors) from a source you trust"
        ) from None
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM):
            raise
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from None
    except Exception as err:  # noqa: BLE001 — whatever the reader trips on, the file is not a usable checkpoint
        detail = str(err).split(". ")[0].strip() if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: damaged or not a PyTorch checkpoint (an interrupted copy?): {detail}") from None


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
        raise CheckpointError(
            f"{source}: no state_dict found under {order[0]!r} or {', '.join(map(repr, order[1:]))}, and the file "
            f"is not a bare name→tensor mapping (top level: {top})"
        )
    prefix = "module."
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}, used


def read_state_dict(path: str | os.PathLike, key: str = "params_ema") -> tuple[StateDict, str | None]:
    """Read the tensors of a checkpoint: ``.safetensors``, or a ``.pth`` holding a wrapped or bare state_dict
    (see ``unwrap_state_dict``). Returns (state_dict, the wrapper key used or None)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), None
        except SafetensorError as err:
            raise CheckpointError(f"{path}: not a valid safetensors file: {err}") from None
    return unwrap_state_dict(torch_load(path), key, source=str(path))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file ({} when it has none)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a valid safetensors file: {err}") from None


def save_weights(state: Mapping[str, torch.Tensor] | nn.Module, path: str | os.PathLike,
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a state_dict (or a module's) atomically as ``.safetensors`` (contiguous CPU copies; no code can ride
    along). Metadata values that are not strings are stored as JSON; ``format`` (what the file is, e.g.
    ``maskdcpt-restorer``) is required, so that every file says what it holds."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a safetensors file must end in .safetensors")
    if not (metadata or {}).get("format"):
        raise ValueError(f"{path}: save_weights needs metadata['format'] saying what the file holds")
    if isinstance(state, nn.Module):
        state = state.state_dict()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta or None))


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
