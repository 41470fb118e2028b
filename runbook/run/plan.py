"""`runbook plan PARAMS`: the whole run for a fresh host of that platform, without connecting.

The plan is not a list kept beside the runbook: it is the runbook. Each stage notebook's code
cells run here as they run on a host, in order, but `begin()` hands them an `OfflineStage`:

- every fact reads its value on a fresh host (`Fact.fresh`), from a `facts.FreshHost` built
  from the platform's stock files (runbook/stock/<platform>/, see its README);
- every operation computes its plan from those facts exactly as on a host, and the plan is
  recorded instead of applied; its file writes and its commands' declared effects change the
  imagined host, so the next step plans against the host as the previous one left it
  (the configure stage sees the main.cf the install stage's package left);
- checks say what they would run and expect; anything else that would need the host stops
  its stage's plan there, saying what it would have asked.

`render()` prints it stage by stage: each command, each file edit as a unified diff against
the fresh host's file, and what each check looks at.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook import params as params_model
from runbook import platforms
from runbook.errors import RunbookError
from runbook.ops import facts
from runbook.ops.operations import Keep, NeedsHost, Planned, Run, Write, planned, unified_diff
from runbook.run import manifest as stage_manifest

PLAN_RUN_ID = "plan"


class PlanError(RunbookError):
    pass


class NullAudit:
    """An audit that keeps nothing: a plan does nothing worth recording."""

    def record(self, type, /, **fields):
        return fields


class OfflineTarget:
    """Stands where the SSH session would: refuses to reach the host."""

    def __init__(self, params):
        self.host = self.address = params.target.host
        self.fingerprint = "(not connected: a plan)"
        self.audit = None

    async def run(self, command: str, **_kwargs):
        raise NeedsHost(command)

    async def open_connection(self, host: str, port: int):
        raise NeedsHost(f"# a TCP connection to {host}:{port} through the SSH session")

    async def forward_local_port(self, remote_host: str, remote_port: int):
        raise NeedsHost(f"# a port forward to {remote_host}:{remote_port}")


@dataclass
class OfflineStage:
    """What `runbook.run.stage.begin` returns while a plan is made: a Stage without a host."""

    name: str
    params: params_model.Params
    platform: platforms.Profile
    fresh: facts.FreshHost
    mode: str = "batch"
    dry_run: bool = False
    offline: bool = True
    run_dir: Path = Path(PLAN_RUN_ID)
    results: list[dict] = field(default_factory=list)
    scratch: dict = field(default_factory=dict)

    def __post_init__(self):
        self.target = OfflineTarget(self.params)
        self.audit = NullAudit()

    @property
    def run_id(self) -> str:
        return PLAN_RUN_ID

    @property
    def interactive(self) -> bool:
        return False

    async def run(self, command: str, **_kwargs):
        raise NeedsHost(command)


@dataclass
class StagePlan:
    info: stage_manifest.StageInfo
    entries: list[Planned]
    stopped: str = ""  # what the stage would have needed from the host, if it stopped early


def profile_for(params: params_model.Params) -> platforms.Profile:
    """The profile the parameters name (a plan cannot detect the platform)."""
    wanted = params.platform
    if wanted.name == "auto" or not wanted.release:
        raise PlanError("a plan is made without connecting, so the parameters must name the "
                        "platform: set platform.name and platform.release (e.g. openbsd, "
                        '"5.0")')
    return platforms.choose(wanted.name, wanted.release, wanted.name, wanted.release)


async def build(params: params_model.Params,
                stages: list[str] | None = None) -> list[StagePlan]:
    """The plan of each stage (the default run unless `stages` names others), in order, all
    against one imagined fresh host. The default stages before a chosen one are planned too
    (not returned): a stage is planned against the host as the run before it leaves it."""
    profile = profile_for(params)
    host = profile.fresh_host(params)
    chosen = stage_manifest.select(stages)
    last = max(stage_manifest.MANIFEST.index(info) for info in chosen) if chosen else -1
    plans = []
    for info in stage_manifest.MANIFEST[:last + 1]:
        if info in chosen or info.default:
            stage_plan = await _plan_stage(info, params, profile, host)
            if info in chosen:
                plans.append(stage_plan)
    return plans


def make(params: params_model.Params, stages: list[str] | None = None) -> list[StagePlan]:
    """`build` for callers without an event loop (the command line, tests)."""
    import asyncio

    return asyncio.run(build(params, stages))


async def _plan_stage(info, params, profile, host) -> StagePlan:
    notebook = json.loads(info.notebook.read_text())
    namespace: dict[str, Any] = {"__name__": f"plan_{info.short}", "mode": "batch",
                                 "run_dir": "", "dry_run": False,
                                 **params_model.as_parameters(params)}
    made: list[OfflineStage] = []

    async def begin(name, stage_params, **_kwargs):
        stage = OfflineStage(name, stage_params, profile, host)
        made.append(stage)
        return stage

    result = StagePlan(info, [])
    with _offline_begin(begin), contextlib.redirect_stdout(io.StringIO()):
        for number, cell in enumerate(notebook["cells"], 1):
            if cell["cell_type"] != "code" or "parameters" in cell["metadata"].get("tags", []):
                continue
            source = "".join(cell["source"])
            try:
                code = compile(source, f"<{info.name} cell {number}>", "exec",
                               flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                returned = eval(code, namespace)
                if returned is not None:
                    await returned
            except NeedsHost as e:
                result.stopped = e.what
                break
            except RunbookError as e:  # the stage would stop here on any host: say why
                result.stopped = f"# the stage stops here: {e}"
                break
            except Exception as e:
                raise PlanError(f"{info.name}, cell {number}: {type(e).__name__}: {e}") from e
    if made:
        result.entries = list(planned(made[0]))
    return result


@contextlib.contextmanager
def _offline_begin(begin):
    """The notebooks' `from runbook.run.stage import begin, end` get the offline versions."""
    from runbook.run import stage as stage_module

    saved = stage_module.begin, stage_module.end
    stage_module.begin, stage_module.end = begin, lambda _stage: None
    try:
        yield
    finally:
        stage_module.begin, stage_module.end = saved


