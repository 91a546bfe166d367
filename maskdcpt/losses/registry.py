"""The loss terms of pre-training, one table: each term a name (logged as ``loss/<name>``), a function of the step's
outputs and the :class:`LossConfig` field holding its weight. The step sums ``weight · term`` over the terms whose
weight is above 0; a weight of 0 leaves its term out of the graph (the ablations of a sweep).

Add a term here: its weight field in :class:`LossConfig` and its function under ``@register_loss_term`` (see
docs/extending.md).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Literal

import torch

from ..config import ranged
from ..errors import ConfigError
from .focal import focal_loss
from .reconstruction import masked_l1
from .supcon import supervised_contrastive_loss

__all__ = ["LossConfig", "LossInputs", "LossTerm", "LOSS_TERMS", "register_loss_term", "loss_weights", "check_weights",
           "total_loss"]


@dataclass
class LossConfig:
    w_rec: float = ranged(1.0, ge=0)
    w_cls: float = ranged(1.0, ge=0)
    w_con: float = ranged(0.1, ge=0)
    rec_region: Literal["all", "visible", "hidden"] = "visible"  # hidden pixels carry no input, no features
    # "lq": restore the (masked) degraded input, MaskDCPT; "gt": DCPT's generation, the clean image in and out
    rec_source: Literal["lq", "gt"] = "lq"
    # 0: cross-entropy. The release's focal γ 2 (configs/pretrain/*_uir.yaml) learned slower at CPU scale
    # (held-out top-1 22.8 % vs 26.5 % after 800 steps, nafnet_tiny)
    focal_gamma: float = ranged(0.0, ge=0)
    temperature: float = ranged(0.07, gt=0)


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class LossInputs:
    """What a term sees of one step: the model's output ``out`` (a ``MaskDCPTOutput``: ``reconstruction``,
    ``logits``, ``features``, ``visible_pixels()``), the clean images ``gt`` and type ids ``target`` of this rank's
    batch, the loss settings; ``generated``: DCPT's reconstruction of the clean images (``rec_source='gt'``), else
    None; ``gather(t)``: ``t`` of every rank, concatenated, this rank's rows keeping their gradient."""

    out: Any
    gt: torch.Tensor
    target: torch.Tensor
    config: LossConfig
    generated: torch.Tensor | None = None
    gather: Callable[[torch.Tensor], torch.Tensor] = _same
    rank: int = 0
    world_size: int = 1


@dataclass(frozen=True)
class LossTerm:
    name: str
    fn: Callable[[LossInputs], torch.Tensor]
    weight_key: str  # the LossConfig field holding the term's weight


LOSS_TERMS: dict[str, LossTerm] = {}


def register_loss_term(name: str, weight_key: str) -> Callable[[Callable[[LossInputs], torch.Tensor]], Callable]:
    """Decorator: ``fn(LossInputs) → scalar`` becomes the term ``name`` (summed after the terms already there),
    weighted by ``LossConfig.<weight_key>``."""
    if name in LOSS_TERMS:
        raise ValueError(f"loss term {name!r} is registered twice")

    def wrap(fn: Callable[[LossInputs], torch.Tensor]) -> Callable[[LossInputs], torch.Tensor]:
        LOSS_TERMS[name] = LossTerm(name, fn, weight_key)
        return fn

    return wrap


def loss_weights(config: LossConfig) -> dict[str, float]:
    """Every term's weight, by term name; ConfigError when ``config`` has no field for one."""
    known = {f.name for f in fields(config)}
    missing = [t for t in LOSS_TERMS.values() if t.weight_key not in known]
    if missing:
        raise ConfigError(f"loss term {missing[0].name!r} is weighted by loss.{missing[0].weight_key}, which "
                          f"{type(config).__name__} does not have; add the field")
    return {name: getattr(config, term.weight_key) for name, term in LOSS_TERMS.items()}


def check_weights(config: LossConfig) -> None:
    """ConfigError when every weight is 0: nothing would be trained."""
    if not any(w > 0 for w in loss_weights(config).values()):
        keys = [f"loss.{t.weight_key}" for t in LOSS_TERMS.values()]
        listed = f"{', '.join(keys[:-1])} and {keys[-1]} are all" if len(keys) > 1 else f"{keys[0]} is"
        raise ConfigError(f"{listed} 0: nothing to train")


def total_loss(inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(Σ weight · term over the terms weighted above 0, {"loss/<name>": term, …, "loss/total": the sum})."""
    terms: dict[str, torch.Tensor] = {}
    total = inputs.gt.new_zeros(())
    for name, weight in loss_weights(inputs.config).items():
        if weight > 0:
            terms[f"loss/{name}"] = LOSS_TERMS[name].fn(inputs)
            total = total + weight * terms[f"loss/{name}"]
    terms["loss/total"] = total
    return total, terms


# ------------------------------------------------------------------------------------------------ the terms
@register_loss_term("rec", weight_key="w_rec")
def reconstruction(x: LossInputs) -> torch.Tensor:
    """L1 of the reconstruction over ``rec_region``; DCPT's generation: of the clean images' over all pixels."""
    if x.generated is not None:
        return masked_l1(x.generated, x.gt)
    return masked_l1(x.out.reconstruction, x.gt, x.out.visible_pixels(), x.config.rec_region)


@register_loss_term("cls", weight_key="w_cls")
def classification(x: LossInputs) -> torch.Tensor:
    """Focal loss of the degradation type (γ 0: cross-entropy)."""
    return focal_loss(x.out.logits, x.target, x.config.focal_gamma)


@register_loss_term("con", weight_key="w_con")
def contrastive(x: LossInputs) -> torch.Tensor:
    """Supervised contrastive loss of the pooled features over the global batch (every rank's samples)."""
    feats, labels = x.gather(x.out.features.float()), x.gather(x.target)
    # SupCon per rank sums to the global-batch loss; DDP averages gradients over
    # ranks, so scaling by the world size gives the single-process gradient.
    return supervised_contrastive_loss(
        x.out.features, x.target, x.config.temperature, feats, labels, anchor_offset=x.rank * x.target.shape[0]
    ) * x.world_size
