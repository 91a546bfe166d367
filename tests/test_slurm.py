"""Against a real SLURM controller and node daemon (tests/slurm/start_local_cluster.sh), not a mock:
a 2-task DDP pre-training job (gloo, CPU), preemption by `scontrol requeue` and by the preemption signal
(both must resume and end with the weights of an uninterrupted run), a 3-member pre-training sweep
collected into a table, the cluster check (DDP replicas agree), and the transfer experiment (its arms as
one array, the report job after it, a requeued arm resuming).

Skips with the reason when no cluster answers; in CI (CI=true or MASKDCPT_REQUIRE_SLURM=1) fails instead.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

import torch
from safetensors import safe_open

from maskdcpt.launch import LaunchOptions, build_executor, launch
from maskdcpt.launch import sweep as sweep_mod

from conftest import TINY_PRETRAIN, last_weights

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
TARGET = "pretrain"
# The tiny real pre-training (embedded photos, degradation engine, masking, 3 losses) on 64² crops.
TINY = ["model.name=nafnet_tiny", *TINY_PRETRAIN]
# Enough steps after the first checkpoint (step 4) that the test can interrupt a running job.
STEPS = 40
TRAIN = [*TINY, f"train.max_steps={STEPS}", "train.checkpoint_every=4"]
JOB_TIMEOUT_S = 400


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM client tools (sinfo, sbatch) are not installed"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld does not answer"
    if out.returncode != 0:
        return f"slurmctld does not answer: {out.stderr.strip()}"
    states = [line.split()[1] for line in out.stdout.splitlines() if len(line.split()) == 2]
    if not any(s.rstrip("*~#$@^-") in ("idle", "mix", "alloc", "comp") for s in states):
        return f"no node takes jobs (node states: {states or 'none'})"
    return None


@pytest.fixture(scope="module")
def partition():
    problem = _cluster_problem()
    if problem:
        if os.environ.get("CI", "").lower() == "true" or os.environ.get("MASKDCPT_REQUIRE_SLURM") == "1":
            pytest.fail(f"the SLURM tests must run in CI but the cluster is not up: {problem} "
                        "(.ci/run should call tests/slurm/ci_setup.sh)")
        pytest.skip(f"{problem}; start one with `sudo bash tests/slurm/start_local_cluster.sh`")
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout.split()
    return next((p.rstrip("*") for p in out if p.endswith("*")), out[0])


@pytest.fixture(scope="module", autouse=True)
def _job_environment():
    # Jobs start in the submitting working directory and must import maskdcpt from it; one thread per task.
    cwd, threads = os.getcwd(), os.environ.get("OMP_NUM_THREADS")
    os.chdir(REPO)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    os.chdir(cwd)
    if threads is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = threads


def _logs(job) -> str:
    folder = Path(job.paths.folder)
    return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                     for p in sorted(folder.glob("*_log.*")))


# Pending reasons of a job that this cluster will never run: fail at once rather than at the time-out.
HOPELESS = {"PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit", "InvalidQOS",
            "InvalidAccount", "JobHeldAdmin", "launch_failed_requeued_held"}


def _check_not_stuck(job) -> None:
    out = subprocess.run(["squeue", "-h", "-j", str(job.job_id), "-o", "%T %r"], capture_output=True, text=True)
    state, _, reason = out.stdout.strip().partition(" ")
    if state == "PENDING" and reason in HOPELESS:
        job.cancel(check=False)
        pytest.fail(f"job {job.job_id} can never start here (pending: {reason}); check `scontrol show node` "
                    "against tests/slurm/start_local_cluster.sh")


def _wait(job, timeout_s: float = JOB_TIMEOUT_S) -> list:
    deadline = time.time() + timeout_s
    while not job.done():
        _check_not_stuck(job)
        if time.time() > deadline:
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} did not finish in {timeout_s} s:\n{_logs(job)}")
        time.sleep(1)
    try:
        return job.results()
    except Exception as err:
        pytest.fail(f"job {job.job_id} failed: {err}\n{_logs(job)}")


def _scontrol_job(job_id: str) -> dict[str, str]:
    text = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True).stdout
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def _checkpoint_step(run_dir: Path) -> int | None:
    """The step of the run's last weights, or None before the first checkpoint."""
    try:
        with safe_open(str(run_dir / "checkpoints" / "last.safetensors"), "pt") as f:
            return int(f.metadata()["step"])
    except Exception:  # not there yet, or replaced while being read
        return None


