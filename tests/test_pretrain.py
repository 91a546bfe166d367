"""Pre-training end to end: the default command, the objective, resume after SIGKILL, DDP."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from maskdcpt.training.distributed import DistInfo
from maskdcpt.training.optim import build_optimizer, cosine_factor, weight_decay_groups
from maskdcpt.training.pretrain import PretrainTask, keep_maps, load_pretrain_config
from maskdcpt.training.trainer import NonFiniteLossError, Trainer

from conftest import TINY_PRETRAIN, last_weights, run_env

ROOT = Path(__file__).resolve().parents[1]


def _pretrain(out_dir, *overrides, **kwargs):
    cmd = [sys.executable, str(ROOT / "tools" / "pretrain.py"), f"run.output_dir={out_dir}", "run.name=r", *TINY_PRETRAIN, *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, env=run_env(), cwd=ROOT, **kwargs)


def test_default_command_writes_a_complete_run_folder(tmp_path):
    res = _pretrain(tmp_path, "train.max_steps=4", "train.image_every=2", "train.checkpoint_every=2", "optim.warmup_steps=2")
    assert res.returncode == 0, res.stderr
    run = tmp_path / "r"
    assert f"run folder: {run.resolve()}" in res.stdout
    # without a progress bar, a progress line every log_every steps; all of it also in RUN/log.txt
    assert [line.split()[1] for line in res.stdout.splitlines() if line.startswith("step ")] == ["1/4", "2/4", "3/4", "4/4"]
    text = (run / "log.txt").read_text()
    summary = next(line for line in text.splitlines() if "config (besides the defaults; all in config.yaml):" in line)
    assert "optim.warmup_steps=2" in summary.split() and "train.max_steps=4" in summary.split()
    for expected in ("CPU threads", "run folder:", "step 4/4  loss=", "val step 0: top1", "val step 4: top1", "done at step 4"):
        assert expected in text, expected
    assert all(not (run / name).exists() for name in ("config_history",))
    cfg = load_pretrain_config(run / "config.yaml")  # the resolved config round-trips
    assert cfg.train.max_steps == 4 and cfg.data.crop_size == 64
    assert json.loads((run / "metrics.json").read_text())["step"] == 4
    with safe_open(str(run / "encoder.safetensors"), "pt") as f:
        assert f.metadata()["model_name"] == "nafnet_tiny"
        assert not any(k.startswith("classifier") for k in f.keys())

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ["loss/total", "loss/rec", "loss/cls", "loss/con", "lr/backbone", "lr/classifier", "metrics/top1",
                "perf/samples_per_s", "perf/data_wait_fraction"]:
        assert tag in scalars, tag
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3, 4]
    # the logged rate is the one the next step uses: warm-up, then cosine (here 2 + 2 steps)
    lrs = [e.value for e in events.Scalars("lr/backbone")]
    expected = [cfg.optim.lr * cosine_factor(s, 4, 2, cfg.optim.min_lr / cfg.optim.lr) for s in range(1, 5)]
    assert lrs == pytest.approx(expected, rel=1e-5)
    assert lrs[1] == pytest.approx(cfg.optim.lr) and lrs[-1] < lrs[1]
    images = set(events.Tags()["images"])
    assert {"images/lq_masked_reconstruction_gt", "classification/confusion"} <= images
    grid = events.Images("images/lq_masked_reconstruction_gt")[-1]
    assert grid.height == 4 * 64 + 3 * 2  # rows: lq, masked lq, reconstruction, gt

    # a second call finds the finished run and does nothing
    again = _pretrain(tmp_path, "train.max_steps=4")
    assert again.returncode == 0 and "already finished at step 4" in again.stdout


def test_config_errors_name_the_key():
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "pretrain.py"), "train.maxsteps=3"],
                         capture_output=True, text=True, env=run_env(), cwd=ROOT)
    assert res.returncode == 2
    assert "train.maxsteps" in res.stderr and "max_steps" in res.stderr
    with pytest.raises(ValueError, match="loss.w_cls"):
        load_pretrain_config(None, ["loss.w_cls=-1"])
    with pytest.raises(ValueError, match="rec_region"):
        load_pretrain_config(None, ["loss.rec_region=hidden", "model.mask_ratio=0"])
    with pytest.raises(ValueError, match="model.mask_ratio"):
        load_pretrain_config(None, ["model.mask_ratio=high"])
    with pytest.raises(ValueError, match="does not exist"):
        load_pretrain_config("no/such/config.yaml")


def _fixed_batch(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size), mode="bilinear")
    lq = (gt + 0.1 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return {"lq": lq, "gt": gt, "type_id": torch.tensor([0, 1, 0, 1])[:n], "index": torch.arange(n)}


def _trainer(tmp_path, overrides, batch, steps):
    cfg = load_pretrain_config(None, [f"train.max_steps={steps}", "train.batch_size=4", "train.progress=false",
                                      "train.checkpoint_every=1000", "train.image_every=0", *overrides])
    torch.manual_seed(0)
    task = PretrainTask(cfg, __import__("maskdcpt.training.distributed", fromlist=["DistInfo"]).DistInfo())

    return Trainer(task, cfg.train, cfg.optim, tmp_path, lambda _start: _Repeat(batch)), task


class _Repeat:
    """A batch stream of one batch over and over (no files, so none skipped)."""

    skipped = 0

    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        while True:
            yield {k: v.clone() for k, v in self.batch.items()}

    def log_skips(self):
        pass


def test_loss_falls_when_overfitting_one_batch(tmp_path):
    batch = _fixed_batch()
    trainer, task = _trainer(tmp_path, ["optim.lr=2e-3", "optim.classifier_lr=2e-3", "loss.rec_region=visible"], batch, 60)
    first = task.step(task.model, batch, 0).terms
    trainer.fit(resume=False)
    last = task.step(task.model, batch, 0).terms
    # the zero-initialised head starts as the identity (L1 of the noise itself, on the visible half): denoising
    # must beat it
    identity = (batch["lq"] - batch["gt"]).abs().mean()
    assert float(first["loss/rec"]) == pytest.approx(float(identity), rel=0.02)
    assert last["loss/rec"] < 0.85 * first["loss/rec"]
    assert last["loss/cls"] < 0.5 * first["loss/cls"]


@pytest.mark.parametrize("weight,term", [("w_rec", "loss/rec"), ("w_cls", "loss/cls"), ("w_con", "loss/con")])
def test_each_loss_switch_removes_its_term(tmp_path, weight, term):
    batch = _fixed_batch()
    _, task = _trainer(tmp_path, [f"loss.{weight}=0"], batch, 1)
    out = task.step(task.model, batch, 0)
    assert term not in out.terms
    out.loss.backward()
    grads = {n: p.grad for n, p in task.model.named_parameters()}
    if weight == "w_rec":  # nothing reaches the output projection any more
        assert all(g is None for n, g in grads.items() if n.startswith("backbone.ending"))
    if weight == "w_cls":  # the fc layer only serves classification
        assert grads["classifier.fc.weight"] is None
    if weight == "w_con":  # focal alone: the loss equals w_rec·rec + w_cls·cls exactly
        assert out.loss.item() == pytest.approx(out.terms["loss/rec"].item() + out.terms["loss/cls"].item(), rel=1e-6)
    # and with the term on, it does contribute
    _, task_on = _trainer(tmp_path, [], batch, 1)
    assert term in task_on.step(task_on.model, batch, 0).terms


def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path):
    batch = _fixed_batch()
    batch["gt"][0, 0, 0, 0] = float("nan")
    trainer, task = _trainer(tmp_path, ["train.max_bad_steps=3"], batch, 10)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match=r"3 steps in a row, last at step 2 in term 'loss/rec'"):
        trainer.fit(resume=False)
    assert trainer.skipped == 3
    # no update was applied
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())


def test_zero_intervals_switch_periodic_actions_off(tmp_path):
    batch = _fixed_batch()
    off = ["train.log_every=0", "train.checkpoint_every=0", "train.keep_every=0", "train.image_every=0"]
    trainer, _ = _trainer(tmp_path, off, batch, 3)
    saved = []
    trainer.save_checkpoint = lambda save=trainer.save_checkpoint: saved.append(trainer.step) or save()
    metrics = trainer.fit(resume=False)
    assert metrics["step"] == 3 and "loss/total" in metrics  # logged once, at the end
    assert saved == [3] and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    from maskdcpt.training.checkpoint import load_state

    state = load_state(tmp_path / "checkpoints" / "last.ckpt")  # says what it is, like every file we write
    assert state["format"] == "maskdcpt-training-state" and state["weights_metadata"]["model_name"] == "nafnet_tiny"
    assert not list((tmp_path / "checkpoints").glob("step_*.ckpt"))


@pytest.mark.parametrize("previous", ["a handler that goes on (submitit's)", "none: SIGTERM ends the process"])
def test_sigterm_writes_a_checkpoint_at_the_next_step(tmp_path, previous):
    trainer, task = _trainer(tmp_path, ["train.checkpoint_every=0", "train.log_every=0"], _fixed_batch(), 4)
    saved, seen = [], []
    trainer.save_checkpoint = lambda save=trainer.save_checkpoint: saved.append(trainer.step) or save()
    task.after_step = lambda step: os.kill(os.getpid(), signal.SIGTERM) if step == 2 else None  # an operator's requeue
    handler = (lambda signum, frame: seen.append(signum)) if previous.startswith("a handler") else signal.SIG_DFL
    before = signal.signal(signal.SIGTERM, handler)
    try:
        if handler is signal.SIG_DFL:
            with pytest.raises(SystemExit) as info:
                trainer.fit(resume=False)
            assert info.value.code == 128 + signal.SIGTERM and saved == [2]
        else:
            trainer.fit(resume=False)
            assert saved == [2, 4] and seen == [signal.SIGTERM]  # the previous handler still ran
        assert signal.getsignal(signal.SIGTERM) is handler  # and is back in place
    finally:
        signal.signal(signal.SIGTERM, before)
    from maskdcpt.training.checkpoint import load_state

    assert load_state(tmp_path / "checkpoints" / "last.ckpt")["step"] == saved[-1]


def test_weight_decay_spares_norms_biases_and_1d_parameters():
    cfg = load_pretrain_config(None, ["optim.weight_decay=0.5", "optim.classifier_weight_decay=0.25"])
    task = PretrainTask(cfg, DistInfo())
    groups = {g.name: g for g in task.param_groups(cfg.optim)}
    assert list(groups) == ["backbone", "backbone_no_decay", "classifier", "classifier_no_decay"]
    assert [groups[n].weight_decay for n in groups] == [0.5, 0.0, 0.25, 0.0]
    names = {id(p): n for n, p in task.model.named_parameters()}
    exempt = {names[id(p)] for g in groups.values() if g.name.endswith("_no_decay") for p in g.params}
    assert exempt == {n for n, p in task.model.named_parameters() if p.ndim <= 1 or n.endswith(".bias")}
    assert {"classifier.mixing_weights", "classifier.fc.bias", "backbone.intro.bias"} <= exempt
    assert "backbone.encoders.0.blocks.0.norm1.weight" in exempt and "classifier.fc.weight" not in exempt
    assert sum(len(g.params) for g in groups.values()) == len(names)
    # with zero gradients AdamW changes only what it decays
    optimizer = build_optimizer(list(groups.values()), cfg.optim)
    before = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    for p in task.model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for n, p in task.model.named_parameters():
        assert torch.equal(p, before[n]) == (n in exempt or not p.abs().sum()), n
    # a group without weight decay is not split (the release's backbone recipe, fine-tuning)
    linear = torch.nn.Linear(2, 2)
    assert [g.name for g in weight_decay_groups("restorer", linear.named_parameters(), 1e-3, 0.0)] == ["restorer"]


def test_keep_maps_depend_only_on_seed_and_sample_index():
    a = keep_maps([5, 6, 7], (4, 4), 0.5, seed=0)
    b = keep_maps([7], (4, 4), 0.5, seed=0)
    assert torch.equal(a[2:], b)
    assert not torch.equal(a[0], a[1])
    assert (a.flatten(1).sum(1) == 8).all()
    assert not torch.equal(a, keep_maps([5, 6, 7], (4, 4), 0.5, seed=1))


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    common = ["train.max_steps=8", "train.checkpoint_every=1"]
    straight = _pretrain(tmp_path / "a", *common)
    assert straight.returncode == 0, straight.stderr

    cmd = [sys.executable, str(ROOT / "tools" / "pretrain.py"), f"run.output_dir={tmp_path / 'b'}", "run.name=r",
           *TINY_PRETRAIN, *common]
    proc = subprocess.Popen(cmd, env=run_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    weights = tmp_path / "b" / "r" / "checkpoints" / "last.safetensors"
    killed_at = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if weights.exists():
            try:
                with safe_open(str(weights), "pt") as f:
                    killed_at = int(f.metadata()["step"])
            except Exception:  # replaced while being read
                killed_at = None
            if killed_at is not None and killed_at >= 3:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert killed_at is not None and killed_at < 8

    # a kill during a checkpoint write leaves its temporary file (gigabytes at release size): resume removes it
    stale = tmp_path / "b" / "r" / "checkpoints" / ".last.safetensors.x1y2z3w4.tmp"
    stale.write_bytes(b"half of a checkpoint")
    resumed = _pretrain(tmp_path / "b", *common, "train.log_every=4")  # a benign change: warned, recorded
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert not stale.exists() and "removed 1 temporary file(s)" in resumed.stderr
    assert "resuming with 1 changed setting(s)" in resumed.stderr and "train.log_every: 1 → 4" in resumed.stderr
    history = tmp_path / "b" / "r" / "config_history" / "config.1.yaml"
    assert load_pretrain_config(history).train.log_every == 1
    assert load_pretrain_config(tmp_path / "b" / "r" / "config.yaml").train.log_every == 4
    assert "WARNING resuming with 1 changed setting(s)" in (tmp_path / "b" / "r" / "log.txt").read_text()
    assert not list((tmp_path / "b" / "r").rglob("*.tmp"))
    a, b = last_weights(tmp_path / "a" / "r"), last_weights(tmp_path / "b" / "r")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_resume_refuses_a_changed_model_or_data_shape_and_records_benign_changes(tmp_path):
    from maskdcpt.config import save_config
    from maskdcpt.errors import ConfigError
    from maskdcpt.training.logging import RunLog
    from maskdcpt.training.run import config_changes, record_config

    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    save_config(load_pretrain_config(None, ["train.max_steps=300"]), run / "config.yaml")
    new = load_pretrain_config(None, ["train.max_steps=110", "train.checkpoint_every=10"])
    changes = config_changes(new, run, "auto")
    assert changes == [("train.checkpoint_every", 50, 10), ("train.max_steps", 300, 110)]
    for override, key in [("model.name=restormer_tiny", "model.name"), ("model.kwargs={width: 8}", "model.kwargs"),
                          ("model.classifier_norm=layer", "model.classifier_norm"),
                          ("model.classifier_blocks=2", "model.classifier_blocks"), ("data.crop_size=64", "data.crop_size"),
                          ("train.batch_size=16", "train.batch_size")]:
        with pytest.raises(ConfigError, match=f"cannot resume {run} with a changed {key}.*--no-resume"):
            config_changes(load_pretrain_config(None, [override]), run, "auto")
        assert config_changes(load_pretrain_config(None, [override]), run, False) == []  # starting afresh: allowed
    with RunLog(run / "log.txt") as runlog:
        record_config(new, run, runlog, changes)
    assert load_pretrain_config(run / "config_history" / "config.1.yaml").train.max_steps == 300
    assert load_pretrain_config(run / "config.yaml").train.max_steps == 110
    assert "train.max_steps: 300 → 110" in (run / "log.txt").read_text()
    with RunLog(run / "log.txt") as runlog:  # the same config again: nothing new to keep
        record_config(new, run, runlog, [])
    assert len(list((run / "config_history").iterdir())) == 1
    assert config_changes(load_pretrain_config(None, ["model.mask_ratio=0.75"]), run, "auto") == [
        ("model.mask_ratio", 0.5, 0.75), ("train.checkpoint_every", 10, 50),
        ("train.max_steps", 110, load_pretrain_config().train.max_steps)]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_matches_single_process(tmp_path):
    # The release's LayerNorm classifier: per-sample norms make two ranks compute what one process computes up to
    # the order of sums. (The BatchNorm classifier's statistics are synchronised across ranks too, on CPU as on CUDA,
    # tested in test_sync_batchnorm.py; at initialisation its gradients are too ill-conditioned for this bound.)
    common = ["train.max_steps=3", "train.checkpoint_every=3", "loss.w_con=1.0", "model.classifier_norm=layer"]
    single = _pretrain(tmp_path / "single", *common)
    assert single.returncode == 0, single.stderr

    port = _free_port()
    procs = []
    for rank in range(2):
        env = run_env()
        env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, str(ROOT / "tools" / "pretrain.py"), f"run.output_dir={tmp_path / 'ddp'}", "run.name=r",
               *TINY_PRETRAIN, *common]
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    a, b = last_weights(tmp_path / "single" / "r"), last_weights(tmp_path / "ddp" / "r")
    # The initial weights, as run_pretraining seeds them.
    cfg = load_pretrain_config(None, [*TINY_PRETRAIN, *common])
    torch.manual_seed(cfg.train.seed)
    from maskdcpt.training.distributed import DistInfo

    init = PretrainTask(cfg, DistInfo()).model.state_dict()
    # Compare the updates, not the weights: float sums in another order differ in the last
    # bits, and Adam divides by sqrt(v) so it magnifies that where gradients are ~0. A wrong
    # reduction (a term counted twice, a rank's samples missing) moves whole tensors.
    delta_a = torch.cat([(a[k] - init[k]).flatten() for k in a])
    delta_b = torch.cat([(b[k] - init[k]).flatten() for k in a])
    assert delta_a.norm() > 0
    assert (delta_b - delta_a).norm() / delta_a.norm() < 1e-3
    for key in a:  # and no tensor is off by more than a rounding-level amount
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-4, msg=key)
