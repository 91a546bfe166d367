"""MaskDCPT pre-training: masked LQ → backbone → classifier + reconstruction head.

Loss = w_rec·L1(reconstruction, GT) over a region of the mask (all / visible / hidden)
     + w_cls·focal(logits, type, γ)
     + w_con·SupCon(pooled features, type, τ)
A weight of 0 removes its term from the graph (the ablations of a sweep). The terms and their weights are the
table of :mod:`maskdcpt.losses.registry`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn as nn

from degradations import NUM_TYPES, EngineConfig

from ..config import fixed_field, load_config, ranged
from ..errors import ConfigError
from ..data.config import DataConfig
from ..data.validation import ValConfig, ValidationSet, ValTask, build_validation_set
from ..evaluation.metrics import psnr_from_mse
from ..evaluation.stats import bootstrap_interval
from ..io import save_weights
from ..losses import LossConfig, LossInputs, check_weights, loss_weights, total_loss
from ..models import build_maskdcpt
from ..models.checkpoint import ENCODER_FORMAT
from ..models.maskdcpt import MaskDCPTOutput
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
    num_classes: int | None = ranged(None, ge=1, fixed=True)  # None: the engine's types (19 + data.engine.extra_types)
    mask_ratio: float = ranged(0.5, ge=0, lt=1)  # 0 = the "no mask" ablation
    patch_size: int | None = ranged(None, ge=1)  # None: the backbone's total stride (16 NAFNet, 8 others)
    rec_residual: bool = True  # reconstruction = head(features) + visible input, as the restorer computes
    # "layer": the release's classifier (see models/classifier.py); fixed: BatchNorm adds running statistics
    classifier_norm: Literal["batch", "layer"] = fixed_field("batch")
    # bottlenecks per level. The releases' 2 (configs/pretrain/*_uir.yaml) cost twice the backbone on CPU at tiny
    # width; 1 learned faster per second (held-out top-1 after 260 steps of the 5-minute run: 32.9 % vs 17.5 %, with
    # the classifier's rate 5e-3)
    classifier_blocks: int = ranged(1, ge=1, fixed=True)
    zero_init_head: bool = True  # the output projection starts at 0: the reconstruction starts as the visible input
    sparse_classifier: bool = True  # the classifier normalises and pools the visible positions only
    kwargs: dict[str, Any] = fixed_field(default_factory=dict)  # overrides of the backbone factory


def _demo_optim() -> OptimConfig:
    # The CPU recipe (configs/pretrain/nafnet_cpu.yaml) cut short: a few hundred steps, so a higher rate than
    # the release's (3e-4 / 1e-4, in configs/pretrain/*_uir.yaml) and a short warm-up.
    return OptimConfig(lr=5e-4, classifier_lr=5e-3, warmup_steps=20)


def _demo_train() -> TrainConfig:
    return TrainConfig(max_steps=340, batch_size=64, log_every=20, image_every=170, checkpoint_every=50)


def _demo_data() -> DataConfig:
    # many small crops teach the one-decision-per-image classifier more per second than a few large ones; levels
    # near 0 leave a type hardly distinguishable from another's; 8 crops per decoded photo (decoding is a third
    # of the data time at 4)
    return DataConfig(crop_size=32, crops_per_image=8, engine=EngineConfig(level_range=(0.1, 1.0)))


def _demo_val() -> ValConfig:
    # the held-out photos in every type, classified on 128² crops (more evidence than a 32² training crop); each
    # validation of 228 crops costs several seconds on 2 cores, so the default run validates at its start and end
    return ValConfig(every=340, samples_per_task=12, crop_size=128)


@dataclass
class PretrainConfig:
    """Defaults: the short CPU run of ``python tools/pretrain.py`` (the CPU recipe
    configs/pretrain/nafnet_cpu.yaml cut short); the release-size recipes are configs/pretrain/*_uir.yaml."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=_demo_optim)
    train: TrainConfig = field(default_factory=_demo_train)
    data: DataConfig = field(default_factory=_demo_data)
    val: ValConfig = field(default_factory=_demo_val)
    run: RunConfig = field(default_factory=RunConfig)  # name None: "pretrain_<model.name>"


def load_pretrain_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> PretrainConfig:
    cfg = load_config(PretrainConfig, path, overrides)
    validate(cfg)
    return cfg


def validate(cfg: PretrainConfig) -> None:
    """What the per-field ranges cannot say: values that depend on each other or on the model registry."""
    from ..models import get_model_cfg, list_models

    loss = cfg.loss
    check_weights(loss)
    if loss.rec_region == "hidden" and cfg.model.mask_ratio == 0:
        raise ConfigError("loss.rec_region='hidden' needs model.mask_ratio > 0 (nothing is hidden)")
    if loss.rec_source == "gt" and cfg.model.mask_ratio > 0:
        raise ConfigError("loss.rec_source='gt' is DCPT's clean→clean generation, which has no mask: set model.mask_ratio=0")
    if cfg.model.name not in list_models():
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}; registered: {', '.join(list_models())}")
    stride = get_model_cfg(cfg.model.name).stride
    patch = cfg.model.patch_size
    if patch is not None and patch % stride and "stride" not in cfg.model.kwargs:
        raise ConfigError(f"model.patch_size: {patch} is not a multiple of {cfg.model.name}'s stride {stride} "
                          f"(a mask cell must cover whole feature cells); use {stride}, {2 * stride}, … or leave it unset")
    cfg.model.num_classes = num_classes(cfg)


def num_classes(cfg: PretrainConfig) -> int:
    """The classifier's classes: one per type the engine can label (the 19, then data.engine.extra_types)."""
    labels = len(cfg.data.engine.label_names)
    if cfg.model.num_classes is not None and cfg.model.num_classes != labels:
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but the degradation engine labels {labels} types "
                          f"({NUM_TYPES} built-in + {labels - NUM_TYPES} data.engine.extra_types); set it to {labels} or leave it out")
    return labels


def run_dir(cfg: PretrainConfig) -> Path:
    return Path(cfg.run.output_dir) / (cfg.run.name or f"pretrain_{cfg.model.name}")


def keep_maps(indices: Sequence[int] | torch.Tensor, grid: tuple[int, int], mask_ratio: float, seed: int) -> torch.Tensor:
    """One keep map per sample (B, 1, h, w) in {0, 1}, drawn from (seed, global sample index) alone, so a sample is
    masked the same whatever the number of ranks, the accumulation or a resume; exactly ``round(h·w·(1 − ratio))``
    cells visible (at least one), as ``random_keep_map``.

    MAE's noise → argsort → keep, with the noise a counter-based hash of (seed, index, cell) computed on the indices'
    device in one go: no per-sample generator, no loop, nothing read back to the host (the batch's indices stay
    where the trainer put them). The hash is a bijection of the cell for a given sample, so no two cells tie.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
    index = torch.as_tensor(indices, dtype=torch.int64)
    h, w = grid
    n_keep = max(1, int(round(h * w * (1.0 - mask_ratio))))
    start = _mix32((seed & _LOW32) ^ _mix32(_MASK_STREAM ^ _mix32(seed >> 32)))
    state = _mix32(_mix32(index.bitwise_and(_LOW32) ^ start) ^ (index >> 32))
    cells = torch.arange(h * w, device=index.device)
    noise = _mix32(state[:, None] ^ _mix32(cells)[None, :])
    keep = torch.zeros(index.shape[0], h * w, device=index.device)
    keep.scatter_(1, noise.argsort(dim=1)[:, :n_keep], 1.0)
    return keep.view(-1, 1, h, w)


_LOW32 = 0xFFFFFFFF


def _mul32(a, c: int):
    """a · c mod 2**32 for a in [0, 2**32), in int64 without overflow (c split into 16-bit halves)."""
    return (a * (c & 0xFFFF) + (((a * (c >> 16)) & 0xFFFF) << 16)) & _LOW32


def _mix32(x):
    """A 32-bit integer hash (xor-shift-multiply, the "lowbias32" constants): a bijection of [0, 2**32) whose output
    bits each depend on every input bit; works on Python ints and int64 tensors alike."""
    x = x & _LOW32
    x = _mul32(x ^ (x >> 16), 0x7FEB352D)
    x = _mul32(x ^ (x >> 15), 0x846CA68B)
    return x ^ (x >> 16)


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
        self.model = build_maskdcpt(m.name, num_classes=num_classes(cfg), mask_ratio=m.mask_ratio, patch_size=m.patch_size,
                                    rec_residual=m.rec_residual, classifier_norm=m.classifier_norm,
                                    classifier_blocks=m.classifier_blocks, sparse_classifier=m.sparse_classifier, **m.kwargs)
        if m.zero_init_head:
            self.model.backbone.zero_init_head()
        self.has_unused_parameters = 0.0 in loss_weights(cfg.loss).values()
        self._outputs_as_dict = _OutputsAsDict(self.model)
        self._preds: list[torch.Tensor] = []  # training predictions and targets since the last confusion image
        self._targets: list[torch.Tensor] = []
        self._val_set: ValidationSet | None = None

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
        keep = keep_maps(batch["index"], grid, cfg.model.mask_ratio, cfg.train.seed).to(lq.device)
        loss = cfg.loss
        generate = loss.rec_source == "gt" and loss.w_rec > 0
        generated = None
        if generate:
            # DCPT: classify the degraded image and regenerate the clean one, in one forward of both halves so
            # that DDP sees a single pass (the classifier's BatchNorm statistics then include the clean half)
            out = model(torch.cat([lq, gt]), keep=torch.cat([keep, torch.ones_like(keep)]))
            out = out if not isinstance(out, dict) else MaskDCPTOutput(**out)
            n = lq.shape[0]
            generated = out.reconstruction[n:]
            out = MaskDCPTOutput(out.reconstruction[:n], out.logits[:n], out.features[:n], out.keep[:n], out.patch_size)
        else:
            out = model(lq, keep=keep)
            if isinstance(out, dict):
                out = MaskDCPTOutput(**out)
        inputs = LossInputs(out, gt, target, loss, generated, gather=lambda t: gather_with_grad(t, self.dist),
                            rank=self.dist.rank, world_size=self.dist.world_size)
        total, terms = total_loss(inputs)  # the terms of maskdcpt/losses/registry.py whose weight is above 0
        return StepOutput(total, terms, {"out": out})

    def metrics(self, out: StepOutput, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        pred = out.extras["out"].logits.detach().argmax(dim=1)
        if self.dist.is_main and self.cfg.train.image_every:  # for the next confusion image; kept on the device
            self._preds.append(pred)
            self._targets.append(batch["type_id"].detach())
        return {"metrics/top1": (pred == batch["type_id"]).float().mean()}

    def images(self, out: StepOutput, batch: dict[str, Any], logger: TensorBoardLogger, step: int) -> None:
        o = out.extras["out"]
        masked = batch["lq"] * o.visible_pixels()
        grid = image_grid([batch["lq"], masked, o.reconstruction, batch["gt"]])
        logger.image("images/lq_masked_reconstruction_gt", grid, step)
        if self._preds:
            names = self.class_names()
            counts = confusion_matrix(torch.cat(self._preds).cpu().numpy(), torch.cat(self._targets).cpu().numpy(),
                                      len(names))
            logger.image("classification/confusion", render_confusion(counts, names), step, dataformats="HWC")
            self._preds, self._targets = [], []

    def export(self, run_dir: Path) -> None:
        export_encoder_weights(self.model, self.cfg, run_dir / "encoder.safetensors")

    # ----------------------------------------------------------------- validation
    @property
    def best_metric(self) -> str | None:
        best = self.cfg.val.best or "top1"
        return None if best == "none" else best

    def weights_metadata(self) -> dict[str, Any]:
        m = self.cfg.model
        return {"format": "maskdcpt-pretraining", "model_name": m.name, "model_kwargs": m.kwargs,
                "num_classes": m.num_classes, "mask_ratio": m.mask_ratio, "patch_size": self.model.patch_size}

    def class_names(self) -> list[str]:
        return list(self.cfg.data.engine.label_names)

    def validation_set(self) -> ValidationSet:
        if self._val_set is None:
            engine = self.cfg.data.engine
            tasks = [ValTask(type=name) for name in engine.type_names]
            self._val_set = build_validation_set(self.cfg.val, tasks, engine, self.cfg.data.crop_size)
        return self._val_set

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, Any] | None:
        """On the held-out set, masked as in training (fixed keep maps): top-1 overall, per type and without the
        mask, the confusion matrix, leave-one-out kNN top-1 of the pooled features, and the reconstruction's PSNR
        on visible pixels beside the input's (and on hidden pixels)."""
        val = self.validation_set()
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        preds, dense_preds, targets, pooled, sq = [], [], [], [], {"rec_v": [], "in_v": [], "rec_h": []}
        try:
            for batch in val.batches():
                lq, gt = batch["lq"].to(device), batch["gt"].to(device)
                grid = (-(-lq.shape[-2] // model.patch_size), -(-lq.shape[-1] // model.patch_size))
                keep = keep_maps(batch["index"], grid, self.cfg.model.mask_ratio, self.cfg.val.seed).to(device)
                out = model(lq, keep=keep)
                preds.append(out.logits.argmax(1).cpu())
                pooled.append(out.features.float().cpu())
                targets.append(batch["type_id"])
                if self.cfg.model.mask_ratio > 0:
                    dense_preds.append(model(lq, keep=torch.ones_like(keep)).logits.argmax(1).cpu())
                visible = out.visible_pixels()
                for name, pred, region in (("rec_v", out.reconstruction, visible), ("in_v", lq, visible),
                                           ("rec_h", out.reconstruction, 1 - visible)):
                    err = ((pred.float().clamp(0, 1) - gt) ** 2 * region).sum((1, 2, 3))
                    sq[name].append((err / (region.sum((1, 2, 3)) * 3).clamp_min(1)).cpu())
        finally:
            model.train(was_training)
        pred, target = torch.cat(preds).numpy(), torch.cat(targets).numpy()
        names = self.class_names()
        k = len(names)
        known = target >= 0
        result: dict[str, Any] = {"top1": float((pred[known] == target[known]).mean()) if known.any() else float("nan")}
        if known.any():  # how far another draw of held-out crops could move it: 95 % bootstrap over the crops
            result["top1_ci95"] = bootstrap_interval(pred[known] == target[known])
        if dense_preds:
            result["top1_unmasked"] = float((torch.cat(dense_preds).numpy()[known] == target[known]).mean())
        result["knn_top1"] = knn_top1(torch.cat(pooled), torch.from_numpy(target))
        result["per_type"] = {names[t]: float((pred[target == t] == t).mean()) for t in sorted(set(target[known].tolist()))}

        def psnr(key: str) -> torch.Tensor:  # each crop's PSNR
            return psnr_from_mse(torch.cat(sq[key]), min_mse=1e-10)

        rec_visible = psnr("rec_v")
        result["rec_psnr_visible"], result["input_psnr_visible"] = float(rec_visible.mean()), float(psnr("in_v").mean())
        result["rec_psnr_visible_ci95"] = bootstrap_interval(rec_visible.numpy())
        if self.cfg.model.mask_ratio > 0:
            result["rec_psnr_hidden"] = float(psnr("rec_h").mean())
        result["confusion"] = confusion_matrix(pred[known], target[known], k).tolist()
        return result

    def log_validation(self, result: dict[str, Any], logger: TensorBoardLogger, step: int) -> None:
        counts = np.asarray(result["confusion"])
        logger.image("val/confusion", render_confusion(counts, self.class_names()), step, dataformats="HWC")

    def describe_validation(self, result: dict[str, Any]) -> str:
        interval = " [{:.3f}, {:.3f}]".format(*result["top1_ci95"]) if "top1_ci95" in result else ""
        parts = [f"top1 {result['top1']:.3f}{interval}"]
        if "top1_unmasked" in result:
            parts.append(f"unmasked {result['top1_unmasked']:.3f}")
        parts.append(f"kNN {result['knn_top1']:.3f}")
        parts.append(f"rec PSNR (visible) {result['rec_psnr_visible']:.2f} dB vs input {result['input_psnr_visible']:.2f} dB")
        return ", ".join(parts)


def knn_top1(features: torch.Tensor, labels: torch.Tensor, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour top-1 of ``features`` (N, D) by cosine similarity: each sample takes the
    majority label of its k nearest others (ties: the larger summed similarity). A measure of how well the pooled
    features separate the degradations without any trained head. Samples with label < 0 are left out."""
    keep = labels >= 0
    z = torch.nn.functional.normalize(features[keep].float(), dim=1)
    y = labels[keep]
    if len(y) < 2:
        return float("nan")
    sim = z @ z.t()
    sim.fill_diagonal_(float("-inf"))
    top_sim, top = sim.topk(min(k, len(y) - 1), dim=1)
    votes = torch.zeros(len(y), int(y.max()) + 1)
    # count votes, and add a tiny share of the similarity so that ties go to the closer class
    votes.scatter_add_(1, y[top], torch.ones_like(top_sim) + 1e-3 * top_sim)
    return float((votes.argmax(1) == y).float().mean())


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


if __name__ == "__main__":  # python -m maskdcpt.training.pretrain: say where the command is instead of doing nothing
    raise SystemExit(f"error: {__spec__.name} is a library module; run python tools/pretrain.py --help "
                     "(python -m maskdcpt lists every tool)")
