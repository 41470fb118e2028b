"""The preflight survey parser and the stage manifest: pure functions, no SSH."""

from datetime import UTC, datetime

import pytest

from runbook.errors import RunbookError
from runbook.run import manifest as stages
from runbook.services import preflight

DEBIAN_SURVEY = """\
@@ clock
2026-11-28T14:05:01Z
@@ sendmail
/usr/sbin/exim4
@@ processes
cron
exim4
sshd
systemd
@@ postconf
alias_maps = hash:/etc/aliases
mydestination = $myhostname, localhost
smtpd_banner = $myhostname ESMTP
smtpd_relay_restrictions = permit_mynetworks,
    reject_unauth_destination
# present
@@ listening
LISTEN 0 100 127.0.0.11:25 0.0.0.0:* users:(("exim4",pid=51,fd=3))
LISTEN 0 100 127.0.0.11:22 0.0.0.0:* users:(("sshd",pid=40,fd=3))
@@ disk
/dev/vda 263174212 23000000 230000000 10% /
@@ resolves
127.0.0.11      mail.deb1.test deb1.test deb1
@@ recipient
uid=1000(mailtest) gid=1000(mailtest) groups=1000(mailtest),8(mail)
-rw-rw---- 1 mailtest mail 0 Nov 28 14:00 /var/mail/mailtest
"""

OPENBSD_SURVEY = """\
@@ clock
2026-11-28T14:05:01Z
@@ sendmail
/usr/libexec/sendmail/sendmail
@@ processes
sendmail
syslogd
@@ postconf
@@ listening
tcp          0      0  127.0.0.1.25           *.*                    LISTEN
tcp          0      0  *.22                   *.*                    LISTEN
@@ disk
/dev/wd0e 1000000 100000 50000 67% /var
@@ resolves
@@ recipient
"""


def test_debian_survey():
    s = preflight.parse_survey(DEBIAN_SURVEY)
    assert s.clock == datetime(2026, 11, 28, 14, 5, 1, tzinfo=UTC)
    assert s.sendmail == "/usr/sbin/exim4"
    assert s.mta_running == ["exim4"]
    assert s.postfix_present
    assert s.postconf["smtpd_relay_restrictions"] == (
        "permit_mynetworks, reject_unauth_destination")
    assert set(s.unmanaged) == {"smtpd_banner", "smtpd_relay_restrictions"}
    assert s.listening == {25: ["127.0.0.11 (exim4)"]}
    assert s.var_free_mb == 230000000 // 1024
    assert "mail.deb1.test" in s.hostname_resolves
    assert s.recipient.startswith("uid=1000(mailtest)")
    assert s.mailbox.endswith("/var/mail/mailtest")


def test_openbsd_survey():
    s = preflight.parse_survey(OPENBSD_SURVEY)
    assert s.sendmail == "/usr/libexec/sendmail/sendmail"
    assert s.mta_running == ["sendmail"]
    assert not s.postfix_present and s.postconf == {}
    assert s.listening == {25: ["127.0.0.1"]}
    assert s.var_free_mb == 48
    assert s.recipient == "" and s.hostname_resolves == ""


def test_survey_command_quotes_values():
    command = preflight.survey_command("mail.example.org", "samt")
    assert "getent hosts mail.example.org" in command and "id samt" in command
    hostile = preflight.survey_command("x'; rm -rf /; '", "u")
    assert "'x'\"'\"'; rm -rf /; '\"'\"''" in hostile


def test_stage_names_short_and_long():
    assert stages.find("preflight") is stages.find("00-preflight")
    with pytest.raises(RunbookError, match="unknown stage 'nope'"):
        stages.find("nope")


def test_default_run_follows_the_manifest_order():
    default = [s.name for s in stages.select()]
    assert default == [s.name for s in stages.MANIFEST if s.default]
    assert [s.name for s in stages.select(["preflight"])] == ["00-preflight"]
