"""The transfer experiment's machinery ("does pre-training help?"): the arms differ only where the table says
(on their resolved configs), the smoke preset end to end (report, results, skipping finished arms, resuming an
interrupted one), and the cluster path through submitit's local executor. No test asserts the numbers."""
from __future__ import annotations

import ast
import json
import re
import runpy
from pathlib import Path

import pytest
import yaml

from maskdcpt.config import flatten, to_dict
from maskdcpt.experiments import plan as plan_module
from maskdcpt.experiments.plan import (ARMS, ExperimentFolder, load_arm_job_config, load_transfer_config, plan_arms,
                                       preset_path)
from maskdcpt.experiments.run import run_arm, run_arm_job, run_experiment
from maskdcpt.launch import TrainingJob
from maskdcpt.training.finetune import five_d_val_tasks
from maskdcpt.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("smoke", "cpu", "gpu", "cluster")
PRETRAINED = ("maskdcpt", "no_mask", "no_cls", "no_rec", "no_con", "rec_hidden", "dcpt")
# What each pre-trained arm changes in the maskdcpt pre-training, written out again here on purpose.
PRETRAIN_CHANGES = {
    "maskdcpt": {},
    "no_mask": {"model.mask_ratio": 0.0},
    "no_cls": {"loss.w_cls": 0.0},
    "no_rec": {"loss.w_rec": 0.0},
    "no_con": {"loss.w_con": 0.0},
    "rec_hidden": {"loss.rec_region": "hidden"},
    "dcpt": {"model.mask_ratio": 0.0, "loss.rec_source": "gt"},
}


def _changes(cfg, reference) -> dict:
    """{key: value in cfg} where cfg differs from reference, placement (run.*) left out."""
    a, b = flatten(to_dict(cfg)), flatten(to_dict(reference))
    return {k: a.get(k) for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith("run.")}


@pytest.mark.parametrize("preset", PRESETS)
def test_arms_differ_only_where_they_should(preset, tmp_path):
    cfg = load_transfer_config(preset_path(preset), ["arms=[" + ",".join(ARMS) + "]"])
    plans = plan_arms(cfg, tmp_path)
    P, F = cfg.pretrain_steps, cfg.finetune_steps
    ref_pre, ref_ft = plans["maskdcpt"].pretrain, plans["scratch"].finetune
    for name in PRETRAINED:
        plan = plans[name]
        assert _changes(plan.pretrain, ref_pre) == PRETRAIN_CHANGES[name], name
        assert _changes(plan.finetune, ref_ft) == {"pretrained": str(tmp_path.resolve() / name / "pretrain")}, name
        assert plan.pretrain.train.max_steps == P and plan.finetune.train.max_steps == F
    assert plans["scratch"].pretrain is None and plans["scratch_equal_total"].pretrain is None
    assert ref_ft.pretrained == "none" and ref_ft.train.max_steps == F
    assert _changes(plans["scratch_equal_total"].finetune, ref_ft) == {"train.max_steps": P + F}
    # the shared recipe reaches both kinds of run: backbone, crops, batch, seed
    for plan in plans.values():
        for run in (plan.pretrain, plan.finetune):
            if run is not None:
                assert (run.model.name, run.model.kwargs) == (cfg.model, cfg.model_kwargs)
                assert (run.data.crop_size, run.train.batch_size, run.train.seed) == (cfg.crop_size, cfg.batch_size, cfg.seed)
        assert plan.finetune.val == plans["scratch"].finetune.val
    # the reference is MaskDCPT itself: masked, all three losses, on every degradation type
    assert ref_pre.model.mask_ratio > 0 and min(ref_pre.loss.w_rec, ref_pre.loss.w_cls, ref_pre.loss.w_con) > 0
    assert len(ref_pre.data.engine.type_names) == 19 and ref_pre.loss.rec_source == "lq"
    # every run in its own folder
    folders = [p.finetune_dir for p in plans.values()] + [p.pretrain_dir for p in plans.values() if p.pretrain]
    assert len(set(folders)) == len(folders) == len(ARMS) + len(PRETRAINED)


