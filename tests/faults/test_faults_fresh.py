"""Faults on a host of their own (deb5, made fresh), in order, each leaving it configured:

- the SSH connection cut from outside while the fresh host installs Postfix: the install
  finishes on the host or is finished by the next run, the services stay held meanwhile,
  and the next run completes with the mail delivered and no `policy-rc.d` of ours left;
- /etc/postfix on a full filesystem when main.cf is written: the stage fails naming the
  write and the disk, main.cf is unchanged byte for byte, no temp file is left;
- the host rebooted in the middle of a write: main.cf unchanged, Postfix back at boot on
  the old configuration, `runbook status` names the unfinished run, and the next run
  removes the stray temp file and completes.
"""

from __future__ import annotations

import time

import labrun
import pytest
from faultkit import (
    MAIN_CF,
    PROJECT,
    cli,
    cut,
    delivered,
    drift,
    finish,
    in_host_mounts,
    mail_system_answers,
    pause_mv_onto,
    paused,
    records,
    run_json,
    sha,
    strays,
    unpause,
    verifies,
)
from labrun import ssh

from runbook import lab

pytestmark = pytest.mark.lab

HOST = "deb5"
STAGES = "configure,start,validate"
SETUP = ["00-preflight", "10-install", "20-enable", "30-configure", "40-start", "50-validate"]


@pytest.fixture(scope="module")
def fresh():
    try:
        return lab.up_host(HOST, checkout=PROJECT, fresh=True)
    except Exception as e:
        pytest.fail(f"the lab could not give a fresh {HOST}: {e}")


@pytest.fixture
def host(fresh):
    yield fresh
    unpause(fresh)


def test_cut_during_the_package_install(host, tmp_path):
    run = cli(tmp_path, "run", host["params_file"], "--stages", "preflight,install",
              "--run-dir", tmp_path / "install")
    deadline = time.monotonic() + 120
    while "dpkg" not in ssh(host, "pgrep -x dpkg >/dev/null && echo dpkg", check=False):
        assert run.proc.poll() is None, f"the install ended first: {run.err.read_text()}"
        assert time.monotonic() < deadline, "dpkg never ran"
        time.sleep(0.1)
    cut(host)
    code, _, err = run.wait()
    assert code == 1 and "cut off" in err and "apt-get install" in err, err
    verifies(tmp_path / "install")
    assert run_json(tmp_path / "install")["stages"]["10-install"]["status"] == "failed"
    # no service was let start meanwhile: Postfix does not run with the package's defaults
    assert "master" not in ssh(host, "ss -Hltnp 'sport = :25'", check=False)
    status = cli(tmp_path, "status", host["params_file"], name="status").wait()
    assert "install" in status[1] and "connection was lost" in status[1], status[1]
    done = labrun.run(tmp_path, host["params_file"], SETUP)
    assert {s["status"] for s in run_json(done)["stages"].values()} == {"ok"}
    delivered(host, done)
    mail_system_answers(host)
    assert ssh(host, "[ -e /usr/sbin/policy-rc.d ] && echo held || echo free").strip() == "free"
    assert ssh(host, "dpkg --audit").strip() == ""  # no package left half-installed


def test_full_filesystem_when_main_cf_is_written(host, tmp_path):
    before = drift(host)
    assert strays(host) == []  # nothing the run could free to make room
    in_host_mounts(host, "set -e; mkdir -p /run/pf-copy; cp -a /etc/postfix/. /run/pf-copy/; "
                         "mount -t tmpfs -o size=2m tmpfs /etc/postfix; "
                         "cp -a /run/pf-copy/. /etc/postfix/; "
                         "dd if=/dev/zero of=/etc/postfix/.fill bs=4k 2>/dev/null || true")
    try:
        failed = labrun.run(tmp_path, host["params_file"], ["30-configure"],
                            expect_failure=True)
        assert sha(host) == before and strays(host) == []
        failure = next(r for r in records(failed) if r["type"] == "operation"
                       and r["status"] == "failed")
        assert "No space left on device" in failure["detail"] and "main.cf" in failure["detail"]
        mail_system_answers(host)
    finally:
        in_host_mounts(host, "rm -f /etc/postfix/.fill; umount /etc/postfix; rm -rf /run/pf-copy")
    verifies(failed)
    assert sha(host) == before
    finish(host, tmp_path)


def test_reboot_mid_stage(host, tmp_path):
    before = drift(host)
    pause_mv_onto(host)
    run = cli(tmp_path, "run", host["params_file"], "--stages", STAGES,
              "--run-dir", tmp_path / "rebooted")
    paused(host, run)
    lab.reboot(host["name"])
    code, _, err = run.wait()
    assert code == 1, err
    assert sha(host) == before  # the rename never happened
    left = strays(host)
    assert len(left) == 1, left
    for _ in range(100):  # Postfix starts at boot
        if "master" in ssh(host, "ss -Hltnp 'sport = :25'", check=False):
            break
        time.sleep(0.1)
    mail_system_answers(host)
    verifies(tmp_path / "rebooted")
    status = cli(tmp_path, "status", host["params_file"], name="status").wait()
    assert "rebooted" in status[1] and "pending backups of unfinished run rebooted" in status[1]
    assert f"{MAIN_CF} (unchanged)" in status[1] and left[0] in status[1], status[1]
    unpause(host)
    done = finish(host, tmp_path)
    recovery = next(r for r in records(done) if r["type"] == "recovery")
    assert recovery["unfinished"] == "rebooted" and len(recovery["removed"]) == 1
