"""What a GPU run needs of the trainer, checked without a GPU: everything a task owns follows the model to the
trainer's device, a resume on fewer GPUs restores what it can, a SLURM task gets a CPU per data worker, and the
loop reads the device once per log line, not once per term and step."""
from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn as nn

from maskdcpt.errors import ConfigError
from maskdcpt.launch.launcher import LaunchOptions, executor_parameters
from maskdcpt.training.checkpoint import set_rng_state
from maskdcpt.training.distributed import DistInfo
from maskdcpt.training.finetune import FinetuneTask, load_finetune_config
from maskdcpt.training.pretrain import PretrainTask, load_pretrain_config
from maskdcpt.training.trainer import Trainer

from test_pretrain import _Repeat, _fixed_batch


def _owned_tensors(obj, seen=None, path="task"):
    """Every tensor reachable from ``obj`` through modules, attributes, lists and dicts: (path, tensor)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, nn.Module):
        for name, t in [*obj.named_parameters(), *obj.named_buffers()]:
            yield f"{path}.{name}", t
        return
    if torch.is_tensor(obj):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _owned_tensors(v, seen, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _owned_tensors(v, seen, f"{path}[{i}]")
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("maskdcpt"):
        for k, v in vars(obj).items():
            if k != "cfg":
                yield from _owned_tensors(v, seen, f"{path}.{k}")


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_everything_a_task_owns_follows_the_model_to_the_trainers_device(tmp_path, kind):
    # the meta device stands in for a GPU: a tensor left behind stays on the CPU, as fine-tuning's EMA copy did
    overrides = ["train.device=meta", "train.batch_size=4", "val.every=0"]
    if kind == "pretrain":
        cfg = load_pretrain_config(None, overrides)
        task = PretrainTask(cfg, DistInfo())
    else:
        cfg = load_finetune_config(None, overrides)
        task = FinetuneTask(cfg, DistInfo())
    Trainer(task, cfg.train, cfg.optim, tmp_path, lambda start: _Repeat(_fixed_batch()))
    owned = list(_owned_tensors(task))
    assert len(owned) > 10
    left = [name for name, t in owned if t.device.type != "meta"]
    assert not left, f"left on the CPU: {left[:5]}"
    if kind == "finetune":
        assert any(name.startswith("task.ema.module.") for name, _ in owned)


def test_a_resume_on_fewer_gpus_restores_the_generators_it_has(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((device, state)))
    saved = {"torch": torch.get_rng_state(), "cuda": [torch.tensor([1], dtype=torch.uint8),
                                                      torch.tensor([2], dtype=torch.uint8)]}  # two GPUs saved
    set_rng_state(saved)
    assert [(d, int(s[0])) for d, s in restored] == [(0, 1)]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # more GPUs now: the saved two
    restored.clear()
    set_rng_state(saved)
    assert [d for d, _ in restored] == [0, 1]


def test_a_slurm_task_gets_a_cpu_per_data_worker_and_the_trainer():
    cfg = load_pretrain_config(None, ["data.num_workers=16"])
    derived = LaunchOptions(launcher="slurm").with_cpus_for(cfg)
    assert derived.cpus_per_task == 17 and executor_parameters(derived)["cpus_per_task"] == 17
    assert LaunchOptions(launcher="slurm", cpus_per_task=20).with_cpus_for(cfg).cpus_per_task == 20
    with pytest.raises(ConfigError, match=r"--cpus-per-task 1 is fewer than a task needs: 16 data-loader workers .* "
                                          r"--cpus-per-task 17"):
        LaunchOptions(launcher="slurm", cpus_per_task=1).with_cpus_for(cfg)
    assert LaunchOptions().with_cpus_for(load_pretrain_config(None, [])).cpus_per_task == 1


def test_the_loop_reads_the_device_once_per_log_line(tmp_path, monkeypatch):
    cfg = load_pretrain_config(None, ["train.max_steps=6", "train.batch_size=4", "train.log_every=3",
                                      "train.progress=false", "train.checkpoint_every=0", "train.image_every=0",
                                      "val.every=0"])
    torch.manual_seed(0)
    task = PretrainTask(cfg, DistInfo())
    trainer = Trainer(task, cfg.train, cfg.optim, tmp_path, lambda start: _Repeat(_fixed_batch()))
    reads = []
    real_tolist, real_item = torch.Tensor.tolist, torch.Tensor.item

    def ours() -> bool:  # a read made by maskdcpt's code (torch's optimisers read their own CPU step counters)
        caller = sys._getframe(2).f_code.co_filename
        return f"{os.sep}maskdcpt{os.sep}" in caller

    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: (ours() and reads.append(("tolist", tuple(t.shape))))
                        or real_tolist(t))
    monkeypatch.setattr(torch.Tensor, "item", lambda t: (ours() and reads.append(("item", tuple(t.shape))))
                        or real_item(t))
    logged = []
    real_scalars = trainer.logger.scalars
    trainer.logger.scalars = lambda values, step: logged.append((step, dict(values))) or real_scalars(values, step)
    trainer.fit(resume=False)
    # per step: the one read that decides the update (non-finite? stop?); per log line: one read of every term
    flags = [r for r in reads if r == ("tolist", (2,))]
    windows = [r for r in reads if r[0] == "tolist" and r != ("tolist", (2,))]
    assert len(flags) == 6 and len(windows) == 2 and not [r for r in reads if r[0] == "item"]
    assert [step for step, _ in logged] == [3, 6]
    assert {"loss/total", "loss/rec", "loss/cls", "loss/con", "metrics/top1"} <= set(logged[0][1])
    assert all(v == v for v in logged[0][1].values())  # finite means, not tensors
