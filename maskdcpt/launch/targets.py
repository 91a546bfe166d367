"""What a job runs: a training entry point named by import paths, never by pickled code.

A target is three functions found by ``"package.module:function"`` strings, so that a job pickle
stays valid when the code changes between submission and a requeue:

* ``load_config(path: str | None, overrides: Sequence[str]) -> cfg``
* ``run(cfg, resume=...) -> dict`` (``resume`` only passed when ``run`` accepts it)
* ``run_dir(cfg) -> Path``: the run folder, on shared storage, where logs and checkpoints go.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path
from typing import Any, Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Target:
    run: str
    load_config: str
    run_dir: str
    # The checkpoint a requeued job resumes from, relative to the run folder.
    last_checkpoint: str = "checkpoints/last.ckpt"
    # Config keys that place the run folder at output_dir/name (sweeps give each member its own).
    output_dir_key: str = "run.output_dir"
    name_key: str = "run.name"

    def placement_overrides(self, output_dir: str | Path, name: str) -> list[str]:
        return [f"{self.output_dir_key}={output_dir}", f"{self.name_key}={name}"]

    def function(self, which: str) -> Callable[..., Any]:
        return import_function(getattr(self, which))

    def config(self, config_path: str | None, overrides: Sequence[str]) -> Any:
        return self.function("load_config")(config_path, list(overrides))

    def folder(self, cfg: Any) -> Path:
        return Path(self.function("run_dir")(cfg))

    def accepts_resume(self) -> bool:
        return "resume" in inspect.signature(self.function("run")).parameters


KNOWN_TARGETS: dict[str, Target] = {
    "pretrain": Target(
        run="maskdcpt.training.pretrain:run_pretraining",
        load_config="maskdcpt.training.pretrain:load_pretrain_config",
        run_dir="maskdcpt.training.pretrain:run_dir",
    ),
    "finetune": Target(
        run="maskdcpt.training.finetune:run_finetuning",
        load_config="maskdcpt.training.finetune:load_finetune_config",
        run_dir="maskdcpt.training.finetune:run_dir",
    ),
    # one arm of the transfer experiment (pre-training then fine-tuning) in DIR/<arm>; see maskdcpt.experiments
    "transfer_arm": Target(
        run="maskdcpt.experiments.run:run_arm_job",
        load_config="maskdcpt.experiments.plan:load_arm_job_config",
        run_dir="maskdcpt.experiments.plan:arm_dir",
    ),
    "cluster_check": Target(
        run="maskdcpt.launch.cluster_check:run_cluster_check",
        load_config="maskdcpt.launch.cluster_check:load_cluster_check_config",
        run_dir="maskdcpt.launch.cluster_check:run_dir",
    ),
}


def import_function(spec: str) -> Callable[..., Any]:
    """``"package.module:function"`` → the function; ``ValueError`` naming ``spec`` otherwise."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"target {spec!r} is not of the form 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"target {spec!r}: cannot import {module_name!r} ({err})") from err
    if not hasattr(module, attr):
        raise ValueError(f"target {spec!r}: module {module_name!r} has no {attr!r}")
    return getattr(module, attr)


def resolve_target(target: str | Target) -> Target:
    """A known name (``"pretrain"``), the ``run`` path of a known target, or a :class:`Target`."""
    if isinstance(target, Target):
        return target
    if target in KNOWN_TARGETS:
        return KNOWN_TARGETS[target]
    for known in KNOWN_TARGETS.values():
        if known.run == target:
            return known
    raise ValueError(
        f"unknown launch target {target!r}; known: {', '.join(KNOWN_TARGETS)} "
        f"(or their run functions: {', '.join(t.run for t in KNOWN_TARGETS.values())})"
    )
