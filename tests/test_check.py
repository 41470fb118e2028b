"""`runbook check`: a dry run of the stages that lists every drifted setting and file.

The lab part runs against a configured host (the session's `configured_host`: fresh deb4
after a whole default run, signed and anchored, so that record is checked here too).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from labrun import ssh

from runbook.audit import Audit
from runbook.run import check

PROJECT = Path(__file__).resolve().parent.parent


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runbook.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=PROJECT)


def test_drift_is_read_from_the_latest_attempt_of_each_stage(tmp_path):
    audit = Audit(tmp_path, display=False)
    would = ["edit /etc/postfix/main.cf    # set mynetworks"]
    audit.record("stage", stage="30-configure", event="start")
    audit.record("operation", stage="30-configure", name="G9 identity", status="skipped",
                 would=["edit /etc/postfix/main.cf    # set myhostname"])
    audit.record("stage", stage="30-configure", event="start")  # resumed: counts alone
    audit.record("operation", stage="30-configure", name="G10 trusted networks",
                 status="skipped", would=would)
    audit.record("operation", stage="30-configure", name="G11 aliases", status="ok")
    audit.record("stage", stage="40-start", event="start")
    audit.record("operation", stage="40-start", name="G16 reload", status="skipped",
                 would=["$ postfix reload    # onto the changed main.cf"])
    found = check.drifted(tmp_path)
    assert [(d.stage, d.operation, d.changes) for d in found] == [
        ("30-configure", "G10 trusted networks", would),
        ("40-start", "G16 reload", ["$ postfix reload    # onto the changed main.cf"])]
    text = check.HostCheck("mx1", tmp_path, found).report()
    assert text.startswith("mx1: DRIFT, 2 operation(s)") and "set mynetworks" in text
    assert check.HostCheck("mx1", tmp_path).report().startswith("mx1: in step")


def test_bad_parameters_are_refused_before_connecting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("target: {host: 'mx1; reboot'}\npostfix: {mydomain: example.org}\n")
    done = cli("check", bad, "--stages", "preflight", "--runs", tmp_path / "runs")
    assert done.returncode == 2 and "target.host" in done.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.lab
def test_a_configured_host_is_in_step_and_its_signed_record_verifies(configured_host):
    host = configured_host
    done = cli("audit", "verify", host["record"], "--allowed-signers", host["allowed_signers"],
               "--anchor", host["anchor"], "--require-signature")
    assert done.returncode == 0, done.stderr
    assert "signed by operator@lab.test" in done.stdout and "anchor: 1 entry" in done.stdout
    signed = json.loads((host["record"] / "head.json").read_text())
    assert len(signed["notebooks"]) == 8  # 00 … 70, each executed notebook's digest
    done = cli("check", host["params_file"], "--runs", host["home"] / "checks")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "in step, nothing would change" in done.stdout


@pytest.mark.lab
def test_mynetworks_changed_by_hand_is_drift_named(configured_host):
    host = configured_host
    before = ssh(host, "postconf -h mynetworks").strip()
    ssh(host, "postconf -e 'mynetworks = 127.0.0.0/8 10.0.0.0/8'")
    try:
        done = cli("check", host["params_file"], "--runs", host["home"] / "checks")
        assert done.returncode == check.DRIFT, done.stdout + done.stderr
        assert "DRIFT" in done.stdout and "set mynetworks" in done.stdout, done.stdout
        assert "30-configure · G10" in done.stdout
        # a check changes nothing
        assert ssh(host, "postconf -h mynetworks").strip() == "127.0.0.0/8 10.0.0.0/8"
    finally:
        ssh(host, f"postconf -e 'mynetworks = {before}' && postfix reload")
    assert cli("check", host["params_file"], "--stages", "configure",
               "--runs", host["home"] / "checks").returncode == 0
