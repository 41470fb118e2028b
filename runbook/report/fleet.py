"""A fleet's facts: the hosts × stages matrix and a timeline lane per host, from a fleet
folder's `fleet.json` or from several run folders given together.

fleet.json (written by a fleet run, `runs/<UTC>-fleet/`) lists `hosts`, each with `name`,
`status` (ok, failed, unreachable), `reason`, `stages` (per stage its ok/changed/failed
counts), `duration`, `run_dir` (null when no run started) and `audit_head`; and the
`succeeded`, `failed` and `unreachable` name lists. Where a host's run folder is found, its
own record (run.json, audit.jsonl) gives the detail; fields missing are "unknown".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from runbook.errors import RunbookError
from runbook.report.collect import UNKNOWN, read_run
from runbook.run import manifest

FLEET_FILE = "fleet.json"
NOT_RUN = "not run"


def is_fleet(folder: Path) -> bool:
    return (Path(folder) / FLEET_FILE).is_file()


def from_fleet_json(folder: Path) -> tuple[dict, dict[str, dict]]:
    """(the fleet's facts, the collected run of each host that has one)."""
    folder = Path(folder)
    try:
        data = json.loads((folder / FLEET_FILE).read_text(encoding="utf-8"))
    except ValueError as e:
        raise RunbookError(f"{folder / FLEET_FILE} is not valid JSON: {e}") from None
    entries = data.get("hosts") if isinstance(data.get("hosts"), list) else []
    rows, runs = [], {}
    for entry in entries:
        entry = entry if isinstance(entry, dict) else {}
        name = str(entry.get("name") or UNKNOWN)
        run_dir = find_run_dir(folder, name, entry.get("run_dir"))
        run = read_run(run_dir) if run_dir else None
        if run:
            runs[name] = run | {"_dir": run_dir}
        rows.append(_row(name, entry, run, run_dir))
    return _fleet(folder, rows, data, source=FLEET_FILE), runs


def from_runs(run_dirs: list[Path], out: Path) -> tuple[dict, dict[str, dict]]:
    """The same facts for run folders given together (no fleet.json): a row a run."""
    rows, runs = [], {}
    for run_dir in run_dirs:
        run = read_run(run_dir)
        name = run["header"]["host"]
        if name in runs:  # the same host twice: tell the rows apart by their run
            name = f"{name} ({run['folder']})"
        runs[name] = run | {"_dir": Path(run_dir)}
        header = run["header"]
        entry = {"status": header["status"], "reason": _reason(run),
                 "duration": _duration(run)}
        rows.append(_row(name, entry, run, Path(run_dir)))
    return _fleet(out, rows, {}, source=", ".join(str(d) for d in run_dirs)), runs


def find_run_dir(folder: Path, name: str, recorded) -> Path | None:
    """A host's run folder: as recorded (absolute, or relative to where the fleet ran: the
    project above runs/, the current directory, the fleet folder), else the copy a cluster
    run gathered into the fleet folder (hosts/NAME/)."""
    candidates = []
    if recorded:
        path = Path(str(recorded))
        candidates = [path] if path.is_absolute() else [
            folder.parent.parent / path, Path.cwd() / path, folder / path, folder.parent / path]
    candidates.append(folder / "hosts" / name)
    for candidate in candidates:
        if (candidate / "run.json").is_file() or (candidate / "audit.jsonl").is_file():
            return candidate.resolve()
    return None


def _row(name: str, entry: dict, run: dict | None, run_dir: Path | None) -> dict:
    status = entry.get("status") or (run["header"]["status"] if run else UNKNOWN)
    cells = {}
    if run:
        for stage in run["stages"]:
            cells[stage["name"]] = {"status": _cell_status(stage), **_counts(stage)}
    recorded = entry.get("stages") if isinstance(entry.get("stages"), dict) else {}
    for stage, counts in recorded.items():
        if stage not in cells and isinstance(counts, dict):
            cells[stage] = {"status": _cell_status(counts), **_counts(counts)}
    return {"name": name, "status": status, "reason": entry.get("reason") or "",
            "duration": entry.get("duration", UNKNOWN), "run_dir": str(run_dir or "") or None,
            "audit_head": entry.get("audit_head"), "audit": run["audit"] if run else None,
            "cells": cells, "report": None}


def _cell_status(stage: dict) -> str:
    """A stage's status as the matrix shows it: failed, changed (ok with changes) or ok."""
    if stage.get("status") == "failed" or _positive(stage.get("failed")):
        return "failed"
    if stage.get("status") not in (None, "ok", "failed"):
        return str(stage["status"])  # unfinished, unknown
    return "changed" if _positive(stage.get("changed")) else "ok"


def _positive(value) -> bool:
    return isinstance(value, int | float) and value > 0


def _counts(stage: dict) -> dict:
    return {key: stage.get(key, UNKNOWN) for key in ("ok", "changed", "failed")}


def _fleet(folder: Path, rows: list[dict], data: dict, source: str) -> dict:
    order = {s.name: i for i, s in enumerate(manifest.MANIFEST)}
    stages = sorted({s for row in rows for s in row["cells"]},
                    key=lambda n: (order.get(n, len(order)), n))
    for row in rows:
        missing = "unreachable" if row["status"] == "unreachable" else NOT_RUN
        for stage in stages:
            row["cells"].setdefault(stage, {"status": missing})
    lists = {key: data.get(key) if isinstance(data.get(key), list) else
             [r["name"] for r in rows if r["status"] == status]
             for key, status in (("succeeded", "ok"), ("failed", "failed"),
                                 ("unreachable", "unreachable"))}
    return {"kind": "fleet", "folder": Path(folder).name, "source": source, "stages": stages,
            "hosts": rows, **lists}


def _reason(run: dict) -> str:
    failure = next(iter(run["failures"]), None)
    if failure:
        return f"{failure['stage']}: {failure['operation'] or 'error'}"
    return "" if run["audit"]["intact"] else "audit record not intact"


def _duration(run: dict):
    durations = [s["duration"] for s in run["stages"] if isinstance(s["duration"], int | float)]
    return round(sum(durations), 3) if durations else UNKNOWN


def link(out: Path, target: Path) -> str:
    """A relative link from a page in `out` to `target`."""
    return Path(os.path.relpath(target, out)).as_posix()
