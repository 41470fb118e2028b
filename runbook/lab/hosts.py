"""One host's life: create (overlay, keys, sshd, mail user), boot with systemd-nspawn, wait
for a real SSH login, stop cleanly; its state and its params file."""


import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from contextlib import suppress
from pathlib import Path

from runbook.errors import LabError
from runbook.lab import config
from runbook.lab.config import (
    BOOT_TIMEOUT,
    EMULATION_MARKER,
    ETC_HOSTS,
    HALT_TIMEOUT,
    INOTIFY_INSTANCES,
    MAIL_USER,
    NSPAWN_PROPAGATE,
    PARAMS,
    PARAMS_GUIDE_POSTFIX,
    SSH_PORT,
    SSHD_CONFIG,
    Host,
    _record,
    _save_record,
    _update_record,
)
from runbook.lab.image import _lowers
from runbook.lab.system import (
    _address_present,
    _chroot,
    _ensure_inotify_instances,
    _env,
    _mounted,
    _port_open,
    _remove_tree,
    _rmdir,
    _run,
    _tail,
    _write_secret,
)

# --- one host's life: create, boot, wait, stop -----------------------------------------------

def _create(host: Host) -> None:
    """A fresh host: empty upper dir over the base, own identity, keys, users."""
    _remove_tree(host.dir)
    for path in (host.upper, host.work, host.root):
        path.mkdir(parents=True)
    _mount(host)
    _configure(host)
    _save_record(host, {"name": host.name, "flavor": host.flavor.name,
                        "release": host.flavor.release, "address": host.address,
                        "emulated": host.flavor.emulated,
                        "lowers": [str(path) for path in host.flavor.lowers]})


def _configure(host: Host) -> None:
    """Make the merged root this host: done from the machine before its first boot."""
    root = host.root
    (root / "etc/hostname").write_text(f"{host.name}\n")
    (root / "etc/hosts").write_text(ETC_HOSTS.format(address=host.address, name=host.name))
    (root / "etc/machine-id").write_text(f"{uuid.uuid4().hex}\n")
    _run("ssh-keygen", "-A", "-f", root)
    # OpenBSD's installer answers "no" to root logins by default: there, the admin uses doas
    root_login = "prohibit-password" if host.flavor.login_user == "root" else "no"
    (root / "etc/ssh/sshd_config.d/mail-runbook-lab.conf").write_text(
        SSHD_CONFIG.format(address=host.address, port=SSH_PORT, root_login=root_login))
    _authorize(root / "root", 0, 0)
    if host.flavor.login_user != "root":
        user = host.flavor.login_user
        uid = int(_chroot(host, "id", "-u", user))
        _authorize(root / "home" / user, uid, int(_chroot(host, "id", "-g", user)))
    keys = sorted((root / "etc/ssh").glob("ssh_host_*_key.pub"))
    host.known_hosts.write_text("".join(
        f"{host.address} {' '.join(key.read_text().split()[:2])}\n" for key in keys))
    if host.flavor.emulated:
        (root / "etc/mail-runbook-emulation").write_text(EMULATION_MARKER.format(
            release=host.flavor.release, name=host.name, address=host.address))
    _add_mail_user(host)


