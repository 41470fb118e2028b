"""A lock on the target so two runs never interleave on one host.

The lock is a directory in /var/run on the target, held by a remote shell that waits on
its stdin: when the run ends — or the runner dies and its SSH connection drops — stdin
closes and the shell removes the directory. So a crashed run leaves no stale lock, and
a host reboot clears /var/run anyway.
"""

from __future__ import annotations

import asyncio
import threading

from runbook.errors import RunbookError
from runbook.remote.target import Target, q

LOCK_DIR = "/var/run/mail-runbook.lock"
BUSY = 75  # EX_TEMPFAIL

_HOLD = """\
if mkdir {dir} 2>/dev/null; then
  trap 'rm -rf {dir}' EXIT HUP INT TERM PIPE
  echo {owner} > {dir}/owner
  echo locked
  cat >/dev/null
else
  echo "busy: $(cat {dir}/owner 2>/dev/null)"
  exit {busy}
fi
"""


class TargetBusy(RunbookError):
    pass


def hold_command(owner: str, lock_dir: str = LOCK_DIR) -> str:
    return _HOLD.format(dir=q(lock_dir), owner=q(owner), busy=BUSY)


class TargetLock:
    """Context manager holding the target's lock in a background event loop.

    The runner is synchronous (papermill runs its own loops), so the SSH connection that
    holds the lock lives in a thread of its own for the length of the run.
    """

    def __init__(self, target_params, owner: str):
        self.target_params = target_params
        self.owner = owner
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> TargetLock:
        self.thread.start()
        try:
            self._call(self._acquire())
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._call(self._release())
        finally:
            self._stop()

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def _stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    async def _acquire(self) -> None:
        self.target = await Target.connect(self.target_params, None)
        command = hold_command(self.owner)
        if self.target.privilege:  # sudo/doas, never interactive
            command = f"{self.target.privilege} -n sh -c {q(command)}"
        self.process = await self.target.conn.create_process(command)
        first = await asyncio.wait_for(self._answer(), self.target_params.connect_timeout)
        if first != "locked":
            await self.target.close()
            host = self.target_params.host
            raise TargetBusy(
                f"{host} is locked by another run ({first.removeprefix('busy: ') or 'unknown'}); "
                f"wait for it to finish. A lock outlives a run only while its SSH connection "
                f"is open; if none is, remove {LOCK_DIR} on {host}."
            )

    async def _answer(self) -> str:
        """The script's verdict, skipping anything a login prints first (motd, nologin)."""
        while line := await self.process.stdout.readline():
            if line.strip() == "locked" or line.startswith("busy: "):
                return line.strip()
        return "the lock command ended without an answer"

    async def _release(self) -> None:
        self.process.stdin.write_eof()
        await asyncio.wait_for(self.process.wait(), 10)
        await self.target.close()
