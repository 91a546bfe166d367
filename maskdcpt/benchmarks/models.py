"""Model benchmark: parameters, forward GFLOPs per image and training-step throughput per registered backbone.

``python tools/benchmark.py models [--models PATTERN] [--size 128] [--batch B] [--steps N] ...``

For every model and mode (``dense``: the restorer with L1; ``masked``: the masked backbone's forward_features with a
fresh keep map per step + its head, L1; ``maskdcpt``: the full MaskDCPT forward, L1 + cross-entropy) and dtype
(fp32, bf16 autocast) it times full training steps — forward, loss, backward, AdamW step — on the device present
(CUDA when available, else CPU) and prints one table. GPU options: ``--channels-last``, ``--compile``, ``--fused``.
"""
from __future__ import annotations

import argparse
import fnmatch
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from degradations import NUM_TYPES

from maskdcpt.errors import ConfigError
from maskdcpt.models import build_maskdcpt, create_model, list_models
from maskdcpt.models.masking import random_keep_map

MODES = ("dense", "masked", "maskdcpt")
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class BenchConfig:
    models: list[str]
    size: int
    batch: int
    steps: int
    warmup: int
    modes: list[str]
    dtypes: list[str]
    device: torch.device
    channels_last: bool
    compile: bool
    fused: bool
    tf32: bool
    mask_ratio: float
    num_classes: int


@dataclass
class Row:
    model: str
    params_m: float
    mode: str
    dtype: str
    gflops: float | None
    images_per_s: float | None
    peak_mem_gb: float | None
    note: str = ""


def select_models(patterns: str) -> list[str]:
    """Registered names matching any comma-separated pattern (a glob when it holds ``*?[``, else a substring)."""
    names = list_models()
    chosen = []
    for pattern in (p.strip() for p in patterns.split(",")):
        hits = [n for n in names if (fnmatch.fnmatch(n, pattern) if any(c in pattern for c in "*?[") else pattern in n)]
        if not hits:
            raise ConfigError(f"--models pattern {pattern!r} matches none of: {', '.join(names)}")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def parse_args(argv: list[str]) -> BenchConfig:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="tools/benchmark.py models", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=None, help="comma-separated globs or substrings (default: all on CUDA, "
                   "'*_tiny' on CPU)")
    p.add_argument("--size", type=int, default=128, help="square crop size in pixels")
    p.add_argument("--batch", type=int, default=None, help="images per step (default 64 on CUDA, 2 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CUDA, 3 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 on CUDA, 1 on CPU)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated subset of fp32,bf16 (bf16 = autocast)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for model and input")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward+loss")
    p.add_argument("--fused", action="store_true", help="fused AdamW")
    p.add_argument("--no-tf32", dest="tf32", action="store_false", help="disable TF32 matmul/conv on CUDA")
    p.add_argument("--mask-ratio", type=float, default=0.5)
    p.add_argument("--num-classes", type=int, default=NUM_TYPES)
    a = p.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    dtypes = [d for d in a.dtypes.split(",") if d]
    for value, valid, flag in ((modes, MODES, "--modes"), (dtypes, tuple(DTYPES), "--dtypes")):
        unknown = [v for v in value if v not in valid]
        if unknown:
            p.error(f"{flag}: unknown {unknown}; valid: {', '.join(valid)}")
    device = torch.device(a.device or ("cuda" if cuda else "cpu"))
    on_gpu = device.type == "cuda"
    return BenchConfig(
        models=select_models(a.models if a.models is not None else ("" if on_gpu else "*_tiny")),
        size=a.size,
        batch=a.batch or (64 if on_gpu else 2),
        steps=a.steps or (20 if on_gpu else 3),
        warmup=a.warmup if a.warmup is not None else (5 if on_gpu else 1),
        modes=modes,
        dtypes=dtypes,
        device=device,
        channels_last=a.channels_last,
        compile=a.compile,
        fused=a.fused,
        tf32=a.tf32,
        mask_ratio=a.mask_ratio,
        num_classes=a.num_classes,
    )


