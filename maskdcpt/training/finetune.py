"""Fine-tuning: a pre-trained backbone as an all-in-one restorer (L1, EMA, clipping, cosine).

The same :class:`Trainer` as pre-training runs it; only the task differs. The pre-trained
weights load strictly into the dense restorer: masked and dense backbones share every name
and shape, so nothing but the classifier (not part of the restorer) stays behind, and nothing
is new unless asked for (prior channels).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from degradations import EngineConfig

from ..config import fixed_field, load_config, ranged
from ..errors import CheckpointError, ConfigError
from ..data.config import DataConfig
from ..data.validation import ValConfig, ValidationSet, ValTask, build_validation_set
from ..evaluation.metrics import psnr_from_mse
from ..evaluation.registry import METRICS
from ..evaluation.stats import bootstrap_interval
from ..io import read_metadata
from ..losses import RestorationLossConfig, restoration_loss
from ..models import create_model
from ..models.checkpoint import RESTORER_FILENAME, RESTORER_FORMAT, load_pretrained, save_restorer
from ..models.prior import add_prior_channels
from .distributed import DistInfo
from .ema import ModelEMA
from .logging import TensorBoardLogger, image_grid
from .optim import OptimConfig, ParamGroup, weight_decay_groups
from .run import RunConfig, run_task
from .trainer import StepOutput, Task, TrainConfig


@dataclass
class RestorerConfig:
    name: str = "nafnet_tiny"
    kwargs: dict[str, Any] = field(default_factory=dict)
    prior_channels: int = ranged(0, ge=0)  # > 0: generative restorations as extra input (sources need 'prior' folders)
    # from scratch, the output projection starts at 0: the restorer starts as the identity, not input + noise
    zero_init_head: bool = True


def _finetune_optim() -> OptimConfig:
    # The short-run default (hundreds to thousands of steps on a CPU or one GPU): AdamW 3e-3 after a 20-step
    # warm-up, no clipping, cosine to 1e-6 (1e-3 learned about half as much in 600 steps: the header of
    # configs/experiments/transfer_cpu.yaml). DCPT's 5D recipe (AdamW 3e-4, clip 0.01, EMA 0.999) is tuned for a
    # million steps, where a clip of 0.01 is a gentle brake; in a short run it throttles every update to a norm of
    # 0.01 and the restorer barely leaves its start. That recipe lives in configs/finetune/*_5d.yaml.
    return OptimConfig(lr=3e-3, weight_decay=0.0, min_lr=1e-6, warmup_steps=20, grad_clip=0.0)


def _short_run_loss() -> RestorationLossConfig:
    # L1 alone let the heavy degradations (low light, haze) take the gradient: the restorer learned to brighten and
    # ended below its input on rain, σ 15 noise and blur. Each sample's PSNR (0.1) weighs every sample by its own
    # relative error, so harming a lightly degraded crop costs what it costs; the frequency L1 (5) learns the fine
    # structure that noise and rain hide several times faster (configs/experiments/transfer_cpu.yaml says what each
    # choice measured).
    return RestorationLossConfig(l1=1.0, psnr=0.1, frequency=5.0)


def _five_d_engine() -> EngineConfig:
    # The 5D task set when no paired folders are configured: the engine restricted to its types,
    # with Gaussian noise at the test levels' span (σ 15–50).
    return EngineConfig(
        types=["rain_streaks", "noise", "haze", "low_light", "motion_blur"],
        params={"noise": {"sigma": [15.0, 50.0], "model_probs": [1.0, 0.0, 0.0], "gray_prob": 0.0}},
    )


def five_d_val_tasks() -> list[ValTask]:
    """The 5D benchmark's tasks on held-out crops: deraining, denoising at the test σ 15 / 25 / 50 (colour
    Gaussian noise, as CBSD68's test sets), dehazing, low-light enhancement, motion deblurring."""
    gaussian = {"model_probs": [1.0, 0.0, 0.0], "gray_prob": 0.0}
    return [
        ValTask(type="rain_streaks", name="derain"),
        *(ValTask(type="noise", name=f"denoise_{s}", params={"sigma": [s, s], **gaussian}) for s in (15, 25, 50)),
        ValTask(type="haze", name="dehaze"),
        ValTask(type="low_light", name="lowlight"),
        ValTask(type="motion_blur", name="deblur"),
    ]


