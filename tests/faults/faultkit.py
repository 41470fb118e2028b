"""Tools of the fault-injection suite: faults injected into real `runbook run`s on lab hosts.

A run is started as the operator starts it, `runbook run` in a process of its own (in a
session of its own, so a SIGINT sent to its process group is a Ctrl-C in its terminal).
A fault is timed by a *pause* put on the host: a wrapper in front of `mv` (the rename that
ends every atomic write) or of `postfix` (one action: `reload`, `check`) that, the first
time it is hit, writes its pid to PAUSE_MARK and sleeps — the run is then exactly in the
middle of that write or that command, and the fault is injected: the SSH connection cut
from outside (`ss -K`), the kernel SIGKILLed, SIGINT, a reboot, or nothing (a hang).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import labrun
import yaml
from labrun import ssh

PROJECT = Path(__file__).resolve().parents[2]
PAUSE_MARK = "/run/mail-runbook-fault"  # the paused wrapper's pid (/run: gone at a reboot)
ONCE = PAUSE_MARK + ".hit"
MAIN_CF = "/etc/postfix/main.cf"
REAL_POSTFIX = "/usr/sbin/postfix.fault-real"
DRIFTED = "127.0.0.1/32"  # mynetworks set by hand: the next run writes main.cf
FINISH = ["30-configure", "40-start", "50-validate"]  # what completes a run cut short


@dataclass
class Started:
    """A `runbook` command running in its own session; its output goes to files."""

    proc: subprocess.Popen
    out: Path
    err: Path

    def wait(self, timeout: float = 120) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler: where it hangs, to stderr
            time.sleep(1)
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"runbook did not end within {timeout} s: "
                                 f"{self.err.read_text()[-6000:]}") from None
        return code, self.out.read_text(), self.err.read_text()

    def interrupt(self) -> None:
        """Ctrl-C in its terminal: SIGINT to its process group (the kernel has its own)."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def kernel(self) -> int:
        """The pid of the notebook kernel the runner started."""
        for child in _descendants(self.proc.pid):
            if b"runbook.run.kernel" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        raise AssertionError("the runner has no kernel process")


def _descendants(pid: int) -> list[int]:
    found = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return found
    for child in map(int, children):
        found += [child, *_descendants(child)]
    return found


def cli(tmp: Path, *args, name: str = "runbook") -> Started:
    out, err = tmp / f"{name}.out", tmp / f"{name}.err"
    env = os.environ | {"PYTHONPATH": str(PROJECT), "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "runbook.cli", *map(str, args)],
                            stdin=subprocess.DEVNULL, stdout=out.open("w"),
                            stderr=err.open("w"), cwd=PROJECT, env=env,
                            start_new_session=True, preexec_fn=_default_sigint)
    return Started(proc, out, err)


