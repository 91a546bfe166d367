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
PRESETS = ("smoke", "cpu", "cpu_lowdata", "cpu_unseen", "cpu_amortised", "gpu", "cluster")
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
    every_seed = "arm_seeds={" + ", ".join(f"{a}: [0, 3]" for a in ARMS) + "}"
    cfg = load_transfer_config(preset_path(preset), ["arms=[" + ",".join(ARMS) + "]", "seeds=[0,3]", every_seed])
    plans = plan_arms(cfg, tmp_path)
    assert list(plans) == [(a, s) for s in (0, 3) for a in ARMS]  # seed by seed
    P, F, K = cfg.pretrain_steps, cfg.finetune_steps, len(cfg.finetune_names)
    for seed in (0, 3):
        ref_pre = plans["maskdcpt", seed].pretrain
        for ft_name in cfg.finetune_names:
            ref_ft = plans["scratch", seed].finetunes[ft_name].config
            for name in PRETRAINED:
                plan = plans[name, seed]
                ft = plan.finetunes[ft_name].config
                assert _changes(plan.pretrain, ref_pre) == PRETRAIN_CHANGES[name], name
                assert _changes(ft, ref_ft) == {"pretrained": str(tmp_path.resolve() / name / f"seed{seed}" / "pretrain")}
                assert plan.pretrain.train.max_steps == P and ft.train.max_steps == F
            assert plans["scratch", seed].pretrain is None and plans["scratch_equal_total", seed].pretrain is None
            assert ref_ft.pretrained == "none" and ref_ft.train.max_steps == F
            assert _changes(plans["scratch_equal_total", seed].finetunes[ft_name].config, ref_ft) == {
                "train.max_steps": F + round(P / K)}
    # the shared recipe reaches both kinds of run: backbone, crops, batch, seed
    for (name, seed), plan in plans.items():
        assert plan.folder == tmp_path.resolve() / name / f"seed{seed}"
        for run in (plan.pretrain, *(ft.config for ft in plan.finetunes.values())):
            if run is not None:
                assert (run.model.name, run.model.kwargs) == (cfg.model, cfg.model_kwargs)
                assert (run.data.crop_size, run.train.batch_size, run.train.seed) == (cfg.crop_size, cfg.batch_size, seed)
        for ft_name, ft in plan.finetunes.items():
            assert ft.config.val == plans["scratch", 0].finetunes[ft_name].config.val
    # a seed changes the seed and nothing else, the held-out set included
    for name in ARMS:
        a, b = plans[name, 0], plans[name, 3]
        for ft_name in cfg.finetune_names:
            assert _changes(b.finetunes[ft_name].config, a.finetunes[ft_name].config) == {"train.seed": 3} | (
                {"pretrained": str(b.pretrain_dir)} if a.pretrain else {})
        if a.pretrain:
            assert _changes(b.pretrain, a.pretrain) == {"train.seed": 3}
    # the reference is MaskDCPT itself: masked, all three losses, on every degradation type
    ref_pre = plans["maskdcpt", 0].pretrain
    assert ref_pre.model.mask_ratio > 0 and min(ref_pre.loss.w_rec, ref_pre.loss.w_cls, ref_pre.loss.w_con) > 0
    assert len(ref_pre.data.engine.type_names) == 19 and ref_pre.loss.rec_source == "lq"
    # every run in its own folder
    folders = [ft.dir for p in plans.values() for ft in p.finetunes.values()]
    folders += [p.pretrain_dir for p in plans.values() if p.pretrain]
    assert len(set(folders)) == len(folders) == 2 * (K * len(ARMS) + len(PRETRAINED))


@pytest.mark.parametrize("regime, own", [("cpu_lowdata", {"finetune_photos"}), ("cpu_unseen", {"val.tasks"}),
                                         ("cpu_amortised", {"finetunes"})])
