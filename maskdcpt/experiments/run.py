"""Running the transfer experiment: each (arm, seed)'s pre-training then fine-tuning, in this process or as one job
of the array (:func:`run_arm_job`, the ``transfer_arm`` launch target), and the whole experiment.

Rerunning the same experiment skips finished runs (fine-tuning at its max_steps) and resumes interrupted ones:
both trainers resume from their ``checkpoints/last.ckpt``. On a cluster each (arm, seed) is one member of a job array
(:mod:`~maskdcpt.experiments.cluster`), requeued and resumed like any training job; the report is written by a job
that waits for the array, by ``launch.wait``, or by ``tools/experiment.py transfer --collect DIR``.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from ..config import to_dict
from ..errors import ConfigError
from ..launch.launcher import remove_unexpanded_folder
from ..training.finetune import run_finetuning
from ..training.pretrain import run_pretraining
from . import cluster
from .plan import (RESULT_FILE, TIMING_FILE, ArmJobConfig, ArmPlan, ExperimentFolder, TransferConfig, arm_dir,
                   config_differences, member_name, plan_arms, run_finished)
from .report import arm_result, write_report


def check_saved_config(folder: Path, cfg: Any) -> None:
    """A run folder made with another config must not be resumed or counted as this arm's."""
    path = folder / "config.yaml"
    if not path.is_file():
        return
    saved = yaml.safe_load(path.read_text()) or {}
    wanted = yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    diff = config_differences(saved, wanted, ignore=())
    if diff:
        shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in list(diff.items())[:4])
        raise ConfigError(f"{folder} was made with another config ({shown}); give another --out, or delete the "
                         "folder to redo it")


@contextlib.contextmanager
def _timed(folder: Path, phase: str, enabled: bool):
    """Add the seconds spent in the block to ``folder/timing.json[phase]`` (also when it is interrupted)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if enabled:
            path = folder / TIMING_FILE
            timing = json.loads(path.read_text()) if path.is_file() else {}
            timing[phase] = round(timing.get(phase, 0.0) + time.perf_counter() - start, 1)
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(timing))


def _wait_for_run(folder: Path, steps: int, timeout_s: float = 1800.0) -> None:
    """Ranks other than 0 wait until rank 0 has exported the pre-trained encoder (its metrics.json follows it)."""
    deadline = time.time() + timeout_s
    while not run_finished(folder, steps):
        if time.time() > deadline:
            raise RuntimeError(f"rank 0 did not finish {folder} within {timeout_s:.0f} s")
        time.sleep(2.0)


def run_arm(plan: ArmPlan, resume: bool | str = "auto") -> dict[str, Any]:
    """Pre-train (if the arm does) then run each fine-tuning, at the plan's seed, skipping what is finished and
    resuming what is not; returns the result and, on rank 0, writes it to ``<arm>/seed<k>/metrics.json``.
    ``resume=False`` redoes every run."""
    if resume not in ("auto", True, False):
        raise ValueError(f"an arm resumes its runs ('auto') or redoes them (False); got resume={resume!r}")
    main = int(os.environ.get("RANK", "0")) == 0
    fresh = resume is False
    steps = plan.steps
    label = f"[{member_name(plan.name, plan.seed)}]"
    if not fresh:
        if main:  # rank 0 alone: it is also the one that rewrites config.yaml when a run starts
            if plan.pretrain is not None:
                check_saved_config(plan.pretrain_dir, plan.pretrain)
            for ft in plan.finetunes.values():
                check_saved_config(ft.dir, ft.config)
        if plan.finished:
            print(f"{label} finished earlier (fine-tuning at step {steps['finetune']}): skipped", flush=True)
            return arm_result(plan)
    if plan.pretrain is not None:
        if not fresh and run_finished(plan.pretrain_dir, steps["pretrain"]):
            print(f"{label} pre-training finished earlier: skipped", flush=True)
        else:
            print(f"{label} pre-training, {steps['pretrain']} steps: {plan.pretrain_dir}", flush=True)
            with _timed(plan.folder, "pretrain", main):
                run_pretraining(plan.pretrain, resume=resume)
        if not main:
            _wait_for_run(plan.pretrain_dir, steps["pretrain"])
    for ft in plan.finetunes.values():
        if not fresh and run_finished(ft.dir, ft.steps):
            print(f"{label} {ft.name} finished earlier: skipped", flush=True)
            continue
        print(f"{label} fine-tuning ({ft.name}), {ft.steps} steps: {ft.dir}", flush=True)
        with _timed(plan.folder, ft.name, main):
            run_finetuning(ft.config, resume=resume)
    result = arm_result(plan)
    if main:
        (plan.folder / RESULT_FILE).write_text(json.dumps(result, indent=2))
    return result


def run_arm_job(cfg: ArmJobConfig, resume: bool | str = "auto") -> dict[str, Any]:
    """The ``transfer_arm`` launch target: one (arm, seed), pre-training then fine-tuning, in one job. A requeued
    job calls it again and it resumes (a checkpoint path from ``TrainingJob.checkpoint`` means the same: 'auto')."""
    if isinstance(resume, str) and resume != "auto":
        resume = "auto"  # the arm's own last.ckpt files are found by every run
    folder = arm_dir(cfg).resolve()
    plan = plan_arms(cfg, cfg.run.output_dir, [cfg.arm], [cfg.seed])[cfg.arm, cfg.seed]
    if plan.folder != folder:
        raise ConfigError(f"arm {cfg.arm!r} at seed {cfg.seed} must live in {plan.folder}, not {folder}")
    return run_arm(plan, resume)


def run_experiment(cfg: TransferConfig, out: str | Path, command: str | None = None) -> dict[str, Any] | None:
    """Run (``launch.launcher: none``) or submit every arm of ``cfg`` in ``out``; returns the results once they
    are all in (None when jobs were submitted without waiting)."""
    folder = ExperimentFolder(out)
    folder.prepare(cfg, command)
    saved = folder.load()  # absolute paths; every (arm, seed) the folder holds
    plans = plan_arms(saved, folder.path, cfg.arms)
    plans = {key: plan for key, plan in plans.items() if key[1] in cfg.seeds_of(key[0])}  # this command's runs
    cfg = saved
    if cfg.launch.launcher == "none":
        for plan in plans.values():  # seed by seed: after each seed, every arm has a result to compare
            run_arm(plan)
        return write_report(folder.path, cluster.arm_statuses(folder.path))
    jobs = cluster.submit_arms(cfg, folder.path, plans, command)
    if cfg.launch.wait or cfg.launch.launcher == "local":
        cluster.wait_for_jobs(jobs)
        remove_unexpanded_folder(folder.path / "slurm" / "%j")  # the local executor makes it again at start
        return write_report(folder.path, cluster.arm_statuses(folder.path))
    return None


