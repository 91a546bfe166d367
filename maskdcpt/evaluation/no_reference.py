"""No-reference evaluation of restored real photographs, which have no ground truth.

``score_folder(outputs, inputs)`` scores every image of ``outputs`` with NIQE and PIQE (lower is better for
both; NIQE on MATLAB's scale, PIQE on [0, 100], see :mod:`.niqe` and :mod:`.piqe`). With the folder of the
degraded ``inputs`` (matched by file name, else stem) it also scores the inputs, so the table shows whether the
restorer improved them, and, when LPIPS weights are on disk, LPIPS between each output and its input: a
perceptual-consistency check (did the restorer change the scene rather than remove the degradation? 0 =
unchanged; a large value with a better NIQE/PIQE is a warning sign, not a success). Writes
``no_reference.csv`` (per image) and ``no_reference.json`` (per image, means and notes).
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .evaluate import _jsonable
from .niqe import niqe
from .piqe import piqe
from ..errors import DataError
from .restore import IMAGE_SUFFIXES, list_images, read_rgb


@dataclass
class NoReferenceResult:
    """``images``: one row per output; ``mean``: means over the images (NaNs left out); ``notes``."""

    metrics: list[str]
    images: list[dict[str, Any]] = field(default_factory=list)
    mean: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _niqe_or_nan(img: torch.Tensor, crop_border: int) -> float:
    try:
        return niqe(img, crop_border=crop_border)
    except ValueError:  # fewer than two 96×96 blocks, or flat
        return math.nan


def _match(outputs: list[Path], inputs_dir: Path) -> dict[Path, Path]:
    inputs = list_images(inputs_dir)
    by_name = {p.name: p for p in inputs}
    by_stem = {p.stem: p for p in inputs}
    matched = {o: by_name.get(o.name) or by_stem.get(o.stem) for o in outputs}
    unmatched = [o.name for o, i in matched.items() if i is None]
    if unmatched:
        more = f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else ""
        raise DataError(f"--inputs: no image in {inputs_dir} has the name (or stem) of {len(unmatched)} of the "
                        f"{len(outputs)} outputs: {', '.join(unmatched[:10])}{more}; inputs and outputs are matched by "
                        "file name")
    return matched


def score_folder(outputs: str | os.PathLike, inputs: str | os.PathLike | None = None,
                 lpips_weights: str | None = None, out_dir: str | os.PathLike | None = None,
                 crop_border: int = 0, piqe_convention: str = "matlab", device: str | torch.device = "cpu",
                 progress: bool = True, log: Callable[[str], None] = print) -> NoReferenceResult:
    """NIQE and PIQE of every image in ``outputs`` (and of its input), LPIPS(output, input) when weights exist."""
    from tqdm import tqdm

    from . import lpips as lpips_module

    outputs = Path(outputs)
    files = list_images(outputs)
    if not files:
        raise DataError(f"--no-reference: no images ({', '.join(IMAGE_SUFFIXES)}) in {outputs}")
    matched = _match(files, Path(inputs)) if inputs is not None else {}
    metrics = ["niqe", "piqe"]
    notes = []
    lpips_model = None
    if inputs is not None:
        metrics = ["niqe", "piqe", "input_niqe", "input_piqe"]
        reason = lpips_module.unavailable_reason(lpips_weights)
        if reason is None:
            lpips_model = lpips_module.load_lpips(lpips_weights, device=device)
            metrics.append("lpips_to_input")
        else:
            notes.append(f"LPIPS skipped: {reason}")
    result = NoReferenceResult(metrics=metrics, notes=notes)
    for path in tqdm(files, desc="no-reference", unit="img", disable=not progress):
        out, _ = read_rgb(path)
        row: dict[str, Any] = {"image": path.name, "niqe": _niqe_or_nan(out, crop_border),
                               "piqe": piqe(out, convention=piqe_convention)}
        if inputs is not None:
            inp, _ = read_rgb(matched[path])
            row["input"] = matched[path].name
            row["input_niqe"] = _niqe_or_nan(inp, crop_border)
            row["input_piqe"] = piqe(inp, convention=piqe_convention)
            if lpips_model is not None:
                if inp.shape != out.shape:
                    raise DataError(f"{path} is {tuple(out.shape[1:])} but its input {matched[path]} is "
                                     f"{tuple(inp.shape[1:])}: LPIPS needs one size")
                with torch.inference_mode():
                    row["lpips_to_input"] = float(lpips_model(out[None].to(device), inp[None].to(device))[0])
        result.images.append(row)
    result.mean = {"image": "mean", **{m: _nanmean([r[m] for r in result.images]) for m in metrics}}
    small = sum(math.isnan(r["niqe"]) for r in result.images)
    if small:
        result.notes.append(f"NIQE undefined for {small} outputs with fewer than two 96x96 blocks or no contrast "
                            "(NaN, left out of the mean)")
    for note in result.notes:
        log(note)
    log(format_no_reference_table(result))
    if out_dir is not None:
        write_no_reference(result, out_dir)
    return result


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def format_no_reference_table(result: NoReferenceResult) -> str:
    """Rows: the inputs (when given), the outputs and the change; NIQE and PIQE means, LPIPS to the input."""
    m = result.mean
    count = len(result.images)
    header = f"{'':<10}{'images':>8}{'NIQE':>10}{'PIQE':>10}" + (
        f"{'LPIPS to input':>16}" if "lpips_to_input" in result.metrics else "")
    lines = [header, "-" * len(header)]
    if "input_niqe" in result.metrics:
        lines.append(f"{'inputs':<10}{count:>8}{m['input_niqe']:>10.3f}{m['input_piqe']:>10.2f}")
    outputs = f"{'outputs':<10}{count:>8}{m['niqe']:>10.3f}{m['piqe']:>10.2f}"
    if "lpips_to_input" in result.metrics:
        outputs += f"{m['lpips_to_input']:>16.4f}"
    lines.append(outputs)
    if "input_niqe" in result.metrics:
        lines.append(f"{'change':<10}{'':>8}{m['niqe'] - m['input_niqe']:>+10.3f}{m['piqe'] - m['input_piqe']:>+10.2f}")
    lines.append("NIQE and PIQE: lower is better (a negative change is an improvement); LPIPS to input: how much "
                 "the restorer changed the scene (0 = unchanged)" if "input_niqe" in result.metrics else
                 "NIQE and PIQE: lower is better")
    return "\n".join(lines)


def write_no_reference(result: NoReferenceResult, out_dir: str | os.PathLike) -> None:
    """``no_reference.csv`` (per image, then the mean) and ``no_reference.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = ["image", *(["input"] if "input_niqe" in result.metrics else []), *result.metrics]
    with open(out_dir / "no_reference.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(result.images + [result.mean])
    with open(out_dir / "no_reference.json", "w") as f:
        json.dump(_jsonable(asdict(result)), f, indent=2)
