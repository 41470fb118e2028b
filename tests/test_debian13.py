"""The default run on a real Debian 13 (trixie) lab host: Postfix 3.10, the journal as the
mail log (no rsyslog), Dovecot 2.4's settings; then a second run that changes nothing.

One fresh host for the module, trixie1 (127.0.0.71); the base image is bootstrapped from
this machine's own mirror the first time (`runbook lab up --flavor debian --release 13`).
They need root and the lab; they fail (never skip) when the lab cannot start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import labrun
import pytest
from labrun import audit, operations, ssh

from runbook import lab

pytestmark = pytest.mark.lab

HOST = "trixie1"
DEFAULT = ["00-preflight", "10-install", "20-enable", "30-configure", "40-start",
           "50-validate", "60-harden", "70-dovecot"]
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def host() -> dict:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root: they boot real target hosts (run `make test` as root)")
    try:
        return lab.up_host(HOST, release="13", checkout=Path(__file__).parents[1], fresh=True)
    except Exception as e:  # the message says what is missing and how to fix it
        pytest.fail(f"the lab could not start {HOST}: {e}")


@pytest.fixture(scope="module")
def first_run(host, tmp_path_factory) -> Path:
    return labrun.run(tmp_path_factory.mktemp("trixie"), host["params_file"], DEFAULT,
                      timings=TIMINGS)


def test_the_host_is_debian_13_without_a_syslog_daemon(host):
    assert 'VERSION_ID="13"' in ssh(host, "cat /etc/os-release")
    assert ssh(host, "dpkg-query -W -f='${db:Status-Abbrev}' rsyslog 2>&1",
               check=False).strip() != "ii"


def test_default_run_delivers_and_logs_in_with_dovecot(host, first_run):
    run_json = json.loads((first_run / "run.json").read_text())
    assert list(run_json["stages"]) == DEFAULT
    assert all(s["status"] == "ok" for s in run_json["stages"].values()), run_json["stages"]
    assert not operations(first_run, "failed")
    assert ssh(host, "postconf -h mail_version").startswith("3.10.")
    # G18 read the journal, and the journal shows the delivery
    probe = next(r for r in audit(first_run) if r["type"] == "probe"
                 and r["stage"] == "50-validate")
    qid = next(line for line in probe["transcript"] if "queued as" in line).rsplit(" ", 1)[1]
    log = ssh(host, f"journalctl -q --no-pager SYSLOG_FACILITY=2 | grep -F ' {qid}: '")
    assert "relay=local" in log and "status=sent" in log, log
    follow = next(r for r in operations(first_run) if r["name"].startswith("G18 "))
    assert follow["status"] == "ok" and "status=sent" in follow["detail"]
    assert ssh(host, "test -e /var/log/mail.log && echo yes || echo no").strip() == "no"
    skipped = {r["name"][:3]: r["detail"] for r in operations(first_run, "skipped")}
    assert "journal" in skipped["G5 "] and "journal" in skipped["G8 "]
    # Dovecot 2.4: its own setting names, and the IMAP login over TLS found the message
    conf = ssh(host, "cat /etc/dovecot/conf.d/99-mail-runbook.conf")
    assert "mail_driver = mbox" in conf and "mail_location" not in conf
    login = next(r for r in operations(first_run) if r["name"].startswith("G22 IMAP login"))
    assert login["status"] == "ok" and "over TLS" in login["detail"], login
    refused = next(r for r in operations(first_run)
                   if r["name"].startswith("G22 plaintext login"))
    assert refused["status"] == "ok" and "refused" in refused["detail"], refused


def test_second_run_changes_nothing(host, first_run, tmp_path):
    again = labrun.run(tmp_path, host["params_file"], DEFAULT, timings=TIMINGS)
    changed = operations(again, "changed")
    assert changed == [], [r["name"] for r in changed]
    stages = json.loads((again / "run.json").read_text())["stages"]
    assert all(s["status"] == "ok" for s in stages.values())
    assert sum(s["changed"] for s in stages.values()) == 0
