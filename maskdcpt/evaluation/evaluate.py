"""Evaluate a restorer on paired test sets: PSNR/SSIM per image, per task and overall, beside the input's own
PSNR/SSIM (LQ against GT) and the gain; LPIPS when its weights are on disk, NIQE of the outputs (the rows of the
metric table, :mod:`.registry`, in its order); a console table, CSV and JSON files.

Data is either

* a paired folder with ``LQ/`` and ``GT/`` subfolders (one task, named after the folder), or a folder whose
  subfolders are such paired folders (one task each), or
* a YAML file ``{tasks: [{name: derain, lq: DIR, gt: DIR}, ...]}`` (relative paths are relative to the file), or
* :class:`TaskData` lists built by :mod:`.benchmarks` (the published test sets, some with LQ made from GT).

An LQ image's ground truth is the GT file of the same name, else of the same stem, else the GT whose stem is
the LQ stem's part before the first ``_`` (SOTS-outdoor: ``0001_0.8_0.2.jpg`` → ``0001.png``), else the only GT
with the same first number in its stem (``rain-001`` → ``norain-001``, ``low00690`` → ``normal00690``).

"Overall" is the mean of the per-task means (the "average" column of the papers), and also reported is the mean
over all images pooled. ``gain_psnr`` / ``gain_ssim`` = restored − input: negative means the restorer made the
images worse than doing nothing.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn as nn

from ..config import load_config, ranged
from ..errors import ConfigError, DataError, MissingFileError
from .registry import METRICS, Images, prepare_metrics, score_images
from .restore import list_images, read_rgb, restore_image, with_prior, write_rgb


@dataclass(frozen=True)
class TaskData:
    """One test set: a name and its low-quality and ground-truth folders.

    ``synthesize``: makes the LQ from the GT ((3, H, W) float32 [0, 1] → same), for sets published as clean
    images only (``lq`` is then the GT folder); ``recursive``: images in subfolders too, matched by relative
    path; ``y_channel``: the set's own metric convention, None = the evaluation's setting."""

    name: str
    lq: Path
    gt: Path
    synthesize: Callable[[torch.Tensor], torch.Tensor] | None = None
    recursive: bool = False
    y_channel: bool | None = None


@dataclass
class EvalConfig:
    """How metrics are computed (BasicSR semantics, see :mod:`maskdcpt.evaluation.metrics`) and what runs."""

    crop_border: int = ranged(0, ge=0)
    y_channel: bool = False
    data_range: Literal["float", "uint8"] = "float"
    tile: int | None = ranged(None, ge=1)  # restore in overlapping tiles of this size (memory bound), None = whole image
    overlap: int = ranged(32, ge=0)
    compute_niqe: bool = True
    lpips_weights: str | None = None  # None: $MASKDCPT_LPIPS_WEIGHTS; LPIPS is skipped without a weights file
    save_images: bool = False  # write the restored images under <out>/images/<task>/
    prior: str | None = None  # generative restorations of the LQ images (by name), for prior-conditioned models

    def __post_init__(self):
        if self.data_range not in ("float", "uint8"):
            raise ConfigError(f"data_range must be 'float' or 'uint8', got {self.data_range!r}")
        if self.crop_border < 0:
            raise ConfigError(f"crop_border must be >= 0, got {self.crop_border}")


@dataclass
class EvalResult:
    """``images``: one row per image (task, image, metric values); ``tasks``: per-task means and counts;
    ``overall``: mean of task means; ``pooled``: mean over all images; ``notes``: what was skipped and why."""

    config: dict[str, Any]
    images: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    overall: dict[str, Any] = field(default_factory=dict)
    pooled: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- data sets
def _find_sub(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_dir()), None)


_LQ_NAMES = ("LQ", "lq", "input", "Input")
_GT_NAMES = ("GT", "gt", "target", "Target")


def load_tasks(data: str | os.PathLike) -> list[TaskData]:
    """The test sets named by a paired folder, a folder of paired folders, or a YAML task list."""
    data = Path(data)
    if data.is_file() and data.suffix.lower() in (".yml", ".yaml"):
        return _tasks_from_yaml(data)
    if not data.is_dir():
        raise MissingFileError(f"evaluation data {data} is neither a folder nor a .yml/.yaml task list")
    lq, gt = _find_sub(data, _LQ_NAMES), _find_sub(data, _GT_NAMES)
    if lq and gt:
        return [TaskData(data.name, lq, gt)]
    tasks = []
    for sub in sorted(p for p in data.iterdir() if p.is_dir()):
        lq, gt = _find_sub(sub, _LQ_NAMES), _find_sub(sub, _GT_NAMES)
        if lq and gt:
            tasks.append(TaskData(sub.name, lq, gt))
    if not tasks:
        raise DataError(f"{data}: no LQ/ and GT/ subfolders, neither here nor in its subfolders")
    return tasks


@dataclass
class TaskEntry:
    """One test set of a task file; relative folders are relative to the file."""

    name: str
    lq: str
    gt: str


@dataclass
class TaskFile:
    """A YAML task list: ``{tasks: [{name: derain, lq: DIR, gt: DIR}, ...]}``."""

    tasks: list[TaskEntry]

    def __post_init__(self):
        if not self.tasks:
            raise ConfigError("tasks: expected a non-empty list of {name, lq, gt}")
        seen = set()
        for i, task in enumerate(self.tasks):
            if task.name in seen:
                raise ConfigError(f"tasks[{i}].name: task name {task.name!r} appears twice")
            seen.add(task.name)


def _tasks_from_yaml(path: Path) -> list[TaskData]:
    tasks = []
    for i, entry in enumerate(load_config(TaskFile, path).tasks):
        folders = []
        for key in ("lq", "gt"):
            folder = Path(getattr(entry, key)).expanduser()
            folder = folder if folder.is_absolute() else path.parent / folder
            if not folder.is_dir():
                raise DataError(f"tasks[{i}].{key}: {key} folder {folder} of task {entry.name!r} does not exist "
                                 f"(in {path})")
            folders.append(folder)
        tasks.append(TaskData(entry.name, *folders))
    return tasks


def _first_number(stem: str) -> str | None:
    found = re.search(r"\d+", stem)
    return (found.group().lstrip("0") or "0") if found else None


def pair_images(task: TaskData) -> list[tuple[Path, Path]]:
    """(LQ, GT) file pairs of a task, sorted by LQ name; every LQ must have a GT (module docstring)."""
    lqs, gts = list_images(task.lq, task.recursive), list_images(task.gt, task.recursive)
    if not lqs:
        raise DataError(f"task {task.name}: no images in {task.lq}")
    if task.synthesize is not None:
        return [(p, p) for p in gts]

    def key(path: Path, root: Path) -> str:
        return str(path.relative_to(root).with_suffix("")) if task.recursive else path.stem

    by_name = {str(p.relative_to(task.gt)): p for p in gts}
    by_stem = {key(p, task.gt): p for p in gts}
    numbers: dict[str | None, list[Path]] = {}
    for p in gts:
        numbers.setdefault(_first_number(p.stem), []).append(p)
    pairs, unmatched = [], []
    for lq in lqs:
        stem = key(lq, task.lq)
        number = _first_number(lq.stem)
        by_number = numbers.get(number, []) if number is not None else []
        gt = (by_name.get(str(lq.relative_to(task.lq))) or by_stem.get(stem) or by_stem.get(stem.split("_")[0])
              or (by_number[0] if len(by_number) == 1 and not task.recursive else None))
        if gt is None:
            unmatched.append(lq.name)
        else:
            pairs.append((lq, gt))
    if unmatched:
        raise DataError(f"task {task.name}: no ground truth in {task.gt} for {len(unmatched)} LQ images: "
                         f"{', '.join(unmatched[:10])}")
    return pairs


# ---------------------------------------------------------------------------------------------- evaluate
def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _summary(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, Any]:
    return {"count": len(rows), **{m: _mean([r[m] for r in rows]) for m in metrics}}


def evaluate(model: nn.Module, data: str | os.PathLike | list[TaskData], out_dir: str | os.PathLike | None = None,
             config: EvalConfig | None = None, device: str | torch.device | None = None, progress: bool = True,
             log: Callable[[str], None] = print) -> EvalResult:
    """Restore every LQ image of every task with ``model`` and score it against its GT.

    Returns an :class:`EvalResult`; with ``out_dir`` also writes ``per_image.csv``, ``per_task.csv`` and
    ``results.json`` there (and the restored images with ``config.save_images``), and logs the table.
    """
    from tqdm import tqdm

    config = config or EvalConfig()
    tasks = data if isinstance(data, list) else load_tasks(data)
    result = EvalResult(config=asdict(config))
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device

    def note(text: str) -> None:
        result.notes.append(text)
        log(text)

    scorers = prepare_metrics(config, device, note)  # the table's metrics (evaluation/registry.py) that take part
    metrics = list(scorers)
    for task in tasks:
        pairs = pair_images(task)
        rows = []
        for lq_path, gt_path in tqdm(pairs, desc=task.name, unit="img", disable=not progress):
            gt, bits = read_rgb(gt_path)
            lq = task.synthesize(gt) if task.synthesize is not None else read_rgb(lq_path)[0]
            if lq.shape != gt.shape:
                raise DataError(f"task {task.name}: {lq_path} is {tuple(lq.shape[1:])} but its GT {gt_path} is "
                                 f"{tuple(gt.shape[1:])}")
            model_input = with_prior(model, lq, lq_path, config.prior)
            out = restore_image(model, model_input, tile=config.tile, overlap=config.overlap, device=device)
            name = str(lq_path.relative_to(task.lq)) if task.recursive else lq_path.name
            y_channel = config.y_channel if task.y_channel is None else task.y_channel
            images = Images(out, lq, gt, config.crop_border, y_channel, config.data_range)
            row: dict[str, Any] = {"task": task.name, "image": name, **score_images(images, scorers)}
            if config.save_images and out_dir is not None:
                write_rgb(Path(out_dir) / "images" / task.name / name, out, bits)
            rows.append(row)
        result.images += rows
        result.tasks.append({"task": task.name, **_summary(rows, metrics)})
    result.overall = {"task": "overall (mean of tasks)", "count": len(result.images),
                      **{m: _mean([t[m] for t in result.tasks]) for m in metrics}}
    result.pooled = {"task": "all images", **_summary(result.images, metrics)}
    log(format_table(result, metrics))
    for metric in (METRICS[m] for m in metrics if METRICS[m].nan_note):
        undefined = sum(math.isnan(r[metric.name]) for r in result.images)
        if undefined:
            note(metric.nan_note.format(count=undefined))
    if out_dir is not None:
        write_results(result, out_dir, metrics)
    return result


# ------------------------------------------------------------------------------------------------ output
def _cell(value: float, metric: str) -> str:
    row = METRICS[metric]
    return f"{value:+.{row.digits}f}" if row.signed and math.isfinite(value) else f"{value:.{row.digits}f}"


def format_table(result: EvalResult, metrics: list[str]) -> str:
    """A fixed-width console table: one line per task, then the overall and pooled lines. "LQ" columns score
    the input itself against GT; a task whose restored PSNR is below its input's is marked."""
    rows = result.tasks + [result.overall, result.pooled]
    width = max(len(str(r["task"])) for r in rows) + 2
    header = f"{'task':<{width}}{'images':>8}" + "".join(f"{METRICS[m].header:>11}" for m in metrics)
    lines = [header, "-" * len(header)]
    for i, r in enumerate(rows):
        if i == len(result.tasks):
            lines.append("-" * len(header))
        line = f"{r['task']:<{width}}{r['count']:>8}" + "".join(f"{_cell(r[m], m):>11}" for m in metrics)
        if r.get("gain_psnr", 0) < 0:
            line += "  <- worse than the input"
        lines.append(line)
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf" / "nan": strict JSON has no such numbers
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def write_results(result: EvalResult, out_dir: str | os.PathLike, metrics: list[str]) -> None:
    """``per_image.csv``, ``per_task.csv`` (with the overall and pooled lines) and ``results.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["task", "image", *metrics])
        writer.writeheader()
        writer.writerows(result.images)
    with open(out_dir / "per_task.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["task", "count", *metrics])
        writer.writeheader()
        writer.writerows(result.tasks + [result.overall, result.pooled])
    with open(out_dir / "results.json", "w") as f:
        json.dump(_jsonable(asdict(result)), f, indent=2)


if __name__ == "__main__":  # python -m maskdcpt.evaluation.evaluate: say where the command is instead of doing nothing
    raise SystemExit(f"error: {__spec__.name} is a library module; run python tools/evaluate.py --help "
                     "(python -m maskdcpt lists every tool)")
