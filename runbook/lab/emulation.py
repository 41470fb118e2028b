"""The emulated OpenBSD layout: the labelled shims of runbook/lab/files/openbsd/ laid over
the base, mailwrapper in place of Debian's MTA links (docs/openbsd-emulation.md)."""


import os
import shutil
from pathlib import Path

from runbook.lab.config import (
    EMULATION_MARKER,
    EMULATION_MASKED_UNITS,
    LABFILES,
    MAILWRAPPER_LINKS,
    Flavor,
)
from runbook.lab.system import _gid, _mask


def _emulate(kind: Flavor, root: Path) -> None:
    """Lay the release's OpenBSD files over the root (lab/files/openbsd/{common,RELEASE})."""
    source = LABFILES / kind.name
    for tree in (source / "common", source / kind.release):
        for path in sorted(tree.rglob("*")):
            target = root / path.relative_to(tree)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                target.chmod(0o755 if os.access(path, os.X_OK) else 0o644)
    (root / "etc/mail-runbook-emulation").write_text(EMULATION_MARKER.format(
        release=kind.release, name="", address=""))
    for link in MAILWRAPPER_LINKS:
        target = root / link
        target.unlink(missing_ok=True)
        target.symlink_to("/usr/sbin/mailwrapper")
    # root's crontab: Debian's cron keeps it in /var/spool/cron/crontabs, OpenBSD's in
    # /var/cron/tabs; the latter is a link to the former
    crontab = root / "var/spool/cron/crontabs/root"
    os.chown(crontab, 0, _gid(root, "crontab"))
    crontab.chmod(0o600)
    (root / "var/cron").mkdir(exist_ok=True)
    (root / "var/cron/tabs").symlink_to("/var/spool/cron/crontabs")
    # OpenBSD's syslogd opens only log files that exist
    for log in ("var/log/messages", "var/log/authlog", "var/log/secure", "var/log/daemon",
                "var/log/maillog", "var/log/xferlog", "var/log/lpd-errs", "var/cron/log"):
        (root / log).touch()
        (root / log).chmod(0o640 if "secure" in log or "authlog" in log else 0o644)
    for directory in ("var/db/pkg", "var/www/htdocs", "usr/local/sbin", "usr/local/libexec",
                      "var/empty", "etc/login.conf.d"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    if kind.release == "5.0":
        (root / "etc/login.conf.d").rmdir()  # a later release's (README-server, 2022)
    # OpenBSD has no /etc/os-release; nspawn still finds /usr/lib/os-release
    (root / "etc/os-release").unlink(missing_ok=True)
    _mask(root, EMULATION_MASKED_UNITS)
    (root / "etc/systemd/system/syslog.service").unlink(missing_ok=True)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "openbsd-rc.service").unlink(missing_ok=True)
    (wants / "openbsd-rc.service").symlink_to("/etc/systemd/system/openbsd-rc.service")


