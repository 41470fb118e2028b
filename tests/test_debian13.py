"""The default run on a real Debian 13 (trixie) lab host: Postfix 3.10, the journal as the
mail log (no rsyslog), Dovecot 2.4's settings; then a second run that changes nothing.

The first run reaches the host as an operator does, through an ssh_config alias: the params'
target is only `host: ALIAS` and `ssh_config`, the alias's HostName, User, Port,
IdentityFile and UserKnownHostsFile say the rest (`validate --show-target` shows it). The
second run uses the lab's own params file (address, user, key spelled out).

One fresh host for the module, trixie1 (127.0.0.71); the base image is bootstrapped from
this machine's own mirror the first time (`runbook lab up --flavor debian --release 13`).
They need root and the lab; they fail (never skip) when the lab cannot start.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncssh
import labrun
import pytest
import yaml
from labrun import audit, booted, operations, ssh

from runbook.cli import main as cli_main

pytestmark = pytest.mark.lab

HOST = "trixie1"
DEFAULT = ["00-preflight", "10-install", "20-enable", "30-configure", "40-start",
           "50-validate", "60-harden", "70-dovecot"]
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def host() -> dict:
    return booted(HOST, release="13", fresh=True)


ALIAS = "mail-trixie"
SSH_CONFIG = """\
Host {alias}
    HostName {address}
    User {user}
    Port {port}
    IdentityFile {key}
    IdentitiesOnly yes
    UserKnownHostsFile {known_hosts}
"""


@pytest.fixture(scope="module")
def alias_params(host, tmp_path_factory) -> Path:
    """The lab's params with a target of only `host: ALIAS` and `ssh_config`."""
    tmp = tmp_path_factory.mktemp("alias")
    config = tmp / "ssh_config"
    config.write_text(SSH_CONFIG.format(alias=ALIAS, address=host["address"], user=host["user"],
                                        port=host["port"], key=host["key_file"],
                                        known_hosts=host["known_hosts"]))
    data = yaml.safe_load(Path(host["params_file"]).read_text())
    data["target"] = {"host": ALIAS, "ssh_config": str(config)}
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def first_run(host, alias_params, tmp_path_factory) -> Path:
    return labrun.run(tmp_path_factory.mktemp("trixie"), alias_params, DEFAULT,
                      timings=TIMINGS)


def test_show_target_says_where_each_value_of_the_alias_comes_from(host, alias_params,
                                                                   capsys):
    assert cli_main(["validate", str(alias_params), "--show-target"]) == 0
    out = capsys.readouterr().out
    config = yaml.safe_load(alias_params.read_text())["target"]["ssh_config"]
    assert f"target {ALIAS}: root@{host['address']}:22" in out
    for label, option in (("address", "Hostname"), ("user", "User"), ("port", "Port"),
                          ("keys", "IdentityFile"), ("known_hosts", "UserKnownHostsFile")):
        line = next(x for x in out.splitlines() if x.strip().startswith(label))
        assert line.endswith(f"from {config} ({option})"), line
    assert "policy" in out and "from default" in out


def test_the_alias_run_records_its_effective_destination(host, first_run):
    (connection,) = [r for r in audit(first_run) if r["type"] == "connection"]
    assert connection["alias"] == ALIAS and connection["jumps"] == []
    assert connection["destination"] == f"root@{host['address']}:22"
    known = {asyncssh.import_public_key(" ".join(line.split()[1:3])).get_fingerprint("sha256")
             for line in Path(host["known_hosts"]).read_text().splitlines()}
    (hop,) = connection["hops"]
    assert hop["hop"] == connection["destination"] and hop["fingerprint"] in known
    assert connection["sources"]["address"].endswith("(Hostname)")


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


def test_maildir_on_dovecot_24_opens_its_inbox(host, first_run, tmp_path):
    """dovecot.mailbox_format: maildir on Dovecot 2.4: the package's 10-mail.conf sets
    mail_inbox_path to the mbox spool, which the runbook's file must point at the Maildir, or
    every EXAMINE INBOX is `NO [SERVERBUG]` (or, emptied, an INBOX in ~/Maildir/.INBOX).
    Runs last: it leaves the host delivering to Maildir."""
    data = yaml.safe_load(Path(host["params_file"]).read_text())
    data["dovecot"] |= {"mailbox_format": "maildir"}
    switched = labrun.run(tmp_path, data, ["30-configure", "40-start", "50-validate",
                                           "70-dovecot"], timings=TIMINGS)
    conf = ssh(host, "cat /etc/dovecot/conf.d/99-mail-runbook.conf")
    assert "mail_driver = maildir" in conf and "\nmail_inbox_path = ~/Maildir\n" in conf, conf
    assert ssh(host, "doveconf -h mail_inbox_path").strip() == "~/Maildir"
    read = next(r for r in operations(switched, "ok")
                if r["stage"] == "50-validate" and r["name"].startswith("G19"))
    subject = read["detail"].split(": ", 1)[1]
    login = next(r for r in operations(switched) if r["name"].startswith("G22 IMAP login"))
    assert login["status"] == "ok" and subject in login["detail"], login
    again = labrun.run(tmp_path, data, ["70-dovecot"], timings=TIMINGS)
    assert [r["name"] for r in operations(again, "changed")] == []