def _interrupt_mid_run(job, run_dir: Path, interrupt) -> None:
    """Interrupt ``job`` as soon as its first checkpoint is written, while it is certainly still training.

    The race this closes: the test used to wait for *both* interrupted jobs' first checkpoints before it
    interrupted either. Under load (2 cores, load 5) the first job could finish all its steps meanwhile;
    SLURM requeues a finished batch job all the same (it runs again, SLURM_RESTART_COUNT=1), and the first
    attempt's result file made ``job.done()`` true at once: the test read the log before the second attempt
    had printed anything (or, where srun does not append, after it had emptied the log). The first attempt
    ran from scratch to the end, so there was no "resumed from" to find.
    """
    deadline = time.time() + JOB_TIMEOUT_S
    while (step := _checkpoint_step(run_dir)) is None:
        _check_not_stuck(job)
        if job.done() or time.time() > deadline:
            pytest.fail(f"job {job.job_id} never wrote a checkpoint in {run_dir}:\n{_logs(job)}")
        time.sleep(0.2)
    state = _scontrol_job(str(job.job_id))["JobState"]
    if state != "RUNNING" or step >= STEPS or job.done():
        pytest.fail(f"job {job.job_id} was {state} at step {step} of {STEPS} before it could be interrupted")
    interrupt()


def _wait_after_requeue(job, timeout_s: float = JOB_TIMEOUT_S) -> list:
    """The results of the attempt that ran after the requeue: the job has restarted and then completed (or
    has completed so long ago that the controller forgot it, MinJobAge: then its result file speaks)."""
    deadline = time.time() + timeout_s
    while True:
        out = subprocess.run(["scontrol", "show", "job", "-o", str(job.job_id)], capture_output=True, text=True)
        if out.returncode != 0 and job.done():
            break
        info = dict(item.split("=", 1) for item in out.stdout.split() if "=" in item)
        if int(info.get("Restarts", 0)) >= 1 and info.get("JobState") == "COMPLETED":
            break
        _check_not_stuck(job)
        if info.get("JobState") in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY") \
                or time.time() > deadline:
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} ended {info.get('JobState')} (restarts {info.get('Restarts')}):\n{_logs(job)}")
        time.sleep(1)
    return _wait(job)


@pytest.fixture(scope="module")
def runs(partition, tmp_path_factory):
    """Three 2-task runs submitted together: one left alone, two interrupted right after their first checkpoint."""
    root = tmp_path_factory.mktemp("slurm_runs")
    opts = LaunchOptions(launcher="slurm", partition=partition, tasks_per_node=2, timeout_min=15,
                         signal_delay_s=60, job_name="maskdcpt-test")
    jobs = {name: launch(TARGET, None, [*TRAIN, f"run.output_dir={root}", f"run.name={name}"], opts)
            for name in ("reference", "scontrol_requeue", "preemption_signal")}
    # An operator's (or the scheduler's) requeue: SLURM sends SIGTERM, kills the tasks, runs the batch script again.
    _interrupt_mid_run(jobs["scontrol_requeue"], root / "scontrol_requeue",
                       lambda: subprocess.run(["scontrol", "requeue", str(jobs["scontrol_requeue"].job_id)], check=True))
    # A preemption: SLURM's signal reaches submitit, which calls TrainingJob.checkpoint() and requeues.
    _interrupt_mid_run(jobs["preemption_signal"], root / "preemption_signal", jobs["preemption_signal"]._interrupt)
    return root, jobs


def test_two_task_ddp_pretraining_runs_with_the_requested_resources(runs, partition):
    root, jobs = runs
    job = jobs["reference"]
    rank0, rank1 = _wait(job)
    assert rank0["step"] == rank1["step"] == STEPS
    info = _scontrol_job(str(job.job_id))
    assert (info["NumTasks"], info["Partition"], info["TimeLimit"]) == ("2", partition, "00:15:00")
    assert info["JobName"] == "maskdcpt-test"
    run_dir = root / "reference"
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == STEPS
    assert (run_dir / "config.yaml").is_file() and (run_dir / "tensorboard").is_dir()
    # Logs sit in the run folder; both tasks ran, as ranks 0 and 1 of one gloo group.
    logs = run_dir / "slurm" / str(job.job_id)
    assert (logs / f"{job.job_id}_0_log.out").is_file() and (logs / f"{job.job_id}_1_log.out").is_file()
    assert "run folder:" in (logs / f"{job.job_id}_0_log.out").read_text()


def test_cluster_check_ddp_replicas_agree(partition, tmp_path):
    opts = LaunchOptions(launcher="slurm", partition=partition, tasks_per_node=2, timeout_min=5)
    job = launch("cluster_check", None, [f"run.output_dir={tmp_path}", "train.max_steps=6"], opts)
    rank0, rank1 = _wait(job)
    assert (rank0["rank"], rank1["rank"], rank0["world_size"], rank1["world_size"]) == (0, 1, 2, 2)
    assert rank0["weights"] == rank1["weights"], "DDP replicas diverged"


