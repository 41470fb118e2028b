"""What writing the report adds to a run: a re-run timed with and without it.

    .venv/bin/python -m bench.report_cost PARAMS [--repeat 6] [--stages 10-install,...]

Each round runs `runbook run PARAMS` as an operator does (a new process, the CLI) once in
every variant, interleaved so that the host's and this machine's load fall on all alike:

- `none`: no report at all (the runner's report hook replaced by nothing),
- `as shipped`: what `runbook run` does (report.html and report.json, no stage pages),
- `with stage pages`: the report and every stage's page (nbconvert) made at the end.

The host must be configured already (a re-run changes nothing): run the default run first.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = "10-install,20-enable,30-configure,40-start,50-validate"
# Each variant is a few lines run before the CLI in the timed process.
VARIANTS = {
    "none": "runner.write_report = lambda *a, **k: None\n",
    "as shipped": "",
    "with stage pages": "from runbook import report\n"
                        "runner.write_report = lambda d, echo=print: report.write(d)\n",
}
CLI = ("import sys\nfrom runbook.run import runner\n{patch}from runbook import cli\n"
       "sys.exit(cli.main(sys.argv[1:]))\n")


def timed_run(params: str, stages: str, patch: str, run_dir: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", CLI.format(patch=patch), "run", params, "--stages",
                    stages, "--run-dir", str(run_dir)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("params")
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--stages", default=STAGES)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeat):
            for name, patch in VARIANTS.items():
                run_dir = Path(tmp) / f"{round_}-{name.replace(' ', '-')}"
                times[name].append(timed_run(args.params, args.stages, patch, run_dir))
    base = statistics.median(times["none"])
    print("| variant | median | spread | added |\n|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} s | {min(values):.2f}–{max(values):.2f} s | "
              f"{median - base:+.2f} s |")


if __name__ == "__main__":
    main()
