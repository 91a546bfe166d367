"""The transfer experiment on a cluster: the unfinished arms as one job array (``DIR/manifest.json``), the job
that writes the report once the array has ended, and the states of the array's members.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError
from ..launch import sweep
from ..launch.launcher import LaunchOptions, build_executor, remove_unexpanded_folder
from .plan import EXPERIMENT_FILE, ArmPlan, TransferConfig, member_name
from .report import write_report


def submit_arms(cfg: TransferConfig, out: Path, plans: dict[tuple[str, int], ArmPlan], command: str | None) -> list[Any]:
    """The unfinished (arm, seed)s as one job array (``DIR/manifest.json``), one member each; on SLURM without
    ``launch.wait`` also a report job that runs once the whole array has ended."""
    todo = {member_name(*key): key for key, plan in plans.items() if not plan.finished}
    for key in plans:
        if member_name(*key) not in todo:
            print(f"[{member_name(*key)}] finished earlier: not submitted", flush=True)
    if not todo:
        return []
    _refuse_queued(out, list(todo))
    members = [sweep.SweepMember(name, [f"arm={arm}", f"seed={seed}"]) for name, (arm, seed) in todo.items()]
    spec = sweep.SweepSpec(target="transfer_arm", base_config=str(out / EXPERIMENT_FILE), base_overrides=[],
                           members=members)
    jobs = sweep.submit_sweep(spec, out, cfg.launch, spec_source=command)
    print(f"submitted {len(jobs)} runs ({cfg.launch.launcher}): "
          + ", ".join(f"{n} {j.job_id}" for n, j in zip(todo, jobs)), flush=True)
    if cfg.launch.launcher == "slurm" and not cfg.launch.wait:
        report = submit_report_job(cfg.launch, out, str(jobs[0].job_id).split("_")[0])
        manifest = json.loads((out / sweep.MANIFEST).read_text())
        manifest["report_job"] = {"job_id": str(report.job_id), "stdout": str(report.paths.stdout),
                                  "stderr": str(report.paths.stderr)}
        (out / sweep.MANIFEST).write_text(json.dumps(manifest, indent=2))
        print(f"report job {report.job_id} writes {out / 'report.md'} when the array has ended; "
              f"or: python tools/experiment.py transfer --collect {out}", flush=True)
    return jobs


def _refuse_queued(out: Path, arms: Sequence[str]) -> None:
    """An (arm, seed) still queued or running from an earlier submission must not run twice at once."""
    manifest = out / sweep.MANIFEST
    if not manifest.is_file():
        return
    for member in json.loads(manifest.read_text()).get("members", []):
        if member["name"] in arms and member.get("job_id"):
            state = sweep.squeue_state(str(member["job_id"]))
            if state in sweep.ALIVE_STATES:
                raise UserError(f"arm {member['name']} is still {state} as job {member['job_id']}; wait for it or "
                                 f"cancel it (scancel {member['job_id']}) before submitting again")


@dataclass
class ReportJob:
    """The job that writes the report (a CPU task; it reads the run folders only)."""

    out: str

    def __call__(self) -> dict[str, Any]:
        return write_report(self.out, arm_statuses(Path(self.out)))


def submit_report_job(opts: LaunchOptions, out: Path, array_id: str) -> Any:
    report_opts = dataclasses.replace(opts, gpus_per_node=0, tasks_per_node=1, nodes=1, cpus_per_task=1,
                                      constraint=None, timeout_min=30, job_name=f"{opts.job_name}-report")
    executor = build_executor(report_opts, out / "slurm" / "%j")
    executor.update_parameters(slurm_dependency=f"afterany:{array_id}")
    job = executor.submit(ReportJob(str(out)))
    remove_unexpanded_folder(out / "slurm" / "%j")
    return job


def wait_for_jobs(jobs: Sequence[Any], poll_s: float = 5.0) -> None:
    """Block until every job has ended (failed ones are reported by the report, not raised here)."""
    while not all(job.done() for job in jobs):
        time.sleep(poll_s)


def arm_statuses(out: Path) -> dict[str, tuple[str, str]]:
    """``{member: (status, reason)}`` of the job manifest's members (``<arm>/seed<k>``: failed jobs and their last
    error line)."""
    manifest = out / sweep.MANIFEST
    if not manifest.is_file():
        return {}
    statuses = {}
    for member in json.loads(manifest.read_text()).get("members", []):
        status, reason, _ = sweep.member_status(member, sweep.squeue_state)
        statuses[member["name"]] = (status, reason)
    return statuses


