"""One host of a fleet, in a process of its own: `runbook run` for that host.

`serve(connection, log_file)` runs in a process forked for the host (see job.py): it
receives the job on the connection, runs the host's stages with the same runner as
`runbook run` (its own kernel, its own run folder), and sends events back, each a dict:
`started`, `run_dir`, `stage`, `cell`, `stage_done`, `gate` (then it waits for the answer:
"go", or a reason to stop) and last `result`. Its own output goes to the host's log file.
Processes, not threads: papermill changes the working directory as it runs, which is not
safe in threads (papermill issue 473).

SIGTERM ends the run as Ctrl-C ends `runbook run`: the record is closed, the kernel shut
down. The process also ends when its parent does (a dying Dask worker takes it along).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from runbook import params as params_model
from runbook.errors import HostUnreachable, RunbookError
from runbook.run import forking, manifest, runner
from runbook.run.stage import PROJECT, run_name, unused_folder


class Events:
    """The event stream to the driver, and the gate answers read back from it."""

    def __init__(self, connection):
        self.connection = connection

    def send(self, event: str, **fields) -> None:
        self.connection.send({"event": event, "time": time.time(), **fields})

    def gate(self, stage: str) -> None:
        self.send("gate", stage=stage)
        try:
            answer = self.connection.recv()
        except EOFError:
            answer = "the fleet run ended"
        if answer != "go":
            raise runner.Stopped(f"stopped before {stage}: {answer}")


class Progress(runner.Progress):
    """The runner's per-stage progress, as events; cells counted from papermill's log."""

    def __init__(self, total: int, events: Events):
        super().__init__(total)
        self.events, self.stage, self.cells = events, None, 0

    def start(self, index: int, name: str) -> None:
        self.stage = name
        cells = json.loads(manifest.find(name).notebook.read_text())["cells"]
        self.cells = len(cells)
        self.events.send("stage", stage=name, index=index, total=self.total, cells=self.cells)

    def done(self, index, name, status, seconds, counts) -> None:
        self.events.send("stage_done", stage=name, index=index, total=self.total,
                         status=status, seconds=seconds, counts=counts)


class CellLog(logging.Handler):
    """papermill logs "Executing Cell N" before each cell: that is the live step."""

    def __init__(self, progress: Progress):
        super().__init__()
        self.progress = progress

    def emit(self, record) -> None:
        message = record.getMessage()
        if message.startswith("Executing Cell "):
            cell = message.removeprefix("Executing Cell ").strip("-")
            if cell.isdigit():
                self.progress.events.send("cell", stage=self.progress.stage, cell=int(cell),
                                          cells=self.progress.cells)
        else:  # cell output goes to this host's log file; the notebooks keep it anyway
            print(message.rstrip("\n"), file=sys.stderr, flush=True)


def run(job: dict, events: Events) -> dict:
    """Run the job's host; the result event's fields (status ok, failed or unreachable)."""
    params_file = Path(job["params_file"])
    runs_root = Path(job["runs_root"])
    run_dir = Path(job["run_dir"]) if job.get("run_dir") else None
    try:
        # the folder is named for the inventory's host name, unique in the fleet: two hosts
        # at one address (ports, a bastion) starting in the same second share no folder
        host = job.get("name") or params_model.load(params_file).target.host
        if run_dir is None:
            run_dir = (runner.latest_run(runs_root, host) if job.get("start")
                       else unused_folder(runs_root / run_name(host)))
        events.send("run_dir", run_dir=str(run_dir))
        selected = manifest.select(job.get("stages"), job.get("start"))
        progress = Progress(len(selected), events)
        logger = logging.getLogger("papermill")
        logger.handlers[:] = [CellLog(progress)]
        logger.setLevel(logging.INFO)
        logger.propagate = False
        runner.run(params_file, stages=job.get("stages"), start=job.get("start"),
                   dry_run=job.get("dry_run", False), run_dir=run_dir, runs_root=runs_root,
                   progress=progress, gate=events.gate,
                   sign_key=_path(job.get("sign_key")), anchor=_path(job.get("anchor")))
        status, reason = "ok", ""
    except HostUnreachable as e:
        status, reason = "unreachable", str(e)
    except RunbookError as e:
        status, reason = "failed", str(e)
    except KeyboardInterrupt:
        status, reason = "failed", "terminated while running (the fleet run was stopped)"
    except Exception as e:  # a bug must still be one host's failure, reported, not a crash
        status, reason = "failed", f"{type(e).__name__}: {e}"
    started = run_dir is not None and (run_dir / "run.json").exists()
    return {"status": status, "reason": reason, "run_dir": str(run_dir) if started else None}


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _terminated(signum, frame):
    raise KeyboardInterrupt


def serve(connection, log_file: str) -> None:
    """The host's process: its own session (a Ctrl-C in the terminal reaches only the
    controller, which lets the host finish its stage), its output in its log."""
    os.setsid()
    log = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for fd in (1, 2):
        os.dup2(log, fd)
    os.close(log)
    os.chdir(PROJECT)
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, _terminated)
    forking.die_with_parent(os.getppid(), signal.SIGTERM)
    events = Events(connection)
    job = connection.recv()
    os.environ.update(job.get("env") or {})  # the kernel inherits it (the SSH slots)
    events.send("started", pid=os.getpid())
    result = run(job, events)
    events.send("result", **result)
    connection.close()