def test_the_regime_presets_are_the_cpu_recipe_but_for_their_regime(regime, own, tmp_path):
    cpu, other = load_transfer_config(preset_path("cpu")), load_transfer_config(preset_path(regime))
    diff = plan_module.config_differences(other, cpu, ignore=("arms", "arm_seeds"))
    assert {o for k in diff for o in own if k == o or k.startswith(o + ".")} == own and all(
        any(k == o or k.startswith(o + ".") for o in own) for k in diff), sorted(diff)
    assert other.seeds == cpu.seeds == [0, 1, 2] and {"scratch", "maskdcpt"} <= set(other.arms)
    if regime == "cpu_unseen":  # the 5D tasks first, as fine-tuning validates them by default
        first = plan_arms(cpu, tmp_path, ["scratch"], [0])["scratch", 0].finetunes["finetune"].config
        assert other.val.tasks[:7] == five_d_val_tasks() and first.val.tasks == []
        ft = plan_arms(other, tmp_path, ["scratch"], [0])["scratch", 0].finetunes["finetune"].config
        assert plan_module.unseen_tasks(ft) == ["jpeg", "defocus", "desnow", "blur_lowlight_noise"]
    if regime == "cpu_amortised":  # each subset validates the 5D tasks of its own types
        for name, ft in plan_arms(other, tmp_path, ["maskdcpt"], [0])["maskdcpt", 0].finetunes.items():
            types = set(ft.config.data.engine.type_names)
            assert ft.config.val.tasks == [t for t in five_d_val_tasks() if t.type in types], name


def test_named_finetunings_share_one_pretraining_and_equal_compute_counts_it_once(tmp_path):
    """The amortised regime: K fine-tunings from one pre-training; scratch_equal_total gets P/K + F steps each."""
    cfg = load_transfer_config(preset_path("smoke"), [
        "arms=[scratch,scratch_equal_total,maskdcpt]", "pretrain_steps=6", "finetune_steps=4",
        "finetunes={rain: ['data.engine.types=[rain_streaks]', 'val.tasks=[{type: rain_streaks}]'], "
        "noise: ['data.engine.types=[noise]'], lowlight: ['data.engine.types=[low_light]']}"])
    plans = plan_arms(cfg, tmp_path)
    maskdcpt = plans["maskdcpt", 0]
    assert list(maskdcpt.finetunes) == ["rain", "noise", "lowlight"]
    for name, ft in maskdcpt.finetunes.items():
        assert ft.config.pretrained == str(maskdcpt.pretrain_dir) and ft.dir == maskdcpt.folder / f"finetune_{name}"
        assert ft.steps == 4 and plans["scratch_equal_total", 0].finetunes[name].steps == 4 + 2  # 6 / 3
    rain, noise = maskdcpt.finetunes["rain"].config, maskdcpt.finetunes["noise"].config
    assert rain.data.engine.type_names == ["rain_streaks"] and [t.type for t in rain.val.tasks] == ["rain_streaks"]
    assert noise.val.tasks == []  # its own held-out tasks unless it names them
    assert len(maskdcpt.commands()) == 1 + 3


def test_unseen_tasks_and_low_data_fine_tuning(tmp_path):
    tasks = "[{type: rain_streaks, name: derain}, {type: jpeg, name: jpeg}, {type: defocus_blur, name: defocus}]"
    cfg = load_transfer_config(preset_path("smoke"), ["arms=[scratch,maskdcpt]", f"val.tasks={tasks}",
                                                     "finetune_photos=[astronaut.png,rocket.jpg]"])
    plans = plan_arms(cfg, tmp_path)
    ft = plans["scratch", 0].finetunes["finetune"].config
    assert plan_module.unseen_tasks(ft) == ["jpeg", "defocus"]
    assert [s.root for s in ft.data.sources] == [str(tmp_path.resolve() / "finetune_photos")]
    assert plans["maskdcpt", 0].pretrain.data.sources == []  # pre-training sees every training photo
    ExperimentFolder(tmp_path).prepare(cfg, None)
    assert sorted(p.name for p in (tmp_path / "finetune_photos").iterdir()) == ["astronaut.png", "rocket.jpg"]
    with pytest.raises(ValueError, match="finetune_photos: .*chelsea.png"):  # a held-out photo is refused
        load_transfer_config(preset_path("smoke"), ["finetune_photos=[chelsea.png]"])


