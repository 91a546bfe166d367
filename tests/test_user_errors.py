"""The user's mistakes end in one line that names what is wrong and where to go, never a traceback (issue 25)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import run_env, write_offset_pairs
from test_tools import FAST, _one_error_line, _tool

ROOT = Path(__file__).resolve().parents[1]


def _photos(folder: Path, n: int, side: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    return folder


def _mismatched_pairs(root: Path, n: int) -> Path:
    """``n`` pairs whose LQ is smaller than its GT."""
    for sub, side in (("lq", 40), ("gt", 48)):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / sub / f"{i}.png"), np.full((side, side, 3), 100, np.uint8))
    return root


# ------------------------------------------------------------------------------------------ 7: sources that reject all


def test_a_paired_validation_set_without_a_usable_pair_is_one_line(tmp_path, capsys):
    pairs = _mismatched_pairs(tmp_path / "pairs", 3)
    argv = [f"run.output_dir={tmp_path / 'runs'}", "run.name=r", *FAST, "train.max_steps=1",
            f"val.paired=[{{name: mine, lq: {pairs / 'lq'}, gt: {pairs / 'gt'}}}]"]
    assert _tool("finetune")(argv) == 2
    line = _one_error_line(capsys, "val.paired 'mine': none of its 3 pairs is usable",
                           "3 LQ and GT differ in size")
    assert "torch.cat" not in line
    assert not (tmp_path / "runs" / "r").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_crop_larger_than_every_image_is_one_line_naming_the_source(tmp_path, capsys, workers):
    photos = _photos(tmp_path / "small", 20, 40)
    argv = [f"run.output_dir={tmp_path / 'runs'}", "run.name=r", *FAST, "train.max_steps=1", "val.every=0",
            f"data.sources=[{{root: {photos}, name: small}}]", f"data.num_workers={workers}"]
    assert _tool("pretrain")(argv) == 2
    _one_error_line(capsys, "source 'small': 17 unusable files in a row", "17 too small",
                    "data.crop_size=64")
    assert not (tmp_path / "runs" / "r").exists()


# ------------------------------------------------------------------------------------------ 8: evaluation's folders


def test_evaluation_folder_mistakes_are_one_line(tmp_path, capsys):
    from maskdcpt.models import create_model
    from maskdcpt.models.checkpoint import save_restorer

    model = tmp_path / "restorer.safetensors"
    save_restorer(create_model("nafnet_tiny"), model, "nafnet_tiny")
    evaluate = _tool("evaluate")
    common = ["--model", str(model), "--device", "cpu", "--out", str(tmp_path / "eval")]
    assert evaluate([*common, "--benchmark", "5d", "--datasets", str(tmp_path / "nowhere")]) == 2
    _one_error_line(capsys, f"benchmark data folder {tmp_path / 'nowhere'} does not exist")

    (tmp_path / "empty").mkdir()
    assert evaluate(["--no-reference", str(tmp_path / "empty"), "--out", str(tmp_path / "nr")]) == 2
    _one_error_line(capsys, f"no images (.png, .jpg", f"in {tmp_path / 'empty'}")

    outs = _photos(tmp_path / "outs", 2, 32)
    inputs = _photos(tmp_path / "ins", 1, 32)
    (inputs / "0.png").rename(inputs / "other.png")
    assert evaluate(["--no-reference", str(outs), "--inputs", str(inputs), "--out", str(tmp_path / "nr")]) == 2
    _one_error_line(capsys, f"no image in {inputs} has the name (or stem) of 2 of the 2 outputs: 0.png, 1.png")


# ------------------------------------------------------------------------------------------ 9, 10: the wrong file


def _finetuned_run(tmp_path: Path) -> Path:
    argv = [f"run.output_dir={tmp_path}", "run.name=ft", *FAST, "train.max_steps=1", "val.every=0"]
    assert _tool("finetune")(argv) == 0
    return tmp_path / "ft"


def test_restore_from_a_training_checkpoint_names_the_file_to_use(tmp_path, capsys):
    run = _finetuned_run(tmp_path)
    capsys.readouterr()
    images = _photos(tmp_path / "in", 1, 48)
    restore = _tool("restore")
    ckpt = run / "checkpoints" / "last.ckpt"
    assert restore(["--model", str(ckpt), "--device", "cpu", str(images), str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys, f"{ckpt} is a training checkpoint (for --resume), not a restorer file",
                           f"restore with {run / 'restorer.safetensors'}")
    assert "--arch" not in line
    # the advice leads somewhere: each file it names restores
    for named in (run / "restorer.safetensors", run / "checkpoints" / "last.safetensors"):
        assert str(named) in line
        assert restore(["--model", str(named), "--device", "cpu", str(images), str(tmp_path / "out")]) == 0


def test_export_encoder_on_a_fine_tuning_run_says_what_it_is_and_where_to_go(tmp_path, capsys):
    run = _finetuned_run(tmp_path)
    capsys.readouterr()
    assert _tool("export_encoder")([str(run), "--out", str(tmp_path / "e.safetensors")]) == 2
    line = _one_error_line(capsys, f"{run} is a fine-tuning run, not a pre-training run",
                           f"{run / 'restorer.safetensors'}", "--pretrained")
    assert "prior_channels" not in line
    # and fine-tuning from that folder names the restorer, which then loads
    assert _tool("finetune")([f"run.output_dir={tmp_path}", "run.name=ft2", *FAST, "train.max_steps=1",
                              "val.every=0", f"pretrained={run}"]) == 2
    _one_error_line(capsys, f"is a fine-tuning run; to continue from its restorer, give pretrained={run / 'restorer.safetensors'}")
    assert _tool("finetune")([f"run.output_dir={tmp_path}", "run.name=ft2", *FAST, "train.max_steps=1",
                              "val.every=0", f"pretrained={run / 'restorer.safetensors'}"]) == 0


# ------------------------------------------------------------------------------------------ 11: tools/degrade.py


def _degrade(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "degrade.py"), *args], capture_output=True, text=True,
                          env=run_env(), cwd=ROOT, timeout=300)


def test_degrade_takes_one_image_and_makes_the_sheets_folder_first(tmp_path):
    photo = _photos(tmp_path / "in", 1, 64) / "0.png"
    sheet = tmp_path / "new" / "deeper" / "sheet.png"
    res = _degrade(str(photo), str(tmp_path / "out"), "--types", "noise,haze", "--levels", "2", "--sheet", str(sheet))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "0_00_noise_L0.00.png", "0_00_noise_L1.00.png", "0_06_haze_L0.00.png", "0_06_haze_L1.00.png"]
    assert cv2.imread(str(sheet)) is not None
    # a sheet that cannot be written says why, and before any image is degraded
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = _degrade(str(photo), str(tmp_path / "out2"), "--types", "noise", "--levels", "1",
                   "--sheet", str(blocker / "sheet.png"))
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == f"error: --sheet: {blocker} is a file, not a folder"
    assert not list((tmp_path / "out2").glob("*.png"))
    res = _degrade(str(tmp_path / "nowhere.png"), str(tmp_path / "out3"))
    assert res.returncode == 2 and "does not exist (give a folder of images or one image)" in res.stderr


# ------------------------------------------------------------------------------------------ 12, 13, 14


def test_python_dash_m_says_where_the_tools_are(tmp_path):
    env = dict(run_env(), PYTHONPATH=str(ROOT))
    listing = subprocess.run([sys.executable, "-m", "maskdcpt"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert listing.returncode == 0
    for tool in ("pretrain", "finetune", "evaluate", "restore", "sweep", "benchmark", "degrade", "experiment"):
        assert any(line.split()[:1] == [tool] for line in listing.stdout.splitlines()), tool
    runs = subprocess.run([sys.executable, "-m", "maskdcpt", "degrade", "--list"], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert runs.returncode == 0 and runs.stdout.splitlines()[0] == "0 noise"
    library = subprocess.run([sys.executable, "-m", "maskdcpt.training.pretrain", "--help"], capture_output=True,
                             text=True, env=env, cwd=tmp_path)
    assert library.returncode == 1
    assert library.stderr.strip() == ("error: maskdcpt.training.pretrain is a library module; run python "
                                      "tools/pretrain.py --help (python -m maskdcpt lists every tool)")


def test_a_sweep_resolves_its_base_config_alike_in_the_dry_run_and_the_launch(tmp_path):
    from maskdcpt.launch.sweep import resolve_base_config

    spec = ROOT / "configs" / "sweeps" / "maskdcpt_ablation.yaml"
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "sweep.py"), str(spec), "--dry-run"],
                         capture_output=True, text=True, env=run_env(), cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    expected = ROOT / "configs" / "pretrain" / "nafnet_uir.yaml"
    assert res.stdout.splitlines()[0] == f"base config: {expected}"
    assert resolve_base_config("configs/pretrain/nafnet_uir.yaml", str(spec)) == str(expected)  # what the launch uses
    mine = tmp_path / "mine.yaml"
    mine.write_text("target: pretrain\nbase_config: configs/pretrain/nowhere.yaml\nmembers: [{name: a, overrides: []}]\n")
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "sweep.py"), str(mine), "--dry-run"],
                         capture_output=True, text=True, env=run_env(), cwd=tmp_path, timeout=300)
    assert res.returncode == 2 and "base_config: configs/pretrain/nowhere.yaml is not a file" in res.stderr


def test_an_integer_field_takes_an_integral_number_in_scientific_notation(tmp_path):
    from maskdcpt.errors import ConfigError
    from maskdcpt.training.pretrain import load_pretrain_config

    (tmp_path / "c.yaml").write_text("train:\n  max_steps: 1e3\n  checkpoint_every: 2.5e2\n")
    cfg = load_pretrain_config(tmp_path / "c.yaml", ["train.log_every=1e1"])
    assert (cfg.train.max_steps, cfg.train.checkpoint_every, cfg.train.log_every) == (1000, 250, 10)
    assert isinstance(cfg.train.max_steps, int)
    for bad in ("1e-3", "1.5", "inf", "ten"):
        with pytest.raises(ConfigError, match=rf"train.max_steps: expected an integer, got '?{bad}'?"):
            load_pretrain_config(None, [f"train.max_steps={bad}"])


def test_benchmark_help_lists_every_subject_with_a_line():
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "--help"], capture_output=True,
                         text=True, env=run_env(), cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    for subject in ("degradations", "models", "data", "pretrain", "gpu"):
        line = next(x for x in lines if x.split()[:1] == [subject])
        assert len(line.split()) > 3, line  # a subject and what it measures
