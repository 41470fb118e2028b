"""70-dovecot without a lab host: the configuration it writes, the plans it makes from given
facts, IMAP and POP3 replies read from transcripts, the plaintext verdict, certificate
pinning, and the outside probe against small fake servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import re
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from stagefakes import PARAMS, Stage, install_files

from runbook import params
from runbook.errors import ParamsError
from runbook.ops import facts
from runbook.ops.operations import OperationFailed, Run
from runbook.platforms.debian.apt import POLICY_RC_D
from runbook.remote import imap as client
from runbook.services import dovecot as dv
from runbook.services.dovecot import common, login, setup, tls, wanted

DEBIAN_DELIVERY = {"home_mailbox": "", "mail_spool_directory": "/var/mail",
                   "mailbox_command": "", "mailbox_transport": ""}


def stage_with(dovecot: dict | None = None, postfix: dict | None = None, **kwargs) -> Stage:
    """A fake stage whose params have a dovecot section (stagefakes' PARAMS have none)."""
    stage = Stage(**kwargs)
    data = {k: dict(v) for k, v in PARAMS.items()}
    data["postfix"] |= postfix or {}
    data["dovecot"] = dovecot if dovecot is not None else {
        "test_password_file": "/nonexistent/password"}
    stage.params = params.validate(**data)
    return stage


def known(stage: Stage, **values) -> None:
    """Put fact values into the stage's cache by the facts' own names."""
    names = {
        "delivery": common.delivery_fact(stage).name, "conf": common.conf_fact(stage).name,
        "master": common.master_fact(stage).name, "certificate": tls.certificate_fact(stage).name,
        "packages": stage.platform.dovecot_packages().name,
        "boot": stage.platform.dovecot_boot().name,
        "doveconf_n": common.doveconf(stage).name,
        "doveconf": common.doveconf(stage, wanted.CHECKED).name,
        "listeners": stage.platform.listeners().name,
    }
    facts.cache(stage).update({names[k]: v for k, v in values.items()})
    facts.cache(stage).setdefault(facts.file(POLICY_RC_D).name, None)  # no leftover hold
    facts.scratch(stage)["prefetched"] = True


def run(coro):
    return asyncio.run(coro)


# --- what is wanted ---------------------------------------------------------------------------

def test_listen_follows_postfix_inet_interfaces_unless_given():
    assert wanted.listen_addresses(stage_with().params) == ["127.0.0.11"]
    loopback = stage_with(postfix={"inet_interfaces": ["loopback-only"]})
    assert wanted.listen_addresses(loopback.params) == ["127.0.0.1"]
    everywhere = stage_with(postfix={"inet_interfaces": ["all"]})
    assert wanted.listen_addresses(everywhere.params) == ["*", "::"]
    given_ = stage_with(dovecot={"listen": "192.0.2.1, 127.0.0.1"})
    assert wanted.listen_addresses(given_.params) == ["192.0.2.1", "127.0.0.1"]


def test_mbox_config_serves_the_spool_postfix_delivers_to():
    stage = stage_with()
    text = wanted.render_config(common.settings_for(stage, DEBIAN_DELIVERY))
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "protocols = imap",
        "listen = 127.0.0.11",
        "mail_location = mbox:~/mail:INBOX=/var/mail/%u",
        "mail_privileged_group = mail",
        "ssl = required",
        "ssl_cert = </etc/dovecot/private/mail-runbook.pem",
        "ssl_key = </etc/dovecot/private/mail-runbook.key",
        "disable_plaintext_auth = yes",
    ]
    # the spool is Postfix's own setting, not an assumption
    other = common.settings_for(stage, DEBIAN_DELIVERY
                                | {"mail_spool_directory": "/var/spool/mail"})
    assert other.mail_location == "mbox:~/mail:INBOX=/var/spool/mail/%u"


def test_maildir_and_pop3_and_a_given_certificate():
    stage = stage_with(dovecot={"mailbox_format": "maildir", "pop3": True,
                                "ssl_cert_file": "/etc/ssl/mail.pem",
                                "ssl_key_file": "/etc/ssl/private/mail.key"})
    settings = common.settings_for(stage, DEBIAN_DELIVERY | {"home_mailbox": "Maildir/"})
    text = wanted.render_config(settings)
    assert "protocols = imap pop3\n" in text
    assert "mail_location = maildir:~/Maildir\n" in text
    assert "mail_privileged_group" not in text  # no dotlocks in the spool with Maildir
    assert "ssl_cert = </etc/ssl/mail.pem\n" in text
    assert "ssl_key = </etc/ssl/private/mail.key\n" in text
    assert wanted.postfix_settings(stage.params) == {"home_mailbox": "Maildir/"}
    assert wanted.postfix_settings(stage_with().params) == {}
    assert settings.values()["protocols"] == "imap pop3"