@pytest.mark.parametrize("overrides, message", [
    (["pretrain=[loss.w_con=0]"], r"arm no_con: .* differs from the reference arm's in nothing.*loss.w_con"),
    (["common=[train.max_steps=9]"], r"'train.max_steps' is set by the experiment itself"),
    (["finetune=[pretrained=x]"], r"'pretrained' is set by the experiment itself"),
    (["arms=[scratch,masked]"], r"unknown arm 'masked'; known arms: scratch"),
    (["arms=[scratch,scratch]"], r"give each arm once"),
    (["pretrain=[loss.w_cls]"], r"not a key=value override"),
    (["val.every=0"], r"val.every must be > 0"),
    (["seeds=[0,0]"], r"seeds: give each seed once"),
    (["seeds=[]"], r"seeds: give each seed once"),
    (["arm_seeds={masked: [0]}"], r"arm_seeds: unknown arm 'masked'"),
    (["arm_seeds={no_mask: [-1]}"], r"arm_seeds.no_mask: give each seed once"),
    (["finetunes={a: [train.seed=3]}"], r"finetunes.a: 'train.seed' is set by the experiment itself"),
    (["finetunes={finetune: []}"], r"finetunes: 'finetune' is not a usable name"),
    (["finetune_photos=[astronaut.png]", "finetune=['data.sources=[{root: x}]']"], r"finetune_photos chooses"),
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
    folder.prepare(load_transfer_config(preset_path("smoke"), ["arms=[scratch,no_mask]", "seeds=[0,2]",
                                                               "arm_seeds={no_mask: [2]}", "launch.launcher=local"]), "cmd 2")
    # the folder keeps every (arm, seed) asked for: the report covers them all
    saved = folder.load()
    assert saved.arms == cfg.arms and saved.seeds == [0, 1, 2] and folder.commands() == ["cmd 1", "cmd 2"]
    assert [saved.seeds_of(a) for a in ("scratch", "no_mask", "maskdcpt", "dcpt")] == [[0, 1, 2], [0, 2], [0, 1], [0]]
    assert saved.launch.launcher == "local"
    with pytest.raises(ValueError, match="another recipe .*finetune_steps: 4 there, 5 now"):
        folder.prepare(load_transfer_config(preset_path("smoke"), ["finetune_steps=5"]), None)
    # a run folder made with another config is not resumed (nor counted as this arm's)
    plan = plan_arms(cfg, tmp_path)["scratch", 0]
    ft = plan.finetunes["finetune"]
    ft.dir.mkdir(parents=True)
    (ft.dir / "config.yaml").write_text(yaml.safe_dump({**to_dict(ft.config), "ema_decay": 0.5}))
    with pytest.raises(ValueError, match="was made with another config .*ema_decay: 0.5 there, 0.999 now"):
        run_arm(plan)


def test_an_arm_job_resolves_its_folder_and_always_resumes(tmp_path):
    folder = ExperimentFolder(tmp_path)
    folder.prepare(load_transfer_config(preset_path("smoke")), None)
    overrides = ["arm=no_mask", "seed=0", f"run.output_dir={tmp_path}", "run.name=no_mask/seed0"]
    cfg = load_arm_job_config(folder.config_file, overrides)
    assert plan_module.arm_dir(cfg) == tmp_path / "no_mask" / "seed0"
    job = TrainingJob("transfer_arm", str(folder.config_file), overrides)
    assert job.target.run == "maskdcpt.experiments.run:run_arm_job"
    assert job.checkpoint().function.resume == "auto"  # the arm's runs find their own last.ckpt
    with pytest.raises(ValueError, match="arm: 'masked' is not one of"):
        load_arm_job_config(folder.config_file, ["arm=masked", "seed=0"])
    with pytest.raises(ValueError, match="seed: 4 is not one of arm no_mask's seeds"):
        load_arm_job_config(folder.config_file, ["arm=no_mask", "seed=4"])
    with pytest.raises(ValueError, match="must live in .*no_mask/seed0, not"):
        run_arm_job(load_arm_job_config(folder.config_file, ["arm=no_mask", "seed=0", f"run.output_dir={tmp_path}",
                                                             "run.name=x"]))


def _check_results(out: Path, cfg) -> dict:
    """results.json, report.md and curves.png against the run folders: per seed the last validation, over seeds the
    summaries and the differences paired by seed."""
    results = json.loads((out / "results.json").read_text())
    tasks = [t.name for t in five_d_val_tasks()]
    P, F = cfg.pretrain_steps, cfg.finetune_steps
    ft = results["finetunes"]["finetune"]
    assert list(results["arms"]) == cfg.arms and ft["tasks"] == tasks and ft["unseen_tasks"] == []
    assert set(ft["input"]["per_task"]) == set(tasks) and ft["input"]["psnr"] > 0
    psnr = {}  # {arm: {seed: average PSNR}} read back from each run's own val.jsonl
    for name, arm in results["arms"].items():
        seeds = cfg.seeds_of(name)
        assert arm["status"] == "done" and arm["seeds_done"] == seeds, (name, arm)
        pretrained = ARMS[name].pretrain is not None
        assert arm["steps"] == {"pretrain": P if pretrained else 0,
                                "finetune": P + F if name == "scratch_equal_total" else F}
        assert ("top1" in arm) == pretrained and ("knn_top1" in arm) == pretrained
        psnr[name] = {}
        for seed in seeds:
            run = arm["runs"][str(seed)]
            last = json.loads((out / name / f"seed{seed}" / "finetune" / "val.jsonl").read_text().splitlines()[-1])
            one = run["finetunes"]["finetune"]
            assert one["psnr"] == last["psnr"] and one["per_task"] == last["per_task"] and last["step"] == arm["steps"]["finetune"]
            assert one["psnr"] == pytest.approx(sum(v["psnr"] for v in one["per_task"].values()) / len(tasks))
            assert one["psnr_input"] == pytest.approx(ft["input"]["psnr"])  # one held-out set for every seed
            assert one["curve"][-1][0] == arm["steps"]["finetune"] and one["curve"][0][0] == 0
            assert run["wall_s"] > 0 and set(run["wall_s_by_phase"]) == ({"pretrain", "finetune"} if pretrained else {"finetune"})
            assert json.loads((out / name / f"seed{seed}" / "metrics.json").read_text()) == run
            if pretrained:
                assert run["top1"] == json.loads((out / name / f"seed{seed}" / "pretrain" / "val.jsonl").read_text()
                                                 .splitlines()[-1])["top1"]
            psnr[name][seed] = one["psnr"]
        summary = ft["arms"][name]
        assert summary["n"] == len(seeds) and summary["psnr"]["values"] == [psnr[name][s] for s in seeds]
        assert summary["psnr"]["mean"] == pytest.approx(sum(psnr[name].values()) / len(seeds))
        assert (summary["psnr"]["ci"] is None) == (len(seeds) == 1)
        assert summary["curve"]["step"][-1] == arm["steps"]["finetune"]
    for name in cfg.arms:  # paired by seed, over the seeds both arms ran
        for base in ("scratch", "scratch_equal_total"):
            if base == name or base not in cfg.arms:
                continue
            vs = ft["arms"][name]["vs"][base]["psnr"]
            shared = [s for s in cfg.seeds_of(name) if s in cfg.seeds_of(base)]
            assert vs["keys"] == shared
            assert vs["values"] == pytest.approx([psnr[name][s] - psnr[base][s] for s in shared])
    report = (out / "report.md").read_text()
    for name in cfg.arms:
        assert re.search(rf"^\| {name} \|", report, re.M), name
    assert "| input |" in report and "tools/experiment.py transfer" in report and "tools/finetune.py" in report
    assert "against `scratch`" in report
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return results


class _Preempted(Exception):
    pass


@pytest.mark.slow
def test_smoke_preset_end_to_end_skips_finished_runs_and_resumes_an_interrupted_one(tmp_path, monkeypatch, capsys):
    out = tmp_path.resolve() / "smoke"
    cfg = load_transfer_config(preset_path("smoke"))
    assert cfg.seeds == [0, 1] and cfg.seeds_of("no_rec") == [0]  # the main arms at two seeds, ablations at one
    interrupted = out / "no_rec" / "seed0" / "pretrain"
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
    before = cfg.arms[:cfg.arms.index("no_rec")]  # seed 0 runs first, every arm
    assert all((out / a / "seed0" / "metrics.json").is_file() for a in before)
    assert not any((out / a / "seed1").exists() for a in cfg.arms)
    assert not (out / "no_rec" / "seed0" / "metrics.json").exists() and not (out / "no_rec" / "seed0" / "finetune").exists()
    capsys.readouterr()

    main = runpy.run_path(str(REPO / "tools" / "experiment.py"))["main"]
    assert main(["transfer", "--preset", "smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in before:
        assert f"[{name}/seed0] finished earlier" in printed
    assert f"resumed from {interrupted / 'checkpoints' / 'last.ckpt'} at step 2" in printed
    assert [json.loads(line)["step"] for line in (interrupted / "val.jsonl").read_text().splitlines()] == [0, 4]
    results = _check_results(out, cfg)
    for name in cfg.arms:  # the table is printed at the end
        assert re.search(rf"^{name}\s", printed, re.M), name

    # a third run finds every run finished, trains nothing, and writes the same figures
    assert main(["transfer", "--preset", "smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier") == sum(len(cfg.seeds_of(a)) for a in cfg.arms)
    assert "run folder:" not in printed
    again = json.loads((out / "results.json").read_text())
    assert again["finetunes"] == results["finetunes"]
    assert again["commands"]["experiment"] == ["first", f"python tools/experiment.py transfer --preset smoke --out {out}"]


@pytest.fixture
def in_repo(monkeypatch):
    # Jobs start `python -m submitit...` in this working directory and must import maskdcpt from it.
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
def test_cluster_path_runs_each_arm_and_seed_as_a_member_of_one_array_through_the_local_executor(tmp_path, in_repo,
                                                                                                 capsys):
    out = tmp_path / "local"
    cfg = load_transfer_config(preset_path("smoke"), ["launch.launcher=local", "arms=[scratch,maskdcpt]"])
    run_experiment(cfg, out, "python tools/experiment.py transfer --preset smoke launch.launcher=local")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "transfer_arm" and manifest["base_config"] == str(out / "experiment.yaml")
    assert [m["name"] for m in manifest["members"]] == ["scratch/seed0", "maskdcpt/seed0", "scratch/seed1",
                                                       "maskdcpt/seed1"]
    for member in manifest["members"]:
        assert member["run_dir"] == str(out / member["name"])
        assert Path(member["job_folder"]).parent == out / "slurm"
        log = Path(member["stdout"]).read_text()
        assert f"[{member['name']}] fine-tuning" in log
        assert ("pre-training" in log) == member["name"].startswith("maskdcpt")
    _check_results(out, load_transfer_config(out / "experiment.yaml"))
    assert not (out / "slurm" / "%j").exists()
    capsys.readouterr()
    # resubmitting submits nothing: every run is finished
    run_experiment(cfg, out)
    assert capsys.readouterr().out.count("finished earlier: not submitted") == 4
