"""The standard all-in-one benchmarks (5D, 12D), found on disk by their published layouts, with the release's
test protocol and the paper-style table.

``evaluate_benchmark(model, "5d", root)`` looks under ``root`` for every test set of the benchmark by the folder
names and LQ/GT subfolder names its publishers and the usual all-in-one releases use (the first match, shallowest
first, up to 6 levels down; names compare case-insensitively), runs :func:`~.evaluate.evaluate` on the sets it
found and prints the paper's table: one column per task, PSNR/SSIM of the input and of the restorer, and the
average over the tasks. A set that is missing is named with the layout it expects; the others still run.

Protocol (MaskDCPT's release, ``options/all_in_one/test/*.yml`` and ``models/sr_model.py``): the input is
reflect-padded at the right and bottom to the model's window size (``model.stride``) and cropped back, the output
clamped to [0, 1], PSNR/SSIM computed on the float RGB images (no 8-bit rounding), crop border 0, no tiling or
self-ensemble. Sets published as clean images only get their LQ made the release's way:

* Gaussian noise (CBSD68, Kodak, McMaster, Urban100 at σ): per image ``np.random.seed(0)``, then
  ``normal(0, σ/255)`` of the image's (H, W, 3) RGB shape added to the float32 image, clipped to [0, 1], not
  rounded (bit for bit the release's noise);
* JPEG at quality q: the 8-bit image encoded and decoded by OpenCV (q = 50 in 12D);
* demosaic: the 8-bit image in OpenCV's BGR order sampled on the release's 2×2 mosaic (channel 0, blue, at even
  rows and columns, channel 2, red, at odd ones, green elsewhere) and demosaiced with OpenCV's edge-aware
  ``COLOR_BAYER_BG2BGR_EA``. That conversion reads the even/even samples as red, so the release's LQ has red
  and blue exchanged against its GT (its models learn the swap); ours keeps every sample in its own channel, so
  the LQ's colours are the GT's. Same mosaic, same demosaic otherwise.

5D (MaskDCPT's table): Dehaze SOTS-outdoor, Derain Rain100L, Denoise CBSD68 σ=25, Deblur GoPro, Low-light LOL-v1
eval15; the average is over these five. CBSD68 at σ=15 and σ=50 (DCPT's denoising columns) are reported too and
left out of the average. 12D: the twelve tasks of the 12D table with the sets of the release's 12D test config;
a task's value is the mean over its sets found (which sets the paper averages per task is not stated), the
average is over the tasks. Not defined, so not run: 12D Gaussian deblurring (kernels drawn at random by the
release's data loader at test time, no published kernel list) and RSBlur (a text list of pairs in its own
layout).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError, MissingFileError
from .evaluate import EvalConfig, EvalResult, TaskData, evaluate
from .restore import IMAGE_SUFFIXES

SEARCH_DEPTH = 6


# -------------------------------------------------------------------------------------------- synthesis
def gaussian_noise(sigma: float, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """LQ = clip(GT + N(0, σ/255)), the noise drawn after ``np.random.seed(seed)`` for every image."""
    def synthesize(gt: torch.Tensor) -> torch.Tensor:
        img = gt.permute(1, 2, 0).numpy().astype(np.float32)
        img += np.random.RandomState(seed).normal(0, sigma / 255.0, img.shape)  # float32 sum, as in the release
        return torch.from_numpy(np.clip(img, 0, 1)).permute(2, 0, 1).contiguous()

    synthesize.__qualname__ = f"gaussian_noise(sigma={sigma}, seed={seed})"
    return synthesize


def _to_bgr8(gt: torch.Tensor) -> np.ndarray:
    rgb = np.round(gt.permute(1, 2, 0).numpy().astype(np.float64) * 255).astype(np.uint8)
    return np.ascontiguousarray(rgb[..., ::-1])


def _from_bgr8(bgr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(bgr[..., ::-1].astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def jpeg(quality: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """LQ = the 8-bit GT after OpenCV JPEG encoding at ``quality`` and decoding."""
    def synthesize(gt: torch.Tensor) -> torch.Tensor:
        ok, data = cv2.imencode(".jpg", _to_bgr8(gt), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise ValueError("OpenCV could not JPEG-encode the image")
        return _from_bgr8(cv2.imdecode(data, cv2.IMREAD_COLOR))

    synthesize.__qualname__ = f"jpeg(quality={quality})"
    return synthesize


def bayer_demosaic(gt: torch.Tensor) -> torch.Tensor:
    """LQ = the 8-bit GT mosaiced on the release's 2×2 pattern and demosaiced by OpenCV (module docstring)."""
    bgr = _to_bgr8(gt)
    cfa = bgr[..., 1].copy()
    cfa[0::2, 0::2] = bgr[0::2, 0::2, 0]
    cfa[1::2, 1::2] = bgr[1::2, 1::2, 2]
    # OpenCV's BG pattern takes the even/even sample (blue here) for red, so its "BGR" output is this image's
    # RGB: read that way, every sample stays in the channel it came from.
    rgb = cv2.cvtColor(cfa, cv2.COLOR_BAYER_BG2BGR_EA)
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------------------------------------- the sets
@dataclass(frozen=True)
class BenchmarkSet:
    """A published test set: where it lives and how its LQ is obtained.

    ``folders``: path endings that name the set's folder (``"GoPro/test"``); ``pairs``: (LQ, GT) subfolders of
    it, tried in order (``"."`` is the folder itself; LQ None for clean-only sets, whose LQ ``synthesize`` makes);
    ``task``: the table column; ``in_average``: counted in the benchmark's average."""

    name: str
    task: str
    folders: tuple[str, ...]
    pairs: tuple[tuple[str | None, str], ...]
    synthesize: Callable[[torch.Tensor], torch.Tensor] | None = None
    recursive: bool = False
    in_average: bool = True
    y_channel: bool | None = None

    def expected_layout(self) -> str:
        def holding(lq: str | None, gt: str) -> str:
            if lq is None:
                return "the clean images" if gt == "." else f"{gt}/"
            return f"{lq}/ + {gt}/"

        folders = ", ".join(self.folders[:-1]) + (" or " if len(self.folders) > 1 else "") + self.folders[-1]
        first, *others = [holding(lq, gt) for lq, gt in self.pairs]
        return (f"a folder ending in {folders} (up to {SEARCH_DEPTH} levels below ROOT) holding {first}"
                + (f" (or {', '.join(others)})" if others else ""))


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    tasks: tuple[str, ...]  # the table's columns, in the paper's order
    sets: tuple[BenchmarkSet, ...]


