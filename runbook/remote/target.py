"""The asyncssh session to the target: every remote command goes through `Target.run()`.

A command runs on its own channel of the one open connection, in its own `sh`, which first
prints `<marker> $$`: the first stdout line names the remote pid, and after a timeout its
process group is killed over a new channel — closing a channel without a PTY leaves the
remote process running. That kill is the one command not started by `run()` itself; it is
recorded all the same.

The shell is usually started before its command (`Spare`): a channel running `exec sh`,
opened while the previous command runs, is given `echo <marker> $$; eval '<command>'` on its
input and then EOF. sshd's fork and the login shell's start are then off the command's path,
and the command still has its own channel, process, session and exit status, with `sh -c`'s
meaning. Otherwise (a command given input, or privileged) it is sent as
`echo <marker> $$; exec sh -c '<command>'`, or under `sudo -n`/`doas -n` as
`sh -c 'echo <marker> $$; eval <command>'`: sudo's log keeps naming each command.
A started shell has read what its login shell reads at start (~/.profile, ~/.bashrc) while
the command before it ran; nothing the runbook does edits those.
"""

import asyncio
import contextlib
import shlex
import sys
import time

import asyncssh

from runbook.audit import Audit, now
from runbook.errors import (
    CommandFailed,
    CommandTimeout,
    PrivilegeRefused,
    TargetError,
)
from runbook.remote import ssh, sudo
from runbook.remote.channel import SPARE, Job, Lines, Result, Spare, script, wrap

q = shlex.quote
LONG = 2.0  # seconds after which the elapsed time is printed
KILL_TIMEOUT = 10.0
KILL_GRACE = 3.0  # seconds between TERM and KILL
TAIL = 10  # lines of output quoted in a CommandFailed message
# TERM the command's process group (and the pid itself), wait KILL_GRACE, then KILL.
# Zombies do not count as alive: `kill -0` would see them until their parent reaps them.
KILL_SCRIPT = """p={pid}; g=$(ps -o pgid= -p $p 2>/dev/null | tr -d ' ')
case $g in ''|0|1) g=$p;; esac
alive() {{
  if command -v ps >/dev/null; then
    ps -A -o pgid= -o stat= | awk -v g=$g '$1 == g && $2 !~ /^Z/ {{f = 1}} END {{exit !f}}'
  else kill -0 -$g 2>/dev/null || kill -0 $p 2>/dev/null; fi
}}
kill -TERM -$g $p 2>/dev/null; i=0
while alive && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done
kill -KILL -$g $p 2>/dev/null; sleep 0.1
! alive"""


def _tail(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()][-TAIL:]
    return "\n".join(f"  {line}" for line in lines)


