"""Submit a training run through submitit: to SLURM, to the local machine, or in-process.

Two lines wire it into a tool (the shape of MAE's ``submitit_pretrain.py``, without a second script)::

    add_launcher_args(parser)
    if launch("pretrain", args.config, args.overrides, args) is None:   # --launcher none: run here
        run_pretraining(load_pretrain_config(args.config, args.overrides))

Tools without a typed config (``tools/evaluate.py``) use :func:`launch_tool` instead, which re-runs the
tool itself inside the job::

    add_launcher_args(parser)
    if launch_tool(__file__, sys.argv[1:] if argv is None else argv, args.out or "runs/evaluate", args) is not None:
        return 0

Job files (pickles, per-task stdout/stderr, results) go to ``RUN_DIR/slurm/<job id>/`` beside the
run's checkpoints, so both must sit on storage that every node and the submitting machine share.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any, Sequence

from maskdcpt.errors import ConfigError
from maskdcpt.launch.submitit_job import ToolJob, TrainingJob
from maskdcpt.launch.targets import Target, resolve_target

LAUNCHERS = ("none", "local", "slurm", "debug")


@dataclasses.dataclass
class LaunchOptions:
    """How to run a job. ``none`` runs in this process; ``local`` / ``slurm`` / ``debug`` go through submitit."""

    launcher: str = "none"
    nodes: int = 1
    gpus_per_node: int = 0
    # Defaults to one task per GPU (or one task on CPU); set it for multi-process CPU runs.
    tasks_per_node: int | None = None
    # None: one CPU for the training process and one per data-loader worker (``with_cpus_for``)
    cpus_per_task: int | None = None
    partition: str | None = None
    timeout_min: int = 60
    # SLURM sends the preemption signal this long before the time limit: time to requeue.
    signal_delay_s: int = 120
    mem_gb: float | None = None
    job_name: str = "maskdcpt"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    max_requeues: int = 30
    wait: bool = False

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"launcher {self.launcher!r} is not one of {list(LAUNCHERS)}")
        for key in ("nodes", "cpus_per_task", "timeout_min"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"launcher option {key} must be >= 1, got {getattr(self, key)}")
        if self.gpus_per_node < 0:
            raise ConfigError(f"launcher option gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise ConfigError(f"launcher option tasks_per_node must be >= 1, got {self.tasks_per_node}")
        if self.launcher in ("local", "debug") and self.nodes != 1:
            raise ConfigError(f"the {self.launcher!r} launcher runs on one machine; got nodes={self.nodes}")

    @property
    def resolved_tasks_per_node(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return max(self.gpus_per_node, 1)

    def with_cpus_for(self, *configs: Any) -> "LaunchOptions":
        """These options with ``cpus_per_task`` sized for the runs' ``data.num_workers``: one CPU per data-loader
        worker and one for the training process, the most any of ``configs`` needs. A task given fewer CPUs than
        that starves its workers (16 workers on 1 CPU feed a GPU at a sixteenth of their rate), so an explicit
        ``--cpus-per-task`` below it is refused."""
        workers = max((getattr(getattr(c, "data", None), "num_workers", 0) or 0 for c in configs), default=0)
        need = workers + 1
        if self.cpus_per_task is None:
            return dataclasses.replace(self, cpus_per_task=need)
        if self.cpus_per_task < need:
            raise ConfigError(f"--cpus-per-task {self.cpus_per_task} is fewer than a task needs: {workers} data-loader "
                              f"workers (data.num_workers) and the training process; ask for --cpus-per-task {need}, "
                              "or lower data.num_workers")
        return self

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "LaunchOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})


def add_launcher_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--launcher --nodes --gpus-per-node ... --timeout-min`` to a tool's parser."""
    d = LaunchOptions()
    g = parser.add_argument_group("launch (submitit)")
    g.add_argument("--launcher", choices=LAUNCHERS, default=d.launcher,
                   help="none: run in this process; local: submitit local executor; slurm: submit to SLURM")
    g.add_argument("--nodes", type=int, default=d.nodes)
    g.add_argument("--gpus-per-node", dest="gpus_per_node", type=int, default=d.gpus_per_node)
    g.add_argument("--tasks-per-node", dest="tasks_per_node", type=int, default=None,
                   help="processes per node (default: one per GPU, 1 on CPU)")
    g.add_argument("--cpus-per-task", dest="cpus_per_task", type=int, default=None,
                   help="CPUs per task (default: data.num_workers + 1, a CPU per data-loader worker and the trainer's)")
    g.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default)")
    g.add_argument("--timeout-min", dest="timeout_min", type=int, default=d.timeout_min)
    g.add_argument("--signal-delay-s", dest="signal_delay_s", type=int, default=d.signal_delay_s,
                   help="seconds before the time limit at which the job checkpoints and requeues")
    g.add_argument("--mem-gb", dest="mem_gb", type=float, default=None)
    g.add_argument("--job-name", dest="job_name", default=d.job_name)
    g.add_argument("--account", default=None, help="SLURM account")
    g.add_argument("--qos", default=None, help="SLURM quality of service")
    g.add_argument("--constraint", default=None, help="SLURM node constraint (e.g. a GPU type)")
    g.add_argument("--max-requeues", dest="max_requeues", type=int, default=d.max_requeues,
                   help="how many time-outs may requeue the job")
    g.add_argument("--wait", action="store_true", help="block until the job ends and print its result")
    return parser