_CLEAN = ((None, "."), (None, "original_png"), (None, "GT"), (None, "HR"))
_IN_TGT = (("input", "target"), ("input", "groundtruth"), ("LQ", "GT"))


def _rain(name: str, task: str = "Derain", **kw) -> BenchmarkSet:
    return BenchmarkSet(name, task, (name,), _IN_TGT + (("rainy", "norain"), ("rain", "norain")), **kw)


def _clean(name: str, task: str, folders: tuple[str, ...], synthesize, **kw) -> BenchmarkSet:
    return BenchmarkSet(name, task, folders, _CLEAN, synthesize=synthesize, **kw)


_CBSD68 = ("CBSD68", "bsd68")
_SOTS = BenchmarkSet("SOTS-outdoor", "Dehaze", ("SOTS/outdoor", "SOTS-outdoor", "SOTS_outdoor", "outdoor"),
                (("hazy", "gt"), ("hazy", "clear"), ("hazy", "GT"), ("input", "target"), ("LQ", "GT")))
_LOL = BenchmarkSet("LOL-v1", "Low-light", ("eval15", "lol_v1_eval", "LOLv1/test", "LOL-v1/test"),
               (("low", "high"), ("input", "target"), ("LQ", "GT")))
_GOPRO = BenchmarkSet("GoPro", "Deblur", ("GoPro/test", "GOPRO_Large/test", "GoPro_test"),
                 _IN_TGT + (("blur", "sharp"),))

