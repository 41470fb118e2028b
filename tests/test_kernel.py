"""The run's kernel (run/kernel.py): started before anything else by `runbook run`, it holds
the target's lock on the one SSH connection every stage uses.

The first tests need no lab; the last runs against the lab host deb10 (root)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from labrun import booted, ssh

from runbook import errors
from runbook.run import kernel, runner

PROJECT = Path(__file__).resolve().parent.parent
HOST = "deb10"


def test_errors_from_the_kernel_are_raised_again_as_their_own_class():
    carried = kernel._carried("HostKeyChanged", "127.0.0.9: the key differs")
    assert type(carried) is errors.HostKeyChanged and str(carried) == "127.0.0.9: the key differs"
    assert type(kernel._carried("TargetBusy", "locked by r1")) is errors.TargetBusy
    other = kernel._carried("ZeroDivisionError", "division by zero")
    assert type(other) is errors.RunbookError and "ZeroDivisionError" in str(other)
    # never a class that is not an error of a connection or the lock
    assert type(kernel._carried("ParamsError", "x")) is errors.RunbookError


def kernels_under(folder: Path) -> list[str]:
    """Live kernels whose connection file is under `folder`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(folder) in argv and "runbook.run.kernel" in argv:
            found.append(argv.replace("\0", " "))
    return found


def test_bad_params_are_refused_naming_the_field_and_the_early_kernel_is_gone(tmp_path):
    bad = yaml.safe_load((PROJECT / "params/example-debian.yaml").read_text())
    bad["postfix"]["mydomain"] = "example.com; touch /tmp/x"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    private = tmp_path / "tmp"  # where the kernel's sockets and connection file go
    private.mkdir()
    env = os.environ | {"TMPDIR": str(private)}
    cli = subprocess.run([sys.executable, "-m", "runbook.cli", "run", str(path), "--run-dir",
                          str(tmp_path / "run")], capture_output=True, text=True, env=env,
                         cwd=PROJECT, timeout=60)
    assert cli.returncode == 2 and "postfix.mydomain" in cli.stderr
    assert not (tmp_path / "run").exists()
    assert kernels_under(private) == [], "the kernel started first was left running"
    assert list(private.iterdir()) == [], "its private folder was left behind"


SEEDED = """
import json, os, sys, threading
import asyncio
from runbook.run import kernel, seed
seed.enable()
asyncio.set_event_loop(asyncio.new_event_loop())  # the parent's, never the kernel's
if sys.argv[1] == "thread":
    threading.Thread(target=threading.Event().wait, daemon=True).start()
started = kernel.Kernel()
km = started.ready()
kc = km.shared_kc
kc.execute("import os; print(os.getpid(), os.getppid())")
while (msg := kc.get_iopub_msg(timeout=10))["msg_type"] != "stream":
    pass
pid, ppid = map(int, msg["content"]["text"].split())
print(json.dumps({"provisioner": type(km.provisioner).__name__, "pid": pid, "ppid": ppid,
                  "me": os.getpid()}), flush=True)
if sys.argv[1] == "die":
    os._exit(0)  # no stop: the kernel must notice its parent is gone
started.stop()
print(json.dumps({"after_stop": os.path.exists(f"/proc/{pid}")}), flush=True)
"""


def seeded(how: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", SEEDED, how], capture_output=True, text=True,
                         cwd=PROJECT, timeout=60)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.1)
    return False


def test_a_process_with_the_kernel_loaded_forks_its_kernel_as_its_own_child():
    started, stopped = seeded("stop")
    assert started["provisioner"] == "SeedProvisioner"
    assert started["ppid"] == started["me"] != started["pid"]
    assert stopped == {"after_stop": False}, "stop() reaps the forked kernel"


def test_a_forked_kernel_ends_when_the_process_that_forked_it_dies():
    started, = seeded("die")
    assert gone_within(started["pid"], 5), "the kernel outlived its runner"


def test_a_process_that_did_not_enable_it_starts_its_kernel_afresh():
    check = ("import runbook.run.seed; from runbook.run import kernel; k = kernel.Kernel(); "
             "k.ready(); print(type(k.km.provisioner).__name__); k.stop()")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         cwd=PROJECT, timeout=60)
    assert out.stdout.strip() == "LocalProvisioner", out.stderr


def test_a_process_with_threads_starts_its_kernel_afresh():
    started, stopped = seeded("thread")
    assert started["provisioner"] == "LocalProvisioner"
    assert stopped == {"after_stop": False}


@pytest.fixture(scope="module")
def host() -> dict:
    return booted(HOST)


def accepted(host: dict) -> int:
    """SSH logins sshd has accepted on the host so far (this one included)."""
    out = ssh(host, "journalctl -q --no-pager _COMM=sshd | grep -c 'Accepted publickey' || true")
    return int(out.strip() or 0)


@pytest.mark.lab
def test_one_connection_serves_the_lock_and_every_stage(host, tmp_path):
    before = accepted(host)
    run_dir = runner.run(host["params_file"], stages=["preflight"], runs_root=tmp_path,
                         echo=lambda *a, **k: None)
    # the run's own connection, and the one that counts again
    assert accepted(host) - before == 2
    assert run_dir.exists()
    # opened for the lock before any stage, the connection is still in the record once
    records = [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines()]
    (connection,) = [r for r in records if r["type"] == "connection"]
    assert connection["stage"] == "00-preflight" and connection["hops"], connection
    journal = ssh(host, "tail -n 2 /var/backups/mail-runbook/JOURNAL")
    assert re.search(rf"\t{re.escape(run_dir.name)}\tstart\n.*\t{re.escape(run_dir.name)}"
                     r"\tend ok$", journal.strip(), re.S), journal


def test_the_fleets_fork_server_preload_loads_the_kernel_and_the_runs_caches():
    """A preload module that fails to import is passed over by multiprocessing in silence:
    this is the check that it loads (fleet/preload.py, job.py)."""
    check = ("import sys, runbook.fleet.preload, nbformat.validator as v, "
             "runbook.report.render as r; "
             "print(runbook.run.seed.can_fork(), 'ipykernel.kernelapp' in sys.modules, "
             "len(v.validators) >= 1, len(r.environment().cache) >= 2)")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         cwd=PROJECT, timeout=60)
    assert out.stdout.split() == ["True"] * 4, out.stderr


def test_ctrl_c_to_the_kernel_cancels_an_awaited_cell_and_is_ignored_elsewhere():
    """run/batch_kernel.py: an interrupt outside a cell's awaited code used to be caught by
    ipykernel with no reply sent, and the runner waited for ever."""
    with kernel.Kernel() as started:
        kc = started.ready().shared_kc

        def interrupted(code: str, after: float) -> dict:
            msg_id = kc.execute(code)
            time.sleep(after)
            started.km.interrupt_kernel()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                reply = kernel._reply(kc.get_shell_msg, msg_id, 1.0)
                if reply:
                    return reply["content"]
            raise AssertionError(f"no reply to {code!r} after an interrupt")

        # (the loop must wake to see the signal, which another of the kernel's threads may
        # have taken: a cell that awaits in short steps, as a remote command's output does)
        awaited = interrupted("import asyncio\nfor _ in range(300):\n"
                              "    await asyncio.sleep(0.1)", 0.5)
        assert awaited["status"] == "error" and awaited["ename"] == "CancelledError"
        plain = interrupted("import time\ntime.sleep(1.5)\n'slept'", 0.5)
        assert plain["status"] == "ok", plain  # not broken off halfway through
        for _ in range(20):  # right as a request is taken: it gets its reply all the same
            assert interrupted("1 + 1", 0)["status"] in ("ok", "error")
