"""OpenBSD 5.7 and later: rcctl(8) for every boot and run setting, smtpd as the MTA to
replace, no syslogd socket (sendsyslog(2))."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from runbook.ops import facts
from runbook.ops.edits import rcctl_edit
from runbook.ops.facts import Fact
from runbook.ops.operations import Keep, Plan, Run
from runbook.platforms.openbsd.common import OpenBSD
from runbook.platforms.openbsd.system import RC_CONF_LOCAL, SENDSYSLOG


@dataclass(frozen=True)
class OpenBSDRcctl(OpenBSD):
    """OpenBSD 5.7 and later: rcctl(8), smtpd as the MTA to replace."""

    previous_mta: str = "smtpd"

    # `rcctl ls on` on a fresh install (rc.conf's defaults that are not NO)
    FRESH_ON: ClassVar[frozenset[str]] = frozenset({
        "check_quotas", "cron", "dhcpleased", "library_aslr", "ntpd", "pf", "pflogd",
        "resolvd", "slaacd", "smtpd", "sndiod", "sshd", "syslogd"})

    def fresh_host(self, params) -> facts.FreshHost:
        host = super().fresh_host(params)
        host.enabled |= self.FRESH_ON
        host.running |= self.FRESH_ON - {"check_quotas", "library_aslr", "pf"}
        return host

    def enabled(self) -> Fact:
        """The daemons rcctl starts at boot (`rcctl ls on`)."""
        return Fact("rcctl ls on", "rcctl ls on", lambda out, _s: set(out.split()),
                    fresh=lambda host: set(host.enabled))

    def previous_mta_running(self) -> Fact:
        return Fact(f"{self.previous_mta} running", f"rcctl check {self.previous_mta}",
                    lambda _out, status: status == 0,
                    fresh=lambda host: self.previous_mta in host.running)

    def prefetch(self, stage_name: str) -> list[Fact]:
        return {
            "10-install": [self.package()],
            "20-enable": [*self.mailer_facts(), self.package(), self.enabled()],
            "40-start": [self.previous_mta_running(), self.listeners()],
            "95-rollback": [*self.mailer_facts(), self.enabled(), self.previous_mta_running()],
        }.get(stage_name, [])

    def _rcctl(self, action: str, daemon: str, *, base: bool, why: str) -> list:
        def effect(host):
            host.files[RC_CONF_LOCAL] = rcctl_edit(host.read(RC_CONF_LOCAL), action, daemon,
                                                   base=base)
            host.touch(RC_CONF_LOCAL)
            (host.enabled.add if action == "enable" else host.enabled.discard)(daemon)
        return [Keep(RC_CONF_LOCAL, why="rcctl rewrites it (sorted); kept to go back byte "
                                        "for byte"),
                Run(f"rcctl {action} {daemon}", why=why, effect=effect)]

    async def previous_mta_off_at_boot(self, stage) -> Plan:
        on = await facts.read_one(stage, self.enabled())
        mta = self.previous_mta
        plan = Plan("previous mail server off at boot",
                    found=f"{mta} is {'enabled' if mta in on else 'not enabled'} (rcctl ls on)")
        if mta in on:
            plan.steps = self._rcctl("disable", mta, base=True,
                                     why=f"{mta}_flags=NO: {mta} does not start at boot")
        return plan

    async def chroot_log_socket(self, stage) -> Plan:
        return Plan("log socket inside Postfix's chroot", skip=SENDSYSLOG)

    async def syslog_reload(self, stage) -> Plan:
        return Plan("system logger re-reads its configuration", skip=SENDSYSLOG)

    async def postfix_on_at_boot(self, stage) -> Plan:
        return await self.package_on_at_boot(stage, "Postfix on at boot", "postfix")

    async def package_on_at_boot(self, stage, name: str, daemon: str) -> Plan:
        """`rcctl enable` a package's daemon unless `rcctl ls on` lists it already."""
        on = await facts.read_one(stage, self.enabled())
        plan = Plan(name, found=f"{daemon} is {'enabled' if daemon in on else 'not enabled'}")
        if daemon not in on:
            plan.steps = self._rcctl("enable", daemon, base=False,
                                     why=f"{daemon} joins pkg_scripts: it starts at boot")
        return plan

    async def stop_previous_mta(self, stage) -> Plan:
        running = await facts.read_one(stage, self.previous_mta_running())
        mta = self.previous_mta
        plan = Plan("previous mail server stopped",
                    found=f"{mta} {'runs' if running else 'is not running'} (rcctl check)")
        if running:
            plan.steps = [Run(f"rcctl stop {mta}", why=f"{mta} would hold port 25",
                              effect=lambda host: host.running.discard(mta))]
            plan.undo = [self.start_previous_mta()]
        return plan

    def start_previous_mta(self) -> Run:
        return Run(f"rcctl -f start {self.previous_mta}", why="the previous MTA back")

    def start_postfix(self) -> Run:
        return Run("rcctl start postfix", why="rcctl starts the package's rc.d script",
                   effect=lambda host: host.running.add("postfix"))

    def stop_postfix(self) -> Run:
        return Run("rcctl stop postfix", why="Postfix stops serving mail")

    async def previous_mta_back(self, stage) -> Plan:
        on, running = await facts.read(stage, self.enabled(), self.previous_mta_running())
        mta = self.previous_mta
        plan = Plan("previous mail server back",
                    found=f"{mta} {'is' if mta in on else 'is not'} enabled, "
                          f"{'runs' if running else 'is not running'}")
        if mta in on and not running:
            plan.steps = [Run(f"rcctl start {mta}", why=f"{mta} runs again, as before")]
        return plan

