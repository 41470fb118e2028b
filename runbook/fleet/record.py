"""`runs/<UTC>-fleet/fleet.json`: what became of every host of a fleet run.

```json
{"hosts": [{"name": "mx1", "status": "ok", "reason": "",
            "stages": {"00-preflight": {"ok": 12, "changed": 0, "failed": 0}, ...},
            "duration": 31.2, "run_dir": "runs/20261204T010203Z-192.0.2.10",
            "audit_head": "<the last audit line's SHA-256>"}, ...],
 "succeeded": ["mx1"], "failed": [], "unreachable": [], ...}
```

`status` is `ok`, `failed` or `unreachable`; `reason` says why (empty when ok); `run_dir`
is null for a host that never started a run (unreachable, refused key, not started).
The same folder holds each host's merged params (`params/NAME.yaml`), its process's log
(`logs/NAME.log`) and, for a cluster run, the copies of its record gathered from its worker
(`hosts/NAME/run.json`, `hosts/NAME/audit.jsonl`).
"""

from __future__ import annotations

import json
from pathlib import Path

from runbook import audit
from runbook.errors import AuditError, RunbookError

FILE = "fleet.json"
STATUSES = ("ok", "failed", "unreachable")
COUNTS = ("ok", "changed", "failed")


def host_entry(name: str, result: dict, record_dir: Path | None) -> dict:
    """The fleet.json entry of one host, from its result and its run record (verified)."""
    status, reason = result["status"], result.get("reason", "")
    run = audit.read_run_json(record_dir) if record_dir else {}
    head = run.get("audit", {}).get("last_hash")
    if record_dir and (record_dir / "audit.jsonl").exists():
        try:
            audit.verify(record_dir)
        except AuditError as e:
            status, reason = "failed", f"its audit record does not verify: {e}"
    stages = {stage: {key: info.get(key, 0) for key in COUNTS}
              for stage, info in run.get("stages", {}).items()}
    return {"name": name, "status": status, "reason": reason, "stages": stages,
            "duration": result.get("duration", 0.0), "run_dir": result.get("run_dir"),
            "audit_head": head}


def write(fleet_dir: Path, hosts: list[dict], **fields) -> Path:
    data = {"hosts": hosts, **{status_list: [h["name"] for h in hosts if h["status"] == s]
                               for status_list, s in (("succeeded", "ok"), ("failed", "failed"),
                                                      ("unreachable", "unreachable"))},
            **fields}
    path = fleet_dir / FILE
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(data, indent=2) + "\n")
    temp.replace(path)
    return path


def read(fleet_run: Path) -> dict:
    """A fleet run's fleet.json (given the folder or the file)."""
    path = fleet_run if fleet_run.name == FILE else fleet_run / FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunbookError(f"{path} does not exist: --hosts-from wants a fleet run's folder "
                           "(runs/<UTC>-fleet)") from None
    except ValueError as e:
        raise RunbookError(f"{path} is not valid JSON: {e}") from None


def resume_point(entry: dict, stages: list[str]) -> tuple[str | None, str | None]:
    """Where `--failed` picks a host up: its run folder and first stage not done ok, or a
    fresh run (None, None) when it never started one."""
    run_dir = entry.get("run_dir")
    if not run_dir or not (Path(run_dir) / "run.json").exists():
        return None, None
    done = audit.read_run_json(Path(run_dir)).get("stages", {})
    pending = [s for s in stages if done.get(s, {}).get("status") != "ok"]
    return (run_dir, pending[0]) if pending else (None, None)
