"""The Postfix stages end to end on a real lab host (Debian 12, systemd-nspawn).

One fresh host for the module; the tests run in order, each building on the host the one
before left: a full run, then clients that are not ours, a second run, a dry run, a failed
check that must put main.cf back byte for byte, and a reboot.

They need root and the lab; they fail (never skip) when the lab cannot start.
"""

from __future__ import annotations

import json
import smtplib
import time
import uuid
from pathlib import Path

import labrun
import pytest
import yaml
from labrun import audit, listening_after_reboot, module_host, operations, ssh

pytestmark = pytest.mark.lab

DEFAULT = ["10-install", "20-enable", "30-configure", "40-start", "50-validate", "60-harden"]
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def host(request) -> dict:
    return module_host(request)


def run(host: dict, tmp: Path, names=DEFAULT, *, params: dict | None = None, **kwargs) -> Path:
    return labrun.run(tmp, params or host["params_file"], names, timings=TIMINGS, **kwargs)


def params_of(host: dict) -> dict:
    return yaml.safe_load(Path(host["params_file"]).read_text())


def snapshot(host: dict) -> str:
    """The bytes that a dry run must not change: /etc/postfix/* and root's crontab."""
    return ssh(host, "sha256sum /etc/postfix/* /etc/aliases 2>/dev/null; "
               "crontab -l 2>&1; ls -l --time-style=+%s /etc/postfix")


@pytest.fixture(scope="module")
def first_run(host, tmp_path_factory) -> Path:
    return run(host, tmp_path_factory.mktemp("postfix"))


def test_dry_run_on_a_fresh_host_installs_nothing(host, tmp_path):
    dry = run(host, tmp_path, dry_run=True)
    assert not operations(dry, "failed") and not operations(dry, "changed")
    assert ssh(host, "dpkg-query -W -f='${db:Status-Abbrev}' postfix 2>&1", check=False
               ).strip() != "ii"
    install = next(r for r in operations(dry) if r["name"].startswith("G1 "))
    assert install["status"] == "skipped" and "would change" in install["detail"]
    assert "apt-get install" in (dry / "10-install.ipynb").read_text()


def test_full_run_delivers_the_test_message(host, first_run):
    run_json = json.loads((first_run / "run.json").read_text())
    assert all(s["status"] == "ok" for s in run_json["stages"].values()), run_json["stages"]
    assert not operations(first_run, "failed")
    probe = next(r for r in audit(first_run) if r["type"] == "probe"
                 and r["stage"] == "50-validate")
    queued = next(line for line in probe["transcript"] if "queued as" in line)
    qid = queued.rsplit(" ", 1)[1]
    log = ssh(host, f"grep -F ' {qid}: ' /var/log/mail.log")
    assert "relay=local" in log and "status=sent" in log, log
    subject = next(line for line in probe["transcript"] if line.startswith("C: Subject: "))
    mailbox = ssh(host, f"cat /var/mail/{host['mail_user']}")
    assert subject[3:] in mailbox


def test_relay_is_refused_from_outside_mynetworks(host, first_run):
    params = params_of(host)
    with smtplib.SMTP(host["address"], 25, timeout=10,
                      source_address=(params["postfix"]["probe_source"], 0)) as client:
        client.ehlo("stranger.invalid")
        client.mail("someone@stranger.invalid")
        code, message = client.rcpt("victim@elsewhere.invalid")
    assert code in (454, 554), message
    probe = next(r for r in audit(first_run) if r["type"] == "probe"
                 and r["stage"] == "60-harden")
    assert any(line.startswith(("S: 454", "S: 554")) for line in probe["transcript"])


def test_a_client_that_is_not_ours_delivers_to_the_test_recipient(host, first_run):
    params = params_of(host)["postfix"]
    subject = f"smtplib {uuid.uuid4().hex}"
    message = (f"From: tester@{params['myhostname']}\r\nTo: {host['mail_user']}\r\n"
               f"Subject: {subject}\r\n\r\nsent by Python's smtplib\r\n")
    with smtplib.SMTP(host["address"], 25, timeout=10, source_address=("127.0.0.1", 0)) as c:
        refused = c.sendmail(f"tester@{params['myhostname']}",
                             [f"{host['mail_user']}@{params['myhostname']}"], message)
    assert refused == {}
    for _ in range(50):
        if subject in ssh(host, f"cat /var/mail/{host['mail_user']}"):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the smtplib message did not reach the mailbox within 5 s")


