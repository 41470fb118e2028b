"""Driving one host's process (`runbook.fleet.child`): start it, relay its events, answer its
gates, and always come back with a result, whatever became of the process.

The same driver runs on the controller (a local fleet) and in a Dask worker (a cluster
fleet): one code path for a host wherever it runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from runbook.run.stage import PROJECT


class HostProcess:
    """One host's child process; `run()` blocks until it has a result."""

    def __init__(self, job: dict, log_file: Path, env: dict | None = None):
        self.job, self.log_file, self.env = job, Path(log_file), env or {}
        self.process: subprocess.Popen | None = None
        self.run_dir: str | None = None
        self.stage: str | None = None

    def run(self, on_event: Callable[[dict], None],
            gate: Callable[[str], str | None]) -> dict:
        """Events go to `on_event`; `gate(stage)` answers None (go on) or why to stop."""
        started = time.monotonic()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("a") as log:
            # its own session: a Ctrl-C in the terminal reaches the controller only, which
            # then lets each host finish its stage
            self.process = subprocess.Popen(
                [sys.executable, "-m", "runbook.fleet.child"], cwd=PROJECT,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                start_new_session=True, env={**os.environ, **self.env})
            result = self._relay(on_event, gate)
        code = self.process.wait()
        if result is None:
            where = f"in {self.stage}" if self.stage else "before its first stage"
            result = {"status": "failed", "run_dir": self.run_dir,
                      "reason": f"the host's process ended (exit status {code}) {where} "
                                f"without a result; its log: {self.log_file}"
                                f"{_tail(self.log_file)}"}
        result["duration"] = round(time.monotonic() - started, 3)
        return result

    def _relay(self, on_event, gate) -> dict | None:
        self._send(json.dumps({**self.job, "parent": os.getpid()}))
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not ours: the event stream is JSON lines only
            kind = event.get("event")
            if kind == "run_dir":
                self.run_dir = event["run_dir"]
            elif kind == "stage":
                self.stage = event["stage"]
            on_event(event)
            if kind == "gate":
                self._send(gate(event["stage"]) or "go")
            elif kind == "result":
                return {k: v for k, v in event.items() if k not in ("event", "time")}
        return None

    def _send(self, line: str) -> None:
        try:
            self.process.stdin.write(line.replace("\n", " ") + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # it ended; its exit status says the rest

    def terminate(self) -> None:
        """End the host's run now (its record is closed as on Ctrl-C)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        last = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return ""
    return "".join(f"\n  {line}" for line in last)
