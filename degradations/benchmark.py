"""Speed of every degradation type on one CPU core: ``python tools/benchmark.py degradations --size 128``.

Each type runs on real photo crops (scikit-image's sample photos) at random levels and seeds; the table
gives the median and mean milliseconds per sample, and the mix line the expected cost per sample of the
uniform mix over all types (the mean of the per-type means: a mix draws each type equally often).
The default clock is the CPU time of the benchmarking thread (``time.thread_time``): on a machine shared
with other processes, wall time mostly measures waiting for a core, while CPU time stays close to what the
code costs on an idle core (cache and memory-bandwidth contention still inflate it, so figures remain upper
bounds). ``--clock wall`` measures wall time instead.

``--config ENGINE.yaml`` adds the config's extra types (ids 19, …; albumentations transforms or user
functions) to the table, and ``--types`` restricts it (names or ids, comma-separated).

``--torch`` times the batched torch path instead (``torch_ops.degrade_batch``, ms per sample per type,
``--batch`` samples on ``--device``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np

from .photos import sample_photos
from .registry import TYPE_NAMES, DegradationType, all_types
from .rng import make_rng


def _pin_to_one_core() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import cv2

    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {allowed[0]})


def _crops(size: int, count: int, seed: int) -> list[np.ndarray]:
    photos = [p for _, p in sample_photos()]
    rng = make_rng(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        if h < size or w < size:
            raise ValueError(f"benchmark: --size {size} is larger than a sample photo ({h}×{w})")
        y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        crops.append(np.ascontiguousarray(photo[y : y + size, x : x + size], dtype=np.float32) / 255.0)
    return crops


CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def measure(size: int, runs: int, seed: int = 0, clock: str = "cpu", types: list[DegradationType] | None = None) -> dict:
    """Per-type median and mean ms per sample over ``runs`` samples of size×size; ``types``: the
    registered 19 by default, or any list (an engine config's extra types among them)."""
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; valid: {', '.join(CLOCKS)}")
    now = CLOCKS[clock]
    crops = _crops(size, 8, seed)
    rng = make_rng((seed, size))
    median, mean, ids = {}, {}, {}
    for spec in all_types() if types is None else types:
        ids[spec.name] = spec.id
        ranges = dict(spec.ranges)
        spec.fn(crops[0].copy(), 0.5, make_rng(0), ranges)  # warm-up: imports, caches
        times = []
        for i in range(runs):
            image = crops[i % len(crops)].copy()
            level = float(rng.random())
            sample_rng = make_rng((seed, i))
            start = now()
            spec.fn(image, level, sample_rng, ranges)
            times.append((now() - start) * 1000.0)
        median[spec.name] = statistics.median(times)
        mean[spec.name] = statistics.fmean(times)
    missing = [n for n in TYPE_NAMES if n not in median] if types is None else []
    return {
        "size": size,
        "runs": runs,
        "clock": clock,
        "type_ids": ids,
        "per_type_ms": median,
        "per_type_mean_ms": mean,
        "mix_mean_ms": statistics.fmean(mean.values()) if mean else float("nan"),
        "missing_types": missing,
    }


def format_table(result: dict) -> str:
    lines = [
        f"degradations on one core, {result['size']}×{result['size']}, {result['runs']} runs per type, "
        f"{result['clock']} time",
        "",
    ]
    lines.append(f"{'id':>3}  {'type':<28}{'median ms':>10}{'mean ms':>10}")
    for name, ms in result["per_type_ms"].items():
        lines.append(f"{result['type_ids'][name]:>3}  {name:<28}{ms:>10.2f}{result['per_type_mean_ms'][name]:>10.2f}")
    lines.append("")
    count, mix = len(result["per_type_ms"]), result["mix_mean_ms"]
    lines.append(f"uniform mix over {count} types: {mix:.2f} ms per sample (mean)")
    if result["missing_types"]:
        lines.append(f"not implemented (left out of the mix): {', '.join(result['missing_types'])}")
    return "\n".join(lines)


def benchmark_batch(size: int = 128, batch: int = 64, device: str = "cpu", repeats: int = 3) -> dict[str, float]:
    """Time ms/sample of each torch type on a random-smooth batch (B, 3, size, size); prints a table.

    The best of ``repeats`` runs after one warm-up, with a device synchronise around each run.
    """
    import torch
    import torch.nn.functional as F

    from .torch_ops import TORCH_TYPES, degrade_batch

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    base = torch.rand((batch, 3, size // 8, size // 8), generator=gen)
    images = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    results = {}
    for name in TORCH_TYPES:
        best = math.inf
        for r in range(repeats + 1):
            seeds = [(r, i) for i in range(batch)]
            levels = [(i % 11) / 10 for i in range(batch)]
            sync()
            start = time.perf_counter()
            degrade_batch(images, [name] * batch, levels, seeds)
            sync()
            if r:  # r = 0 is the warm-up
                best = min(best, time.perf_counter() - start)
        results[name] = 1000.0 * best / batch
    print(f"torch path, {batch}×3×{size}×{size} on {dev}, {torch.get_num_threads()} threads")
    print(f"{'type':<16}{'ms/sample':>10}")
    for name, ms in results.items():
        print(f"{name:<16}{ms:>10.3f}")
    return results


def _selected_types(config_path: str | None, names: str | None) -> list[DegradationType] | None:
    """The types to time: every registered one and the config's extra types, or the named ones."""
    if config_path is None and names is None:
        return None
    from .cli import load_engine_config, parse_types

    config = load_engine_config(config_path)
    selected = parse_types(names or "all", config)
    return [config.resolve(name) for name in selected]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/benchmark.py degradations", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="square crop side in px (default 128)")
    parser.add_argument("--runs", type=int, default=60, help="samples per type (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="cpu (thread CPU time, default) or wall")
    parser.add_argument("--config", help="engine config YAML: its extra types join the table")
    parser.add_argument("--types", help="only these types: comma-separated names or ids (default: all)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--torch", action="store_true", help="time the batched torch path instead")
    parser.add_argument("--batch", type=int, default=64, help="--torch: samples per batch (default 64)")
    parser.add_argument("--device", default="cpu", help="--torch: device, e.g. cuda (default cpu)")
    args = parser.parse_args(argv)
    if args.size < 32:
        parser.error(f"--size must be at least 32, got {args.size}")
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    if args.torch:
        result = benchmark_batch(args.size, args.batch, args.device)  # prints its own table
    else:
        _pin_to_one_core()  # before the config: an albumentations import brings torch, which reads OMP_NUM_THREADS
        try:
            types = _selected_types(args.config, args.types)
        except ValueError as error:
            parser.error(str(error))
        result = measure(args.size, args.runs, args.seed, args.clock, types)
        print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