@pytest.mark.parametrize("overrides, message", [
    (["pretrain=[loss.w_con=0]"], r"arm no_con: .* differs from the reference arm's in nothing.*loss.w_con"),
    (["common=[train.max_steps=9]"], r"'train.max_steps' is set by the experiment itself"),
    (["finetune=[pretrained=x]"], r"'pretrained' is set by the experiment itself"),
    (["arms=[scratch,masked]"], r"unknown arm 'masked'; known arms: scratch"),
    (["arms=[scratch,scratch]"], r"give each arm once"),
    (["pretrain=[loss.w_cls]"], r"not a key=value override"),
    (["val.every=0"], r"val.every must be > 0"),
])
def test_recipes_that_would_blur_the_arms_are_refused(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        plan_arms(load_transfer_config(preset_path("smoke"), overrides), tmp_path)


def test_the_experiment_package_imports_only_downwards():
    """plan ← report ← cluster ← run: the report needs the plan only; nothing imports back up."""
    allowed = {"plan": set(), "report": {"plan"}, "cluster": {"plan", "report"}, "run": {"plan", "report", "cluster"}}
    folder = REPO / "maskdcpt" / "experiments"
    assert {p.stem for p in folder.glob("*.py")} == {"__init__", *allowed}
    for name, deps in allowed.items():
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported |= {node.module} if node.module else {a.name for a in node.names}
        assert imported == deps, name


@pytest.mark.parametrize("argv, expected", [
    (["transfer", "--preset", "nosuch"], "no preset 'nosuch'"),
    (["transfer", "--preset", "smoke", "arms=[scratch,masked]"], "unknown arm 'masked'"),
    (["transfer", "--collect", "{tmp}"], "is not a transfer experiment folder"),
])
def test_the_tools_mistakes_end_in_one_line(argv, expected, tmp_path, capsys):
    main = runpy.run_path(str(REPO / "tools" / "experiment.py"))["main"]
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


def test_a_folder_keeps_its_recipe_and_its_runs_their_configs(tmp_path):
    cfg = load_transfer_config(preset_path("smoke"))
    folder = ExperimentFolder(tmp_path)
    folder.prepare(cfg, "cmd 1")
    folder.prepare(load_transfer_config(preset_path("smoke"), ["arms=[scratch]", "launch.launcher=local"]), "cmd 2")
    assert folder.load().arms == ["scratch"] and folder.commands() == ["cmd 1", "cmd 2"]
    with pytest.raises(ValueError, match="another recipe .*finetune_steps: 4 there, 5 now"):
        folder.prepare(load_transfer_config(preset_path("smoke"), ["finetune_steps=5"]), None)
    # a run folder made with another config is not resumed (nor counted as this arm's)
    plan = plan_arms(cfg, tmp_path)["scratch"]
    plan.finetune_dir.mkdir(parents=True)
    (plan.finetune_dir / "config.yaml").write_text(yaml.safe_dump({**to_dict(plan.finetune), "ema_decay": 0.5}))
    with pytest.raises(ValueError, match="was made with another config .*ema_decay: 0.5 there, 0.999 now"):
        run_arm(plan)


def test_an_arm_job_resolves_its_folder_and_always_resumes(tmp_path):
    folder = ExperimentFolder(tmp_path)
    folder.prepare(load_transfer_config(preset_path("smoke")), None)
    overrides = ["arm=no_mask", f"run.output_dir={tmp_path}", "run.name=no_mask"]
    cfg = load_arm_job_config(folder.config_file, overrides)
    assert plan_module.arm_dir(cfg) == tmp_path / "no_mask"
    job = TrainingJob("transfer_arm", str(folder.config_file), overrides)
    assert job.target.run == "maskdcpt.experiments.run:run_arm_job"
    assert job.checkpoint().function.resume == "auto"  # the arm's runs find their own last.ckpt
    with pytest.raises(ValueError, match="arm: 'masked' is not one of"):
        load_arm_job_config(folder.config_file, ["arm=masked"])
    with pytest.raises(ValueError, match="must live in a folder named after it"):
        run_arm_job(load_arm_job_config(folder.config_file, ["arm=no_mask", f"run.output_dir={tmp_path}", "run.name=x"]))


def _check_results(out: Path, arms: list[str], P: int, F: int) -> dict:
    results = json.loads((out / "results.json").read_text())
    tasks = [t.name for t in five_d_val_tasks()]
    assert list(results["arms"]) == arms and results["tasks"] == tasks
    assert set(results["input"]["per_task"]) == set(tasks) and results["input"]["psnr"] > 0
    for name, arm in results["arms"].items():
        assert arm["status"] == "done", (name, arm)
        assert set(arm["per_task"]) == set(tasks)
        assert all({"psnr", "ssim", "psnr_input", "ssim_input"} <= set(v) for v in arm["per_task"].values())
        assert arm["psnr"] == pytest.approx(sum(v["psnr"] for v in arm["per_task"].values()) / len(tasks))
        assert arm["psnr_input"] == pytest.approx(results["input"]["psnr"])
        pretrained = ARMS[name].pretrain is not None
        assert arm["steps"] == {"pretrain": P if pretrained else 0,
                                "finetune": P + F if name == "scratch_equal_total" else F}
        assert ("top1" in arm) == pretrained and ("knn_top1" in arm) == pretrained
        assert arm["curve"][-1][0] == arm["steps"]["finetune"] and arm["curve"][0][0] == 0
        assert arm["wall_s"] > 0 and set(arm["wall_s_by_phase"]) == ({"pretrain", "finetune"} if pretrained else {"finetune"})
        if name != "scratch" and "scratch" in arms:
            assert arm["delta_psnr"] == pytest.approx(arm["psnr"] - results["arms"]["scratch"]["psnr"])
        assert json.loads((out / name / "metrics.json").read_text())["psnr"] == arm["psnr"]
    report = (out / "report.md").read_text()
    for name in arms:
        assert re.search(rf"^\| {name} \|", report, re.M), name
    assert "| input |" in report and "tools/experiment.py transfer" in report and "tools/finetune.py" in report
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return results


class _Preempted(Exception):
    pass


@pytest.mark.slow
def test_smoke_preset_end_to_end_skips_finished_arms_and_resumes_an_interrupted_one(tmp_path, monkeypatch, capsys):
    out = tmp_path.resolve() / "smoke"
    cfg = load_transfer_config(preset_path("smoke"))
    interrupted = out / "no_rec" / "pretrain"
    save = Trainer.save_checkpoint

    def save_then_stop(self):  # the job is killed right after no_rec's pre-training saved step 2
        path = save(self)
        if self.run_dir.resolve() == interrupted and self.step == 2:
            raise _Preempted
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_stop)
    with pytest.raises(_Preempted):
        run_experiment(cfg, out, "first")
    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    before = cfg.arms[:cfg.arms.index("no_rec")]
    assert all((out / a / "metrics.json").is_file() for a in before)
    assert not (out / "no_rec" / "metrics.json").exists() and not (out / "no_rec" / "finetune").exists()
    capsys.readouterr()

    main = runpy.run_path(str(REPO / "tools" / "experiment.py"))["main"]
    assert main(["transfer", "--preset", "smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in before:
        assert f"[{name}] finished earlier" in printed
    assert f"resumed from {interrupted / 'checkpoints' / 'last.ckpt'} at step 2" in printed
    assert [json.loads(line)["step"] for line in (interrupted / "val.jsonl").read_text().splitlines()] == [0, 4]
    results = _check_results(out, cfg.arms, cfg.pretrain_steps, cfg.finetune_steps)
    for name in cfg.arms:  # the table is printed at the end
        assert re.search(rf"^{name}\s", printed, re.M), name

    # a third run finds every arm finished, trains nothing, and writes the same figures
    assert main(["transfer", "--preset", "smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier") == len(cfg.arms) and "run folder:" not in printed
    again = json.loads((out / "results.json").read_text())
    assert {n: a["psnr"] for n, a in again["arms"].items()} == {n: a["psnr"] for n, a in results["arms"].items()}
    assert again["commands"]["experiment"] == ["first", f"python tools/experiment.py transfer --preset smoke --out {out}"]


@pytest.fixture
def in_repo(monkeypatch):
    # Jobs start `python -m submitit...` in this working directory and must import maskdcpt from it.
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
def test_cluster_path_runs_each_arm_as_a_member_of_one_array_through_the_local_executor(tmp_path, in_repo, capsys):
    out = tmp_path / "local"
    cfg = load_transfer_config(preset_path("smoke"), ["launch.launcher=local", "arms=[scratch,maskdcpt]"])
    run_experiment(cfg, out, "python tools/experiment.py transfer --preset smoke launch.launcher=local")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "transfer_arm" and manifest["base_config"] == str(out / "experiment.yaml")
    assert [m["name"] for m in manifest["members"]] == ["scratch", "maskdcpt"]
    for member in manifest["members"]:
        assert member["run_dir"] == str(out / member["name"])
        assert Path(member["job_folder"]).parent == out / "slurm"
        log = Path(member["stdout"]).read_text()
        assert f"[{member['name']}] fine-tuning" in log
    assert "[maskdcpt] pre-training" in Path(manifest["members"][1]["stdout"]).read_text()
    _check_results(out, ["scratch", "maskdcpt"], cfg.pretrain_steps, cfg.finetune_steps)
    assert not (out / "slurm" / "%j").exists()
    capsys.readouterr()
    # resubmitting submits nothing: both arms are finished
    run_experiment(cfg, out)
    assert capsys.readouterr().out.count("finished earlier: not submitted") == 2
