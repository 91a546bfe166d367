"""The callable that submitit pickles: set up distributed from the job, run the target, requeue.

Shape of MAE's ``submitit_pretrain.Trainer``: ``__call__`` runs the whole training in every task,
``checkpoint()`` (called by submitit on rank 0 when SLURM sends the preemption/time-out signal)
returns a fresh copy pointed at the last checkpoint, which submitit pickles and requeues.
"""
from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any, Sequence

from maskdcpt.launch.targets import Target, resolve_target


@dataclasses.dataclass
class TrainingJob:
    """One training run as a submitit job.

    target: a :class:`Target` or a known name/run path (``"maskdcpt.training.pretrain:run_pretraining"``).
    config_path / overrides: as on the command line (``["train.max_steps=20"]``).
    resume: ``"auto"`` (resume when the run folder holds a last checkpoint), ``False``, or a path.
    """

    target: Target | str
    config_path: str | None = None
    overrides: Sequence[str] = ()
    resume: bool | str = "auto"

    def __post_init__(self) -> None:
        self.target = resolve_target(self.target)
        self.overrides = list(self.overrides)

    def __call__(self) -> Any:
        export_distributed_environment()
        # Threads: the training sizes them from the job's SLURM_CPUS_PER_TASK (training.distributed.configure_threads).
        target: Target = self.target  # type: ignore[assignment]
        cfg = target.config(self.config_path, self.overrides)
        run = target.function("run")
        if not target.accepts_resume():
            return _where(run(cfg))
        resume = self.resume
        if resume is False and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
            # `scontrol requeue` (or a node failure) reruns the original pickle: --no-resume meant
            # "do not continue an older run", never "throw away this job's own progress".
            resume = "auto"
        return _where(run(cfg, resume=resume))

    def last_checkpoint(self) -> Path:
        target: Target = self.target  # type: ignore[assignment]
        cfg = target.config(self.config_path, self.overrides)
        return target.folder(cfg) / target.last_checkpoint

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit before requeueing: the same run, resumed from its last checkpoint.

        The trainer writes ``last.ckpt`` every ``checkpoint_every`` steps, so the work since then is
        redone; with deterministic training the requeued run ends with the same weights.
        """
        import submitit

        ckpt = self.last_checkpoint()
        # Before the first checkpoint there is nothing to resume from: "auto" starts afresh.
        resume: bool | str = str(ckpt) if ckpt.is_file() else "auto"
        print(f"[maskdcpt.launch] requeueing; resume={resume}", flush=True)
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self, resume=resume))


@dataclasses.dataclass
class ToolJob:
    """A command-line tool re-run inside the job: ``main(argv + ["--launcher", "none"])`` of ``script``.

    For tools without a typed config (``tools/evaluate.py``). The script is found by its absolute
    path when the job starts, and a requeue simply runs it again (they are expected to be idempotent).
    """

    script: str
    argv: Sequence[str]

    def __post_init__(self) -> None:
        self.script = str(Path(self.script).resolve())
        self.argv = list(self.argv)

    def __call__(self) -> int:
        import runpy

        from maskdcpt.training.distributed import configure_threads

        export_distributed_environment()
        configure_threads()  # ranks of one node share its cores: each takes the CPUs SLURM gave its task
        main = runpy.run_path(self.script, run_name="maskdcpt_tool_job").get("main")
        if main is None:
            raise ValueError(f"tool {self.script!r} has no main(argv) function")
        # The last --launcher wins in argparse: the job itself must run in-process, not submit again.
        code = main([*self.argv, "--launcher", "none"])
        if code:
            raise RuntimeError(f"{Path(self.script).name} {' '.join(self.argv)} exited with status {code}")
        return 0

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(dataclasses.replace(self))


def _where(result: Any) -> Any:
    """A task's result, with the rank that returned it and the node it ran on (multi-node jobs are checked by them)."""
    if isinstance(result, dict):
        result = dict(result)
        result.setdefault("rank", int(os.environ.get("RANK", "0")))
        result.setdefault("node", os.environ.get("SLURMD_NODENAME") or socket.gethostname())
    return result


def export_distributed_environment() -> dict[str, str]:
    """Set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` from the job.

    Inside a submitit job (SLURM or local) they come from its JobEnvironment; outside one
    (the ``debug`` executor, a plain call) the process is a single rank and nothing is set.
    """
    import submitit

    try:
        submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job
        return {}
    # overwrite: a requeued job, or srun itself, may have left stale values behind.
    # CUDA_VISIBLE_DEVICES is left alone: the trainer picks cuda:LOCAL_RANK among the GPUs SLURM made visible.
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    return {k: os.environ[k] for k in keys if k in os.environ}
