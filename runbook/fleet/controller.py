"""`runbook run INVENTORY`: the same stages on every host, `forks` hosts at a time.

The recipe: write each host's merged params into a new fleet folder, cut the hosts into
batches (`--serial`), and run each batch: every host in a process of its own (see
`child`), started while fewer than `forks` are in flight, asking its gate before each stage
(`gates`). A failed batch, or more than `--max-fail-percent` failed, stops the fleet
starting new hosts. Ctrl-C does the same; a second Ctrl-C ends the running hosts (their
records closed). Then `fleet.json` and the summary.

The threads here only wait on host processes or on a cluster's futures: every papermill run
is in a process of its own.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from runbook import inventory
from runbook.errors import ParamsError
from runbook.fleet import board, gates, record
from runbook.fleet.job import HostProcess
from runbook.remote import slots
from runbook.run import manifest
from runbook.run.stage import PROJECT, run_name, unused_folder

# Hosts in flight by default. Each costs a process and a kernel on this machine (about
# 60 MB, docs/fleet.md) and mostly waits on its host; 10 keeps a 2-core machine busy on a
# re-run without queueing kernel starts, and the SSH handshakes stay within the cap below.
DEFAULT_FORKS = 10
# SSH handshakes under way at once, fleet-wide: below sshd's MaxStartups (drops from 10).
SSH_SLOTS = 8


@dataclass
class Options:
    stages: list[str] | None = None
    start: str | None = None
    forks: int = DEFAULT_FORKS
    strategy: str = "free"
    serial: str | None = None
    max_fail_percent: float | None = None
    dry_run: bool = False
    cluster: str | None = None
    ssh_slots: int = SSH_SLOTS
    sign_key: Path | None = None  # each host's record signed and anchored as by runbook run
    anchor: Path | None = None
    resume: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    def check(self) -> None:
        problems = []
        if self.forks < 1:
            problems.append(("--forks", f"{self.forks}: at least 1 host at a time"))
        if self.strategy not in ("free", "linear"):
            problems.append(("--strategy", f"{self.strategy!r}: free or linear"))
        if self.max_fail_percent is not None and not 0 <= self.max_fail_percent <= 100:
            problems.append(("--max-fail-percent", f"{self.max_fail_percent}: 0 to 100"))
        if not 1 <= self.ssh_slots < 10:
            problems.append(("--ssh-slots", f"{self.ssh_slots}: 1 to 9, below sshd's "
                             "MaxStartups"))
        if problems:
            raise ParamsError(problems, "runbook run")


class Local:
    """Hosts as processes on this machine."""

    def __init__(self, fleet_dir: Path, options: Options):
        self.fleet_dir = fleet_dir
        self.slot_dir = Path(tempfile.mkdtemp(prefix="runbook-ssh-slots-"))
        self.env = {slots.ENV: slots.spec(self.slot_dir, options.ssh_slots)}
        self.running: dict[str, HostProcess] = {}

    def run(self, name: str, job: dict, on_event, gate) -> tuple[dict, Path | None]:
        process = HostProcess(job, self.fleet_dir / "logs" / f"{name}.log", self.env)
        self.running[name] = process
        try:
            result = process.run(on_event, gate)
        finally:
            self.running.pop(name, None)
        return result, Path(result["run_dir"]) if result.get("run_dir") else None

    def terminate(self) -> None:
        for process in list(self.running.values()):
            process.terminate()

    def close(self) -> None:
        shutil.rmtree(self.slot_dir, ignore_errors=True)


def run(hosts: list[inventory.Host], options: Options, *, runs_root: Path = PROJECT / "runs",
        source: str = "", out=None) -> Path:
    """Run the fleet; returns its folder (fleet.json inside). Refuses bad options first."""
    options.check()
    manifest.select(options.stages, options.start)  # an unknown stage: refused up front
    batches = gates.batches([h.name for h in hosts], options.serial)
    out = out or sys.stdout
    fleet_dir = unused_folder(runs_root / run_name("fleet"))
    jobs = {h.name: _job(h, fleet_dir, runs_root, options) for h in hosts}
    backend = _backend(fleet_dir, options, jobs)
    fleet = Fleet(options, len(hosts), backend)
    began, start = time.monotonic(), _now()
    with board.Board([h.name for h in hosts], out) as live:
        try:
            fleet.run(batches, jobs, live)
        finally:
            backend.close()
    entries = [fleet.entries.get(h.name) or _not_started(h.name, fleet.stop.reason)
               for h in hosts]
    path = record.write(fleet_dir, entries, inventory=source, start=start, end=_now(),
                        stages=[s.name for s in manifest.select(options.stages)],
                        options=_options(options), stopped=fleet.stop.reason)
    print(board.summary(entries, time.monotonic() - began), file=out)
    print(f"record: {path}", file=out, flush=True)
    return fleet_dir


def from_fleet(fleet_run: Path, hosts: list[inventory.Host], options: Options, *,
               failed: bool = False) -> list[inventory.Host]:
    """The hosts of an earlier fleet run (its failed and unreachable ones if `failed`), each
    picked up where it stopped: its run folder from its first stage not done ok (`--from`),
    or a fresh run if it never started one. Sets the options' stages and resume points."""
    earlier = record.read(Path(fleet_run))
    entries = [e for e in earlier["hosts"] if not failed or e["status"] != "ok"]
    chosen = inventory.select(hosts, [e["name"] for e in entries])
    if options.stages is None:
        options.stages = earlier.get("stages")
    if failed and not options.start:
        stages = [s.name for s in manifest.select(options.stages)]
        options.resume = {e["name"]: record.resume_point(e, stages) for e in entries}
    return chosen


