"""Benchmark: `runbook report` on a synthetic 20-host fleet folder.

    .venv/bin/python -m bench.report [--hosts 20] [--repeat 5] [--like RUN]

Makes, in a temp dir, a fleet folder (`fleet.json`) and a run folder per host. Each run is
written through the real audit module: 8 stages, about 80 remote commands with output,
operations, file writes with diffs and probe transcripts, and the stage notebooks (the
source notebooks standing in for executed ones); `--like RUN` copies a real run folder
instead. No host is contacted. Times, median of the repeats:

- the fleet report as a fleet run leaves the folder (each host's `runbook run` wrote its
  report page when it ended, no stage pages),
- the fleet report from cold (every host's report made as well), and once more with all of
  them there; and from cold with every host's stage pages made too,
- one run's report with its notebook pages, from cold (`runbook report RUN`);
- and the first of these as a whole `runbook report FLEET` process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runbook import report
from runbook.audit import Audit, update_run_json
from runbook.run import manifest

DIFF = "--- {p}\n+++ {p}\n@@ -1,3 +1,3 @@\n keep = 1\n-old = {n}\n+new = {n}\n keep = 2\n"


def synthetic_run(folder: Path, host: str, t0: float) -> None:
    """A default run's record: per stage ten commands, five operations (two changed, each
    writing a file), a probe in 50-validate and 70-dovecot."""
    audit = Audit(folder, display=False)
    stages = {}
    clock = t0
    for stage in (s for s in manifest.MANIFEST if s.default):
        audit.stage = stage.name
        audit.record("stage", event="start", host=host, mode="batch", dry_run=False)
        for op in range(5):
            changed = op < 2
            for n in range(2):
                start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(clock))
                audit.record("command", host=host, fingerprint="SHA256:synthetic",
                             command=f"step {op} command {n} of {stage.name}",
                             start=f"{start}.{int(clock * 1000) % 1000:03d}Z",
                             duration=0.02, exit_status=0, stdout="line of output\n" * 10,
                             stderr="")
                clock += 0.03
            if changed:
                path = f"/etc/{stage.short}/file{op}.conf"
                audit.record("file_write", host=host, path=path, backup=f"/var/backups/{op}",
                             diff=DIFF.format(p=path, n=op))
            audit.record("operation", name=f"step {op}", status="changed" if changed else "ok",
                         detail="", duration=0.06, commands=[f"step {op} command 1 of "
                                                             f"{stage.name}"])
        if stage.name in ("50-validate", "70-dovecot"):
            audit.record("probe", host=host, protocol="smtp", via="ssh tunnel",
                         transcript=["S: 220 ready", "C: EHLO x", "S: 250 ok", "C: QUIT"])
        audit.record("stage", event="end", status="ok", duration=0.4,
                     counts={"ok": 3, "changed": 2, "failed": 0, "skipped": 0})
        shutil.copy(stage.notebook, folder / f"{stage.name}.ipynb")
        stages[stage.name] = {"status": "ok", "duration": 0.4, "notebook":
                              f"{stage.name}.ipynb", "ok": 3, "changed": 2, "failed": 0,
                              "skipped": 0}
    update_run_json(folder, host=host, params_sha256="0" * 64, git_commit="bench",
                    operator="bench", state="ok", start="-", end="-", stages=stages)


def make_fleet(root: Path, hosts: int, like: Path | None) -> Path:
    fleet = root / "20261128T140000Z-fleet"
    fleet.mkdir(parents=True)
    entries = []
    for i in range(1, hosts + 1):
        name = f"mx{i:02}.example.org"
        run = root / f"20261128T140000Z-{name}"
        if like:
            shutil.copytree(like, run, ignore=shutil.ignore_patterns("*.html", "report.json"))
        else:
            synthetic_run(run, name, 1_800_000_000.0 + i * 0.5)
        entries.append({"name": name, "status": "ok", "reason": "", "duration": 30.0,
                        "run_dir": str(run), "audit_head": None,
                        "stages": {s: {"ok": 3, "changed": 2, "failed": 0} for s in
                                   json.loads((run / "run.json").read_text())["stages"]}})
    (fleet / "fleet.json").write_text(json.dumps({
        "hosts": entries, "succeeded": [e["name"] for e in entries], "failed": [],
        "unreachable": []}))
    return fleet


def stale_fleet(fleet: Path) -> None:
    """The fleet's own report gone, its hosts' reports kept."""
    for name in ("report.html", "report.json"):
        (fleet / name).unlink(missing_ok=True)


def clear_reports(root: Path) -> None:
    for page in [*root.glob("*/*.html"), *root.glob("*/report.json")]:
        page.unlink()


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--like", type=Path, help="copy this real run folder for every host")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fleet = make_fleet(root, args.hosts, args.like)
        one = next(root.glob("*-mx01.example.org"))
        first = timed(lambda: report.write(one))  # nbconvert's import and templates, once
        left, process, cold, warm, pages, single = [], [], [], [], [], []
        for _ in range(args.repeat):
            clear_reports(root)
            for run in root.glob("*-mx*"):  # what each host's `runbook run` wrote at its end
                report.write(run, notebooks=False)
            left.append(timed(lambda: report.write(fleet)))
            stale_fleet(fleet)
            process.append(timed(lambda: subprocess.run(
                [sys.executable, "-m", "runbook.cli", "report", str(fleet)], check=True,
                stdout=subprocess.DEVNULL)))
            clear_reports(root)
            cold.append(timed(lambda: report.write(fleet)))
            warm.append(timed(lambda: report.write(fleet)))
            clear_reports(root)
            pages.append(timed(lambda: report.write(fleet, notebooks=True)))
            (one / "report.html").unlink()
            for page in one.glob("*.html"):
                page.unlink()
            single.append(timed(lambda: report.write(one)))
        commands = sum(1 for _ in (one / "audit.jsonl").open()) * args.hosts
        size = (fleet / "report.html").stat().st_size
    print(f"{args.hosts} hosts, {commands} audit records in all; fleet report.html "
          f"{size / 1e6:.1f} MB")
    print("| report | median | spread |\n|---|---|---|")
    for label, times in ((f"fleet of {args.hosts}, as a fleet run leaves it (each host's "
                          "report page written by its run, no stage pages)", left),
                         ("the same as a `runbook report FLEET` process (its start and "
                          "imports included)", process),
                         (f"fleet of {args.hosts}, cold (every host's report made too, as "
                          "for runs made before reports)", cold),
                         (f"fleet of {args.hosts}, again (every host's report there)", warm),
                         (f"fleet of {args.hosts}, cold, every host's stage pages made too "
                          "(`report.write(fleet, notebooks=True)`)", pages),
                         ("one run, with its 8 notebook pages", single)):
        print(f"| {label} | {statistics.median(times):.2f} s | "
              f"{min(times):.2f}–{max(times):.2f} s |")
    print(f"(first report in a fresh process, nbconvert's import included: {first:.2f} s)")


if __name__ == "__main__":
    main()
