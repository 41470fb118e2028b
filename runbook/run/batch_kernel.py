"""The kernel class a run's kernel serves with (run/kernel.py): ipykernel's, with Ctrl-C
honoured only inside a cell's own awaited code.

ipykernel turns SIGINT into KeyboardInterrupt for the whole handling of a request. One that
lands outside the cell's own code (the request just taken, or the cell just ended) is
caught by ipykernel, which then sends no reply at all, and the runner would wait for ever
for the cell to end: a Ctrl-C right at the start of a stage hung the run now and then. In
a run, SIGINT only ever comes from the runner interrupting a stage (run/interrupt.py), and
ipykernel honours it inside an awaited cell by cancelling it (`_cancel_on_sigint`), which
is where the operations undo what they began. Everywhere else it stays ignored, as
ipykernel leaves it between requests; the runner then stops after the stage, as
"interrupted".
"""

from __future__ import annotations

from ipykernel.ipkernel import IPythonKernel


class BatchKernel(IPythonKernel):
    def pre_handler_hook(self) -> None:
        """Leave SIGINT ignored while a request is handled (ipykernel would raise it)."""

    def post_handler_hook(self) -> None:
        """Nothing to restore."""
