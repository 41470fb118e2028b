"""What the lab asks of this machine: mounts, loopback addresses, processes and commands."""


import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

from runbook.errors import LabError
from runbook.lab import config
from runbook.lab.config import SSH_PORT, Host

# --- mounts and addresses --------------------------------------------------------------------

def _mounts() -> list[str]:
    # mount points in /proc/mounts escape spaces as \040; our paths have none
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]


def _mounted(path: Path) -> bool:
    return str(path) in _mounts()


def _remove_tree(path: Path) -> None:
    """Remove a host dir or a partial image, never following a mount out of it."""
    if not path.exists():
        return
    # a killed build or host may have left mounts inside (bind mounts of /dev, /proc …)
    for point in sorted((m for m in _mounts() if m.startswith(f"{path}/")), reverse=True):
        _run("umount", point)
    shutil.rmtree(path)


def _address_present(address: str) -> bool:
    return f" {address}/" in _run("ip", "-4", "-o", "addr", "show", "dev", "lo")


def _ensure_inotify_instances(minimum: int) -> None:
    """fs.inotify.max_user_instances at least `minimum` (see config.INOTIFY_INSTANCES)."""
    limit = Path("/proc/sys/fs/inotify/max_user_instances")
    try:
        if int(limit.read_text()) < minimum:
            limit.write_text(f"{minimum}\n")
    except OSError as e:
        raise LabError(f"cannot raise {limit} to {minimum} for the lab's hosts: {e}") from None


def _port_open(address: str) -> bool:
    try:
        socket.create_connection((address, SSH_PORT), timeout=0.5).close()
    except OSError:
        return False
    return True


# --- small helpers ---------------------------------------------------------------------------

def _env() -> dict:
    return {**os.environ, "config.PATH": config.PATH}


def _run(*args, input: str | None = None) -> str:
    argv = [str(arg) for arg in args]
    done = subprocess.run(argv, input=input, capture_output=True, text=True, env=_env())
    if done.returncode:
        detail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise LabError(f"`{' '.join(argv)}` failed: {detail[0]}")
    return done.stdout


def _run_logged(log: Path, lock: int, *args) -> None:
    argv = [str(arg) for arg in args]
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=_env(),
                              pass_fds=(lock,), preexec_fn=_die_with_parent)
    if done.returncode:
        raise LabError(f"`{argv[0]}` failed while building the base image: see {log}"
                       f"{_tail(log)}")


def _die_with_parent() -> None:
    """In a build step: end with the lab command that started it."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _chroot(host: Host, *args, input: str | None = None) -> str:
    return _run("chroot", host.root, *args, input=input)


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file existed with another mode
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _rmdir(path: Path) -> None:
    with suppress(OSError):  # absent or not empty: not ours to force
        path.rmdir()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        last = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return ""
    return "".join(f"\n  {line}" for line in last)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _mask(root: Path, units) -> None:
    for unit in units:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")


def _gid(root: Path, group: str) -> int:
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return int(fields[2])
    raise LabError(f"no group {group} in {root}/etc/group")
