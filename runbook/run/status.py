"""`runbook status HOST_OR_PARAMS`: the last run on a host and what it left there.

From this machine: the host's latest run folder in `runs/` and its state in run.json
(ok, failed, interrupted, or `running` with no end: still going or cut short). From the
host (over SSH, read only, no lock taken): the run journal, who holds the lock, the last
run's pending backups and stray temp files (see remote/recovery.py). Given a bare host
name, the parameters are those the latest run recorded.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from runbook import inventory
from runbook import params as params_model
from runbook.errors import ParamsError, RunbookError
from runbook.remote import recovery
from runbook.remote.target import Target
from runbook.run.stage import PROJECT


def latest(runs_root: Path, host: str) -> Path | None:
    found = sorted(p for p in runs_root.glob(f"*-{host}") if (p / "run.json").exists())
    return found[-1] if found else None


def _local(run_dir: Path, lock_owner: str | None) -> list[str]:
    run = json.loads((run_dir / "run.json").read_text())
    state = run.get("state") or ("running" if run.get("end") is None else "ended")
    if state == "running":
        state = ("running now (it holds the host's lock)" if lock_owner == run_dir.name else
                 "cut short: no end recorded and it holds no lock (the runner was killed, "
                 "or the host or the connection was lost)")
    planned = (run.get("attempts") or [{}])[-1].get("stages") or list(run.get("stages", {}))
    done = run.get("stages", {})
    stages = ", ".join(f"{name} {done[name]['status'] if name in done else 'not finished'}"
                       for name in planned)
    kind = " (dry run)" if run.get("dry_run") else ""
    return [f"last run from here{kind}: {run_dir} — {state}", f"  stages: {stages or 'none'}"]


async def _remote(params: params_model.Params) -> recovery.HostState:
    async with await Target.connect(params.target, None) as t:
        return await recovery.inspect(t)


def _params_of(what: str, runs_root: Path) -> list[tuple[str, params_model.Params | None]]:
    path = Path(what)
    if path.is_file():
        return [(h.params.target.host, h.params) for h in inventory.load(path)]
    run_dir = latest(runs_root, what)
    recorded = run_dir and json.loads((run_dir / "run.json").read_text()).get("params_file")
    try:
        return [(what, params_model.load(recorded) if recorded else None)]
    except ParamsError:
        return [(what, None)]


def report(what: str, runs_root: Path = PROJECT / "runs") -> str:
    lines = []
    for host, params in _params_of(what, runs_root):
        lines.append(f"{host}:")
        state = None
        if params is None:
            lines.append("  (no parameters to reach it: give its params file)")
        else:
            try:
                state = asyncio.run(_remote(params))
            except RunbookError as e:
                lines.append(f"  the host could not be read: {e}")
        run_dir = latest(runs_root, host)
        lines += [f"  {line}" for line in (_local(run_dir, state and state.lock_owner)
                                           if run_dir else ["no run from here in " +
                                                            str(runs_root)])]
        if state is not None:
            lines.append("  on the host:")
            lines += [f"    {line}" for line in state.report()]
            if state.news:
                lines.append("  the next `runbook run` removes the stray temp files and "
                             "completes the unfinished run; `--stages rollback` goes back to "
                             "before the first run")
    return "\n".join(lines)
