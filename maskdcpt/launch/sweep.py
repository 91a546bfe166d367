"""Ablation sweeps: a grid of config overrides → one job array → one table of final metrics.

A sweep file (YAML)::

    target: pretrain                    # a known target (see maskdcpt.launch.targets)
    base_config: configs/pretrain/x.yaml  # optional; relative: to the working directory, else to this file's folder or a parent
    base_overrides: [train.max_steps=100000]
    members:                            # explicit, named members (optional)
      - {name: no_mask, overrides: [model.mask_ratio=0]}
    grid:                               # cartesian product, named from the values (optional)
      model.mask_ratio: [0.25, 0.5, 0.75]

Each member runs in ``SWEEP_DIR/<name>/`` (its own run folder); job files go to ``SWEEP_DIR/slurm/``;
``SWEEP_DIR/manifest.json`` records members, overrides, run folders and job ids, which is all
``collect`` needs to build the table (``SWEEP_DIR/results.csv``).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as _dt
import itertools
import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from maskdcpt.cli import tool_main
from maskdcpt.config import build_config, flatten, format_override, format_value, load_config
from maskdcpt.errors import ConfigError, MissingFileError
from maskdcpt.launch.launcher import LaunchOptions, add_launcher_args, build_executor, remove_unexpanded_folder
from maskdcpt.launch.submitit_job import TrainingJob
from maskdcpt.launch.targets import resolve_target

MANIFEST = "manifest.json"
RESULTS_CSV = "results.csv"
# squeue states of a job that may still produce a result.
ALIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED"}


@dataclasses.dataclass
class SweepMember:
    name: str
    overrides: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class SweepSpec:
    """A sweep with its grid expanded: every member by name, with its overrides."""

    target: str
    base_config: str | None
    base_overrides: list[str]
    members: list[SweepMember]


@dataclasses.dataclass
class SweepFile:
    """A sweep file as written (see the module docstring); loaded by :func:`maskdcpt.config.load_config`."""

    target: str = "pretrain"
    base_config: str | None = None
    base_overrides: list[str] = dataclasses.field(default_factory=list)
    members: list[SweepMember] = dataclasses.field(default_factory=list)
    grid: dict[str, list[Any]] | None = None

    def __post_init__(self) -> None:
        resolve_target(self.target)
        _check_overrides(self.base_overrides, "base_overrides")
        for i, member in enumerate(self.members):
            _check_overrides(member.overrides, f"members[{i}].overrides")
            if _safe_name(member.name) != member.name or not member.name:
                raise ValueError(f"members[{i}].name {member.name!r} must use only letters, digits and . _ = -")
        if self.grid is None and not self.members:
            raise ValueError("a sweep needs 'members' and/or a 'grid'")
        seen: set[str] = set()
        for member in self.all_members():
            if member.name in seen:
                raise ValueError(f"two members are named {member.name!r}")
            seen.add(member.name)

    def all_members(self) -> list[SweepMember]:
        """The named members, then the grid's."""
        return self.members + (expand_grid(self.grid) if self.grid is not None else [])

    def spec(self) -> SweepSpec:
        return SweepSpec(self.target, self.base_config, list(self.base_overrides), self.all_members())


def _check_overrides(overrides: list[str], where: str) -> None:
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"{where}: {bad[0]!r} is not a 'key=value' override")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")


def expand_grid(grid: dict[str, list[Any]]) -> list[SweepMember]:
    """Cartesian product of ``{key: [values]}``; members are named ``key-value`` joined by ``__``.

    Names use the last part of each dotted key (``mask_ratio-0.5``) unless two keys share it.
    """
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"grid: expected a non-empty mapping of config key to a list of values, got {grid!r}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
    keys = list(grid)
    short = [k.split(".")[-1] for k in keys]
    labels = short if len(set(short)) == len(short) else keys
    members = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        name = "__".join(_safe_name(f"{label}-{format_value(v)}") for label, v in zip(labels, combo))
        members.append(SweepMember(name, [format_override(k, v) for k, v in zip(keys, combo)]))
    return members


def parse_spec(data: dict[str, Any], source: str = "sweep") -> SweepSpec:
    """Validate a sweep mapping (as loaded from YAML); ``ValueError`` names the key and ``source``."""
    return build_config(SweepFile, data, source).spec()


def load_spec(path: str | Path) -> SweepSpec:
    return load_config(SweepFile, path).spec()


