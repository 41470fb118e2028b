"""70-dovecot end to end on a real lab host (Debian 12, systemd-nspawn).

One fresh host for the module (or RUNBOOK_TEST_HOST=deb6, a host of one's own, reset). The
tests run in order, each building on the host the one before left: a
dry run on the fresh host, a full run whose IMAP login finds the test message, clients that
are not ours (imaplib over TLS; imaplib without TLS from outside, refused), a second run, a
dry run with a change, a failed check that must put the config back byte for byte, a
reboot, and Maildir with POP3. Then the same stage on the emulated OpenBSD hosts (5.0 and
7.6): a full run, the login class and rcctl (7.6) or pkg_scripts (5.0), clients that are not
ours, and a second run.

They need root and the lab; they fail (never skip) when the lab cannot start.
"""

from __future__ import annotations

import imaplib
import json
import os
import poplib
import shlex
import socket
import ssl
import subprocess
from pathlib import Path

import labrun
import pytest
import yaml
from labrun import audit, listening_after_reboot, module_host, ssh

from runbook import lab
from runbook.services.dovecot import tls

pytestmark = pytest.mark.lab

DEFAULT = ["10-install", "20-enable", "30-configure", "40-start", "50-validate", "60-harden",
           "70-dovecot"]
CONF = "/etc/dovecot/conf.d/99-mail-runbook.conf"
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def host(request) -> dict:
    return module_host(request)


@pytest.fixture(scope="module")
def params(host, tmp_path_factory) -> dict:
    """The lab's params with a dovecot section (the password by reference to the lab's
    password file) when the lab's file has none yet."""
    data = yaml.safe_load(Path(host["params_file"]).read_text())
    data.setdefault("dovecot", {"listen": [host["address"]],
                                "test_password_file": host["mail_password_file"]})
    return data


def run(tmp: Path, params: dict, names=DEFAULT, **kwargs) -> Path:
    return labrun.run(tmp, params, names, timings=TIMINGS, **kwargs)


def operations(run_dir: Path, status: str | None = None, stage: str = "70-dovecot"):
    return [r for r in audit(run_dir) if r["type"] == "operation" and r["stage"] == stage
            and (status is None or r["status"] == status)]


def password(host: dict) -> str:
    return Path(host["mail_password_file"]).read_text().strip()


def pinned(host: dict) -> ssl.SSLContext:
    """The certificate read from the host over SSH, as the only one trusted."""
    return tls.pinned_context(ssh(host, "cat /etc/dovecot/private/mail-runbook.pem"))


class IMAPFrom(imaplib.IMAP4):
    """imaplib's plain IMAP4, connecting from a chosen source address."""

    source = "127.0.0.2"

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))


@pytest.fixture(scope="module")
def first_run(host, params, tmp_path_factory) -> Path:
    return run(tmp_path_factory.mktemp("dovecot"), params)


def test_dry_run_on_a_fresh_host_installs_nothing(host, params, tmp_path):
    dry = run(tmp_path, params, dry_run=True)
    assert not operations(dry, "failed") and not operations(dry, "changed")
    assert ssh(host, "dpkg-query -W -f='${db:Status-Abbrev}' dovecot-imapd 2>&1",
               check=False).strip() != "ii"
    install = next(r for r in operations(dry) if "install Dovecot" in r["name"])
    assert install["status"] == "skipped" and "would change" in install["detail"]
    assert "dovecot-imapd" in (dry / "70-dovecot.ipynb").read_text()