@pytest.mark.parametrize("how", ["scontrol_requeue", "preemption_signal"])
def test_interrupted_job_resumes_and_ends_with_the_uninterrupted_weights(runs, how):
    root, jobs = runs
    _wait(jobs["reference"])
    job = jobs[how]
    rank0, _ = _wait_after_requeue(job)
    assert rank0["step"] == STEPS
    log = (root / how / "slurm" / str(job.job_id) / f"{job.job_id}_0_log.out").read_text()
    # both attempts are in the log: a requeue appends, it does not erase why the first one stopped
    assert log.count("run folder:") == 2, f"expected the output of two attempts:\n{log[-3000:]}"
    first, second = log.split("run folder:")[1:]
    assert "resumed from" not in first and "done at step" not in first
    resumed = re.findall(r"resumed from .*last\.ckpt at step (\d+)", second)
    assert resumed and int(resumed[-1]) >= 4, f"the requeued job did not resume from a checkpoint:\n{log[-3000:]}"
    # an operator's requeue sends SIGTERM first: the job checkpoints at its next step and resumes from there
    # or later (it trains on until SLURM's SIGKILL, KillWait seconds on, and may pass a periodic checkpoint)
    sigterm = re.findall(r"SIGTERM: checkpoint written at step (\d+)", first)
    if sigterm:
        assert int(resumed[-1]) >= int(sigterm[-1]), log[-3000:]
    if how == "preemption_signal":
        assert "requeueing; resume=" in log, "TrainingJob.checkpoint() was not called"
    reference, interrupted = last_weights(root / "reference"), last_weights(root / how)
    assert len(reference) > 0 and reference.keys() == interrupted.keys()
    assert all(torch.equal(reference[k], interrupted[k]) for k in reference), "weights differ from the uninterrupted run"


def test_a_requeue_appends_to_the_job_logs(partition, tmp_path):
    # sbatch's --open-mode=append reaches srun only through SLURM_OPEN_MODE in the job's environment; where it
    # does not (a site's job environment, a setup that resets it), srun's default truncated the task log when
    # the requeued job started, erasing why the first attempt stopped.
    opts = LaunchOptions(launcher="slurm", partition=partition, timeout_min=5, job_name="maskdcpt-log")
    executor = build_executor(opts, tmp_path / "%j")
    executor.update_parameters(slurm_setup=["unset SLURM_OPEN_MODE"])
    job = executor.submit(os.system, "echo attempt ${SLURM_RESTART_COUNT:-0}")
    _wait(job, timeout_s=120)
    subprocess.run(["scontrol", "requeue", str(job.job_id)], check=True)  # after the end: SLURM runs it again
    _wait_after_requeue(job, timeout_s=120)
    log = Path(job.paths.stdout).read_text()
    assert "attempt 0" in log and "attempt 1" in log, log


def test_three_member_sweep_runs_as_one_array_and_collects(partition, tmp_path, capsys):
    spec = tmp_path / "lr.yaml"
    spec.write_text(yaml.safe_dump({
        "target": TARGET,
        "base_overrides": [*TINY, "train.max_steps=3"],
        "grid": {"model.mask_ratio": [0.25, 0.5, 0.75]},
    }))
    sweep_dir = tmp_path / "sweep"
    argv = [str(spec), "--sweep-dir", str(sweep_dir), "--launcher", "slurm", "--partition", partition,
            "--timeout-min", "10", "--job-name", "maskdcpt-sweep"]
    assert sweep_mod.main(argv) == 0
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    ids = [m["job_id"] for m in manifest["members"]]
    array_ids = {i.split("_")[0] for i in ids}
    assert len(array_ids) == 1 and sorted(i.split("_")[1] for i in ids) == ["0", "1", "2"], ids

    deadline = time.time() + JOB_TIMEOUT_S
    while not all((Path(m["run_dir"]) / "metrics.json").exists() for m in manifest["members"]):
        assert time.time() < deadline, f"sweep did not finish: {sweep_mod.collect(sweep_dir)}"
        time.sleep(1)
    capsys.readouterr()
    assert sweep_mod.main(["--collect", str(sweep_dir)]) == 0
    printed = capsys.readouterr().out
    rows = sweep_mod.collect(sweep_dir)
    assert [r["name"] for r in rows] == ["mask_ratio-0.25", "mask_ratio-0.5", "mask_ratio-0.75"]
    assert all(r["status"] == "done" and r["step"] == 3 for r in rows), rows
    assert len({r["loss/rec"] for r in rows}) == 3  # each member really ran with its own mask ratio
    for m, ratio in zip(manifest["members"], (0.25, 0.5, 0.75)):
        assert yaml.safe_load((Path(m["run_dir"]) / "config.yaml").read_text())["model"]["mask_ratio"] == ratio
    for m in manifest["members"]:
        assert Path(m["run_dir"]) == sweep_dir.resolve() / m["name"]
    assert "mask_ratio-0.75" in printed and (sweep_dir / "results.csv").is_file()


