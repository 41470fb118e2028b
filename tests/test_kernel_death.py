"""The run's kernel, real and local: killed mid-cell, it ends the notebook at once, not after
the cell's timeout (the runner's blocking client would otherwise wait for ever)."""

from __future__ import annotations

import os
import signal
import threading
import time

import nbformat
import papermill
import pytest
from nbclient.exceptions import DeadKernelError

from runbook import params
from runbook.run import engine
from runbook.run import kernel as run_kernel
from runbook.run.kernel import PROJECT


def test_a_kernel_killed_mid_cell_is_reported_dead_within_seconds(tmp_path):
    notebook = tmp_path / "sleep.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import time\ntime.sleep(60)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, notebook)
    with run_kernel.Kernel() as started:
        km = started.ready()
        threading.Timer(1.5, os.kill, (km.provisioner.pid, signal.SIGKILL)).start()
        began = time.monotonic()
        with pytest.raises((run_kernel.KernelDied, DeadKernelError)):
            papermill.execute_notebook(
                str(notebook), str(tmp_path / "out.ipynb"), km=km, engine_name=engine.NAME,
                shared_kc=km.shared_kc, kernel_name=km.kernel_name, progress_bar=False,
                execution_timeout=120)
        assert time.monotonic() - began < 1.5 + 5 * run_kernel.WATCH + 3
        # what the runner asks the dead kernel afterwards fails quickly, as a RunbookError
        began = time.monotonic()
        target = params.load(PROJECT / "params" / "example-debian.yaml").target
        started.close_run(target, "failed")
        assert time.monotonic() - began < 3