def executor_parameters(opts: LaunchOptions) -> dict[str, Any]:
    """The ``AutoExecutor.update_parameters`` arguments for ``opts`` (shared names + ``slurm_`` ones)."""
    params: dict[str, Any] = {
        "name": opts.job_name,
        "nodes": opts.nodes,
        "tasks_per_node": opts.resolved_tasks_per_node,
        "cpus_per_task": opts.cpus_per_task or 1,
        "gpus_per_node": opts.gpus_per_node,
        "timeout_min": opts.timeout_min,
    }
    if opts.mem_gb is not None:
        params["mem_gb"] = opts.mem_gb
    if opts.launcher == "slurm":
        params["slurm_signal_delay_s"] = opts.signal_delay_s
        # srun's own default truncates the task logs when a requeued job starts again, which erases the
        # first attempt's output (why it was preempted); sbatch's files are already appended to by submitit.
        params["slurm_srun_args"] = ["--open-mode=append"]
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(opts, key) is not None:
                params[f"slurm_{key}"] = getattr(opts, key)
    return params


def _partitions() -> dict[str, dict[str, str]] | None:
    """``scontrol show partition`` as {name: fields}; None where the SLURM client tools cannot tell (not installed,
    no controller answering: then sbatch reports the problem itself)."""
    if shutil.which("scontrol") is None:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "partition", "-o"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        return None
    parts = {}
    for line in out.stdout.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if "PartitionName" in fields:
            parts[fields["PartitionName"]] = fields
    return parts


def check_slurm_request(opts: LaunchOptions) -> None:
    """Refuse, before anything is submitted, a request that the cluster can never run: a partition that does not
    exist, or more nodes than the partition has. SLURM itself queues such a job and leaves it pending for ever
    (reason ``PartitionNodeLimit`` / ``PartitionConfig``), or fails it with a message about another option."""
    parts = _partitions()
    if not parts:
        return
    if opts.partition is not None:
        name = opts.partition
        if name not in parts:
            raise ConfigError(f"--partition {name!r} does not exist on this cluster; its partitions: "
                              f"{', '.join(sorted(parts))} (`sinfo -s` lists them)")
    else:
        name = next((n for n, f in parts.items() if f.get("Default") == "YES"), None)
        if name is None:
            raise ConfigError(f"this cluster has no default partition; choose one with --partition "
                              f"({', '.join(sorted(parts))})")
    fields = parts[name]
    total = fields.get("TotalNodes", "")
    if total.isdigit() and opts.nodes > int(total):
        raise ConfigError(f"--nodes {opts.nodes}: partition {name!r} has {total} node(s) ({fields.get('Nodes', '?')}); "
                          f"ask for at most {total}, or choose a larger partition")
    max_nodes = fields.get("MaxNodes", "UNLIMITED")
    if max_nodes.isdigit() and opts.nodes > int(max_nodes):
        raise ConfigError(f"--nodes {opts.nodes}: partition {name!r} allows at most {max_nodes} node(s) per job")


