"""The asyncssh session to the target: every remote command goes through `Target.run()`.

A command runs on its own channel of the one open connection as
`echo <marker> $$; exec sh -c '<command>'` (inside `sudo -n`/`doas -n` when privileged), so the
first stdout line names the remote pid: after a timeout its process group is killed over a
new channel — closing a channel without a PTY leaves the remote process running. That kill
is the one command not started by `run()` itself; it is recorded all the same.
"""

import asyncio
import codecs
import contextlib
import contextvars
import re
import shlex
import sys
import time
from dataclasses import dataclass
from signal import Signals

import asyncssh

from runbook.audit import Audit, now
from runbook.errors import (
    CommandFailed,
    CommandTimeout,
    PrivilegeRefused,
    TargetError,
)
from runbook.remote import ssh, sudo

q = shlex.quote
PID_MARK = "__mail_runbook_pid__"
PID_LINE = re.compile(rf"{PID_MARK} (\d+)\n")
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


@dataclass
class Result:
    command: str
    exit_status: int | None
    stdout: str
    stderr: str
    duration: float
    start: str


def _printable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def _tail(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()][-TAIL:]
    return "\n".join(f"  {line}" for line in lines)


def _wrap(command: str, via: str | None, password: bool = False) -> str:
    inner = f"echo {PID_MARK} $$; exec sh -c {q(command)}"
    if via and password:
        return sudo.wrap(inner)  # the pid line also says sudo let it run
    return f"exec {via} -n sh -c {q(inner)}" if via else inner


class _Lines:
    """One output stream: decoded as it arrives, kept, and printed line by line if asked.

    Undecodable bytes are kept as surrogates, so `text.encode("utf-8", "surrogateescape")`
    gives back the exact bytes (files.read_file relies on it).
    """

    def __init__(self, sink, mask, find_pid: bool = False):
        self.sink, self.mask, self.find_pid = sink, mask, find_pid
        # asyncssh calls back from the context that opened the connection; ipykernel 7
        # routes output by context, so print in the caller's (the running cell's) instead.
        self.context = contextvars.copy_context()
        self.decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.parts: list[str] = []
        self.partial = ""
        self.pid: int | None = None

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self.decoder.decode(data, final)
        if self.sink is None and not self.find_pid:
            self.parts.append(self.partial + text)
            self.partial = ""
            return
        text = self.partial + text
        cut = len(text) if final else text.rfind("\n") + 1
        self.partial = text[cut:]
        begin = 0
        while begin < cut:
            end = text.find("\n", begin, cut) + 1 or cut
            self._line(text[begin:end])
            begin = end

    def _line(self, line: str) -> None:
        if self.find_pid and (match := PID_LINE.fullmatch(line)):
            self.pid, self.find_pid = int(match[1]), False
            return
        self.parts.append(line)
        if self.sink is not None:
            text = _printable(self.mask(line.rstrip("\n")))
            self.context.run(print, text, file=self.sink, flush=True)

    @property
    def text(self) -> str:
        return "".join(self.parts)


class _Job(asyncssh.SSHClientSession):
    """One command on its own channel: output fed to two `_Lines`, exit status kept.

    Under `sudo -S` (`password` given) the command's input waits until the command runs (its
    pid line): the password is written only when sudo's prompt shows on stderr, once."""

    def __init__(self, out: _Lines, err: _Lines, password: str | None = None):
        self.out, self.err = out, err
        self.chan: asyncssh.SSHClientChannel | None = None
        self.exit_status: int | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.password, self.input = password, None
        self.prompts = sudo.Prompts() if password else None
        self.wrong_password = False

    def connection_made(self, chan) -> None:
        self.chan = chan

    def start(self, data: bytes | None) -> None:
        """Send the command's input now, or (under sudo -S) once the command runs."""
        if self.prompts is None:
            self.send(data)
        else:
            self.input = data

    def send(self, data: bytes | None) -> None:
        if data:
            self.chan.write(data)
        self.chan.write_eof()

    def data_received(self, data: bytes, datatype) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            if self.prompts is not None:  # sudo is still deciding
                data, event = self.prompts.feed(data)
                if event == "ask":
                    self.chan.write(self.password.encode() + b"\n")
                elif event == "wrong":  # never a second try: sudo reads EOF and gives up
                    self.wrong_password = True
                    self.chan.write_eof()
            self.err.feed(data)
            return
        self.out.feed(data)
        if self.prompts is not None and self.out.pid is not None:
            self.err.feed(self.prompts.flush())
            self.prompts = None  # sudo let the command run: its own input follows
            self.send(self.input)

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped, msg, lang) -> None:
        number = Signals.__members__.get(f"SIG{signal}")
        self.exit_status = 128 + (number or 0)  # as a shell reports it

    def connection_lost(self, exc: Exception | None) -> None:
        if self.prompts is not None:
            self.err.feed(self.prompts.flush())
        self.out.feed(b"", final=True)
        self.err.feed(b"", final=True)
        if self.closed.done():
            return
        if exc:
            self.closed.set_exception(exc)
        else:
            self.closed.set_result(None)

    def result(self, command: str, start: str, duration: float) -> Result:
        return Result(command, self.exit_status, self.out.text, self.err.text, duration, start)


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
        job = _Job(
            _Lines(live, self._mask, find_pid=True),
            _Lines(sys.stderr if live else None, self._mask),
            password,
        )
        timeout = self.params.command_timeout if timeout is None else timeout
        data = input.encode("utf-8", "surrogateescape") if isinstance(input, str) else input
        start, t0 = now(), time.monotonic()
        extra = {}
        try:
            await asyncio.wait_for(self._exec(job, _wrap(command, via, bool(password)), data),
                                   timeout)
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

    async def _exec(self, job: _Job, command: str, data: bytes | None) -> None:
        job.chan, _ = await self.conn.create_session(lambda: job, command, encoding=None)
        job.start(data)
        await job.closed

    async def _kill(self, job: _Job, via: str | None) -> bool:
        """End a timed-out command's remote processes; True when they are gone."""
        try:
            if job.out.pid is None:
                return False  # it never started (e.g. sudo hanging): nothing known to kill
            killer = _Job(_Lines(None, self._mask, find_pid=True), _Lines(None, self._mask),
                          job.password)
            script = KILL_SCRIPT.format(pid=job.out.pid, ticks=round(KILL_GRACE * 10))
            start, t0 = now(), time.monotonic()
            wrapped = _wrap(script, via, bool(job.password))
            with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
                await asyncio.wait_for(self._exec(killer, wrapped, None), KILL_TIMEOUT)
            result = killer.result(script, start, time.monotonic() - t0)
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
