"""The command-line tools as a new user meets them: the user's mistakes end in one line naming the culprit and the
fix (status 2) and leave no run folder behind; a bug keeps its traceback; options and overrides mix in any order."""
from __future__ import annotations

import argparse
import errno
import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from maskdcpt.cli import add_resume_args, parse_args, tool_main
from maskdcpt.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
FAST = ["data.crop_size=64", "data.crops_per_image=2", "train.batch_size=4", "train.progress=false",
        "train.threads=1", "data.engine={types: [noise]}"]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _one_error_line(capsys, *expected: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def test_options_and_overrides_mix_in_any_order():
    parser = argparse.ArgumentParser()
    add_resume_args(parser)
    parser.add_argument("overrides", nargs="*")
    args = parse_args(parser, ["run.name=x", "--no-resume", "data.crop_size=64"])
    assert args.resume is False and args.overrides == ["run.name=x", "data.crop_size=64"]
    args = parse_args(parser, ["--resume", "data.crop_size=64", "run.name=x"])  # an override, not the checkpoint
    assert args.resume is True and args.overrides == ["data.crop_size=64", "run.name=x"]
    args = parse_args(parser, ["run.name=x", "--resume", "runs/x/checkpoints/step_0000100.ckpt"])
    assert args.resume == "runs/x/checkpoints/step_0000100.ckpt" and args.overrides == ["run.name=x"]
    assert parse_args(parser, []).resume == "auto"


def test_a_bug_keeps_its_traceback_and_the_users_problem_does_not(capsys):
    @tool_main
    def buggy(argv=None):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        buggy([])

    @tool_main
    def user(argv=None):
        raise ConfigError("train.max_steps: -1 is out of range; allowed: >= 1")

    assert user([]) == 2
    _one_error_line(capsys, "train.max_steps")


@pytest.mark.parametrize("args, expected", [
    (["model.name=nafnet_huge"], "model.name: unknown model 'nafnet_huge'; registered:"),
    (["train.batch_size=-8"], "train.batch_size: -8 is out of range; allowed: >= 1"),
    (["model.patch_size=7"], "model.patch_size: 7 is not a multiple of nafnet_tiny's stride 16"),
    (["--config", "{tmp}/bad.yaml"], "bad.yaml': invalid YAML at line 3, column 1"),
    (["data.sources=[{index: {tmp}/missing.index}]"], "data.sources[0]: corpus index"),
])
def test_pretrain_mistakes_end_in_one_line_and_leave_no_run_folder(tmp_path, capsys, args, expected):
    (tmp_path / "bad.yaml").write_text("train:\n  max_steps: [3\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    # options between overrides: this order failed with "unrecognized arguments" before
    argv = [f"run.output_dir={tmp_path / 'runs'}", "--no-resume", "run.name=r", *FAST, "train.max_steps=2", *args]
    assert _tool("pretrain")(argv) == 2
    _one_error_line(capsys, expected)
    assert not (tmp_path / "runs" / "r").exists()


def test_resume_problems_say_how_to_go_on(tmp_path, capsys):
    pretrain = _tool("pretrain")
    common = [f"run.output_dir={tmp_path}", "run.name=r", *FAST, "train.max_steps=2"]
    # a corrupt last.ckpt on automatic resume: say how to start afresh, touch nothing
    ckpt = tmp_path / "r" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 the first bytes of a copy that never finished")
    assert pretrain(common) == 2
    _one_error_line(capsys, "cannot resume this run", "last.ckpt: damaged", "--no-resume")
    assert ckpt.read_bytes().startswith(b"PK\x03\x04 the first")
    # --resume on a file that would run code when loaded: refused in our words, and nothing of the start is kept
    evil = tmp_path / "evil.pth"

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))

    torch.save({"step": 3, "model": Payload()}, evil)
    assert pretrain([f"run.output_dir={tmp_path}", "run.name=fresh", *FAST, "--resume", str(evil)]) == 2
    line = _one_error_line(capsys, "evil.pth: refused: it would call", "Nothing in it was executed")
    assert "weights_only" not in line and not (tmp_path / "fresh").exists()


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder nothing can be created in: chmod 555, or (as root, whom permissions do not stop) os.mkdir
    refusing as the kernel would."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(folder)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    yield folder


def test_a_read_only_output_folder_is_one_line_for_every_tool(tmp_path, read_only, capsys):
    from maskdcpt.models import build_maskdcpt, create_model
    from maskdcpt.models.checkpoint import save_restorer
    from maskdcpt.training.checkpoint import save_state

    assert _tool("pretrain")([f"run.output_dir={read_only}", *FAST, "train.max_steps=1"]) == 2
    _one_error_line(capsys, str(read_only), "Permission denied", "permissions")

    model = tmp_path / "restorer.safetensors"
    save_restorer(create_model("nafnet_tiny"), model, "nafnet_tiny")
    for sub in ("in/LQ", "in/GT"):
        (tmp_path / sub).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / sub / "a.png"), np.full((32, 32, 3), 100, np.uint8))
    assert _tool("restore")(["--model", str(model), "--device", "cpu", str(tmp_path / "in" / "LQ"),
                             str(read_only / "out")]) == 2
    _one_error_line(capsys, str(read_only / "out"), "Permission denied")
    assert _tool("evaluate")(["--model", str(model), "--device", "cpu", "--data", str(tmp_path / "in"),
                              "--out", str(read_only / "eval"), "--no-niqe"]) == 2
    _one_error_line(capsys, str(read_only / "eval"), "Permission denied")

    run = tmp_path / "pre"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {name: nafnet_tiny}\n")
    save_state({"step": 1, "model": build_maskdcpt("nafnet_tiny").state_dict()}, run / "checkpoints" / "last.ckpt")
    assert _tool("export_encoder")([str(run), "--out", str(read_only / "sub" / "encoder.safetensors")]) == 2
    _one_error_line(capsys, str(read_only / "sub"), "Permission denied")
