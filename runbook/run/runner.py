"""`runbook run`: execute stage notebooks with papermill into one run folder.

The recipe: load and validate the params (a bad file creates nothing), pick the stages,
have the run's kernel connect and take the target's lock, execute each stage notebook into
`runs/<UTC timestamp>-<host>/NN-stage.ipynb`, record per-stage results in run.json, and stop
at the first failure saying which stage, cell and command failed.

All stages share one kernel (and so one SSH connection, which also holds the lock): a
kernel start costs about a second, more than a whole re-run of a stage (see kernel.py).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import papermill
from nbclient.exceptions import DeadKernelError
from papermill.exceptions import PapermillExecutionError

from runbook import params as params_model
from runbook import signing
from runbook.audit import read_run_json, update_run_json
from runbook.errors import RunbookError, verdict_of
from runbook.run import engine
from runbook.run import kernel as run_kernel
from runbook.run import manifest as stage_manifest
from runbook.run.interrupt import FirstInterruptToKernel, Interrupted, StopAtOnce
from runbook.run.stage import PROJECT, run_name, unused_folder

CELL_TIMEOUT = 1800  # s; remote commands carry their own, shorter timeouts
TOOLS = ("mail-runbook", "papermill", "asyncssh", "ipykernel", "pydantic", "nbclient")


class StageFailed(RunbookError):
    pass


class Stopped(RunbookError):
    """The gate refused the next stage (a fleet run was interrupted or stopped)."""


@dataclass
class Progress:
    """Terminal progress lines: one per stage."""

    total: int
    echo: callable = print

    def start(self, index: int, name: str) -> None:
        self.echo(f"[{index}/{self.total}] {name} …", flush=True)

    def done(self, index: int, name: str, status: str, seconds: float, counts: dict) -> None:
        detail = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no operations"
        self.echo(f"[{index}/{self.total}] {name}: {status} in {seconds:.1f} s ({detail})",
                  flush=True)


def run(
    params_file: str | Path,
    *,
    stages: list[str] | None = None,
    start: str | None = None,
    dry_run: bool = False,
    run_dir: Path | None = None,
    runs_root: Path = PROJECT / "runs",
    echo=print,
    sign_key: Path | None = None,
    anchor: Path | None = None,
    params: params_model.Params | None = None,
    progress: Progress | None = None,
    gate=None,
    kernel: run_kernel.Kernel | None = None,
) -> Path:
    """Execute the stages for one host; returns the run folder. Raises StageFailed.

    With `sign_key` the run's head is signed at the end, with `anchor` appended to that
    file (see signing.py), whether the stages succeeded or not. `params`, when given, are
    the already validated parameters `params_file` stands for (one host of an inventory).
    `gate(stage_name)`, when given, is asked before each stage and raises Stopped to end the
    run there (a fleet's Ctrl-C, or its linear strategy waiting for the other hosts).
    `kernel`: one already started (`runbook run` starts it first, to boot while the rest
    loads), else one is started here; stopped when the run ends."""
    params = params or params_model.load(params_file)
    selected = stage_manifest.select(stages, start)
    if sign_key:
        signing.check_key(sign_key)  # a key that cannot sign is refused before any change
    host = params.target.host
    if start and run_dir is None:
        run_dir = latest_run(runs_root, host)
    run_dir = run_dir or unused_folder(runs_root / run_name(host))
    progress = progress or Progress(len(selected), echo)
    if gate and selected:
        # Asked before anything opens: a fleet stopped before this host's first stage leaves
        # no connection and no run folder (as an unreachable host), never an empty record.
        try:
            gate(selected[0].name)
        except BaseException:
            if kernel is not None:
                kernel.stop()
            raise
    began = False
    try:
        # The lock first: an unreachable host or a refused key leaves no run folder.
        with _opened(kernel, params.target, run_dir.name) as opened:
            run_dir.mkdir(parents=True, exist_ok=True)
            _record_run_start(run_dir, params_file, params, dry_run, selected)
            began = True
            _recover(opened, params.target, run_dir, dry_run, echo)
            parameters = params_model.as_parameters(params) | {
                "mode": "batch", "run_dir": str(run_dir), "dry_run": dry_run,
            }
            state = "failed"
            try:
                for index, stage in enumerate(selected, 1):
                    if gate and index > 1:
                        gate(stage.name)
                    _run_stage(stage, index, run_dir, parameters, opened.km, progress)
                state = "ok"
            except KeyboardInterrupt:  # Interrupted (the stage undone first) or a second Ctrl-C
                state = "interrupted"
                raise
            finally:
                update_run_json(run_dir, end=_now(), state=state)
                _seal(run_dir, sign_key, anchor, state != "ok", echo)
    finally:
        if began:  # after a failure too: that is when the report is read most
            write_report(run_dir, echo)
    return run_dir


def preload() -> None:
    """Build now what each run would build for itself in this process: nbformat's notebook
    validators (compiled once a process, about 0.1 s) and the report's templates. The
    fleet's fork server calls it once, and every host's process forked from it starts with
    them (fleet/child.py)."""
    import nbformat

    from runbook.report import render  # above run/ (as in write_report): loaded on purpose

    nbformat.read(stage_manifest.select()[0].notebook, as_version=4)  # its validator
    nbformat.v4.new_output("stream", name="stdout", text="")  # the outputs' validator
    render.preload()


def write_report(run_dir: Path, echo=print) -> None:
    """report.html and report.json beside the record (after sealing: they show the verified
    record). The report page only: the stage pages (nbconvert) would add about half a second
    to every run, so `runbook report RUN` makes them when someone wants them. A report that
    cannot be made is said, never raised: the run's own result (and its exception) stands."""
    try:
        # report/ sits above run/ (it reads what runs leave): imported here, at the end
        from runbook import report

        report.write(run_dir, notebooks=False)
    except Exception as e:
        echo(f"the run report was not written: {type(e).__name__}: {e}", flush=True)
    else:
        echo(f"report: {run_dir / report.REPORT_HTML}", flush=True)


@contextlib.contextmanager
def _opened(kernel, target_params, owner: str):
    """The run's kernel (this one, or one started now), connected to the target and holding
    its lock on that connection, the one every stage uses; the lock is released saying
    how the run ended."""
    with kernel or run_kernel.Kernel() as started:
        started.open_run(target_params, owner)
        kind = None
        try:
            yield started
        except BaseException as e:
            kind = type(e)
            raise
        finally:
            if kind is not StopAtOnce:  # the kernel, busy undoing, would not answer
                started.close_run(target_params, verdict_of(kind))


def _recover(opened, target_params, run_dir: Path, dry_run: bool, echo) -> None:
    """Before the first stage: what a run cut short left on the host is said, and its stray
    temp files removed (in the kernel, on the run's connection: kernel.recover_run)."""
    if said := opened.recover_run(target_params, run_dir, dry_run):
        echo(said, flush=True)


def _seal(run_dir, sign_key, anchor, failed: bool, echo) -> None:
    """Sign and anchor the record; after a failure a sealing error is only reported, so
    the stage's own error stays the one raised."""
    try:
        signing.seal(run_dir, sign_key, anchor)
    except RunbookError as e:
        if not failed:
            raise
        echo(f"runbook: the record could not be sealed: {e}", flush=True)


def _run_stage(stage, index, run_dir, parameters, km, progress) -> None:
    output = run_dir / f"{stage.name}.ipynb"
    progress.start(index, stage.name)
    began = time.monotonic()
    with FirstInterruptToKernel(km, stage.name, progress.echo) as interrupts:
        failure = _execute(stage, output, parameters, km)
    seconds = round(time.monotonic() - began, 3)
    counts = operation_counts(run_dir).get(stage.name, Counter())
    status = "interrupted" if interrupts.asked else "failed" if failure else "ok"
    _record_stage(run_dir, stage.name, status, seconds, counts, output)
    progress.done(index, stage.name, status, seconds, _counts(counts))
    if interrupts.asked:
        undone = "its edited files were restored (see the record)" if failure else \
            "it had finished"
        raise Interrupted(f"interrupted during stage {stage.name}; {undone}")
    if isinstance(failure, DeadKernelError | run_kernel.KernelDied):
        raise StageFailed(f"stage {stage.name}: the notebook kernel died ({failure}); what "
                          "it was doing on the host was cut off — `runbook status` shows "
                          "what it left, the next run completes it") from None
    if failure:
        raise StageFailed(_failure_message(stage.name, failure, output)) from None


def _execute(stage, output, parameters, km) -> Exception | None:
    """Execute one stage notebook; the error that stopped it, or None."""
    try:
        papermill.execute_notebook(
            str(stage.notebook), str(output), parameters=parameters, km=km,
            engine_name=engine.NAME, shared_kc=km.shared_kc,
            kernel_name=km.kernel_name, progress_bar=False, log_output=True,
            cwd=str(PROJECT), execution_timeout=CELL_TIMEOUT,
            # saved once at the end (and on failure), not after every cell: a save per cell
            # costs more than a re-run's remote commands; audit.jsonl is the live record
            request_save_on_cell_execute=False,
        )
    except (PapermillExecutionError, DeadKernelError, run_kernel.KernelDied) as e:
        return e
    return None


def operation_counts(run_dir: Path) -> dict[str, Counter]:
    """Per stage, the ok/changed/failed/skipped operation records of its latest attempt."""
    counts: dict[str, Counter] = {}
    path = run_dir / "audit.jsonl"
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        record = json.loads(line)
        name = record.get("stage")
        if record.get("type") == "stage" and record.get("event") == "start":
            counts[name] = Counter()  # a resumed stage counts only its last attempt
        elif record.get("type") == "operation":
            counts.setdefault(name, Counter())[record.get("status")] += 1
    return counts


def latest_run(runs_root: Path, host: str) -> Path:
    """The most recent run folder for this host (what `--from` resumes)."""
    candidates = sorted(p for p in runs_root.glob(f"*-{host}") if (p / "run.json").exists())
    if not candidates:
        raise RunbookError(
            f"--from resumes a run, but {runs_root} holds no run for {host}; "
            "start a new run without --from"
        )
    return candidates[-1]


def _counts(counter: Counter) -> dict:
    return {key: counter.get(key, 0) for key in ("ok", "changed", "failed", "skipped")}


def _record_run_start(run_dir, params_file, params, dry_run, selected) -> None:
    existing = read_run_json(run_dir)
    digest = hashlib.sha256(
        json.dumps(params_model.as_parameters(params), sort_keys=True).encode()
    ).hexdigest()
    attempts = [*existing.get("attempts", []), {
        "start": _now(), "dry_run": dry_run, "stages": [stage.name for stage in selected],
        "operator": _operator()}]
    update_run_json(
        run_dir,
        id=existing.get("id", run_dir.name),
        host=params.target.host,
        params_file=str(params_file),
        params_sha256=digest,
        git_commit=_git_commit(),
        tools=_tool_versions(),
        operator=_operator(),
        start=existing.get("start", _now()),
        end=None,
        state="running",
        dry_run=dry_run,
        attempts=attempts,
        stages=existing.get("stages", {}),
    )


def _record_stage(run_dir, name, status, seconds, counts, output) -> None:
    stages = read_run_json(run_dir).get("stages", {})
    stages[name] = {"status": status, "duration": seconds, "notebook": output.name,
                    **_counts(counts)}
    update_run_json(run_dir, stages=stages)


def _failure_message(stage: str, error: PapermillExecutionError, output: Path) -> str:
    source = (error.source or "").strip().splitlines()
    where = f"cell {error.exec_count or error.cell_index}"
    if source:
        where += f" ({source[-1].strip()[:80]})"
    return (f"stage {stage} failed in {where}:\n  {error.ename}: {error.evalue}\n"
            f"the executed notebook with the error: {output}")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _operator() -> str | None:
    """Who ran it: the local user (and whom sudo was run by)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        return None
    via = os.environ.get("SUDO_USER")
    return f"{user} (sudo by {via})" if via and via != user else user


def _tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def quiet_papermill_logging(echo=print) -> None:
    """papermill's --log-output goes through logging: print cell output as plain lines."""

    class Echo(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if not message.startswith(("Executing", "Ending Cell", "Input Notebook",
                                       "Output Notebook", "Working directory", "Black is not")):
                echo(message.rstrip("\n"), flush=True)

    logger = logging.getLogger("papermill")
    logger.handlers[:] = [Echo()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
