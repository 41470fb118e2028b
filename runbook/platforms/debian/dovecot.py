"""Dovecot the Debian way (G22): dovecot-imapd / dovecot-pop3d installed with services held,
the unit disabled until the configuration is ours, then enabled."""

from __future__ import annotations

from shlex import quote as q
from typing import ClassVar

from runbook.ops import facts
from runbook.ops.facts import Fact
from runbook.ops.operations import Plan, Run
from runbook.platforms.debian.apt import (
    POLICY_RC_D,
    apt_install,
    hold_services,
    installed_query,
    leftover_hold,
    parse_dpkg_status,
    release_services,
    wait_for_package_manager,
)
from runbook.platforms.profile import dovecot_detached


class DovecotOnDebian:
    """Mixed into `Debian`."""

    dovecot_cert: ClassVar[str] = "/etc/dovecot/private/mail-runbook.pem"
    dovecot_key: ClassVar[str] = "/etc/dovecot/private/mail-runbook.key"
    dovecot_privileged_group: ClassVar[str] = "mail"  # /var/mail is root:mail, mode 2775
    DOVECOT_PACKAGES: ClassVar[dict[str, str]] = {"imap": "dovecot-imapd",
                                                   "pop3": "dovecot-pop3d"}

    def dovecot_packages(self) -> Fact:
        command = installed_query(self.DOVECOT_PACKAGES.values())

        def parse(out: str, _status: int) -> dict[str, bool]:
            found = parse_dpkg_status(out)
            return {role: bool(found.get(p)) for role, p in self.DOVECOT_PACKAGES.items()}
        return Fact("dovecot packages", command, parse, fresh=lambda host: {
            role: p in host.packages for role, p in self.DOVECOT_PACKAGES.items()})

    def dovecot_boot(self) -> Fact:
        return Fact("dovecot at boot", "systemctl is-enabled dovecot 2>/dev/null",
                    lambda out, _s: out.strip() == "enabled",
                    fresh=lambda host: "dovecot" in host.enabled)

    async def dovecot_install(self, stage, pop3: bool) -> Plan:
        installed, hold = await facts.read(stage, self.dovecot_packages(),
                                           facts.file(POLICY_RC_D))
        roles = ["imap", "pop3"] if pop3 else ["imap"]
        wanted = [self.DOVECOT_PACKAGES[r] for r in roles if not installed.get(r)]
        have = [p for r, p in self.DOVECOT_PACKAGES.items() if installed.get(r)]
        plan = Plan("install Dovecot", found=f"installed: {', '.join(have) or 'none'}")
        if not wanted:
            if leftover_hold(hold):
                plan.steps = [release_services()]
                plan.found += f"; {POLICY_RC_D} left by an install that was cut short"
            return plan
        plan.steps = [
            wait_for_package_manager(),
            hold_services("Dovecot would start listening on every address before its "
                          "configuration is ours"),
            apt_install(wanted, known=wanted[0], effect=lambda host: host.packages.update(wanted)),
        ]
        if not installed.get("imap"):
            plan.steps.append(Run(
                "systemctl disable dovecot",
                why="the package enables it at boot; the boot step enables it again once "
                    "the configuration is ours"))
        plan.cleanup = [release_services()]
        return plan

    async def dovecot_at_boot(self, stage) -> Plan:
        enabled = await facts.read_one(stage, self.dovecot_boot())
        plan = Plan("Dovecot at boot",
                    found=f"dovecot.service is {'enabled' if enabled else 'not enabled'}")
        if not enabled:
            plan.steps = [Run("systemctl enable dovecot", why="start Dovecot at boot",
                              effect=lambda host: host.enabled.add("dovecot"))]
            plan.undo = [Run("systemctl disable dovecot", why="it was not enabled before")]
        return plan

    def dovecot_service(self, action: str) -> Run:
        def effect(host) -> None:
            (host.running.add if action == "start" else
             host.running.discard if action == "stop" else (lambda _name: None))("dovecot")
        return Run(dovecot_detached(f"systemctl {q(action)} dovecot"), effect=effect,
                   why=f"systemd {action}s Dovecot")

    async def dovecot_off_at_boot(self, stage) -> Plan:
        enabled = await facts.read_one(stage, self.dovecot_boot())
        plan = Plan("Dovecot off at boot",
                    found=f"dovecot.service is {'enabled' if enabled else 'not enabled'}")
        if enabled:
            plan.steps = [Run("systemctl disable dovecot", why="without the runbook's file it "
                              "would start on every address at boot",
                              effect=lambda host: host.enabled.discard("dovecot"))]
        return plan
