"""OpenBSD's own files and tools as the profiles use them (shared/openbsd-facts.md): paths,
mailer.conf(5) read as mailwrapper(8) does, shell snippets for its base system."""

from __future__ import annotations

from shlex import quote as q

MAILER_CONF = "/etc/mailer.conf"
RC_CONF_LOCAL = "/etc/rc.conf.local"
POSTFIX_MAILER = "/usr/local/sbin/sendmail"
SYSLOG_PID = "/var/run/syslog.pid"
SENDMAIL_PID = "/var/run/sendmail.pid"
SENDMAIL_PROGRAM = "/usr/libexec/sendmail/sendmail"  # what mailer.conf ran before Postfix
POSTFIX_DOCS = "/usr/local/share/doc/postfix/html"


def mailer_conf_program(text: str | None, name: str = "sendmail") -> str | None:
    """The program mailwrapper(8) runs for `name` according to /etc/mailer.conf."""
    for line in (text or "").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0] == name:
            return fields[1]
    return None


def wait_gone(pid: str, seconds: int = 10) -> str:
    """Shell: wait (bounded) until process `pid` has exited; fails if it has not."""
    ticks = seconds * 10
    return (f"i=0; while kill -0 {pid} 2>/dev/null && [ $i -lt {ticks} ]; do sleep 0.1; "
            f"i=$((i+1)); done; ! kill -0 {pid} 2>/dev/null")


SENDSYSLOG = ("not needed on OpenBSD 5.6 and later: syslog(3) writes through sendsyslog(2), "
              "which needs no /dev/log, so Postfix's chrooted services log without a socket "
              "in the chroot")

def pkg_env(stage) -> str:
    """PKG_PATH for pkg_add when the params give one (the guide's era had no installurl)."""
    pkg_path = stage.params.platform.pkg_path
    return f"PKG_PATH={q(pkg_path)} " if pkg_path else ""