def test_full_run_ends_with_the_imap_login_finding_the_test_message(host, first_run):
    run_json = json.loads((first_run / "run.json").read_text())
    assert all(s["status"] == "ok" for s in run_json["stages"].values()), run_json["stages"]
    assert "70-dovecot" in run_json["stages"]
    records = audit(first_run)
    sent = next(r for r in records if r["type"] == "probe" and r["stage"] == "50-validate")
    subject = next(line[len("C: Subject: "):] for line in sent["transcript"]
                   if line.startswith("C: Subject: "))
    imaps = next(r for r in records if r["type"] == "probe" and r.get("protocol") == "imaps")
    assert f"S: Subject: {subject}" in imaps["transcript"], imaps["transcript"]
    assert any("[READ-ONLY]" in line for line in imaps["transcript"])
    assert any("(pinned)" in line for line in imaps["transcript"])
    login = next(r for r in operations(first_run, "ok") if "IMAP login" in r["name"])
    assert "this run's test message" in login["detail"]
    # the password is in no record and no notebook of the run
    secret = password(host)
    for path in first_run.iterdir():
        assert secret not in path.read_text(errors="replace"), path.name
    # one file of ours; the package's own files untouched
    assert ssh(host, "dpkg --verify dovecot-core dovecot-imapd; echo rc=$?").strip() == "rc=0"
    assert f"listen = {host['address']}" in ssh(host, f"cat {CONF}")


def test_an_imap_client_that_is_not_ours_logs_in_over_tls_and_lists_inbox(host, first_run):
    with imaplib.IMAP4_SSL(host["address"], 993, ssl_context=pinned(host), timeout=10) as c:
        assert c.login(host["mail_user"], password(host))[0] == "OK"
        status, boxes = c.list()
        assert status == "OK" and any(b'INBOX' in box for box in boxes), boxes
        status, count = c.select("INBOX", readonly=True)
        assert status == "OK" and int(count[0]) >= 1
        status, found = c.search(None, "SUBJECT", '"mail-runbook"')
        assert status == "OK" and found[0].split()


def test_a_plaintext_login_without_tls_is_refused_from_outside(host, first_run):
    client = IMAPFrom(host["address"], 143, timeout=10)
    try:
        assert "LOGINDISABLED" in client.capabilities
        with pytest.raises(imaplib.IMAP4.error, match=r"PRIVACYREQUIRED|disallowed"):
            client.login(host["mail_user"], password(host))  # the right password, even
    finally:
        client.shutdown()
    probe = next(r for r in audit(first_run) if r["type"] == "probe"
                 and r.get("purpose") == "plaintext login refused")
    assert probe["via"] == "direct from 127.0.0.2"
    assert any("NO [PRIVACYREQUIRED]" in line for line in probe["transcript"])


def test_second_run_changes_nothing(host, params, first_run, tmp_path):
    again = run(tmp_path, params)
    changed = [r for r in audit(again) if r["type"] == "operation" and r["status"] == "changed"]
    assert changed == [], [r["name"] for r in changed]
    commands = [r for r in audit(again) if r["type"] == "command"
                and r["stage"] == "70-dovecot"]
    assert len(commands) == 1, [c["command"][:80] for c in commands]  # the facts, once


def test_dry_run_shows_the_config_diff_and_changes_nothing(host, params, first_run,
                                                           tmp_path):
    changed = json.loads(json.dumps(params))
    changed["dovecot"]["pop3"] = True
    before = ssh(host, f"sha256sum {CONF}; cat /run/dovecot/master.pid")
    dry = run(tmp_path, changed, ["70-dovecot"], dry_run=True)
    assert ssh(host, f"sha256sum {CONF}; cat /run/dovecot/master.pid") == before
    assert ssh(host, "dpkg-query -W -f='${db:Status-Abbrev}' dovecot-pop3d 2>&1",
               check=False).strip() != "ii"
    shown = (dry / "70-dovecot.ipynb").read_text()
    assert "-protocols = imap" in shown and "+protocols = imap pop3" in shown
    assert "dovecot-pop3d" in shown
    assert not operations(dry, "changed") and not operations(dry, "failed")


