"""Faults during runs on a configured host (the session's `configured_host`, deb4): each case
changes mynetworks by hand so the run has main.cf to write, breaks the run at a chosen
moment, and asserts that nothing is lost:

- the mail system works (`postfix check` passes and Postfix answers SMTP) — the one
  configured before, or the new one;
- main.cf is whole: its content before the run byte for byte (restored where the stage
  could restore it), or the content the run wrote; never a partial file;
- `runbook audit verify` accepts the partial record;
- the next run (configure, start, validate) completes with the test message delivered,
  removing any stray temp file the fault left (recorded in its audit).

The tests run in order and leave the host configured and working as they found it. The
faults that could break a host (a reboot, a filesystem mounted over /etc/postfix) run on a
host of their own: test_faults_fresh.py.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import labrun
import pytest
from faultkit import (
    DRIFTED,
    MAIN_CF,
    backup_of,
    cli,
    cut,
    drift,
    end_pause,
    finish,
    mail_system_answers,
    mynetworks,
    params_variant,
    pause_after_then_before_mv_onto,
    pause_mv_onto,
    pause_postfix,
    paused,
    records,
    remote_running,
    run_json,
    sha,
    strays,
    unpause,
    verifies,
    wanted_or,
)
from labrun import ssh

pytestmark = pytest.mark.lab

STAGES = "configure,start,validate"


@pytest.fixture
def host(configured_host):
    yield configured_host
    unpause(configured_host)


def test_cut_during_a_file_write(host, tmp_path):
    before = drift(host)
    pause_mv_onto(host, seconds=2)
    run = cli(tmp_path, "run", host["params_file"], "--stages", STAGES, "--run-dir",
              tmp_path / "cut")
    pid = paused(host, run)
    cut(host)
    code, _, err = run.wait()
    assert code == 1 and "cut off" in err, err
    while remote_running(host, pid):  # the write outlives its connection and completes
        time.sleep(0.2)
    wanted_or(host, before)
    assert backup_of(host, tmp_path / "cut") == before and strays(host) == []
    mail_system_answers(host)
    verifies(tmp_path / "cut")
    status = cli(tmp_path, "status", host["params_file"], name="status").wait()
    assert status[0] == 0 and "last run on the host: cut," in status[1], status[1]
    assert "its connection was lost" in status[1], status[1]
    assert "pending backups of unfinished run cut" in status[1]
    unpause(host)
    done = finish(host, tmp_path)
    recovery = next(r for r in records(done) if r["type"] == "recovery")
    assert recovery["unfinished"] == "cut" and recovery["ended"] == "lost"


def test_cut_during_postfix_reload(host, tmp_path):
    before = drift(host)
    ssh(host, "postfix reload")  # by hand: the master runs the drift, the run must reload
    master = ssh(host, "cat /var/spool/postfix/pid/master.pid").strip()
    pause_postfix(host, "reload")
    run = cli(tmp_path, "run", host["params_file"], "--stages", "configure,start",
              "--run-dir", tmp_path / "reload")
    pid = paused(host, run)
    cut(host)
    end_pause(host, pid)  # the reload dies with its connection
    code, _, err = run.wait()
    assert code == 1 and "cut off" in err and "reload" in err, err
    # main.cf was written whole by 30-configure; its backup holds the old bytes
    assert mynetworks(host) != DRIFTED and backup_of(host, tmp_path / "reload") == before
    assert ssh(host, "cat /var/spool/postfix/pid/master.pid").strip() == master
    mail_system_answers(host)  # the master never stopped: the old configuration serves
    verifies(tmp_path / "reload")
    unpause(host)
    finish(host, tmp_path)


def test_kernel_killed_mid_stage(host, tmp_path):
    before = drift(host)
    pause_mv_onto(host, seconds=2)
    run = cli(tmp_path, "run", host["params_file"], "--stages", STAGES,
              "--run-dir", tmp_path / "killed")
    paused(host, run)
    os.kill(run.kernel(), signal.SIGKILL)
    code, _, err = run.wait()
    assert code == 1 and "the notebook kernel died" in err, err
    assert run_json(tmp_path / "killed")["state"] == "failed"
    verifies(tmp_path / "killed")
    time.sleep(2.5)  # the paused rename, no longer watched, completes on its own
    wanted_or(host, before)
    mail_system_answers(host)
    unpause(host)
    finish(host, tmp_path)


def test_ctrl_c_once_undoes_the_stage(host, tmp_path):
    before = drift(host)
    pause_mv_onto(host)
    run = cli(tmp_path, "run", host["params_file"], "--stages", STAGES,
              "--run-dir", tmp_path / "once")
    pid = paused(host, run)
    run.interrupt()
    code, out, err = run.wait(60)
    assert code == 130, err
    assert "interrupted during stage 30-configure; its edited files were restored" in err
    assert "Ctrl-C again to stop at once" in out
    assert sha(host) == before  # restored byte for byte from the run's backup
    assert not remote_running(host, pid)  # the paused write was killed on the host
    got = records(tmp_path / "once")
    assert any(r["type"] == "command" and r.get("interrupted") and r.get("killed")
               for r in got)
    assert any(r["type"] == "restore" and r["path"] == MAIN_CF for r in got)
    assert run_json(tmp_path / "once")["stages"]["30-configure"]["status"] == "interrupted"
    assert run_json(tmp_path / "once")["state"] == "interrupted"
    mail_system_answers(host)
    verifies(tmp_path / "once")
    unpause(host)
    finish(host, tmp_path)


def test_ctrl_c_twice_stops_at_once(host, tmp_path):
    before = drift(host)
    pause_after_then_before_mv_onto(host)  # main.cf written; then its restore pauses
    run = cli(tmp_path, "run", host["params_file"], "--stages", STAGES,
              "--run-dir", tmp_path / "twice")
    first = paused(host, run)
    run.interrupt()
    deadline = time.monotonic() + 30
    while (second := paused(host, run)) == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert second != first, "the restore never started"
    began = time.monotonic()
    run.interrupt()
    code, _, err = run.wait(30)
    assert code == 130 and time.monotonic() - began < 10, err
    assert run_json(tmp_path / "twice")["state"] == "interrupted"
    end_pause(host, second)  # the restore's rename, cut off with the kernel, never happens
    assert sha(host) != before and mynetworks(host) != DRIFTED  # the run's main.cf, whole
    assert backup_of(host, tmp_path / "twice") == before
    mail_system_answers(host)
    verifies(tmp_path / "twice")
    unpause(host)
    finish(host, tmp_path)


def test_bad_main_cf_value_before_start(host, tmp_path):
    """(The runbook's own edits failing `postfix check`, restored byte for byte:
    tests/test_postfix_stages.py::test_failed_check_restores_main_cf_byte_for_byte.)"""
    master = ssh(host, "cat /var/spool/postfix/pid/master.pid").strip()
    ssh(host, "postconf -e 'myhostname = bad..name'")
    before = sha(host)
    failed = labrun.run(tmp_path, host["params_file"], ["40-start"], expect_failure=True)
    failure = next(r for r in records(failed) if r["type"] == "operation"
                   and r["status"] == "failed")
    assert "G14" in failure["name"] and "myhostname" in failure["detail"], failure
    assert sha(host) == before
    # the previous configuration still serves: 40-start stopped before touching Postfix
    assert ssh(host, "cat /var/spool/postfix/pid/master.pid").strip() == master
    with socket.create_connection((host["address"], 25), timeout=10) as s:
        assert s.recv(512).startswith(b"220 ")
    verifies(failed)
    finish(host, tmp_path)


def test_hanging_command_is_killed_and_a_second_run_refused(host, tmp_path):
    before = sha(host)
    pause_postfix(host, "check", seconds=313)
    params = params_variant(host, tmp_path, command_timeout=4)
    run = cli(tmp_path, "run", params, "--stages", "start", "--run-dir", tmp_path / "hang")
    pid = paused(host, run)
    second = cli(tmp_path, "run", host["params_file"], "--stages", "preflight",
                 "--run-dir", tmp_path / "second", name="second").wait(60)
    assert second[0] == 1 and "is locked by another run (hang)" in second[2], second[2]
    assert not (tmp_path / "second").exists() and sha(host) == before
    code, _, err = run.wait(60)
    assert code == 1 and "postfix check" in err and "timed out after 4" in err, err
    assert "its remote processes were killed" in err
    assert not remote_running(host, pid)
    assert ssh(host, "ps -eo args | grep -c '^sleep 313$' || true").strip() == "0"
    timed = next(r for r in records(tmp_path / "hang") if r.get("timed_out"))
    assert timed["killed"] is True and "postfix check" in timed["command"]
    verifies(tmp_path / "hang")
    unpause(host)
    mail_system_answers(host)
    finish(host, tmp_path)
