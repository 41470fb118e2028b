"""Operations: compare what the facts show with what is wanted, and change only the difference.

An operation is an async function of the stage decorated with `@operation(name)`. It reads
its facts and returns either a `Plan` (the commands to run and the files to write, with
their new content) or an `Outcome` (a check or probe that changes nothing). The decorator
does the rest, the same way for every operation:

- an empty plan is `ok`; a dry run shows the plan (every command, a diff of every file)
  and is `skipped`; interactively the operator approves it first (`interactive.approve`:
  Approve / Skip buttons, never in batch mode); then it is applied and is `changed`;
- files are written through `files.write_file` (atomic, old content backed up in the run's
  backup directory on the target, the first-ever original kept as the baseline);
- every outcome goes into `stage.results` and the audit as an `operation` record;
- without a connection (`runbook plan`, a stage with `offline` set) nothing is applied: the
  plan is recorded, and its Writes and its commands' declared `effect`s change the
  imagined `stage.fresh` host, so the next operation plans against the host as this one
  left it; checks (operations given `offline=`) only say what they would look at;
- when anything fails, every file this stage edited is restored from the backup, the
  `after_restore` hooks run (an alias database rebuilt, Postfix reloaded onto the restored
  files), the failure and the restore are recorded, and the error is raised again so the
  notebook stops at the failing cell with the command and its output in view.

The pure text transforms (a key in main.cf, in a shell-style file, an alias entry, a
crontab line commented out) are in `edits.py`: plain functions of text, tested without SSH.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runbook.errors import RunbookError
from runbook.ops import facts
from runbook.ops.edits import unified_diff
from runbook.remote import files

STATUSES = ("ok", "changed", "failed", "skipped")


class OperationFailed(RunbookError):
    """An operation found the host in a state it must not continue from; the message says
    what was found and what to do."""


class NeedsHost(RunbookError):
    """Raised by a stage made without a connection (`runbook plan`) when something would
    have to reach the host: `what` names the command or connection."""

    def __init__(self, what: str):
        super().__init__(f"needs the host: {what}")
        self.what = what


# --- plans ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """A command a plan runs (as root, through the session's single `run()`)."""

    command: str
    why: str = ""
    input: str | None = None
    timeout: float | None = None
    # What the command does to a fresh host, for plans made without connecting: a function
    # changing the `facts.FreshHost` (files it writes, services it starts).
    effect: Callable[[Any], None] | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        why = f"    # {self.why}" if self.why else ""
        fed = "  (with input)" if self.input is not None else ""
        return f"$ {self.command}{fed}{why}"


@dataclass(frozen=True)
class Keep:
    """A file a plan's commands rewrite themselves (rcctl edits rc.conf.local): its content is
    kept in the run's backups and the baseline first, exactly as a Write would keep it, so a
    failure or a rollback can put it back byte for byte."""

    path: str
    why: str = ""

    def describe(self) -> str:
        return f"keep a copy of {self.path}" + (f"    # {self.why}" if self.why else "")

    def diff(self) -> str:
        """Shown where a Write's diff would be: the file itself does not change here."""
        return "(unchanged: a copy is kept in the run's backups and the baseline)\n"


@dataclass(frozen=True)
class Write:
    """A file a plan writes whole: its old content (None: it does not exist) and the new."""

    path: str
    old: str | None
    new: str
    why: str = ""
    mode: int | None = None
    owner: str | None = None

    def diff(self) -> str:
        return unified_diff(self.old, self.new, self.path)

    def describe(self) -> str:
        head = f"edit {self.path}" + (f"    # {self.why}" if self.why else "")
        return head + "\n" + self.diff()


@dataclass
class Plan:
    """What an operation would change: steps in order, and cleanups that always run after."""

    name: str
    steps: list[Run | Write | Keep] = field(default_factory=list)
    cleanup: list[Run] = field(default_factory=list)
    undo: list[Run] = field(default_factory=list)  # what reverses the commands if the stage fails
    found: str = ""  # what the facts showed, said whether or not anything changes
    skip: str = ""  # set when the operation does not apply here (the reason)

    @property
    def empty(self) -> bool:
        return not self.steps

    def describe(self) -> str:
        if self.skip:
            return f"{self.name}: not applicable — {self.skip}"
        if self.empty:
            return f"{self.name}: nothing to change" + (f" ({self.found})" if self.found else "")
        lines = [f"{self.name}:" + (f" {self.found}" if self.found else "")]
        lines += [step.describe() for step in self.steps]
        lines += [f"{step.describe()}    (always, also after a failure)" for step in self.cleanup]
        return "\n".join(lines)

    @property
    def commands(self) -> list[str]:
        return [s.command for s in self.steps if isinstance(s, Run)] + [
            s.command for s in self.cleanup]

    @property
    def writes(self) -> list[Write]:
        return [s for s in self.steps if isinstance(s, Write)]


@dataclass
class Outcome:
    """What an operation did or found, shown as the cell's result."""

    name: str
    status: str
    detail: str = ""
    evidence: str = ""  # what the cell shows as proof: a diff, a transcript, log lines
    plan: Plan | None = None
    value: Any = None  # what a check found, for the cells and tests that follow
    duration: float = 0.0
    would: list[str] = field(default_factory=list)  # a dry run's check: what differs (drift)

    def report(self) -> str:
        head = f"[{self.status}] {self.name}" + (f" — {self.detail}" if self.detail else "")
        return head + ("\n" + self.evidence if self.evidence else "")

    def _ipython_display_(self) -> None:
        # The cell result is the evidence only: the audit record above it already shows
        # the status line, and showing it twice doubles every line of a batch run's log.
        if self.evidence:
            print(self.evidence)


# --- applying ------------------------------------------------------------------------------

async def apply(stage, plan: Plan) -> str:
    """Carry out a plan (or only show it): returns ok, changed or skipped."""
    if plan.skip:
        return "skipped"
    if plan.empty:
        return "ok"
    if stage.dry_run:
        print("dry run, nothing changed — would do:\n" + plan.describe())
        return "skipped"
    if stage.interactive and not await _approved(stage, plan):
        return "skipped"
    failed = False
    try:
        for step in plan.steps:
            if isinstance(step, Write):
                edited(stage).append(step.path)
                await files.write_file(
                    stage.target, step.path, step.new.encode("utf-8", "surrogateescape"),
                    run_id=stage.run_id,
                    mode=step.mode, owner=step.owner, audit=stage.audit)
            elif isinstance(step, Keep):
                edited(stage).append(step.path)
                await keep_file(stage, step.path)
            else:
                await stage.run(step.command, input=step.input, timeout=step.timeout)
    except BaseException:
        failed = True
        raise
    finally:
        facts.forget(stage)
        reversals(stage).extend(plan.undo)
        await _cleanup(stage, plan, failed)
    return "changed"


async def _cleanup(stage, plan: Plan, failed: bool) -> None:
    for step in plan.cleanup:
        try:
            await stage.run(step.command, input=step.input, timeout=step.timeout)
        except Exception as error:
            if not failed:
                raise
            # The first error is the one to show; this one is kept in the record.
            stage.audit.record("note", text=f"cleanup after the failure also failed: {error}")


async def _approved(stage, plan: Plan) -> bool:
    """Interactive mode: show the plan with Approve / Skip and wait for the click (the
    decision is recorded by `interactive.approval.approve`)."""
    from runbook.interactive import approval  # widgets: only ever loaded in interactive mode

    return await approval.approve(stage, plan)


def edited(stage) -> list[str]:
    """Paths this stage has written (each restored if the stage fails)."""
    return facts.scratch(stage).setdefault("edited", [])


async def keep_file(stage, path: str) -> None:
    """Back up `path` for this run and as the baseline, unchanged (see files.keep_file)."""
    await files.keep_file(stage.target, path, run_id=stage.run_id, audit=stage.audit)


def reversals(stage) -> list[Run]:
    """Commands that reverse what this stage's plans ran (run in reverse if it fails)."""
    return facts.scratch(stage).setdefault("undo", [])


# Called after files were restored, with the stage and the restored paths; each returns the
# commands that bring derived state back in line (a rebuilt map, a reloaded daemon).
AfterRestore = Callable[[Any, list[str]], Awaitable[list[Run]] | list[Run]]
_after_restore: list[AfterRestore] = []


def after_restore(hook: AfterRestore) -> AfterRestore:
    """Register a hook that runs after a failed stage's files were restored."""
    _after_restore.append(hook)
    return hook


async def undo(stage, *, whole_run: bool = False) -> tuple[list[str], list[str]]:
    """Restore the files this stage edited (or, `whole_run`, every file this run edited)
    from the run's backups on the target, run the after-restore hooks, then reverse the
    commands this stage ran (its plans' `undo`, last first).

    Returns the restored paths and the follow-up commands that failed (each is tried)."""
    backed_up = set(await files.backed_up_paths(stage.target, stage.run_id))
    if whole_run:
        paths = sorted(backed_up)
        if paths:
            await files.restore_run(stage.target, stage.run_id, audit=stage.audit)
    else:
        paths = [p for p in dict.fromkeys(edited(stage)) if p in backed_up]
        for path in reversed(paths):
            await files.restore_file(stage.target, path, run_id=stage.run_id, audit=stage.audit)
    facts.forget(stage)
    commands: list[Run] = []
    for hook in _after_restore:
        found = hook(stage, paths)
        commands += (await found) if isinstance(found, Awaitable) else (found or [])
    commands += reversed(reversals(stage))
    problems = []
    for step in commands:
        try:
            await stage.run(step.command, input=step.input, timeout=step.timeout)
        except Exception as error:
            problems.append(f"{step.command}: {error}")
    edited(stage).clear()
    reversals(stage).clear()
    return paths, problems


def record(stage, outcome: Outcome, **extra) -> None:
    """Put an outcome into stage.results and the audit."""
    stage.results.append({"name": outcome.name, "status": outcome.status,
                          "duration": round(outcome.duration, 3), "detail": outcome.detail})
    fields = {"detail": outcome.detail, "duration": round(outcome.duration, 3)} | extra
    if outcome.plan is not None and outcome.plan.steps:
        fields["commands"] = outcome.plan.commands
        fields["files"] = [w.path for w in outcome.plan.writes]
        if outcome.status == "skipped" and not outcome.plan.skip:
            # what a dry run (or a Skip click) left undone: `runbook check` lists it as drift
            fields["would"] = [step.describe().splitlines()[0] for step in outcome.plan.steps]
    if outcome.would:
        fields["would"] = outcome.would
    stage.audit.record("operation", name=outcome.name, status=outcome.status, **fields)


def operation(name: str, *, undo_run_on_failure: bool = False,
              offline: Callable[..., list[str]] | None = None):
    """Make an async `fn(stage, ...) -> Plan | Outcome` a recorded, reversible operation.

    `offline(stage, ...)` is given for checks: the lines a plan made without connecting
    shows for them (the commands they run, what they expect) instead of running them."""

    def decorate(fn: Callable[..., Awaitable[Plan | Outcome]]):
        @functools.wraps(fn)
        async def run(stage, *args, **kwargs) -> Outcome:
            if getattr(stage, "offline", False):
                return await _plan_offline(stage, name, fn, offline, args, kwargs)
            progress = getattr(stage, "progress", None)  # a live line per step, interactively
            async with progress.step(name) if progress else contextlib.nullcontext():
                started = time.monotonic()
                try:
                    result = await fn(stage, *args, **kwargs)
                    if isinstance(result, Plan):
                        status = await apply(stage, result)
                        detail = result.skip or ("dry run: would change" if status == "skipped"
                                                 and stage.dry_run else result.found)
                        result = Outcome(name, status, detail, plan=result)
                except BaseException as error:
                    await _failed(stage, name, error, started, undo_run_on_failure)
                    raise
                result.name = result.name or name
                result.duration = time.monotonic() - started
                record(stage, result)
                return result

        run.operation_name = name
        return run

    return decorate


def platform_step(name: str, method: str, **options):
    """An operation that is wholly the platform's: a guide step whose commands differ per
    system, planned by `stage.platform.<method>(stage)` (see runbook/platforms/)."""

    async def step(stage) -> Plan:
        return await getattr(stage.platform, method)(stage)

    step.__name__ = step.__qualname__ = method
    step.__doc__ = f"{name}: planned by the platform profile's `{method}`."
    return operation(name, **options)(step)


# --- plans made without connecting -----------------------------------------------------------

@dataclass
class Planned:
    """One operation of a plan made without connecting: its plan (or, for a check, what it
    looks at), and for each step the files it changes on the imagined fresh host."""

    name: str
    plan: Plan | None = None
    check: list[str] = field(default_factory=list)
    changes: list[list[tuple[str, str | None, str | None]]] = field(default_factory=list)

    @property
    def is_check(self) -> bool:
        return self.plan is None


def planned(stage) -> list[Planned]:
    """The operations planned so far in this (offline) stage, in order."""
    return facts.scratch(stage).setdefault("planned", [])


async def _plan_offline(stage, name, fn, describe, args, kwargs) -> Outcome:
    if describe is not None:
        entry = Planned(name, check=list(describe(stage, *args, **kwargs)))
        planned(stage).append(entry)
        return Outcome(name, "ok", "check", evidence="\n".join(entry.check))
    try:
        result = await fn(stage, *args, **kwargs)
    except NeedsHost as e:  # a check without a description: show what it would run
        planned(stage).append(Planned(name, check=[e.what if e.what.startswith("#")
                                                   else f"$ {e.what}"]))
        return Outcome(name, "ok", "check")
    if not isinstance(result, Plan):  # a check that needs no description
        planned(stage).append(Planned(name, check=[result.detail] if result.detail else []))
        return result
    entry = Planned(name, plan=result)
    if not result.skip:
        entry.changes = simulate(stage.fresh, result.steps + result.cleanup)
        facts.forget(stage)  # what the next operation reads is the host as this one left it
    planned(stage).append(entry)
    status = "skipped" if result.skip else ("ok" if result.empty else "changed")
    return Outcome(name, status, result.skip or result.found, plan=result)


def simulate(host, steps) -> list[list[tuple[str, str | None, str | None]]]:
    """Apply plan steps to a `facts.FreshHost`; per step, the (path, before, after) of each
    file whose content it changed (before/after None: absent)."""
    changes = []
    for step in steps:
        before = dict(host.files)
        if isinstance(step, Write):
            host.write(step.path, step.new)
        elif isinstance(step, Run) and step.effect is not None:
            step.effect(host)
        paths = sorted(set(before) | set(host.files))
        changes.append([(p, before.get(p), host.files.get(p)) for p in paths
                        if before.get(p) != host.files.get(p)])
    return changes


async def _failed(stage, name: str, error: BaseException, started: float, whole_run: bool):
    reason = str(error) or type(error).__name__
    try:
        restored, problems = await undo(stage, whole_run=whole_run)
        restore_note = (f"restored {', '.join(restored)} from the run's backups"
                        if restored else "no file had been changed")
        if problems:
            restore_note += "; but these follow-ups failed: " + "; ".join(problems)
    except Exception as undo_error:  # keep the first error; say the restore failed too
        restored = []
        restore_note = f"RESTORE FAILED: {undo_error}"
    outcome = Outcome(name, "failed", reason, duration=time.monotonic() - started)
    record(stage, outcome, restored=restored, restore=restore_note)
    print(f"{name} failed: {reason}\n{restore_note}")
