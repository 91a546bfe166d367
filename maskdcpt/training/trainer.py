"""The step-based trainer shared by pre-training and fine-tuning.

It owns the loop and everything around it (devices, DDP, mixed precision, accumulation,
clipping, the schedule, non-finite losses, checkpoints, resume, progress bar, TensorBoard),
and nothing of what is trained: a :class:`Task` says which module, which parameter groups
and how a batch becomes a loss.
"""
from __future__ import annotations

import abc
import contextlib
import json
import logging
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Protocol

import torch
import torch.nn as nn
from tqdm import tqdm

from ..config import flatten, ranged
from ..errors import CheckpointError, ConfigError, MissingFileError, UserError
from ..io import remove_stale_temporaries, save_weights
from .checkpoint import load_state, rng_state, save_state, set_rng_state
from .distributed import DistInfo, all_reduce_mean, all_reduce_sum, convert_sync_batchnorm, state_digest
from .hold import StepHold
from .logging import RunLog, TensorBoardLogger
from .optim import OptimConfig, ParamGroup, build_optimizer, build_scheduler
from .termination import TerminationRequested, TerminationWatch

log = logging.getLogger(__name__)

# optimiser settings a resumed run takes from its config, not from the checkpoint
_CONFIGURED = ("initial_lr", "weight_decay", "betas")