def test_a_failed_check_puts_the_config_back_byte_for_byte(host, params, first_run, tmp_path):
    ssh(host, f"echo '# edited by hand' >> {CONF}")
    ours = ssh(host, f"base64 {CONF}")
    pid = ssh(host, "cat /run/dovecot/master.pid").strip()
    ssh(host, "echo 'listen = *' > /etc/dovecot/local.conf")  # overrides our listen
    try:
        failed = run(tmp_path, params, ["70-dovecot"], expect_failure=True)
    finally:
        ssh(host, "rm -f /etc/dovecot/local.conf")
    assert ssh(host, f"base64 {CONF}") == ours
    assert ssh(host, "cat /run/dovecot/master.pid").strip() == pid
    failure = next(r for r in operations(failed, "failed"))
    assert "doveconf" in failure["name"] and "listen is '*'" in failure["detail"]
    assert failure["restored"] == [CONF]
    # the normal run puts our file right again; Dovecot still runs what it had read
    # before the hand edit (the stamp's checksums say so), so it is not reloaded
    fixed = run(tmp_path, params, ["70-dovecot"])
    assert [r["name"] for r in operations(fixed, "changed")] == [
        "G22 Dovecot configuration: one runbook-managed file"]
    assert operations(run(tmp_path, params, ["70-dovecot"]), "changed") == []


def test_dovecot_listens_again_after_a_reboot(host, params, first_run, tmp_path):
    sockets = listening_after_reboot(host, 993, "dovecot")
    assert f"{host['address']}:993" in sockets and "dovecot" in sockets, sockets
    assert operations(run(tmp_path, params, ["70-dovecot"]), "changed") == []


def test_maildir_and_pop3_switched_together(host, params, first_run, tmp_path):
    """dovecot.mailbox_format: maildir alone switches Postfix's delivery (home_mailbox) and
    Dovecot's mail_location together, and the validation stage reads the Maildir."""
    changed = json.loads(json.dumps(params))
    changed["dovecot"] |= {"mailbox_format": "maildir", "pop3": True}
    switched = run(tmp_path, changed, ["30-configure", "40-start", "50-validate", "70-dovecot"])
    assert ssh(host, "postconf -h home_mailbox").strip() == "Maildir/"
    read = next(r for r in operations(switched, "ok", stage="50-validate")
                if r["name"].startswith("G19"))
    subject = read["detail"].split(": ", 1)[1]
    # Dovecot files what it has seen under cur/ (unread still); nothing else moves it
    maildir = f"/home/{host['mail_user']}/Maildir"
    assert subject in ssh(host, f"cat {maildir}/new/* {maildir}/cur/* 2>/dev/null", check=False)
    assert "mail_location = maildir:~/Maildir" in ssh(host, f"cat {CONF}")
    login = next(r for r in operations(switched, "ok") if "IMAP login" in r["name"])
    assert subject in login["detail"]
    pop = next(r for r in operations(switched, "ok") if "POP3 login" in r["name"])
    assert subject in pop["detail"]
    refused = next(r for r in operations(switched, "ok") if "plaintext" in r["name"])
    assert "imap:" in refused["detail"] and "pop3:" in refused["detail"]
    client = poplib.POP3_SSL(host["address"], 995, context=pinned(host), timeout=10)
    try:
        client.user(host["mail_user"])
        client.pass_(password(host))
        assert client.stat()[0] >= 1
    finally:
        client.close()  # without QUIT: nothing in the mailbox changes
    assert operations(run(tmp_path, changed, ["70-dovecot"]), "changed") == []


# --- the emulated OpenBSD hosts (Debian underneath: see docs/openbsd-emulation.md) -------------

OPENBSD = ("5.0", "7.6")