@dataclass
class FinetuneConfig:
    model: RestorerConfig = fixed_field(default_factory=RestorerConfig)  # a resumed run keeps its model
    pretrained: str = "none"  # none | encoder .safetensors | pre-training run folder | release .pth
    # wrapper key of a release .pth; None: the model's release key (default_cfg.param_key; SwinIR 'params',
    # the others 'params_ema'), falling back to the other wrapper
    pretrained_key: str | None = None
    # The output projection after loading pre-trained weights: None (auto) sets it to zero unless the file says it
    # is a restorer (format maskdcpt-restorer), so that fine-tuning from pre-training starts exactly as the identity
    # (a pre-training head was trained on masked inputs; a release's predicts the image without the input
    # residual); true always, false never (continue from a restorer's own head).
    reset_head: bool | None = None
    loss: RestorationLossConfig = field(default_factory=_short_run_loss)
    ema_decay: float = ranged(0.999, ge=0, le=1)
    ema_warmup: bool = True  # the effective decay grows with the step (see training/ema.py)
    optim: OptimConfig = field(default_factory=_finetune_optim)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(engine=_five_d_engine()))
    val: ValConfig = field(default_factory=ValConfig)  # no tasks given: five_d_val_tasks()
    run: RunConfig = field(default_factory=RunConfig)  # name None: "finetune_<model.name>"


def load_finetune_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> FinetuneConfig:
    from ..models import list_models

    cfg = load_config(FinetuneConfig, path, overrides)
    if cfg.model.name not in list_models():
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}; registered: {', '.join(list_models())}")
    has_prior = bool(cfg.data.sources) and all(s.prior for s in cfg.data.sources)
    if cfg.model.prior_channels and not has_prior:
        raise ConfigError("model.prior_channels > 0 needs every data source to name a 'prior' folder")
    if has_prior and not cfg.model.prior_channels:
        raise ConfigError("the data sources have 'prior' folders: set model.prior_channels (3 for RGB priors)")
    return cfg


def run_dir(cfg: FinetuneConfig) -> Path:
    return Path(cfg.run.output_dir) / (cfg.run.name or f"finetune_{cfg.model.name}")


def _pretrained_file(spec: str) -> Path:
    path = Path(spec)
    if path.is_dir():  # a pre-training run folder
        candidate = path / "encoder.safetensors"
        if not candidate.is_file():
            restorer = path / RESTORER_FILENAME
            if restorer.is_file():  # a fine-tuning run: its restorer is the whole network
                raise CheckpointError(f"pretrained: {str(path)!r} is a fine-tuning run; to continue from its restorer, "
                                      f"give pretrained={restorer}")
            raise CheckpointError(f"pretrained: pre-training run {str(path)!r} has no encoder.safetensors; run tools/export_encoder.py")
        return candidate
    if not path.is_file():
        raise ConfigError(f"pretrained: {spec!r} does not exist")
    return path


def load_pretrained_weights(model: nn.Module, spec: str, key: str | None = None) -> str:
    """Load ``spec`` strictly into the dense restorer (``key``: see ``FinetuneConfig.pretrained_key``); returns a
    report of what was loaded."""
    if spec.lower() == "none":
        return "pretrained: none — training from scratch"
    path = _pretrained_file(spec)
    report = load_pretrained(model, path, strict=True, key=key)
    lines = [f"pretrained: loaded all {len(report.loaded)} tensors of {type(model).__name__} from {path}"
             + (f" (key {report.source_key!r})" if report.source_key else "")]
    lines.append("new by design: " + (", ".join(report.new) if report.new else "nothing"))
    return "\n".join(lines)