@dataclass
class TrainConfig:
    max_steps: int = ranged(300, ge=1)
    batch_size: int = ranged(8, ge=1, fixed=True)  # global: summed over ranks and accumulation micro-steps
    grad_accum: int = ranged(1, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    device: str = "auto"
    seed: int = ranged(0, ge=0)
    # Intervals in steps; 0 switches the periodic action off (logging and last.ckpt still happen at the end).
    log_every: int = ranged(10, ge=0)
    image_every: int = ranged(100, ge=0)
    checkpoint_every: int = ranged(50, ge=0)
    keep_every: int = ranged(0, ge=0)  # also keep step_XXXXXXX.ckpt every N steps (0: only last.ckpt)
    max_bad_steps: int = ranged(5, ge=1)  # this many non-finite losses in a row stop the run
    progress: bool = True  # a progress bar; false: a progress line every log_every steps (always in RUN/log.txt)
    threads: int = ranged(0, ge=0)  # intra-op CPU threads; 0: the CPUs allotted to the process (affinity, SLURM)


@dataclass
class StepOutput:
    """What a task's step returns: the loss to back-propagate, named terms to log (already
    weighted or not, the task decides), and anything the task wants back for images/metrics."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    extras: dict[str, Any]


class Task(abc.ABC):
    """What is trained: a model, its parameter groups, and how a batch becomes a loss.

    ``param_groups`` and ``step`` are a task's own; everything else defaults to nothing.
    """

    model: nn.Module
    # True where some parameters get no gradient by design (a loss weight of 0): DDP must then
    # look for unused parameters instead of waiting for them.
    has_unused_parameters: bool = False

    @property
    def forward_module(self) -> nn.Module:
        """The module ``step`` calls and DDP wraps: the model, or a wrapper that shows DDP every output."""
        return self.model

    def to(self, device: torch.device) -> None:
        """Move every module and tensor the task owns to ``device`` (the trainer's): the model, and whatever else a
        task keeps beside it (fine-tuning's EMA copy), so that nothing is left on the CPU of a GPU run."""
        self.model.to(device)

    @abc.abstractmethod
    def param_groups(self, optim: OptimConfig) -> list[ParamGroup]: ...

    @abc.abstractmethod
    def step(self, model: nn.Module, batch: dict[str, Any], step: int) -> StepOutput: ...

    def metrics(self, out: StepOutput, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named values to log besides the loss terms (averaged like them)."""
        return {}

    def images(self, out: StepOutput, batch: dict[str, Any], logger: TensorBoardLogger, step: int) -> None:
        """Write images of ``out`` to ``logger`` (rank 0, every ``train.image_every`` steps)."""

    def after_step(self, step: int) -> None:
        """Called after every optimiser step (``step`` counts the steps done)."""

    def state_dict(self) -> dict[str, Any]:
        """The task's own training state, saved in the checkpoint beside the model's."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def export(self, run_dir: Path) -> None:
        """Write the run's product into ``run_dir`` at the end of training (rank 0)."""

    def weights_metadata(self) -> dict[str, Any]:
        """What ``checkpoints/last.safetensors`` (``model``'s weights) is: at least its ``format``, and how to
        rebuild the model (``model_name``, ``model_kwargs``) where there is a registered one."""
        return {"format": "maskdcpt-training-weights"}

    # validation in the loop: the trainer calls these on rank 0 (see ``Trainer.validate``)
    best_metric: str | None = None  # a higher-is-better entry of validate()'s result that selects best.safetensors

    def validate(self, step: int) -> dict[str, Any] | None:
        """Evaluate on the held-out set: JSON-serialisable figures (numbers, and dicts of numbers, are logged
        to TensorBoard under ``val/``), or None when the task has nothing to validate."""
        return None

    def log_validation(self, result: dict[str, Any], logger: TensorBoardLogger, step: int) -> None:
        """Write what does not fit a scalar (a confusion matrix, …) to ``logger``."""

    def describe_validation(self, result: dict[str, Any]) -> str:
        """One line for the console."""
        return " ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, (int, float)) and k != "step")

    def best_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights kept as best.safetensors (by default the model's, described by :meth:`weights_metadata`)."""
        return self.model.state_dict()

    def best_metadata(self) -> dict[str, Any]:
        """What best.safetensors is (by default what last.safetensors is)."""
        return self.weights_metadata()


class BatchStream(Protocol):
    """What ``make_loader(start_step)`` returns: endless batches, and the unusable files met on the way."""

    skipped: int  # bad-file events so far, logged as data/skipped_files

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def log_skips(self) -> None:
        """Name (in a log line) the files skipped since the last such line."""


class NonFiniteLossError(UserError, RuntimeError):
    """The loss stayed non-finite for ``train.max_bad_steps`` steps: the run stops with its last finite state saved."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available")
    return device


def due(step: int, every: int) -> bool:
    """Whether a periodic action of interval ``every`` (0: off) falls on ``step``."""
    return every > 0 and step % every == 0


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _split(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    if parts == 1:
        return [batch]
    n = next(v.shape[0] for v in batch.values() if torch.is_tensor(v))
    if n % parts:
        raise ValueError(f"per-rank batch {n} is not divisible by train.grad_accum={parts}")
    size = n // parts
    return [
        {k: (v[i * size : (i + 1) * size] if torch.is_tensor(v) or isinstance(v, list) else v) for k, v in batch.items()}
        for i in range(parts)
    ]


class Trainer:
    """Runs ``task`` for ``cfg.max_steps`` optimiser steps, resuming from ``run_dir`` if it can."""

    def __init__(
        self,
        task: Task,
        cfg: TrainConfig,
        optim: OptimConfig,
        run_dir: str | Path,
        make_loader: Callable[[int], BatchStream],
        dist_info: DistInfo = DistInfo(),
        val_every: int = 0,
        runlog: RunLog | None = None,
    ):
        if cfg.batch_size % (dist_info.world_size * cfg.grad_accum):
            raise ConfigError(
                f"train.batch_size={cfg.batch_size} must be divisible by world size {dist_info.world_size}"
                f" × train.grad_accum {cfg.grad_accum}"
            )
        self.task, self.cfg, self.optim_cfg = task, cfg, optim
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.make_loader = make_loader
        self.dist = dist_info
        self.val_every = int(val_every)
        self.best_value: float | None = None
        self.elapsed_before = 0.0
        self._started = time.perf_counter()
        self.device = resolve_device(cfg.device)
        self.autocast_dtype = None
        if cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda"):
            self.autocast_dtype = torch.bfloat16

        if dist_info.enabled:
            # one set of BatchNorm statistics over the global batch, as a single process computes them (in place: the
            # same parameters); the classifier's masked BatchNorms keep their mask, on CPU (gloo) as on CUDA
            convert_sync_batchnorm(task.model, self.device.type)
        task.to(self.device)
        self.optimizer = build_optimizer(task.param_groups(optim), optim)
        self.scheduler = build_scheduler(self.optimizer, optim, cfg.max_steps)
        self.model: nn.Module = task.forward_module
        if dist_info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=task.has_unused_parameters
            )
        self.step_model = torch.compile(self.model) if cfg.compile else self.model
        self.loader: BatchStream | None = None
        self.step = 0
        self.bad_in_row = 0
        self.skipped = 0
        self.resumed = False  # maybe_resume ran: fit() does not resume again
        self.last_saved_step: int | None = None  # the step of checkpoints/last.ckpt
        self.termination = TerminationWatch()
        # the state before the first of a run of non-finite steps (they change no weight, but the schedule moves on)
        self._before_bad: dict[str, Any] | None = None
        self.logger = TensorBoardLogger(self.run_dir / "tensorboard", enabled=dist_info.is_main)
        self.runlog = runlog if runlog is not None else RunLog(None)

    def say(self, text: str) -> None:
        """Rank 0: print a line and keep it in ``RUN/log.txt``."""
        if self.dist.is_main:
            self.runlog.say(text)

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "maskdcpt-training-state",  # what the file is; its weights_metadata says which model
            "weights_metadata": self.task.weights_metadata(),
            "step": self.step,
            "model": self.task.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "task": self.task.state_dict(),
            "rng": rng_state(),
            "bad_in_row": self.bad_in_row,
            "skipped": self.skipped,
            "elapsed_s": self.elapsed_before + (time.perf_counter() - self._started),
            "world_size": self.dist.world_size,
            "best_value": self.best_value,
        }

    def save_checkpoint(self) -> Path | None:
        """Write last.ckpt (+ weights) atomically; rank 0 only. Returns the path written."""
        if not self.dist.is_main:
            return None
        path = self.ckpt_dir / "last.ckpt"
        save_state(self.state_dict(), path)
        self.last_saved_step = self.step
        meta = {**self.task.weights_metadata(), "step": self.step}
        save_weights(self.task.model.state_dict(), self.ckpt_dir / "last.safetensors", meta)
        if due(self.step, self.cfg.keep_every):
            save_state(self.state_dict(), self.ckpt_dir / f"step_{self.step:07d}.ckpt")
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        state = load_state(path)
        missing = [k for k in ("step", "model", "optimizer", "scheduler") if k not in state]
        if missing:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks {missing}: not a maskdcpt training checkpoint")
        configured = [{k: g[k] for k in _CONFIGURED} for g in self.optimizer.param_groups]
        try:
            self.task.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"checkpoint {str(path)!r} does not fit this run's model: {first}") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_configured_rates(configured)
        self.task.load_state_dict(state.get("task", {}))
        set_rng_state(state["rng"])
        self.step = self.last_saved_step = int(state["step"])
        self.bad_in_row = int(state.get("bad_in_row", 0))
        self.skipped = int(state.get("skipped", 0))
        self.best_value = state.get("best_value")
        self.elapsed_before = float(state.get("elapsed_s", 0.0))  # wall time of the earlier sessions of this run
        self._started = time.perf_counter()

    def _apply_configured_rates(self, configured: list[dict[str, Any]]) -> None:
        """After loading an optimiser state: this run's configured rates, decay and betas, not the saved run's.

        ``load_state_dict`` restores every group's hyper-parameters and the schedule's base rates as they were
        saved, so a run resumed with a lower ``optim.lr`` (after a divergence) would go on at the old one. The
        schedule keeps its position; its factor now multiplies the configured rate."""
        for group, values in zip(self.optimizer.param_groups, configured):
            group.update(values)
        self.scheduler.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        step = self.scheduler.last_epoch
        lrs = [base * fn(step) for base, fn in zip(self.scheduler.base_lrs, self.scheduler.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self.scheduler._last_lr = lrs

    def _older_checkpoints(self, than: Path) -> str:
        """A hint naming the checkpoints kept besides ``than`` (``train.keep_every``, a divergence), newest first."""
        kept = sorted((p for p in self.ckpt_dir.glob("step_*.ckpt") if p != than), reverse=True)
        if not kept:
            return ""
        return (f" Older checkpoints are kept: {', '.join(p.name for p in kept[:3])}"
                f"{' …' if len(kept) > 3 else ''}; resume from one with --resume {kept[0]}.")

    def maybe_resume(self, resume: bool | str) -> None:
        """resume: "auto" (from run_dir/checkpoints/last.ckpt if present), True (must exist),
        False (start fresh), or a checkpoint path."""
        self.resumed = True
        if resume is False:
            return
        path = self.ckpt_dir / "last.ckpt" if resume in (True, "auto") else Path(resume)
        if path.is_file():
            try:
                self.load_checkpoint(path)
            except CheckpointError as err:
                if resume not in (True, "auto"):
                    raise
                raise CheckpointError(
                    f"cannot resume this run: {err}. To start it afresh, run again with --no-resume (its checkpoints "
                    "are then overwritten); to keep them, move the run folder away or give another checkpoint with "
                    f"--resume PATH.{self._older_checkpoints(path)}") from None
            if self.dist.is_main:
                self._forget_validations_after(self.step)
            self.say(f"resumed from {path} at step {self.step}")
        elif resume != "auto":
            raise MissingFileError(f"resume: no checkpoint at {str(path)!r}")

    # ----------------------------------------------------------------- the loop
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _batches(self) -> Iterator[dict[str, Any]]:
        self.loader = self.make_loader(self.step)
        yield from self.loader

    def remove_stale_temporaries(self) -> None:
        """Rank 0, before anything is written: delete the temporary files of checkpoint writes that were killed
        midway (``kill -9``, a node failure); at release size each is gigabytes."""
        if not self.dist.is_main:
            return
        stale = remove_stale_temporaries(self.ckpt_dir) + remove_stale_temporaries(self.run_dir)
        if stale:
            log.warning("removed %d temporary file(s) left by interrupted writes: %s", len(stale),
                        ", ".join(p.name for p in stale))

    def fit(self, resume: bool | str = "auto") -> dict[str, Any]:
        """Train to ``train.max_steps``; resumes first per ``resume`` unless :meth:`maybe_resume` already ran."""
        self.remove_stale_temporaries()
        if not self.resumed:
            self.maybe_resume(resume)
        cfg = self.cfg
        if self.step >= cfg.max_steps:
            if self.dist.is_main:
                self.say(f"run already finished at step {self.step} (train.max_steps={cfg.max_steps}): {self.run_dir}")
                # again: a run stopped between its last checkpoint and its export (a requeue, a kill) has none
                self.task.export(self.run_dir)
            return self._final_metrics({})
        bar = tqdm(
            total=cfg.max_steps, initial=self.step, disable=not (cfg.progress and self.dist.is_main),
            desc="train", dynamic_ncols=True, smoothing=0.1,
        )
        window: dict[str, torch.Tensor] = {}  # each logged term summed over the steps since the last log line
        window_steps = 0
        last_logged: dict[str, float] = {}
        t_wait = t_total = 0.0
        global_batch = cfg.batch_size
        termination = self.termination
        hold = StepHold.from_environment(self.run_dir)  # a test hook; None unless MASKDCPT_HOLD_AT names this run
        try:
            termination.__enter__()
            if self.step == 0:
                self.validate()  # the starting point: what pre-training or initialisation gives
                if termination.requested:
                    self._checkpoint_on_termination(termination, saved=False)
            batches = self._batches()
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:
                    raise RuntimeError(f"the data loader ran out at step {self.step}; it must be endless") from None
                t1 = time.perf_counter()
                logs = self._train_step(_to_device(batch, self.device))
                t2 = time.perf_counter()  # no device sync for this: the step's decision to update already waited
                t_wait += t1 - t0
                t_total += t2 - t0
                for k, v in logs.items():  # summed on the device; read once per log line
                    window[k] = window[k] + v if k in window else v
                window_steps += 1
                self.step += 1
                self.task.after_step(self.step)
                bar.update(1)
                if due(self.step, cfg.log_every) or self.step == cfg.max_steps:
                    last_logged = self._window_means(window, window_steps)
                    last_logged["perf/samples_per_s"] = global_batch * window_steps / max(t_total, 1e-9)
                    last_logged["perf/data_wait_fraction"] = t_wait / max(t_total, 1e-9)
                    for i, g in enumerate(self.optimizer.param_groups):
                        last_logged[f"lr/{g.get('name', i)}"] = g["lr"]
                    last_logged["train/skipped_steps"] = float(self.skipped)
                    last_logged["data/skipped_files"] = float(self.loader.skipped)  # by this rank's loader
                    self.logger.scalars(last_logged, self.step)
                    bar.set_postfix(self._postfix(last_logged), refresh=False)
                    self._progress_line(last_logged, t_total / max(window_steps, 1))
                    window, window_steps, t_wait, t_total = {}, 0, 0.0, 0.0
                if self.val_every and (self.step % self.val_every == 0 or self.step == cfg.max_steps):
                    self.validate()
                # not amid non-finite steps: they changed no weight, and the checkpoint before them is worth keeping
                saved = self.step == cfg.max_steps or (due(self.step, cfg.checkpoint_every) and not self.bad_in_row)
                if saved:
                    self.save_checkpoint()
                if hold is not None:
                    hold.reached(self.step, self.dist.rank)
                if termination.requested:
                    self._checkpoint_on_termination(termination, saved)
        finally:
            termination.__exit__()
            bar.close()
            self.logger.flush()
            if self.loader is not None:  # name the files of the unfinished data epoch too
                self.loader.log_skips()
        if self.dist.is_main:
            self.task.export(self.run_dir)
        if self.dist.enabled:
            torch.distributed.barrier()  # every rank returns once the run's products exist
        metrics = self._final_metrics(last_logged)
        self.logger.close()
        return metrics

    # ----------------------------------------------------------------- validation
    @property
    def val_log(self) -> Path:
        return self.run_dir / "val.jsonl"

    def validate(self) -> dict[str, Any] | None:
        """Run the task's validation at the current step (rank 0; other ranks go on and meet it at the next
        collective): append it to ``val.jsonl``, log it under ``val/``, print one line, and keep the weights as
        ``checkpoints/best.safetensors`` when the task's best metric improved."""
        if not (self.val_every and self.dist.is_main):
            return None
        start = time.perf_counter()
        try:
            with self.termination.abortable():  # a stop request must not wait for a long validation
                result = self.task.validate(self.step)
        except TerminationRequested:
            self.task.model.train()
            self.say(f"validation at step {self.step} abandoned: {self.termination.reason} (the checkpoint comes first)")
            return None
        if result is None:
            return None
        result = {"step": self.step, **result, "seconds": round(time.perf_counter() - start, 2)}
        with open(self.val_log, "a") as f:
            f.write(json.dumps(result) + "\n")
        numbers = {k: float(v) for k, v in flatten(result, sep="/").items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "seconds")}
        self.logger.scalars({f"val/{k}": v for k, v in numbers.items()}, self.step)
        self.task.log_validation(result, self.logger, self.step)
        line = f"val step {self.step}: {self.task.describe_validation(result)}"
        metric = self.task.best_metric
        if metric is not None and metric in result:
            value = float(result[metric])
            if self.best_value is None or value > self.best_value:
                self.best_value = value
                meta = {**self.task.best_metadata(), "step": self.step, "best_metric": metric, "best_value": value}
                save_weights(self.task.best_state_dict(), self.ckpt_dir / "best.safetensors", meta)
                line += f" (best {metric} so far: best.safetensors)"
        self.say(line)
        return result

    def _forget_validations_after(self, step: int) -> None:
        """After a resume, drop validations that the checkpoint does not include (made after it was saved), so
        ``val.jsonl`` holds each step once."""
        if not self.val_log.is_file():
            return
        lines = self.val_log.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        if len(kept) != len(lines):
            self.val_log.write_text("".join(line + "\n" for line in kept))
    def _checkpoint_on_termination(self, termination: TerminationWatch, saved: bool) -> None:
        reason, leave, code = termination.reason, termination.exit_after_checkpoint, termination.exit_code
        termination.clear()
        if not saved:
            self.save_checkpoint()
        self.say(f"{reason}: checkpoint written at step {self.step}; a resumed or requeued run continues from it"
                 + (" (run the same command again)" if code == 128 + signal.SIGINT else ""))
        if leave:
            raise SystemExit(code)

    def _progress_line(self, logged: dict[str, float], seconds_per_step: float) -> None:
        """Rank 0: one line of progress into RUN/log.txt, and on stdout when there is no progress bar."""
        if not self.dist.is_main:
            return
        cfg = self.cfg
        left = (cfg.max_steps - self.step) * seconds_per_step
        parts = [f"step {self.step}/{cfg.max_steps}"]
        parts += [f"{k}={v}" for k, v in self._postfix(logged).items()]
        lr = next((v for k, v in logged.items() if k.startswith("lr/")), None)
        if lr is not None:
            parts.append(f"lr={lr:.3g}")
        parts.append(f"data_wait={logged.get('perf/data_wait_fraction', 0):.0%}")
        if logged.get("train/skipped_steps"):
            parts.append(f"skipped_steps={int(logged['train/skipped_steps'])}")
        if logged.get("data/skipped_files"):
            parts.append(f"skipped_files={int(logged['data/skipped_files'])}")
        parts.append(f"eta={time.strftime('%H:%M:%S', time.gmtime(left)) if left < 86400 else f'{left / 86400:.1f}d'}")
        line = "  ".join(parts)
        if cfg.progress:
            self.runlog.write(line)
        else:
            self.runlog.say(line)

    @staticmethod
    def _postfix(logged: dict[str, float]) -> dict[str, str]:
        out = {}
        if "loss/total" in logged:
            out["loss"] = f"{logged['loss/total']:.4f}"
        if "metrics/top1" in logged:
            out["acc"] = f"{logged['metrics/top1']:.2f}"
        out["img/s"] = f"{logged.get('perf/samples_per_s', 0):.1f}"
        return out

    def _final_metrics(self, logged: dict[str, float]) -> dict[str, Any]:
        wall = round(self.elapsed_before + (time.perf_counter() - self._started), 2)
        metrics = {"step": self.step, "skipped_steps": self.skipped, "wall_s": wall, **logged}
        if self.dist.is_main:
            path = self.run_dir / "metrics.json"
            if logged or not path.exists():
                path.write_text(json.dumps(metrics, indent=2))
            else:
                metrics = json.loads(path.read_text())
        # every rank's own weights, so that a launcher (or a test) can see that DDP replicas ended identical
        return {**metrics, "weights_sha256": state_digest(self.task.model.state_dict())}

    def _train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        micro = _split(batch, cfg.grad_accum)
        sums: dict[str, torch.Tensor] = {}  # this rank's terms, means over the micro-batches, on the device
        bad_term = None
        # Buffers (BatchNorm statistics) change in the forward pass; a skipped step must leave them too.
        buffers = [b.detach().clone() for b in self.task.model.buffers()]
        for i, mb in enumerate(micro):
            sync = isinstance(self.model, nn.parallel.DistributedDataParallel) and i < len(micro) - 1
            with (self.model.no_sync() if sync else contextlib.nullcontext()):
                with self._autocast():
                    out = self.task.step(self.step_model, mb, self.step)
                if bad_term is None and not torch.isfinite(out.loss.detach()):
                    bad_term = next((k for k, v in out.terms.items() if not torch.isfinite(v.detach())), "total")
                # Backward even when non-finite so every DDP rank runs the same collectives;
                # the update is dropped below.
                (out.loss / cfg.grad_accum).backward()
            for k, v in {**out.terms, **self.task.metrics(out, mb)}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() / len(micro)
        if self.dist.is_main and due(self.step + 1, self.cfg.image_every):
            self.task.images(out, micro[-1], self.logger, self.step + 1)

        # Every rank must take the same decisions, or DDP replicas drift apart (and wait for each other forever):
        # whether to drop this update, and whether to stop for a signal that reached only some ranks.
        flags = torch.tensor([0.0 if bad_term is None else 1.0, float(self.termination.requested)], device=self.device)
        any_bad, any_stop = (v > 0 for v in all_reduce_sum(flags, self.dist).tolist())
        if any_stop:
            self.termination.requested = True
        if any_bad:
            if self.bad_in_row == 0:  # what a stop must return to: the schedule before this run of bad steps
                self._before_bad = {"step": self.step, "scheduler": self.scheduler.state_dict()}
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, saved in zip(self.task.model.buffers(), buffers):
                    b.copy_(saved)
            self.skipped += 1
            self.bad_in_row += 1
            term = bad_term or "on another rank"
            log.warning("step %d: non-finite loss (%s); update skipped (%d in a row)", self.step, term, self.bad_in_row)
            if self.bad_in_row >= cfg.max_bad_steps:
                self._stop_diverged(term)
        else:
            self.bad_in_row, self._before_bad = 0, None
            if self.optim_cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.task.model.parameters(), self.optim_cfg.grad_clip)
            self.optimizer.step()
        with warnings.catch_warnings():
            # On a skipped update the schedule still advances with the step count, which
            # torch would otherwise warn about.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        return sums

    def _window_means(self, window: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
        """The logged terms' means over the window's steps and over the ranks: one collective and one read of the
        device for the whole window, not one per term and step."""
        if not window:
            return {}
        names = list(window)
        means = all_reduce_mean(torch.stack([window[k].float() for k in names]) / max(steps, 1), self.dist)
        return dict(zip(names, means.tolist()))


    def _stop_diverged(self, term: str) -> None:
        """Stop after ``train.max_bad_steps`` non-finite losses in a row, keeping the state they started from.

        No bad update was applied, so the weights, buffers and optimiser state are those before the first bad step:
        rewind the step count and the schedule to it and save that as last.ckpt, so that a resume with a lower
        rate redoes those steps on the same data. A periodic checkpoint from before them is kept beside it as
        ``step_XXXXXXX.ckpt`` (the weights may have grown useless before the loss overflowed)."""
        cfg, last, count = self.cfg, self.step, self.bad_in_row
        before = self._before_bad or {"step": self.step, "scheduler": self.scheduler.state_dict()}
        self.step = int(before["step"])
        self.scheduler.load_state_dict(before["scheduler"])
        self.bad_in_row, self._before_bad = 0, None
        kept = ""
        if self.dist.is_main:
            previous = self.ckpt_dir / "last.ckpt"
            if self.last_saved_step is not None and self.last_saved_step < self.step and previous.is_file():
                older = self.ckpt_dir / f"step_{self.last_saved_step:07d}.ckpt"
                if not older.exists():
                    previous.replace(older)
                kept = f"; the checkpoint of step {self.last_saved_step} is kept as {older}"
            self.save_checkpoint()
        largest = max((float(p.detach().abs().max()) for p in self.task.model.parameters() if p.numel()), default=0.0)
        raise NonFiniteLossError(
            f"stopped: the loss was non-finite for {count} steps in a row, last at step {last} in term {term!r} "
            f"(train.max_bad_steps={cfg.max_bad_steps}). {self.ckpt_dir / 'last.ckpt'} holds the state before them "
            f"(step {self.step}, the weights last finite; largest |weight| {largest:.3g}){kept}. Run the same command "
            "with a lower optim.lr to resume from it")