# Over the ~150-line mark on purpose: `run` and what it needs (kill on timeout, the audit
# record, the error for each way a command fails) are the one path every remote command takes.
class Target:
    """An open SSH session to one host; see `connect` (opened by ssh.py)."""

    def __init__(self, session: ssh.Session, params, audit: Audit | None, stage: str | None,
                 sudo_password: str | None = None):
        self.sudo_password = sudo_password
        self.session, self.params, self.audit, self.stage = session, params, audit, stage
        self.conn = session.conn  # the target's own connection (the last hop)
        self.destination = session.destination
        self.host = params.host  # as the params name it: an ssh_config alias stays one
        self.address = self.destination.target.address  # what it is reached at (HostName)
        self.user = self.destination.target.user
        self.dest = self.destination.target.dest
        self.fingerprint = self.conn.get_server_host_key().get_fingerprint("sha256")
        root = self.user == "root"
        self.privilege = params.privilege if params.privilege != "none" and not root else None
        if self.privilege != "sudo":
            self.sudo_password = None
        self._spare: asyncio.Future | None = None  # the next unprivileged command's shell

    @property
    def audit(self) -> Audit | None:
        return self._audit

    @audit.setter
    def audit(self, audit: Audit | None) -> None:
        """Each stage brings its own Audit: the sudo password is masked in every one."""
        self._audit = audit
        if audit is not None and self.sudo_password:
            audit.add_secret(self.sudo_password)

    @classmethod
    async def connect(cls, params, audit: Audit | None, *, stage: str | None = None) -> "Target":
        """Open the session; each refusal is one RunbookError naming the host and what to do.
        The audit records where it connected: the effective destination, and each hop with
        the host key it showed."""
        password = sudo.read_password(params) if params.privilege == "sudo" else None
        target = cls(await ssh.open_session(params), params, audit, stage, password)
        if audit is not None:
            target.record_connection(audit, stage)
        return target

    def record_connection(self, audit: Audit, stage: str | None) -> None:
        """Where this session connected: the effective destination, each hop's host key."""
        audit.record("connection", show=False, host=self.host, **self.destination.summary(),
                     hops=self.session.fingerprints(),
                     **({"stage": stage} if stage is not None else {}))

    async def __aenter__(self) -> "Target":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._spare is not None:
            self._spare.cancel()
        self.session.close()
        await self.session.wait_closed()

    def _mask(self, text: str) -> str:
        return self.audit.mask(text) if self.audit else text

    async def run(
        self,
        command: str,
        *,
        check: bool = True,
        timeout: float | None = None,
        input: str | bytes | None = None,
        privileged: bool = True,
        quiet: bool = False,
        stream: bool = True,
    ) -> Result:
        """Run a shell command (values already quoted with `q`) and record it.

        Output is printed line by line as it arrives unless `stream` is False; `quiet` also
        keeps the audit record out of the cell. Raises CommandTimeout (after killing the
        remote process), PrivilegeRefused, or with `check` CommandFailed on a non-zero exit.
        """
        via = self.privilege if privileged else None
        live = None if quiet or not stream else sys.stdout
        password = self.sudo_password if via == "sudo" else None
        job = Job(
            Lines(live, self._mask, find_pid=True),
            Lines(sys.stderr if live else None, self._mask),
            password,
        )
        timeout = self.params.command_timeout if timeout is None else timeout
        data = input.encode("utf-8", "surrogateescape") if isinstance(input, str) else input
        start, t0 = now(), time.monotonic()
        extra = {}
        try:
            await asyncio.wait_for(self._exec(job, command, via, data), timeout)
        except TimeoutError:
            extra = {"timed_out": timeout, "killed": await self._kill(job, via)}
        except (OSError, asyncssh.Error) as exc:
            extra = {"error": str(exc)}
        except asyncio.CancelledError:  # the cell was interrupted (Ctrl-C): end it for real
            killed = await self._kill(job, via)
            self._record(job.result(command, start, time.monotonic() - t0), via, quiet,
                         interrupted=True, killed=killed)
            raise
        result = job.result(command, start, time.monotonic() - t0)
        if live and result.duration > LONG:
            print(f"({result.duration:.1f} s)", flush=True)
        self._record(result, via, quiet, **extra)
        if job.wrong_password:
            raise sudo.wrong(self.params, self.user, self.dest)
        self._raise_for(result, via, job.out.pid, check, **extra)
        return result

    async def _exec(self, job: Job, command: str, via: str | None, data: bytes | None) -> None:
        if not via and not data and (spare := await self._take_spare()) is not None:
            spare.give(job, script(command))
            await job.closed
            if not job.untouched:
                return
            job.rearm()  # it ended just as it was given the command: open a channel for it
        await self._open(job, wrap(command, via, bool(job.password)), data)

    async def _open(self, job: Job, command: str, data: bytes | None) -> None:
        job.chan, _ = await self.conn.create_session(lambda: job, command, encoding=None)
        job.start(data)
        await job.closed

    async def _take_spare(self) -> Spare | None:
        """The shell started for this command, if it is still waiting; the next command's
        is started now, so that it starts while this one runs."""
        taken, self._spare = self._spare, asyncio.ensure_future(self._start_spare())
        self._spare.add_done_callback(lambda f: f.cancelled() or f.exception())
        if taken is None:
            return None
        try:
            spare = await taken
        except (OSError, asyncssh.Error):
            return None
        return None if spare.dead else spare

    async def _start_spare(self) -> Spare:
        spare = Spare()
        await self.conn.create_session(lambda: spare, SPARE, encoding=None)
        return spare

    async def _kill(self, job: Job, via: str | None) -> bool:
        """End a timed-out command's remote processes; True when they are gone."""
        try:
            if job.out.pid is None:
                return False  # it never started (e.g. sudo hanging): nothing known to kill
            killer = Job(Lines(None, self._mask, find_pid=True), Lines(None, self._mask),
                          job.password)
            kill = KILL_SCRIPT.format(pid=job.out.pid, ticks=round(KILL_GRACE * 10))
            start, t0 = now(), time.monotonic()
            wrapped = wrap(kill, via, bool(job.password))
            with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
                await asyncio.wait_for(self._open(killer, wrapped, None), KILL_TIMEOUT)
            result = killer.result(kill, start, time.monotonic() - t0)
            self._record(result, via, quiet=True)
            return result.exit_status == 0
        finally:
            if job.chan:
                job.chan.close()

    def _record(self, result: Result, via: str | None, quiet: bool, **extra) -> None:
        if self.audit is None:
            return
        fields = {
            "host": self.host,
            "fingerprint": self.fingerprint,
            "command": result.command,
            "start": result.start,
            "duration": round(result.duration, 4),
            "exit_status": result.exit_status,
            "stdout": result.stdout,
            "stderr": result.stderr,
        }
        if via:
            fields["privilege"] = via
        if self.stage is not None:
            fields["stage"] = self.stage
        self.audit.record("command", show=not quiet, **fields, **extra)

    def _raise_for(self, result, via, pid, check, timed_out=None, killed=None, error=None):
        cmd = f"{self.dest}: `{result.command}`"
        if timed_out is not None:
            ended = (
                "its remote processes were killed"
                if killed
                else ("its remote processes could NOT be confirmed killed — check the host")
            )
            raise CommandTimeout(
                self._mask(
                    f"{cmd} timed out after {timed_out} s; {ended}. If it needs longer, "
                    "raise target.command_timeout or pass timeout="
                ),
                result,
            )
        if error is not None:
            raise TargetError(self._mask(f"{cmd} was cut off: {error}"))
        if via and pid is None and result.exit_status:
            raise PrivilegeRefused(self._privilege_message(via, result))
        if check and result.exit_status != 0:
            tail = _tail(result.stderr) or _tail(result.stdout)
            raise CommandFailed(
                self._mask(f"{cmd} exited {result.exit_status}" + (f":\n{tail}" if tail else "")),
                result,
            )

    def _privilege_message(self, via: str, result: Result) -> str:
        user = self.user
        said = _tail(result.stderr).strip() or f"exit {result.exit_status}"
        if result.exit_status == 127:
            return f"{self.dest}: {via} could not run ({said}) — install it or set privilege"
        if via == "sudo" and self.sudo_password:
            return (f"{self.dest}: sudo refused to run commands for {user} ({said}), with the "
                    f"password from {sudo.reference(self.params)}: is {user} allowed to use "
                    "sudo (e.g. in the sudo group)?")
        rule = (
            f"`{user} ALL=(ALL) NOPASSWD: ALL` (with visudo), or give its password by "
            "reference (target.sudo_password_env or target.sudo_password_file)"
            if via == "sudo"
            else f"`permit nopass {user}` in /etc/doas.conf (doas takes no password here)"
        )
        return (
            f"{self.dest}: {via} -n refused to run commands ({said}) — the runbook never types "
            f"a password: allow {user} to run commands without one, e.g. {rule}"
        )

    async def open_connection(self, host: str, port: int):
        """A TCP connection from the target to host:port (asyncio-style reader, writer)."""
        return await self.conn.open_connection(host, port)

    async def forward_local_port(self, remote_host: str, remote_port: int):
        """Listen on a free local port forwarded to remote_host:remote_port as seen from
        the target; returns (listener, local_port). Close the listener when done."""
        listener = await self.conn.forward_local_port("127.0.0.1", 0, remote_host, remote_port)
        return listener, listener.get_port()
