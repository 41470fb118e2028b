"""Debian's services (G4, G6, G13, G16 and their way back in G23): systemd units, asked one
at a time since `systemctl is-enabled` stops at the first unknown unit."""

from __future__ import annotations

from shlex import quote as q
from typing import ClassVar

from runbook.ops import facts
from runbook.ops.facts import Fact
from runbook.ops.operations import Plan, Run

PREVIOUS_MTA = "previous-mta"  # in the profile's state_dir: services G4 disabled


def parse_pairs(text: str) -> dict[str, str]:
    """Lines `name state` as a dict."""
    return dict(line.split(None, 1) for line in text.splitlines() if len(line.split()) == 2)


class DebianServices:
    """Boot and run state the systemd way (mixed into `Debian`)."""

    SERVICES: ClassVar[tuple[str, ...]] = ("postfix", "rsyslog", "exim4", "sendmail",
                                           "opensmtpd")

    def boot_services(self) -> Fact:
        """Each service's boot state (is-enabled; "absent" when there is no such unit).
        One call per unit: systemctl stops at the first unknown one."""
        command = (f"for u in {' '.join(self.SERVICES)}; do "
                   'e=$(systemctl is-enabled "$u" 2>/dev/null); echo "$u ${e:-absent}"; done')
        def fresh(host):
            return {s: "enabled" if s in host.enabled else
                    "disabled" if s in host.packages else "absent" for s in self.SERVICES}
        return Fact("services at boot", command, lambda out, _s: parse_pairs(out), fresh)

    def running_services(self) -> Fact:
        """Each service's state now (active, inactive, failed, …), in one call."""
        command = "systemctl is-active " + " ".join(self.SERVICES)
        def fresh(host):
            return {s: "active" if s in host.running else "inactive" for s in self.SERVICES}
        return Fact("services running", command,
                    lambda out, _s: dict(zip(self.SERVICES, out.split(), strict=False)), fresh)


    async def previous_mta_off_at_boot(self, stage) -> Plan:
        boot = await facts.read_one(stage, self.boot_services())
        plan = Plan("previous mail server off at boot")
        enabled = [s for s in self.previous_mtas
                   if boot.get(s) in ("enabled", "enabled-runtime")]
        present = [s for s in self.previous_mtas if boot.get(s, "absent") != "absent"]
        plan.found = (", ".join(f"{s} {boot[s]}" for s in present) if present
                      else "no other mail server is installed")
        plan.steps = [Run(f"systemctl disable {q(s)}", why=f"{s} must not start at boot",
                          effect=lambda host, s=s: host.enabled.discard(s))
                      for s in enabled]
        if enabled:  # remembered for going back (95-rollback); not a file it restores
            marker = f"{self.state_dir}/{PREVIOUS_MTA}"
            plan.steps.insert(0, Run(
                f"mkdir -p {q(self.state_dir)} && printf '%s\\n' {' '.join(map(q, enabled))}"
                f" >> {q(marker)}", why="remember what to enable again when going back"))
        return plan


    async def postfix_on_at_boot(self, stage) -> Plan:
        state = (await facts.read_one(stage, self.boot_services())).get("postfix", "absent")
        plan = Plan("Postfix on at boot", found=f"postfix.service is {state}")
        if state != "enabled":
            plan.steps = [Run("systemctl enable postfix", why="start Postfix at boot",
                              effect=lambda host: host.enabled.add("postfix"))]
        return plan

    # --- G13, G16 ------------------------------------------------------------------------------
    async def stop_previous_mta(self, stage) -> Plan:
        states = await facts.read_one(stage, self.running_services())
        running = [s for s in self.previous_mtas if states.get(s) == "active"]
        plan = Plan("previous mail server stopped",
                    found=f"running: {', '.join(running)}" if running
                    else "no other mail server is running")
        plan.steps = [Run(f"systemctl stop {q(s)}", why=f"{s} would hold port 25",
                          effect=lambda host, s=s: host.running.discard(s))
                      for s in running]
        plan.undo = [Run(f"systemctl start {q(s)}", why="Postfix did not take over")
                     for s in running]
        return plan

    def start_postfix(self) -> Run:
        return Run("systemctl start postfix", why="systemd starts the master process",
                   effect=self._started)

    def _started(self, host) -> None:
        host.running.add("postfix")
        for name in self.chroot_files:  # Debian's start script copies them into the chroot
            host.add(f"{self.queue_dir}/{name}")

    # --- G23 (95-rollback) ---------------------------------------------------------------------
    def stop_postfix(self) -> Run:
        return Run("systemctl stop postfix", why="Postfix stops serving mail")

    async def postfix_off_at_boot(self, stage) -> Plan:
        state = (await facts.read_one(stage, self.boot_services())).get("postfix", "absent")
        plan = Plan("Postfix off at boot", found=f"postfix.service is {state}")
        if state in ("enabled", "enabled-runtime"):
            plan.steps = [Run("systemctl disable postfix", why="it did not start at boot before")]
        return plan


    def previous_mta_marker(self) -> Fact:
        return facts.file(f"{self.state_dir}/{PREVIOUS_MTA}")

    async def previous_mta_back(self, stage) -> Plan:
        text, boot = await facts.read(stage, self.previous_mta_marker(), self.boot_services())
        services = [s for s in dict.fromkeys((text or "").split())
                    if boot.get(s, "absent") != "absent"]
        marker = f"{self.state_dir}/{PREVIOUS_MTA}"
        plan = Plan("previous mail server back", found=(
            f"the runbook disabled {', '.join(services)}" if services
            else "the runbook disabled no other mail server here"))
        plan.steps = [Run(f"systemctl enable --now {q(s)}", why=f"{s} ran before the switch")
                      for s in services]
        if text is not None:
            plan.steps.append(Run(f"rm -f {q(marker)}", why="nothing left to go back to"))
        return plan
