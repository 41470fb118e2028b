"""A run folder's facts, as the report shows them: the header, the stages, every remote command
with its result, the files changed, what failed and the probe transcripts.

It reads `run.json` and `audit.jsonl` as they are. A field an older run does not have is
"unknown", a line that does not parse is left out (the verification names it): the report
of a damaged or old record is still made, never crashed on.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

from runbook import audit, signing
from runbook.errors import AuditError, RunbookError
from runbook.remote.files import BACKUP_ROOT
from runbook.run import manifest

UNKNOWN = "unknown"
COUNTS = ("ok", "changed", "failed", "skipped")
DETECT_MARKER = "@@os-release"  # the platform detection's command (platforms.choice.detect)


def read_run(run_dir: Path) -> dict:
    """Everything the report of one run folder shows, as plain data (report.json)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunbookError(f"{run_dir}: no such run folder")
    run = _run_json(run_dir)
    records = read_records(run_dir)
    commands = attribute(records)
    stages = stage_rows(run_dir, run, records)
    return {
        "kind": "run",
        "folder": run_dir.name,
        "header": header(run, records, stages),
        "audit": verification(run_dir),
        "stages": stages,
        "commands": [_brief(c) for c in commands],
        "changed_files": changed_files(records),
        "failures": failures(run_dir, records, commands, stages),
        "probes": probes(records),
    }


