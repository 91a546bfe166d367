"""Stopping a run without losing it: SIGTERM and Ctrl-C ask for a checkpoint at the next step boundary.

SIGTERM is how an operator's ``scontrol requeue`` or ``scancel``, a preemption without the job's signal delay, or
torchrun's agent stop a run; SLURM sends SIGKILL ``KillWait`` seconds later (30 s by default). Ctrl-C (SIGINT) is a
user at a terminal. Either way the run finishes the step it is in (seconds), writes its checkpoint and stops; a
resumed or requeued run continues from it. A second Ctrl-C stops at once (``KeyboardInterrupt``).

A step is short, but a validation or another evaluation inside the loop may not be (85 s seen on a CPU): inside
:meth:`TerminationWatch.abortable` a request interrupts it at once (:class:`TerminationRequested`), so the
checkpoint is written well within ``KillWait``.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any, Iterator

_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}


class TerminationRequested(Exception):
    """Raised inside :meth:`TerminationWatch.abortable` when a stop is requested."""


class TerminationWatch:
    """A context manager installing handlers for SIGTERM and SIGINT (main thread only: signals reach no other).

    SIGTERM: the previous handler still runs (submitit's logs the signal and goes on: the job then trains until
    SLURM kills it); where SIGTERM used to end the process (no handler), the run ends after its checkpoint. SIGINT:
    the first asks for the checkpoint and the run then ends; the second raises ``KeyboardInterrupt`` at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the first signal that asked
        self.previous: dict[int, Any] = {}
        self.installed = False
        self._abortable = False

    @property
    def reason(self) -> str:
        return _NAMES.get(self.signum, "a stop request")

    @property
    def exit_after_checkpoint(self) -> bool:
        if self.signum == signal.SIGINT:
            return True
        return self.previous.get(signal.SIGTERM) in (signal.SIG_DFL, None)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            if self.requested and self.signum == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl-C: stop now
            print("\nCtrl-C: stopping after this step with a checkpoint (Ctrl-C again stops at once)",
                  file=sys.stderr, flush=True)
        elif callable(self.previous.get(signum)):
            self.previous[signum](signum, frame)
        if not self.requested:
            self.signum = signum
        self.requested = True
        if self._abortable:
            self._abortable = False  # raise once; the code that catches it must not be interrupted in turn
            raise TerminationRequested(self.reason)

    @contextlib.contextmanager
    def abortable(self) -> Iterator[None]:
        """A section that a stop request interrupts at once (raising :class:`TerminationRequested`)."""
        if self.requested:
            raise TerminationRequested(self.reason)
        self._abortable = True
        try:
            yield
        finally:
            self._abortable = False

    def clear(self) -> None:
        self.requested, self.signum = False, None

    def __enter__(self) -> "TerminationWatch":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                previous = signal.getsignal(signum)
                if signum == signal.SIGINT and previous is signal.SIG_IGN:
                    continue  # a process started to ignore Ctrl-C (nohup, a background job) keeps ignoring it
                self.previous[signum] = previous
                signal.signal(signum, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            for signum, previous in self.previous.items():
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            self.installed = False
