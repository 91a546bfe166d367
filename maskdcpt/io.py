"""Files, in one place: written atomically, read safely. Nothing here knows a model; ``maskdcpt.models.checkpoint``
loads these files into models by name.

* ``atomic_write``: a temporary file in the same folder, then ``os.replace``: a process killed at any instant leaves
  the previous file or the new one, never half of one. Every file we write goes through it (configs, weight files,
  the trainer's ``.ckpt``). Files get the permissions the umask allows (as ``open`` gives), not the private 0600 of
  a temporary file; ``remove_stale_temporaries`` clears what a killed write left.
* ``torch_load``: every ``.pth``/``.ckpt`` is read with ``torch.load(weights_only=True)``: a file whose pickle would
  call anything but the tensor constructors is refused (CheckpointError naming the file) and nothing in it runs.
* ``read_state_dict``: the one place that takes a checkpoint's wrappers off (BasicSR's ``params_ema`` / ``params``,
  a ``state_dict`` entry, DDP's ``module.``). Arch files' ``checkpoint_filter_fn`` only rename layouts.
* ``save_weights`` (safetensors: no code can ride along) with string metadata; ``format`` (what the file is) is
  required, so that every weight file the project writes says what it holds; ``read_metadata`` reads it back.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from .errors import CheckpointError, MissingFileError

__all__ = [
    "atomic_write", "current_umask", "remove_stale_temporaries", "torch_load", "unwrap_state_dict", "read_state_dict",
    "read_metadata", "save_weights", "WRAPPER_KEYS",
]

StateDict = dict[str, torch.Tensor]
WRAPPER_KEYS = ("params_ema", "params", "state_dict")  # BasicSR's EMA / plain weights; Lightning-style files
_TMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # atomic_write's temporaries: .<name>.<random>.tmp

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
