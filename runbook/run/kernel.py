"""The one kernel of a run: started first, asked to connect and lock, stopped at once.

`Kernel()` spawns the kernel process straight away: `runbook run` creates it before it
imports papermill or reads the params file, so the second Python process boots while the
first does its own work. `Kernel.open_run` then has the kernel connect to the target and
take the target's lock on that connection, the one every stage uses: one SSH connection a
run, and the lock held before any stage can change anything. `recover_run` and
`close_run` (the journal's verdict) use the same connection.

The kernel process runs this module (`python -m runbook.run.kernel -f CONNECTION_FILE`): it
imports what the stage notebooks import before it answers (`PRELOAD`), with the garbage
collector paused meanwhile, then serves as ipykernel does. It talks over Unix sockets in a
private temp dir, not loopback TCP: nothing else on the machine can reach the kernel that
holds the SSH session.

The runner's client is a blocking one, and nbclient's watch for a dead kernel (a task that
wakes every second) never runs while the loop sits in a blocking wait for the next message:
`_watch` makes those waits check, every WATCH seconds, that the kernel process still lives,
and raise KernelDied when it is gone (SIGKILLed, out of memory) instead of waiting for ever.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import importlib
import os
import queue
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from runbook import errors

PROJECT = Path(__file__).resolve().parents[2]
# What every stage notebook's first cells import: loaded before the kernel says it is ready.
PRELOAD = ("runbook.run.stage", "runbook.platforms", "runbook.services.preflight",
           "runbook.services.postfix", "runbook.services.dovecot",
           "runbook.interactive.approval")
# IPython's input history (a sqlite file written after every cell) is for people at a
# prompt; in a run it costs 2-3 ms a cell, and the executed notebooks are the record.
KERNEL_ARGS = ("--HistoryManager.enabled=False",
               "--IPKernelApp.kernel_class=runbook.run.batch_kernel.BatchKernel")
READY_TIMEOUT = 60.0
WATCH = 0.5  # s between checks that the kernel lives, while waiting for its messages
MAX_CONNECT_TIMEOUT = 300.0  # the params model's bound (params.Target.connect_timeout)
# Errors the kernel's connection or the lock may raise, rebuilt here by class name.
CARRIED = (errors.TargetError, errors.TargetBusy)


class KernelDied(errors.RunbookError):
    """The run's kernel process ended while the runner waited for its messages."""


class _Specs(KernelSpecManager):
    """The python3 kernel spec, started through this module."""

    def get_kernel_spec(self, kernel_name):
        spec = super().get_kernel_spec(kernel_name)
        spec.argv = [sys.executable, "-m", __name__, "-f", "{connection_file}", *KERNEL_ARGS]
        return spec