def member_overrides(spec: SweepSpec, member: SweepMember, sweep_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    """Base, then member, then command-line overrides; the run folder is always ``sweep_dir/name``."""
    target = resolve_target(spec.target)
    return [*spec.base_overrides, *member.overrides, *extra,
            *target.placement_overrides(sweep_dir, member.name)]


def resolve_base_config(base_config: str | None, spec_path: str | None) -> str | None:
    """``base_config`` as an absolute path: as given when absolute; else relative to the working directory, or
    else to the sweep file's folder or one of its parents (``configs/sweeps/x.yaml`` names
    ``configs/pretrain/…`` from the repository root), so that a sweep runs the same from any folder. The dry run
    and the launch both resolve it here."""
    if not base_config:
        return None
    path = Path(base_config).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        folders = [Path.cwd()]
        if spec_path:
            here = Path(spec_path).resolve().parent
            folders += [here, *here.parents]
        candidates = [folder / path for folder in folders]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate.resolve())
    raise MissingFileError(f"base_config: {base_config} is not a file relative to the working directory ({Path.cwd()})"
                           + (f" nor to the sweep file's folder or its parents ({Path(spec_path).resolve().parent})"
                              if spec_path else ""))


def check_members(spec: SweepSpec, sweep_dir: Path, extra_overrides: Sequence[str],
                  base_config: str | None) -> list[tuple[SweepMember, list[str], Any]]:
    """Every member's overrides and its config, built (so that a bad member fails before anything is queued, in
    a dry run as in a launch)."""
    target = resolve_target(spec.target)
    return [(member, overrides, target.config(base_config, overrides))
            for member in spec.members
            for overrides in [member_overrides(spec, member, sweep_dir, extra_overrides)]]


