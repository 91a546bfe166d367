"""The launcher without SLURM daemons: options → executor parameters, targets, sweep grids, collect,
the requeue hand-over, and real jobs through submitit's local executor (the laptop path)."""
from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import signal
import time
from pathlib import Path

import pytest
import yaml

from maskdcpt.launch import LaunchOptions, TrainingJob, add_launcher_args, launch, resolve_target
from maskdcpt.launch.cluster_check import load_cluster_check_config, run_cluster_check
from maskdcpt.launch.launcher import executor_parameters
from maskdcpt.launch.sweep import collect, expand_grid, format_table, load_spec, member_overrides, parse_spec
from maskdcpt.launch.targets import KNOWN_TARGETS, import_function

REPO = Path(__file__).resolve().parents[1]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("overrides", nargs="*")
    add_launcher_args(parser)
    return parser.parse_args(argv)


# --- options and executor parameters ------------------------------------------------------------------------


def test_gpu_command_line_maps_to_one_task_per_gpu_with_slurm_prefixed_keys():
    args = _parse(["--launcher", "slurm", "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu",
                   "--timeout-min", "4320", "--cpus-per-task", "10", "--account", "vision", "train.max_steps=5"])
    assert args.overrides == ["train.max_steps=5"]
    assert executor_parameters(LaunchOptions.from_args(args)) == {
        "name": "maskdcpt", "nodes": 2, "tasks_per_node": 8, "cpus_per_task": 10, "gpus_per_node": 8,
        "timeout_min": 4320, "slurm_signal_delay_s": 120, "slurm_partition": "gpu", "slurm_account": "vision",
        "slurm_srun_args": ["--open-mode=append"],  # a requeue must not erase the first attempt's log
    }


def test_cpu_command_line_uses_tasks_per_node_and_no_gpus():
    opts = LaunchOptions.from_args(_parse(["--launcher", "local", "--tasks-per-node", "2", "--mem-gb", "4"]))
    params = executor_parameters(opts)
    assert (params["tasks_per_node"], params["gpus_per_node"], params["mem_gb"]) == (2, 0, 4.0)
    assert not any(k.startswith("slurm_") for k in params)
    assert executor_parameters(LaunchOptions(launcher="slurm"))["tasks_per_node"] == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(launcher="pbs"), "launcher 'pbs'"),
    (dict(launcher="local", nodes=2), "nodes=2"),
    (dict(nodes=0), "nodes"),
    (dict(tasks_per_node=0), "tasks_per_node"),
    (dict(gpus_per_node=-1), "gpus_per_node"),
])
def test_bad_launch_options_name_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LaunchOptions(**kwargs)


def test_launcher_none_submits_nothing(tmp_path):
    out = launch("cluster_check", None, [f"run.output_dir={tmp_path}"], _parse([]))
    assert out is None and list(tmp_path.iterdir()) == []


def test_targets_resolve_by_name_or_run_path_and_reject_unknown():
    assert resolve_target("pretrain") is resolve_target("maskdcpt.training.pretrain:run_pretraining")
    with pytest.raises(ValueError, match="unknown launch target 'nope'.*pretrain"):
        resolve_target("nope")
    with pytest.raises(ValueError, match="not of the form"):
        import_function("maskdcpt.launch")
    with pytest.raises(ValueError, match="has no 'missing'"):
        import_function("maskdcpt.launch.cluster_check:missing")
    assert import_function(KNOWN_TARGETS["cluster_check"].run) is run_cluster_check


# --- sweeps ---------------------------------------------------------------------------------------------------


def test_grid_expands_to_the_cartesian_product_with_names_from_values():
    members = expand_grid({"loss.w_con": [0.0, 0.1], "model.mask_ratio": [0.25, 0.5, 0.75]})
    assert len(members) == 6 and len({m.name for m in members}) == 6
    assert members[0].name == "w_con-0.0__mask_ratio-0.25"
    assert members[0].overrides == ["loss.w_con=0.0", "model.mask_ratio=0.25"]
    assert members[-1].overrides == ["loss.w_con=0.1", "model.mask_ratio=0.75"]
    # Two keys ending alike keep their full dotted names, or members would collide.
    same_tail = expand_grid({"a.lr": [1], "b.lr": [2, 3]})
    assert [m.name for m in same_tail] == ["a.lr-1__b.lr-2", "a.lr-1__b.lr-3"]


