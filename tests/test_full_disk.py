"""A full disk ends in one line naming the path and "no space left", keeps the previous checkpoint, leaves no
partial output. The disk is a real small tmpfs (as root; CI runs as root), filled to leave a known room."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskdcpt.training.checkpoint import load_state

from conftest import TINY_PRETRAIN, run_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs at ``tmp_path/disk``, and ``fill(leave)``: take all its free space but ``leave`` bytes."""
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True, text=True)
    if res.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs for the full-disk tests: {res.stderr.strip()}")
        pytest.skip(f"needs root to mount a small tmpfs: {res.stderr.strip()}")

    def fill(leave: int) -> None:
        stat = os.statvfs(mount)
        free = stat.f_bavail * stat.f_frsize
        with open(mount / "filler", "wb") as f:
            f.write(b"\0" * max(0, free - leave))

    try:
        yield mount, fill
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _pretrain(out_dir, *overrides):
    cmd = [sys.executable, str(ROOT / "tools" / "pretrain.py"), f"run.output_dir={out_dir}", "run.name=r", *TINY_PRETRAIN,
           "val.every=0", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, env=run_env(), cwd=ROOT, timeout=600)


def test_a_checkpoint_onto_a_full_disk_is_one_line_and_the_previous_one_stays(small_disk):
    disk, fill = small_disk
    first = _pretrain(disk, "train.max_steps=2", "train.checkpoint_every=1")
    assert first.returncode == 0, first.stderr
    ckpt = disk / "r" / "checkpoints" / "last.ckpt"
    size = ckpt.stat().st_size
    fill(leave=size // 4)  # room for a log line, not for another checkpoint
    res = _pretrain(disk, "train.max_steps=4", "train.checkpoint_every=1")
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "No space left on device" in errors[0] and "the disk is full" in errors[0]
    assert str(disk / "r" / "checkpoints") in errors[0]
    assert load_state(ckpt)["step"] == 2  # intact
    assert not [p for p in (disk / "r").rglob("*.tmp")]


def test_restore_onto_a_full_disk_names_the_image_and_leaves_no_cut_off_file(small_disk, tmp_path):
    from maskdcpt.models import create_model
    from maskdcpt.models.checkpoint import save_restorer

    disk, fill = small_disk
    model = tmp_path / "restorer.safetensors"
    save_restorer(create_model("nafnet_tiny"), model, "nafnet_tiny")
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):  # noise does not compress: each PNG is about 190 kB
        cv2.imwrite(str(inputs / f"{name}.png"), rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    out = disk / "restored"
    out.mkdir()
    fill(leave=250_000)  # room for one output
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "restore.py"), "--model", str(model), "--device", "cpu",
                          str(inputs), str(out)], capture_output=True, text=True, env=run_env(), cwd=ROOT, timeout=600)
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]  # beside the progress bar
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert errors[0].startswith(f"error: {out / 'b.png'}: No space left on device")
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]  # whole, and nothing cut off beside it
    assert cv2.imread(str(out / "a.png")) is not None


def test_an_enospc_without_a_file_name_gets_the_target_path(tmp_path):
    from maskdcpt.io import atomic_write

    def write(tmp):  # what a write into a full disk raises from deep inside a library
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "x.bin", write)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "x.bin")
    assert list(tmp_path.iterdir()) == []
