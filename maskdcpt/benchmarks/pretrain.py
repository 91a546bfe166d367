"""``python tools/benchmark.py pretrain``: the full MaskDCPT step beside the dense restorer's step.

Per backbone: images/s of (masked forward, reconstruction + focal + SupCon losses, backward,
AdamW step of both parameter groups) and of the plain dense training step (forward, L1,
backward, AdamW). ``--with-data STEPS`` also runs the real trainer on the 19-type mix for a few
steps and reports the fraction of step time spent waiting for data.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from degradations import NUM_TYPES

from ..models import create_model, list_models
from ..training.distributed import DistInfo
from ..training.optim import build_optimizer
from ..training.pretrain import PretrainTask, load_pretrain_config, run_pretraining


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - start


def bench_model(name: str, batch: int, size: int, steps: int, warmup: int, device: torch.device, bf16: bool) -> tuple[float, float]:
    """(MaskDCPT step img/s, dense step img/s) for one backbone."""
    g = torch.Generator().manual_seed(0)
    data = {
        "lq": torch.rand(batch, 3, size, size, generator=g).to(device),
        "gt": torch.rand(batch, 3, size, size, generator=g).to(device),
        "type_id": (torch.arange(batch) % NUM_TYPES).to(device),
        "index": torch.arange(batch),
    }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    cfg = load_pretrain_config(None, [f"model.name={name}"])
    torch.manual_seed(0)
    task = PretrainTask(cfg, DistInfo())
    task.model.to(device).train()
    optimizer = build_optimizer(task.param_groups(cfg.optim), cfg.optim)

    def pretrain_step() -> None:
        with autocast:
            out = task.step(task.forward_module, data, 0)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    pre = batch * steps / _time(pretrain_step, steps, warmup, device)

    dense = create_model(name).to(device).train()
    opt = torch.optim.AdamW(dense.parameters(), lr=1e-4)

    def dense_step() -> None:
        with autocast:
            loss = F.l1_loss(dense(data["lq"]).float(), data["gt"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    plain = batch * steps / _time(dense_step, steps, warmup, device)
    return pre, plain


def bench_data_wait(name: str, batch: int, size: int, steps: int, workers: int) -> dict:
    """Run the real pre-training loop (19-type mix, embedded photos) and read its perf figures."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_pretrain_config(None, [
            f"model.name={name}", f"train.batch_size={batch}", f"data.crop_size={size}", f"train.max_steps={steps}",
            f"train.log_every={steps}", "train.image_every=0", f"train.checkpoint_every={steps}",
            f"data.num_workers={workers}", f"run.output_dir={tmp}", "train.progress=false",
        ])
        return run_pretraining(cfg, resume=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny", help="substring of registered names (default: the *_tiny set); e.g. 'nafnet_5d,restormer'")
    parser.add_argument("--batch", type=int, default=None, help="default: 64 on CUDA, 4 on CPU")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (default on CUDA)")
    parser.add_argument("--with-data", type=int, default=0, metavar="STEPS",
                        help="also run STEPS real training steps and report the data-wait fraction")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for --with-data")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    batch = args.batch or (64 if cuda else 4)
    steps = args.steps or (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    bf16 = args.bf16 or cuda
    names = [n for pattern in args.models.split(",") for n in list_models(pattern.strip())]
    print(f"pre-training step vs dense training step — {device}, {args.size}², batch {batch}, "
          f"{'bf16' if bf16 else 'fp32'}, {steps} timed steps")
    print(f"{'model':<16} {'MaskDCPT img/s':>15} {'dense img/s':>12} {'ratio':>7}")
    for name in names:
        pre, plain = bench_model(name, batch, args.size, steps, warmup, device, bf16)
        print(f"{name:<16} {pre:>15.1f} {plain:>12.1f} {pre / plain:>7.2f}", flush=True)
    if args.with_data:
        for name in names:
            m = bench_data_wait(name, batch, args.size, args.with_data, args.workers)
            print(f"{name}: real loop {m.get('perf/samples_per_s', 0):.1f} img/s, "
                  f"data wait {100 * m.get('perf/data_wait_fraction', 0):.0f}% of step time ({args.workers} workers)")
    return 0