class Kernel:
    """The run's kernel: `km` (with its one client as `km.shared_kc`, see engine.py)."""

    def __init__(self):
        self.sockets = tempfile.TemporaryDirectory(prefix="runbook-kernel-")
        self.km = KernelManager(kernel_name="python3", transport="ipc",
                                ip=os.path.join(self.sockets.name, "kernel"),
                                connection_file=os.path.join(self.sockets.name, "kernel.json"),
                                kernel_spec_manager=_Specs())
        self.km.shared_kc = None
        self.seed = _seed(self.km)
        self.km.start_kernel(cwd=str(PROJECT))

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def ready(self) -> KernelManager:
        """The kernel manager, once the kernel answers (its client started)."""
        if self.km.shared_kc is None:
            client = self.km.client()  # one client for all stages (see engine.py)
            client.start_channels()
            self._answered(client)
            _watch(self.km, client)
            self.km.shared_kc = client
        return self.km

    def _answered(self, client) -> None:
        """Wait until a kernel_info request is answered on the shell channel and its status
        reaches us on IOPub (a ZeroMQ subscriber joins late; what is sent before is lost).
        jupyter_client's wait_for_ready then also waits for 0.2 s of IOPub silence."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if not self.km.is_alive():
                raise errors.RunbookError("the run's kernel ended while starting")
            msg_id = client.kernel_info()
            if (_reply(client.get_shell_msg, msg_id, 1.0)
                    and _reply(client.get_iopub_msg, msg_id, 0.5)):
                return
        raise errors.RunbookError(f"the run's kernel did not start within {READY_TIMEOUT} s")

    def open_run(self, target_params, owner: str) -> None:
        """Connect to the target from the kernel and take its lock on that connection;
        raises what connecting or locking raised there (HostKeyChanged, TargetBusy, …)."""
        self._call("open_run", _plain(target_params), owner,
                   timeout=_connect_limit(target_params))

    def recover_run(self, target_params, run_dir: Path, dry_run: bool) -> str:
        """What a run cut short left on the host, tidied and recorded (see `recover_run`
        below); what to tell the operator, or ""."""
        return self._call("recover_run", _plain(target_params), str(run_dir), dry_run,
                          timeout=target_params.command_timeout + 30)

    def close_run(self, target_params, verdict: str) -> None:
        """Release the lock, telling the host's journal how the run ended. Should that fail,
        stopping the kernel closes its connection, and no lock outlives its connection."""
        with contextlib.suppress(errors.RunbookError):
            self._call("close_run", _plain(target_params), verdict, timeout=5)

    def _call(self, function: str, *args, timeout: float):
        """Await `function(*args)` of this module in the kernel; its (literal) result."""
        client = self.ready().shared_kc
        code = (f"_runbook_answer = await __import__({__name__!r}, fromlist=['_'])."
                f"{function}{args!r}")
        msg_id = client.execute(code, silent=True, store_history=False,
                                user_expressions={"answer": "_runbook_answer"})
        deadline = time.monotonic() + timeout
        while not (reply := _reply(client.get_shell_msg, msg_id, 1.0)):
            if time.monotonic() > deadline or not self.km.is_alive():
                raise errors.RunbookError(f"the run's kernel did not answer {function}")
        content = reply["content"]
        if content["status"] != "ok":
            raise _carried(content.get("ename", ""), content.get("evalue", ""))
        answer = content.get("user_expressions", {}).get("answer", {})
        return ast.literal_eval(answer["data"]["text/plain"]) if "data" in answer else None

    def stop(self) -> None:
        """Kill the kernel and reap it now (jupyter_client would poll 0.1 s for it to go)."""
        km, self.km = self.km, None
        if km is None:
            return
        try:
            if km.shared_kc is not None:
                km.shared_kc.stop_channels()
            process = getattr(km.provisioner, "process", None)
            if process is not None and process.poll() is None:
                with contextlib.suppress(OSError):  # its own session: the group is its own
                    if os.getpgid(process.pid) == process.pid:
                        os.killpg(process.pid, signal.SIGKILL)
                    else:
                        process.kill()
                with contextlib.suppress(Exception):
                    process.wait(timeout=5)
            km.shutdown_kernel(now=True)  # nothing left to wait for: it cleans up
        finally:
            if self.seed is not None:
                self.seed.discard()
            self.sockets.cleanup()


def _watch(km, client) -> None:
    """The client's waits on its shell and IOPub channels end with KernelDied once the
    kernel process is gone."""
    for channel in (client.shell_channel, client.iopub_channel):
        channel.get_msg = _watched(channel.get_msg, km)


def _watched(get_msg, km):
    def get(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = WATCH if deadline is None else min(WATCH, deadline - time.monotonic())
            try:
                return get_msg(timeout=max(left, 0))
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            if not km.is_alive():
                raise KernelDied("its process ended")

    return get


def _reply(get, msg_id: str, timeout: float) -> dict | None:
    """The next message on a channel (`get`) sent in answer to `msg_id`, within `timeout`;
    others (left over from earlier requests) are passed over. None also when the kernel
    died (the caller says which)."""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        try:
            msg = get(timeout=left)
        except (queue.Empty, KernelDied):
            return None
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg
    return None


def _connect_limit(target_params) -> float:
    """How long the runner waits for the kernel to connect and lock: a net for a kernel that
    hangs (each hop has its own connect timeout, raised as HostUnreachable). An empty
    connect_timeout is ssh_config's ConnectTimeout, which the runner does not read."""
    hops = 1 + len(getattr(target_params, "jump", None) or [])
    return 2 * hops * (target_params.connect_timeout or MAX_CONNECT_TIMEOUT) + 30


