"""Benchmark: the runbook's default run on a fresh lab host, then a re-run, split by cost.

    .venv/bin/python -m bench.stages --host deb3 [--repeat 3]

Resets HOST (root; it must be a lab host nobody else is using), then for each round runs
`runbook run` on the fresh host and again on the configured one. Each run is split into
package installation (the apt-get/pkg_add command), all other remote command time (from
the audit record), and the rest: notebook, kernel and runner overhead. Then the floor
(bench/floor.py) for the same job. Prints Markdown rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

from bench import floor
from runbook import lab, params
from runbook.run import runner

INSTALLERS = ("apt-get install", "pkg_add")


def timed_run(params_file: str, runs: Path, stages: list[str] | None) -> dict:
    started = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        run_dir = runner.run(params_file, stages=stages, runs_root=runs, echo=lambda *a, **k: None)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines()]
    commands = [r for r in records if r["type"] == "command"]
    install = sum(r["duration"] for r in commands if any(i in r["command"] for i in INSTALLERS))
    remote = sum(r["duration"] for r in commands) - install
    changed = sum(1 for r in records if r["type"] == "operation" and r["status"] == "changed")
    return {"wall": wall, "install": install, "remote": remote,
            "overhead": wall - install - remote, "commands": len(commands),
            "changed": changed, "run_dir": run_dir}


def row(label: str, runs: list[dict]) -> str:
    def med(key):
        return statistics.median(r[key] for r in runs)
    return (f"| {label} | {med('wall'):.1f} s | {med('install'):.1f} s | {med('remote'):.2f} s "
            f"| {med('overhead'):.2f} s | {round(med('commands'))} | {round(med('changed'))} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="deb3")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    to_validate = list(floor.STAGES)
    results: dict[str, list[dict]] = {k: [] for k in (
        "fresh, default run", "re-run, default run", "re-run, 10-install … 50-validate")}
    floors: dict[str, list[float]] = {"fresh": [], "replay": []}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        for _ in range(args.repeat):
            host = lab.reset(args.host)
            results["fresh, default run"].append(timed_run(host["params_file"], runs, None))
            results["re-run, default run"].append(timed_run(host["params_file"], runs, None))
            rerun = timed_run(host["params_file"], runs, to_validate)
            results["re-run, 10-install … 50-validate"].append(rerun)
            p = params.load(host["params_file"])
            floors["replay"].append(asyncio.run(floor.floor(
                p, floor.replayed_commands(rerun["run_dir"])))[0])
            host = lab.reset(args.host)
            floors["fresh"].append(asyncio.run(floor.floor(p, floor.fresh_commands(p)))[0])
    print("| run | wall | package installation | other remote commands | notebook, kernel "
          "and runner | commands | changed |\n|---|---|---|---|---|---|---|")
    for label, runs_ in results.items():
        print(row(label, runs_))
    fresh_floor = statistics.median(floors["fresh"])
    replay_floor = statistics.median(floors["replay"])
    print(f"\nfloor, fresh host (bare asyncssh, one connection): {fresh_floor:.1f} s")
    print(f"floor, re-run (the same commands replayed, one connection): {replay_floor:.2f} s")
    rerun_wall = statistics.median(r["wall"] for r in results["re-run, 10-install … 50-validate"])
    print(f"re-run 10-install … 50-validate / floor: {rerun_wall / replay_floor:.1f}x")


if __name__ == "__main__":
    main()