@pytest.fixture(scope="module", params=OPENBSD)
def openbsd(request, tmp_path_factory) -> dict:
    """A fresh emulated OpenBSD host of each release, after a full default run. The third
    host of the release (the OpenBSD lab tests take the second), or
    RUNBOOK_TEST_OBSD_<release without dot>=obsdN, reset."""
    release = request.param
    if os.geteuid() != 0:
        pytest.fail("lab tests need root: they boot real target hosts (run `make test` as root)")
    name = os.environ.get(f"RUNBOOK_TEST_OBSD_{release.replace('.', '')}")
    try:
        if not name:
            entries = [e for e in lab.up(3, CHECKOUT, flavor="openbsd", release=release)
                       if e["flavor"] == "openbsd" and e["release"] == release]
            name = entries[2]["name"]
        entry = lab.reset(name)
    except Exception as e:
        pytest.fail(f"the lab could not give an OpenBSD {release} host: {e}")
    data = yaml.safe_load(Path(entry["params_file"]).read_text())
    tmp = tmp_path_factory.mktemp(f"obsd{release}")
    return {"host": entry, "params": data, "tmp": tmp, "release": release,
            "first": run(tmp, data)}


CHECKOUT = Path(__file__).resolve().parent.parent


def as_root(host: dict, command: str) -> str:
    via = "doas " if host["user"] != "root" else ""
    result = subprocess.run(
        ["ssh", "-i", host["key_file"], "-o", f"UserKnownHostsFile={host['known_hosts']}",
         "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
         f"{host['user']}@{host['address']}", f"{via}sh -c {shlex.quote(command)}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command!r} on {host['name']}: {result.stderr}"
    return result.stdout


def test_openbsd_full_run_ends_with_the_imap_login_finding_the_test_message(openbsd):
    first, host = openbsd["first"], openbsd["host"]
    run_json = json.loads((first / "run.json").read_text())
    assert all(s["status"] == "ok" for s in run_json["stages"].values()), run_json["stages"]
    login = next(r for r in operations(first, "ok") if "IMAP login" in r["name"])
    assert "this run's test message" in login["detail"]
    done = {r["name"]: r for r in operations(first)}
    commands = [c for r in done.values() for c in r.get("commands", [])]
    assert "pkg_add dovecot" in commands
    if openbsd["release"] == "5.0":
        assert done["G22 Dovecot's login class (OpenBSD package README)"]["status"] == "skipped"
        assert "/etc/rc.d/dovecot start" in " ".join(commands)
        assert "dovecot" in as_root(host, "grep ^pkg_scripts= /etc/rc.conf.local")
    else:
        assert as_root(host, "cat /etc/login.conf.d/dovecot") == \
            "dovecot:\\\n\t:openfiles-cur=1024:\\\n\t:openfiles-max=2048:\\\n\t:tc=daemon:\n"
        assert "rcctl enable dovecot" in commands
        assert "rcctl start dovecot" in " ".join(commands)
        assert "dovecot" in as_root(host, "rcctl ls on").split()
    assert f"listen = {host['address']}" in as_root(host, f"cat {CONF}")


def test_openbsd_clients_not_ours_tls_accepted_plaintext_refused(openbsd):
    host = openbsd["host"]
    context = tls.pinned_context(as_root(host, "cat /etc/ssl/dovecotcert.pem"))
    with imaplib.IMAP4_SSL(host["address"], 993, ssl_context=context, timeout=10) as c:
        assert c.login(host["mail_user"], password(host))[0] == "OK"
        assert c.select("INBOX", readonly=True)[0] == "OK"
    client = IMAPFrom(host["address"], 143, timeout=10)
    try:
        assert "LOGINDISABLED" in client.capabilities
        with pytest.raises(imaplib.IMAP4.error, match=r"PRIVACYREQUIRED|disallowed"):
            client.login(host["mail_user"], password(host))
    finally:
        client.shutdown()


def test_openbsd_second_run_changes_nothing(openbsd):
    again = run(openbsd["tmp"], openbsd["params"])
    changed = [r for r in audit(again) if r["type"] == "operation" and r["status"] == "changed"]
    assert changed == [], [r["name"] for r in changed]


def test_report_timings():
    print("\ntimings:", json.dumps({k: round(v, 2) for k, v in TIMINGS.items()}, indent=1))
