"""Driving one host's process (`runbook.fleet.child`): start it, relay its events, answer its
gates, and always come back with a result, whatever became of the process.

The same driver runs on the controller (a local fleet) and in a Dask worker (a cluster
fleet): one code path for a host wherever it runs.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path

# Hosts' processes fork from a server that has loaded the runner, papermill, a kernel's
# modules and the rest once (fleet/preload.py): loading them costs ~1.5 s of CPU, per host
# and on every re-run, more than the host's own work on a small machine. (Forked from that
# server, not from here: this process has threads.)
_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(["runbook.fleet.preload"])


class HostProcess:
    """One host's process; `run()` blocks until it has a result."""

    def __init__(self, job: dict, log_file: Path, env: dict | None = None):
        self.job, self.log_file, self.env = job, Path(log_file), env or {}
        self.process = None
        self.run_dir: str | None = None
        self.stage: str | None = None

    def run(self, on_event: Callable[[dict], None],
            gate: Callable[[str], str | None]) -> dict:
        """Events go to `on_event`; `gate(stage)` answers None (go on) or why to stop."""
        from runbook.fleet import child  # the fork server's module, not needed here before

        started = time.monotonic()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        ours, theirs = _FORKS.Pipe()
        self.process = _FORKS.Process(target=child.serve, args=(theirs, str(self.log_file)),
                                      name=f"runbook-host-{self.job.get('name')}", daemon=False)
        self.process.start()
        theirs.close()
        result = self._relay(ours, on_event, gate)
        self.process.join()
        if result is None:
            where = f"in {self.stage}" if self.stage else "before its first stage"
            result = {"status": "failed", "run_dir": self.run_dir,
                      "reason": f"the host's process ended (exit status "
                                f"{self.process.exitcode}) {where} without a result; its "
                                f"log: {self.log_file}{_tail(self.log_file)}"}
        result["duration"] = round(time.monotonic() - started, 3)
        return result

    def _relay(self, connection, on_event, gate) -> dict | None:
        try:
            connection.send({**self.job, "env": self.env})
            while True:
                event = connection.recv()
                kind = event.get("event")
                if kind == "run_dir":
                    self.run_dir = event["run_dir"]
                elif kind == "stage":
                    self.stage = event["stage"]
                on_event(event)
                if kind == "gate":
                    connection.send(gate(event["stage"]) or "go")
                elif kind == "result":
                    return {k: v for k, v in event.items() if k not in ("event", "time")}
        except (EOFError, OSError):
            return None  # it ended; its exit status says the rest
        finally:
            connection.close()

    def terminate(self) -> None:
        """End the host's run now (its record is closed as on Ctrl-C)."""
        if self.process and self.process.is_alive():
            self.process.terminate()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        last = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return ""
    return "".join(f"\n  {line}" for line in last)
