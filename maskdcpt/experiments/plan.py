"""The transfer experiment's plan: the arms (:data:`ARMS`, the one table of their differences), the experiment's
config, each arm resolved into the pre-training and fine-tuning configs it runs, and the experiment folder.

Every arm fine-tunes the same restorer with the same recipe, data, seeds and held-out set; the arms differ only
in where the fine-tuning starts and, for ``scratch_equal_total``, in its length. An experiment lives in one
folder::

    DIR/experiment.yaml            the resolved TransferConfig (jobs read it; a rerun must match it)
    DIR/commands.txt               the commands that ran or submitted it
    DIR/<arm>/pretrain/            the arm's pre-training run (pre-trained arms only)
    DIR/<arm>/finetune/            its fine-tuning run (val.jsonl: the held-out curve)
    DIR/<arm>/timing.json          seconds spent in each phase, summed over sessions
    DIR/<arm>/metrics.json         the arm's result, written when it finishes
    DIR/results.json, report.md, curves.png
    DIR/manifest.json, DIR/slurm/  the job array (launch.launcher slurm or local)

Running is :mod:`~maskdcpt.experiments.run`, the job array :mod:`~maskdcpt.experiments.cluster`, the results
:mod:`~maskdcpt.experiments.report`; this module imports none of them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from ..config import check_ranges, flatten, format_override, load_config, ranged, save_config, to_dict
from ..data.validation import ValConfig
from ..errors import ConfigError
from ..launch.launcher import LaunchOptions
from ..training.finetune import FinetuneConfig, load_finetune_config
from ..training.finetune import run_dir as finetune_run_dir
from ..training.pretrain import PretrainConfig, load_pretrain_config
from ..training.pretrain import run_dir as pretrain_run_dir
from ..training.run import RunConfig

REPO = Path(__file__).resolve().parents[2]
PRESET_DIR = REPO / "configs" / "experiments"
EXPERIMENT_FILE = "experiment.yaml"
COMMANDS_FILE = "commands.txt"
TIMING_FILE = "timing.json"
RESULT_FILE = "metrics.json"


# --------------------------------------------------------------------------------------------- the arms


@dataclass(frozen=True)
class Arm:
    """How an arm departs from the shared recipe.

    pretrain: ``None`` — no pre-training (random initialisation); else the overrides of its pre-training run over
              the shared MaskDCPT recipe (``()`` = the recipe itself).
    budget:   fine-tuning steps, ``"F"`` or ``"P+F"`` (the compute of a pre-trained arm spent on fine-tuning alone;
              its cosine schedule then spans P + F steps).
    """

    pretrain: tuple[str, ...] | None
    budget: Literal["F", "P+F"]
    about: str


# The only differences between arms. Everything else — model, crops, batch, seeds, data, held-out set, the
# fine-tuning recipe — is shared; tests/test_experiment.py checks it on the resolved configs.
ARMS: dict[str, Arm] = {
    "scratch": Arm(None, "F", "random initialisation, F fine-tuning steps"),
    "scratch_equal_total": Arm(None, "P+F", "random initialisation, P+F fine-tuning steps (equal compute)"),
    "maskdcpt": Arm((), "F", "MaskDCPT pre-training (all 19 types), then F"),
    "no_mask": Arm(("model.mask_ratio=0",), "F", "MaskDCPT without the mask"),
    "no_cls": Arm(("loss.w_cls=0",), "F", "without the classification loss"),
    "no_rec": Arm(("loss.w_rec=0",), "F", "without the reconstruction loss"),
    "no_con": Arm(("loss.w_con=0",), "F", "without the contrastive loss"),
    "rec_hidden": Arm(("loss.rec_region=hidden",), "F", "reconstruction loss on hidden pixels only"),
    # DCPT (the predecessor): no mask, the clean image regenerated from itself; its contrastive weight is the
    # shared recipe's, so that dcpt against no_mask isolates the generation target
    "dcpt": Arm(("model.mask_ratio=0", "loss.rec_source=gt"), "F", "DCPT: no mask, clean→clean generation"),
}

# The pre-training every pre-trained arm departs from, and the fine-tuning every arm departs from.
REFERENCE_PRETRAIN, REFERENCE_FINETUNE = "maskdcpt", "scratch"


def arm_keys(arm: Arm) -> set[str]:
    """The pre-training config keys an arm changes."""
    return {o.split("=", 1)[0] for o in arm.pretrain or ()}


# --------------------------------------------------------------------------------------------- the config

# Keys the experiment sets in every run itself: the shared override lists may not set them.
OWNED_KEYS = ("model.name", "model.kwargs", "data.crop_size", "train.batch_size", "train.max_steps", "train.seed",
              "val", "run", "pretrained")


def _default_val() -> ValConfig:
    return ValConfig(every=100, samples_per_task=16)


def _default_pretrain_val() -> ValConfig:
    return ValConfig(every=0, samples_per_task=8)


def _default_launch() -> LaunchOptions:
    return LaunchOptions(job_name="maskdcpt-transfer")


@dataclass
class TransferConfig:
    """A transfer experiment (``configs/experiments/transfer_*.yaml``).

    model, model_kwargs: the backbone, pre-trained and fine-tuned alike.
    crop_size, batch_size, seed: shared by every run (training crops; global batch; data, masks and initialisation).
    pretrain_steps (P), finetune_steps (F): the budgets; ``scratch_equal_total`` fine-tunes for P + F.
    arms: which arms to run (names of :data:`ARMS`), in the report's order.
    common / pretrain / finetune: ``key=value`` overrides of every run / every pre-training / every fine-tuning
        (the shared recipe: learning rates, workers, logging, ...); not the keys of ``OWNED_KEYS``.
    val: the fine-tuning runs' validation, the held-out evaluation (EMA weights; ``paired`` folders replace the
        synthetic 5D tasks).
    pretrain_val: the pre-training runs' validation (the classifier's held-out top-1); ``every: 0`` validates
        before the first and after the last step only.
    launch: ``launcher: none`` runs the arms one after another in this process; ``local`` / ``slurm`` submit
        one job per arm as a job array (submitit), with these resources.
    """

    model: str = "nafnet_tiny"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    crop_size: int = ranged(64, ge=32)
    batch_size: int = ranged(16, ge=1)
    seed: int = 0
    pretrain_steps: int = ranged(600, ge=1)
    finetune_steps: int = ranged(400, ge=1)
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    common: list[str] = field(default_factory=list)
    pretrain: list[str] = field(default_factory=list)
    finetune: list[str] = field(default_factory=list)
    val: ValConfig = field(default_factory=_default_val)
    pretrain_val: ValConfig = field(default_factory=_default_pretrain_val)
    launch: LaunchOptions = field(default_factory=_default_launch)

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ConfigError(f"arms: unknown arm {unknown[0]!r}; known arms: {', '.join(ARMS)}")
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"arms: give each arm once, at least one; got {self.arms}")
        check_ranges(self, "")
        for section in ("common", "pretrain", "finetune"):
            for item in getattr(self, section):
                key = item.split("=", 1)[0].strip()
                if "=" not in item:
                    raise ConfigError(f"{section}: {item!r} is not a key=value override")
                if any(key == k or key.startswith(k + ".") for k in OWNED_KEYS):
                    raise ConfigError(f"{section}: {key!r} is set by the experiment itself for every run; use its own "
                                     "field (model, model_kwargs, crop_size, batch_size, seed, pretrain_steps, "
                                     "finetune_steps, val, pretrain_val)")
        if not self.val.enabled:
            raise ConfigError("val.every must be > 0: the held-out curve is the experiment's result")


@dataclass
class ArmJobConfig(TransferConfig):
    """One arm as a job: the experiment's config (DIR/experiment.yaml) plus ``arm`` and the arm's folder
    ``run.output_dir/run.name`` (the experiment folder and the arm's name)."""

    arm: str = ""
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.arm not in ARMS:
            raise ConfigError(f"arm: {self.arm!r} is not one of {', '.join(ARMS)}")


def load_transfer_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TransferConfig:
    return load_config(TransferConfig, path, overrides)


def load_arm_job_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ArmJobConfig:
    return load_config(ArmJobConfig, path, overrides)


def arm_dir(cfg: ArmJobConfig) -> Path:
    return Path(cfg.run.output_dir) / (cfg.run.name or cfg.arm)


def preset_path(name: str) -> Path:
    """``configs/experiments/transfer_<name>.yaml``; a ``ConfigError`` listing the presets there otherwise."""
    path = PRESET_DIR / f"transfer_{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("transfer_") for p in PRESET_DIR.glob("transfer_*.yaml"))
        raise ConfigError(f"no preset {name!r} ({path}); presets: {', '.join(known) or 'none'}")
    return path


def _absolute_paths(val: ValConfig) -> ValConfig:
    """Folders in the val section made absolute: jobs may start elsewhere."""
    paired = [dataclasses.replace(p, lq=str(Path(p.lq).resolve()), gt=str(Path(p.gt).resolve())) for p in val.paired]
    return dataclasses.replace(val, photos=str(Path(val.photos).resolve()) if val.photos else "", paired=paired)


# --------------------------------------------------------------------------------------------- planning


@dataclass
class ArmPlan:
    """An arm resolved: the override lists (what ``tools/pretrain.py`` / ``tools/finetune.py`` would be given) and
    the configs they load to, placed under ``folder``."""

    name: str
    arm: Arm
    folder: Path
    pretrain_overrides: list[str] | None
    finetune_overrides: list[str]
    pretrain: PretrainConfig | None
    finetune: FinetuneConfig

    @property
    def pretrain_dir(self) -> Path | None:
        return pretrain_run_dir(self.pretrain) if self.pretrain is not None else None

    @property
    def finetune_dir(self) -> Path:
        return finetune_run_dir(self.finetune)

    @property
    def steps(self) -> dict[str, int]:
        return {"pretrain": self.pretrain.train.max_steps if self.pretrain is not None else 0,
                "finetune": self.finetune.train.max_steps}

    def commands(self) -> list[str]:
        """The stand-alone commands that make the same runs."""
        out = []
        if self.pretrain_overrides is not None:
            out.append(shlex.join(["python", "tools/pretrain.py", *self.pretrain_overrides]))
        out.append(shlex.join(["python", "tools/finetune.py", *self.finetune_overrides]))
        return out


def _val_overrides(val: ValConfig) -> list[str]:
    """The val section as overrides of the fields that differ from the defaults (the runs start from those)."""
    default = to_dict(ValConfig())
    return [format_override(f"val.{k}", v) for k, v in to_dict(_absolute_paths(val)).items() if v != default[k]]


def _shared(cfg: TransferConfig, steps: int, val: ValConfig) -> list[str]:
    kwargs = [format_override("model.kwargs", cfg.model_kwargs)] if cfg.model_kwargs else []
    return [format_override("model.name", cfg.model), *kwargs, f"data.crop_size={cfg.crop_size}",
            f"train.batch_size={cfg.batch_size}", f"train.seed={cfg.seed}", f"train.max_steps={steps}",
            *_val_overrides(val)]


def plan_arm(cfg: TransferConfig, name: str, out: str | Path) -> ArmPlan:
    """Arm ``name`` of ``cfg`` in ``out/<name>``: its pre-training (if any) and fine-tuning configs."""
    arm = ARMS[name]
    folder = Path(out).resolve() / name
    P, F = cfg.pretrain_steps, cfg.finetune_steps
    pre_overrides = pre_cfg = None
    pretrained = "none"
    if arm.pretrain is not None:
        pre_val = dataclasses.replace(cfg.pretrain_val, every=cfg.pretrain_val.every or P)
        pre_overrides = [*cfg.common, *cfg.pretrain, *_shared(cfg, P, pre_val), *arm.pretrain,
                         f"run.output_dir={folder}", "run.name=pretrain"]
        pre_cfg = load_pretrain_config(None, pre_overrides)
        pretrained = str(pretrain_run_dir(pre_cfg))
    steps = P + F if arm.budget == "P+F" else F
    ft_overrides = [*cfg.common, *cfg.finetune, *_shared(cfg, steps, cfg.val), format_override("pretrained", pretrained),
                    f"run.output_dir={folder}", "run.name=finetune"]
    return ArmPlan(name, arm, folder, pre_overrides, ft_overrides, pre_cfg, load_finetune_config(None, ft_overrides))


def config_differences(a: Any, b: Any, ignore: Sequence[str] = ("run",)) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (a's value, b's value)}`` where two configs differ, leaving out keys under ``ignore``."""
    fa, fb = flatten(to_dict(a)), flatten(to_dict(b))
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k) and not any(k == i or k.startswith(i + ".") for i in ignore)}


def expected_differences(plan: ArmPlan) -> tuple[set[str], set[str]]:
    """The keys in which an arm's pre-training may differ from maskdcpt's, and its fine-tuning from scratch's."""
    finetune = {"pretrained"} if plan.arm.pretrain is not None else set()
    if plan.arm.budget == "P+F":
        finetune.add("train.max_steps")
    return arm_keys(plan.arm), finetune


