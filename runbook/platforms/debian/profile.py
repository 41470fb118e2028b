"""The Debian profile, composed of what each part of the system does its own way: packages
(apt.py), services (systemd.py), the system logger (rsyslog.py) and Dovecot (dovecot.py).

Debian's departures from the guide's OpenBSD, step by step:

- G1: `apt-get install` instead of `pkg_add`, with debconf answers preseeded and a
  `policy-rc.d` that keeps every service stopped until the configuration is ours;
- G3: the postfix package itself installs `/usr/sbin/sendmail` (Debian has no mailer.conf);
- G4/G6: boot start and stop are systemd units, not rc.conf.local lines;
- G5/G8: rsyslog gets the extra log socket in Postfix's chroot from a file in
  /etc/rsyslog.d (the postfix package ships it), and is restarted rather than sent HUP;
  Debian 13 installs no syslog daemon: the journal keeps the mail log (journal.py);
- G7: Debian's MTAs keep no queue runner in root's crontab (checked anyway);
- G13/G16: `systemctl stop`/`start`; systemd's postfix unit also conflicts with exim4;
- G18/G24: Debian 13's mail log is the journal's mail facility, not /var/log/mail.log.
"""

from __future__ import annotations

import re
from shlex import quote as q
from typing import ClassVar

from runbook.grammar import unsupported_release
from runbook.ops import facts
from runbook.ops.facts import Fact
from runbook.ops.operations import OperationFailed, Plan
from runbook.platforms.debian.apt import POLICY_RC_D, DebianPackages
from runbook.platforms.debian.dovecot import DovecotOnDebian
from runbook.platforms.debian.journal import JOURNAL_MAIL_LOG, JournalLogging
from runbook.platforms.debian.rsyslog import DebianLogging
from runbook.platforms.debian.systemd import DebianServices
from runbook.platforms.profile import Profile, UnsupportedPlatform


class Debian(DovecotOnDebian, DebianLogging, DebianServices, DebianPackages, Profile):
    """Debian 12 (bookworm) with systemd; `Debian13` holds what changed since. The parts read
    each other's facts (`packages`, `boot_services`, `running_services`) through `self`."""

    def listeners(self) -> Fact:
        return Fact("listening sockets", "ss -Hltnp",
                    lambda out, _s: facts.parse_ss_listeners(out), fresh=[])

    def postfix_check(self) -> str:
        # script(1) gives postfix check a terminal, so its warnings reach us (and not only
        # the mail log); -e passes on its exit status.
        return f"script -qec {q(self.postfix + ' check')} /dev/null"

    def check_complaints(self, said: str) -> str:
        # Debian 13's postfix check also brings the chroot's copies of /etc files up to date
        # (post-install runs configure-instance.sh) and says so; that is no complaint.
        notice = re.compile(rf"updating /\S+ => {re.escape(self.queue_dir)}/+\S+")
        return "\n".join(line for line in said.splitlines()
                         if not notice.fullmatch(line.strip())).strip()

    def sendmail_owner(self) -> Fact:
        def fresh(host):
            if "postfix" in host.packages:
                return f"postfix: {self.sendmail}\n", 0
            return f"dpkg-query: no path found matching pattern {self.sendmail}\n", 1
        return Fact("sendmail owner", f"dpkg-query -S {q(self.sendmail)} 2>&1",
                    lambda out, status: (out, status), fresh)

    def prefetch(self, stage_name: str) -> list[Fact]:
        return {
            # a policy-rc.d left by a cut-off install is looked for with the packages
            "10-install": [self.packages(), facts.file(POLICY_RC_D)],
            "20-enable": [self.sendmail_owner(), self.boot_services(), self.packages(),
                          self.rsyslog_conf(), self.running_services(), self.log_socket()],
            "40-start": [self.running_services(), self.listeners()],
            "70-dovecot": [facts.file(POLICY_RC_D)],
            "95-rollback": [self.boot_services(), self.previous_mta_marker()],
        }.get(stage_name, [])

    async def system_mailer(self, stage) -> Plan:
        (text, status), installed = await facts.read(
            stage, self.sendmail_owner(), self.packages())
        plan = Plan("Postfix is the system mailer")
        package = text.split(":", 1)[0].strip() if status == 0 else ""
        if package != "postfix" and stage.dry_run and not installed.get("postfix"):
            plan.skip = "dry run: the postfix package (install stage) would install it"
        elif package != "postfix":
            raise OperationFailed(
                f"{self.sendmail} belongs to {package or 'no package'} ({text.strip()}), not "
                "to postfix: on Debian the postfix package installs it, so the install "
                "stage (10-install) has not completed — run it again")
        else:
            plan.found = f"{self.sendmail} is installed by the postfix package"
        return plan

    async def restore_system_mailer(self, stage) -> Plan:
        return Plan("system mailer", skip=(
            "Debian has no mailer.conf: /usr/sbin/sendmail belongs to the postfix package "
            "while it is installed (installing it removed any other MTA package)"))


class Debian13(JournalLogging, Debian):
    """Debian 13 (trixie): Postfix 3.10 (a fresh main.cf says compatibility_level = 3.9),
    the journal as the system log (no rsyslog unless the operator adds it), and Dovecot 2.4,
    whose configuration names its settings anew."""

    dovecot_syntax: ClassVar[str] = "2.4"


def debian(release: str) -> Profile:
    problem = unsupported_release("debian", release)
    if problem:
        raise UnsupportedPlatform(problem)
    major = release.split(".")[0]
    journal = major == "13"
    return (Debian13 if journal else Debian)(
        name="debian", release=major, label=f"Debian {major}", sbin="/usr/sbin",
        mail_log="" if journal else "/var/log/mail.log",
        mail_log_reader=JOURNAL_MAIL_LOG if journal else "",
        aliases_table="hash:/etc/aliases",
        crontab_file="/var/spool/cron/crontabs/root",
        queue_runner=r"\b(sendmail|exim4?)\b.*\s-q",
        previous_mtas=("exim4", "sendmail", "opensmtpd"),
        chroot_files=("etc/localtime", "etc/services", "etc/resolv.conf", "etc/hosts",
                      "etc/host.conf", "etc/nsswitch.conf"),
        stock=f"debian-{major}",
    )