def test_second_run_changes_nothing(host, first_run, tmp_path):
    again = run(host, tmp_path)
    changed = operations(again, "changed")
    assert changed == [], [r["name"] for r in changed]
    stages_ran = json.loads((again / "run.json").read_text())["stages"]
    assert sum(s["changed"] for s in stages_ran.values()) == 0


def test_dry_run_changes_nothing(host, first_run, tmp_path):
    params = params_of(host)
    params["postfix"]["aliases"]["abuse"] = "root"
    params["postfix"]["mydestination"].append("dry.test")
    before = snapshot(host)
    dry = run(host, tmp_path, dry_run=True, params=params)
    assert snapshot(host) == before
    would = [r["name"] for r in operations(dry, "skipped") if "would change" in r["detail"]]
    assert any("G9" in name for name in would) and any("G11" in name for name in would)
    shown = (dry / "30-configure.ipynb").read_text()
    assert "+abuse: root" in shown and "dry.test" in shown
    assert not operations(dry, "changed")


def test_failed_check_restores_main_cf_byte_for_byte(host, first_run, tmp_path):
    params = params_of(host)
    params["postfix"]["mydestination"].append("broken.test")
    main_cf = ssh(host, "base64 /etc/postfix/main.cf")
    pid = ssh(host, "cat /var/spool/postfix/pid/master.pid").strip()
    ssh(host, "chown nobody /etc/postfix/master.cf")  # postfix check complains about it
    try:
        failed = run(host, tmp_path, ["30-configure", "40-start"], params=params,
                     expect_failure=True)
    finally:
        ssh(host, "chown root /etc/postfix/master.cf")
    assert ssh(host, "base64 /etc/postfix/main.cf") == main_cf
    assert ssh(host, "cat /var/spool/postfix/pid/master.pid").strip() == pid
    records = audit(failed)
    failure = next(r for r in records if r["type"] == "operation" and r["status"] == "failed")
    assert "G14" in failure["name"] and "not owned by root" in failure["detail"]
    assert "/etc/postfix/main.cf" in failure["restored"]
    assert any(r["type"] == "restore" and r["path"] == "/etc/postfix/main.cf" for r in records)
    # and the host is as configured: the normal parameters change nothing
    assert operations(run(host, tmp_path, ["30-configure", "40-start"]), "changed") == []


def test_failure_inside_a_stage_restores_what_it_edited(host, first_run, tmp_path):
    params = params_of(host)
    params["postfix"]["mydestination"].append("fault.test")
    params["postfix"]["aliases"]["abuse"] = "root"
    before = ssh(host, "sha256sum /etc/postfix/main.cf /etc/aliases")
    # the fault: postalias cannot write its database
    ssh(host, "mv /etc/aliases.db /etc/aliases.db.saved && mkdir /etc/aliases.db")
    try:
        failed = run(host, tmp_path, ["30-configure"], params=params, expect_failure=True)
    finally:
        ssh(host, "rmdir /etc/aliases.db && mv /etc/aliases.db.saved /etc/aliases.db")
    assert ssh(host, "sha256sum /etc/postfix/main.cf /etc/aliases") == before
    failure = next(r for r in operations(failed) if r["status"] == "failed")
    assert "G11" in failure["name"] and "postalias" in failure["detail"]
    assert set(failure["restored"]) == {"/etc/postfix/main.cf", "/etc/aliases"}
    assert operations(run(host, tmp_path, ["30-configure"]), "changed") == []


def test_postfix_listens_again_after_a_reboot(host, first_run, tmp_path):
    sockets = listening_after_reboot(host, 25, "master")
    assert f"{host['address']}:25" in sockets and "master" in sockets, sockets
    assert operations(run(host, tmp_path, ["40-start", "50-validate"]), "changed") == []


def test_troubleshooting_reads_without_changing(host, first_run, tmp_path):
    before = snapshot(host)
    looked = run(host, tmp_path, ["90-troubleshoot"])
    assert {r["status"] for r in operations(looked)} == {"ok"}
    assert snapshot(host) == before
    shown = (looked / "90-troubleshoot.ipynb").read_text()
    assert "(no complaints)" in shown and "mail.log" in shown


def test_report_timings():
    print("\ntimings:", json.dumps({k: round(v, 2) for k, v in TIMINGS.items()}, indent=1))
