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