def check_arms(plans: dict[str, ArmPlan], reference: dict[str, ArmPlan]) -> None:
    """Every arm differs from the reference arms exactly where :data:`ARMS` says, and in all of those places: an
    override in the shared lists that already sets an arm's key would make that arm a copy of maskdcpt."""
    ref_pre, ref_ft = reference[REFERENCE_PRETRAIN].pretrain, reference[REFERENCE_FINETUNE].finetune
    for name, plan in plans.items():
        want_pre, want_ft = expected_differences(plan)
        got_ft = set(config_differences(plan.finetune, ref_ft))
        got_pre = set(config_differences(plan.pretrain, ref_pre)) if plan.pretrain is not None else set()
        for what, got, want in (("pre-training", got_pre, want_pre), ("fine-tuning", got_ft, want_ft)):
            if got != want:
                hint = (f" (the shared overrides already give {sorted(want - got)} the arm's value?)"
                        if got < want else "")
                raise ConfigError(f"arm {name}: its {what} config differs from the reference arm's in "
                                 f"{sorted(got) or 'nothing'}, but ARMS says {sorted(want) or 'nothing'}{hint}")


def plan_arms(cfg: TransferConfig, out: str | Path, arms: Sequence[str] | None = None) -> dict[str, ArmPlan]:
    """The plans of ``arms`` (default ``cfg.arms``), checked against the reference arms."""
    names = list(cfg.arms if arms is None else arms)
    plans = {name: plan_arm(cfg, name, out) for name in names}
    reference = {n: plans.get(n) or plan_arm(cfg, n, out) for n in (REFERENCE_PRETRAIN, REFERENCE_FINETUNE)}
    check_arms(plans, reference)
    return plans


