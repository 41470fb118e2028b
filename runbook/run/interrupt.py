"""Ctrl-C during a run: the first stops the stage cleanly, the second stops at once.

The kernel runs in a session of its own, so a Ctrl-C in the terminal reaches only the
runner. Left alone, it would unwind the runner and kill the kernel in the middle of an
operation, before the operation could put back the files it had edited. So while a stage
runs, the first SIGINT is passed to the kernel instead (ipykernel cancels the running cell:
the remote command is killed, the operation restores what the stage edited, the notebook
is saved with the error) and the run stops after that stage as `interrupted`. A second
SIGINT raises StopAtOnce in the runner: nothing is waited for — not even the kernel, still
busy undoing, to release the lock: stopping it closes the run's connection, and the lock
with it (the host's journal then says the run's connection was lost). What is on the host is
whole (every file is written through a temp file renamed over it), for the next run to
complete.
"""

from __future__ import annotations

import contextlib
import signal
import threading

CANCELLED = ("CancelledError", "KeyboardInterrupt")  # how an interrupted cell's error is named


class Interrupted(KeyboardInterrupt):
    """The run stopped on Ctrl-C; the message says where and what was undone."""


class StopAtOnce(KeyboardInterrupt):
    """A second Ctrl-C: the run stops without waiting for its kernel."""


class FirstInterruptToKernel:
    """Context manager for one stage: the first SIGINT interrupts the kernel, the second
    raises StopAtOnce. `asked` says whether an interrupt came."""

    def __init__(self, km, stage: str, echo=print):
        self.km, self.stage, self.echo = km, stage, echo
        self.asked = False
        self.previous = None

    def _handler(self, signum, frame):
        if self.asked:
            raise StopAtOnce
        self.asked = True
        self.echo(f"runbook: interrupting {self.stage}: its changes are undone first "
                  "(Ctrl-C again to stop at once)", flush=True)
        self.km.interrupt_kernel()

    def __enter__(self) -> FirstInterruptToKernel:
        if threading.current_thread() is threading.main_thread():  # signals are main-only
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, self.previous)
