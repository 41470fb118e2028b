"""Debian's packages (G1, G2): apt-get with every service held until its configuration is
ours, dpkg's view of what is installed."""

from __future__ import annotations

from shlex import quote as q
from typing import ClassVar

from runbook.ops import facts
from runbook.ops.facts import Fact
from runbook.ops.operations import Plan, Run

POLICY_RC_D = "/usr/sbin/policy-rc.d"
POLICY_SAVED = "/usr/sbin/policy-rc.d.mail-runbook-saved"
POLICY_MARK = "mail-runbook"
LOCK_WAIT = 300  # s an install waits for dpkg's lock (an earlier, cut-off install finishing)


def wait_for_package_manager() -> Run:
    """An install whose SSH connection was cut finishes on its own (see `apt_install`) and
    holds dpkg's and debconf's locks meanwhile: the next install waits for it first."""
    return Run("i=0; while pgrep -x apt-get >/dev/null || pgrep -x dpkg >/dev/null; do "
               f"[ $i -lt {LOCK_WAIT * 10} ] || {{ echo 'a package install is still "
               "running' >&2; exit 1; }; sleep 0.1; i=$((i+1)); done",
               why="an install still running (one cut off from its connection) ends first",
               timeout=LOCK_WAIT + 30)


def hold_services(why: str) -> Run:
    """A policy-rc.d that answers 101: dpkg starts no service while it installs (an operator's
    own policy-rc.d is set aside and put back by `release_services`)."""
    return Run(f"if [ -e {POLICY_RC_D} ] && ! grep -q {POLICY_MARK} {POLICY_RC_D}; then "
               f"mv {POLICY_RC_D} {POLICY_SAVED}; fi; "
               f"printf '#!/bin/sh\\n# {POLICY_MARK}: no service starts while it installs\\n"
               f"exit 101\\n' > {POLICY_RC_D} && chmod 755 {POLICY_RC_D}", why=why)


def release_services() -> Run:
    """Always run after the install (a plan's cleanup): left behind, the policy-rc.d would
    stop dpkg from ever starting a service on this host again."""
    return Run(f"if grep -q {POLICY_MARK} {POLICY_RC_D} 2>/dev/null; then rm -f {POLICY_RC_D}; "
               f"fi; if [ -e {POLICY_SAVED} ]; then mv {POLICY_SAVED} {POLICY_RC_D}; fi",
               why="services may start again (a policy-rc.d left behind would stop them)")


def apt_install(packages: list[str], *, known: str, effect) -> Run:
    """One apt-get for all of a stage's packages, without recommends, keeping any changed
    configuration file; the package lists are updated only when apt does not know `known`.

    An install must survive the SSH connection dropping under it: with SIGPIPE and SIGHUP
    ignored, apt and dpkg finish instead of dying half-way through unpacking; the next
    install waits for their lock (DPkg::Lock::Timeout) and first finishes whatever an
    earlier dpkg left unconfigured (`dpkg --configure -a`)."""
    return Run("trap '' HUP PIPE; dpkg --configure -a; "
               f"apt-cache show {q(known)} >/dev/null 2>&1 || apt-get update -q; "
               "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
               f"-o DPkg::Lock::Timeout={LOCK_WAIT} "
               "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "
               + " ".join(q(p) for p in packages), timeout=900,
               why="install " + ", ".join(packages), effect=effect)


def leftover_hold(text: str | None) -> bool:
    """A policy-rc.d of ours outside an install: an install was cut short before its
    cleanup ran (the connection dropped, the host rebooted)."""
    return text is not None and POLICY_MARK in text


def installed_query(names) -> str:
    return ("dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' " + " ".join(names)
            + " 2>/dev/null")


def parse_dpkg_status(text: str) -> dict[str, bool]:
    """`dpkg-query -W -f='${Package} ${db:Status-Abbrev}'`: installed ("ii") or not."""
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            found[parts[0]] = parts[1].startswith("ii")
        elif len(parts) == 1:
            found[parts[0]] = False
    return found


class DebianPackages:
    """G1 and G2 the Debian way (mixed into `Debian`)."""

    PACKAGES: ClassVar[dict[str, tuple[str, ...]]] = {
        # role: (package to install, other packages that already fill the role)
        "postfix": ("postfix",),
        "syslog": ("rsyslog", "syslog-ng-core", "busybox-syslogd", "inetutils-syslogd"),
        "reader": ("bsd-mailx", "mailutils", "s-nail"),
    }
    INSTALLS: ClassVar[tuple[str, ...]] = ("postfix", "syslog", "reader")  # roles G1 fills
    SERVICES: ClassVar[tuple[str, ...]]  # DebianServices: a package's service enabled at install

    def packages(self) -> Fact:
        names = sorted({p for group in self.PACKAGES.values() for p in group})
        return Fact("dpkg packages", installed_query(names), lambda out, _s: parse_dpkg_status(out),
                    fresh=lambda host: {n: n in host.packages for n in names})

    async def install(self, stage) -> Plan:
        installed, hold = await facts.read(stage, self.packages(), facts.file(POLICY_RC_D))
        wanted = [package for package, *others in map(self.PACKAGES.get, self.INSTALLS)
                  if not any(installed.get(p) for p in (package, *others))]
        have = ", ".join(sorted(p for p, ok in installed.items() if ok)) or "none of them"
        plan = Plan("install Postfix", found=f"installed: {have}")
        if not wanted:
            if leftover_hold(hold):
                plan.steps = [release_services()]
                plan.found += f"; {POLICY_RC_D} left by an install that was cut short"
            return plan
        myhostname = stage.params.postfix.myhostname
        # "Internet Site" gives the fullest main.cf; nothing runs before the configure stage.
        preseed = ("postfix postfix/main_mailer_type select Internet Site\n"
                   f"postfix postfix/mailname string {myhostname}\n")
        plan.steps = [
            wait_for_package_manager(),
            hold_services("no service may start before its configuration is ours"),
            Run("debconf-set-selections", input=preseed,
                why="answer the package's questions ahead (no dialogs)"),
            apt_install(wanted, known="postfix",
                        effect=lambda host: self._apt_installed(host, wanted, stage.params)),
        ]
        plan.cleanup = [release_services()]
        return plan

    def _apt_installed(self, host, packages: list[str], params) -> None:
        """The imagined host after apt-get install: the packages' files, their services
        enabled (Debian enables them at install) but none started (policy-rc.d)."""
        for package in packages:
            if package == "postfix":
                self.add_package_files(host, params)
                host.add("/etc/aliases.db")  # the package's postinst runs newaliases
            host.packages.add(package)
            if package in self.SERVICES:
                host.enabled.add(package)

    async def publish_docs(self, stage, directory: str | None) -> Plan:
        plan = Plan("publish Postfix's HTML documentation")
        if not directory:
            plan.skip = ("optional, and no postfix.html_docs_dir given (Debian ships the "
                         "documentation in the postfix-doc package)")
            return plan
        source = "/usr/share/doc/postfix/html"
        present, installed = await facts.read(
            stage, facts.exists(f"{directory}/index.html"), self.packages())
        if present:
            plan.found = f"{directory}/index.html exists"
            return plan
        if not installed.get("postfix-doc"):
            plan.steps.append(Run(
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix-doc",
                timeout=600, why="Debian keeps the HTML documentation in postfix-doc"))
        plan.steps.append(Run(f"mkdir -p {q(directory)} && cp -R {source}/. {q(directory)}",
                              why=f"readable on the host under {directory}"))
        return plan