def _plain(target_params) -> dict:
    return target_params.model_dump(mode="json")


def _carried(name: str, message: str) -> errors.RunbookError:
    """The kernel's error as the runner raises it: the same class for those a connection or
    the lock raises, one RunbookError naming it otherwise."""
    kind = getattr(errors, name, None)
    if isinstance(kind, type) and issubclass(kind, CARRIED):
        return kind(message)
    return errors.RunbookError(f"the run's kernel could not open the run: {name}: {message}")


# --- in the kernel: what the runner asks before the first stage and after the last --------

async def open_run(target: dict, owner: str) -> None:
    """Connect as the stages do (begin() finds the connection open) and take the target's
    lock on that very connection."""
    from runbook import params
    from runbook.run import stage

    await stage.hold_lock(params.Target.model_validate(target), owner)


async def recover_run(target: dict, run_dir: str, dry_run: bool) -> str:
    """Before the first stage: say what a run cut short left on the host, and remove its
    stray temp files (this run then completes what it began; see remote/recovery.py)."""
    from runbook import params
    from runbook.audit import Audit
    from runbook.remote import recovery
    from runbook.run import stage

    target_params = params.Target.model_validate(target)
    connection = await stage.connect(target_params, None, None)
    state = await recovery.inspect(connection, Path(run_dir).name)
    if not state.news:
        return ""
    audit = Audit(Path(run_dir), display=False)
    removed = []
    if state.strays and not dry_run:
        connection.audit = audit  # the removal is a command like any other: recorded
        try:
            await recovery.remove_strays(connection, state.strays)
        finally:
            connection.audit = None
        removed = state.strays
    unfinished = state.unfinished
    audit.record("recovery", host=target_params.host,
                 unfinished=unfinished and unfinished.run,
                 ended=unfinished and unfinished.ended, pending=state.pending,
                 strays=state.strays, removed=removed)
    done = ("the stray temp files were removed; " if removed else "") + (
        "this run completes what the unfinished one began" if unfinished else "")
    return "runbook: " + "\n  ".join([*state.report(), done]).rstrip()


async def close_run(target: dict, verdict: str) -> None:
    """The run is over: its verdict to the journal, the lock released (the connection stays
    open for the kernel's life)."""
    from runbook import params
    from runbook.run import stage

    await stage.release_lock(params.Target.model_validate(target), verdict)


def _seed(km: KernelManager):
    """A kernel forked from this process when it has the kernel's modules loaded (a fleet
    host's process, see seed.py), else None: the kernel is started as a new process."""
    seed = sys.modules.get("runbook.run.seed")
    if seed is None or not seed.can_fork():
        return None
    km.kernel_id = km.kernel_id or str(uuid.uuid4())
    km.provisioner = seed.SeedProvisioner(kernel_id=km.kernel_id, kernel_spec=km.kernel_spec,
                                          parent=km)
    km.provisioner.seed = seed.Seed.fork()
    return km.provisioner.seed


def preload() -> None:
    """Import what a kernel and the stage notebooks need, once and before it serves."""
    # Imports make objects that live as long as the kernel; collecting among them is a
    # fifth of the import time. Frozen afterwards, later collections skip them too.
    gc.disable()
    # ipykernel imports debugpy (0.1 s) to offer its debugger to a front end; a batch run
    # has none, and ipykernel goes without when debugpy cannot be imported.
    sys.modules.setdefault("debugpy", None)
    importlib.import_module("ipykernel.kernelapp")
    importlib.import_module("runbook.run.batch_kernel")
    for name in PRELOAD:
        importlib.import_module(name)
    gc.freeze()
    gc.enable()


def serve(argv: list[str]) -> None:
    """Serve as ipykernel does, with these arguments (the connection file and options)."""
    from ipykernel import kernelapp

    kernelapp.launch_new_instance(argv=argv)


def main() -> None:
    """The kernel process: ipykernel with the package loaded first."""
    if sys.path and sys.path[0] == "":
        del sys.path[0]  # as ipykernel_launcher does (IPython puts it back)
    preload()
    serve(sys.argv[1:])


if __name__ == "__main__":
    main()
