"""Launching training on SLURM (or locally) through submitit: jobs, executors, sweeps.

``tools/pretrain.py``-style shells call :func:`add_launcher_args` and :func:`launch`;
``tools/sweep.py`` calls :func:`maskdcpt.launch.sweep.main`.
"""
from maskdcpt.launch.launcher import LaunchOptions, add_launcher_args, build_executor, launch, launch_tool
from maskdcpt.launch.submitit_job import ToolJob, TrainingJob
from maskdcpt.launch.targets import KNOWN_TARGETS, Target, resolve_target

__all__ = [
    "KNOWN_TARGETS",
    "LaunchOptions",
    "Target",
    "ToolJob",
    "TrainingJob",
    "add_launcher_args",
    "build_executor",
    "launch",
    "launch_tool",
    "resolve_target",
]