def _authorize(home: Path, uid: int, gid: int) -> None:
    """The lab's key may log in as the owner of `home`."""
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    _write_secret(ssh_dir / "authorized_keys", config.KEY.with_suffix(".pub").read_text())
    for path in (ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(path, uid, gid)


def _add_mail_user(host: Host) -> None:
    password = secrets.token_urlsafe(18)
    _chroot(host, "useradd", "-m", "-G", "mail", MAIL_USER)
    _chroot(host, "chpasswd", input=f"{MAIL_USER}:{password}\n")
    _chroot(host, "install", "-o", MAIL_USER, "-g", "mail", "-m", "660", "/dev/null",
            f"/var/mail/{MAIL_USER}")
    _write_secret(host.password_file, f"{password}\n")


def _boot(host: Host) -> None:
    _ensure_inotify_instances(INOTIFY_INSTANCES)
    _mount(host)
    _add_address(host)
    (host.dir / "debs-upper").mkdir(exist_ok=True)
    nspawn = shutil.which("systemd-nspawn", path=config.PATH)
    with host.log_file.open("a") as log:  # kept across boots: why did the last one end?
        log.write(f"--- boot {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    args = ["systemd-nspawn", "--quiet", "--boot", f"--machine={host.name}",
            f"--directory={host.root}",
            # The shared .deb cache as the lower layer of a per-host overlay: every host
            # sees the pre-fetched packages, but apt's lock file is its own (a plain bind
            # mount shares the lock, and two hosts could never install at once).
            f"--overlay={config.DEBS}:{host.dir / 'debs-upper'}:/var/cache/apt/archives",
            # without these two it fails with "Failed to open system bus" when the machine
            # has no systemd/machined to register with
            "--register=no", "--keep-unit",
            "--link-journal=no", "--setenv=SYSTEMD_COLORS=0"]
    # setsid: the host outlives this process and is not hit by a ^C in its terminal
    _keep_fds_to_ourselves()
    pid = os.posix_spawn(nspawn, args, {"PATH": config.PATH}, setsid=True, file_actions=[
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(host.log_file), os.O_WRONLY | os.O_APPEND, 0),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ])
    host.pid_file.write_text(f"{pid}\n")
    # /proc/PID/cmdline reads empty for an instant after exec; let it show nspawn's
    _wait_while(lambda: _alive(pid) and not _running(host), 2)


def _keep_fds_to_ourselves() -> None:
    """Mark every descriptor beyond stdio close-on-exec before a host is spawned: a host
    lives for hours, and one that inherits, say, the fd of `flock LOCKFILE runbook lab up`
    holds that lock for as long as it runs."""
    for name in os.listdir("/proc/self/fd"):
        with suppress(OSError):  # the listing's own descriptor is gone by now
            if int(name) > 2:
                os.set_inheritable(int(name), False)


