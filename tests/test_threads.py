"""Threads sized from the CPUs a process was given, not the machine's cores; one per data-loader worker."""
import os

import cv2
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from maskdcpt.data.loader import _worker_init
from maskdcpt.training import distributed
from maskdcpt.training.distributed import allotted_cpus, configure_threads


@pytest.fixture
def machine(monkeypatch):
    """A 16-core machine without SLURM, torchrun or a cgroup quota; torch's and OpenCV's threads restored after."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(distributed, "_cgroup_cpu_limit", lambda: None)
    for key in ("SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    yield monkeypatch
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv2_threads)


def test_the_cpus_allotted_are_the_least_of_affinity_quota_and_slurm(machine):
    assert allotted_cpus() == (16, "CPU affinity")
    machine.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four processes share the node
    assert allotted_cpus() == (4, "CPU affinity / LOCAL_WORLD_SIZE 4")
    machine.setenv("SLURM_CPUS_PER_TASK", "3")  # SLURM says per task: no sharing to guess
    assert allotted_cpus() == (3, "SLURM_CPUS_PER_TASK")
    machine.setattr(distributed, "_cgroup_cpu_limit", lambda: 2)
    assert allotted_cpus() == (2, "cgroup quota")


def test_intra_op_threads_follow_the_allotment_the_config_key_and_omp(machine):
    machine.setenv("SLURM_CPUS_PER_TASK", "3")
    assert configure_threads()[0] == 3 and torch.get_num_threads() == 3 and cv2.getNumThreads() == 3
    assert configure_threads(0, num_workers=2)[0] == 1  # the workers take their own cores
    threads, why = configure_threads(5, num_workers=2)
    assert (threads, why, torch.get_num_threads()) == (5, "train.threads", 5)
    machine.setenv("OMP_NUM_THREADS", "2")
    assert configure_threads() == (2, "OMP_NUM_THREADS") and torch.get_num_threads() == 2


class _Threads(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.tensor([torch.get_num_threads(), cv2.getNumThreads()])


def test_each_data_loader_worker_runs_one_thread():
    loader = DataLoader(_Threads(), batch_size=1, num_workers=1, worker_init_fn=_worker_init)
    assert [batch.tolist() for batch in loader] == [[[1, 1]], [[1, 1]]]
