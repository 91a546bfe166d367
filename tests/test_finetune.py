"""Fine-tuning: strict transfer from pre-training, priors, EMA restorer, end to end."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from maskdcpt.errors import CheckpointError
from maskdcpt.models import build_maskdcpt, create_model
from maskdcpt.io import save_weights
from maskdcpt.models.checkpoint import load_restorer
from maskdcpt.models.prior import add_prior_channels
from maskdcpt.training.distributed import DistInfo
from maskdcpt.training.finetune import FinetuneTask, load_finetune_config, load_pretrained_weights

from conftest import TINY_RUN, last_weights, run_env

ROOT = Path(__file__).resolve().parents[1]
FAST = [*TINY_RUN, "train.log_every=5", "train.image_every=0"]


def _encoder_file(tmp_path, name="nafnet_tiny"):
    torch.manual_seed(1)
    pre = build_maskdcpt(name)
    for p in pre.backbone.parameters():  # make the weights recognisably not an initialisation
        p.data.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "encoder.safetensors"
    save_weights(pre.backbone.state_dict(), path, {"format": "maskdcpt-encoder", "model_name": name})
    return pre, path


@pytest.mark.parametrize("name", ["nafnet_tiny", "restormer_tiny", "promptir_tiny", "swinir_tiny"])
def test_masked_pretraining_weights_load_strictly_into_the_dense_restorer(tmp_path, name):
    pre, path = _encoder_file(tmp_path, name)
    dense = create_model(name)
    report = load_pretrained_weights(dense, str(path))
    assert "new by design: nothing" in report
    for key, value in pre.backbone.state_dict().items():
        assert torch.equal(dense.state_dict()[key], value), key


def test_transfer_rejects_a_foreign_encoder_by_name(tmp_path):
    _, path = _encoder_file(tmp_path, "restormer_tiny")
    with pytest.raises(ValueError, match="does not match NAFNet strictly"):
        load_pretrained_weights(create_model("nafnet_tiny"), str(path))
    with pytest.raises(ValueError, match="does not exist"):
        load_pretrained_weights(create_model("nafnet_tiny"), str(tmp_path / "missing.safetensors"))


def test_zero_initialised_prior_channels_leave_the_output_unchanged(tmp_path):
    pre, path = _encoder_file(tmp_path)
    plain = create_model("nafnet_tiny").eval()
    load_pretrained_weights(plain, str(path))
    widened = add_prior_channels(create_model("nafnet_tiny"), 3).eval()
    report = load_pretrained_weights(widened, str(path))
    assert "prior channels, zero-initialised" in report
    x, prior = torch.rand(2, 3, 37, 45), torch.rand(2, 3, 37, 45)
    with torch.no_grad():
        assert torch.equal(widened(torch.cat([x, prior], 1)), plain(x))
    # ...and the prior does take part once its weights move
    with torch.no_grad():
        widened.intro.weight[:, 3:] += 0.1
        assert not torch.equal(widened(torch.cat([x, prior], 1)), plain(x))
    with pytest.raises(ValueError, match="6 channels"):
        widened(x)


def test_ema_tracks_the_trained_weights():
    cfg = load_finetune_config(None, ["ema_decay=0.5", "ema_warmup=false"])
    task = FinetuneTask(cfg, DistInfo())
    before = {k: v.clone() for k, v in task.ema.module.state_dict().items()}
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(1.0)
    task.after_step(1)
    for key, value in task.ema.module.state_dict().items():
        torch.testing.assert_close(value, before[key] + 0.5)


def _paired_tree(root, n=3, size=72, seed=0):
    rng = np.random.default_rng(seed)
    for sub in ("LQ", "GT", "prior"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        gt = cv2.resize(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
        lq = np.clip(gt.astype(np.int16) + rng.integers(-25, 26, gt.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "GT" / f"{i}.png"), gt)
        cv2.imwrite(str(root / "LQ" / f"{i}.png"), lq)
        cv2.imwrite(str(root / "prior" / f"{i}.png"), cv2.GaussianBlur(lq, (5, 5), 0))


def test_finetune_with_a_prior_folder_trains_end_to_end(tmp_path):
    _paired_tree(tmp_path / "pairs")
    _, path = _encoder_file(tmp_path)
    sources = f"data.sources=[{{kind: paired, root: {tmp_path / 'pairs'}, type: noise, prior: {tmp_path / 'pairs' / 'prior'}}}]"
    cmd = [sys.executable, str(ROOT / "tools" / "finetune.py"), "--pretrained", str(path), sources,
           "model.prior_channels=3", "train.max_steps=3", f"run.output_dir={tmp_path}", "run.name=ft", *FAST]
    res = subprocess.run(cmd, capture_output=True, text=True, env=run_env(), cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "prior channels, zero-initialised" in res.stdout
    model = load_restorer(tmp_path / "ft")
    assert model.prior_channels == 3
    out = model(torch.rand(1, 6, 40, 40))
    assert out.shape == (1, 3, 40, 40)
    with pytest.raises(ValueError, match="prior_channels"):
        load_finetune_config(None, [sources])

    # evaluation and restoration feed the same prior folder
    pairs = tmp_path / "pairs"
    evaluate = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), "--model", str(tmp_path / "ft"),
                               "--data", str(pairs), "--prior", str(pairs / "prior"), "--no-niqe", "--out", str(tmp_path / "ev")],
                              capture_output=True, text=True, env=run_env(), cwd=ROOT)
    assert evaluate.returncode == 0, evaluate.stderr
    restore = subprocess.run([sys.executable, str(ROOT / "tools" / "restore.py"), "--model", str(tmp_path / "ft"),
                              str(pairs / "LQ"), str(tmp_path / "restored")], capture_output=True, text=True, env=run_env(), cwd=ROOT)
    assert restore.returncode == 2 and "--prior" in restore.stderr  # a prior model without its prior: clear error
    restore = subprocess.run([sys.executable, str(ROOT / "tools" / "restore.py"), "--model", str(tmp_path / "ft"),
                              "--prior", str(pairs / "prior"), str(pairs / "LQ"), str(tmp_path / "restored")],
                             capture_output=True, text=True, env=run_env(), cwd=ROOT)
    assert restore.returncode == 0, restore.stderr
    assert sorted(p.name for p in (tmp_path / "restored").iterdir()) == ["0.png", "1.png", "2.png"]


def test_thirty_step_finetune_from_a_pretraining_run_end_to_end(tmp_path):
    pre = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "pretrain.py"), "train.max_steps=2", f"run.output_dir={tmp_path}",
         "run.name=pre", "data.engine={types: [noise, haze]}", *FAST],
        capture_output=True, text=True, env=run_env(), cwd=ROOT)
    assert pre.returncode == 0, pre.stderr
    export = subprocess.run([sys.executable, str(ROOT / "tools" / "export_encoder.py"), str(tmp_path / "pre"),
                             "--out", str(tmp_path / "enc.safetensors")], capture_output=True, text=True, env=run_env(), cwd=ROOT)
    assert export.returncode == 0, export.stderr
    with safe_open(str(tmp_path / "enc.safetensors"), "pt") as f:
        assert f.metadata()["step"] == "2"

    cmd = [sys.executable, str(ROOT / "tools" / "finetune.py"), "--pretrained", str(tmp_path / "enc.safetensors"),
           "train.max_steps=30", "train.checkpoint_every=10", f"run.output_dir={tmp_path}", "run.name=ft", *FAST]
    res = subprocess.run(cmd, capture_output=True, text=True, env=run_env(), cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "loaded all" in res.stdout and "new by design: nothing" in res.stdout

    # every weight file says what it is: the trainer's weights of a fine-tuning run are a restorer (without --arch);
    # a pre-training run's are not, nor is an encoder export
    last = tmp_path / "ft" / "checkpoints" / "last.safetensors"
    with safe_open(str(last), "pt") as f:
        assert (f.metadata()["format"], f.metadata()["model_name"], f.metadata()["step"]) == ("maskdcpt-restorer", "nafnet_tiny", "30")
    assert isinstance(load_restorer(last), torch.nn.Module)
    with safe_open(str(tmp_path / "pre" / "checkpoints" / "last.safetensors"), "pt") as f:
        assert (f.metadata()["format"], f.metadata()["model_name"]) == ("maskdcpt-pretraining", "nafnet_tiny")
    for not_a_restorer in (tmp_path / "pre" / "checkpoints" / "last.safetensors", tmp_path / "enc.safetensors"):
        with pytest.raises(CheckpointError, match="is not a restorer"):
            load_restorer(not_a_restorer)

    final = last_weights(tmp_path / "ft")
    restorer = load_file(str(tmp_path / "ft" / "restorer.safetensors"))
    encoder = load_file(str(tmp_path / "enc.safetensors"))
    assert restorer.keys() == final.keys() == encoder.keys()
    # the exported restorer is the EMA: between the pre-trained start and the trained weights
    key = "intro.weight"
    assert not torch.equal(restorer[key], final[key]) and not torch.equal(restorer[key], encoder[key])

    evaluate = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), "--model", str(tmp_path / "ft"),
                               "--data", str(_make_eval_set(tmp_path)), "--out", str(tmp_path / "eval")],
                              capture_output=True, text=True, env=run_env(), cwd=ROOT)
    assert evaluate.returncode == 0, evaluate.stderr
    assert (tmp_path / "eval" / "results.json").is_file()


def _make_eval_set(tmp_path):
    root = tmp_path / "evalset"
    _paired_tree(root, n=2, size=100, seed=3)
    return root
