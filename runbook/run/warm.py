"""`runbook warm`: a process that keeps the runner and a kernel's modules loaded, so that
each `runbook run` starts from it instead of from nothing.

Started cold, a run spends about 1.2 s before its first stage on two Pythons starting and
importing (the CLI and its kernel, side by side): more than a re-run's remote work. The
warm process loads it all once, then listens on a Unix socket in a private folder (mode
0700, owned by this user; the peer's uid is checked as well). `runbook run` and `runbook
check` ask it first: the warm process forks a child for that one run, a fresh process each
time (nothing is kept from one run to the next but loaded code, so no state is shared
between targets). The child takes over the caller's terminal (its stdin, stdout and
stderr, passed over the socket), working directory, environment and arguments, runs the
CLI as the caller would have, and sends back the exit status. The caller forwards Ctrl-C
and SIGTERM to it, so the runner's interrupt handling is the same; a caller killed outright
takes its run along. The child forks its kernel from itself (seed.py).

A warm process is only asked by callers of the same code: the socket's name is a digest of
the interpreter, the installed distributions and every file of the package and the
notebooks (sizes and times), so after an edit, an upgrade or from another checkout the run
starts cold, as it does when no warm process runs. RUNBOOK_WARM=0 in the environment makes
it start cold.

This module's top level imports only the standard library: the caller's side runs before
anything else is loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from runbook.run import forking

PACKAGE = Path(__file__).resolve().parents[1]
PROJECT = PACKAGE.parent
ENV = "RUNBOOK_WARM"
IDLE = 3600.0  # s without a run after which the warm process ends
MAX_ORDER = 4 << 20  # bytes: arguments and environment


def digest() -> str:
    """What the warm process was loaded from: the interpreter, the installed distributions
    (their dist-info names carry the versions) and the package's and the notebooks' files
    (path, size, mtime). Directory listings and stat calls only: about 2 ms."""
    h = hashlib.sha256(f"{sys.executable}\0{sys.version}\0{PROJECT}".encode())
    for entry in sys.path:
        if entry.endswith("-packages") and os.path.isdir(entry):
            h.update("\0".join(sorted(os.listdir(entry))).encode())
    found = []
    for root in (PACKAGE, PROJECT / "notebooks"):
        for where, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            found += [os.path.join(where, name) for name in files]
    for path in sorted(found):
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:24]


def folder(create: bool = False) -> Path | None:
    """The private folder of this user's warm sockets, or None when it is not private
    (another owner, or open to others: then it is not used at all)."""
    path = Path(tempfile.gettempdir()) / f"mail-runbook-warm-{os.getuid()}"
    if create:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    private = (st.st_uid == os.getuid() and (st.st_mode & 0o077) == 0
               and path.is_dir() and not path.is_symlink())
    return path if private else None


def socket_path(create: bool = False) -> Path | None:
    where = folder(create)
    return where / f"{digest()}.sock" if where else None


# --- who serves: `runbook warm --status` and `--stop` ----------------------------------------

def _serving(where: Path) -> list[dict]:
    """The warm processes of this user that still serve, each as its `<digest>.json` says
    (pid, socket inode, project, since), with the `digest` of the code it serves. A note is
    believed only while its process lives and its socket is the one it bound."""
    found = []
    for note in sorted(where.glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(note.read_text())
            sock = where / f"{note.stem}.sock"
            if sock.stat().st_ino == info["inode"] and _is_warm(info["pid"]):
                found.append(info | {"digest": note.stem})
    return found


def _is_warm(pid: int) -> bool:
    """`pid` lives and is a `runbook warm` (not a process that reused its number)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"warm" in argv


def status(echo=print) -> int:
    """Say which warm processes serve; 0 when one serves this very code."""
    where, current = folder(), digest()
    serving = _serving(where) if where else []
    for info in serving:
        which = ("this code" if info["digest"] == current
                 else "older code (an edit or upgrade since)")
        echo(f"runbook warm: pid {info['pid']} serves {which} of {info['project']} "
             f"since {info['since']} (idle limit {info['idle']:.0f} s)")
    if not any(info["digest"] == current for info in serving):
        echo(f"runbook warm: none serves this code of {PROJECT}: runs start cold")
        return 1
    return 0


