"""`make bench`: the speed goals of docs/benchmarks.md, measured in one invocation on one
lab host, ours side by side with the floor (bench/floor.py).

    .venv/bin/python bench/run.py [--host deb10] [--rounds 3] [--reruns 5]

Needs root and a lab host nobody else is using: it resets HOST again and again. Per round,
interleaved so that drift in the machine's load hits both sides alike:

1. fresh host, the floor: one bare asyncssh script doing the default run's job;
2. fresh host, ours: `runbook run PARAMS` (the default run, 00 … 70);
3. `--reruns` times: our re-run of 10-install … 50-validate, each followed by the floor
   replaying the very commands that re-run recorded, with the same SMTP session, then the
   same re-run of ours started from `runbook warm` (one warm process for the invocation).

Every time is the wall time of a whole process, started as an operator starts it
(interpreter, imports, kernel and all). Then, on the configured host, `Target.run` per
command against a bare `conn.run` (bench/transport.py) and the profile of a re-run
(bench/profile.py). Prints Markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `make bench` runs this file as a script

from bench import floor, profile, transport  # noqa: E402
from runbook import lab, params  # noqa: E402

INSTALLERS = ("apt-get install", "pkg_add")
GOALS = {"re-run": 2.0, "fresh": 1.3, "Target.run": 1.3}


def timed(command: list[str], env: dict | None = None) -> float:
    start = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    wall = time.monotonic() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return wall


def ours(params_file: str, stages, run_dir: Path, env: dict | None = None) -> dict:
    command = [sys.executable, "-m", "runbook.cli", "run", params_file, "--run-dir", str(run_dir)]
    wall = timed(command + (["--stages", ",".join(stages)] if stages else []),
                 env=env or {"RUNBOOK_WARM": "0"})
    records = [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines()]
    commands = [r for r in records if r["type"] == "command"]
    changed = sum(1 for r in records if r["type"] == "operation" and r["status"] == "changed")
    return {"wall": wall, "records": records, "commands": len(commands), "changed": changed,
            "install": sum(r["duration"] for r in commands
                           if any(i in r["command"] for i in INSTALLERS))}


def the_floor(job: dict, tmp: Path) -> dict:
    path = tmp / "job.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds a password
    with os.fdopen(fd, "w") as f:
        json.dump(job, f)
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "bench.floor", str(path)], cwd=ROOT,
                         capture_output=True, text=True)
    wall = time.monotonic() - start
    path.unlink()
    if out.returncode:
        raise SystemExit(f"the floor failed:\n{out.stderr[-3000:]}")
    return {"wall": wall, **json.loads(out.stdout)}


@contextlib.contextmanager
def warm_process(tmp: Path):
    """`runbook warm` for the re-runs that start from it: the environment that finds it
    (its private folder under a TMPDIR of its own), and how many runs it served."""
    env = {"TMPDIR": str(tmp / "warm")}
    (tmp / "warm").mkdir()
    log = open(tmp / "warm.log", "w+")  # noqa: SIM115
    server = subprocess.Popen([sys.executable, "-m", "runbook.cli", "warm", "--idle", "900"],
                              cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=log)
    while "serving runs" not in (tmp / "warm.log").read_text():
        if server.poll() is not None:
            raise SystemExit(f"runbook warm ended: {(tmp / 'warm.log').read_text()}")
        time.sleep(0.1)
    try:
        yield env, lambda: (tmp / "warm.log").read_text().count(" started")
    finally:
        server.terminate()
        server.wait()
        log.close()


def rounds(name: str, count: int, reruns: int, tmp: Path) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {"fresh floor": [], "fresh": [], "re-run": [],
                                      "re-run floor": [], "re-run, warm": []}
    with warm_process(tmp) as (warm_env, served):
        for n in range(count):
            _round(name, n, reruns, tmp, results, warm_env)
        if served() != len(results["re-run, warm"]):
            raise SystemExit("runbook warm did not serve every warm re-run")
    return results


def _round(name: str, n: int, reruns: int, tmp: Path, results: dict, warm_env: dict) -> None:
    """One round: a fresh host each side, then re-runs: ours cold, the floor, ours warm."""
    host = lab.reset(name)
    p = params.load(host["params_file"])
    password = Path(p.dovecot.test_password_file).read_text().strip()
    results["fresh floor"].append(the_floor(floor.fresh_job(p, password), tmp))
    host = lab.reset(name)
    results["fresh"].append(ours(host["params_file"], None, tmp / f"fresh-{n}"))
    for m in range(reruns):
        rerun = ours(host["params_file"], floor.STAGES, tmp / f"rerun-{n}-{m}")
        results["re-run"].append(rerun)
        results["re-run floor"].append(the_floor(floor.replay_job(p, rerun["records"]), tmp))
        results["re-run, warm"].append(
            ours(host["params_file"], floor.STAGES, tmp / f"warm-{n}-{m}", env=warm_env))


def med(runs: list[dict], key: str = "wall") -> float:
    return statistics.median(r[key] for r in runs)


def spread(runs: list[dict]) -> str:
    walls = [r["wall"] for r in runs]
    return f"{min(walls):.2f}–{max(walls):.2f}"


def report(results: dict[str, list[dict]], per_command: dict[str, list[float]]) -> str:
    rerun, rerun_floor = med(results["re-run"]), med(results["re-run floor"])
    fresh, fresh_floor = med(results["fresh"]), med(results["fresh floor"])
    bare = statistics.median(per_command["`true`, bare conn.run"])
    target = statistics.median(per_command["`true`, Target.run (audited)"])
    rows = [
        ("re-run of 10-install … 50-validate", rerun, rerun_floor, "re-run",
         results["re-run"], results["re-run floor"]),
        ("the same re-run, started from `runbook warm`", med(results["re-run, warm"]),
         rerun_floor, "re-run", results["re-run, warm"], results["re-run floor"]),
        ("fresh host, default run 00 … 70", fresh, fresh_floor, "fresh",
         results["fresh"], results["fresh floor"]),
    ]
    lines = ["| measurement | ours | floor | ours / floor | goal |", "|---|---|---|---|---|"]
    for label, mine, base, goal, a, b in rows:
        ok = "met" if mine / base <= GOALS[goal] else "MISSED"
        lines.append(f"| {label} | {mine:.2f} s ({spread(a)}) | {base:.2f} s ({spread(b)}) "
                     f"| {mine / base:.2f}x | ≤ {GOALS[goal]}x: {ok} |")
    lines.append(f"| fresh host: package installation | {med(results['fresh'], 'install'):.2f} s "
                 f"| {med(results['fresh floor'], 'install'):.2f} s | | |")
    ok = "met" if target / bare <= GOALS["Target.run"] else "MISSED"
    lines.append(f"| per command, `true` on an open connection | {target * 1000:.2f} ms "
                 f"| {bare * 1000:.2f} ms | {target / bare:.2f}x | ≤ 1.3x: {ok} |")
    commands = results["re-run"][0]["commands"], results["fresh"][0]["commands"]
    changed = [r["changed"] for r in results["re-run"]]
    lines.append(f"\nre-run: {commands[0]} commands, changes {sorted(set(changed))}; "
                 f"fresh run: {commands[1]} commands; medians of {len(results['re-run'])} "
                 f"re-runs and {len(results['fresh'])} fresh runs (min–max in brackets).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="deb10", help="a lab host only this benchmark uses")
    parser.add_argument("--rounds", type=int, default=3, help="fresh hosts, each side")
    parser.add_argument("--reruns", type=int, default=5, help="re-runs per round")
    parser.add_argument("--commands", type=int, default=300, help="for Target.run vs conn.run")
    args = parser.parse_args()
    lab.up_host(args.host, checkout=ROOT)
    with tempfile.TemporaryDirectory(prefix="runbook-bench-") as tmp:
        results = rounds(args.host, args.rounds, args.reruns, Path(tmp))
    host = next(h for h in lab.status() if h["name"] == args.host)
    per_command = asyncio.run(transport.transport(params.load(host["params_file"]).target,
                                                  args.commands))
    print(report(results, per_command))
    print("\nWhere a re-run's time goes (bench/profile.py):\n")
    print(profile.profile(host["params_file"], list(floor.STAGES), args.reruns))


if __name__ == "__main__":
    main()
