"""One command's channel: its output streams (`Lines`), its session (`Job`), and the shell
started ahead of it (`Spare`); `wrap` and `script` say what the remote shell is given.

How a command reaches its shell is said in target.py, which runs them.
"""

import asyncio
import codecs
import contextvars
import re
import shlex
from dataclasses import dataclass
from signal import Signals

import asyncssh

from runbook.remote import sudo

q = shlex.quote
PID_MARK = "__mail_runbook_pid__"
PID_LINE = re.compile(rf"{PID_MARK} (\d+)\n")
SPARE = "exec sh"  # a shell started ahead of its command: the login shell becomes sh


@dataclass
class Result:
    command: str
    exit_status: int | None
    stdout: str
    stderr: str
    duration: float
    start: str


def printable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def wrap(command: str, via: str | None, password: bool = False) -> str:
    if not via:  # the login shell, whatever it is, only prints the pid and becomes sh
        return f"echo {PID_MARK} $$; exec sh -c {q(command)}"
    inner = script(command)  # already in sh
    if password:
        return sudo.wrap(inner)  # the pid line also says sudo let it run
    return f"exec {via} -n sh -c {q(inner)}"


def script(command: str) -> str:
    """`command` for a shell that is already sh: the pid line, then the command as `sh -c`
    runs it ($0 is sh, no positional parameters)."""
    return f"echo {PID_MARK} $$; eval {q(command)}"


class Lines:
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
            text = printable(self.mask(line.rstrip("\n")))
            self.context.run(print, text, file=self.sink, flush=True)

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Job(asyncssh.SSHClientSession):
    """One command on its own channel: output fed to two `Lines`, exit status kept.

    Under `sudo -S` (`password` given) the command's input waits until the command runs (its
    pid line): the password is written only when sudo's prompt shows on stderr, once."""

    def __init__(self, out: Lines, err: Lines, password: str | None = None):
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

    @property
    def untouched(self) -> bool:
        """Nothing came back at all: not even the pid line, so the command never ran."""
        return self.out.pid is None and not self.out.parts and not self.err.parts

    def rearm(self) -> None:
        """Ready for another channel, after one that ended before anything came back."""
        self.chan, self.exit_status = None, None
        self.closed = asyncio.get_running_loop().create_future()


class Spare(asyncssh.SSHClientSession):
    """`sh` started ahead of its command, waiting on its input for the script (`script`).

    Output it prints while it waits (a login shell's banner) is kept for its command, as it
    would come before the pid line of a channel opened for the command. A spare that ends
    while it waits is `dead` and never given a command."""

    def __init__(self):
        self.chan: asyncssh.SSHClientChannel | None = None
        self.job: Job | None = None
        self.early: list[tuple[bytes, object]] = []
        self.dead = False

    def connection_made(self, chan) -> None:
        self.chan = chan

    def give(self, job: Job, script: str) -> None:
        self.job, job.chan = job, self.chan
        for data, datatype in self.early:
            job.data_received(data, datatype)
        job.send(script.encode() + b"\n")

    def data_received(self, data: bytes, datatype) -> None:
        if self.job is None:
            self.early.append((data, datatype))
        else:
            self.job.data_received(data, datatype)

    def eof_received(self) -> bool:
        if self.job is None:
            self.dead = True
        return False

    def exit_status_received(self, status: int) -> None:
        self._then("exit_status_received", status)

    def exit_signal_received(self, *args) -> None:
        self._then("exit_signal_received", *args)

    def connection_lost(self, exc: Exception | None) -> None:
        self._then("connection_lost", exc)

    def _then(self, event: str, *args) -> None:
        if self.job is None:
            self.dead = True
        else:
            getattr(self.job, event)(*args)