# --- rendering ---------------------------------------------------------------------------------

def render(plans: list[StagePlan], params: params_model.Params, source: str = "") -> str:
    profile = profile_for(params)
    out = [
        f"# mail-runbook plan{': ' + source if source else ''}",
        f"# {profile.label} at {params.target.host} as "
        f"{params.target.user or 'the user its ssh_config gives'}"
        f"{' (' + params.target.privilege + ')' if params.target.privilege != 'none' else ''}"
        ", a fresh host: every command in order, every file edit as a diff",
        f"# against a fresh install's file: {_stock_note(profile)}",
        "# Checks change nothing; they say what they run and what they expect.",
    ]
    for stage_plan in plans:
        info = stage_plan.info
        out += ["", f"== {info.name} · {info.title} ({info.steps}) =="]
        for entry in stage_plan.entries:
            out += ["", *_entry(entry)]
        if stage_plan.stopped.startswith("#"):
            out += ["", *_indent(stage_plan.stopped.splitlines(), 0)]
        elif stage_plan.stopped:
            out += ["", "from here on the stage depends on what the host answers; it reads:",
                    *_indent(_command(stage_plan.stopped.strip("\n")), 2)]
        if not stage_plan.entries and not stage_plan.stopped:
            out += ["", "(no operations)"]
    return "\n".join(out) + "\n"


def _stock_note(profile) -> str:
    note = platforms.STOCK / profile.stock / "NOTE"
    return note.read_text().strip() if profile.stock and note.is_file() else (
        "no stock files for this release: files are shown as new")


def _entry(entry: Planned) -> list[str]:
    if entry.is_check:
        return [f"{entry.name}  [check]", *_indent(entry.check, 2)]
    plan = entry.plan
    if plan.skip:
        return [f"{entry.name}  [skipped]", f"  {plan.skip}"]
    if plan.empty:
        return [f"{entry.name}  [nothing to change]"] + ([f"  found: {plan.found}"]
                                                          if plan.found else [])
    lines = [entry.name] + ([f"  found: {plan.found}"] if plan.found else [])
    steps = plan.steps + plan.cleanup
    for index, step in enumerate(steps):
        changes = entry.changes[index] if index < len(entry.changes) else []
        always = "    (always, also after a failure)" if step in plan.cleanup else ""
        lines += _step(step, changes, always)
    for step in plan.undo:
        lines += [f"  if the stage fails later: $ {step.command}"]
    return lines


def _step(step, changes, always: str) -> list[str]:
    if isinstance(step, Write):
        head = f"  edit {step.path}" + (f"    # {step.why}" if step.why else "")
        return [head, *_indent(unified_diff(step.old, step.new, step.path).splitlines(), 4)]
    if isinstance(step, Keep):
        return ["  " + step.describe()]
    assert isinstance(step, Run)
    lines = _indent(_command(step.command, step.why), 2)
    lines[-1] += always
    if step.input is not None:
        lines += ["    with input:", *_indent(step.input.splitlines(), 6)]
    # files the command creates: listed (a package's many files), a small one shown whole
    created = [path for path, old, new in changes if old is None and new is not None]
    listed = [path for path in created if len(dict(_contents(changes))[path]) > SHOWN_LINES]
    removed = [path for path, old, new in changes if old is not None and new is None]
    if listed:
        lines.append(f"    creates {', '.join(listed)}")
    if removed:
        lines.append(f"    removes {', '.join(removed)}")
    for path, old, new in changes:
        if new is not None and path not in listed:
            lines.append(f"    {'changes' if old is not None else 'creates'} {path}:")
            lines += _indent(unified_diff(old, new, path).splitlines(), 6)
    return lines


SHOWN_LINES = 10  # a file a command creates is shown whole up to this many lines


def _contents(changes):
    return [(path, (new or "").splitlines()) for path, _old, new in changes]


def _command(command: str, why: str = "") -> list[str]:
    first, *rest = command.splitlines() or [""]
    lines = [f"$ {first}", *(f"  {line}" for line in rest)]
    if why:
        lines[-1] += f"    # {why}"
    return lines


def _indent(lines, by: int) -> list[str]:
    return [" " * by + line if line else "" for line in lines]


def main(params_file: str | Path, stages: list[str] | None = None) -> str:
    """The rendered plan of a params file (what `runbook plan` prints)."""
    params = params_model.load(params_file)
    return render(make(params, stages), params, str(params_file))