def _default_sigint() -> None:
    """A shell without job control starts background commands with SIGINT ignored (as CI
    may run the suite); the run gets the default handler an operator's terminal gives it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def params_variant(host: dict, tmp: Path, **target) -> Path:
    data = yaml.safe_load(Path(host["params_file"]).read_text())
    data["target"].update(target)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --- pauses on the host ----------------------------------------------------------------------

def _pause(seconds: float, once: bool) -> str:
    guard = f'[ ! -e {ONCE} ] && touch {ONCE} && ' if once else ""
    return f'{guard}echo $$ > {PAUSE_MARK} && sleep {seconds}'


def pause_mv_onto(host: dict, path: str = MAIN_CF, seconds: float = 60, once=True) -> None:
    """The rename of a write (or a restore) onto `path` pauses first."""
    script = (f"#!/bin/sh\n# mail-runbook fault injection (tests/faults)\n"
              f'for last; do :; done\nif [ "$last" = {path} ]; then {_pause(seconds, once)}; fi\n'
              'exec /usr/bin/mv "$@"\n')
    _install(host, "/usr/local/bin/mv", script)


def pause_after_then_before_mv_onto(host: dict, path: str = MAIN_CF, seconds: float = 60) -> None:
    """The first rename onto `path` (the write) is done, then pauses: the file is new and
    its command still runs. Every later one (the restore) pauses before renaming."""
    script = (f"#!/bin/sh\n# mail-runbook fault injection (tests/faults)\n"
              f'for last; do :; done\nif [ "$last" != {path} ]; then exec /usr/bin/mv "$@"; fi\n'
              f'if [ ! -e {ONCE} ]; then touch {ONCE}; /usr/bin/mv "$@" || exit; '
              f'{_pause(seconds, False)}; exit 0; fi\n'
              f'{_pause(seconds, False)}\nexec /usr/bin/mv "$@"\n')
    _install(host, "/usr/local/bin/mv", script)


def pause_postfix(host: dict, action: str, seconds: float = 60) -> None:
    """`postfix ACTION` pauses first (the real postfix is kept beside it)."""
    script = (f"#!/bin/sh\n# mail-runbook fault injection (tests/faults)\n"
              f'if [ "$1" = {action} ]; then {_pause(seconds, True)}; fi\n'
              f'exec {REAL_POSTFIX} "$@"\n')
    ssh(host, f"[ -e {REAL_POSTFIX} ] || /usr/bin/mv /usr/sbin/postfix {REAL_POSTFIX}")
    _install(host, "/usr/sbin/postfix", script)


def _install(host: dict, path: str, script: str) -> None:
    ssh(host, f"rm -f {PAUSE_MARK} {ONCE}; printf %s {shlex.quote(script)} > {path} && "
              f"chmod 755 {path}")


def paused(host: dict, started: Started | None = None, timeout: float = 90) -> int:
    """Wait until a pause is hit; the paused wrapper's pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ssh(host, f"cat {PAUSE_MARK} 2>/dev/null", check=False).strip()
        if found:
            return int(found)
        if started and started.proc.poll() is not None:
            raise AssertionError(f"the run ended before the pause: {started.err.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"no pause was hit within {timeout} s")


def end_pause(host: dict, pid: int) -> None:
    """Kill a paused wrapper and its sleep: the paused command dies unfinished."""
    ssh(host, f"pkill -9 -P {pid}; kill -9 {pid}; rm -f {PAUSE_MARK}", check=False)


def unpause(host: dict) -> None:
    ssh(host, f"rm -f /usr/local/bin/mv {PAUSE_MARK} {ONCE}; if [ -e {REAL_POSTFIX} ]; then "
              f"/usr/bin/mv -f {REAL_POSTFIX} /usr/sbin/postfix; fi")


# --- faults ----------------------------------------------------------------------------------

def cut(host: dict) -> str:
    """Kill every TCP connection from this machine to the host's sshd, from outside."""
    done = subprocess.run(["ss", "-K", "dst", host["address"], "dport", "=", str(host["port"])],
                          capture_output=True, text=True, check=True)
    assert "ESTAB" in done.stdout, f"no SSH connection to {host['address']} was cut"
    return done.stdout


def container_init(host: dict) -> int:
    children = Path(f"/proc/{host['pid']}/task/{host['pid']}/children").read_text().split()
    return int(children[0])


def in_host_mounts(host: dict, script: str) -> str:
    """A shell script in the host's mount namespace, with this machine's privileges (the
    lab host itself may not mount)."""
    done = subprocess.run(["nsenter", "-t", str(container_init(host)), "-m", "sh", "-c", script],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


# --- what must hold after a fault -------------------------------------------------------------

def drift(host: dict) -> str:
    """mynetworks changed by hand, so the next run writes main.cf; main.cf's SHA-256 then."""
    ssh(host, f"postconf -e 'mynetworks = {DRIFTED}'")
    return sha(host)


def sha(host: dict, path: str = MAIN_CF) -> str:
    return ssh(host, f"sha256sum < {path}").split()[0]


def mynetworks(host: dict) -> str:
    return ssh(host, "postconf -h mynetworks").strip()


def strays(host: dict, directory: str = "/etc/postfix") -> list[str]:
    return ssh(host, f"ls -A {directory} | grep '^\\.mail-runbook\\.' || true").split()


def mail_system_answers(host: dict) -> str:
    """Postfix passes `postfix check` and answers SMTP on the host's address: its banner."""
    check = ssh(host, "postfix check 2>&1; echo status=$?")
    assert check.strip().endswith("status=0"), check
    with socket.create_connection((host["address"], 25), timeout=10) as s:
        banner = s.recv(512).decode()
        s.sendall(b"QUIT\r\n")
    assert banner.startswith("220 "), banner
    return banner


def verifies(run_dir: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "runbook.cli", "audit", "verify", str(run_dir)],
                          capture_output=True, text=True, cwd=PROJECT,
                          env=os.environ | {"PYTHONPATH": str(PROJECT)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines()]


def delivered(host: dict, run_dir: Path) -> None:
    """The run's test message is in the recipient's mailbox."""
    probe = next(r for r in records(run_dir) if r["type"] == "probe"
                 and r["stage"] == "50-validate")
    subject = next(line for line in probe["transcript"] if line.startswith("C: Subject: "))
    assert subject[3:] in ssh(host, f"cat /var/mail/{host['mail_user']}")


def backup_of(host: dict, run_dir: Path, path: str = MAIN_CF) -> str:
    """SHA-256 of the run's backup of `path` on the host."""
    name = path.strip("/").replace("/", "__")
    return ssh(host, f"sha256sum < /var/backups/mail-runbook/{run_dir.name}/{name}").split()[0]


def remote_running(host: dict, pid: int) -> bool:
    return ssh(host, f"kill -0 {pid} 2>/dev/null && echo alive", check=False).strip() == "alive"


def sha_of(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


def finish(host: dict, tmp: Path) -> Path:
    """The next run completes: every stage ok, the message delivered, no stray temp file,
    main.cf as the parameters want it."""
    run_dir = labrun.run(tmp, host["params_file"], FINISH)
    assert {s["status"] for s in run_json(run_dir)["stages"].values()} == {"ok"}
    delivered(host, run_dir)
    assert strays(host) == []
    assert mynetworks(host) != DRIFTED
    return run_dir


def wanted_or(host: dict, before: str) -> str:
    """main.cf is whole: as before the run, or as the run meant to write it."""
    now = sha(host)
    assert now == before or mynetworks(host) != DRIFTED, "main.cf is neither old nor new"
    return now
