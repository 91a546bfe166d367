"""Does pre-training help? Fine-tuning from scratch against fine-tuning from MaskDCPT and its ablations.

Every arm fine-tunes the same restorer with the same recipe, data, seeds and held-out set; the arms differ only
in where the fine-tuning starts and, for ``scratch_equal_total``, in its length (:data:`ARMS`, the one table of
their differences). An experiment lives in one folder::

    DIR/experiment.yaml            the resolved TransferConfig (jobs read it; a rerun must match it)
    DIR/commands.txt               the commands that ran or submitted it
    DIR/<arm>/pretrain/            the arm's pre-training run (pre-trained arms only)
    DIR/<arm>/finetune/            its fine-tuning run (val.jsonl: the held-out curve)
    DIR/<arm>/timing.json          seconds spent in each phase, summed over sessions
    DIR/<arm>/metrics.json         the arm's result, written when it finishes
    DIR/results.json, report.md, curves.png
    DIR/manifest.json, DIR/slurm/  the job array (launch.launcher slurm or local)

Rerunning the same command skips finished arms (fine-tuning at its max_steps) and resumes interrupted ones: both
trainers resume from their ``checkpoints/last.ckpt``. On a cluster each arm is one member of a job array, running
pre-training then fine-tuning in one job (:func:`run_arm_job`, the ``transfer_arm`` launch target), requeued and
resumed like any training job; the report is written by a job that waits for the array, by ``launch.wait``, or by
``--collect DIR``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from ..config import check_ranges, format_override, load_config, ranged, save_config, to_dict
from ..errors import ConfigError
from ..data.validation import ValConfig
from ..launch.launcher import LaunchOptions, build_executor, remove_unexpanded_folder
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
            raise ValueError(f"arm: {self.arm!r} is not one of {', '.join(ARMS)}")


def load_transfer_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TransferConfig:
    return load_config(TransferConfig, path, overrides)


def load_arm_job_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ArmJobConfig:
    return load_config(ArmJobConfig, path, overrides)


def arm_dir(cfg: ArmJobConfig) -> Path:
    return Path(cfg.run.output_dir) / (cfg.run.name or cfg.arm)


def preset_path(name: str) -> Path:
    """``configs/experiments/transfer_<name>.yaml``; ``ValueError`` listing the presets there otherwise."""
    path = PRESET_DIR / f"transfer_{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("transfer_") for p in PRESET_DIR.glob("transfer_*.yaml"))
        raise ValueError(f"no preset {name!r} ({path}); presets: {', '.join(known) or 'none'}")
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


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def config_differences(a: Any, b: Any, ignore: Sequence[str] = ("run",)) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (a's value, b's value)}`` where two configs differ, leaving out keys under ``ignore``."""
    fa, fb = _flat(to_dict(a)), _flat(to_dict(b))
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
                raise ValueError(f"arm {name}: its {what} config differs from the reference arm's in "
                                 f"{sorted(got) or 'nothing'}, but ARMS says {sorted(want) or 'nothing'}{hint}")


def plan_arms(cfg: TransferConfig, out: str | Path, arms: Sequence[str] | None = None) -> dict[str, ArmPlan]:
    """The plans of ``arms`` (default ``cfg.arms``), checked against the reference arms."""
    names = list(cfg.arms if arms is None else arms)
    plans = {name: plan_arm(cfg, name, out) for name in names}
    reference = {n: plans.get(n) or plan_arm(cfg, n, out) for n in (REFERENCE_PRETRAIN, REFERENCE_FINETUNE)}
    check_arms(plans, reference)
    return plans


# --------------------------------------------------------------------------------------------- running


def run_finished(folder: Path | None, steps: int) -> bool:
    """Whether the trainer finished the run in ``folder`` at ``steps`` (its metrics.json, written at the end)."""
    path = None if folder is None else folder / "metrics.json"
    if path is None or not path.is_file():
        return False
    try:
        return int(json.loads(path.read_text()).get("step", 0)) >= steps
    except (ValueError, TypeError):
        return False