BENCHMARKS: dict[str, Benchmark] = {
    "5d": Benchmark("5d", "5D all-in-one (MaskDCPT Table: SOTS, Rain100L, CBSD68 σ=25, GoPro, LOL)",
                    ("Dehaze", "Derain", "Denoise", "Deblur", "Low-light"), (
        _SOTS,
        _rain("Rain100L"),
        _clean("CBSD68-σ25", "Denoise", _CBSD68, gaussian_noise(25)),
        _GOPRO,
        _LOL,
        _clean("CBSD68-σ15", "Denoise", _CBSD68, gaussian_noise(15), in_average=False),
        _clean("CBSD68-σ50", "Denoise", _CBSD68, gaussian_noise(50), in_average=False),
    )),
    "12d": Benchmark("12d", "12D all-in-one (MaskDCPT 12D table, the sets of the release's 12D test config)",
                     ("Deraining", "Dehazing", "Desnowing", "Raindrop", "Low-light", "Motion deblur",
                      "Defocus deblur", "JPEG", "Real denoise", "Gaussian deblur", "Demosaic", "Demoiré"), (
        *(_rain(n, "Deraining") for n in ("Rain100L", "Rain100H", "Test100", "Test1200", "Test2800")),
        BenchmarkSet("SynRain-13k", "Deraining", ("SynRain-13k/test",), _IN_TGT),
        BenchmarkSet("RealRain-1k-L", "Deraining", ("RealRain-1k-L/test",), _IN_TGT),
        BenchmarkSet("RealRain-1k-H", "Deraining", ("RealRain-1k-H/test",), _IN_TGT),
        BenchmarkSet(_SOTS.name, "Dehazing", _SOTS.folders, _SOTS.pairs),
        *(BenchmarkSet(f"Snow100K-{s}", "Desnowing", (f"Snow100K-{s}",), (("synthetic", "gt"),)) for s in "SML"),
        BenchmarkSet("CSD", "Desnowing", ("CSD/Test",), (("Snow", "Gt"),)),
        BenchmarkSet("RainDrop-a", "Raindrop", ("test_a",), (("data", "gt"),)),
        BenchmarkSet("RainDrop-b", "Raindrop", ("test_b",), (("data", "gt"),)),
        BenchmarkSet("RainDS-syn", "Raindrop", ("RainDS_syn/test",), (("raindrop", "gt"),)),
        BenchmarkSet("RainDS-real", "Raindrop", ("RainDS_real/bench_set",), (("raindrop", "gt"),)),
        BenchmarkSet(_LOL.name, "Low-light", _LOL.folders, _LOL.pairs),
        BenchmarkSet("LOLv2-syn", "Low-light", ("LOLv2/Synthetic/Test", "Synthetic/Test"), (("Low", "Normal"),)),
        BenchmarkSet("LOLv2-real", "Low-light", ("LOLv2/Real_captured/Test", "Real_captured/Test"), (("Low", "Normal"),)),
        BenchmarkSet("LSRW-Huawei", "Low-light", ("LSRW/Eval/Huawei",), (("low", "high"),)),
        BenchmarkSet("LSRW-Nikon", "Low-light", ("LSRW/Eval/Nikon",), (("low", "high"),)),
        BenchmarkSet(_GOPRO.name, "Motion deblur", _GOPRO.folders, _GOPRO.pairs),
        BenchmarkSet("REDS-val", "Motion deblur", ("REDS/val",), (("val_blur", "val_sharp"),), recursive=True),
        BenchmarkSet("HIDE", "Motion deblur", ("HIDE/test",), _IN_TGT),
        BenchmarkSet("RealBlur-J", "Motion deblur", ("RealBlur_J/test", "RealBlur-J/test"), _IN_TGT),
        BenchmarkSet("RealBlur-R", "Motion deblur", ("RealBlur_R/test", "RealBlur-R/test"), _IN_TGT),
        BenchmarkSet("DPDD", "Defocus deblur", ("DPDD/test", "DPDD"), (("inputC", "target"), ("test_c/source", "test_c/target"))),
        BenchmarkSet("RealDOF", "Defocus deblur", ("RealDOF",), (("source", "target"),)),
        _clean("CBSD68-q50", "JPEG", _CBSD68, jpeg(50)),
        _clean("Kodak-q50", "JPEG", ("Kodak", "Kodak24"), jpeg(50)),
        _clean("McMaster-q50", "JPEG", ("McMasterHQ", "McMaster"), jpeg(50)),
        _clean("Urban100-q50", "JPEG", ("Urban100",), jpeg(50)),
        BenchmarkSet("SIDD-val", "Real denoise", ("SIDD/val",), (("input", "groundtruth"), ("input", "target"))),
        _clean("Urban100-mosaic", "Demosaic", ("Urban100",), bayer_demosaic),
        BenchmarkSet("RawMoire", "Demoiré", ("raw_moire_image_dataset/testset", "moire/testset"),
                (("moire_RGB", "gt_RGB"),)),
    )),
}


