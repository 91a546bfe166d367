"""A complete run in its folder, shared by pre-training and fine-tuning: join the process
group, size the threads, check a resumed run's config, write the resolved config and the text log,
build the task, train, report."""
from __future__ import annotations

import logging
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import yaml

from ..config import fixed_paths, flatten, save_config, to_dict
from ..errors import ConfigError
from .distributed import DistInfo, all_reduce_sum, cleanup_distributed, configure_threads, init_distributed
from .logging import RunLog
from .run_lock import LOCK_FILE, RunFolderBusy, RunFolderLock
from .trainer import Task, Trainer, resolve_device

log = logging.getLogger(__name__)
HISTORY = "config_history"  # the configs a run had before a resume changed them: config.1.yaml, config.2.yaml, …


@dataclass
class RunConfig:
    """Where a run lives: ``output_dir/name``; name None: the task's default (``pretrain_<model.name>``, …)."""

    output_dir: str = "runs"
    name: str | None = None


def build_loader_factory(cfg: Any, dist: DistInfo, device: torch.device | None = None) -> Callable[[int], Any]:
    """start_step → this rank's batch stream (``cfg.data``, ``cfg.train``); the global batch is
    split evenly over the ranks. Batches for a GPU come in pinned memory, so that their copy to the device runs
    beside the computation (the trainer copies with ``non_blocking``)."""
    from ..data.loader import build_train_loader

    per_rank = cfg.train.batch_size // dist.world_size
    pin = device is not None and device.type == "cuda"

    def make(start_step: int):
        return build_train_loader(
            cfg.data, seed=cfg.train.seed, batch_size=per_rank, rank=dist.rank, world_size=dist.world_size,
            num_workers=cfg.data.num_workers, start_step=start_step, pin_memory=pin,
        )

    return make


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


_ABSENT = object()


