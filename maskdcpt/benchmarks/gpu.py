"""``python tools/benchmark.py gpu --out DIR``: every figure a first GPU should give, in one table and ``DIR/gpu.json``.

Made for a GPU lent for a few minutes (about 7 on one H100 with the default ``--budget 420``). In order:

1. the environment (GPU, driver-visible memory, torch, CUDA, cuDNN, the backends' flags);
2. the dense training step (forward, L1, backward, AdamW) of each backbone at its release size (``nafnet_5d``,
   ``restormer``, ``promptir``, ``swinir``; 128² crops): fp32 at batch 16 and bf16 autocast at batch 64, eager, and
   bf16 with channels-last weights and inputs; images/s and peak memory of each;
3. the MaskDCPT step in bf16 at batch 64 per backbone: ``masked`` (the masked backbone and its head, L1) and
   ``full`` (the release recipe's step: masked backbone, two-block classifier, reconstruction + focal + SupCon, AdamW
   over both parameter groups);
4. the batched torch degradation path on the device: samples/s per type it covers;
5. the pre-training trainer on the release recipe (``configs/pretrain/nafnet_uir.yaml``, the embedded photos in all
   19 types) with 16 data workers for a short run: images/s and the fraction of step time spent waiting for data;
6. the dense steps of 2. again under ``torch.compile``, bf16 first, while the budget lasts (compiling costs a minute
   or more per model and dtype).

Robust by construction: each measurement runs in its own ``try`` (an error or out-of-memory is recorded with its
message, the rest goes on; tracebacks go to ``DIR/errors.log``), each part has its share of the time budget (what
does not start in time is recorded as skipped), and ``gpu.json`` is rewritten after every measurement, so a run cut
short keeps what it measured. The anchor printed beside the figures: the official release's NAFNet-5D trains at
206 images/s (fp32, batch 16) and 285 images/s (bf16, batch 64) on one H100.

``--quick`` runs the same measurements at CPU size (the ``*_tiny`` models, 32² crops, batch 2, one timed step, no
data workers, dynamo's ``eager`` backend instead of inductor: tracing without code generation) so that a test can
check the table's keys without a GPU; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import timed_steps

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("nafnet", "restormer", "promptir", "swinir")
RELEASE_MODELS = {"nafnet": "nafnet_5d", "restormer": "restormer", "promptir": "promptir", "swinir": "swinir"}
# The official release's NAFNet-5D training throughput on one H100 (issue 24): the figure to beat.
ANCHOR = {"model": "nafnet_5d", "gpu": "NVIDIA H100", "fp32_batch16_img_per_s": 206.0, "bf16_batch64_img_per_s": 285.0}
# shares of the budget per part, in the order they run; compiled steps get what is left
PART_SHARES = {"dense": 0.30, "maskdcpt": 0.20, "degradations": 0.05, "trainer": 0.25}


@dataclass
class GpuBenchConfig:
    out: Path
    quick: bool
    device: torch.device
    budget_s: float
    size: int = 128
    fp32_batch: int = 16
    bf16_batch: int = 64
    warmup: int = 3
    steps: int = 10
    workers: int = 16
    trainer_steps: int = 40
    compile_backend: str = "inductor"
    families: tuple[str, ...] = FAMILIES

    def model_name(self, family: str) -> str:
        return f"{family}_tiny" if self.quick else RELEASE_MODELS[family]


def make_config(out: str | Path, quick: bool = False, budget_s: float | None = None, device: str | None = None,
                workers: int | None = None) -> GpuBenchConfig:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if quick:
        return GpuBenchConfig(Path(out), True, dev, budget_s or 900.0, size=32, fp32_batch=2, bf16_batch=2, warmup=1,
                              steps=1, workers=0 if workers is None else workers, trainer_steps=2,
                              compile_backend="eager")
    return GpuBenchConfig(Path(out), False, dev, budget_s or 420.0, workers=16 if workers is None else workers)


# ----------------------------------------------------------------------------- the report, written as it grows
@dataclass
class Report:
    """Results keyed by measurement, written to ``out/gpu.json`` after every record (atomically)."""

    cfg: GpuBenchConfig
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def path(self) -> Path:
        return self.cfg.out / "gpu.json"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def record(self, key: str, value: dict[str, Any]) -> None:
        self.results[key] = value
        self.write()

    def write(self) -> None:
        self.cfg.out.mkdir(parents=True, exist_ok=True)
        payload = {"quick": self.cfg.quick, "budget_s": self.cfg.budget_s, "elapsed_s": round(self.elapsed(), 1),
                   "anchor": ANCHOR, "results": self.results}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        os.replace(tmp, self.path)

    def measure(self, key: str, deadline: float, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one measurement unless the part's deadline (seconds since the start) has passed; record the result,
        or the error, or the skip."""
        if self.elapsed() > min(deadline, self.cfg.budget_s):
            value: dict[str, Any] = {"status": "skipped: time budget"}
        else:
            try:
                value = {"status": "ok", **fn()}
            except Exception as err:  # one failure must not lose the other figures
                if self.cfg.device.type == "cuda":
                    torch.cuda.empty_cache()
                oom = isinstance(err, torch.cuda.OutOfMemoryError)
                value = {"status": "out of memory" if oom else f"error: {type(err).__name__}: {_first_line(err)}"}
                with open(self.cfg.out / "errors.log", "a") as log:
                    log.write(f"--- {key}\n{traceback.format_exc()}\n")
        self.record(key, value)
        print(_row(key, value), flush=True)
        return value


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else ""


