"""The metrics, one table: each row names a metric, how it scores an image, its column header and digits, and
whether it needs the ground truth. Evaluation scores every row (``tools/evaluate.py``'s table, CSV and JSON, in
table order); fine-tuning's validation scores the rows that have a batched form (``batch``).

Add a metric with one :func:`register_metric` call (a row below, or in a module of your own imported before the
evaluation): see docs/extending.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .metrics import psnr, psnr_torch, ssim, ssim_torch

__all__ = ["Images", "Metric", "MetricSkipped", "METRICS", "register_metric", "prepare_metrics", "score_images"]


@dataclass
class Images:
    """What a metric scores: a restored image ``out`` beside its input ``lq`` and ground truth ``gt`` ((3, H, W)
    float in [0, 1]; ``gt`` None where there is none), with the evaluation's settings; ``scores``: the metrics
    already scored for this image, by name (for differences such as ``gain_psnr``)."""

    out: torch.Tensor
    lq: torch.Tensor
    gt: torch.Tensor | None
    crop_border: int = 0
    y_channel: bool = False
    data_range: str = "float"
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`.metrics.psnr` / :func:`.metrics.ssim`."""
        return {"crop_border": self.crop_border, "y_channel": self.y_channel, "data_range": self.data_range}


class MetricSkipped(Exception):
    """Raised by a metric's ``prepare`` to leave it out of one evaluation; a non-empty message becomes a note."""


@dataclass(frozen=True)
class Metric:
    """One row of the table.

    fn: ``fn(images) → float``, the score of one image (NaN: undefined, left out of the means).
    header, digits: the console table's column title and decimals. needs_gt: a full-reference metric.
    signed: a difference, shown with its sign. batch: ``batch(pred, gt) → (B,)`` on (B, 3, H, W) tensors on their
    device, the same definition, for validation during training. prepare: ``prepare(config, device) → fn``, called
    once per evaluation instead of using ``fn`` (to load a network), may raise :class:`MetricSkipped`.
    nan_note: noted after the table when some images scored NaN (``{count}`` is their number).
    """

    name: str
    header: str
    digits: int
    fn: Callable[[Images], float] | None = None
    needs_gt: bool = True
    signed: bool = False
    batch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    prepare: Callable[[Any, torch.device], Callable[[Images], float]] | None = None
    nan_note: str | None = None

    def __post_init__(self) -> None:
        if (self.fn is None) == (self.prepare is None):
            raise ValueError(f"metric {self.name!r}: give exactly one of fn and prepare")


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to the table (after the rows already there); a name registered twice is refused."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is registered twice")
    METRICS[metric.name] = metric
    return metric


def prepare_metrics(config: Any, device: torch.device, note: Callable[[str], None]) -> dict[str, Callable[[Images], float]]:
    """The scoring function of every metric that takes part in an evaluation with ``config`` (an
    :class:`~.evaluate.EvalConfig`), in table order; ``note`` receives why one is left out."""
    scorers = {}
    for metric in METRICS.values():
        try:
            scorers[metric.name] = metric.prepare(config, device) if metric.prepare is not None else metric.fn
        except MetricSkipped as skipped:
            if str(skipped):
                note(str(skipped))
    return scorers


def score_images(images: Images, scorers: dict[str, Callable[[Images], float]]) -> dict[str, float]:
    """Every score of one image, in table order (each metric sees the ones before it in ``images.scores``)."""
    for name, fn in scorers.items():
        if images.gt is None and METRICS[name].needs_gt:
            raise ValueError(f"metric {name!r} needs the ground truth")
        images.scores[name] = fn(images)
    return dict(images.scores)


# ------------------------------------------------------------------------------------------------ the rows
def _lpips(config: Any, device: torch.device) -> Callable[[Images], float]:
    from . import lpips as lpips_module

    reason = lpips_module.unavailable_reason(config.lpips_weights)
    if reason is not None:
        raise MetricSkipped(f"LPIPS skipped: {reason}")
    model = lpips_module.load_lpips(config.lpips_weights, device=device)

    def score(x: Images) -> float:
        with torch.inference_mode():
            return float(model(x.out[None].to(device), x.gt[None].to(device))[0])

    return score


def _niqe(config: Any, device: torch.device) -> Callable[[Images], float]:
    from .niqe import niqe

    if not config.compute_niqe:
        raise MetricSkipped("")

    def score(x: Images) -> float:
        try:
            return niqe(x.out, crop_border=x.crop_border)
        except ValueError:  # fewer than two 96×96 blocks
            return math.nan

    return score


register_metric(Metric("psnr", "PSNR", 2, lambda x: psnr(x.out, x.gt, **x.options), batch=psnr_torch))
register_metric(Metric("ssim", "SSIM", 4, lambda x: ssim(x.out, x.gt, **x.options), batch=ssim_torch))
register_metric(Metric("lpips", "LPIPS", 4, prepare=_lpips))
register_metric(Metric("niqe", "NIQE", 3, prepare=_niqe, needs_gt=False,
                       nan_note="NIQE undefined for {count} images with fewer than two 96x96 blocks (NaN, left out of means)"))
register_metric(Metric("input_psnr", "LQ PSNR", 2, lambda x: psnr(x.lq, x.gt, **x.options)))
register_metric(Metric("input_ssim", "LQ SSIM", 4, lambda x: ssim(x.lq, x.gt, **x.options)))
register_metric(Metric("gain_psnr", "gain dB", 2, lambda x: x.scores["psnr"] - x.scores["input_psnr"], signed=True))
register_metric(Metric("gain_ssim", "gain SSIM", 4, lambda x: x.scores["ssim"] - x.scores["input_ssim"], signed=True))