@pytest.mark.parametrize("data, message", [
    ({"target": "pretrain", "grid": {"x": [1]}, "gird": {}},
     r"unknown config key 'gird'; valid keys: target, base_config, base_overrides, members, grid \(in spec.yaml\)"),
    ({"members": [{"overrides": []}]}, r"missing config key 'members\[0\].name'"),
    ({"members": [{"name": "a"}, {"name": "a"}]}, "two members are named 'a'"),
    ({"members": [{"name": "a", "overrides": ["no_equals"]}]}, r"members\[0\].overrides"),
    ({"members": [{"name": "a/b"}]}, "must use only"),
    ({"grid": {"model.mask_ratio": []}}, "model.mask_ratio: expected a non-empty list"),
    ({"target": "pretrain"}, "needs 'members' and/or a 'grid'"),
    ({"target": "train_everything", "grid": {"x": [1]}}, "unknown launch target"),
])
def test_bad_sweep_specs_are_rejected_by_name(data, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(data, "spec.yaml")


def test_shipped_ablation_sweep_covers_the_paper_ablations():
    spec = load_spec(REPO / "configs" / "sweeps" / "maskdcpt_ablation.yaml")
    by_name = {m.name: m.overrides for m in spec.members}
    assert spec.target == "pretrain"
    assert by_name["no_mask"] == ["model.mask_ratio=0"]
    assert by_name["no_classification"] == ["loss.w_cls=0"]
    assert by_name["no_reconstruction"] == ["loss.w_rec=0"]
    for ratio in ("0.25", "0.5", "0.75"):
        for w_con in ("0.0", "0.1"):
            assert by_name[f"mask_ratio-{ratio}__w_con-{w_con}"] == [f"model.mask_ratio={ratio}", f"loss.w_con={w_con}"]
    # Every member is a valid pre-training config placed in its own run folder.
    from maskdcpt.training.pretrain import load_pretrain_config, run_dir

    folders = set()
    for member in spec.members:
        cfg = load_pretrain_config(REPO / spec.base_config, member_overrides(spec, member, Path("/sweep")))
        folders.add(run_dir(cfg))
        for override in member.overrides:
            key, value = override.split("=")
            section, name = key.split(".")
            assert getattr(getattr(cfg, section), name) == yaml.safe_load(value)
    assert folders == {Path("/sweep") / m.name for m in spec.members}


def _fake_sweep(tmp_path: Path) -> Path:
    """A sweep folder as submit_sweep leaves it, with one member in each state."""
    sweep = tmp_path / "sweep"
    members = []
    for i, name in enumerate(["ok", "crashed", "running", "vanished"]):
        run_dir = sweep / name
        job_dir = sweep / "slurm" / f"77_{i}"
        job_dir.mkdir(parents=True)
        run_dir.mkdir()
        members.append({"name": name, "overrides": [], "run_dir": str(run_dir), "job_id": f"77_{i}",
                        "stdout": str(job_dir / f"77_{i}_0_log.out"), "stderr": str(job_dir / f"77_{i}_0_log.err"),
                        "result": str(job_dir / f"77_{i}_0_result.pkl")})
    (sweep / "ok" / "metrics.json").write_text(json.dumps(
        {"step": 20, "loss": {"rec": 0.125, "cls": 0.5}, "accuracy": 0.75, "weights": [1.0, 2.0]}))
    traceback = ('Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
                 "ValueError: unknown config key 'model.nme'; valid keys in model: name, mask_ratio\n")
    with open(members[1]["result"], "wb") as f:
        pickle.dump(("error", traceback), f)
    Path(members[3]["stderr"]).write_text("step 3\nslurmstepd: error: *** JOB 77 ON n1 CANCELLED AT 12:00 ***\n")
    (sweep / "manifest.json").write_text(json.dumps({"target": "pretrain", "members": members}))
    return sweep


def test_collect_marks_done_failed_and_unfinished_members_with_reasons(tmp_path):
    sweep = _fake_sweep(tmp_path)
    states = {"77_2": "RUNNING", "77_3": "CANCELLED"}
    rows = {r["name"]: r for r in collect(sweep, job_state=states.get)}
    assert rows["ok"]["status"] == "done"
    assert (rows["ok"]["loss.rec"], rows["ok"]["loss.cls"], rows["ok"]["accuracy"]) == (0.125, 0.5, 0.75)
    assert "weights" not in rows["ok"]  # lists are not table cells
    assert rows["crashed"]["status"] == "failed"
    assert rows["crashed"]["reason"].startswith("ValueError: unknown config key 'model.nme'")
    assert (rows["running"]["status"], rows["running"]["reason"]) == ("unfinished", "RUNNING")
    assert rows["vanished"]["status"] == "failed"
    assert rows["vanished"]["reason"] == "CANCELLED without a result: slurmstepd: error: *** JOB 77 ON n1 CANCELLED AT 12:00 ***"

    with open(sweep / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == ["ok", "crashed", "running", "vanished"]
    assert [r["status"] for r in table] == ["done", "failed", "unfinished", "failed"]
    assert table[0]["loss.rec"] == "0.125" and table[1]["loss.rec"] == ""
    printed = format_table(list(rows.values()))
    assert printed.splitlines()[0].split()[:3] == ["name", "status", "job_id"] and "RUNNING" in printed

    # Without any scheduler to ask, a member with no result is unfinished, never silently failed.
    rows = {r["name"]: r for r in collect(sweep, job_state=lambda job_id: None)}
    assert rows["running"]["status"] == "unfinished" and "state unknown" in rows["running"]["reason"]


def test_collect_rejects_a_folder_without_manifest(tmp_path):
    with pytest.raises(ValueError, match="no manifest.json"):
        collect(tmp_path)


# --- the job and its requeue hand-over ------------------------------------------------------------------------


def test_checkpoint_resubmits_the_same_run_resuming_from_its_last_checkpoint(tmp_path):
    job = TrainingJob("cluster_check", None, [f"run.output_dir={tmp_path}", "run.name=r"])
    first = job.checkpoint()
    assert first.function.resume == "auto"  # nothing saved yet: start afresh
    ckpt = tmp_path / "r" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    later = pickle.loads(pickle.dumps(job.checkpoint()))  # submitit pickles what checkpoint() returns
    assert later.function.resume == str(ckpt)
    assert later.function.overrides == job.overrides and later.function.target == job.target
    assert job.resume == "auto"  # the original is left untouched


def test_cluster_check_resume_is_bit_exact(tmp_path):
    over = ["train.max_steps=12", "train.checkpoint_every=4"]
    whole = run_cluster_check(load_cluster_check_config(None, [*over, f"run.output_dir={tmp_path}", "run.name=a"]))
    part_cfg = load_cluster_check_config(None, [*over, f"run.output_dir={tmp_path}", "run.name=b"])
    part_cfg.train.max_steps = 8  # "preempted" after step 8
    run_cluster_check(part_cfg)
    resumed = run_cluster_check(load_cluster_check_config(None, [*over, f"run.output_dir={tmp_path}", "run.name=b"]))
    assert resumed["start_step"] == 8
    assert resumed["weights"] == whole["weights"]
    assert (tmp_path / "a" / "weights.safetensors").read_bytes() == (tmp_path / "b" / "weights.safetensors").read_bytes()


# --- real jobs through submitit's local executor ---------------------------------------------------------------


@pytest.fixture
def in_repo(monkeypatch):
    # Jobs start `python -m submitit...` in this working directory and must import maskdcpt from it.
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_local_launcher_runs_two_ranks_that_end_with_identical_weights(tmp_path, in_repo, capsys):
    opts = LaunchOptions(launcher="local", tasks_per_node=2, timeout_min=5)
    job = launch("cluster_check", None, [f"run.output_dir={tmp_path}", "train.max_steps=6"], opts)
    out = capsys.readouterr().out
    assert f"submitted job {job.job_id} (local)" in out and "_0_log.out" in out
    rank0, rank1 = job.results()
    assert (rank0["rank"], rank1["rank"], rank0["world_size"]) == (0, 1, 2)
    assert rank0["weights"] == rank1["weights"]  # DDP kept the replicas in step
    saved = json.loads((tmp_path / "cluster_check" / "metrics.json").read_text())
    assert saved["weights"] == rank0["weights"] and saved["step"] == 6
    assert (tmp_path / "cluster_check" / "slurm" / str(job.job_id)).is_dir()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_local_preemption_signal_checkpoints_requeues_and_ends_with_the_same_weights(tmp_path, in_repo):
    over = ["train.max_steps=40", "train.checkpoint_every=5"]
    reference = run_cluster_check(load_cluster_check_config(None, [*over, f"run.output_dir={tmp_path}", "run.name=ref"]))
    opts = LaunchOptions(launcher="local", timeout_min=5)
    job = launch("cluster_check", None, [*over, "train.step_sleep_s=0.2", f"run.output_dir={tmp_path}"], opts)
    ckpt = tmp_path / "cluster_check" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and not job.done():
        time.sleep(0.2)
    assert ckpt.exists() and not job.done(), "the job ended before it could be interrupted"
    # What the local controller does at a time-out, and SLURM at a preemption: USR2 to the task.
    for pid in _children(job._process.pid):
        os.kill(pid, signal.SIGUSR2)
    result = job.results()[0]
    assert result["start_step"] >= 5, "the requeued job did not resume from its checkpoint"
    assert result["weights"] == reference["weights"]
    log = Path(job.paths.stdout.as_posix().replace("%t", "0")).read_text() + Path(job.paths.stderr).read_text()
    assert "requeueing; resume=" in log


TOOL = '''
import argparse
from pathlib import Path

from maskdcpt.launch import add_launcher_args, launch_tool


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--value", type=int, default=1)
    add_launcher_args(parser)
    args = parser.parse_args(argv)
    if launch_tool(__file__, argv, args.out, args) is not None:
        return 0
    if args.value < 0:
        return 3
    Path(args.out, "result.txt").write_text(f"{args.value * 2} {args.launcher}")
    return 0
'''


def test_tool_job_reruns_the_tool_in_process_inside_the_job(tmp_path):
    from maskdcpt.launch import ToolJob
    from maskdcpt.launch.launcher import launch_tool

    script = tmp_path / "tool.py"
    script.write_text(TOOL)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["--out", str(out), "--value", "21", "--launcher", "debug"]
    # The debug executor runs the job in this process when its result is asked for.
    job = launch_tool(script, argv, out, LaunchOptions(launcher="debug"))
    assert not (out / "result.txt").exists()
    assert job.result() == 0
    assert (out / "result.txt").read_text() == "42 none"  # ran in-process: the appended --launcher none won
    assert launch_tool(script, argv, out, LaunchOptions()) is None
    with pytest.raises(RuntimeError, match="exited with status 3"):
        ToolJob(str(script), ["--out", str(out), "--value", "-1"])()


def test_sweep_command_line_takes_overrides_after_options_and_names_bad_input(tmp_path, capsys):
    from maskdcpt.launch.sweep import main

    spec = REPO / "configs" / "sweeps" / "maskdcpt_ablation.yaml"
    assert main([str(spec), "--dry-run", "--sweep-dir", str(tmp_path), "train.max_steps=10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 11
    assert lines[0] == f"base config: {REPO / 'configs' / 'pretrain' / 'nafnet_uir.yaml'}"
    assert lines[1] == f"no_mask: model.mask_ratio=0 train.max_steps=10 run.output_dir={tmp_path} run.name=no_mask"
    assert main(["--collect", str(tmp_path / "missing")]) == 2  # the user's error in one line, as every tool ends it
    assert capsys.readouterr().err == f"error: {str(tmp_path / 'missing')!r} is not a sweep folder: no manifest.json\n"
