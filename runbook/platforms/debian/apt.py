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
    configuration file; the package lists are updated only when apt does not know `known`."""
    return Run(f"apt-cache show {q(known)} >/dev/null 2>&1 || apt-get update -q; "
               "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
               "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "
               + " ".join(q(p) for p in packages), timeout=900,
               why="install " + ", ".join(packages), effect=effect)


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
        installed = await facts.read_one(stage, self.packages())
        wanted = [package for package, *others in map(self.PACKAGES.get, self.INSTALLS)
                  if not any(installed.get(p) for p in (package, *others))]
        have = ", ".join(sorted(p for p, ok in installed.items() if ok)) or "none of them"
        plan = Plan("install Postfix", found=f"installed: {have}")
        if not wanted:
            return plan
        myhostname = stage.params.postfix.myhostname
        # "Internet Site" gives the fullest main.cf; nothing runs before the configure stage.
        preseed = ("postfix postfix/main_mailer_type select Internet Site\n"
                   f"postfix postfix/mailname string {myhostname}\n")
        plan.steps = [
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