def check_saved_config(folder: Path, cfg: Any) -> None:
    """A run folder made with another config must not be resumed or counted as this arm's."""
    path = folder / "config.yaml"
    if not path.is_file():
        return
    saved = yaml.safe_load(path.read_text()) or {}
    wanted = yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    diff = config_differences(saved, wanted, ignore=())
    if diff:
        shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in list(diff.items())[:4])
        raise ValueError(f"{folder} was made with another config ({shown}); give another --out, or delete the "
                         "folder to redo it")


@contextlib.contextmanager
def _timed(folder: Path, phase: str, enabled: bool):
    """Add the seconds spent in the block to ``folder/timing.json[phase]`` (also when it is interrupted)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if enabled:
            path = folder / TIMING_FILE
            timing = json.loads(path.read_text()) if path.is_file() else {}
            timing[phase] = round(timing.get(phase, 0.0) + time.perf_counter() - start, 1)
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(timing))


def _wait_for_run(folder: Path, steps: int, timeout_s: float = 1800.0) -> None:
    """Ranks other than 0 wait until rank 0 has exported the pre-trained encoder (its metrics.json follows it)."""
    deadline = time.time() + timeout_s
    while not run_finished(folder, steps):
        if time.time() > deadline:
            raise RuntimeError(f"rank 0 did not finish {folder} within {timeout_s:.0f} s")
        time.sleep(2.0)


def run_arm(plan: ArmPlan, resume: bool | str = "auto") -> dict[str, Any]:
    """Pre-train (if the arm does) then fine-tune, skipping what is finished and resuming what is not; returns the
    arm's result and, on rank 0, writes it to ``<arm>/metrics.json``. ``resume=False`` redoes both runs."""
    from ..training.finetune import run_finetuning
    from ..training.pretrain import run_pretraining
    from .report import arm_result

    if resume not in ("auto", True, False):
        raise ValueError(f"an arm resumes its runs ('auto') or redoes them (False); got resume={resume!r}")
    main = int(os.environ.get("RANK", "0")) == 0
    fresh = resume is False
    steps = plan.steps
    if not fresh:
        if main:  # rank 0 alone: it is also the one that rewrites config.yaml when a run starts
            if plan.pretrain is not None:
                check_saved_config(plan.pretrain_dir, plan.pretrain)
            check_saved_config(plan.finetune_dir, plan.finetune)
        if run_finished(plan.finetune_dir, steps["finetune"]):
            print(f"[{plan.name}] finished earlier (fine-tuning at step {steps['finetune']}): skipped", flush=True)
            return arm_result(plan)
    if plan.pretrain is not None:
        if not fresh and run_finished(plan.pretrain_dir, steps["pretrain"]):
            print(f"[{plan.name}] pre-training finished earlier: skipped", flush=True)
        else:
            print(f"[{plan.name}] pre-training, {steps['pretrain']} steps: {plan.pretrain_dir}", flush=True)
            with _timed(plan.folder, "pretrain", main):
                run_pretraining(plan.pretrain, resume=resume)
        if not main:
            _wait_for_run(plan.pretrain_dir, steps["pretrain"])
    print(f"[{plan.name}] fine-tuning, {steps['finetune']} steps: {plan.finetune_dir}", flush=True)
    with _timed(plan.folder, "finetune", main):
        run_finetuning(plan.finetune, resume=resume)
    result = arm_result(plan)
    if main:
        (plan.folder / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def run_arm_job(cfg: ArmJobConfig, resume: bool | str = "auto") -> dict[str, Any]:
    """The ``transfer_arm`` launch target: one arm, pre-training then fine-tuning, in one job. A requeued job
    calls it again and it resumes (a checkpoint path from ``TrainingJob.checkpoint`` means the same: 'auto')."""
    if isinstance(resume, str) and resume != "auto":
        resume = "auto"  # the arm's own last.ckpt files are found by both runs
    folder = arm_dir(cfg)
    plan = plan_arms(cfg, folder.parent, [cfg.arm])[cfg.arm]
    if plan.folder != folder.resolve():
        raise ValueError(f"arm {cfg.arm!r} must live in a folder named after it, not {folder}")
    return run_arm(plan, resume)


class ExperimentFolder:
    """``DIR``: its resolved config (``experiment.yaml``) and the commands that made it."""

    def __init__(self, out: str | Path):
        self.path = Path(out).resolve()

    @property
    def config_file(self) -> Path:
        return self.path / EXPERIMENT_FILE

    def load(self) -> TransferConfig:
        if not self.config_file.is_file():
            raise ValueError(f"{str(self.path)!r} is not a transfer experiment folder: no {EXPERIMENT_FILE}")
        return load_transfer_config(self.config_file)

    def prepare(self, cfg: TransferConfig, command: str | None) -> None:
        """Write ``cfg`` (its folders absolute); a folder made with another recipe is refused. Only ``arms`` and
        ``launch`` may change between invocations: they decide what runs, not how."""
        cfg = dataclasses.replace(cfg, val=_absolute_paths(cfg.val), pretrain_val=_absolute_paths(cfg.pretrain_val))
        if self.config_file.is_file():
            diff = config_differences(self.load(), cfg, ignore=("arms", "launch"))
            if diff:
                shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in list(diff.items())[:4])
                raise ValueError(f"{self.path} holds an experiment with another recipe ({shown}); give another "
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


def run_experiment(cfg: TransferConfig, out: str | Path, command: str | None = None) -> dict[str, Any] | None:
    """Run (``launch.launcher: none``) or submit every arm of ``cfg`` in ``out``; returns the results once they
    are all in (None when jobs were submitted without waiting)."""
    folder = ExperimentFolder(out)
    folder.prepare(cfg, command)
    cfg = folder.load()
    plans = plan_arms(cfg, folder.path)
    if cfg.launch.launcher == "none":
        for name in cfg.arms:
            run_arm(plans[name])
        return write_report(folder.path)
    jobs = submit_arms(cfg, folder.path, plans, command)
    if cfg.launch.wait or cfg.launch.launcher == "local":
        wait_for_jobs(jobs)
        remove_unexpanded_folder(folder.path / "slurm" / "%j")  # the local executor makes it again at start
        return write_report(folder.path)
    return None


# --------------------------------------------------------------------------------------------- the cluster


def submit_arms(cfg: TransferConfig, out: Path, plans: dict[str, ArmPlan], command: str | None) -> list[Any]:
    """The unfinished arms as one job array (``DIR/manifest.json``); on SLURM without ``launch.wait`` also a report
    job that runs once the whole array has ended."""
    from ..launch import sweep

    todo = [n for n in cfg.arms if not run_finished(plans[n].finetune_dir, plans[n].steps["finetune"])]
    for name in cfg.arms:
        if name not in todo:
            print(f"[{name}] finished earlier: not submitted", flush=True)
    if not todo:
        return []
    _refuse_queued(out, todo)
    spec = sweep.SweepSpec(target="transfer_arm", base_config=str(out / EXPERIMENT_FILE), base_overrides=[],
                           members=[sweep.SweepMember(n, [f"arm={n}"]) for n in todo])
    jobs = sweep.submit_sweep(spec, out, cfg.launch, spec_source=command)
    print(f"submitted {len(jobs)} arms ({cfg.launch.launcher}): "
          + ", ".join(f"{n} {j.job_id}" for n, j in zip(todo, jobs)), flush=True)
    if cfg.launch.launcher == "slurm" and not cfg.launch.wait:
        report = submit_report_job(cfg.launch, out, str(jobs[0].job_id).split("_")[0])
        manifest = json.loads((out / sweep.MANIFEST).read_text())
        manifest["report_job"] = {"job_id": str(report.job_id), "stdout": str(report.paths.stdout),
                                  "stderr": str(report.paths.stderr)}
        (out / sweep.MANIFEST).write_text(json.dumps(manifest, indent=2))
        print(f"report job {report.job_id} writes {out / 'report.md'} when the array has ended; "
              f"or: python tools/experiment.py transfer --collect {out}", flush=True)
    return jobs


def _refuse_queued(out: Path, arms: Sequence[str]) -> None:
    """An arm still queued or running from an earlier submission must not run twice at once."""
    from ..launch import sweep

    manifest = out / sweep.MANIFEST
    if not manifest.is_file():
        return
    for member in json.loads(manifest.read_text()).get("members", []):
        if member["name"] in arms and member.get("job_id"):
            state = sweep.squeue_state(str(member["job_id"]))
            if state in sweep.ALIVE_STATES:
                raise ValueError(f"arm {member['name']} is still {state} as job {member['job_id']}; wait for it or "
                                 f"cancel it (scancel {member['job_id']}) before submitting again")


@dataclass
class ReportJob:
    """The job that writes the report (a CPU task; it reads the run folders only)."""

    out: str

    def __call__(self) -> dict[str, Any]:
        return write_report(self.out)


def submit_report_job(opts: LaunchOptions, out: Path, array_id: str) -> Any:
    report_opts = dataclasses.replace(opts, gpus_per_node=0, tasks_per_node=1, nodes=1, cpus_per_task=1,
                                      constraint=None, timeout_min=30, job_name=f"{opts.job_name}-report")
    executor = build_executor(report_opts, out / "slurm" / "%j")
    executor.update_parameters(slurm_dependency=f"afterany:{array_id}")
    job = executor.submit(ReportJob(str(out)))
    remove_unexpanded_folder(out / "slurm" / "%j")
    return job


def wait_for_jobs(jobs: Sequence[Any], poll_s: float = 5.0) -> None:
    """Block until every job has ended (failed ones are reported by the report, not raised here)."""
    while not all(job.done() for job in jobs):
        time.sleep(poll_s)


# --------------------------------------------------------------------------------------------- the report


def arm_statuses(out: Path) -> dict[str, tuple[str, str]]:
    """``{arm: (status, reason)}`` of the arms in the job manifest (failed jobs and their last error line)."""
    from ..launch import sweep

    manifest = out / sweep.MANIFEST
    if not manifest.is_file():
        return {}
    statuses = {}
    for member in json.loads(manifest.read_text()).get("members", []):
        status, reason, _ = sweep.member_status(member, sweep.squeue_state)
        statuses[member["name"]] = (status, reason)
    return statuses


def write_report(out: str | Path, echo: bool = True) -> dict[str, Any]:
    """``results.json``, ``report.md`` and ``curves.png`` of the experiment in ``out``, from its run folders;
    prints the table. Arms that have not finished are listed with their state."""
    from . import report

    folder = ExperimentFolder(out)
    cfg = folder.load()
    plans = plan_arms(cfg, folder.path)
    results = report.collect_results(cfg, plans, arm_statuses(folder.path), folder.commands())
    curves = report.plot_curves(results, folder.path / "curves.png")
    (folder.path / "report.md").write_text(report.markdown(results, curves.name if curves else None))
    # last, and atomically: a complete results.json means the report is complete
    tmp = folder.path / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, folder.path / "results.json")
    if echo:
        print(report.text_table(results), flush=True)
        print(f"\nwritten: {folder.path / 'results.json'}, {folder.path / 'report.md'}"
              + (f", {curves}" if curves else ""), flush=True)
    return results