def config_changes(cfg: Any, out_dir: Path, resume: bool | str,
                   resolved: Mapping[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
    """What differs from the config a run in ``out_dir`` was trained with, when this start resumes it:
    [(dotted key, old, new)]. A change under a field marked ``fixed`` (the model, the data's shape) makes the
    checkpoint meaningless: ``ConfigError`` naming it. Nothing when starting fresh or without a saved config.
    ``resolved``: ``to_dict(cfg)`` when the caller has it already."""
    saved = out_dir / "config.yaml"
    resumes = resume is not False and (resume not in (True, "auto") or (out_dir / "checkpoints" / "last.ckpt").is_file())
    if not (resumes and saved.is_file()):
        return []
    try:
        old = flatten(yaml.safe_load(saved.read_text()) or {})
    except yaml.YAMLError as err:
        raise ConfigError(f"{saved} is damaged ({err}); restore it, or start afresh with --no-resume") from None
    new = flatten(to_dict(cfg) if resolved is None else resolved)
    changes = [(k, old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in sorted(set(old) | set(new))
               if old.get(k, _ABSENT) != new.get(k, _ABSENT)]
    fixed = fixed_paths(type(cfg))
    refused = [(k, a, b) for k, a, b in changes if any(k == f or k.startswith(f + ".") for f in fixed)]
    if refused:
        listed = "; ".join(f"{k}: {_show(a)} → {_show(b)}" for k, a, b in refused)
        raise ConfigError(
            f"cannot resume {out_dir} with a changed {listed}: its checkpoint was trained with the old value. Keep "
            "it, start a new run (run.name=NEW), or start this one afresh with --no-resume")
    return changes


def record_config(cfg: Any, out_dir: Path, runlog: RunLog, changes: list[tuple[str, Any, Any]],
                  resolved: Mapping[str, Any] | None = None) -> None:
    """Rank 0: save the resolved config as ``config.yaml``; a different one already there moves to
    ``config_history/config.N.yaml`` first, and the changes go to the log (warnings when resuming).
    ``resolved``: ``to_dict(cfg)`` when the caller has it already."""
    saved = out_dir / "config.yaml"
    resolved = to_dict(cfg) if resolved is None else resolved
    text = yaml.safe_dump(resolved, sort_keys=False)
    if saved.is_file() and saved.read_text() != text:
        history = out_dir / HISTORY
        history.mkdir(exist_ok=True)
        kept = history / f"config.{len(list(history.glob('config.*.yaml'))) + 1}.yaml"
        shutil.copy2(saved, kept)
        if changes:
            log.warning("resuming with %d changed setting(s) (the previous config is kept as %s): %s", len(changes),
                        kept.relative_to(out_dir), "; ".join(f"{k}: {_show(a)} → {_show(b)}" for k, a, b in changes))
        else:
            runlog.write(f"config.yaml replaced (starting afresh); the previous one is kept as {kept.relative_to(out_dir)}")
    save_config(resolved, saved)


def config_summary(cfg: Any, resolved: Mapping[str, Any] | None = None) -> str:
    """The settings that differ from the defaults of ``cfg``'s class, as ``key=value`` (the full config is in
    config.yaml). ``resolved``: ``to_dict(cfg)`` when the caller has it already."""
    try:
        defaults = flatten(to_dict(type(cfg)()))
    except TypeError:  # a config class without defaults for everything
        defaults = {}
    own = flatten(to_dict(cfg) if resolved is None else resolved)
    changed = [f"{k}={_show(v)}" for k, v in own.items() if defaults.get(k, _ABSENT) != v]
    return "config (besides the defaults; all in config.yaml): " + (" ".join(changed) or "the defaults")


def run_task(cfg: Any, out_dir: Path, make_task: Callable[[Any, DistInfo], Task], resume: bool | str,
             announce: Callable[[Task], str] | None = None,
             finished: Callable[[dict[str, Any]], str] | None = None) -> dict[str, Any]:
    """Train ``make_task(cfg, dist)`` in ``out_dir`` (resuming per ``resume``); ``announce`` and
    ``finished`` give what rank 0 prints before and after.

    The run owns its folder while it trains (:class:`RunFolderLock`: a second start into it is refused, naming
    the owner). A start that fails (a config that cannot resume, a damaged checkpoint, a model that does not build)
    changes nothing in the folder: the config, the log and TensorBoard are written only once the run has resumed
    or begun, and a folder the failed start created is removed again, so a mistake leaves nothing behind that a
    later run would take for its own.
    """
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device.type)
    lock = RunFolderLock(out_dir) if dist.is_main else None
    runlog = RunLog(out_dir / "log.txt" if dist.is_main else None, deferred=True)
    locked = created = started = False
    trainer: Trainer | None = None
    try:
        locked, created = _own_folder(lock, out_dir, dist, device)
        threads, why = configure_threads(cfg.train.threads, cfg.data.num_workers)
        torch.manual_seed(cfg.train.seed)  # model initialisation
        resolved = to_dict(cfg)  # once: compared with a resumed run's, summarised, saved
        changes = config_changes(cfg, out_dir, resume, resolved)  # every rank: all refuse alike
        runlog.write(f"--- start on {socket.gethostname()}: "
                     f"rank 0 of {dist.world_size}, device {device}, {threads} CPU threads ({why}), "
                     f"torch {torch.__version__}")
        runlog.write(config_summary(cfg, resolved))
        task = make_task(cfg, dist)
        if dist.is_main and announce is not None:
            runlog.say(announce(task))
        trainer = Trainer(task, cfg.train, cfg.optim, out_dir, build_loader_factory(cfg, dist, device), dist,
                          val_every=cfg.val.every, runlog=runlog)
        if dist.is_main:
            runlog.say(f"run folder: {out_dir.resolve()}")
        trainer.maybe_resume(resume)  # a damaged checkpoint is refused here, before anything is written
        if dist.is_main:
            runlog.commit()
            record_config(cfg, out_dir, runlog, changes, resolved)
        started = True
        metrics = trainer.fit(resume)
        if dist.is_main and finished is not None:
            runlog.say(finished(metrics))
        return metrics
    except BaseException as err:
        if started:
            runlog.write(f"stopped: {type(err).__name__}: {err}")
        runlog.close()
        # before a first step or checkpoint (a missing corpus found by the loader), nothing is worth keeping
        failed_start = isinstance(err, Exception) and (
            trainer is None or (trainer.step == 0 and trainer.last_saved_step is None))
        if dist.is_main and locked and created and failed_start and out_dir.is_dir():
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        runlog.close()
        if lock is not None:
            lock.release()
        cleanup_distributed()


def _own_folder(lock: RunFolderLock | None, out_dir: Path, dist: DistInfo, device: torch.device) -> tuple[bool, bool]:
    """Rank 0 locks ``out_dir`` (creating it); every rank learns whether it could, so that all stop alike instead
    of waiting for a rank 0 that never comes. Returns (locked, created: the folder held nothing before)."""
    busy: RunFolderBusy | None = None
    created = False
    if lock is not None:
        try:
            lock.acquire()
            created = not any(p.name != LOCK_FILE for p in out_dir.iterdir())
        except RunFolderBusy as err:
            busy = err
    if dist.enabled:
        refused = all_reduce_sum(torch.tensor([float(busy is not None)], device=device), dist).item() > 0
        if refused and busy is None:
            raise RunFolderBusy(f"run folder {out_dir} is in use by another run (rank 0 names it)")
    if busy is not None:
        raise busy
    return lock is not None, created
