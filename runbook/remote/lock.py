"""A lock on the target so two runs never interleave on one host.

The lock is a directory in /var/run on the target, held by a remote shell that waits on
its stdin: when the run ends — or the runner dies and its SSH connection drops — stdin
closes and the shell removes the directory. So a crashed run leaves no stale lock, and
a host reboot clears /var/run anyway.

The same shell keeps the host's journal of runs (`JOURNAL` in the backup root, which a
reboot keeps): a `start` line when the lock is taken, an `end <verdict>` line when the
runner lets go saying how the run ended (ok, failed, interrupted), `end lost` when the
connection closed without a word. A start with no end: the run was cut short by a reboot
or a kill (see recovery.py).

A run takes the lock on its own connection, the one its stages use (`hold`, called in the
run's kernel: run/kernel.py); `TargetLock` holds it on a connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

import asyncssh

from runbook.errors import TargetBusy, verdict_of
from runbook.remote import files, sudo
from runbook.remote.target import Target, q

LOCK_DIR = "/var/run/mail-runbook.lock"
JOURNAL = "JOURNAL"  # in files.BACKUP_ROOT
BUSY = 75  # EX_TEMPFAIL
SETTLE = 2.0  # seconds a lock being taken or let go (no owner yet, or no more) is waited out
VERDICTS = ("ok", "failed", "interrupted")

_HOLD = """\
if mkdir {dir} 2>/dev/null; then
  trap 'rm -rf {dir}' EXIT HUP INT TERM PIPE
  echo {owner} > {dir}/owner
  note() {{ printf '%s\\t%s\\t%s\\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" {owner} "$1" >> {journal}; }}
  (umask 077; mkdir -p {root}) && note start
  echo locked
  verdict=lost
  while read -r line; do verdict=$line; done
  note "end $verdict"
else
  echo "busy: $(cat {dir}/owner 2>/dev/null)"
  exit {busy}
fi
"""


def journal_path() -> str:
    return f"{files.BACKUP_ROOT}/{JOURNAL}"


def hold_command(owner: str, lock_dir: str | None = None) -> str:
    return _HOLD.format(dir=q(lock_dir or LOCK_DIR), owner=q(owner), busy=BUSY,
                        root=q(files.BACKUP_ROOT), journal=q(journal_path()))


@dataclass
class Held:
    """The lock, held by a remote shell on one channel of the connection."""

    process: asyncssh.SSHClientProcess


async def hold(target: Target, owner: str, *, again: bool = False) -> Held:
    """Take the lock on an open connection. Raises TargetBusy naming the run holding it.

    `again`: the run takes its lock anew after its connection closed; the old connection's
    shell may still be letting go (busy, with this very owner) for a moment."""
    timeout = target.destination.target.connect_timeout
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        process, first = await _try(target, owner, timeout)
        if first == "locked":
            return Held(process)
        process.close()
        # No owner named: another shell is taking or letting go of the lock this very
        # moment (between its mkdir and its owner file, or in its rm -rf); ask again.
        settling = first == "busy: " and loop.time() - started < SETTLE
        ours = again and first == f"busy: {owner}" and loop.time() - started < (timeout or 10)
        if not (settling or ours):
            break
        await asyncio.sleep(0.1)
    host = target.params.host
    raise TargetBusy(
        f"{host} is locked by another run ({first.removeprefix('busy: ') or 'unknown'}); "
        f"wait for it to finish. A lock outlives a run only while its SSH connection "
        f"is open; if none is, remove {LOCK_DIR} on {host}."
    )


async def _try(target: Target, owner: str, timeout: float):
    """Start the lock's shell; it and its first answer ("locked", or "busy: OWNER")."""
    command = hold_command(owner)
    password = target.sudo_password
    if password:  # sudo -S, fed the password only when it asks (sudo.py)
        command = sudo.wrap(f"echo {sudo.AUTHED}; {command}")
    elif target.privilege:  # sudo/doas, never interactive
        command = f"{target.privilege} -n sh -c {q(command)}"
    process = await target.conn.create_process(command)
    try:
        if password:
            await sudo.answer(process, password, target.params, target.user, target.dest,
                              timeout)
        return process, await asyncio.wait_for(_answer(process), timeout)
    except BaseException:
        process.close()
        raise


async def release(held: Held, verdict: str = "ok") -> None:
    """Say how the run ended (the journal's `end` line) and let go."""
    # a cut connection has nothing left to release: the shell wrote `end lost` itself
    with contextlib.suppress(OSError, asyncssh.Error, TimeoutError):
        held.process.stdin.write(verdict + "\n")
        held.process.stdin.write_eof()
        await asyncio.wait_for(held.process.wait(), 10)


async def _answer(process) -> str:
    """The script's verdict, skipping anything a login prints first (motd, nologin)."""
    while line := await process.stdout.readline():
        if line.strip() == "locked" or line.startswith("busy: "):
            return line.strip()
    return "the lock command ended without an answer"


class TargetLock:
    """Context manager holding the target's lock on a connection of its own, in a background
    event loop so that a synchronous caller can hold it (tests, tools without a kernel)."""

    def __init__(self, target_params, owner: str):
        self.target_params = target_params
        self.owner = owner
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> TargetLock:
        self.thread.start()
        try:
            self.call(self._acquire())
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, kind, *_exc) -> None:
        try:
            self.call(self._release(verdict_of(kind)))
        finally:
            self._stop()

    def call(self, coroutine):
        """Run a coroutine on the lock's own loop (its `target` is the lock's connection)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def _stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    async def _acquire(self) -> None:
        self.target = await Target.connect(self.target_params, None)
        try:
            self.held = await hold(self.target, self.owner)
        except BaseException:
            await self.target.close()
            raise

    async def _release(self, verdict: str = "ok") -> None:
        await release(self.held, verdict)
        await self.target.close()


__all__ = ["BUSY", "JOURNAL", "LOCK_DIR", "VERDICTS", "Held", "TargetBusy", "TargetLock", "hold",
           "hold_command", "journal_path", "release", "verdict_of"]