def build(name: str, mode: str, cfg: BenchConfig) -> tuple[nn.Module, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The module to optimise and ``loss(lq, gt)`` for one mode (keep maps drawn inside, fresh each call)."""
    if mode == "dense":
        model = create_model(name)

        def loss(lq: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
            return F.l1_loss(model(lq), gt)

    elif mode == "masked":
        model = create_model(name, masked=True)

        def loss(lq: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
            p = model.stride
            keep = random_keep_map(lq.shape[0], (lq.shape[-2] // p, lq.shape[-1] // p), cfg.mask_ratio, device=lq.device)
            feat, _ = model.forward_features(lq, keep)
            return F.l1_loss(model.forward_head(feat), gt)

    else:
        model = build_maskdcpt(name, num_classes=cfg.num_classes, mask_ratio=cfg.mask_ratio)

        def loss(lq: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
            out = model(lq)
            labels = torch.arange(lq.shape[0], device=lq.device) % cfg.num_classes
            return F.l1_loss(out.reconstruction, gt) + F.cross_entropy(out.logits.float(), labels)

    return model, loss


def count_gflops(loss: Callable, cfg: BenchConfig) -> float:
    """Forward FLOPs (multiply-add = 2) of one image through ``loss``, in GFLOPs."""
    x = torch.rand(1, 3, cfg.size, cfg.size, device=cfg.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        loss(x, x)
    return counter.get_total_flops() / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[[], None], warmup: int, steps: int,
                device: torch.device) -> tuple[float, float | None, float | None]:
    """Run ``warmup`` untimed steps, then ``steps`` timed ones: (seconds of the timed steps, seconds of the first
    warm-up step — compilation, cuDNN's autotuning —, peak CUDA memory of the timed steps in GB; None where there is
    no warm-up step / no CUDA)."""
    first_s = None
    for i in range(warmup):
        start = time.perf_counter()
        step()
        _sync(device)
        if i == 0:
            first_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return elapsed, first_s, peak


def time_training(model: nn.Module, loss: Callable, dtype: str, cfg: BenchConfig) -> tuple[float, float | None]:
    """Images per second of full training steps, and the peak CUDA memory in GB (None on CPU)."""
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(cfg.device).train()
    # Only 4-D conv weights take channels_last; a whole-model .to(memory_format=...) fails on
    # models holding 5-D parameters (PromptIR's prompts).
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.to(memory_format=fmt)
    opt_kwargs = {"fused": True} if cfg.fused else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, **opt_kwargs)
    step_loss = torch.compile(loss) if cfg.compile else loss
    g = torch.Generator(device="cpu").manual_seed(0)
    lq = torch.rand(cfg.batch, 3, cfg.size, cfg.size, generator=g).to(cfg.device, memory_format=fmt)
    gt = torch.rand(cfg.batch, 3, cfg.size, cfg.size, generator=g).to(cfg.device, memory_format=fmt)
    autocast = torch.autocast(cfg.device.type, dtype=DTYPES[dtype], enabled=DTYPES[dtype] is not None)

    def step() -> None:
        with autocast:
            value = step_loss(lq, gt)
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    elapsed, _, peak = timed_steps(step, cfg.warmup, cfg.steps, cfg.device)
    return cfg.batch * cfg.steps / elapsed, peak


def run(cfg: BenchConfig) -> list[Row]:
    if cfg.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cudnn.benchmark = True
    rows = []
    for name in cfg.models:
        for mode in cfg.modes:
            torch.manual_seed(0)
            model, loss = build(name, mode, cfg)
            params = sum(p.numel() for p in model.parameters()) / 1e6
            model.to(cfg.device)
            gflops = count_gflops(loss, cfg)
            for dtype in cfg.dtypes:
                try:
                    ips, peak = time_training(model, loss, dtype, cfg)
                    rows.append(Row(name, params, mode, dtype, gflops, ips, peak))
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    rows.append(Row(name, params, mode, dtype, gflops, None, None, "out of memory"))
            del model
    return rows


def format_table(rows: list[Row], cfg: BenchConfig) -> str:
    flags = [f for f, on in (("channels_last", cfg.channels_last), ("compile", cfg.compile), ("fused AdamW", cfg.fused),
                              ("tf32", cfg.tf32 and cfg.device.type == "cuda")) if on]
    device = torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    head = (f"device {device}; {cfg.size}x{cfg.size}, batch {cfg.batch}, {cfg.steps} timed steps after {cfg.warmup} "
            f"warm-up; mask ratio {cfg.mask_ratio}; {', '.join(flags) or 'no extra flags'}")
    cols = ["model", "params (M)", "mode", "dtype", f"GFLOPs/img fwd @{cfg.size}", "train img/s", "peak mem (GB)"]
    lines = []
    for r in rows:
        lines.append([r.model, f"{r.params_m:.3f}", r.mode, r.dtype,
                      "-" if r.gflops is None else f"{r.gflops:.2f}",
                      r.note or ("-" if r.images_per_s is None else f"{r.images_per_s:.1f}"),
                      "-" if r.peak_mem_gb is None else f"{r.peak_mem_gb:.2f}"])
    widths = [max(len(c), *(len(line[i]) for line in lines)) if lines else len(c) for i, c in enumerate(cols)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [head, fmt(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt(line) for line in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(list(argv or []))
    print(format_table(run(cfg), cfg))
    return 0
