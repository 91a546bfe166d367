"""A stop never loses more than a step: Ctrl-C, SIGTERM during a validation, a diverged run, one owner per folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from maskdcpt.training.checkpoint import load_state
from maskdcpt.training.run_lock import RunFolderBusy, RunFolderLock
from maskdcpt.training.trainer import NonFiniteLossError

from conftest import TINY_PRETRAIN, last_weights, run_env
from test_pretrain import _Repeat, _fixed_batch, _trainer

ROOT = Path(__file__).resolve().parents[1]


def _sigint_default() -> None:
    # a test runner started in the background by a non-interactive shell (`cmd &`) passes SIGINT on ignored, and a
    # run honours an ignored SIGINT (nohup): give the run the terminal's default, as a user's shell does
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(out_dir: Path, *overrides: str, name: str = "r") -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "tools" / "pretrain.py"), f"run.output_dir={out_dir}", f"run.name={name}",
           *TINY_PRETRAIN, *overrides]
    return subprocess.Popen(cmd, env=run_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_default)


@pytest.fixture
def sigint_handler():
    """SIGINT as Python sets it up in a terminal (KeyboardInterrupt), whatever this test process inherited."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 300) -> list[str]:
    """Read ``proc``'s stdout until a line contains ``pattern``; the lines read."""
    seen: list[str] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if pattern in line:
            return seen
    proc.kill()
    raise AssertionError(f"no line with {pattern!r} within {timeout} s; stdout:\n{''.join(seen)}\nstderr:\n{proc.stderr.read()}")


# ----------------------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_checkpoints_at_the_next_step_and_the_run_resumes_from_it(tmp_path):
    # 1000 steps: the run is certainly still training when the signal lands, however fast the machine
    proc = _start(tmp_path, "train.max_steps=1000", "train.checkpoint_every=500", "val.every=0")
    _wait_for_line(proc, "step 2/1000")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    line = next(x for x in out.splitlines() if x.startswith("Ctrl-C: checkpoint written at step"))
    step = int(line.split("step ")[1].split(";")[0])
    assert step >= 2 and load_state(tmp_path / "r" / "checkpoints" / "last.ckpt")["step"] == step
    assert "Ctrl-C: checkpoint written" in (tmp_path / "r" / "log.txt").read_text()

    again = _start(tmp_path, f"train.max_steps={step + 1}", "train.checkpoint_every=500", "val.every=0")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"at step {step}" in out and f"done at step {step + 1}" in out