def test_half_a_certificate_is_refused_before_any_connection():
    with pytest.raises(ParamsError, match="go together"):
        stage_with(dovecot={"ssl_cert_file": "/etc/ssl/mail.pem"})


def test_delivery_must_match_the_mailbox_format():
    assert wanted.delivery_problems("mbox", DEBIAN_DELIVERY) == []
    procmail = DEBIAN_DELIVERY | {"mailbox_command": 'procmail -a "$EXTENSION"'}
    assert "mailbox_command" in wanted.delivery_problems("mbox", procmail)[0]
    maildir = DEBIAN_DELIVERY | {"home_mailbox": "Maildir/"}
    assert "home_mailbox = Maildir/" in wanted.delivery_problems("mbox", maildir)[0]
    assert wanted.delivery_problems("maildir", maildir) == []
    assert "maildir" in wanted.delivery_problems("maildir", DEBIAN_DELIVERY)[0]
    assert wanted.delivery_problems(
        "mbox", DEBIAN_DELIVERY | {"mail_spool_directory": "/var/mail/"})


# --- doveconf ---------------------------------------------------------------------------------

DOVECONF_N = """\
# 2.3.19.1 (9b53102964): /etc/dovecot/dovecot.conf
# OS: Linux 6.1 x86_64 Debian 12.5
listen = 127.0.0.11
mail_location = mbox:~/mail:INBOX=/var/mail/%u
namespace inbox {
  inbox = yes
  location =
  mailbox Drafts {
    special_use = \\Drafts
  }
  prefix =
}
passdb {
  driver = pam
}
protocols = " imap"
ssl = required
ssl_cert = </etc/dovecot/private/mail-runbook.pem
ssl_key = # hidden, use -P to show it
"""


def test_doveconf_output_top_level_settings_only():
    found = wanted.parse_settings(DOVECONF_N)
    assert found["listen"] == "127.0.0.11" and found["protocols"] == '" imap"'
    assert "driver" not in found and "inbox" not in found and "prefix" not in found
    assert found["ssl_cert"] == "</etc/dovecot/private/mail-runbook.pem"
    assert wanted.parse_settings("login_trusted_networks = \n")["login_trusted_networks"] == ""


def test_settings_overridden_by_another_file_are_named():
    values = common.settings_for(stage_with(), DEBIAN_DELIVERY).values()
    current = wanted.parse_settings(DOVECONF_N) | {"disable_plaintext_auth": "yes",
                                                   "mail_privileged_group": "mail"}
    assert wanted.settings_problems(values, current) == []
    current["listen"] = "*, ::"
    assert wanted.settings_problems(values, current) == ["listen is '*, ::', wanted '127.0.0.11'"]


# `doveconf` of the settings read back, from Dovecot 2.4.1 (Debian 13) with the runbook's file
DOVECONF_24 = """\
protocols = imap
listen = 127.0.0.71
mail_driver = mbox
mail_path = ~/mail
mail_inbox_path = /var/mail/%{user}
mail_privileged_group = mail
ssl = required
auth_allow_cleartext = no
ssl_server {
  cert_file = /etc/dovecot/private/mail-runbook.pem
}
login_trusted_networks = \n"""


def test_dovecot_24_gets_its_own_setting_names_and_reads_them_back():
    settings = dataclasses.replace(common.settings_for(stage_with(), DEBIAN_DELIVERY),
                                   listen=("127.0.0.71",), syntax="2.4")
    text = wanted.render_config(settings)
    for line in ("mail_driver = mbox", "mail_path = ~/mail",
                 "mail_inbox_path = /var/mail/%{user}", "auth_allow_cleartext = no",
                 "ssl_server_cert_file = /etc/dovecot/private/mail-runbook.pem",
                 "ssl_server_key_file = /etc/dovecot/private/mail-runbook.key"):
        assert f"\n{line}\n" in text
    assert "mail_location" not in text and "ssl_cert =" not in text and "%u" not in text
    assert set(settings.values()) <= set(wanted.checked("2.4"))
    current = wanted.parse_settings(DOVECONF_24)
    assert current["ssl_server/cert_file"] == "/etc/dovecot/private/mail-runbook.pem"
    assert wanted.settings_problems(settings.values(), current) == []
    maildir = dataclasses.replace(settings, mail_location="maildir:~/Maildir")
    # the package's mail_inbox_path (the mbox spool) replaced: a Maildir's INBOX is itself
    assert maildir.mail() == {"mail_driver": "maildir", "mail_path": "~/Maildir",
                              "mail_inbox_path": "~/Maildir"}
    assert "\nmail_inbox_path = ~/Maildir\n" in wanted.render_config(maildir)
    assert wanted.checked("2.3") == wanted.CHECKED