def submit_sweep(spec: SweepSpec, sweep_dir: str | Path, opts: LaunchOptions, extra_overrides: Sequence[str] = (),
                 spec_source: str | None = None) -> list[Any]:
    """Check every member's config, submit all as one job array, write the manifest; returns the jobs."""
    if opts.launcher not in ("slurm", "local"):
        raise ConfigError(f"a sweep runs as a job array: use --launcher slurm or local, not {opts.launcher!r}")
    sweep_dir = Path(sweep_dir).resolve()
    target = resolve_target(spec.target)
    base_config = resolve_base_config(spec.base_config, spec_source)
    jobs_spec = check_members(spec, sweep_dir, extra_overrides, base_config)
    opts = opts.with_cpus_for(*(cfg for _, _, cfg in jobs_spec))
    executor = build_executor(opts, sweep_dir / "slurm" / "%j")  # refuses what the cluster can never run
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with executor.batch():
        jobs = [executor.submit(TrainingJob(target, base_config, overrides)) for _, overrides, _ in jobs_spec]
    remove_unexpanded_folder(sweep_dir / "slurm" / "%j")
    manifest = {
        "spec": spec_source,
        "target": spec.target,
        "base_config": base_config,
        "launcher": opts.launcher,
        "submitted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "members": [
            {"name": m.name, "overrides": ov, "run_dir": str(target.folder(cfg)), "job_id": str(job.job_id),
             "job_folder": str(Path(job.paths.folder)), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
             "result": str(job.paths.result_pickle)}
            for (m, ov, cfg), job in zip(jobs_spec, jobs)
        ],
    }
    (sweep_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return jobs


# --- collect ---------------------------------------------------------------------------------------------------


def squeue_state(job_id: str) -> str | None:
    """The job's state from ``squeue`` (recently ended jobs included), or ``None`` when unknown."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        # "Invalid job id": the controller has forgotten it (ended long ago) — it can no longer produce a result.
        return "GONE" if "Invalid job id" in out.stderr else None
    states = out.stdout.split()
    return states[0] if states else "GONE"


def _cells(metrics: Any) -> dict[str, Any]:
    """The table cells of a run's metrics: dotted keys of its numbers, strings and flags (lists, e.g. weights, are
    not cells)."""
    return {k: v for k, v in flatten(metrics).items() if isinstance(v, (int, float, str, bool)) or v is None}


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def member_status(member: dict[str, Any], job_state: Callable[[str], str | None]) -> tuple[str, str, dict]:
    """(status, reason, metrics) of one manifest member: ``done``, ``failed`` or ``unfinished``."""
    metrics_path = Path(member["run_dir"]) / "metrics.json"
    if metrics_path.is_file():
        try:
            return "done", "", _cells(json.loads(metrics_path.read_text()))
        except json.JSONDecodeError as err:
            return "failed", f"unreadable {metrics_path}: {err}", {}
    result = Path(member.get("result", ""))
    if member.get("result") and result.is_file():
        try:
            with open(result, "rb") as f:
                outcome, payload = pickle.load(f)
        except Exception as err:  # a truncated pickle is itself a failure to report
            return "failed", f"unreadable result {result}: {err}", {}
        if outcome == "error":
            lines = [ln for ln in str(payload).splitlines() if ln.strip()]
            return "failed", lines[-1].strip() if lines else "job raised an error", {}
        return "failed", "job returned without writing metrics.json", {}
    state = job_state(str(member.get("job_id"))) if member.get("job_id") else None
    last = _last_line(Path(member.get("stderr", ""))) if member.get("stderr") else ""
    if state is None:
        return "unfinished", "no metrics.json yet; job state unknown" + (f"; last log line: {last}" if last else ""), {}
    if state in ALIVE_STATES:
        return "unfinished", state, {}
    return "failed", f"{state} without a result" + (f": {last}" if last else ""), {}


def collect(sweep_dir: str | Path, job_state: Callable[[str], str | None] = squeue_state) -> list[dict[str, Any]]:
    """One row per member (``name``, ``status``, ``job_id``, metric columns, ``reason``); writes results.csv."""
    sweep_dir = Path(sweep_dir)
    manifest_path = sweep_dir / MANIFEST
    if not manifest_path.is_file():
        raise ConfigError(f"{str(sweep_dir)!r} is not a sweep folder: no {MANIFEST}")
    manifest = json.loads(manifest_path.read_text())
    rows = []
    for member in manifest["members"]:
        status, reason, metrics = member_status(member, job_state)
        rows.append({"name": member["name"], "status": status, "job_id": member.get("job_id", ""),
                     **metrics, "reason": reason})
    columns = ["name", "status", "job_id"]
    for row in rows:
        columns += [k for k in row if k not in columns and k != "reason"]
    columns.append("reason")
    with open(sweep_dir / RESULTS_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and k != "reason"]
    columns.append("reason")

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    table = [columns] + [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@tool_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Submit an ablation sweep as one job array, or collect its results (--collect SWEEP_DIR).")
    parser.add_argument("spec", nargs="?", help="sweep YAML (configs/sweeps/<name>.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every member")
    parser.add_argument("--sweep-dir", default=None, help="default: runs/sweeps/<spec name>-<UTC time>")
    parser.add_argument("--collect", metavar="SWEEP_DIR", default=None, help="gather metrics of a submitted sweep")
    parser.add_argument("--dry-run", action="store_true", help="print the members and their overrides; submit nothing")
    add_launcher_args(parser)
    parser.set_defaults(launcher="slurm")
    # Overrides may come after options (``... --sweep-dir D train.max_steps=10``).
    args = parser.parse_intermixed_args(argv)
    return _run(parser, args)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.collect:
        rows = collect(args.collect)
        print(format_table(rows))
        print(f"\nwritten: {Path(args.collect) / RESULTS_CSV}")
        return 0 if all(r["status"] == "done" for r in rows) else 1
    if not args.spec:
        parser.error("give a sweep YAML to submit, or --collect SWEEP_DIR")
    spec = load_spec(args.spec)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    sweep_dir = Path(args.sweep_dir or Path("runs") / "sweeps" / f"{Path(args.spec).stem}-{stamp}")
    if args.dry_run:
        base_config = resolve_base_config(spec.base_config, args.spec)
        print(f"base config: {base_config or '(the target defaults)'}")
        for member, overrides, _ in check_members(spec, sweep_dir.resolve(), args.overrides, base_config):
            print(f"{member.name}: {' '.join(overrides)}")
        return 0
    jobs = submit_sweep(spec, sweep_dir, LaunchOptions.from_args(args), args.overrides, str(args.spec))
    ids = ", ".join(str(j.job_id) for j in jobs)
    print(f"submitted {len(jobs)} members ({args.launcher}): {ids}")
    print(f"sweep folder: {sweep_dir.resolve()}  (logs in {sweep_dir.resolve() / 'slurm'})")
    print(f"collect with: python tools/sweep.py --collect {sweep_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