def _wait_ready(host: Host) -> None:
    """Return once root can log in over SSH with strict host-key checking and boot is over."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if not _running(host):
            raise LabError(f"lab host {host.name} stopped while booting: see {host.log_file}"
                           f"{_tail(host.log_file)}")
        if _port_open(host.address) and _ssh_login(host):
            return
        time.sleep(0.05)
    raise LabError(f"lab host {host.name} did not accept an SSH login within {BOOT_TIMEOUT:.0f} s:"
                   f" see {host.log_file}, or replace it with `runbook lab reset {host.name}`")


def _ssh_login(host: Host) -> bool:
    # `is-system-running --wait` returns when boot is over, so services are settled too;
    # exit status 255 is ssh's own failure, anything else means the login worked
    try:
        done = subprocess.run(
            ["ssh", "-F", "/dev/null", "-i", str(config.KEY), "-p", str(SSH_PORT),
             "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5",
             "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={host.known_hosts}",
             "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
             f"{host.flavor.login_user}@{host.address}", "systemctl is-system-running --wait"],
            stdin=subprocess.DEVNULL, capture_output=True, env=_env(), timeout=BOOT_TIMEOUT)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode != 255


def _stop(host: Host) -> bool:
    """Halt the host and remove its process, mount and address; True if any was there."""
    found = False
    pid = _nspawn_pid(host)
    if pid:
        found = True
        _signal(pid, signal.SIGTERM)  # nspawn asks the host's systemd for a clean halt
        if not _wait_while(lambda: _alive(pid), HALT_TIMEOUT):
            _signal(pid, signal.SIGKILL)
            _wait_while(lambda: _alive(pid), 5)
    # A host whose nspawn was SIGKILLed keeps running on its own (its init is reparented),
    # so find its processes by their root directory.
    if _processes_in(host.root):
        found = True
        for leftover in _processes_in(host.root):
            _signal(leftover, signal.SIGKILL)
        if not _wait_while(lambda: _processes_in(host.root), 5):
            raise LabError(f"processes of lab host {host.name} survive SIGKILL: "
                           f"{_processes_in(host.root)}")
    if _mounted(host.root):
        found = True
        _run("umount", host.root)
    if _record(host).get("address_added"):
        found = True
        if _address_present(host.address):
            _run("ip", "addr", "del", f"{host.address}/8", "dev", "lo")
        _update_record(host, address_added=False)
    host.pid_file.unlink(missing_ok=True)
    _rmdir(NSPAWN_PROPAGATE / host.name)
    return found


# --- host state ------------------------------------------------------------------------------

def _status(host: Host) -> dict:
    pid = _nspawn_pid(host)
    return {
        "name": host.name,
        "address": host.address,
        "port": SSH_PORT,
        "user": host.flavor.login_user,
        "key_file": str(config.KEY),
        "known_hosts": str(host.known_hosts),
        "params_file": _record(host).get("params_file"),
        "running": pid is not None,
        "flavor": host.flavor.name,
        "release": host.flavor.release,
        "emulated": host.flavor.emulated,
        "privilege": host.flavor.privilege,
        "mail_user": MAIL_USER,
        "mail_password_file": str(host.password_file),
        "pid": pid,
        "root": str(host.root),
        "log_file": str(host.log_file),
    }


def _write_params(host: Host, path: Path) -> None:
    kind = host.flavor
    emulation_note = platform_extra = postfix_extra = ""
    if kind.emulated:
        emulation_note = ("\n# The host is an emulated OpenBSD (Debian underneath): see "
                          "docs/openbsd-emulation.md.")
        package = "postfix-2.8.7-mysql" if kind.release == "5.0" else "postfix"
        platform_extra = f"\n  postfix_package: {package}"
        if kind.release == "5.0":
            postfix_extra = PARAMS_GUIDE_POSTFIX
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PARAMS.format(
        name=host.name, address=host.address, port=SSH_PORT, key_file=config.KEY,
        known_hosts=host.known_hosts, flavor=kind.name, release=kind.release,
        user=kind.login_user, privilege=kind.privilege, mail_user=MAIL_USER,
        password_file=host.password_file, emulation_note=emulation_note,
        platform_extra=platform_extra, postfix_extra=postfix_extra))
    _update_record(host, params_file=str(path.resolve()))


def _running(host: Host) -> bool:
    return _nspawn_pid(host) is not None


def _nspawn_pid(host: Host) -> int | None:
    """The pid of this host's nspawn if it is really running (pid files outlive processes)."""
    try:
        pid = int(host.pid_file.read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except (OSError, ValueError):
        return None
    is_ours = Path(argv[0]).name == "systemd-nspawn" and f"--directory={host.root}" in argv
    return pid if is_ours and _alive(pid) else None


def _alive(pid: int) -> bool:
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child that has exited
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _processes_in(root: Path) -> list[int]:
    """Pids of the processes whose root directory is `root` (the host's own processes)."""
    try:
        want = root.stat()
    except FileNotFoundError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            seen = (entry / "root").stat() if entry.name.isdigit() else None
        except OSError:
            continue  # gone meanwhile
        if seen and (seen.st_dev, seen.st_ino) == (want.st_dev, want.st_ino):
            pids.append(int(entry.name))
    return pids


def _wait_while(condition, timeout: float) -> bool:
    """Wait until `condition()` is false; False if it still held at the timeout."""
    deadline = time.monotonic() + timeout
    while condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _signal(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError):  # it may have ended meanwhile
        os.kill(pid, signum)


def _mount(host: Host) -> None:
    if not _mounted(host.root):
        lowers = ":".join(str(path) for path in _lowers(host))
        _run("mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lowers},upperdir={host.upper},workdir={host.work}", host.root)


def _add_address(host: Host) -> None:
    # Postfix refuses inet_interfaces = 127.0.0.N unless the address is on an interface
    if _address_present(host.address):
        return
    _update_record(host, address_added=True)  # before adding: never leak an address we added
    _run("ip", "addr", "add", f"{host.address}/8", "dev", "lo")
