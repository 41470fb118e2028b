"""What the first and last cells of every stage notebook do.

`begin()` validates the parameters, opens the run's audit record and connects (reusing the
kernel's open connection when the runner executes several stages in one kernel). `Stage`
carries what every operation needs; `end()` closes the stage with its summary.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from runbook import params as params_model
from runbook.audit import Audit, read_run_json, update_run_json
from runbook.errors import RunbookError

if TYPE_CHECKING:  # the runner imports this module for run_name and PROJECT: no SSH there
    from runbook.remote.target import Target

PROJECT = Path(__file__).resolve().parents[2]
MODES = ("batch", "interactive")

# One open connection per target for the life of the kernel: the runner executes all
# stages in one kernel, and a reconnect per stage would cost more than a whole re-run.
_connections: dict[tuple, Target] = {}
_unrecorded: set[tuple] = set()  # connections not yet in an audit record (opened without)
# The run's lock, held on that connection (kernel.open_run): owner and remote/lock.Held.
_locks: dict[tuple, tuple[str, Any]] = {}


@dataclass
class Stage:
    name: str
    params: params_model.Params
    target: Target
    audit: Audit
    run_dir: Path
    mode: Literal["batch", "interactive"] = "batch"
    dry_run: bool = False
    platform: Any = None  # a platforms.Profile, set by begin()
    started: float = field(default_factory=time.monotonic)
    results: list[dict] = field(default_factory=list)
    scratch: dict = field(default_factory=dict)  # per-stage state of the operations layer
    progress: Any = None  # interactive.Progress in interactive mode: a live line per step

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @property
    def interactive(self) -> bool:
        return self.mode == "interactive"

    async def run(self, command: str, **kwargs):
        """Run a command on the target (shorthand for stage.target.run)."""
        return await self.target.run(command, **kwargs)


def run_name(host: str) -> str:
    """`<UTC timestamp>-<host>`: the name of a new run folder."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{re.sub(r'[^A-Za-z0-9.:-]', '_', host)}"


def unused_folder(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`, …: two runs started in the same second get distinct
    folders."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def validate(**sections: Any) -> params_model.Params:
    """Validate the notebook's parameters with the model; refuses before any connection."""
    return params_model.validate("notebook parameters", **sections)


async def begin(
    name: str,
    params: params_model.Params,
    *,
    mode: str = "batch",
    run_dir: str | Path = "",
    dry_run: bool = False,
) -> Stage:
    """Open the audit record, connect to the target and identify its platform."""
    if mode not in MODES:
        raise RunbookError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    run_dir = Path(run_dir) if run_dir else PROJECT / "runs" / run_name(params.target.host)
    run_dir.mkdir(parents=True, exist_ok=True)
    _keep_loop_awake()
    audit = Audit(run_dir, stage=name)
    audit.record("stage", event="start", host=params.target.host, mode=mode, dry_run=dry_run)
    target = await connect(params.target, audit, name)
    stage = Stage(name, params, target, audit, run_dir, mode, bool(dry_run))
    if stage.interactive:
        from runbook.interactive.approval import Progress  # widgets stay out of batch runs
        from runbook.run.manifest import find

        stage.progress = Progress(stage, find(name).step_count)
    from runbook.platforms import detect  # platforms builds on stage's types

    stage.platform = await detect(stage)
    _note_target(run_dir, target, stage.platform)
    return stage


_ticker: asyncio.Task | None = None


def _keep_loop_awake() -> None:
    """A task waking the kernel's event loop every 0.2 s, once per kernel: an interrupt
    (Ctrl-C, the runner's interrupt_kernel) makes ipykernel cancel the running cell, but an
    event loop idle in a long wait — a command with no output — would only notice at its
    next wakeup, after the command's timeout. Cancelled, an operation undoes its changes."""
    global _ticker
    if _ticker is None or _ticker.done():
        async def tick():
            while True:
                await asyncio.sleep(0.2)

        _ticker = asyncio.get_running_loop().create_task(tick())


def _note_target(run_dir: Path, target: Target, profile) -> None:
    """The host key seen and the platform profile used, in run.json (the report's header);
    written when they differ from what it says, so once a run."""
    seen = {"host_key": target.fingerprint,
            "platform": {"name": profile.name, "release": profile.release}}
    if any(read_run_json(run_dir).get(key) != value for key, value in seen.items()):
        update_run_json(run_dir, **seen)


def key(target_params) -> tuple:
    """What tells one target's connection from another's in `_connections`."""
    return (target_params.model_dump_json(),)  # every way of reaching it (jumps, ssh_config…)


async def connect(target_params, audit: Audit | None, stage_name: str | None) -> Target:
    """The kernel's open connection to the target (opened if there is none), recording into
    `audit` for `stage_name` from now on."""
    from runbook.remote.target import Target

    target = _connections.get(key(target_params))
    if target is None or target.conn.is_closed():
        target = await Target.connect(target_params, audit, stage=stage_name)
        _connections[key(target_params)] = target
        if audit is None:  # opened for the run's lock: the first stage's record says where
            _unrecorded.add(key(target_params))
        if key(target_params) in _locks:
            # The lock went with the closed connection (its shell wrote `end lost`): no
            # stage goes on unlocked; taken again, or TargetBusy if another run has it now.
            await _take_lock(target, _locks[key(target_params)][0], again=True)
    else:
        target.audit, target.stage = audit, stage_name
        if audit is not None and key(target_params) in _unrecorded:
            _unrecorded.discard(key(target_params))
            target.record_connection(audit, stage_name)
    return target


async def hold_lock(target_params, owner: str) -> None:
    """Take the target's lock on the run's connection, for as long as the run lasts."""
    await _take_lock(await connect(target_params, None, None), owner)


async def _take_lock(target: Target, owner: str, *, again: bool = False) -> None:
    from runbook.remote import lock

    _locks.pop(key(target.params), None)  # a lock not taken (again) is not held
    _locks[key(target.params)] = (owner, await lock.hold(target, owner, again=again))


async def release_lock(target_params, verdict: str) -> None:
    """The run is over: its verdict to the host's journal, the lock released (the connection
    stays open for the kernel's life)."""
    from runbook.remote import lock

    held = _locks.pop(key(target_params), None)
    if held is not None:
        await lock.release(held[1], verdict)


def end(stage: Stage) -> None:
    """Close the stage: record its end with the operation counts, show the summary."""
    counts = {"ok": 0, "changed": 0, "failed": 0, "skipped": 0}
    for result in stage.results:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    duration = round(time.monotonic() - stage.started, 3)
    status = "failed" if counts["failed"] else "ok"
    stage.audit.record("stage", event="end", status=status, duration=duration, counts=counts)
    from runbook.interactive.approval import (
        show_summary,  # widgets stay out of the stage's import path
    )

    show_summary(stage)
