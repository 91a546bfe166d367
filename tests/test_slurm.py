"""Against a real SLURM controller and two node daemons on this host (tests/slurm/start_local_cluster.sh), not a
mock: a 2-task DDP pre-training job (gloo, CPU), preemption by `scontrol requeue` and by the preemption signal
(both must resume and end with the weights of an uninterrupted run), a 3-member pre-training sweep
collected into a table, the cluster check (DDP replicas agree), and the transfer experiment (its arms as
one array, the report job after it, a requeued arm resuming). Across the two nodes: a DDP pre-training job
checked against a one-process run of the same global batch, its requeue, the death of a node, a fine-tuning job,
a sweep of two-node members, and requests the cluster can never run.

Every interrupted job is held at a known step (``MASKDCPT_HOLD_AT``, maskdcpt/training/hold.py) until the test
has interrupted it: no machine is fast enough to finish it first.

Skips with the reason when no cluster answers; in CI (CI=true or MASKDCPT_REQUIRE_SLURM=1) fails instead.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import torch
from safetensors import safe_open

from maskdcpt.launch import LaunchOptions, build_executor, launch
from maskdcpt.launch import sweep as sweep_mod

from conftest import TINY_PRETRAIN, TINY_RUN, last_weights

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
TARGET = "pretrain"
# The tiny real pre-training (embedded photos, degradation engine, masking, 3 losses) on 64² crops.
TINY = ["model.name=nafnet_tiny", *TINY_PRETRAIN]
# Interrupted jobs are held at HOLD_STEP (their first checkpoint) until the test has interrupted them.
STEPS, HOLD_STEP = 12, 4
TRAIN = [*TINY, f"train.max_steps={STEPS}", f"train.checkpoint_every={HOLD_STEP}"]
JOB_TIMEOUT_S = 400
NODES = ("n1", "n2")  # the node names of tests/slurm/start_local_cluster.sh


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


@contextlib.contextmanager
def held_at(run_dir: Path, step: int = HOLD_STEP):
    """Jobs submitted inside this block stop after ``step`` of the run in ``run_dir`` and wait there (each rank,
    the job's first attempt only) until the test has interrupted them: see maskdcpt/training/hold.py.
    sbatch copies the submitting environment into the job."""
    previous = os.environ.get("MASKDCPT_HOLD_AT")
    os.environ["MASKDCPT_HOLD_AT"] = f"{run_dir}@{step}"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MASKDCPT_HOLD_AT", None)
        else:
            os.environ["MASKDCPT_HOLD_AT"] = previous


def _wait_until_held(job, run_dir: Path, ranks: int = 1, step: int = HOLD_STEP) -> dict[int, tuple[int, str, int]]:
    """Wait until every rank of ``job`` holds at its hold step; {rank: (step, node, pid)}. The job is then
    certainly running (and stays so until it is interrupted), whatever the speed of the machine."""
    hold = run_dir / "hold"
    deadline = time.time() + JOB_TIMEOUT_S
    while not (hold / "held").is_file() or len(list(hold.glob("rank*"))) < ranks:
        _check_not_stuck(job)
        if job.done() or time.time() > deadline:
            pytest.fail(f"job {job.job_id} never reached its hold step in {run_dir}:\n{_logs(job)}")
        time.sleep(0.2)
    where = {}
    for marker in hold.glob("rank*"):
        at, node, pid = marker.read_text().split()
        where[int(marker.name[4:])] = (int(at), node, int(pid))
    state = _scontrol_job(str(job.job_id))["JobState"]
    assert state == "RUNNING" and all(at == step for at, _, _ in where.values()), (state, where)
    assert _checkpoint_step(run_dir) == step
    return where


def _interrupt_mid_run(job, run_dir: Path, interrupt, ranks: int = 2) -> None:
    """Interrupt ``job`` while it waits at its hold step (its first checkpoint), certainly still training.

    The race this closes: the test used to wait for the first checkpoint and then interrupt. On a fast machine
    the job could finish all its steps first; SLURM requeues a finished batch job all the same (it runs again,
    SLURM_RESTART_COUNT=1), the first attempt's result file made ``job.done()`` true at once, and the first
    attempt had run from scratch to the end, so there was no "resumed from" to find.
    """
    _wait_until_held(job, run_dir, ranks)
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


def _cancel_unfinished(jobs) -> None:
    """After a failed test, a held job would wait until its time limit: cancel what is still queued or running."""
    for job in jobs:
        if not job.done():
            job.cancel(check=False)


@pytest.fixture(scope="module")
def runs(partition, tmp_path_factory):
    """Three 2-task runs submitted together: one left alone, two interrupted while held at their first checkpoint."""
    root = tmp_path_factory.mktemp("slurm_runs")
    opts = LaunchOptions(launcher="slurm", partition=partition, tasks_per_node=2, timeout_min=15,
                         signal_delay_s=60, job_name="maskdcpt-test")
    jobs = {}
    for name in ("reference", "scontrol_requeue", "preemption_signal"):
        with held_at(root / name) if name != "reference" else contextlib.nullcontext():
            jobs[name] = launch(TARGET, None, [*TRAIN, f"run.output_dir={root}", f"run.name={name}"], opts)
    # An operator's (or the scheduler's) requeue: SLURM sends SIGTERM, kills the tasks, runs the batch script again.
    _interrupt_mid_run(jobs["scontrol_requeue"], root / "scontrol_requeue",
                       lambda: subprocess.run(["scontrol", "requeue", str(jobs["scontrol_requeue"].job_id)], check=True))
    # A preemption: SLURM's signal reaches submitit, which calls TrainingJob.checkpoint() and requeues.
    _interrupt_mid_run(jobs["preemption_signal"], root / "preemption_signal", jobs["preemption_signal"]._interrupt)
    yield root, jobs
    _cancel_unfinished(jobs.values())


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
    # held at its first checkpoint until SLURM killed it: the second attempt starts there
    assert resumed and int(resumed[-1]) == HOLD_STEP, f"the requeued job did not resume from a checkpoint:\n{log[-3000:]}"
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
    # one array, one member per (arm, seed): the smoke preset's main arms run at seeds 0 and 1
    assert len({i.split("_")[0] for i in ids}) == 1 and sorted(i.split("_")[1] for i in ids) == ["0", "1", "2", "3"], ids
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
        "arms=[maskdcpt]", "seeds=[0]", "finetune_steps=8", "launch.launcher=slurm", f"launch.partition={partition}",
        "launch.timeout_min=10", "launch.wait=true", "launch.job_name=maskdcpt-test-transfer"])
    finetune_dir = out / "maskdcpt" / "seed0" / "finetune"
    requeued: list[str] = []

    def requeue_while_finetuning_is_held(jobs):
        # the smoke preset checkpoints every 2 steps: the arm's fine-tuning waits at step 2 for the requeue
        _wait_until_held(jobs[0], finetune_dir, step=2)
        subprocess.run(["scontrol", "requeue", str(jobs[0].job_id)], check=True)
        requeued.append(str(jobs[0].job_id))
        while not jobs[0].done():
            time.sleep(1)

    # launch.wait: the submitting process waits for the jobs, here requeueing the arm's job on the way
    monkeypatch.setattr(cluster, "wait_for_jobs", requeue_while_finetuning_is_held)
    monkeypatch.setenv("MASKDCPT_HOLD_AT", f"{finetune_dir}@2")  # the arm's job inherits it from sbatch
    results = run_experiment(cfg, out, "python tools/experiment.py transfer --preset smoke")
    assert requeued and int(_scontrol_job(requeued[0])["Restarts"]) >= 1, "SLURM never requeued the job"
    assert results["arms"]["maskdcpt"]["status"] == "done" and results["arms"]["maskdcpt"]["step"] == 8
    log = Path(json.loads((out / "manifest.json").read_text())["members"][0]["stdout"]).read_text()
    assert "[maskdcpt/seed0] pre-training finished earlier: skipped" in log
    resumed = re.findall(r"resumed from .*finetune/checkpoints/last\.ckpt at step (\d+)", log)
    assert resumed and int(resumed[-1]) == 2, log[-2000:]
    steps = [json.loads(line)["step"] for line in (finetune_dir / "val.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 8  # each validation once, despite the restart


# --- two nodes ----------------------------------------------------------------------------------------------------

# The release's LayerNorm classifier: the anchor compares weights, and a normalisation without batch statistics
# leaves the order of float sums as the only difference. (The CPU recipe's BatchNorm classifier is synchronised
# across ranks on CPU as on GPU, SyncMaskedBatchNorm2d: tests/test_sync_batchnorm.py.)
TWO_NODE_TRAIN = [*TRAIN, "model.classifier_norm=layer"]
# Two nodes against one process of the same global batch (4) and seed, after 12 steps: only the order of float
# sums differs (one batch mean against the mean of two half-batch means, averaged over gloo), which Adam carries on.
# Measured: max |Δw| 4.3e-5 (weights up to 16), relative L2 over all weights 1.7e-6.
TWO_NODE_MAX_ABS, TWO_NODE_MAX_REL = 5e-4, 2e-5


def _stop_node(node: str, task_pid: int) -> None:
    """What a node's death does to a job: its node daemon, the job step's daemon there and the task all go at once.
    (The task's parent is that node's slurmstepd.)"""
    stepd = int(Path(f"/proc/{task_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert "slurmstepd" in Path(f"/proc/{stepd}/cmdline").read_text(errors="replace"), stepd
    state = Path(os.environ.get("MASKDCPT_SLURM_STATE", "/tmp/maskdcpt-slurm"))  # as start_local_cluster.sh
    slurmd = int((state / "run" / f"slurmd-{node}.pid").read_text())
    for pid in (slurmd, stepd, task_pid):
        os.kill(pid, signal.SIGKILL)


def _start_node(node: str) -> None:
    subprocess.run(["slurmd", "-N", node], check=True)
    deadline = time.time() + 120
    while subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], capture_output=True, text=True).stdout.strip() \
            not in ("idle", "mix", "alloc"):
        assert time.time() < deadline, f"node {node} did not come back"
        time.sleep(1)


def _submit_two_node_from_the_command_line(root: Path, name: str):
    """``tools/pretrain.py --launcher slurm --nodes 2 --tasks-per-node 1 ...`` as a user types it; its job."""
    import submitit

    argv = ["--launcher", "slurm", "--nodes", "2", "--tasks-per-node", "1", "--partition", _default_partition(),
            "--timeout-min", "15", "--job-name", "maskdcpt-2n", *TWO_NODE_TRAIN, f"run.output_dir={root}",
            f"run.name={name}"]
    env = {**os.environ, "MASKDCPT_DATA_TRACE": str(root / "trace" / name)}
    out = subprocess.run([sys.executable, "tools/pretrain.py", *argv], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    found = re.search(r"submitted job (\d+) \(slurm\)", out.stdout)
    assert out.returncode == 0 and found, out.stdout + out.stderr
    return submitit.SlurmJob(root / name / "slurm" / "%j", found.group(1), tasks=(0, 1))


def _submit_two_node(root: Path, name: str, hold: bool = False):
    opts = LaunchOptions(launcher="slurm", partition=_default_partition(), nodes=2, tasks_per_node=1, timeout_min=15,
                         job_name="maskdcpt-2n")
    os.environ["MASKDCPT_DATA_TRACE"] = str(root / "trace" / name)
    try:
        with held_at(root / name) if hold else contextlib.nullcontext():
            return launch(TARGET, None, [*TWO_NODE_TRAIN, f"run.output_dir={root}", f"run.name={name}"], opts)
    finally:
        os.environ.pop("MASKDCPT_DATA_TRACE", None)


def _default_partition() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout.split()
    return next((p.rstrip("*") for p in out if p.endswith("*")), out[0])


@pytest.fixture(scope="module")
def two_nodes(partition, tmp_path_factory):
    """Two two-node pre-training jobs (one task per node) submitted together: one left alone, one requeued by
    `scontrol requeue` while held at step 4; and, meanwhile, the same training in this process (world size 1, the
    same global batch). Each run traces the sample positions it drew."""
    up = [n for n in NODES if subprocess.run(["sinfo", "-h", "-n", n, "-o", "%t"], capture_output=True,
                                             text=True).stdout.strip()]
    if len(up) < 2:
        pytest.fail(f"the cluster lacks the nodes {NODES} (has {up}): restart it with tests/slurm/start_local_cluster.sh")
    root = tmp_path_factory.mktemp("two_nodes")
    jobs = {"reference": _submit_two_node_from_the_command_line(root, "reference"),
            "requeued": _submit_two_node(root, "requeued", hold=True)}
    held = _wait_until_held(jobs["requeued"], root / "requeued", ranks=2)
    subprocess.run(["scontrol", "requeue", str(jobs["requeued"].job_id)], check=True)

    from maskdcpt.training.pretrain import load_pretrain_config, run_pretraining

    os.environ["MASKDCPT_DATA_TRACE"] = str(root / "trace" / "one_process")
    try:
        single = run_pretraining(load_pretrain_config(None, [*TWO_NODE_TRAIN, f"run.output_dir={root}",
                                                             "run.name=one_process"]), resume=False)
    finally:
        os.environ.pop("MASKDCPT_DATA_TRACE", None)
    yield root, jobs, single, held
    _cancel_unfinished(jobs.values())


def _trace(root: Path, name: str, rank: int) -> dict[int, dict]:
    lines = [json.loads(line) for line in (root / "trace" / name / f"rank{rank}.jsonl").read_text().splitlines()]
    return {line["step"]: line for line in lines}  # a resumed attempt repeats nothing before its checkpoint


def _scalars(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_two_node_ddp_pretraining_equals_one_process_of_the_same_global_batch(two_nodes):
    root, jobs, single, _ = two_nodes
    rank0, rank1 = _wait(jobs["reference"])
    # one rank on each node, one process group of two
    assert (rank0["rank"], rank1["rank"]) == (0, 1) and {rank0["node"], rank1["node"]} == set(NODES)
    run = root / "reference"
    log = (run / "log.txt").read_text()
    assert "rank 0 of 2" in log and log.count("--- start on") == 1
    assert rank0["step"] == rank1["step"] == STEPS
    assert rank0["weights_sha256"] == rank1["weights_sha256"], "the replicas on the two nodes differ"
    # the ranks drew disjoint positions that together are, step by step, the one-process sequence (same samples)
    one = _trace(root, "one_process", 0)
    ranks = [_trace(root, "reference", r) for r in (0, 1)]
    assert sorted(one) == sorted(ranks[0]) == sorted(ranks[1]) == list(range(STEPS))
    for step in range(STEPS):
        assert not set(ranks[0][step]["positions"]) & set(ranks[1][step]["positions"])
        assert ranks[0][step]["positions"] + ranks[1][step]["positions"] == one[step]["positions"]
        assert ranks[0][step]["keys"] + ranks[1][step]["keys"] == one[step]["keys"]
    # equal, within rounding, to the one-process run
    two, alone = last_weights(run), last_weights(root / "one_process")
    assert two.keys() == alone.keys()
    diff = torch.cat([(two[k].double() - alone[k].double()).flatten() for k in two])
    ref = torch.cat([alone[k].double().flatten() for k in two])
    assert diff.abs().max() <= TWO_NODE_MAX_ABS and diff.norm() / ref.norm() <= TWO_NODE_MAX_REL, \
        (diff.abs().max().item(), (diff.norm() / ref.norm()).item())
    assert abs(single["loss/total"] - rank0["loss/total"]) < 1e-3
    # rank 0 alone writes the run's files: one TensorBoard file, one set of checkpoints, each log line once
    assert len(list((run / "tensorboard").glob("events.*"))) == 1
    assert {"last.ckpt", "last.safetensors"} <= {p.name for p in (run / "checkpoints").iterdir()} <= \
        {"last.ckpt", "last.safetensors", "best.safetensors"}
    assert log.count(f"step {STEPS}/{STEPS}") == 1


def test_two_node_job_requeued_resumes_both_ranks_and_repeats_the_uninterrupted_losses(two_nodes):
    root, jobs, _, held = two_nodes
    reference = _wait(jobs["reference"])
    rank0, rank1 = _wait_after_requeue(jobs["requeued"])
    assert {held[0][1], held[1][1]} == {rank0["node"], rank1["node"]} == set(NODES)
    log = (root / "requeued" / "log.txt").read_text()
    assert re.findall(r"resumed from .*last\.ckpt at step (\d+)", log) == [str(HOLD_STEP)], log[-2000:]
    # both ranks resumed (optimizer state included): their weights agree, and equal the uninterrupted run's
    assert rank0["weights_sha256"] == rank1["weights_sha256"] == reference[0]["weights_sha256"]
    losses, uninterrupted = _scalars(root / "requeued", "loss/total"), _scalars(root / "reference", "loss/total")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert [losses[s] for s in range(HOLD_STEP + 1, STEPS + 1)] == \
        [uninterrupted[s] for s in range(HOLD_STEP + 1, STEPS + 1)]
    # the second attempt drew the positions of steps 4.. again, exactly as the uninterrupted run
    for r in (0, 1):
        assert _trace(root, "requeued", r) == _trace(root, "reference", r)


def test_a_node_that_dies_mid_job_requeues_it_and_nothing_is_lost(two_nodes):
    root, jobs, _, _ = two_nodes
    reference = _wait(jobs["reference"])
    _wait_after_requeue(jobs["requeued"])  # alone on the cluster: a dead node takes every job on it down
    job = _submit_two_node(root, "node_failure", hold=True)
    lost = None
    try:
        where = _wait_until_held(job, root / "node_failure", ranks=2)
        lost = where[1][1]
        _stop_node(lost, where[1][2])
        # SLURM declares the node DOWN after SlurmdTimeout (20 s here) and requeues the job, which waits for two nodes
        deadline = time.time() + JOB_TIMEOUT_S
        while int(_scontrol_job(str(job.job_id)).get("Restarts", 0)) < 1:
            assert time.time() < deadline, f"SLURM never requeued the job of the dead node:\n{_logs(job)}"
            time.sleep(1)
    finally:
        if lost is not None:
            _start_node(lost)  # the node is repaired (on a larger cluster SLURM gives the job another one)
    try:
        rank0, rank1 = _wait_after_requeue(job)
    finally:
        _cancel_unfinished([job])
    assert {rank0["node"], rank1["node"]} == set(NODES)
    stdout = Path(job.paths.stdout).read_text() + Path(job.paths.stderr).read_text()
    assert "DUE TO NODE FAILURE" in stdout, stdout[-2000:]
    log = (root / "node_failure" / "log.txt").read_text()
    assert re.findall(r"resumed from .*last\.ckpt at step (\d+)", log) == [str(HOLD_STEP)], log[-2000:]
    assert rank0["weights_sha256"] == rank1["weights_sha256"] == reference[0]["weights_sha256"]


def test_two_node_finetuning(partition, tmp_path):
    opts = LaunchOptions(launcher="slurm", partition=partition, nodes=2, tasks_per_node=1, timeout_min=10,
                         job_name="maskdcpt-2n-ft")
    over = [*TINY_RUN, "model.name=nafnet_tiny", "train.max_steps=4", "val.every=4", f"run.output_dir={tmp_path}",
            "run.name=ft"]
    rank0, rank1 = _wait(launch("finetune", None, over, opts))
    assert {rank0["node"], rank1["node"]} == set(NODES) and rank0["step"] == rank1["step"] == 4
    assert rank0["weights_sha256"] == rank1["weights_sha256"]
    assert "rank 0 of 2" in (tmp_path / "ft" / "log.txt").read_text()
    assert [json.loads(line)["step"] for line in (tmp_path / "ft" / "val.jsonl").read_text().splitlines()] == [0, 4]


def test_sweep_of_two_node_members_training_on_shards(partition, tmp_path):
    from maskdcpt.data.default import default_index
    from maskdcpt.data.shard_writer import write_shards

    # the members read a sharded copy of the embedded photos: each rank its own lane of the shards
    write_shards(default_index(), tmp_path / "shards", shard_bytes=400_000)
    shards = f"data.sources=[{{kind: shards, shards: {tmp_path / 'shards'}}}]"
    spec = tmp_path / "two.yaml"
    spec.write_text(yaml.safe_dump({"target": TARGET, "base_overrides": [*TINY, "train.max_steps=2", shards],
                                    "grid": {"model.mask_ratio": [0.25, 0.75]}}))
    sweep_dir = tmp_path / "sweep"
    assert sweep_mod.main([str(spec), "--sweep-dir", str(sweep_dir), "--launcher", "slurm", "--partition", partition,
                           "--nodes", "2", "--tasks-per-node", "1", "--timeout-min", "10"]) == 0
    members = json.loads((sweep_dir / "manifest.json").read_text())["members"]
    for member in members:
        info = _scontrol_job(member["job_id"])
        assert info["NumNodes"] in ("2", "2-2") and info["NumTasks"] == "2", info  # "2-2" while it is pending
    deadline = time.time() + JOB_TIMEOUT_S
    while not all((Path(m["run_dir"]) / "metrics.json").exists() for m in members):
        assert time.time() < deadline, f"sweep did not finish: {sweep_mod.collect(sweep_dir)}"
        time.sleep(1)
    rows = sweep_mod.collect(sweep_dir)
    assert [(r["name"], r["status"], r["step"]) for r in rows] == [("mask_ratio-0.25", "done", 2),
                                                                   ("mask_ratio-0.75", "done", 2)], rows
    for member in members:
        assert "rank 0 of 2" in (Path(member["run_dir"]) / "log.txt").read_text()
        assert yaml.safe_load((Path(member["run_dir"]) / "config.yaml").read_text())["data"]["sources"][0]["kind"] == \
            "shards"


@pytest.mark.parametrize("option, message", [
    (dict(nodes=3), r"--nodes 3: partition '{partition}' has 2 node\(s\) \(n\[1-2\]\); ask for at most 2"),
    (dict(partition="no_such_partition"), r"--partition 'no_such_partition' does not exist on this cluster; "
                                          r"its partitions: {partition}"),
])
def test_a_request_the_cluster_can_never_run_is_refused_before_submission(partition, tmp_path, option, message):
    opts = LaunchOptions(**{"launcher": "slurm", "partition": partition, "timeout_min": 5, **option})
    queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    with pytest.raises(ValueError, match=message.format(partition=partition)):
        launch(TARGET, None, [*TINY, f"run.output_dir={tmp_path}"], opts)
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split() == queued
    assert not list(tmp_path.iterdir())  # nothing submitted, nothing written
    # on the command line: one line, no traceback
    argv = ["--launcher", "slurm", "--partition", opts.partition, "--nodes", str(opts.nodes), *TINY,
            f"run.output_dir={tmp_path}"]
    out = subprocess.run([sys.executable, "tools/pretrain.py", *argv], capture_output=True, text=True, cwd=REPO)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert re.search(message.format(partition=partition), out.stderr), out.stderr