def stop(echo=print, wait: float = 10.0) -> int:
    """End every warm process of this checkout (this code's and older ones'): SIGTERM, then
    wait for each to go. Runs they started go on to their end."""
    where = folder()
    mine = [i for i in (_serving(where) if where else []) if i["project"] == str(PROJECT)]
    if not mine:
        echo(f"runbook warm: none serves {PROJECT}")
        return 0
    for info in mine:
        _send(info["pid"], signal.SIGTERM)
    deadline = time.monotonic() + wait
    while (left := [i for i in mine if _is_warm(i["pid"])]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for info in mine:
        gone = info not in left
        echo(f"runbook warm: pid {info['pid']} " + ("ended" if gone else "did not end in time"))
    return 1 if left else 0


@contextlib.contextmanager
def _address(path: Path):
    """The path to bind or connect to: a Unix socket's path has at most 107 bytes, so a
    longer one (a deep TMPDIR) is reached through this process's descriptor of its folder."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


# --- the caller: `runbook run` ---------------------------------------------------------------

def delegate(argv: list[str]) -> int | None:
    """Run `runbook ARGV` in the warm process when one of this code listens; its exit
    status, or None (no warm process: the caller runs it itself)."""
    if os.environ.get(ENV, "1") == "0" or (path := socket_path()) is None:
        return None
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _address(path) as address:
            client.connect(address)
    except OSError:  # none listens (a socket left by one that ended)
        client.close()
        return None
    with client:
        order = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)})
        data = order.encode()
        try:
            socket.send_fds(client, [struct.pack("!I", len(data)) + data], [0, 1, 2])
        except OSError:  # no stdin, stdout or stderr to pass (closed): run it here
            return None
        reader = client.makefile("rb")
        started = _message(reader)
        if started is None:
            return None  # it refused us before starting anything: run it here
        pid = started["pid"]
        forward = {s: signal.signal(s, lambda signum, _f: _send(pid, signum))
                   for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            ended = _message(reader)
        finally:
            for signum, previous in forward.items():
                signal.signal(signum, previous)
    if ended is None:
        print(f"runbook: the warm process's run (pid {pid}) ended without an exit status",
              file=sys.stderr)
        return 1
    return ended["exit"]


def _send(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _message(reader) -> dict | None:
    while True:
        try:
            line = reader.readline()
        except InterruptedError:
            continue
        return json.loads(line) if line else None


# --- the warm process: `runbook warm` --------------------------------------------------------

def serve(main: Callable[[list[str]], int], idle: float = IDLE, echo=print) -> int:
    """Listen for runs until `idle` seconds pass without one; `main` runs one (the CLI)."""
    path = socket_path(create=True)
    if path is None:
        echo(f"runbook warm: {folder()} is not private to this user: not used",
             file=sys.stderr)
        return 1
    if (other := [i for i in _serving(path.parent) if i["digest"] == path.stem]):
        echo(f"runbook warm: pid {other[0]['pid']} already serves this code of {PROJECT} "
             "(`runbook warm --stop` ends it)", file=sys.stderr)
        return 1
    from runbook.run import runner, seed  # what a run loads, loaded once here

    runner.preload()
    seed.enable()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a socket left by a warm process of this code that ended
    with _address(path) as address:
        listener.bind(address)
    ours = path.stat().st_ino
    listener.listen(16)
    note = _note(path, ours, idle)
    signal.signal(signal.SIGTERM, _stopped)  # `runbook warm --stop`: tidy up as on Ctrl-C
    echo(f"runbook warm: serving runs of {PROJECT} on {path} (idle limit {idle:.0f} s)",
         flush=True)
    children: set[int] = set()
    last = time.monotonic()
    try:
        while children or time.monotonic() - last < idle:
            ready, _, _ = select.select([listener], [], [], 1.0)
            children -= _reaped(children, echo)
            if ready:
                connection, _ = listener.accept()
                if (pid := _fork_run(connection, main)) is not None:
                    echo(f"runbook warm: run {pid} started", flush=True)
                    children.add(pid)
                    last = time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_ino == ours:  # not one a newer warm process bound since
                path.unlink()
                note.unlink()
        listener.close()
    return 0


def _note(path: Path, inode: int, idle: float) -> Path:
    """`<digest>.json` beside the socket: who serves it, for --status and --stop."""
    note = path.with_suffix(".json")
    info = {"pid": os.getpid(), "inode": inode, "project": str(PROJECT), "idle": idle,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = note.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info) + "\n")
    tmp.replace(note)
    return note


def _stopped(signum, frame) -> None:
    raise KeyboardInterrupt


def _reaped(children: set[int], echo) -> set[int]:
    """The runs that have ended (their processes reaped), each said in the warm log."""
    ended = set()
    for pid in children:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            ended.add(pid)
            echo(f"runbook warm: run {pid} ended, exit status "
                 f"{os.waitstatus_to_exitcode(status)}", flush=True)
    return ended


def _fork_run(connection: socket.socket, main) -> int | None:
    """Fork the run's process for a caller of this user; its pid (None if refused)."""
    with connection:
        _, uid, _ = struct.unpack("3i", connection.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid != os.getuid():
            return None
        pid = os.fork()
        if pid == 0:
            _run_child(connection, main)  # never returns
        return pid


def _run_child(connection: socket.socket, main) -> None:
    code = forking.outcome(lambda: _serve_caller(connection, main))
    signal.signal(signal.SIGIO, signal.SIG_IGN)  # the caller may go once it has this
    with contextlib.suppress(OSError):
        connection.sendall(json.dumps({"exit": code}).encode() + b"\n")
    os._exit(code)


def _serve_caller(connection: socket.socket, main) -> int:
    os.setsid()  # not in the warm process's session: its end is not the run's
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    order = _receive(connection)
    forking.take_over(order["cwd"], order["env"], order["argv"])
    connection.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    _end_with_caller(connection)
    return main(order["argv"])


def _end_with_caller(connection: socket.socket) -> None:
    """Should the caller die (killed, not interrupted), this run ends as a cold run would
    with it (SIGTERM; its kernel follows, the lock goes with the connection): the caller
    sends nothing more, so the socket turning readable (SIGIO) means it has gone."""
    def gone(signum, frame):
        try:
            if connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                os.kill(os.getpid(), signal.SIGTERM)
        except BlockingIOError:
            pass

    signal.signal(signal.SIGIO, gone)
    fcntl.fcntl(connection.fileno(), fcntl.F_SETOWN, os.getpid())
    flags = fcntl.fcntl(connection.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(connection.fileno(), fcntl.F_SETFL, flags | os.O_ASYNC)


def _receive(connection: socket.socket) -> dict:
    """The caller's order, with its stdin, stdout and stderr put in place of ours."""
    data, fds, _, _ = socket.recv_fds(connection, MAX_ORDER, 3)
    if len(fds) != 3:
        raise OSError("the caller did not pass its stdin, stdout and stderr")
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115  (the caller's, for the run's life)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    size = struct.unpack("!I", data[:4])[0]
    data = data[4:]
    while len(data) < size:
        more = connection.recv(size - len(data))
        if not more:
            raise OSError("the caller's order was cut short")
        data += more
    return json.loads(data)
