"""MaskDCPT pre-training: masked LQ → backbone → classifier + reconstruction head.

Loss = w_rec·L1(reconstruction, GT) over a region of the mask (all / visible / hidden)
     + w_cls·focal(logits, type, γ)
     + w_con·SupCon(pooled features, type, τ)
A weight of 0 removes its term from the graph (the ablations of a sweep).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..config import fixed_field, load_config, ranged
from ..errors import ConfigError
from ..data.config import DataConfig
from ..losses import focal_loss, masked_l1, supervised_contrastive_loss
from ..models import build_maskdcpt
from ..models.checkpoint import ENCODER_FORMAT, save_weights
from ..models.maskdcpt import MaskDCPTOutput
from ..models.masking import random_keep_map
from .distributed import DistInfo, gather_with_grad
from .logging import TensorBoardLogger, confusion_matrix, image_grid, render_confusion
from .optim import OptimConfig, ParamGroup, weight_decay_groups
from .run import RunConfig, run_task
from .trainer import StepOutput, Task, TrainConfig

# a stream id so that mask draws never coincide with the data's draws of the same seed
_MASK_STREAM = 0x4D41534B


@dataclass
class ModelConfig:
    """The network; a resumed run keeps name, num_classes and kwargs (its checkpoint's shapes), while the
    masking (mask_ratio, patch_size) may change."""

    name: str = fixed_field("nafnet_tiny")
    num_classes: int = ranged(19, ge=1, fixed=True)
    mask_ratio: float = ranged(0.5, ge=0, lt=1)  # 0 = the "no mask" ablation
    patch_size: int | None = ranged(None, ge=1)  # None: the backbone's total stride (16 NAFNet, 8 others)
    kwargs: dict[str, Any] = fixed_field(default_factory=dict)  # overrides of the backbone factory


@dataclass
class LossConfig:
    w_rec: float = ranged(1.0, ge=0)
    w_cls: float = ranged(1.0, ge=0)
    w_con: float = ranged(0.1, ge=0)
    rec_region: Literal["all", "visible", "hidden"] = "all"
    focal_gamma: float = ranged(2.0, ge=0)
    temperature: float = ranged(0.07, gt=0)


def _demo_optim() -> OptimConfig:
    # The defaults are the tiny CPU run of `python tools/pretrain.py`: a few hundred steps, so a
    # higher rate than the release recipe's (3e-4 / 1e-4, in configs/pretrain/*.yaml) and a short
    # warm-up; measured: L1 0.20 vs 0.30 after 300 steps.
    return OptimConfig(lr=2e-3, classifier_lr=1e-3, warmup_steps=20)


@dataclass
class PretrainConfig:
    """Defaults: the tiny CPU demo run; the release-size recipes are configs/pretrain/*.yaml."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=_demo_optim)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)  # name None: "pretrain_<model.name>"


def load_pretrain_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> PretrainConfig:
    cfg = load_config(PretrainConfig, path, overrides)
    validate(cfg)
    return cfg


def validate(cfg: PretrainConfig) -> None:
    """What the per-field ranges cannot say: values that depend on each other or on the model registry."""
    from ..models import get_model_cfg, list_models

    loss = cfg.loss
    if loss.w_rec == loss.w_cls == loss.w_con == 0:
        raise ConfigError("loss.w_rec, loss.w_cls and loss.w_con are all 0: nothing to train")
    if loss.rec_region == "hidden" and cfg.model.mask_ratio == 0:
        raise ConfigError("loss.rec_region='hidden' needs model.mask_ratio > 0 (nothing is hidden)")
    if cfg.model.name not in list_models():
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}; registered: {', '.join(list_models())}")
    stride = get_model_cfg(cfg.model.name).stride
    patch = cfg.model.patch_size
    if patch is not None and patch % stride and "stride" not in cfg.model.kwargs:
        raise ConfigError(f"model.patch_size: {patch} is not a multiple of {cfg.model.name}'s stride {stride} "
                          f"(a mask cell must cover whole feature cells); use {stride}, {2 * stride}, … or leave it unset")


def run_dir(cfg: PretrainConfig) -> Path:
    return Path(cfg.run.output_dir) / (cfg.run.name or f"pretrain_{cfg.model.name}")


def keep_maps(indices: Sequence[int], grid: tuple[int, int], mask_ratio: float, seed: int) -> torch.Tensor:
    """One keep map per sample, drawn from (seed, global sample index) alone, so a sample is
    masked the same whatever the number of ranks, the accumulation or a resume."""
    maps = []
    for index in indices:
        state = np.random.SeedSequence([seed, _MASK_STREAM, int(index)]).generate_state(2, dtype=np.uint32)
        g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        maps.append(random_keep_map(1, grid, mask_ratio, generator=g))
    return torch.cat(maps, dim=0)


class _OutputsAsDict(nn.Module):
    """DDP looks for the forward's output tensors in tuples and dicts, not dataclasses; without
    finding them it cannot tell unused parameters (a loss weight of 0) from late ones."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, lq: torch.Tensor, keep: torch.Tensor) -> dict[str, Any]:
        out = self.model(lq, keep=keep)
        return {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}


class PretrainTask(Task):
    """MaskDCPT's objective on top of a ``MaskDCPT`` module."""

    def __init__(self, cfg: PretrainConfig, dist: DistInfo):
        self.cfg, self.dist = cfg, dist
        m = cfg.model
        self.model = build_maskdcpt(m.name, num_classes=m.num_classes, mask_ratio=m.mask_ratio, patch_size=m.patch_size, **m.kwargs)
        loss = cfg.loss
        self.has_unused_parameters = 0.0 in (loss.w_rec, loss.w_cls, loss.w_con)
        self._outputs_as_dict = _OutputsAsDict(self.model)
        self._preds: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    @property
    def forward_module(self) -> nn.Module:
        return self._outputs_as_dict

    # parameter groups: DCPT trains G and the classifier with their own AdamW settings
    def param_groups(self, optim: OptimConfig) -> list[ParamGroup]:
        classifier = [(n, p) for n, p in self.model.named_parameters() if n.startswith("classifier.")]
        others = [(n, p) for n, p in self.model.named_parameters() if not n.startswith("classifier.")]
        return [
            *weight_decay_groups("backbone", others, optim.lr, optim.weight_decay),
            *weight_decay_groups("classifier", classifier, optim.classifier_lr, optim.classifier_weight_decay),
        ]

    def step(self, model: nn.Module, batch: dict[str, Any], step: int) -> StepOutput:
        cfg = self.cfg
        lq, gt, target = batch["lq"], batch["gt"], batch["type_id"]
        patch = self.model.patch_size
        h, w = lq.shape[-2:]
        grid = (-(-h // patch), -(-w // patch))
        keep = keep_maps(batch["index"].tolist(), grid, cfg.model.mask_ratio, cfg.train.seed).to(lq.device)
        out = model(lq, keep=keep)
        if isinstance(out, dict):
            out = MaskDCPTOutput(**out)
        terms: dict[str, torch.Tensor] = {}
        total = lq.new_zeros(())
        loss = cfg.loss
        if loss.w_rec > 0:
            terms["loss/rec"] = masked_l1(out.reconstruction, gt, out.visible_pixels(), loss.rec_region)
            total = total + loss.w_rec * terms["loss/rec"]
        if loss.w_cls > 0:
            terms["loss/cls"] = focal_loss(out.logits, target, loss.focal_gamma)
            total = total + loss.w_cls * terms["loss/cls"]
        if loss.w_con > 0:
            feats = gather_with_grad(out.features.float(), self.dist)
            labels = gather_with_grad(target, self.dist) if self.dist.enabled else target
            # SupCon per rank sums to the global-batch loss; DDP averages gradients over
            # ranks, so scaling by the world size gives the single-process gradient.
            con = supervised_contrastive_loss(
                out.features, target, loss.temperature, feats, labels, anchor_offset=self.dist.rank * lq.shape[0]
            ) * self.dist.world_size
            terms["loss/con"] = con
            total = total + loss.w_con * con
        terms["loss/total"] = total
        return StepOutput(total, terms, {"out": out})

    def metrics(self, out: StepOutput, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        pred = out.extras["out"].logits.detach().argmax(dim=1)
        if self.dist.is_main:
            self._preds.append(pred.cpu().numpy())
            self._targets.append(batch["type_id"].cpu().numpy())
        return {"metrics/top1": (pred == batch["type_id"]).float().mean()}

    def images(self, out: StepOutput, batch: dict[str, Any], logger: TensorBoardLogger, step: int) -> None:
        o = out.extras["out"]
        masked = batch["lq"] * o.visible_pixels()
        grid = image_grid([batch["lq"], masked, o.reconstruction, batch["gt"]])
        logger.image("images/lq_masked_reconstruction_gt", grid, step)
        if self._preds:
            from degradations import TYPE_NAMES

            names = list(TYPE_NAMES) if self.cfg.model.num_classes == len(TYPE_NAMES) else [str(i) for i in range(self.cfg.model.num_classes)]
            counts = confusion_matrix(np.concatenate(self._preds), np.concatenate(self._targets), self.cfg.model.num_classes)
            logger.image("classification/confusion", render_confusion(counts, names), step, dataformats="HWC")
            self._preds, self._targets = [], []

    def export(self, run_dir: Path) -> None:
        export_encoder_weights(self.model, self.cfg, run_dir / "encoder.safetensors")

    def weights_metadata(self) -> dict[str, Any]:
        m = self.cfg.model
        return {"format": "maskdcpt-pretraining", "model_name": m.name, "model_kwargs": m.kwargs,
                "num_classes": m.num_classes, "mask_ratio": m.mask_ratio, "patch_size": self.model.patch_size}


def export_encoder_weights(model: nn.Module, cfg: PretrainConfig, path: Path) -> Path:
    """The backbone's weights (what fine-tuning loads strictly into the dense restorer)."""
    meta = {"format": ENCODER_FORMAT, "model_name": cfg.model.name, "model_kwargs": cfg.model.kwargs}
    save_weights(model.backbone.state_dict(), path, meta)
    return path


def run_pretraining(cfg: PretrainConfig, resume: bool | str = "auto") -> dict[str, Any]:
    """A complete pre-training run in ``run_dir(cfg)``; resumes from its last checkpoint."""
    validate(cfg)
    out_dir = run_dir(cfg)
    return run_task(
        cfg, out_dir, PretrainTask, resume,
        finished=lambda m: f"done at step {m['step']}: {out_dir.resolve()} (tensorboard --logdir {out_dir / 'tensorboard'})",
    )
