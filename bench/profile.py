"""Where the time of one `runbook run` goes: a re-run split into its phases, as a table.

    .venv/bin/python -m bench.profile --host deb10 [--repeat 5] [--stages 10-install,...]

Runs `runbook run` as an operator does (a new process, the CLI) with the probes of
bench/trace/sitecustomize.py loaded into it and into its kernel, on a host that a run has
already configured (it runs the default run first if the host has no Postfix yet). Each
phase is shown with when it starts (seconds after the `runbook` process was spawned) and
how long it takes, medians over the rounds: phases that overlap run side by side, so the
durations add up to more than the wall time once fixed costs run in parallel.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACE_DIR = ROOT / "bench" / "trace"
STAGES = ("10-install", "20-enable", "30-configure", "40-start", "50-validate")


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def traced_run(params_file: str, stages: list[str] | None, run_dir: Path) -> tuple[list, float]:
    """One `runbook run` process with the probes on; returns (events, wall time)."""
    trace = run_dir.with_suffix(".trace.jsonl")
    env = os.environ | {"RUNBOOK_TRACE": str(trace),
                        "PYTHONPATH": os.pathsep.join([str(TRACE_DIR), str(ROOT)])}
    command = [sys.executable, "-m", "runbook.cli", "run", params_file, "--run-dir", str(run_dir)]
    if stages:
        command += ["--stages", ",".join(stages)]
    start = boottime()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    end = boottime()
    if done.returncode:
        raise SystemExit(f"runbook run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    for e in events:
        e["start"] -= start
        e["end"] -= start
    return events, end - start


def _union(intervals: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _within(events, start, end, pid=None):
    return [e for e in events if e["start"] >= start - 1e-6 and e["end"] <= end + 1e-6
            and (pid is None or e["pid"] == pid)]


def phases(events: list[dict], wall: float) -> dict[str, tuple[float, float]]:
    """phase -> (start, duration), seconds after the spawn of `runbook`."""
    runner_pid = next(e["pid"] for e in events if e["name"] == "python started"
                      and e.get("process") == "runner")
    mine = [e for e in events if e["pid"] == runner_pid]
    theirs = [e for e in events if e["pid"] != runner_pid]
    out: dict[str, tuple[float, float]] = {}

    def first(name, pool=mine):
        return next((e for e in pool if e["name"] == name), None)

    def put(label, event):
        if event:
            out[label] = (event["start"], event["end"] - event["start"])

    started = first("python started")
    out["interpreter start"] = (0.0, started["end"])
    imports = [(e["start"], e["end"]) for e in mine if e["name"].startswith("import ")]
    if imports:
        out["imports (CLI, runner, papermill, asyncssh, …)"] = (
            min(s for s, _ in imports), _union(imports))
    put("params validated", first("load"))
    lock = first("TargetLock._acquire") or first("hold")
    connect = first("open_session")
    if lock and connect and connect["start"] >= lock["start"]:
        put("lock: SSH connect", connect)
        out["lock: hold command"] = (connect["end"], lock["end"] - connect["end"])
    elif lock:
        put("lock (on the run's connection)", lock)
    put("run.json: run start", first("_record_run_start"))
    if not first("Kernel.recover_run"):
        put("recovery check (one round trip, on the lock's connection)", first("_recover"))
    put("kernel start, to ready", first("_kernel.__enter__"))
    _kernel_phases(out, mine, theirs)
    for e in (e for e in mine if e["name"] == "execute_notebook"):
        stage = e["notebook"].removesuffix(".ipynb")
        inner = _within(theirs, e["start"], e["end"])
        parts = _stage_parts(inner)
        out[f"{stage}: wall"] = (e["start"], e["end"] - e["start"])
        for label, seconds in parts.items():
            if seconds:
                out[f"{stage}: {label}"] = (e["start"], seconds)
        accounted = sum(parts.values())
        out[f"{stage}: notebook overhead (papermill, cells, kernel)"] = (
            e["start"], e["end"] - e["start"] - accounted)
    put("kernel shutdown", first("_kernel.__exit__") or first("Kernel.stop"))
    put("lock released", first("TargetLock._release") or first("Kernel.close_run"))
    last = max(e["end"] for e in mine)
    out["process exit"] = (last, wall - last)
    out["wall"] = (0.0, wall)
    return out


def _kernel_phases(out: dict, mine: list[dict], theirs: list[dict]) -> None:
    """A kernel started first (run/kernel.py): its boot, and the run opened on it."""
    spawned = next((e for e in mine if e["name"] == "Kernel.__init__"), None)
    if spawned is None:
        return
    out["kernel: spawned"] = (spawned["start"], spawned["end"] - spawned["start"])
    born = next((e for e in theirs if e["name"] == "python started"), None)
    init = next((e for e in theirs if e["name"] == "IPKernelApp.initialize"), None)
    if born and init:
        out["kernel: interpreter start"] = (born["start"], born["end"] - born["start"])
        imports = [(e["start"], e["end"]) for e in theirs
                   if e["name"].startswith("import ") and e["end"] <= init["start"]]
        out["kernel: imports (ipykernel, the package)"] = (born["end"], _union(imports))
        out["kernel: ipykernel initialisation"] = (init["start"], init["end"] - init["start"])
    ready = next((e for e in mine if e["name"] == "Kernel.ready"), None)
    if ready:
        out["runner waits for the kernel"] = (ready["start"], ready["end"] - ready["start"])
    opened = next((e for e in theirs if e["name"] == "open_run"), None)
    if opened:
        inner = _within(theirs, opened["start"], opened["end"])
        for name, label in (("open_session", "SSH connect"), ("hold", "lock")):
            for e in (e for e in inner if e["name"] == name):
                out[f"run opened in the kernel: {label}"] = (e["start"], e["end"] - e["start"])
    recovered = next((e for e in mine if e["name"] == "Kernel.recover_run"), None)
    if recovered:
        out["recovery check (one round trip, in the kernel)"] = (
            recovered["start"], recovered["end"] - recovered["start"])


def _stage_parts(inner: list[dict]) -> dict[str, float]:
    """A stage's time in the kernel: imports, connect, remote commands, audit writes."""
    imports = _union([(e["start"], e["end"]) for e in inner if e["name"].startswith("import ")])
    connect = sum(e["end"] - e["start"] for e in inner if e["name"] == "open_session")
    runs = [e for e in inner if e["name"] == "Target.run"]
    records = [e for e in inner if e["name"] == "Audit.record"]
    in_runs = [r for r in records if any(r["start"] >= c["start"] and r["end"] <= c["end"]
                                         for c in runs)]
    commands = sum(e["end"] - e["start"] for e in runs) - sum(
        r["end"] - r["start"] for r in in_runs)
    audit = sum(r["end"] - r["start"] for r in records)
    return {"first import of the package in the kernel": imports,
            "SSH connect (kernel)": connect,
            f"remote commands ({len(runs)})": commands,
            f"audit writes ({len(records)})": audit}