# ----------------------------------------------------------------------------- measurements
def environment(cfg: GpuBenchConfig) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": str(cfg.device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if cfg.device.type == "cuda":
        props = torch.cuda.get_device_properties(cfg.device)
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 1e9, 1),
                   capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                   cudnn_benchmark=torch.backends.cudnn.benchmark,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                           timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


def time_steps(step: Callable[[], None], batch: int, cfg: GpuBenchConfig) -> dict[str, Any]:
    """Images/s over ``cfg.steps`` timed steps after ``cfg.warmup`` (at least one; the first is reported: it holds
    compilation and cuDNN's autotuning), and the peak memory of the timed steps."""
    elapsed, first_s, peak = timed_steps(step, max(cfg.warmup, 1), cfg.steps, cfg.device)
    out = {"img_per_s": round(batch * cfg.steps / elapsed, 2), "batch": batch, "steps": cfg.steps,
           "first_step_s": round(first_s, 2)}
    if peak is not None:
        out["peak_mem_gb"] = round(peak, 2)
    return out


def _batch(cfg: GpuBenchConfig, batch: int, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    lq = torch.rand(batch, 3, cfg.size, cfg.size, generator=g).to(cfg.device, memory_format=fmt)
    gt = torch.rand(batch, 3, cfg.size, cfg.size, generator=g).to(cfg.device, memory_format=fmt)
    return lq, gt


def dense_step(cfg: GpuBenchConfig, family: str, dtype: str, channels_last: bool = False,
               compiled: bool = False) -> dict[str, Any]:
    """The dense restorer's training step: forward, L1, backward, AdamW (the trainer's default, foreach)."""
    from ..models import create_model

    torch.manual_seed(0)
    model = create_model(cfg.model_name(family)).to(cfg.device).train()
    if channels_last:  # 4-D conv weights only: PromptIR holds 5-D prompt parameters
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model, backend=cfg.compile_backend) if compiled else model
    batch = cfg.bf16_batch if dtype == "bf16" else cfg.fp32_batch
    lq, gt = _batch(cfg, batch, channels_last)
    autocast = torch.autocast(cfg.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step() -> None:
        with autocast:
            loss = F.l1_loss(forward(lq).float(), gt)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        out = time_steps(step, batch, cfg)
    finally:
        del model, optimizer, forward
    out.update(model=cfg.model_name(family), dtype=dtype, channels_last=channels_last,
               compiled=cfg.compile_backend if compiled else False)
    if not cfg.quick and family == "nafnet":
        out["anchor_img_per_s"] = ANCHOR["bf16_batch64_img_per_s" if dtype == "bf16" else "fp32_batch16_img_per_s"]
    return out


def _recipe(cfg: GpuBenchConfig, family: str, overrides: list[str]):
    from ..training.pretrain import load_pretrain_config

    extra = [f"model.name={cfg.model_name(family)}"] if cfg.quick else []
    return load_pretrain_config(ROOT / "configs" / "pretrain" / f"{family}_uir.yaml", [*extra, *overrides])


def maskdcpt_step(cfg: GpuBenchConfig, family: str, full: bool) -> dict[str, Any]:
    """bf16: ``full`` the release recipe's pre-training step (PretrainTask: the losses, both parameter groups);
    otherwise the masked backbone and its head alone with L1 (what masking costs before the classifier)."""
    from ..models import create_model
    from ..models.masking import random_keep_map
    from ..training.distributed import DistInfo
    from ..training.optim import build_optimizer
    from ..training.pretrain import PretrainTask

    batch = cfg.bf16_batch
    lq, gt = _batch(cfg, batch)
    autocast = torch.autocast(cfg.device.type, dtype=torch.bfloat16)
    torch.manual_seed(0)
    if full:
        recipe = _recipe(cfg, family, [f"train.batch_size={batch}", f"data.crop_size={cfg.size}"])
        task = PretrainTask(recipe, DistInfo())
        task.model.to(cfg.device).train()
        optimizer = build_optimizer(task.param_groups(recipe.optim), recipe.optim)
        data = {"lq": lq, "gt": gt, "type_id": (torch.arange(batch) % 19).to(cfg.device),
                "index": torch.arange(batch, device=cfg.device)}

        def step() -> None:
            with autocast:
                loss = task.step(task.forward_module, data, 0).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        name, blocks = recipe.model.name, recipe.model.classifier_blocks
    else:
        model = create_model(cfg.model_name(family), masked=True).to(cfg.device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        grid = (cfg.size // model.stride, cfg.size // model.stride)

        def step() -> None:
            keep = random_keep_map(batch, grid, 0.5, device=cfg.device)
            with autocast:
                feat, _ = model.forward_features(lq, keep)
                loss = F.l1_loss(model.forward_head(feat).float(), gt)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        name, blocks = cfg.model_name(family), None
    out = time_steps(step, batch, cfg)
    out.update(model=name, dtype="bf16", mode="full" if full else "masked")
    if blocks is not None:
        out["classifier_blocks"] = blocks
    return out


def degradation_rates(cfg: GpuBenchConfig) -> dict[str, Any]:
    """Samples/s of each type of the batched torch path (``degradations.torch_ops``) on the device."""
    from degradations.benchmark import benchmark_batch

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its own table
        ms = benchmark_batch(size=cfg.size, batch=cfg.bf16_batch, device=str(cfg.device), repeats=1 if cfg.quick else 3)
    return {"batch": cfg.bf16_batch, "size": cfg.size,
            "samples_per_s": {name: round(1000.0 / value, 1) for name, value in ms.items()}}


def trainer_run(cfg: GpuBenchConfig, family: str = "nafnet") -> dict[str, Any]:
    """A short run of the real trainer on the release recipe: images/s and data-wait fraction of its second half
    (the first half holds the workers' start and the first steps' autotuning)."""
    from ..training.pretrain import run_pretraining

    steps = cfg.trainer_steps
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(dir=cfg.out) as tmp:
        overrides = [f"train.max_steps={steps}", f"train.log_every={max(1, steps // 2)}", "train.image_every=0",
                     f"train.checkpoint_every={steps}", "train.progress=false", "val.every=0",
                     f"data.num_workers={cfg.workers}", f"run.output_dir={tmp}", "run.name=trainer"]
        if cfg.quick:
            overrides += [f"train.batch_size={cfg.bf16_batch}", f"data.crop_size={cfg.size}", "data.crops_per_image=2"]
        recipe = _recipe(cfg, family, overrides)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                metrics = run_pretraining(recipe, resume=False)
        finally:
            torch.set_num_threads(threads)  # the run sizes the process's threads for its workers
    return {"model": recipe.model.name, "batch": recipe.train.batch_size, "workers": cfg.workers, "steps": steps,
            "img_per_s": round(float(metrics.get("perf/samples_per_s", 0.0)), 2),
            "data_wait_fraction": round(float(metrics.get("perf/data_wait_fraction", 0.0)), 4),
            "precision": recipe.train.precision, "types": len(recipe.data.engine.label_names)}


# ----------------------------------------------------------------------------- the run and its table
def _row(key: str, value: dict[str, Any]) -> str:
    status = value.get("status", "ok")
    if status != "ok":
        figure = status
    elif "img_per_s" in value:
        figure = f"{value['img_per_s']:.1f} img/s"
        if "peak_mem_gb" in value:
            figure += f", peak {value['peak_mem_gb']:.2f} GB"
        if "data_wait_fraction" in value:
            figure += f", data wait {100 * value['data_wait_fraction']:.0f}% ({value['workers']} workers)"
        if "anchor_img_per_s" in value:
            figure += f"  (release: {value['anchor_img_per_s']:.0f})"
    elif isinstance(value.get("samples_per_s"), float):
        figure = f"{value['samples_per_s']:.1f} samples/s"
    elif isinstance(value.get("samples_per_s"), dict):
        figure = f"{len(value['samples_per_s'])} types, batch {value['batch']} at {value['size']}²"
    else:
        figure = ", ".join(f"{k}={v}" for k, v in value.items() if k != "status")
    return f"| {key:<40} | {figure} |"


def run(cfg: GpuBenchConfig) -> Report:
    report = Report(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    if cfg.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as BasicSR trains: fixed shapes, autotuned convolutions
    print(f"| {'measurement':<40} | figure |\n|{'-' * 42}|{'-' * 60}|", flush=True)
    report.measure("environment", cfg.budget_s, lambda: environment(cfg))
    report.record("anchor", {"status": "ok", **ANCHOR})
    deadline = 0.0

    deadline += PART_SHARES["dense"] * cfg.budget_s
    for family in cfg.families:
        for dtype in ("fp32", "bf16"):
            report.measure(f"dense/{family}/{dtype}/eager", deadline, lambda f=family, d=dtype: dense_step(cfg, f, d))
        report.measure(f"dense/{family}/bf16/eager_channels_last", deadline,
                       lambda f=family: dense_step(cfg, f, "bf16", channels_last=True))

    deadline += PART_SHARES["maskdcpt"] * cfg.budget_s
    for family in cfg.families:
        for full in (False, True):
            report.measure(f"maskdcpt/{family}/bf16/{'full' if full else 'masked'}", deadline,
                           lambda f=family, full=full: maskdcpt_step(cfg, f, full))

    deadline += PART_SHARES["degradations"] * cfg.budget_s
    from degradations.torch_ops import TORCH_TYPES

    batch = report.measure("degradations/batch", deadline, lambda: degradation_rates(cfg))
    for name in TORCH_TYPES:  # one row per type, from the one timed pass over all of them
        rate = batch.get("samples_per_s", {}).get(name)
        report.record(f"degradations/{name}", {"status": batch["status"]} if rate is None else
                      {"status": "ok", "samples_per_s": rate})
        print(_row(f"degradations/{name}", report.results[f"degradations/{name}"]), flush=True)

    deadline += PART_SHARES["trainer"] * cfg.budget_s
    report.measure("trainer/nafnet", deadline, lambda: trainer_run(cfg))

    for dtype in ("bf16", "fp32"):
        for family in cfg.families:
            report.measure(f"dense/{family}/{dtype}/compiled", cfg.budget_s,
                           lambda f=family, d=dtype: dense_step(cfg, f, d, compiled=True))
    report.write()
    print(f"{report.elapsed():.0f} s; written {report.path}", flush=True)
    return report


def expected_keys(families: tuple[str, ...] = FAMILIES) -> list[str]:
    """The keys of ``gpu.json``'s results, quick or not (a test checks them)."""
    from degradations.torch_ops import TORCH_TYPES

    keys = ["environment", "anchor"]
    for family in families:
        keys += [f"dense/{family}/fp32/eager", f"dense/{family}/bf16/eager", f"dense/{family}/bf16/eager_channels_last"]
    keys += [f"maskdcpt/{family}/bf16/{mode}" for family in families for mode in ("masked", "full")]
    keys += ["degradations/batch", *(f"degradations/{name}" for name in TORCH_TYPES), "trainer/nafnet"]
    keys += [f"dense/{family}/{dtype}/compiled" for dtype in ("bf16", "fp32") for family in families]
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu.json (and errors.log)")
    parser.add_argument("--quick", action="store_true", help="CPU-size run of every measurement (tests)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 420; quick 900)")
    parser.add_argument("--workers", type=int, default=None, help="data workers of the trainer run (default 16)")
    parser.add_argument("--device", default=None, help="default: cuda when available")
    args = parser.parse_args(argv)
    cfg = make_config(args.out, args.quick, args.budget, args.device, args.workers)
    if cfg.device.type != "cuda" and not cfg.quick:
        print("no GPU here: the full run is made for one (use --quick for the CPU-size check)", file=sys.stderr)
    run(cfg)
    return 0
