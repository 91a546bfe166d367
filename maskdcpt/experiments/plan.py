"""The transfer experiment's plan: the arms (:data:`ARMS`, the one table of their differences), the experiment's
config, each arm resolved into the pre-training and fine-tuning configs it runs, and the experiment folder.

Every arm fine-tunes the same restorer with the same recipe, data, seeds and held-out set; the arms differ only
in where the fine-tuning starts and, for ``scratch_equal_total``, in its length. Each arm runs once per seed. An experiment lives in one
folder::

    DIR/experiment.yaml            the resolved TransferConfig (jobs read it; a rerun must match it)
    DIR/commands.txt               the commands that ran or submitted it
    DIR/<arm>/seed<k>/pretrain/    the arm's pre-training run at seed k (pre-trained arms only)
    DIR/<arm>/seed<k>/finetune/    its fine-tuning run (val.jsonl: the held-out curve); with named fine-tunings
                                   (``finetunes``) one folder finetune_<name>/ each, all from the one pre-training
    DIR/<arm>/seed<k>/timing.json  seconds spent in each phase, summed over sessions
    DIR/<arm>/seed<k>/metrics.json the (arm, seed)'s result, written when it finishes
    DIR/finetune_photos/           the photos fine-tuning trains on, when ``finetune_photos`` names them
    DIR/results.json, report.md, curves.png
    DIR/manifest.json, DIR/slurm/  the job array, one member per (arm, seed) (launch.launcher slurm or local)

Running is :mod:`~maskdcpt.experiments.run`, the job array :mod:`~maskdcpt.experiments.cluster`, the results
:mod:`~maskdcpt.experiments.report`; this module imports none of them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from degradations import resolve

from ..config import check_ranges, flatten, format_override, load_config, ranged, save_config, to_dict
from ..data.default import TRAIN_PHOTOS, default_photo_dir
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
# What a named fine-tuning (``finetunes``) may set beyond the shared lists: its own held-out tasks.
FINETUNE_OWN_KEYS = ("val.tasks",)
DEFAULT_FINETUNE = "finetune"  # the name (and folder) of the fine-tuning when ``finetunes`` is empty
PHOTOS_FOLDER = "finetune_photos"  # DIR/finetune_photos: the photos fine-tuning sees when finetune_photos is set
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _default_val() -> ValConfig:
    return ValConfig(every=100, samples_per_task=16)


def _default_pretrain_val() -> ValConfig:
    return ValConfig(every=0, samples_per_task=8)


def _default_launch() -> LaunchOptions:
    return LaunchOptions(job_name="maskdcpt-transfer")


def _check_overrides(section: str, items: Sequence[str], allowed: Sequence[str] = ()) -> None:
    for item in items:
        key = item.split("=", 1)[0].strip()
        if "=" not in item:
            raise ConfigError(f"{section}: {item!r} is not a key=value override")
        if any(key == k or key.startswith(k + ".") for k in OWNED_KEYS) and key not in allowed:
            raise ConfigError(f"{section}: {key!r} is set by the experiment itself for every run; use its own "
                              "field (model, model_kwargs, crop_size, batch_size, seeds, pretrain_steps, "
                              "finetune_steps, val, pretrain_val)")


@dataclass
class TransferConfig:
    """A transfer experiment (``configs/experiments/transfer_*.yaml``).

    model, model_kwargs: the backbone, pre-trained and fine-tuned alike.
    crop_size, batch_size: shared by every run (training crops; global batch).
    seeds: each arm runs once per seed (``train.seed``: initialisation, data order, masks); the held-out set stays
        the same for all. Arms are compared seed by seed (paired).
    arm_seeds: the seeds of particular arms, where they differ from ``seeds`` (ablations at one seed, say); entries
        of arms that do not run are ignored.
    pretrain_steps (P), finetune_steps (F): the budgets; ``scratch_equal_total`` fine-tunes for P + F (P/K + F when
        K named fine-tunings share each pre-training).
    arms: which arms to run (names of :data:`ARMS`), in the report's order.
    common / pretrain / finetune: ``key=value`` overrides of every run / every pre-training / every fine-tuning
        (the shared recipe: learning rates, workers, logging, ...); not the keys of ``OWNED_KEYS``.
    finetunes: named fine-tunings that every arm runs from its one pre-training, each with its own overrides over
        the shared ones (for example a task subset: ``data.engine.types`` and its held-out ``val.tasks``); empty: one
        fine-tuning. The pre-training's cost is then shared by K fine-tunings (the amortised regime).
    finetune_photos: names of embedded training photos (``maskdcpt.data.default.TRAIN_PHOTOS``) that fine-tuning
        alone trains on (the low-data regime; pre-training still sees all); empty: all of them.
    val: the fine-tuning runs' validation, the held-out evaluation (EMA weights; ``paired`` folders replace the
        synthetic 5D tasks; ``tasks`` of types fine-tuning never trains on are reported as unseen).
    pretrain_val: the pre-training runs' validation (the classifier's held-out top-1); ``every: 0`` validates
        before the first and after the last step only.
    launch: ``launcher: none`` runs the arms one after another in this process; ``local`` / ``slurm`` submit
        one job per (arm, seed) as a job array (submitit), with these resources.
    """

    model: str = "nafnet_tiny"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    crop_size: int = ranged(64, ge=32)
    batch_size: int = ranged(16, ge=1)
    seeds: list[int] = field(default_factory=lambda: [0])
    arm_seeds: dict[str, list[int]] = field(default_factory=dict)
    pretrain_steps: int = ranged(600, ge=1)
    finetune_steps: int = ranged(400, ge=1)
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    common: list[str] = field(default_factory=list)
    pretrain: list[str] = field(default_factory=list)
    finetune: list[str] = field(default_factory=list)
    finetunes: dict[str, list[str]] = field(default_factory=dict)
    finetune_photos: list[str] = field(default_factory=list)
    val: ValConfig = field(default_factory=_default_val)
    pretrain_val: ValConfig = field(default_factory=_default_pretrain_val)
    launch: LaunchOptions = field(default_factory=_default_launch)

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ConfigError(f"arms: unknown arm {unknown[0]!r}; known arms: {', '.join(ARMS)}")
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"arms: give each arm once, at least one; got {self.arms}")
        for where, seeds in (("seeds", self.seeds), *((f"arm_seeds.{a}", s) for a, s in self.arm_seeds.items())):
            if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
                    or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
                raise ConfigError(f"{where}: give each seed once, at least one, as integers >= 0; got {seeds}")
        stray = [a for a in self.arm_seeds if a not in ARMS]
        if stray:
            raise ConfigError(f"arm_seeds: unknown arm {stray[0]!r}; known arms: {', '.join(ARMS)}")
        check_ranges(self, "")
        for section in ("common", "pretrain", "finetune"):
            _check_overrides(section, getattr(self, section))
        for name, items in self.finetunes.items():
            if not _NAME.match(str(name)) or name == DEFAULT_FINETUNE:
                raise ConfigError(f"finetunes: {name!r} is not a usable name (letters, digits, _ and -; not "
                                  f"{DEFAULT_FINETUNE!r})")
            _check_overrides(f"finetunes.{name}", items, FINETUNE_OWN_KEYS)
        if self.finetune_photos:
            known = set(TRAIN_PHOTOS)
            wrong = [p for p in self.finetune_photos if p not in known]
            if wrong or len(set(self.finetune_photos)) != len(self.finetune_photos):
                raise ConfigError(f"finetune_photos: {wrong or self.finetune_photos} — give each once, among the "
                                  f"embedded training photos: {', '.join(TRAIN_PHOTOS)}")
            sets_sources = [i for i in [*self.common, *self.finetune, *sum(self.finetunes.values(), [])]
                            if i.split("=", 1)[0].strip().startswith("data.sources")]
            if sets_sources:
                raise ConfigError(f"finetune_photos chooses fine-tuning's data itself; {sets_sources[0]!r} would "
                                  "replace it")
        if not self.val.enabled:
            raise ConfigError("val.every must be > 0: the held-out curve is the experiment's result")

    def seeds_of(self, arm: str) -> list[int]:
        return list(self.arm_seeds.get(arm, self.seeds))

    @property
    def all_seeds(self) -> list[int]:
        """Every seed some arm runs at, in order of first mention."""
        return list(dict.fromkeys([*self.seeds, *(s for seeds in self.arm_seeds.values() for s in seeds)]))

    def with_runs(self, other: "TransferConfig") -> "TransferConfig":
        """This experiment with the arms and seeds of ``other`` added (an arm's seeds: the union of both)."""
        arms = list(dict.fromkeys([*self.arms, *other.arms]))
        seeds_of = {a: self.seeds_of(a) for a in self.arms}
        for a in other.arms:
            seeds_of[a] = list(dict.fromkeys([*seeds_of.get(a, []), *other.seeds_of(a)]))
        seeds = list(dict.fromkeys(s for a in arms for s in seeds_of[a]))
        return dataclasses.replace(self, arms=arms, seeds=seeds,
                                   arm_seeds={**self.arm_seeds, **{a: s for a, s in seeds_of.items() if s != seeds}})

    @property
    def finetune_names(self) -> list[str]:
        return list(self.finetunes) or [DEFAULT_FINETUNE]

    def finetune_budget(self, arm: Arm) -> int:
        """Fine-tuning steps of ``arm``: F, or F plus the pre-training's steps per fine-tuning that shares it."""
        if arm.budget == "F":
            return self.finetune_steps
        return self.finetune_steps + round(self.pretrain_steps / len(self.finetune_names))


@dataclass
class ArmJobConfig(TransferConfig):
    """One (arm, seed) as a job: the experiment's config (DIR/experiment.yaml) plus ``arm``, ``seed`` and its folder
    ``run.output_dir/run.name`` (the experiment folder and ``<arm>/seed<seed>``, see :func:`member_name`)."""

    arm: str = ""
    seed: int = -1
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.arm not in ARMS:
            raise ConfigError(f"arm: {self.arm!r} is not one of {', '.join(ARMS)}")
        if self.arm in self.arms and self.seed not in self.seeds_of(self.arm):
            raise ConfigError(f"seed: {self.seed} is not one of arm {self.arm}'s seeds {self.seeds_of(self.arm)}")


def load_transfer_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TransferConfig:
    return load_config(TransferConfig, path, overrides)


def load_arm_job_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ArmJobConfig:
    return load_config(ArmJobConfig, path, overrides)


def member_name(arm: str, seed: int) -> str:
    """An (arm, seed)'s folder relative to the experiment folder, and its name in the job array."""
    return f"{arm}/seed{seed}"


def arm_dir(cfg: ArmJobConfig) -> Path:
    return Path(cfg.run.output_dir) / (cfg.run.name or member_name(cfg.arm, cfg.seed))


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
class FinetunePlan:
    """One fine-tuning of an arm: its overrides (what ``tools/finetune.py`` would be given) and config."""

    name: str
    overrides: list[str]
    config: FinetuneConfig

    @property
    def dir(self) -> Path:
        return finetune_run_dir(self.config)

    @property
    def steps(self) -> int:
        return self.config.train.max_steps


@dataclass
class ArmPlan:
    """An arm at one seed resolved: its pre-training (if any) and its fine-tunings (one per name of
    ``TransferConfig.finetune_names``), placed under ``folder`` = DIR/<arm>/seed<seed>."""

    name: str
    arm: Arm
    seed: int
    folder: Path
    pretrain_overrides: list[str] | None
    pretrain: PretrainConfig | None
    finetunes: dict[str, FinetunePlan]

    @property
    def pretrain_dir(self) -> Path | None:
        return pretrain_run_dir(self.pretrain) if self.pretrain is not None else None

    @property
    def steps(self) -> dict[str, int]:
        """P (0 without pre-training) and the fine-tuning steps (the same for each of its fine-tunings)."""
        return {"pretrain": self.pretrain.train.max_steps if self.pretrain is not None else 0,
                "finetune": next(iter(self.finetunes.values())).steps}

    @property
    def finished(self) -> bool:
        """Whether every fine-tuning has finished (the pre-training then has too)."""
        return all(run_finished(ft.dir, ft.steps) for ft in self.finetunes.values())

    def commands(self) -> list[str]:
        """The stand-alone commands that make the same runs."""
        out = []
        if self.pretrain_overrides is not None:
            out.append(shlex.join(["python", "tools/pretrain.py", *self.pretrain_overrides]))
        for ft in self.finetunes.values():
            out.append(shlex.join(["python", "tools/finetune.py", *ft.overrides]))
        return out


def _val_overrides(val: ValConfig) -> list[str]:
    """The val section as overrides of the fields that differ from the defaults (the runs start from those)."""
    default = to_dict(ValConfig())
    return [format_override(f"val.{k}", v) for k, v in to_dict(_absolute_paths(val)).items() if v != default[k]]


def _shared(cfg: TransferConfig, seed: int, steps: int, val: ValConfig) -> list[str]:
    kwargs = [format_override("model.kwargs", cfg.model_kwargs)] if cfg.model_kwargs else []
    return [format_override("model.name", cfg.model), *kwargs, f"data.crop_size={cfg.crop_size}",
            f"train.batch_size={cfg.batch_size}", f"train.seed={seed}", f"train.max_steps={steps}",
            *_val_overrides(val)]


def photos_dir(out: str | Path) -> Path:
    return Path(out).resolve() / PHOTOS_FOLDER


def plan_arm(cfg: TransferConfig, name: str, seed: int, out: str | Path) -> ArmPlan:
    """Arm ``name`` of ``cfg`` at ``seed`` in ``out/<name>/seed<seed>``: its pre-training (if any) and fine-tunings."""
    arm = ARMS[name]
    folder = Path(out).resolve() / member_name(name, seed)
    P = cfg.pretrain_steps
    pre_overrides = pre_cfg = None
    pretrained = "none"
    if arm.pretrain is not None:
        pre_val = dataclasses.replace(cfg.pretrain_val, every=cfg.pretrain_val.every or P)
        pre_overrides = [*cfg.common, *cfg.pretrain, *_shared(cfg, seed, P, pre_val), *arm.pretrain,
                         f"run.output_dir={folder}", "run.name=pretrain"]
        pre_cfg = load_pretrain_config(None, pre_overrides)
        pretrained = str(pretrain_run_dir(pre_cfg))
    photos = ([format_override("data.sources", [{"root": str(photos_dir(out))}])] if cfg.finetune_photos else [])
    finetunes = {}
    for ft_name in cfg.finetune_names:
        own = cfg.finetunes.get(ft_name, [])
        folder_name = DEFAULT_FINETUNE if ft_name == DEFAULT_FINETUNE else f"{DEFAULT_FINETUNE}_{ft_name}"
        overrides = [*cfg.common, *cfg.finetune, *photos, *_shared(cfg, seed, cfg.finetune_budget(arm), cfg.val),
                     *own, format_override("pretrained", pretrained), f"run.output_dir={folder}",
                     f"run.name={folder_name}"]
        finetunes[ft_name] = FinetunePlan(ft_name, overrides, load_finetune_config(None, overrides))
    return ArmPlan(name, arm, seed, folder, pre_overrides, pre_cfg, finetunes)


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


def check_arms(plans: Sequence[ArmPlan], reference: dict[tuple[str, int], ArmPlan]) -> None:
    """Every arm differs from the reference arms at its seed exactly where :data:`ARMS` says, and in all of those
    places: an override in the shared lists that already sets an arm's key would make that arm a copy of maskdcpt."""
    for plan in plans:
        ref_pre = reference[REFERENCE_PRETRAIN, plan.seed].pretrain
        ref_ft = reference[REFERENCE_FINETUNE, plan.seed].finetunes
        want_pre, want_ft = expected_differences(plan)
        got_pre = set(config_differences(plan.pretrain, ref_pre)) if plan.pretrain is not None else set()
        checks = [("pre-training", got_pre, want_pre)]
        checks += [(f"fine-tuning {n!r}", set(config_differences(ft.config, ref_ft[n].config)), want_ft)
                   for n, ft in plan.finetunes.items()]
        for what, got, want in checks:
            if got != want:
                hint = (f" (the shared overrides already give {sorted(want - got)} the arm's value?)"
                        if got < want else "")
                raise ConfigError(f"arm {plan.name}: its {what} config differs from the reference arm's in "
                                  f"{sorted(got) or 'nothing'}, but ARMS says {sorted(want) or 'nothing'}{hint}")


def plan_arms(cfg: TransferConfig, out: str | Path, arms: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None) -> dict[tuple[str, int], ArmPlan]:
    """The plans of ``arms`` (default ``cfg.arms``) at ``seeds`` (default: each arm's own, ``cfg.seeds_of``), keyed
    ``(arm, seed)``, seed by seed, checked against the reference arms."""
    names = list(cfg.arms if arms is None else arms)
    wanted = {name: cfg.seeds_of(name) if seeds is None else list(seeds) for name in names}
    order = list(dict.fromkeys(s for name in names for s in wanted[name]))
    plans = {(name, seed): plan_arm(cfg, name, seed, out) for seed in sorted(order, key=order.index)
             for name in names if seed in wanted[name]}
    reference = {(n, s): plans.get((n, s)) or plan_arm(cfg, n, s, out)
                 for n in (REFERENCE_PRETRAIN, REFERENCE_FINETUNE) for s in {s for _, s in plans}}
    check_arms(list(plans.values()), reference)
    return plans


def unseen_tasks(ft: FinetuneConfig) -> list[str]:
    """The held-out tasks whose degradation type the fine-tuning never trains on (synthetic tasks only)."""
    trained = set(ft.data.engine.type_names)
    return [t.name for t in ft.val.tasks if not ft.val.paired and resolve(t.type).name not in trained]


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
        """Write ``cfg`` (its folders absolute) and the photos fine-tuning sees (``finetune_photos``); a folder made
        with another recipe is refused. Only ``arms``, ``seeds`` and ``launch`` may change between invocations: they
        decide what runs, not how; the folder keeps every (arm, seed) asked for so far, and the report covers them
        all."""
        cfg = dataclasses.replace(cfg, val=_absolute_paths(cfg.val), pretrain_val=_absolute_paths(cfg.pretrain_val))
        if self.config_file.is_file():
            saved = self.load()
            diff = config_differences(saved, cfg, ignore=("arms", "seeds", "arm_seeds", "launch"))
            if diff:
                shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in list(diff.items())[:4])
                raise ConfigError(f"{self.path} holds an experiment with another recipe ({shown}); give another "
                                 "--out, or delete the folder to redo it")
            cfg = dataclasses.replace(saved.with_runs(cfg), launch=cfg.launch)
        self.path.mkdir(parents=True, exist_ok=True)
        if cfg.finetune_photos:
            self._copy_photos(cfg.finetune_photos)
        # atomically: queued or requeued arm jobs read it when they start
        tmp = self.config_file.with_suffix(".yaml.tmp")
        save_config(cfg, tmp)
        os.replace(tmp, self.config_file)
        if command:
            with open(self.path / COMMANDS_FILE, "a") as f:
                f.write(command + "\n")

    def _copy_photos(self, names: Sequence[str]) -> None:
        """The named embedded training photos, copied into DIR/finetune_photos (a data source of their own)."""
        folder = photos_dir(self.path)
        folder.mkdir(exist_ok=True)
        for name in names:
            if not (folder / name).is_file():
                shutil.copyfile(Path(default_photo_dir()) / name, folder / name)
        extra = sorted(p.name for p in folder.iterdir() if p.name not in names)
        if extra:
            raise ConfigError(f"{folder} holds photos the experiment does not name ({', '.join(extra)}); remove them")

    def commands(self) -> list[str]:
        path = self.path / COMMANDS_FILE
        lines = path.read_text().splitlines() if path.is_file() else []
        return list(dict.fromkeys(line for line in lines if line.strip()))