# --------------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help=f"a preset of {PRESET_DIR.relative_to(REPO)} (smoke, cpu, gpu, cluster)")
    source.add_argument("--config", help="a TransferConfig YAML file")
    source.add_argument("--collect", metavar="DIR", help="write the report of DIR from its run folders; run nothing")
    parser.add_argument("--out", help="the experiment folder (default: runs/experiments/transfer_<preset>)")
    parser.add_argument("--dry-run", action="store_true", help="print each arm's runs as commands; run nothing")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides of the preset, e.g. finetune_steps=200 arms=[scratch,maskdcpt]")


def main(args: argparse.Namespace, command: str | None = None) -> int:
    if args.collect:
        results = write_report(args.collect)
        return 0 if all(a["status"] == "done" for a in results["arms"].values()) else 1
    if not (args.preset or args.config):
        raise ValueError("give --preset NAME or --config FILE (or --collect DIR)")
    path = preset_path(args.preset) if args.preset else Path(args.config)
    cfg = load_transfer_config(path, args.overrides)
    out = Path(args.out or Path("runs") / "experiments" / f"transfer_{args.preset or path.stem}").resolve()
    if args.dry_run:
        for name, plan in plan_arms(cfg, out).items():
            print(f"# {name}: {plan.arm.about}")
            for line in plan.commands():
                print(line)
        return 0
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"transfer experiment in {out} ({stamp}); arms: {', '.join(cfg.arms)}", flush=True)
    results = run_experiment(cfg, out, command)
    return 0 if results is None or all(a["status"] == "done" for a in results["arms"].values()) else 1