# ---------------------------------------------------------------------------------------------- finding
def _directories(root: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Every folder under ``root`` (itself included) up to ``depth`` levels, shallowest first."""
    found, level = [root], [root]
    for _ in range(depth):
        nxt = []
        for folder in level:
            try:
                nxt += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
        found += nxt
        level = nxt
    return found


def _has_images(folder: Path, recursive: bool) -> bool:
    if not folder.is_dir():
        return False
    files = folder.rglob("*") if recursive else folder.iterdir()
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in files)


def _child(folder: Path, relative: str) -> Path | None:
    """``folder / relative`` with every part matched case-insensitively, or None."""
    for part in Path(relative).parts:
        if part == ".":
            continue
        exact = folder / part
        if exact.is_dir():
            folder = exact
            continue
        folder = next((p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower() == part.lower()), None)
        if folder is None:
            return None
    return folder


def _ends_with(folder: Path, ending: str) -> bool:
    parts = [p.lower() for p in Path(ending).parts]
    return [p.lower() for p in folder.parts[-len(parts):]] == parts


def find_set(bench_set: BenchmarkSet, root: Path, directories: list[Path] | None = None,
             empty: list[Path] | None = None) -> TaskData | None:
    """The set's :class:`TaskData` under ``root``, or None; folders of the expected layout that hold no images
    are appended to ``empty`` (so that a set copied only in part is reported as empty, not as not found)."""
    directories = directories if directories is not None else _directories(root)
    for ending in bench_set.folders:
        for folder in (d for d in directories if _ends_with(d, ending)):
            for lq_sub, gt_sub in bench_set.pairs:
                gt = _child(folder, gt_sub)
                lq = gt if lq_sub is None else _child(folder, lq_sub)
                if not (gt and lq):
                    continue
                if _has_images(gt, bench_set.recursive) and _has_images(lq, bench_set.recursive):
                    return TaskData(bench_set.name, lq, gt, synthesize=bench_set.synthesize,
                                    recursive=bench_set.recursive, y_channel=bench_set.y_channel)
                if empty is not None:
                    empty += [f for f in dict.fromkeys((lq, gt)) if not _has_images(f, bench_set.recursive)]
    return None


def find_benchmark(benchmark: str | Benchmark, root: str | os.PathLike) -> tuple[list[TaskData], list[str]]:
    """(the benchmark's sets found under ``root``, one message per missing set naming the layout it expects)."""
    bench = get_benchmark(benchmark)
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"--datasets: benchmark data folder {root} does not exist")
    directories = _directories(root)
    found, missing = [], []
    for bench_set in bench.sets:
        empty: list[Path] = []
        task = find_set(bench_set, root, directories, empty)
        empty = list(dict.fromkeys(empty))  # several layouts may name the same folders
        if task is not None:
            found.append(task)
        elif empty:
            missing.append(f"{bench_set.name} ({bench_set.task}): {' and '.join(map(str, empty))} "
                           f"{'is' if len(empty) == 1 else 'are'} empty (no {'/'.join(IMAGE_SUFFIXES)} images)")
        else:
            missing.append(f"{bench_set.name} ({bench_set.task}): not found under {root}; expected "
                           f"{bench_set.expected_layout()}")
    return found, missing


def get_benchmark(benchmark: str | Benchmark) -> Benchmark:
    if isinstance(benchmark, Benchmark):
        return benchmark
    if benchmark.lower() not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[benchmark.lower()]


# ---------------------------------------------------------------------------------------------- the table
def benchmark_summary(benchmark: str | Benchmark, result: EvalResult) -> dict[str, Any]:
    """Per task column (mean over its sets in the average) and the average over the tasks found, for the input
    (LQ against GT) and the restorer: ``{"columns": [...], "average": {...}, "extra": [...]}``."""
    bench = get_benchmark(benchmark)
    by_name = {t["task"]: t for t in result.tasks}
    sets = {s.name: s for s in bench.sets}
    metrics = ("input_psnr", "input_ssim", "psnr", "ssim")
    columns = []
    for task in bench.tasks:
        rows = [by_name[s.name] for s in bench.sets if s.task == task and s.in_average and s.name in by_name]
        if rows:
            columns.append({"task": task, "sets": [r["task"] for r in rows],
                            **{m: float(np.mean([r[m] for r in rows])) for m in metrics}})
    average = {"task": "Average", "tasks": len(columns), "of": len(bench.tasks),
               **{m: float(np.mean([c[m] for c in columns])) if columns else math.nan for m in metrics}}
    extra = [{"task": name, **{m: row[m] for m in metrics}} for name, row in by_name.items()
             if name in sets and not sets[name].in_average]
    return {"benchmark": bench.name, "columns": columns, "average": average, "extra": extra}


def format_benchmark_table(summary: dict[str, Any], title: str = "") -> str:
    """The paper's layout: tasks as columns, "PSNR/SSIM" cells, rows for the input, the restorer and the gain."""
    cols = summary["columns"] + [summary["average"]]
    average = summary["average"]
    if average["tasks"] < average["of"]:
        average = {**average, "task": f"Average ({average['tasks']}/{average['of']})"}
        cols[-1] = average
    names = [", ".join(c["sets"]) if len(c.get("sets", [])) == 1 else f"{len(c.get('sets', []))} sets"
             for c in summary["columns"]] + [""]
    width = max([17] + [len(c["task"]) + 2 for c in cols] + [len(n) + 2 for n in names])
    header = f"{'':<12}" + "".join(f"{c['task']:>{width}}" for c in cols)
    lines = [title] if title else []
    lines += [header, f"{'':<12}" + "".join(f"{n:>{width}}" for n in names), "-" * len(header)]
    for label, p, s in (("input (LQ)", "input_psnr", "input_ssim"), ("restored", "psnr", "ssim")):
        lines.append(f"{label:<12}" + "".join(f"{c[p]:.2f}/{c[s]:.4f}".rjust(width) for c in cols))
    lines.append(f"{'gain':<12}" + "".join(f"{c['psnr'] - c['input_psnr']:+.2f}/{c['ssim'] - c['input_ssim']:+.4f}"
                                           .rjust(width) for c in cols))
    for row in summary["extra"]:
        lines.append(f"not in the average: {row['task']}: input {row['input_psnr']:.2f}/{row['input_ssim']:.4f}, "
                     f"restored {row['psnr']:.2f}/{row['ssim']:.4f}")
    return "\n".join(lines)


def evaluate_benchmark(model: nn.Module, benchmark: str | Benchmark, root: str | os.PathLike,
                       out_dir: str | os.PathLike | None = None, config: EvalConfig | None = None,
                       device: str | torch.device | None = None, progress: bool = True,
                       log: Callable[[str], None] = print) -> tuple[EvalResult, dict[str, Any]]:
    """Find the benchmark's sets under ``root``, evaluate ``model`` on them (release protocol by default) and
    log the per-set table and the paper's table; with ``out_dir`` also ``benchmark.json`` beside the
    :func:`~.evaluate.evaluate` files. Raises ValueError when no set is found."""
    import json

    bench = get_benchmark(benchmark)
    tasks, missing = find_benchmark(bench, root)
    for message in missing:
        log(f"missing: {message}")
    if not tasks:
        raise MissingFileError(f"no test set of benchmark {bench.name} found under {root} (each is named above with "
                               "what was expected)")
    result = evaluate(model, tasks, out_dir=out_dir, config=config, device=device, progress=progress, log=log)
    result.notes += [f"missing: {m}" for m in missing]
    summary = benchmark_summary(bench, result)
    summary["missing"] = missing
    log(format_benchmark_table(summary, bench.title))
    if out_dir is not None:
        with open(Path(out_dir) / "benchmark.json", "w") as f:
            json.dump(summary, f, indent=2)
    return result, summary
