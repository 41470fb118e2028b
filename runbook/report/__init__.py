"""What a run did, for people: `runbook report` (a run's or a fleet's report.html with its
report.json twin) and `runbook docs` (the notebooks as a static site).

Above `run/`: it reads what runs leave behind (run.json, audit.jsonl, the executed
notebooks) and never connects to a host. The modules: `collect` (a run folder's facts),
`fleet` (the hosts × stages matrix, from fleet.json or several runs), `timeline` (the SVG),
`render` (the pages, Jinja2), `notebooks` (nbconvert, self-contained pages), `site` (the
docs site), `steps` (the guide's step ids and titles). Every page opens with no network.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from runbook.errors import RunbookError
from runbook.report import render, timeline
from runbook.report.collect import read_run
from runbook.report.fleet import from_fleet_json, from_runs, is_fleet, link
from runbook.run.stage import unused_folder

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"


def write(folders: Path | str | list, out: Path | None = None, *,
          notebooks: bool | None = None) -> Path:
    """Write report.html and report.json; returns the folder holding them. One run folder:
    into it, with its stage pages. A fleet folder (fleet.json): into it, each host's own
    report beside its run. Several run folders: a matrix of them, into `out` (default: a new
    `<UTC>-report` folder beside the first run). A host's stage pages are made for a fleet
    only when `notebooks` is true: about 0.1 s a page, 8 to 18 s for a fleet of 20 (`runbook
    report RUN` makes one run's)."""
    paths = [Path(f) for f in (folders if isinstance(folders, list | tuple) else [folders])]
    for path in paths:
        if not path.is_dir():
            raise RunbookError(f"{path}: no such folder (give a run or fleet folder)")
    if len(paths) == 1 and is_fleet(paths[0]):
        facts, runs = from_fleet_json(paths[0])
        return write_fleet(paths[0], facts, runs, notebooks=bool(notebooks))
    if len(paths) == 1 and out is None:
        return write_run(paths[0], notebooks=notebooks is not False)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(out) if out else unused_folder(paths[0].resolve().parent / f"{stamp}-report")
    out.mkdir(parents=True, exist_ok=True)
    facts, runs = from_runs(paths, out)
    return write_fleet(out, facts, runs, notebooks=bool(notebooks))


def write_run(run_dir: Path, facts: dict | None = None, *, notebooks: bool = True) -> Path:
    """One run's report, its stage notebooks rendered beside it (with `notebooks=False`
    only those already rendered are linked: the others link to the notebook itself)."""
    run_dir = Path(run_dir)
    facts = facts or read_run(run_dir)
    from runbook.report import notebooks as pages  # nbconvert itself only when rendering

    if notebooks:
        pages.render_stages(run_dir, facts["stages"])
    else:
        for stage in facts["stages"]:
            if stage.get("notebook") and pages.page_is_current(run_dir / stage["notebook"]):
                stage["notebook_html"] = Path(stage["notebook"]).with_suffix(".html").name
    lanes = by_stage(facts["commands"])
    svg = timeline.draw(lanes, label=f"timeline of {facts['folder']}")
    _save(run_dir / REPORT_HTML, render.page("run.html.j2", r=facts, safe_timeline=svg))
    _save(run_dir / REPORT_JSON, _json(facts))
    return run_dir


def write_fleet(out: Path, facts: dict, runs: dict[str, dict], *,
                notebooks: bool = False) -> Path:
    """A fleet's report: the matrix, a timeline lane per host, a link to each host's own
    report (written first where it is missing or older than the host's record)."""
    for row in facts["hosts"]:
        run = runs.get(row["name"])
        if run is None:
            continue
        run_dir = run.pop("_dir")
        if stale(run_dir):
            write_run(run_dir, run, notebooks=notebooks)
        row["report"] = link(out, run_dir / REPORT_HTML)
    lanes = [(_lane_name(row), runs[row["name"]]["commands"] if row["name"] in runs else [])
             for row in facts["hosts"]]
    svg = timeline.draw(lanes, label=f"timeline of {facts['folder']}")
    _save(out / REPORT_HTML, render.page("fleet.html.j2", f=facts, safe_timeline=svg))
    _save(out / REPORT_JSON, _json(facts))
    return out


def by_stage(commands: list[dict]) -> list[tuple[str, list[dict]]]:
    """The run's commands, a lane per stage in the order the stages ran."""
    lanes: dict[str, list[dict]] = {}
    for command in commands:
        lanes.setdefault(command.get("stage") or "(no stage)", []).append(command)
    return list(lanes.items())


def stale(run_dir: Path) -> bool:
    """True when the run's report is missing or older than its record."""
    try:
        made = (run_dir / REPORT_HTML).stat().st_mtime
    except FileNotFoundError:
        return True
    records = [run_dir / name for name in ("run.json", "audit.jsonl")]
    return any(p.exists() and p.stat().st_mtime > made for p in records)


def _lane_name(row: dict) -> str:
    return row["name"] if row["status"] in ("ok", "failed") else f"{row['name']} ({row['status']})"


def _json(facts: dict) -> str:
    return json.dumps(facts, indent=1, ensure_ascii=False, default=str) + "\n"


def _save(path: Path, text: str) -> None:
    """Atomically: a reader never sees half a report."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