def build_executor(opts: LaunchOptions, folder: str | Path) -> Any:
    """A submitit executor for ``opts`` writing its job files to ``folder`` (may contain ``%j``)."""
    import submitit

    if opts.launcher == "none":
        raise ValueError("launcher 'none' runs in-process and has no executor")
    if opts.launcher == "slurm":
        check_slurm_request(opts)
    kwargs: dict[str, Any] = {}
    if opts.launcher == "slurm":
        kwargs["slurm_max_num_timeout"] = opts.max_requeues
    executor = submitit.AutoExecutor(folder=str(folder), cluster=opts.launcher, **kwargs)
    params = executor_parameters(opts)
    if opts.launcher == "debug":
        params = {k: v for k, v in params.items() if k in ("name", "timeout_min")}
    executor.update_parameters(**params)
    return executor


def job_log_paths(job: Any) -> tuple[Path, Path]:
    """stdout and stderr of the job's first task."""
    return Path(job.paths.stdout), Path(job.paths.stderr)


def remove_unexpanded_folder(folder: Path) -> None:
    """submitit creates the executor folder with a literal ``%j`` before expanding it per job."""
    try:
        folder.rmdir()
    except OSError:  # absent, or (unexpectedly) not empty: leave it
        pass


def launch(target: str | Target, config_path: str | None, overrides: Sequence[str],
           args: argparse.Namespace | LaunchOptions, resume: bool | str | None = None) -> Any:
    """Submit ``target`` with its config; ``None`` when ``--launcher none`` (the caller runs it itself).

    The config is loaded here first so that a wrong key fails in the shell, not in the queue.
    ``resume`` defaults to ``args.resume`` when the tool has that option, else ``"auto"``.
    Prints the job id and where its logs are; with ``--wait`` also blocks and prints the result.
    """
    opts = args if isinstance(args, LaunchOptions) else LaunchOptions.from_args(args)
    if resume is None:
        resume = getattr(args, "resume", "auto")
    if opts.launcher == "none":
        return None
    tgt = resolve_target(target)
    if config_path is not None:
        # The job may start in another working directory (a requeue, a different node's mount).
        config_path = str(Path(config_path).resolve())
    cfg = tgt.config(config_path, list(overrides))
    opts = opts.with_cpus_for(cfg)
    folder = tgt.folder(cfg).resolve()
    executor = build_executor(opts, folder / "slurm" / "%j")
    job = executor.submit(TrainingJob(tgt, config_path, list(overrides), resume=resume))
    remove_unexpanded_folder(folder / "slurm" / "%j")
    stdout, stderr = job_log_paths(job)
    print(f"submitted job {job.job_id} ({opts.launcher}); run folder: {folder}")
    print(f"logs: {stdout}\n      {stderr}")
    if opts.wait:
        # A multi-task job returns one result per task; rank 0's speaks for the run.
        print(f"job {job.job_id} finished: {job.results()[0]}")
    return job


def launch_tool(script: str | Path, argv: Sequence[str], run_folder: str | Path,
                args: argparse.Namespace | LaunchOptions) -> Any:
    """Submit ``script``'s ``main(argv)`` as a job (job files in ``run_folder/slurm/<job id>``).

    ``None`` when ``--launcher none``: the caller goes on in-process. ``argv`` may keep the launch
    options: the job appends ``--launcher none``, which overrides them.
    """
    opts = args if isinstance(args, LaunchOptions) else LaunchOptions.from_args(args)
    if opts.launcher == "none":
        return None
    folder = Path(run_folder).resolve()
    executor = build_executor(opts, folder / "slurm" / "%j")
    job = executor.submit(ToolJob(str(script), list(argv)))
    remove_unexpanded_folder(folder / "slurm" / "%j")
    stdout, stderr = job_log_paths(job)
    print(f"submitted job {job.job_id} ({opts.launcher}): {Path(script).name}; logs: {stdout}\n      {stderr}")
    if opts.wait:
        job.results()
        print(f"job {job.job_id} finished")
    return job
