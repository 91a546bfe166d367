"""The training loader: an endless, resumable stream of batches for a step-based trainer."""
from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import DataConfig
from .mixture import Mixture, build_mixture
from .sampler import MixtureSampler
from .schedule import MixingSchedule

log = logging.getLogger(__name__)

# Debugging aid (and what the multi-node tests read): with MASKDCPT_DATA_TRACE=DIR each rank's loader appends one
# JSON line per batch to DIR/rank<r>.jsonl: the step, the global sample positions and the sample keys.
TRACE_ENV = "MASKDCPT_DATA_TRACE"


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Samples → a batch: lq/gt (B, 3, H, W) float32 in [0, 1], type_id/source int64 (B,),
    level float32 (B,) (-1 for real pairs), params list of JSON strings, key int64 (B, 4)
    = (source, epoch, item, crop), index int64 (B,) = global sample position (unique over ranks
    and steps), skipped: list of "path: reason" met while building it; prior (B, 3, H, W) when
    the sources have prior folders."""
    batch = {
        "lq": torch.from_numpy(np.stack([s["lq"] for s in samples])),
        "gt": torch.from_numpy(np.stack([s["gt"] for s in samples])),
        "type_id": torch.tensor([s["type_id"] for s in samples], dtype=torch.int64),
        "level": torch.tensor([s["level"] for s in samples], dtype=torch.float32),
        "source": torch.tensor([s["source"] for s in samples], dtype=torch.int64),
        "params": [s["params"] for s in samples],
        "key": torch.tensor([s["key"] for s in samples], dtype=torch.int64),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
        "skipped": [entry for s in samples for entry in s["skipped"]],
    }
    if "prior" in samples[0]:  # generative restorations, aligned with lq (paired sources with 'prior')
        batch["prior"] = torch.from_numpy(np.stack([s["prior"] for s in samples]))
    return batch


def _worker_context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # imported once in the server (no thread pool runs at import), so that each worker starts in a moment
    context.set_forkserver_preload(["torch", "cv2", "maskdcpt.data.mixture"])
    return context


WORKER_CONTEXT = _worker_context()


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (tells it from a later process given the same number), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _exit_when_gone(trainer_pid: int, started: str | None) -> None:
    while _process_start(trainer_pid) == started:
        time.sleep(2.0)
    os._exit(0)


def _worker_init(worker_id: int, trainer_pid: int | None = None, trainer_started: str | None = None) -> None:
    # One thread per worker: the workers are the parallelism; nested pools only oversubscribe.
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    if trainer_pid is not None and trainer_started is not None:
        # A worker's parent is the fork server, not the trainer: torch's own check (is my parent alive?) never fires
        # when the trainer is killed (kill -9, OOM), and the workers with the fork server would outlive it for ever.
        threading.Thread(target=_exit_when_gone, args=(trainer_pid, trainer_started), daemon=True).start()


class TrainLoader:
    """Iterates batches ``step, step + 1, …`` forever; batch k depends only on (seed, k, rank).

    The trainer's :class:`~maskdcpt.training.trainer.BatchStream`. ``step``: the next step to
    be yielded (= batches consumed); a resumed run constructs a loader with ``start_step=k``.
    ``skipped``: bad-file events so far; ``skipped_files``: {path: reason}. Once per loader
    epoch (one pass over every source's items × crops, counted in global samples) the files
    skipped during it are named in one log line.
    """

    def __init__(self, mixture: Mixture, sampler_args: dict[str, Any], *, num_workers: int, start_step: int,
                 pin_memory: bool = False):
        self.mixture = mixture
        self.dataset = mixture.dataset
        self._sampler_args = sampler_args
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.step = int(start_step)
        self.skipped = 0
        self.skipped_files: dict[str, str] = {}
        self._epoch_skips: dict[str, str] = {}
        self.sampler = self._make_sampler(self.step)
        self._epoch = self.epoch_of(self.step)
        trace = os.environ.get(TRACE_ENV, "")
        self._trace = Path(trace) / f"rank{self.sampler.rank}.jsonl" if trace else None

    def _make_sampler(self, start_step: int) -> MixtureSampler:
        return MixtureSampler(**self._sampler_args, start_step=start_step)

    def epoch_of(self, step: int) -> int:
        """Loader epoch containing ``step`` (in global samples over all ranks)."""
        s = self.sampler
        return (step * s.world_size * s.batch_size) // s.epoch_samples

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.sampler = self._make_sampler(self.step)
        loader = DataLoader(
            self.dataset, batch_sampler=self.sampler, num_workers=self.num_workers, collate_fn=collate,
            worker_init_fn=functools.partial(_worker_init, trainer_pid=os.getpid(),
                                             trainer_started=_process_start(os.getpid())) if self.num_workers else None,
            pin_memory=self.pin_memory,
            prefetch_factor=4 if self.num_workers else None, persistent_workers=False,
            # Workers forked from a process whose OpenCV (or OpenMP) thread pool has run inherit a pool
            # without its threads and can hang at their first parallel call; the fork server forks them
            # from a fresh interpreter instead (fast, and nothing of the trainer's state is inherited).
            multiprocessing_context=WORKER_CONTEXT if self.num_workers else None,
        )
        for batch in loader:
            self._account(batch.pop("skipped"))
            if self._trace is not None:
                self._write_trace(batch)
            self.step += 1
            yield batch

    def _write_trace(self, batch: dict[str, Any]) -> None:
        self._trace.parent.mkdir(parents=True, exist_ok=True)
        line = {"step": self.step, "positions": batch["index"].tolist(), "keys": batch["key"].tolist()}
        with open(self._trace, "a") as f:
            f.write(json.dumps(line) + "\n")

    def _account(self, skipped: list[str]) -> None:
        epoch = self.epoch_of(self.step)
        if epoch != self._epoch:
            self.log_skips()
            self._epoch = epoch
        for entry in skipped:
            path, _, reason = entry.rpartition(": ")
            self.skipped += 1
            self.skipped_files[path] = reason
            self._epoch_skips[path] = reason

    def log_skips(self) -> None:
        """Log (once) the files skipped in the current loader epoch, then start a new tally."""
        if self._epoch_skips:
            names = ", ".join(f"{p} ({r})" for p, r in sorted(self._epoch_skips.items()))
            log.warning("data epoch %d: skipped %d unusable file(s): %s", self._epoch, len(self._epoch_skips), names)
        self._epoch_skips = {}


def build_train_loader(cfg: DataConfig, *, seed: int, batch_size: int, rank: int = 0, world_size: int = 1,
                       num_workers: int = 0, start_step: int = 0, pin_memory: bool = False) -> TrainLoader:
    """The trainer's batch stream for this rank. See :func:`collate` for the batch layout.

    Resuming: ``start_step=k`` yields exactly the batches k, k+1, … that an uninterrupted
    loader yields at those steps (every draw is a function of seed and global position).
    """
    readers = max(int(num_workers), 1)  # each worker (or the process itself) reads its own lane of the shards
    mixture = build_mixture(cfg, seed, lanes=world_size * readers)
    schedule = MixingSchedule.from_ratios(cfg.schedule) if cfg.schedule else None
    sampler_args = dict(
        sizes=mixture.sizes, kinds=mixture.kinds, weights=mixture.weights, seed=seed, batch_size=batch_size,
        crops_per_image=cfg.crops_per_image, rank=rank, world_size=world_size, schedule=schedule,
        plans=mixture.plans, lanes_per_rank=readers,
    )
    return TrainLoader(mixture, sampler_args, num_workers=num_workers, start_step=start_step, pin_memory=pin_memory)
