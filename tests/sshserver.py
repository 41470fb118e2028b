"""An in-process asyncssh server for the transport tests.

Commands run in a real `/bin/sh -c` subprocess in a new session, as sshd runs them (so
streaming, exit status, timeouts and kill are real), as the user running the tests, whatever
user name the client gives. Like sshd without a PTY, closing a channel does not end its
process. Direct TCP connections are allowed to 127.0.0.1 only.
"""

import asyncio
import contextlib
import os
import signal
import typing
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import asyncssh

from runbook.remote.channel import SPARE

HOST = "127.0.0.1"


@dataclass
class Server:
    port: int
    host_key: asyncssh.SSHKey
    known_hosts: Path  # holds exactly this server's key
    client_key: Path  # the only key the server accepts
    env: dict = field(default_factory=dict)  # environment of the commands (tests may change it)
    # What each channel ran, in order: its command, or for a shell started ahead of its
    # command (`exec sh`), the script it was given on its input, once given.
    commands: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)  # every channel's own command
    login: str = ""  # run before each channel's command, as a login shell's rc file is
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    def params(self, **overrides) -> SimpleNamespace:
        """A `target` section for this server, as the params model gives one."""
        values = {
            "host": HOST,
            "port": self.port,
            "user": "root",
            "key_file": self.client_key,
            "use_agent": False,
            "known_hosts": self.known_hosts,
            "host_key_policy": "strict",
            "privilege": "none",
            "connect_timeout": 5.0,
            "command_timeout": 10.0,
            "ssh_config": "none",  # the machine's own config files play no part here
            "jump": None,
            "sudo_password_env": None,
            "sudo_password_file": None,
        }
        return SimpleNamespace(**(values | overrides))


class _Forwarding(asyncssh.SSHServer):
    forwards: typing.ClassVar[list[tuple[str, int]]] = []  # direct-tcpip requests, all servers

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        _Forwarding.forwards.append((dest_host, dest_port))
        return dest_host == HOST  # True: asyncssh opens the connection itself


def forwards() -> list[tuple[str, int]]:
    """The TCP connections clients asked the test servers to open (a jump host's tunnel)."""
    return _Forwarding.forwards


async def _pump(read, write) -> None:
    with contextlib.suppress(OSError, asyncssh.Error):
        while data := await read(65536):
            write(data)


async def _feed_stdin(channel: asyncssh.SSHReader, stdin: asyncio.StreamWriter,
                      given=None) -> None:
    """Copy the channel's input to the process; `given(text)` then has all of it, if any."""
    received = []
    with contextlib.suppress(OSError, asyncssh.Error):
        while data := await channel.read(65536):
            received.append(data)
            stdin.write(data)
            await stdin.drain()
    stdin.close()
    if given is not None and received:
        given(b"".join(received).decode())


def _handler(server: Server):
    async def handle(process: asyncssh.SSHServerProcess) -> None:
        server.channels.append(process.command)
        started = process.command == SPARE  # a shell waiting for its command
        if not started:
            server.commands.append(process.command)
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            server.login + (process.command or "exec sh"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # as sshd's setsid(): pid == process group
            env=server.env,
        )
        server.procs.append(proc)
        given = server.commands.append if started else None
        stdin = asyncio.ensure_future(_feed_stdin(process.stdin, proc.stdin, given))
        await asyncio.gather(
            _pump(proc.stdout.read, process.stdout.write),
            _pump(proc.stderr.read, process.stderr.write),
        )
        status = await proc.wait()
        stdin.cancel()
        with contextlib.suppress(OSError, asyncssh.Error):
            if status < 0:
                process.exit_with_signal(signal.Signals(-status).name[3:])
            else:
                process.exit(status)

    return handle


def _write_key(key: asyncssh.SSHKey, path: Path) -> Path:
    key.write_private_key(str(path))
    path.chmod(0o600)
    return path


def known_hosts_line(port: int, key: asyncssh.SSHKey) -> str:
    return f"[{HOST}]:{port} {key.export_public_key().decode().strip()}\n"


@contextlib.asynccontextmanager
async def ssh_server(tmp: Path) -> AsyncIterator[Server]:
    """Start a server on 127.0.0.1 (free port) with fresh host and client keys under `tmp`."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    server = Server(0, host_key, tmp / "known_hosts", _write_key(client_key, tmp / "id_client"))
    server.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    acceptor = await asyncssh.create_server(
        _Forwarding,
        HOST,
        0,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(
            client_key.export_public_key().decode()
        ),
        process_factory=_handler(server),
        encoding=None,
    )
    server.port = acceptor.get_port()
    server.known_hosts.write_text(known_hosts_line(server.port, host_key))
    try:
        yield server
    finally:
        acceptor.close()
        await acceptor.wait_closed()
        for proc in server.procs:  # whatever a test left running (on purpose or not)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