def test_doveconf_warnings_are_complaints():
    out = ("doveconf: Warning: NOTE: You can get a new clean config file with: doveconf -Pn\n"
           "doveconf: Warning: Obsolete setting in /etc/dovecot/conf.d/x.conf:3\n"
           + DOVECONF_N)
    assert len(wanted.doveconf_complaints(out)) == 2
    assert wanted.doveconf_complaints(DOVECONF_N) == []


def test_expected_sockets():
    assert wanted.expected_sockets(["127.0.0.11"], ["imap"]) == {("127.0.0.11", 143),
                                                            ("127.0.0.11", 993)}
    assert ("0.0.0.0", 995) in wanted.expected_sockets(["*", "::"], ["imap", "pop3"])


# --- IMAP and POP3 transcripts ---------------------------------------------------------------

GREETING = (b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ "
            b"STARTTLS LOGINDISABLED] Dovecot (Debian) ready.\r\n")
SESSION = GREETING + (
    b"a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"
    b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
    b"* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n"
    b"* 3 EXISTS\r\n* 0 RECENT\r\n"
    b"a2 OK [READ-ONLY] Examine completed (0.001 + 0.000 secs).\r\n"
    b"* SEARCH 2 3\r\na3 OK Search completed.\r\n"
    b"* 3 FETCH (BODY[HEADER.FIELDS (SUBJECT DATE)] {84}\r\n"
    b"Subject: mail-runbook 1a2b3c4d test of run R1\r\n"
    b"Date: Sat, 28 Nov 2026 14:39:02 +0000\r\n\r\n)\r\n"
    b"a4 OK Fetch completed.\r\n")