def test_ctrl_c_in_a_two_step_run_leaves_a_checkpoint_and_a_second_one_stops_at_once(tmp_path, sigint_handler):
    trainer, task = _trainer(tmp_path, ["train.checkpoint_every=50"], _fixed_batch(), 2)
    task.after_step = lambda step: os.kill(os.getpid(), signal.SIGINT) if step == 1 else None
    with pytest.raises(SystemExit) as info:
        trainer.fit(resume=False)
    assert info.value.code == 128 + signal.SIGINT
    assert load_state(tmp_path / "checkpoints" / "last.ckpt")["step"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back

    trainer, task = _trainer(tmp_path / "twice", [], _fixed_batch(), 4)
    task.after_step = lambda step: [os.kill(os.getpid(), signal.SIGINT) for _ in range(2)] if step == 1 else None
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(resume=False)


def test_an_ignored_sigint_stays_ignored(tmp_path):
    """A run started with SIGINT ignored (`nohup … &`) is not stopped by it, as any program started so."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trainer, task = _trainer(tmp_path, ["train.checkpoint_every=50"], _fixed_batch(), 2)
        task.after_step = lambda step: os.kill(os.getpid(), signal.SIGINT) if step == 1 else None
        trainer.fit(resume=False)  # runs to its end
        assert load_state(tmp_path / "checkpoints" / "last.ckpt")["step"] == 2
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------------------------- SIGTERM in validation


def test_sigterm_during_a_long_validation_checkpoints_within_seconds(tmp_path):
    # a validation of 4 types × 300 crops of 128² takes minutes on 2 cores; SLURM's KillWait is 30 s
    proc = _start(tmp_path, "train.max_steps=1000", "val.every=1000", "val.samples_per_task=300", "val.crop_size=128")
    _wait_for_line(proc, "run folder:")  # the step-0 validation starts now
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    out, err = proc.communicate(timeout=120)
    took = time.time() - sent
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "validation at step 0 abandoned: SIGTERM" in out
    assert "SIGTERM: checkpoint written at step 0" in out
    assert took < 15, f"the checkpoint came {took:.1f} s after SIGTERM"
    assert load_state(tmp_path / "r" / "checkpoints" / "last.ckpt")["step"] == 0
    assert not (tmp_path / "r" / "val.jsonl").exists()  # an abandoned validation leaves no half result


def test_a_validation_interrupted_in_process_leaves_the_model_training(tmp_path):
    trainer, task = _trainer(tmp_path, ["train.checkpoint_every=50", "val.samples_per_task=1", "val.crop_size=32"],
                             _fixed_batch(), 3)
    trainer.val_every = 100
    times = {}
    real_validation = task.validate

    def slow_validation(step):  # the step-0 validation never ends by itself; the last one is the real one
        if step:
            return real_validation(step)
        task.model.eval()
        times["signal"] = time.time()
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        while True:
            time.sleep(0.01)

    task.validate = slow_validation
    save = trainer.save_checkpoint
    trainer.save_checkpoint = lambda: times.setdefault("checkpoint", time.time()) and save()
    before = signal.signal(signal.SIGTERM, lambda *a: None)  # submitit's: the job goes on after the checkpoint
    try:
        trainer.fit(resume=False)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert times["checkpoint"] - times["signal"] < 5
    assert trainer.step == 3 and task.model.training  # trained on after the abandoned step-0 validation
    assert [json.loads(line)["step"] for line in (tmp_path / "val.jsonl").read_text().splitlines()] == [3]


# ----------------------------------------------------------------------------------------------- divergence


def test_a_diverged_run_saves_the_state_before_the_bad_steps_and_resumes_at_a_lower_rate(tmp_path):
    clean = _fixed_batch()
    poisoned = {k: v.clone() for k, v in clean.items()}
    poisoned["gt"][0, 0, 0, 0] = float("nan")

    class TurnsBad(_Repeat):
        """Clean batches for the first 3 steps, then non-finite ones."""

        def __iter__(self):
            for i in range(10 ** 6):
                yield {k: v.clone() for k, v in (clean if i < 3 else poisoned).items()}

    trainer, task = _trainer(tmp_path, ["train.max_bad_steps=3", "train.checkpoint_every=2"], clean, 10)
    trainer.make_loader = lambda start: TurnsBad(clean)
    after_three = {}
    task.after_step = lambda step: after_three.update(
        {k: v.clone() for k, v in task.model.state_dict().items()}) if step == 3 else None
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(resume=False)
    message = str(info.value)
    assert "non-finite for 3 steps in a row, last at step 5 in term 'loss/rec'" in message
    assert "(step 3, the weights last finite" in message and "step_0000002.ckpt" in message
    assert "\n" not in message
    state = load_state(tmp_path / "checkpoints" / "last.ckpt")
    assert state["step"] == 3 and state["bad_in_row"] == 0
    assert all(torch.equal(state["model"][k], v) for k, v in after_three.items())
    weights = last_weights(tmp_path)
    assert all(torch.equal(weights[k], after_three[k]) for k in weights)
    assert load_state(tmp_path / "checkpoints" / "step_0000002.ckpt")["step"] == 2  # the earlier one, kept

    # resumed with a lower rate (clean data again): it goes on from step 3 at the new rate, not the saved one
    resumed, task2 = _trainer(tmp_path, ["train.checkpoint_every=2", "optim.lr=1e-5", "optim.warmup_steps=0"], clean, 6)
    resumed.maybe_resume("auto")
    assert resumed.step == 3
    factor = resumed.scheduler.lr_lambdas[0](3)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5 * factor)
    assert resumed.optimizer.param_groups[0]["initial_lr"] == pytest.approx(1e-5)
    resumed.fit()
    assert resumed.step == 6 and all(torch.isfinite(p).all() for p in task2.model.parameters())


def test_a_real_divergence_ends_in_one_line(tmp_path):
    proc = _start(tmp_path, "optim.lr=1e4", "optim.classifier_lr=1e4", "optim.warmup_steps=0", "train.max_steps=60",
                  "train.max_bad_steps=2", "val.every=0", "train.checkpoint_every=10")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "the loss was non-finite for 2 steps in a row, last at step" in errors[0]
    assert "optim.lr" in errors[0]
    step = load_state(tmp_path / "r" / "checkpoints" / "last.ckpt")["step"]
    assert f"(step {step}, the weights last finite" in errors[0]


# ----------------------------------------------------------------------------------------------- one owner


def test_a_second_run_into_a_live_run_folder_is_refused_naming_the_owner(tmp_path):
    first = _start(tmp_path, "train.max_steps=1000", "val.every=0", "train.checkpoint_every=500")
    try:
        _wait_for_line(first, "run folder:")
        second = _start(tmp_path, "train.max_steps=1000", "val.every=0")
        out, err = second.communicate(timeout=300)
        assert second.returncode == 2
        assert err.strip().count("\n") == 0, err
        assert err.startswith(f"error: run folder {tmp_path / 'r'} is in use by another run: pid {first.pid} on host ")
        assert "run.name" in err
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    # the first run's folder is intact: its own log, one TensorBoard file, its checkpoint
    log = (tmp_path / "r" / "log.txt").read_text()
    assert log.count("--- start on") == 1
    assert len(list((tmp_path / "r" / "tensorboard").glob("events.*"))) == 1
    # a dead owner holds nothing: kill -9 a third run, then a fourth starts (and resumes) at once
    third = _start(tmp_path, "train.max_steps=1000", "val.every=0", "train.checkpoint_every=500")
    _wait_for_line(third, "run folder:")
    third.kill()
    third.communicate()
    fourth = _start(tmp_path, "train.max_steps=2", "val.every=0")
    out, err = fourth.communicate(timeout=300)
    assert fourth.returncode == 0, err


_HOLD = """
import os, sys, time
from maskdcpt.training.run_lock import RunFolderLock
with RunFolderLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_requeued_slurm_job_waits_for_its_previous_incarnation(tmp_path, monkeypatch):
    env = dict(run_env(), SLURM_JOB_ID="4242", PYTHONPATH=str(ROOT))
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path), "2"], env=env, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    monkeypatch.setenv("SLURM_JOB_ID", "4343")  # another job: refused at once
    started = time.time()
    with pytest.raises(RunFolderBusy, match="SLURM job 4242"):
        RunFolderLock(tmp_path).acquire()
    assert time.time() - started < 1
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the same job, requeued: it waits for the old one to end
    with RunFolderLock(tmp_path, same_job_wait_s=60):
        assert holder.wait(timeout=5) == 0
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


# ----------------------------------------------------------------------------------------------- a failed start


def _snapshot(folder: Path) -> dict[str, bytes]:
    # .lock says who holds the folder (each start that takes it writes itself in): not part of the run
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_a_start_that_fails_on_a_damaged_checkpoint_changes_nothing_and_names_the_older_one(tmp_path):
    proc = _start(tmp_path, "train.max_steps=4", "train.checkpoint_every=2", "train.keep_every=2", "val.every=0")
    assert proc.wait(timeout=300) == 0
    run = tmp_path / "r"
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    before = _snapshot(run)
    again = _start(tmp_path, "train.max_steps=6", "val.every=0", "train.checkpoint_every=2")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 2
    assert "cannot resume this run" in err and "step_0000004.ckpt" in err
    assert f"--resume {run / 'checkpoints' / 'step_0000004.ckpt'}" in err
    assert _snapshot(run) == before  # no config.yaml rewritten, no config_history, no log line, no TensorBoard file
    assert not (run / "config_history").exists()
