"""Dovecot the OpenBSD way (G22)."""

from __future__ import annotations

import re
from shlex import quote as q

from runbook.ops import facts
from runbook.ops.edits import merge_words
from runbook.ops.facts import Fact
from runbook.ops.operations import Plan, Run, Write
from runbook.platforms.openbsd.system import RC_CONF_LOCAL, pkg_env
from runbook.platforms.profile import dovecot_detached


class DovecotOnOpenBSD:
    """Dovecot the OpenBSD way (G22), mixed into the OpenBSD profiles: the dovecot package
    (IMAP and POP3 in one), the login class its README-server asks for (7.1 and later),
    rcctl (5.7 and later) or pkg_scripts in rc.conf.local (before), the package's
    /etc/rc.d/dovecot. Paths as the port installs them (shared/openbsd-facts.md, 5)."""

    dovecot_sbin = "/usr/local/sbin"
    dovecot_bin = "/usr/local/bin"
    # where the package's 10-ssl.conf and dovecot-mkcert.sh put them
    dovecot_cert = "/etc/ssl/dovecotcert.pem"
    dovecot_key = "/etc/ssl/private/dovecot.pem"
    dovecot_privileged_group = ""  # no "mail" group; UNCONFIRMED what real mbox locking needs
    DOVECOT_LOGIN_CONF = "/etc/login.conf.d/dovecot"
    # README-server rev 1.5 (2022/02/18, so OpenBSD 7.1 on), word for word
    DOVECOT_LOGIN_CLASS = ("dovecot:\\\n\t:openfiles-cur=1024:\\\n\t:openfiles-max=2048:\\\n"
                           "\t:tc=daemon:\n")

    def _dovecot_release(self) -> tuple[int, int]:
        major, minor = (int(x) for x in self.release.split(".")[:2])
        return major, minor

    @property
    def _dovecot_rcctl(self) -> bool:
        return self._dovecot_release() >= (5, 7)

    def dovecot_packages(self) -> Fact:
        command = ("pkg_info -e 'dovecot-*' 2>/dev/null || { test -x "
                   f"{q(self.dovecot_sbin)}/dovecot && echo 'inst:(dovecot, not a package)'; }}")

        def parse(out: str, _status: int) -> dict[str, bool]:
            return dict.fromkeys(("imap", "pop3"), "inst:" in out)
        return Fact("dovecot packages", command, parse,
                    fresh=lambda host: dict.fromkeys(("imap", "pop3"),
                                                     "dovecot" in host.packages))

    def dovecot_boot(self) -> Fact:
        """rcctl's `ls on` (5.7 and later) or rc.conf.local (before): dovecot_at_boot reads
        it."""
        return self.enabled() if self._dovecot_rcctl else self.rc_conf_local()

    async def dovecot_install(self, stage, pop3: bool) -> Plan:
        installed = await facts.read_one(stage, self.dovecot_packages())
        plan = Plan("install Dovecot", found="dovecot is installed" if installed["imap"]
                    else "no dovecot package")
        if installed["imap"]:
            return plan
        env = pkg_env(stage)

        def effect(host) -> None:
            host.packages.add("dovecot")
            host.add("/etc/rc.d/dovecot")
        plan.steps = [Run(f"{env}pkg_add dovecot", timeout=900, effect=effect,
                          why="one package serves IMAP and POP3; it adds /etc/rc.d/dovecot "
                              "and starts nothing")]
        return plan

    async def dovecot_login_class(self, stage) -> Plan:
        path = self.DOVECOT_LOGIN_CONF
        plan = Plan("Dovecot's login class")
        if self._dovecot_release() < (5, 7):
            plan.skip = f"the dovecot package of {self.label} asks for no login class"
            return plan
        if self._dovecot_release() < (7, 1):
            plan.skip = (f"{path} is what the package's README asks for since 7.1; for "
                         f"{self.label} see the package's own README (not done here)")
            return plan
        text, directory = await facts.read(stage, facts.file(path),
                                           facts.exists("/etc/login.conf.d", "-d"))
        if text is not None and re.search(r"^dovecot[:|]", text, re.M):
            plan.found = f"{path} defines the dovecot class (kept as it is)"
            return plan
        plan.found = f"{path} {'does not define the dovecot class' if text else 'is missing'}"
        if not directory:
            plan.steps.append(Run("mkdir -p /etc/login.conf.d", why="login.conf(5)'s "
                                  "directory of per-class files",
                                  effect=lambda host: host.add("/etc/login.conf.d")))
        plan.steps.append(Write(path, text, self.DOVECOT_LOGIN_CLASS, mode=0o644,
                                why="README-server: the _dovecot user, and so Dovecot's "
                                    "processes, run in the login class dovecot (more open "
                                    "files); rc.d finds it by the daemon's name"))
        return plan

    async def dovecot_at_boot(self, stage) -> Plan:
        if not self._dovecot_rcctl:
            return await self._rc_conf_plan(
                stage, "Dovecot at boot", "pkg_scripts",
                lambda value: merge_words(value, "dovecot"), quoted=True,
                why="/etc/rc starts the package scripts listed here, in order (dovecot "
                    "after postfix)")
        return await self.package_on_at_boot(stage, "Dovecot at boot", "dovecot")

    def dovecot_service(self, action: str) -> Run:
        command = (f"rcctl {q(action)} dovecot" if self._dovecot_rcctl
                   else f"/etc/rc.d/dovecot {q(action)}")

        def effect(host) -> None:
            (host.running.add if action == "start" else
             host.running.discard if action == "stop" else (lambda _name: None))("dovecot")
        return Run(dovecot_detached(command), effect=effect,
                   why=f"the package's rc.d script {action}s Dovecot")

    async def dovecot_off_at_boot(self, stage) -> Plan:
        return Plan("Dovecot off at boot", skip=(
            f"pkg_scripts in {RC_CONF_LOCAL} goes back with the restored files"
            + ("" if not self._dovecot_rcctl else
               " (the copy kept before rcctl first rewrote it)")))