def feed(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


class Sink:
    def __init__(self):
        self.sent = b""

    def write(self, data):
        self.sent += data

    async def drain(self):
        pass

    def close(self):
        pass


def test_imap_session_read_from_a_transcript():
    async def session():
        imap = client.IMAP(feed(SESSION), Sink())
        greeting = await imap.greeting()
        login = await imap.expect_ok('LOGIN "u" "secret"', shown='LOGIN "u" "********"')
        examined = await imap.expect_ok("EXAMINE INBOX")
        search = await imap.expect_ok('SEARCH SUBJECT "test of run R1"')
        fetched = await imap.expect_ok("FETCH 3 (BODY.PEEK[HEADER.FIELDS (SUBJECT DATE)])")
        return imap, greeting, login, examined, search, fetched

    imap, greeting, login, examined, search, fetched = run(session())
    assert {"STARTTLS", "LOGINDISABLED"} <= client.parse_capabilities(greeting.untagged)
    assert login.ok and examined.code == "READ-ONLY"
    assert client.parse_exists(examined.untagged) == 3
    assert client.parse_search(search.untagged) == [2, 3]
    headers = client.parse_fetched_headers(fetched.untagged)
    assert headers["Subject"] == "mail-runbook 1a2b3c4d test of run R1"
    assert "secret" not in imap.shown() and 'C: a1 LOGIN "u" "********"' in imap.shown()
    assert imap.writer.sent.startswith(b'a1 LOGIN "u" "secret"\r\n')
    assert "S: Subject: mail-runbook 1a2b3c4d test of run R1" in imap.transcript


def test_a_refusal_is_a_readable_error():
    async def session():
        imap = client.IMAP(feed(GREETING + b"a1 NO [AUTHENTICATIONFAILED] Authentication "
                            b"failed.\r\n"), Sink())
        await imap.greeting()
        await imap.expect_ok('LOGIN "u" "p"', shown='LOGIN "u" "********"')

    with pytest.raises(client.IMAPError, match=r"LOGIN was answered NO \[AUTHENTICATIONFAILED\]"):
        run(session())


def test_status_lines():
    assert client.parse_status("a1 NO [PRIVACYREQUIRED] Plaintext authentication disallowed.") == (
        "a1", "NO", "PRIVACYREQUIRED", "Plaintext authentication disallowed.")
    assert client.parse_status("a2 OK Logout completed.")[1:] == ("OK", "", "Logout completed.")
    with pytest.raises(client.IMAPError):
        client.parse_status("hello")


def response(line: str) -> client.Response:
    return client.Response(*client.parse_status(line))


def test_plaintext_verdict():
    caps = {"IMAP4REV1", "STARTTLS", "LOGINDISABLED"}
    refused, why = login.plaintext_verdict(caps, response(
        "a1 NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) "
        "connections."))
    assert refused and "LOGINDISABLED" in why
    assert not login.plaintext_verdict({"IMAP4REV1"}, response(
        "a1 NO [AUTHENTICATIONFAILED] Authentication failed."))[0]
    assert not login.plaintext_verdict(caps, response("a1 OK Logged in"))[0]
    assert login.plaintext_verdict(caps, response("a1 BAD LOGIN is disabled"))[0]
    assert not login.plaintext_verdict({"IMAP4REV1"}, response("a1 BAD Error in IMAP command"))[0]


def test_pop3_plaintext_verdict():
    assert login.pop3_plaintext_verdict("-ERR [AUTH] Plaintext authentication disallowed on "
                                     "non-secure (SSL/TLS) connections.")[0]
    assert not login.pop3_plaintext_verdict("+OK")[0]
    assert not login.pop3_plaintext_verdict("-ERR Unknown command.")[0]


def test_quoted_strings():
    assert client.quoted('a"b\\c') == '"a\\"b\\\\c"'
    with pytest.raises(client.IMAPError, match="line break"):
        client.quoted("two\nlines")


# --- the password -----------------------------------------------------------------------------

def test_password_from_a_file_or_the_environment(tmp_path, monkeypatch):
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cret-value\n")
    stage = stage_with(dovecot={"test_password_file": str(secret_file)})
    assert login.test_password(stage.params) == "s3cret-value"
    monkeypatch.setenv("MAIL_TEST_PW", "from-env")
    stage = stage_with(dovecot={"test_password_env": "MAIL_TEST_PW"})
    assert login.test_password(stage.params) == "from-env"
    with pytest.raises(OperationFailed, match="is not set"):
        login.test_password(stage_with(dovecot={"test_password_env": "NOT_THERE_PW"}).params)
    with pytest.raises(OperationFailed, match="never a parameter"):
        login.test_password(stage_with(dovecot={}).params)


def test_a_missing_password_stops_the_stage_before_anything_changes():
    stage = stage_with()
    with pytest.raises(OperationFailed, match=r"cannot read dovecot\.test_password_file"):
        run(dv.check_password(stage))
    assert stage.commands == [] and stage.results[-1]["status"] == "failed"


def test_the_password_becomes_a_secret_of_the_audit(tmp_path):
    secret_file = tmp_path / "pw"
    secret_file.write_text('pa"ss\n')
    stage = stage_with(dovecot={"test_password_file": str(secret_file)})
    secrets_seen = []
    stage.audit.add_secret = secrets_seen.append
    outcome = run(dv.check_password(stage))
    assert outcome.status == "ok" and 'pa"ss' in secrets_seen and 'pa\\"ss' in secrets_seen
    assert 'pa"ss' not in outcome.detail


# --- plans from given facts ------------------------------------------------------------------

def test_install_holds_services_and_keeps_dovecot_off_at_boot_until_configured(monkeypatch):
    install_files(monkeypatch)
    stage = stage_with(dovecot={"pop3": True})
    known(stage, packages={"imap": False, "pop3": False})
    outcome = run(dv.install(stage))
    assert outcome.status == "changed"
    commands = stage.commands
    assert "pgrep -x dpkg" in commands[0]  # an install still running ends first
    assert "exit 101" in commands[1]
    assert "apt-get install" in commands[2] and "dovecot-imapd dovecot-pop3d" in commands[2]
    assert commands[3] == "systemctl disable dovecot"
    assert "rm -f /usr/sbin/policy-rc.d" in commands[-1]


def test_install_adds_pop3_alone_without_touching_boot(monkeypatch):
    install_files(monkeypatch)
    stage = stage_with(dovecot={"pop3": True})
    known(stage, packages={"imap": True, "pop3": False})
    run(dv.install(stage))
    assert "'dovecot-pop3d'" in stage.commands[2] or " dovecot-pop3d" in stage.commands[2]
    assert "systemctl disable dovecot" not in stage.commands


def test_dry_run_shows_the_config_diff_and_writes_nothing(monkeypatch, capsys):
    fake = install_files(monkeypatch)
    stage = stage_with(dry_run=True)
    known(stage, delivery=DEBIAN_DELIVERY, conf="# old\nlisten = *\n")
    outcome = run(dv.ensure_config(stage))
    assert outcome.status == "skipped" and "would change" in outcome.detail
    shown = capsys.readouterr().out
    assert "-listen = *" in shown and "+listen = 127.0.0.11" in shown
    assert fake.writes == [] and stage.commands == []
    assert common.scratch(stage)["pending"]


def test_config_unchanged_is_ok(monkeypatch):
    fake = install_files(monkeypatch)
    stage = stage_with()
    text = wanted.render_config(common.settings_for(stage, DEBIAN_DELIVERY))
    known(stage, delivery=DEBIAN_DELIVERY, conf=text)
    assert run(dv.ensure_config(stage)).status == "ok" and fake.writes == []


def test_config_written_whole(monkeypatch):
    fake = install_files(monkeypatch)
    stage = stage_with()
    known(stage, delivery=DEBIAN_DELIVERY, conf=None)
    assert run(dv.ensure_config(stage)).status == "changed"
    ((path, content),) = fake.writes
    assert path == "/etc/dovecot/conf.d/99-mail-runbook.conf"
    assert b"listen = 127.0.0.11\n" in content


def test_certificate_made_once(monkeypatch):
    install_files(monkeypatch)
    stage = stage_with()
    known(stage, certificate={"state": "nocert", "pem": ""})
    outcome = run(dv.ensure_certificate(stage))
    assert outcome.status == "changed"
    (command,) = stage.commands
    assert "openssl req -new -x509" in command and "/CN=mail.deb1.test" in command
    assert "mv /etc/dovecot/private/mail-runbook.key.new /etc/dovecot/private/mail-runbook.key" \
        in command
    assert outcome.plan.undo == [Run("rm -f /etc/dovecot/private/mail-runbook.pem "
                                     "/etc/dovecot/private/mail-runbook.key",
                                     why="the certificate was made by this stage")]
    again = stage_with()
    known(again, certificate={"state": "match", "pem": "PEM"})
    assert run(dv.ensure_certificate(again)).status == "ok" and again.commands == []


def test_a_given_certificate_must_exist_and_match():
    stage = stage_with(dovecot={"ssl_cert_file": "/etc/ssl/mail.pem",
                                "ssl_key_file": "/etc/ssl/private/mail.key"})
    known(stage, certificate={"state": "mismatch", "pem": ""})
    with pytest.raises(OperationFailed, match=r"is not the key of /etc/ssl/mail\.pem"):
        run(dv.ensure_certificate(stage))
    assert stage.commands == []


def test_start_when_stopped_reload_when_stale_nothing_when_current(monkeypatch):
    install_files(monkeypatch)
    stopped = stage_with()
    known(stopped, master={"pid": None, "stale": False})
    outcome = run(dv.start(stopped))
    assert outcome.status == "changed"
    assert "systemctl start dovecot </dev/null" in stopped.commands[0]  # stdio off the channel
    assert "> /var/lib/mail-runbook/dovecot-loaded" in stopped.commands[0]
    assert "systemctl stop dovecot" in outcome.plan.undo[0].command
    stale = stage_with()
    known(stale, master={"pid": 42, "stale": True})
    assert run(dv.start(stale)).status == "changed" and "reload" in stale.commands[0]
    current = stage_with()
    known(current, master={"pid": 42, "stale": False})
    assert run(dv.start(current)).status == "ok" and current.commands == []


def test_check_config_fails_on_an_override(monkeypatch):
    install_files(monkeypatch)
    stage = stage_with()
    settings = common.settings_for(stage, DEBIAN_DELIVERY).values()
    values = "".join(f"{k} = {v}\n" for k, v in (settings | {"listen": "*"}).items())
    known(stage, packages={"imap": True, "pop3": False}, delivery=DEBIAN_DELIVERY,
          doveconf_n=(DOVECONF_N, 0), doveconf=(values, 0))
    with pytest.raises(OperationFailed, match=re.escape("listen is '*', wanted '127.0.0.11'")):
        run(dv.check_config(stage))


def test_verify_listening_wants_exactly_the_listen_addresses(monkeypatch):
    from runbook.ops.facts import Listener

    stage = stage_with()
    known(stage, master={"pid": 7, "stale": False}, listeners=[
        Listener("127.0.0.11", 143, "dovecot", 7), Listener("127.0.0.11", 993, "dovecot", 7),
        Listener("127.0.0.11", 993, "imap-login", 9)])  # a login process shares the listener
    assert run(dv.verify_listening(stage)).status == "ok"
    wide = stage_with()
    known(wide, master={"pid": 7, "stale": False}, listeners=[
        Listener("0.0.0.0", 143, "dovecot", 7), Listener("0.0.0.0", 993, "dovecot", 7)])
    monkeypatch.setattr(setup, "LISTEN_WAIT", 0.1)
    with pytest.raises(OperationFailed, match=re.escape("listens on 0.0.0.0:143")):
        run(dv.verify_listening(wide))


# --- certificates and TLS --------------------------------------------------------------------

def make_certificate(tmp_path, name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_text(pem)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return pem, cert_file, key_file, cert.fingerprint(hashes.SHA256()).hex()


def test_the_pin_trusts_exactly_that_certificate(tmp_path):
    pem, cert_file, key_file, sha = make_certificate(tmp_path, "mail.test")
    other_pem, *_ = make_certificate(tmp_path, "intruder.test")
    assert tls.fingerprint(pem).replace(":", "").lower() == sha
    assert tls.fingerprint("junk\n" + pem + other_pem) == tls.fingerprint(pem)  # the first one

    async def handshake(client_pem: str) -> str:
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(cert_file, key_file)

        async def serve(reader, writer):
            writer.write(b"* OK ready\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=tls.pinned_context(client_pem),
                server_hostname="mail.test")
            line = await reader.readline()
            writer.close()
            return line.decode()
        finally:
            server.close()

    assert run(handshake(pem)) == "* OK ready\r\n"
    with pytest.raises(ssl.SSLCertVerificationError):
        run(handshake(other_pem))


# --- the outside probe against fake servers --------------------------------------------------

def free_port(host: str) -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def fake_imap(host: str, port: int, answer: bytes, seen: list):
    async def serve(reader, writer):
        seen.append(writer.get_extra_info("peername")[0])
        writer.write(GREETING)
        await writer.drain()
        while line := await reader.readline():
            tag = line.split(b" ", 1)[0]
            if b" LOGIN " in line:
                writer.write(tag + b" " + answer + b"\r\n")
            else:
                writer.write(b"* BYE Logging out\r\n" + tag + b" OK Logout completed.\r\n")
            await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, host, port)


def probe(monkeypatch, answer: bytes, **dovecot):
    port = free_port("127.0.0.11")
    monkeypatch.setitem(wanted.PORTS, "imap", (port, 993))
    stage = stage_with(dovecot={"test_password_file": "/x"} | dovecot)
    known(stage, master={"pid": 7, "stale": False},
          doveconf=("login_trusted_networks = \n", 0))
    seen: list = []

    async def body():
        server = await fake_imap("127.0.0.11", port, answer, seen)
        try:
            return await dv.probe_plaintext_refused(stage)
        finally:
            server.close()

    return run(body()), seen, stage


def test_probe_from_outside_sees_the_refusal(monkeypatch):
    outcome, seen, stage = probe(monkeypatch, b"NO [PRIVACYREQUIRED] Plaintext authentication "
                                 b"disallowed on non-secure (SSL/TLS) connections.")
    assert outcome.status == "ok" and seen == ["127.0.0.2"]  # from postfix.probe_source
    assert "made-up password" in outcome.evidence
    (record,) = [r for r in stage.audit.records if r["type"] == "probe"]
    assert record["via"] == "direct from 127.0.0.2"


def test_probe_fails_when_a_password_in_clear_is_checked(monkeypatch):
    with pytest.raises(OperationFailed, match="NOT refused"):
        probe(monkeypatch, b"NO [AUTHENTICATIONFAILED] Authentication failed.")


def test_probe_from_a_trusted_address_proves_nothing(monkeypatch):
    stage = stage_with(postfix={"probe_source": "127.0.0.11"})
    known(stage, master={"pid": 7, "stale": False}, doveconf=("", 0))
    with pytest.raises(OperationFailed, match="proves nothing"):
        run(dv.probe_plaintext_refused(stage))


def test_probe_skipped_when_only_the_servers_loopback_listens():
    stage = stage_with(dovecot={"listen": ["127.0.0.1"]})
    known(stage, master={"pid": 7, "stale": False}, doveconf=("", 0))
    outcome = run(dv.probe_plaintext_refused(stage))
    assert outcome.status == "skipped" and "loopback only" in outcome.detail


def test_disabled_dovecot_skips_every_step(monkeypatch):
    install_files(monkeypatch)
    stage = stage_with(dovecot={"enabled": False})
    for step in (dv.check_password, dv.check_delivery, dv.install, dv.ensure_login_class,
                 dv.ensure_certificate, dv.ensure_config, dv.check_config, dv.ensure_at_boot,
                 dv.start, dv.verify_listening, dv.imap_login, dv.pop3_login,
                 dv.probe_plaintext_refused):
        assert run(step(stage)).status == "skipped", step.operation_name
    assert stage.commands == []


def test_a_socket_of_another_process_on_dovecots_ports_fails(monkeypatch):
    from runbook.ops.facts import Listener

    monkeypatch.setattr(setup, "LISTEN_WAIT", 0.1)
    stage = stage_with()
    known(stage, master={"pid": 7, "stale": False}, listeners=[
        Listener("127.0.0.11", 143, "dovecot", 7), Listener("127.0.0.11", 993, "dovecot", 7),
        Listener("127.0.0.11", 143, "imap-login", 8),  # a login process shares the listener
        Listener("0.0.0.0", 993, "systemd", 1)])
    with pytest.raises(OperationFailed, match=re.escape("systemd pid 1 on 0.0.0.0:993")):
        run(dv.verify_listening(stage))


def test_rollback_stops_dovecot_and_takes_it_off_at_boot_where_the_runbook_set_it_up(
        monkeypatch):
    install_files(monkeypatch)
    stage = stage_with()
    known(stage, conf="listen = 127.0.0.11\n", master={"pid": 7, "stale": False}, boot=True)
    outcome = run(dv.stop_for_rollback(stage))
    assert outcome.status == "changed"
    assert "systemctl stop dovecot" in stage.commands[0]
    assert stage.commands[1] == "systemctl disable dovecot"
    untouched = stage_with()
    known(untouched, conf=None, master={"pid": 7, "stale": False}, boot=True)
    assert run(dv.stop_for_rollback(untouched)).status == "ok" and untouched.commands == []


# --- the plan without connecting (`runbook plan`) -------------------------------------------

def dovecot_plan(example: str) -> str:
    from pathlib import Path

    from runbook.run import plan

    source = Path(__file__).resolve().parent.parent / "params" / f"{example}.yaml"
    loaded = params.load(source)
    text = plan.render(plan.make(loaded), loaded, str(source))
    return text[text.index("== 70-dovecot"):]


def test_the_openbsd_7_plan_shows_the_login_class_and_rcctl():
    text = dovecot_plan("example-openbsd-7")
    assert "$ pkg_add dovecot" in text
    assert "edit /etc/login.conf.d/dovecot" in text and "+\t:openfiles-max=2048:\\" in text
    assert "keep a copy of /etc/rc.conf.local" in text and "$ rcctl enable dovecot" in text
    assert "+pkg_scripts=postfix dovecot" in text
    assert "rcctl start dovecot </dev/null" in text
    assert text.index("login.conf.d/dovecot") < text.index("rcctl enable dovecot") \
        < text.index("rcctl start dovecot") < text.index("IMAP login over TLS")


def test_the_openbsd_5_0_plan_uses_pkg_scripts_and_the_rc_d_script():
    text = dovecot_plan("example-openbsd")
    assert "the dovecot package of OpenBSD 5.0 asks for no login class" in text
    assert '+pkg_scripts="postfix dovecot"' in text
    assert "/etc/rc.d/dovecot start </dev/null" in text and "rcctl" not in text


def test_the_debian_plan_holds_services_and_enables_dovecot_once_configured():
    text = dovecot_plan("example-debian")
    assert "dovecot-imapd" in text and "exit 101" in text
    assert text.index("systemctl disable dovecot") < text.index("99-mail-runbook.conf") \
        < text.index("systemctl enable dovecot") < text.index("systemctl start dovecot")
