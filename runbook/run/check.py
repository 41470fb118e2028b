"""`runbook check`: does the host still match what the runbook would set? (drift)

A check is a dry run of the stages (recorded like any run, in `runs/`): facts are read,
nothing changes. Every operation whose dry run found something to change is drift, listed
with what it would do (`edit /etc/postfix/main.cf  # set mynetworks`). For a nightly cron
or CI job: exit 0 when nothing would change, DRIFT when something would, 1 when the check
itself could not run (unreachable host, a failing check), 2 for bad parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from runbook import inventory
from runbook.audit import AUDIT_FILE
from runbook.errors import RunbookError
from runbook.run import runner
from runbook.run.stage import PROJECT

DRIFT = 3


@dataclass
class Drift:
    stage: str
    operation: str
    changes: list[str]


@dataclass
class HostCheck:
    name: str
    run_dir: Path | None = None
    drift: list[Drift] = field(default_factory=list)
    error: str = ""

    def report(self) -> str:
        where = f" (record: {self.run_dir})" if self.run_dir else ""
        if self.error:
            head = f"{self.name}: could not check{where}:\n  {self.error}"
            return "\n".join([head, *self._listed()]) if self.drift else head
        if not self.drift:
            return f"{self.name}: in step, nothing would change{where}"
        return "\n".join([f"{self.name}: DRIFT, {len(self.drift)} operation(s) would change "
                          f"the host{where}", *self._listed()])

    def _listed(self) -> list[str]:
        lines = []
        for d in self.drift:
            lines.append(f"  {d.stage} · {d.operation}")
            lines += [f"      {change}" for change in d.changes]
        return lines


def drifted(run_dir: Path) -> list[Drift]:
    """The operations whose dry run would change something, from the record (per stage,
    its latest attempt only)."""
    found: dict[str, list[Drift]] = {}
    for line in (Path(run_dir) / AUDIT_FILE).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        stage = record.get("stage")
        if record.get("type") == "stage" and record.get("event") == "start":
            found[stage] = []
        elif record.get("type") == "operation" and record.get("would"):
            found.setdefault(stage, []).append(Drift(stage, record["name"], record["would"]))
    return [d for stage in found.values() for d in stage]


def check_host(params_file: Path, host: inventory.Host, stages: list[str] | None,
               runs_root: Path) -> HostCheck:
    result = HostCheck(host.name)
    try:
        result.run_dir = runner.run(params_file, stages=stages, dry_run=True,
                                    runs_root=runs_root, echo=lambda *a, **k: None,
                                    params=host.params)
    except runner.StageFailed as e:
        result.error = str(e)
        result.run_dir = runner.latest_run(runs_root, host.params.target.host)
        result.drift = drifted(result.run_dir)  # what was found before the failure
        return result
    except RunbookError as e:  # unreachable, refused, locked: said in one line
        result.error = str(e)
        return result
    result.drift = drifted(result.run_dir)
    return result


def main(path: Path, stages: list[str] | None = None, hosts: list[str] | None = None,
         runs_root: Path = PROJECT / "runs", echo=print) -> int:
    """Check every host of a params or inventory file (one after the other); the exit code."""
    chosen = inventory.select(inventory.load(path), hosts)  # all refused before connecting
    results = []
    for host in chosen:
        results.append(check_host(Path(path), host, stages, runs_root))
        echo(results[-1].report(), flush=True)
    if any(r.error for r in results):
        return 1
    return DRIFT if any(r.drift for r in results) else 0