def summarize(rounds: list[dict]) -> list[tuple[str, float, float]]:
    """Median start and duration of each phase over the rounds, in the order they start."""
    names = {}
    for r in rounds:
        for name in r:
            names.setdefault(name, None)
    rows = []
    for name in names:
        values = [r[name] for r in rounds if name in r]
        rows.append((name, statistics.median(v[0] for v in values),
                     statistics.median(v[1] for v in values)))
    return rows


def totals(rounds: list[dict]) -> dict[str, float]:
    """Summed over the stages: remote commands, audit writes, notebook overhead."""
    def med(pick):
        return statistics.median(sum(v[1] for k, v in r.items() if pick(k)) for r in rounds)
    return {
        "remote commands, all stages": med(lambda k: "remote commands" in k),
        "audit writes, all stages (kernel)": med(lambda k: "audit writes" in k),
        "notebook overhead, all stages": med(lambda k: "notebook overhead" in k),
        "stages, wall": med(lambda k: k.endswith(": wall")),
    }


def table(rows, extra: dict[str, float]) -> str:
    lines = ["| phase | from | duration |", "|---|---|---|"]
    for name, start, seconds in rows:
        lines.append(f"| {name} | {start:.3f} s | {seconds * 1000:.0f} ms |")
    for name, seconds in extra.items():
        lines.append(f"| *{name}* | | {seconds * 1000:.0f} ms |")
    return "\n".join(lines)


def profile(params_file: str, stages: list[str], repeat: int) -> str:
    with tempfile.TemporaryDirectory(prefix="runbook-profile-") as tmp:
        rounds = []
        for n in range(repeat + 1):
            events, wall = traced_run(params_file, stages, Path(tmp) / f"run-{n}")
            if n:  # the first round warms the page cache and the host's own caches
                rounds.append(phases(events, wall))
    return table(summarize(rounds), totals(rounds))


def ensure_configured(params_file: str) -> None:
    """A re-run is profiled: run the default run once if Postfix is not there yet."""
    with tempfile.TemporaryDirectory(prefix="runbook-profile-") as tmp:
        subprocess.run([sys.executable, "-m", "runbook.cli", "run", params_file, "--run-dir",
                        str(Path(tmp) / "prepare")], check=True, cwd=ROOT,
                       capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="deb10", help="a lab host (root)")
    parser.add_argument("--params", help="a params file instead of a lab host")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--prepare", action="store_true",
                        help="run the default run first (a fresh host)")
    args = parser.parse_args()
    if args.params:
        params_file = args.params
    else:
        from runbook import lab
        params_file = lab.up_host(args.host, checkout=ROOT)["params_file"]
    if args.prepare:
        ensure_configured(params_file)
    print(profile(params_file, [s for s in args.stages.split(",") if s], args.repeat))


if __name__ == "__main__":
    main()