class Fleet:
    """The batches, the limits and the stop, over a backend."""

    def __init__(self, options: Options, total: int, backend):
        self.options, self.total, self.backend = options, total, backend
        self.stop = gates.Stop()
        self.entries: dict[str, dict] = {}
        self.failures = 0
        self.counting = threading.Lock()

    def run(self, batches: list[list[str]], jobs: dict, live: board.Board) -> None:
        for number, batch in enumerate(batches, 1):
            if self.stop.reason:
                break
            failed_before = self.failures
            self._batch(batch, jobs, live)
            if (len(batches) > 1 and self.failures > failed_before
                    and self.options.max_fail_percent is None):
                self.stop.set(f"batch {number} of {len(batches)} had failures (--serial)")

    def _batch(self, names: list[str], jobs: dict, live: board.Board) -> None:
        linear = self.options.strategy == "linear"
        gate = (gates.LinearGate(self.stop, names, self.options.forks) if linear
                else gates.FreeGate(self.stop))
        width = len(names) if linear else self.options.forks  # linear: all wait at stages
        with concurrent.futures.ThreadPoolExecutor(width, thread_name_prefix="host") as pool:
            futures = [pool.submit(self._host, name, jobs[name], gate, live) for name in names]
            interrupts = 0
            while True:
                try:
                    concurrent.futures.wait(futures)
                    break
                except KeyboardInterrupt:
                    interrupts += 1
                    self._interrupted(interrupts, live)

    def _interrupted(self, interrupts: int, live: board.Board) -> None:
        if interrupts == 1:
            self.stop.set("interrupted (Ctrl-C)")
            live.note("interrupted: no new host or stage starts; running stages finish "
                      "(Ctrl-C again ends them now)")
        else:
            live.note("ending the running hosts; their records are closed")
            self.backend.terminate()

    def _host(self, name: str, job: dict, gate, live: board.Board) -> None:
        try:
            if self.stop.reason:
                return
            try:
                result, record_dir = self.backend.run(
                    name, job, lambda event: live.event(name, event),
                    lambda stage: gate(name, stage))
                entry = record.host_entry(name, result, record_dir)
            except Exception as e:  # one host's trouble, whatever it is, is that host's
                entry = {**_not_started(name, None), "reason": f"{type(e).__name__}: {e}"}
                live.event(name, {"event": "result", **entry})
            self.entries[name] = entry
            self._count(entry)
        finally:
            gate.finished(name)


    def _count(self, entry: dict) -> None:
        if entry["status"] == "ok" or entry["reason"].startswith("stopped before"):
            return  # a host stopped by the fleet did not fail
        with self.counting:
            self.failures += 1
            failures = self.failures
        if gates.too_many_failed(failures, self.total, self.options.max_fail_percent):
            self.stop.set(f"more than {self.options.max_fail_percent:g}% of the fleet "
                          f"failed ({failures} of {self.total}; --max-fail-percent)")


def _job(host: inventory.Host, fleet_dir: Path, runs_root: Path, options: Options) -> dict:
    run_dir, start = options.resume.get(host.name, (None, options.start))
    return {"name": host.name,
            "params_file": str(inventory.dump(host, fleet_dir / "params" / f"{host.name}.yaml")),
            "stages": options.stages, "start": start, "run_dir": run_dir,
            "runs_root": str(runs_root), "dry_run": options.dry_run,
            "sign_key": str(options.sign_key) if options.sign_key else None,
            "anchor": str(options.anchor) if options.anchor else None}


def _backend(fleet_dir: Path, options: Options, jobs: dict):
    if options.cluster:
        from runbook.fleet.cluster import Cluster  # dask only for a cluster run

        return Cluster(options.cluster, fleet_dir, options, jobs)
    return Local(fleet_dir, options)


def _not_started(name: str, reason: str | None) -> dict:
    return {"name": name, "status": "failed",
            "reason": f"not started: {reason or 'the fleet run ended first'}", "stages": {},
            "duration": 0.0, "run_dir": None, "audit_head": None}


def _options(options: Options) -> dict:
    return {"forks": options.forks, "strategy": options.strategy, "serial": options.serial,
            "max_fail_percent": options.max_fail_percent, "dry_run": options.dry_run,
            "cluster": options.cluster, "from": options.start}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
