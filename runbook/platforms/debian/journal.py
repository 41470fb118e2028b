"""Debian 13's system log (G5, G8, G18): the journal.

Debian 13 no longer installs a syslog daemon: systemd-journald owns /dev/log and keeps the
mail log, read with `journalctl SYSLOG_FACILITY=2` (the mail facility). Postfix's daemons open
their log socket before they chroot (openlog with LOG_NDELAY), so no extra socket inside the
chroot is needed for them to log, and journald re-reads nothing. An operator who added
rsyslog gets what Debian 12 gets: its socket in the chroot, its restart.
"""

from __future__ import annotations

from typing import ClassVar

from runbook.ops import facts
from runbook.ops.operations import Plan

# The mail facility's lines, as a syslog file has them, from the newest 20000 entries of
# the journal (a bounded read however big the journal is).
JOURNAL_MAIL_LOG = "journalctl -q --no-pager -o short -n 20000 SYSLOG_FACILITY=2"
JOURNAL_NOTE = ("Debian 13 logs to the journal (no syslog daemon is installed by default); "
                "Postfix's daemons open /dev/log before they chroot")


class JournalLogging:
    """The logging steps on a Debian without rsyslog (mixed into `Debian13` before
    `Debian`, whose rsyslog steps it hands over to when rsyslog is installed)."""

    INSTALLS: ClassVar[tuple[str, ...]] = ("postfix", "reader")  # no syslog daemon added

    async def chroot_log_socket(self, stage) -> Plan:
        if (await facts.read_one(stage, self.packages())).get("rsyslog"):
            return await super().chroot_log_socket(stage)
        return Plan("log socket inside Postfix's chroot",
                    skip=f"{JOURNAL_NOTE}: no socket inside the chroot is needed")

    async def syslog_reload(self, stage) -> Plan:
        if (await facts.read_one(stage, self.packages())).get("rsyslog"):
            return await super().syslog_reload(stage)
        return Plan("system logger re-reads its configuration",
                    skip=f"{JOURNAL_NOTE}: journald has nothing to re-read")
