"""A test hook: hold a run at a known step, so that a test interrupts a job that is certainly still working.

A test that waits for a checkpoint and then sends ``scontrol requeue`` races the machine: a fast machine may end
the run before the requeue lands. With ``MASKDCPT_HOLD_AT=RUN_DIR@STEP`` in a job's environment, the trainer whose
run folder is ``RUN_DIR`` stops after step ``STEP`` (and after that step's checkpoint, when one is due): rank 0
writes ``RUN_DIR/hold/held`` (the step and the ranks' host names), and every rank waits there until
``RUN_DIR/hold/release`` exists, or until the job is interrupted. The test waits for ``held``, interrupts, and
knows at which step the run was.

Each rank holds once: a requeued SLURM job (``SLURM_RESTART_COUNT`` > 0), or a rank that finds its own marker
``RUN_DIR/hold/rank<r>`` from an earlier attempt (submitit's local executor counts no restarts), runs on. Several
holds are separated by commas. Read once per run (:meth:`StepHold.from_environment`); unset, the training loop pays
one ``is None`` test per step.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

ENV = "MASKDCPT_HOLD_AT"


class StepHold:
    def __init__(self, run_dir: Path, step: int):
        self.folder = Path(run_dir) / "hold"
        self.step = int(step)

    @classmethod
    def from_environment(cls, run_dir: str | Path) -> "StepHold | None":
        spec = os.environ.get(ENV, "")
        if not spec or int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
            return None
        here = Path(run_dir).resolve()
        for item in spec.split(","):
            folder, sep, step = item.rpartition("@")
            if not sep or not step.strip().isdigit():
                raise ValueError(f"{ENV}={spec!r}: each item must be RUN_DIR@STEP, got {item!r}")
            if Path(folder).resolve() == here:
                return cls(here, int(step))
        return None

    def reached(self, step: int, rank: int) -> None:
        """Called after each step: at the hold step, announce it (rank 0) and wait for the release file."""
        if step != self.step:
            return
        release, marker = self.folder / "release", self.folder / f"rank{rank}"
        if marker.exists():  # held in an earlier attempt of this job
            return
        node = os.environ.get("SLURMD_NODENAME", socket.gethostname())
        self.folder.mkdir(parents=True, exist_ok=True)
        # every rank says where it waits: step, node, process id (a test may stop that node)
        _write(marker, f"{step} {node} {os.getpid()}\n")
        if rank == 0:
            _write(self.folder / "held", f"{step}\n")
        while not release.exists():
            time.sleep(0.1)  # signals (SIGTERM, submitit's USR2) still reach their handlers while we sleep


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a test polls these files."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