# --------------------------------------------------------------------------------------------- the folders


def run_finished(folder: Path | None, steps: int) -> bool:
    """Whether the trainer finished the run in ``folder`` at ``steps`` (its metrics.json, written at the end)."""
    path = None if folder is None else folder / "metrics.json"
    if path is None or not path.is_file():
        return False
    try:
        return int(json.loads(path.read_text()).get("step", 0)) >= steps
    except (ValueError, TypeError):
        return False


class ExperimentFolder:
    """``DIR``: its resolved config (``experiment.yaml``) and the commands that made it."""

    def __init__(self, out: str | Path):
        self.path = Path(out).resolve()

    @property
    def config_file(self) -> Path:
        return self.path / EXPERIMENT_FILE

    def load(self) -> TransferConfig:
        if not self.config_file.is_file():
            raise ConfigError(f"{str(self.path)!r} is not a transfer experiment folder: no {EXPERIMENT_FILE}")
        return load_transfer_config(self.config_file)

    def prepare(self, cfg: TransferConfig, command: str | None) -> None:
        """Write ``cfg`` (its folders absolute); a folder made with another recipe is refused. Only ``arms`` and
        ``launch`` may change between invocations: they decide what runs, not how."""
        cfg = dataclasses.replace(cfg, val=_absolute_paths(cfg.val), pretrain_val=_absolute_paths(cfg.pretrain_val))
        if self.config_file.is_file():
            diff = config_differences(self.load(), cfg, ignore=("arms", "launch"))
            if diff:
                shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in list(diff.items())[:4])
                raise ConfigError(f"{self.path} holds an experiment with another recipe ({shown}); give another "
                                 "--out, or delete the folder to redo it")
        self.path.mkdir(parents=True, exist_ok=True)
        # atomically: queued or requeued arm jobs read it when they start
        tmp = self.config_file.with_suffix(".yaml.tmp")
        save_config(cfg, tmp)
        os.replace(tmp, self.config_file)
        if command:
            with open(self.path / COMMANDS_FILE, "a") as f:
                f.write(command + "\n")

    def commands(self) -> list[str]:
        path = self.path / COMMANDS_FILE
        lines = path.read_text().splitlines() if path.is_file() else []
        return list(dict.fromkeys(line for line in lines if line.strip()))


