"""OpenBSD, the guide's own platform: the profile for a release (`openbsd`), its two eras
(rcconf.py before rcctl, rcctl.py since 5.7), what both share (common.py), Dovecot
(dovecot.py) and OpenBSD's own files and tools (system.py)."""

from __future__ import annotations

from runbook.grammar import unsupported_release
from runbook.platforms.openbsd.common import OpenBSD
from runbook.platforms.openbsd.dovecot import DovecotOnOpenBSD
from runbook.platforms.openbsd.rcconf import OpenBSDRcConf
from runbook.platforms.openbsd.rcctl import OpenBSDRcctl
from runbook.platforms.openbsd.system import mailer_conf_program
from runbook.platforms.profile import Profile, UnsupportedPlatform

__all__ = ["DovecotOnOpenBSD", "OpenBSD", "OpenBSDRcConf", "OpenBSDRcctl",
           "mailer_conf_program", "openbsd"]


def openbsd(release: str) -> Profile:
    problem = unsupported_release("openbsd", release)
    if problem:
        raise UnsupportedPlatform(problem)
    version = tuple(int(x) for x in release.split(".")[:2])
    common = dict(
        name="openbsd", release=release, label=f"OpenBSD {release}", sbin="/usr/local/sbin",
        mail_log="/var/log/maillog", crontab_file="/var/cron/tabs/root",
        queue_runner=r"\bsendmail\b.*\s-q", state_dir="/var/db/mail-runbook",
        chroot_files=("etc/hosts", "etc/localtime", "etc/resolv.conf", "etc/services"),
    )
    if version < (5, 7):
        mta = "sendmail" if version < (5, 6) else "smtpd"
        return OpenBSDRcConf(
            **common, aliases_table="hash:/etc/postfix/aliases",  # the guide's choice (G11)
            previous_mtas=(mta,), previous_mta=mta, syslog_socket=version < (5, 6),
            stock="openbsd-5.0" if mta == "sendmail" else "")
    return OpenBSDRcctl(**common, aliases_table="hash:/etc/mail/aliases",
                        previous_mtas=("smtpd",), stock="openbsd-7.6")