def test_transfer_experiment_runs_its_arms_as_one_array_and_reports_after_it(partition, tmp_path):
    from maskdcpt.experiments.plan import load_transfer_config, preset_path
    from maskdcpt.experiments.run import run_experiment

    out = tmp_path / "transfer"
    cfg = load_transfer_config(preset_path("smoke"), [
        "arms=[scratch,maskdcpt]", "launch.launcher=slurm", f"launch.partition={partition}", "launch.timeout_min=10",
        "launch.job_name=maskdcpt-test-transfer"])
    assert run_experiment(cfg, out, "python tools/experiment.py transfer --preset smoke") is None  # not waited for
    manifest = json.loads((out / "manifest.json").read_text())
    ids = [m["job_id"] for m in manifest["members"]]
    assert len({i.split("_")[0] for i in ids}) == 1 and sorted(i.split("_")[1] for i in ids) == ["0", "1"], ids
    report_id = manifest["report_job"]["job_id"]
    assert _scontrol_job(report_id)["Dependency"].startswith(f"afterany:{ids[0].split('_')[0]}")
    deadline = time.time() + JOB_TIMEOUT_S
    while not (out / "results.json").exists():
        if time.time() > deadline:
            pytest.fail(f"no report after {JOB_TIMEOUT_S} s: {sweep_mod.collect(out)}")
        time.sleep(1)
    results = json.loads((out / "results.json").read_text())
    # the report job ran once the array had ended: both arms are in it, finished
    assert {n: a["status"] for n, a in results["arms"].items()} == {"scratch": "done", "maskdcpt": "done"}
    assert "top1" in results["arms"]["maskdcpt"] and (out / "report.md").is_file()
    assert "| maskdcpt |" in (out / "report.md").read_text()
    assert "maskdcpt" in Path(manifest["report_job"]["stdout"].replace("%t", "0")).read_text()


def test_requeued_transfer_arm_skips_its_finished_pretraining_and_resumes_its_finetuning(partition, tmp_path,
                                                                                        monkeypatch):
    from maskdcpt.experiments import cluster
    from maskdcpt.experiments.plan import load_transfer_config, preset_path
    from maskdcpt.experiments.run import run_experiment

    out = tmp_path / "transfer"
    cfg = load_transfer_config(preset_path("smoke"), [
        "arms=[maskdcpt]", "finetune_steps=40", "launch.launcher=slurm", f"launch.partition={partition}",
        "launch.timeout_min=10", "launch.wait=true", "launch.job_name=maskdcpt-test-transfer"])
    ckpt = out / "maskdcpt" / "finetune" / "checkpoints" / "last.ckpt"
    requeued: list[str] = []

    def requeue_once_finetuning_has_a_checkpoint(jobs):
        deadline = time.time() + JOB_TIMEOUT_S
        while not ckpt.exists():
            _check_not_stuck(jobs[0])
            if jobs[0].done() or time.time() > deadline:
                pytest.fail(f"job {jobs[0].job_id} never wrote {ckpt}:\n{_logs(jobs[0])}")
            time.sleep(0.3)
        subprocess.run(["scontrol", "requeue", str(jobs[0].job_id)], check=True)
        requeued.append(str(jobs[0].job_id))
        while not jobs[0].done():
            time.sleep(1)

    # launch.wait: the submitting process waits for the jobs, here requeueing the arm's job on the way
    monkeypatch.setattr(cluster, "wait_for_jobs", requeue_once_finetuning_has_a_checkpoint)
    results = run_experiment(cfg, out, "python tools/experiment.py transfer --preset smoke")
    assert requeued and int(_scontrol_job(requeued[0])["Restarts"]) >= 1, "SLURM never requeued the job"
    assert results["arms"]["maskdcpt"]["status"] == "done" and results["arms"]["maskdcpt"]["step"] == 40
    log = Path(json.loads((out / "manifest.json").read_text())["members"][0]["stdout"]).read_text()
    assert "[maskdcpt] pre-training finished earlier: skipped" in log
    resumed = re.findall(r"resumed from .*finetune/checkpoints/last\.ckpt at step (\d+)", log)
    assert resumed and int(resumed[-1]) >= 2, log[-2000:]
    steps = [json.loads(line)["step"] for line in (out / "maskdcpt" / "finetune" / "val.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # each validation once, despite the restart
