"""One owner per run folder: an advisory lock on ``RUN/.lock`` held for the whole run.

Two processes training into one folder overwrite each other's checkpoints, interleave ``log.txt`` and the second
silently resumes from the first's live checkpoint. The lock is the kernel's (``fcntl.flock``): it is released
when its process ends however it ends (``kill -9``, a node that dies and its NFS lease with it), so a dead run
never keeps a folder. The file itself only says who holds it (pid, host, SLURM job, start time) for the
refusal's message; a stale file of a dead owner means nothing.

A requeued SLURM job is the same owner: its new incarnation may start while the old one's processes are still
being killed (``KillWait``), so a start that finds the lock held by its own job id waits for it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunFolderBusy(UserError):
    """Another live process trains into this run folder."""


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}


def _describe(owner: dict[str, Any]) -> str:
    who = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"
    if owner.get("slurm_job_id"):
        who += f" (SLURM job {owner['slurm_job_id']})"
    if owner.get("started"):
        who += f" since {owner['started']}"
    return who


class RunFolderLock:
    """Hold ``run_dir/.lock`` exclusively (a context manager); :class:`RunFolderBusy` if a live process holds it.

    ``same_job_wait_s``: how long a start of the same SLURM job (a requeue) waits for its previous incarnation.
    """

    def __init__(self, run_dir: str | Path, same_job_wait_s: float = 120.0):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.same_job_wait_s = same_job_wait_s
        self._fd: int | None = None

    def _try_lock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise

    def _read_owner(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                locked = self._try_lock(fd)
            except OSError as err:  # a file system without locks (some parallel file systems without -o flock)
                log.warning("cannot lock %s (%s): this run folder is not protected against a second run", self.path,
                            os.strerror(err.errno or 0))
                locked = True
            if not locked:
                owner = self._read_owner()
                job = os.environ.get("SLURM_JOB_ID")
                if job and owner.get("slurm_job_id") == job:  # our own job, requeued: its old processes are ending
                    deadline = time.monotonic() + self.same_job_wait_s
                    while not locked and time.monotonic() < deadline:
                        time.sleep(1.0)
                        locked = self._try_lock(fd)
                if not locked:
                    raise RunFolderBusy(
                        f"run folder {self.run_dir} is in use by another run: {_describe(owner)}; wait for it to "
                        "finish or stop it, or start this one under another run.name")
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_owner()).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            # the file stays: unlinking a lock file lets a waiting process lock an inode nobody else sees
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunFolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
