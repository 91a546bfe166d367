"""Distributed set-up from the environment: torchrun, SLURM (via submitit) or a single process.

torchrun and ``submitit.helpers.TorchDistributedEnvironment().export()`` both set RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a bare ``srun`` sets only SLURM_*
variables, which are mapped onto the same names here.

Threads are sized here too, from the CPUs a process was given (``allotted_cpus``): torch's default is
every core of the machine, and on a shared node (or beside one busy process) OpenMP threads that
outnumber the cores wait on each other — measured on 2 cores with one competing process: 32 → 1.5
samples/s.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _first_slurm_host(nodelist: str) -> str:
    # "node[01-03,07],gpu5" → "node01"; enough to pick the rendezvous host.
    match = re.match(r"([^\[,]+)(?:\[(\d+)[^\]]*\])?", nodelist)
    if not match:
        return nodelist
    return match.group(1) + (match.group(2) or "")


def env_from_slurm() -> None:
    """Fill the torch.distributed variables from SLURM's when a launcher left them unset."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
    if ntasks <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = str(ntasks)
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("MASTER_ADDR", _first_slurm_host(os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")))
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))


def init_distributed(device_type: str = "cpu") -> DistInfo:
    """Join the process group described by the environment (gloo on CPU, nccl on CUDA)."""
    env_from_slurm()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a tensor over ranks (a copy; identity in a single process)."""
    if not info.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns to each rank the gradient of its own rows summed over every
    rank's graph (each rank's loss uses every rank's rows). What ``torch.distributed.nn.functional.all_gather`` did
    (deprecated in torch 2.14, with a warning at every call: one per step in the run's log)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (equal row counts), keeping the autograd graph (for SupCon)."""
    if not info.enabled:
        return x
    return _GatherWithGrad.apply(x)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state_dict's names, dtypes, shapes and bytes: equal on two ranks iff their replicas are."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def convert_sync_batchnorm(module: nn.Module, device_type: str, process_group: object | None = None) -> nn.Module:
    """Make every BatchNorm of ``module`` normalise with the statistics of the global batch, in place (the same
    parameter and buffer tensors); returns the module (a new one only when ``module`` is itself a BatchNorm).

    The classifier's :class:`MaskedBatchNorm2d` becomes a :class:`SyncMaskedBatchNorm2d`, which keeps the mask (its
    statistics are the visible positions of every rank's batch) and runs on CPU (gloo) as on CUDA.
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` would turn it into a plain SyncBatchNorm that no longer takes the
    mask, so hidden positions would enter the statistics and N ranks would train another classifier than one
    process. Other BatchNorms become ``nn.SyncBatchNorm`` on CUDA; on CPU, where that does not run, they stay per
    rank.
    """
    from ..models.classifier import MaskedBatchNorm2d, SyncMaskedBatchNorm2d

    if isinstance(module, MaskedBatchNorm2d):
        if isinstance(module, SyncMaskedBatchNorm2d):
            module.process_group = process_group
            return module
        return SyncMaskedBatchNorm2d.from_module(module, process_group)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group) if device_type == "cuda" else module
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, device_type, process_group)
        if converted is not child:
            module.add_module(name, converted)
    return module


def _cgroup_cpu_limit() -> int | None:
    """CPUs of a cgroup v2 quota (containers, some schedulers), or None when unlimited / unknown."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def allotted_cpus() -> tuple[int, str]:
    """The CPUs this process may use, and where that number comes from: the least of its CPU affinity, a
    cgroup quota and SLURM's ``SLURM_CPUS_PER_TASK``; without SLURM, the node's share of torchrun's
    ``LOCAL_WORLD_SIZE`` processes."""
    try:
        cpus, source = len(os.sched_getaffinity(0)), "CPU affinity"
    except AttributeError:  # not Linux
        cpus, source = os.cpu_count() or 1, "cores"
    limit = _cgroup_cpu_limit()
    if limit is not None and limit < cpus:
        cpus, source = limit, "cgroup quota"
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and 0 < int(slurm) < cpus:
        cpus, source = int(slurm), "SLURM_CPUS_PER_TASK"
    elif not slurm:
        local = os.environ.get("LOCAL_WORLD_SIZE", "")
        if local.isdigit() and int(local) > 1:
            cpus, source = max(1, cpus // int(local)), f"{source} / LOCAL_WORLD_SIZE {local}"
    return max(1, cpus), source


def configure_threads(requested: int = 0, num_workers: int = 0) -> tuple[int, str]:
    """Set torch's (and OpenCV's) intra-op threads: ``requested`` (``train.threads``) when > 0, else
    ``OMP_NUM_THREADS`` when set, else the CPUs allotted (``allotted_cpus``) less one per data-loader worker
    (each worker runs one thread of its own). Returns (threads, why)."""
    if requested > 0:
        threads, why = requested, "train.threads"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        threads, why = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        cpus, source = allotted_cpus()
        threads = max(1, cpus - num_workers)
        why = f"{cpus} CPUs allotted ({source})" + (f" less {num_workers} data-loader workers" if num_workers else "")
    torch.set_num_threads(threads)
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:
        pass
    return threads, why