def _resets_head(cfg: FinetuneConfig) -> bool:
    if cfg.reset_head is not None:
        return cfg.reset_head
    path = _pretrained_file(cfg.pretrained)
    return path.suffix != ".safetensors" or read_metadata(path).get("format") != RESTORER_FORMAT


def build_restorer(cfg: FinetuneConfig) -> nn.Module:
    model = create_model(cfg.model.name, **cfg.model.kwargs)
    return add_prior_channels(model, cfg.model.prior_channels)


class FinetuneTask(Task):
    """All-in-one restoration: L1 between the restorer's output and GT; EMA of the weights."""

    def __init__(self, cfg: FinetuneConfig, dist: DistInfo):
        self.cfg = cfg
        self.model = build_restorer(cfg)
        self.report = load_pretrained_weights(self.model, cfg.pretrained, cfg.pretrained_key)
        if cfg.pretrained.lower() == "none":
            if cfg.model.zero_init_head:
                self.model.zero_init_head()
        elif _resets_head(cfg):
            self.model.zero_init_head()
            self.report += f"\noutput projection {self.model.head_name!r} set to zero: fine-tuning starts as the identity"
        self.ema = ModelEMA(self.model, cfg.ema_decay, warmup=cfg.ema_warmup)
        self._val_set: ValidationSet | None = None

    def to(self, device: torch.device) -> None:
        self.model.to(device)
        self.ema.to(device)  # the shadow is updated from the model every step and validated on the same device

    def param_groups(self, optim: OptimConfig) -> list[ParamGroup]:
        return weight_decay_groups("restorer", self.model.named_parameters(), optim.lr, optim.weight_decay)

    def _input(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.cfg.model.prior_channels:
            return torch.cat([batch["lq"], batch["prior"]], dim=1)
        return batch["lq"]

    def step(self, model: nn.Module, batch: dict[str, Any], step: int) -> StepOutput:
        pred = model(self._input(batch))
        total, terms = restoration_loss(pred, batch["gt"], self.cfg.loss)
        return StepOutput(total, terms, {"pred": pred})

    def metrics(self, out: StepOutput, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        mse = ((out.extras["pred"].detach().float().clamp(0, 1) - batch["gt"].float()) ** 2).flatten(1).mean(1)
        return {"metrics/psnr": psnr_from_mse(mse, min_mse=1e-10).mean()}

    def images(self, out: StepOutput, batch: dict[str, Any], logger: TensorBoardLogger, step: int) -> None:
        rows = [batch["lq"], out.extras["pred"], batch["gt"]]
        logger.image("images/lq_restored_gt", image_grid(rows), step)

    def after_step(self, step: int) -> None:
        self.ema.update(self.model)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "ema" in state:
            self.ema.load_state_dict(state["ema"])

    def export(self, run_dir: Path) -> None:
        extra = {"prior_channels": str(self.cfg.model.prior_channels), "ema_decay": str(self.cfg.ema_decay)}
        save_restorer(self.ema.module, run_dir / "restorer.safetensors", self.cfg.model.name, self.cfg.model.kwargs, extra)

    def weights_metadata(self) -> dict[str, Any]:
        # the trained weights themselves (restorer.safetensors holds their EMA): a restorer too
        return {"format": RESTORER_FORMAT, "model_name": self.cfg.model.name,
                "model_kwargs": json.dumps(self.cfg.model.kwargs, sort_keys=True),
                "prior_channels": str(self.cfg.model.prior_channels), "ema": "false"}

    # ----------------------------------------------------------------- validation
    @property
    def best_metric(self) -> str | None:
        best = self.cfg.val.best or "psnr"
        return None if best == "none" else best

    def best_state_dict(self) -> dict[str, torch.Tensor]:
        return self.ema.module.state_dict()  # the weights that are validated, exported and released

    def best_metadata(self) -> dict[str, Any]:
        return {**self.weights_metadata(), "ema": "true"}

    def validation_set(self) -> ValidationSet:
        if self._val_set is None:
            self._val_set = build_validation_set(self.cfg.val, five_d_val_tasks(), self.cfg.data.engine,
                                                 self.cfg.data.crop_size)
        return self._val_set

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, Any] | None:
        """PSNR / SSIM (float, RGB, no border crop: the release's protocol) of the EMA restorer per task and
        averaged over tasks, beside the input's own (``psnr_input``): a restorer that helps has psnr > psnr_input.
        Every metric of the table with a batched form (``evaluation/registry.py``) is validated so."""
        if self.cfg.model.prior_channels:
            return None  # the held-out crops have no generative priors to feed the extra channels
        val = self.validation_set()
        model = self.ema.module  # eval mode, the weights being exported
        device = next(model.parameters()).device
        batched = {name: metric.batch for name, metric in METRICS.items() if metric.batch is not None}
        per_sample: dict[str, list[torch.Tensor]] = {**{k: [] for k in batched}, **{f"{k}_input": [] for k in batched}}
        tasks = []
        for batch in val.batches():
            lq, gt = batch["lq"].to(device), batch["gt"].to(device)
            pred = model(lq).float().clamp(0, 1)
            for name, fn in batched.items():
                per_sample[name].append(fn(pred, gt).cpu())
                per_sample[f"{name}_input"].append(fn(lq, gt).cpu())
            tasks.append(batch["task"])
        task = torch.cat(tasks)
        values = {k: torch.cat(v).double() for k, v in per_sample.items()}
        per_task = {name: {k: float(v[task == t].mean()) for k, v in values.items()}
                    for t, name in enumerate(val.task_names) if bool((task == t).any())}
        # the papers' "average": the mean of the per-task means
        result: dict[str, Any] = {k: sum(p[k] for p in per_task.values()) / len(per_task) for k in per_sample}
        result["gain"] = result["psnr"] - result["psnr_input"]
        # how far another draw of held-out crops could move them: 95 % bootstrap intervals over the crops
        psnr, gain, groups = values["psnr"].numpy(), (values["psnr"] - values["psnr_input"]).numpy(), task.numpy()
        result["psnr_ci95"], result["gain_ci95"] = bootstrap_interval(psnr, groups), bootstrap_interval(gain, groups)
        for t, name in enumerate(val.task_names):
            if name in per_task:
                one = groups == t
                per_task[name]["psnr_ci95"] = bootstrap_interval(psnr[one])
                per_task[name]["gain_ci95"] = bootstrap_interval(gain[one])
        result["per_task"] = per_task
        return result

    def describe_validation(self, result: dict[str, Any]) -> str:
        worst = min(result["per_task"].items(), key=lambda kv: kv[1]["psnr"] - kv[1]["psnr_input"])
        lo, hi = result["gain_ci95"]
        return (f"PSNR {result['psnr']:.2f} dB (input {result['psnr_input']:.2f}, gain {result['gain']:+.2f}, "
                f"95 % over the crops [{lo:+.2f}, {hi:+.2f}]), "
                f"SSIM {result['ssim']:.4f}; least gain: {worst[0]} {worst[1]['psnr'] - worst[1]['psnr_input']:+.2f} dB")


def run_finetuning(cfg: FinetuneConfig, resume: bool | str = "auto") -> dict[str, Any]:
    """A complete fine-tuning run in ``run_dir(cfg)``; writes ``restorer.safetensors`` (EMA weights)."""
    out_dir = run_dir(cfg)
    return run_task(
        cfg, out_dir, FinetuneTask, resume, announce=lambda task: task.report,
        finished=lambda m: f"done at step {m['step']}: EMA restorer in {out_dir.resolve() / 'restorer.safetensors'}",
    )


if __name__ == "__main__":  # python -m maskdcpt.training.finetune: say where the command is instead of doing nothing
    raise SystemExit(f"error: {__spec__.name} is a library module; run python tools/finetune.py --help "
                     "(python -m maskdcpt lists every tool)")