def _run_json(run_dir: Path) -> dict:
    try:
        data = json.loads((run_dir / audit.RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_records(run_dir: Path) -> list[dict]:
    """The audit records that parse, each with `_line` (its line number in the file)."""
    try:
        data = (run_dir / audit.AUDIT_FILE).read_bytes()
    except OSError:
        return []
    records = []
    for number, line in enumerate(audit.split_lines(data), 1):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record | {"_line": number})
    return records


def verification(run_dir: Path) -> dict:
    """The record checked now (the hash chain; a signed run's head and notebook digests):
    intact, or the message naming the first wrong line or file."""
    try:
        verdict = signing.verify_run(run_dir)
    except AuditError as e:
        problem = str(e).replace(f"{run_dir}/", "")
        line = re.search(r"\bline (\d+)", problem)
        return {"intact": False, "records": None, "signed": None, "problem": problem,
                "line": int(line.group(1)) if line else None}
    return {"intact": True, "records": verdict.records, "signed": verdict.signed,
            "problem": None, "line": None}


# --- the header ------------------------------------------------------------------------------

def header(run: dict, records: list[dict], stages: list[dict]) -> dict:
    first = {}
    for record in records:
        first.setdefault(record.get("type"), record)
    command = first.get("command", {})
    return {
        "host": run.get("host") or first.get("stage", {}).get("host") or UNKNOWN,
        "host_key": run.get("host_key") or command.get("fingerprint") or UNKNOWN,
        "platform": _platform(run, records),
        "params_sha256": run.get("params_sha256") or UNKNOWN,
        "params_file": run.get("params_file") or UNKNOWN,
        "git_commit": run.get("git_commit") or UNKNOWN,
        "operator": run.get("operator") or UNKNOWN,
        "start": run.get("start") or (records[0].get("time") if records else None) or UNKNOWN,
        "end": run.get("end") or UNKNOWN,
        "status": run.get("state") or _derived_status(run, stages),
        "dry_run": run.get("dry_run", UNKNOWN),
        "tools": run.get("tools") or {},
    }


def _platform(run: dict, records: list[dict]) -> str:
    """The profile the run used (run.json), else what the host said when detected."""
    recorded = run.get("platform")
    if isinstance(recorded, dict) and recorded.get("name"):
        return f"{recorded['name']} {recorded.get('release') or ''}".strip()
    for record in records:
        if record.get("type") == "command" and DETECT_MARKER in str(record.get("command")):
            uname, _, os_release = str(record.get("stdout", "")).partition(DETECT_MARKER + "\n")
            return _identified(uname, os_release)
    return UNKNOWN


def _identified(uname: str, os_release: str) -> str:
    system, _, release = uname.strip().partition(" ")
    if system == "OpenBSD":
        return f"openbsd {release.strip()}"
    info = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', os_release, re.M))
    name = info.get("ID") or system.lower()
    return f"{name} {info.get('VERSION_ID', '')}".strip() or UNKNOWN


def _derived_status(run: dict, stages: list[dict]) -> str:
    """For runs recorded before run.json had a state: from the stages."""
    statuses = {s["status"] for s in stages}
    if "failed" in statuses:
        return "failed"
    if statuses and statuses <= {"ok"} and run.get("end"):
        return "ok"
    return UNKNOWN


# --- stages ----------------------------------------------------------------------------------

def stage_rows(run_dir: Path, run: dict, records: list[dict]) -> list[dict]:
    """One row a stage, in the manifest's order: from run.json, else from the audit's stage
    records (a plain papermill run has no runner to write run.json's stages)."""
    recorded = run.get("stages") if isinstance(run.get("stages"), dict) else {}
    seen = dict.fromkeys(recorded)
    ends: dict[str, dict] = {}
    for record in records:
        if record.get("type") == "stage" and record.get("stage"):
            seen.setdefault(record["stage"])
            if record.get("event") == "start":
                ends[record["stage"]] = {"status": "unfinished"}
            elif record.get("event") == "end":
                ends[record["stage"]] = record
    order = {s.name: i for i, s in enumerate(manifest.MANIFEST)}
    names = sorted(seen, key=lambda n: order.get(n, len(order)))
    return [_stage_row(run_dir, name, recorded.get(name) or {}, ends.get(name) or {})
            for name in names]


def _stage_row(run_dir: Path, name: str, entry: dict, end: dict) -> dict:
    counts = end.get("counts") if isinstance(end.get("counts"), dict) else {}
    try:
        info = manifest.find(name)
        title, steps = info.title, info.steps
    except RunbookError:
        title, steps = UNKNOWN, UNKNOWN
    notebook = entry.get("notebook") or f"{name}.ipynb"
    row = {
        "name": name, "title": title, "steps": steps,
        "status": entry.get("status") or end.get("status") or UNKNOWN,
        "duration": entry.get("duration", end.get("duration", UNKNOWN)),
        "notebook": notebook if (run_dir / notebook).exists() else None,
        "notebook_html": None,
    }
    for key in COUNTS:
        row[key] = entry.get(key, counts.get(key, UNKNOWN))
    return row


# --- commands and their results --------------------------------------------------------------

def attribute(records: list[dict]) -> list[dict]:
    """Every command with its result: `changed` when it made a change (its operation's plan
    ran it, or it wrote a file), `failed` when it timed out or is the command its operation
    failed on (the last that exited non-zero, else the last before the undo), `ok`
    otherwise. A command belongs to the operation recorded next in its stage."""
    commands: list[dict] = []
    pending: list[dict] = []
    for record in records:
        kind = record.get("type")
        if kind == "command":
            command = _command(record)
            commands.append(command)
            pending.append(command)
        elif kind == "file_write" and pending:
            pending[-1]["result"] = "changed"
        elif kind == "operation":
            _settle(pending, record)
            pending = []
        elif kind == "stage":
            pending = []
    return commands


def _command(record: dict) -> dict:
    broken = record.get("timed_out") is not None or record.get("error") is not None
    return {
        "seq": record.get("seq"), "stage": record.get("stage"),
        "host": record.get("host"), "command": str(record.get("command", "")),
        "start": record.get("start") or record.get("time"),
        "duration": _number(record.get("duration")),
        "exit_status": record.get("exit_status"),
        "timed_out": record.get("timed_out"), "error": record.get("error"),
        "stdout": record.get("stdout") or "", "stderr": record.get("stderr") or "",
        "result": "failed" if broken else "ok", "operation": None,
    }


def _settle(pending: list[dict], operation: dict) -> None:
    status = operation.get("status")
    planned = set(operation.get("commands") or [])
    for command in pending:
        command["operation"] = operation.get("name")
        if status == "changed" and command["command"] in planned:
            command["result"] = "changed"
    if status == "failed" and pending:
        # The undo after a failure (backups read, files put back) all works in BACKUP_ROOT.
        own = [c for c in pending if BACKUP_ROOT not in c["command"]] or pending
        exited = [c for c in pending if c["exit_status"] not in (0, None)]
        (exited or own)[-1]["result"] = "failed"


def _number(value) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _brief(command: dict) -> dict:
    """A command as report.json lists it: its output only when it failed."""
    brief = {k: v for k, v in command.items() if k not in ("stdout", "stderr")}
    if command["result"] == "failed":
        brief |= {"stdout": command["stdout"], "stderr": command["stderr"]}
    return brief


# --- files, failures, probes -----------------------------------------------------------------

def changed_files(records: list[dict]) -> list[dict]:
    """Every file written, with its diff; `restored` when the stage's failure put it back."""
    files = []
    for record in records:
        if record.get("type") == "file_write":
            files.append({"seq": record.get("seq"), "stage": record.get("stage"),
                          "path": record.get("path"), "diff": record.get("diff") or "",
                          "backup": record.get("backup"), "restored": False})
        elif record.get("type") == "restore":
            for written in files:
                if written["path"] == record.get("path") and written["stage"] == record.get(
                        "stage"):
                    written["restored"] = True
    return files


def failures(run_dir: Path, records, commands, stages) -> list[dict]:
    """Each failed operation with the command it failed on and that command's output; a
    failed stage without one (an error outside any operation) with the notebook's error."""
    found = []
    for record in records:
        if record.get("type") == "operation" and record.get("status") == "failed":
            failed = [_output(c) for c in commands if c["result"] == "failed"
                      and c["operation"] == record.get("name") and c["stage"] == record.get(
                          "stage")]
            found.append({"stage": record.get("stage"), "operation": record.get("name"),
                          "detail": record.get("detail") or "",
                          "restore": record.get("restore") or "", "commands": failed})
    named = {f["stage"] for f in found}
    for stage in stages:
        if stage["status"] == "failed" and stage["name"] not in named:
            found.append({"stage": stage["name"], "operation": None,
                          "detail": notebook_error(run_dir / (stage["notebook"] or "-")),
                          "restore": "", "commands": []})
    return found


def _output(command: dict) -> dict:
    return {key: command[key] for key in ("seq", "command", "exit_status", "timed_out",
                                          "error", "duration", "stdout", "stderr")}


def notebook_error(path: Path) -> str:
    """The first error an executed notebook shows (`ename: evalue`), or unknown."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        return UNKNOWN
    for cell in cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"{output.get('ename')}: {output.get('evalue')}"
    return UNKNOWN


def probes(records: list[dict]) -> list[dict]:
    keys = ("seq", "stage", "protocol", "host", "address", "port", "via", "purpose")
    return [{k: record.get(k) for k in keys} | {"transcript": list(record.get("transcript")
                                                                   or [])}
            for record in records if record.get("type") == "probe"]
