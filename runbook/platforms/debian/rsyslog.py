"""Debian's system logger (G5, G8): rsyslog gets the log socket inside Postfix's chroot from
a file in /etc/rsyslog.d, and is restarted rather than sent HUP."""

from __future__ import annotations

import re

from runbook.ops import facts
from runbook.ops.edits import active_lines
from runbook.ops.facts import Fact
from runbook.ops.operations import Plan, Run, Write

RSYSLOG_CONF = "/etc/rsyslog.d/postfix.conf"


class DebianLogging:
    """The chroot's log socket from rsyslog (mixed into `Debian`)."""

    def rsyslog_conf(self) -> Fact:
        return facts.file(RSYSLOG_CONF)

    def log_socket(self) -> Fact:
        return facts.exists(f"{self.queue_dir}/dev/log", "-S")


    async def chroot_log_socket(self, stage) -> Plan:
        path = RSYSLOG_CONF
        line = f"$AddUnixListenSocket {self.queue_dir}/dev/log"
        installed, text = await facts.read(stage, self.packages(), self.rsyslog_conf())
        plan = Plan("log socket inside Postfix's chroot")
        if not installed.get("rsyslog"):
            plan.skip = ("the system logger is not rsyslog: give it a socket at "
                         f"{self.queue_dir}/dev/log yourself")
            return plan
        if active_lines(text or "", re.escape(line) + r"\s*$"):
            plan.found = f"{path} adds {self.queue_dir}/dev/log"
            return plan
        new = (text or "# mail-runbook: Postfix's chrooted services log through this "
               "socket (guide step G5)\n")
        if new and not new.endswith("\n"):
            new += "\n"
        plan.steps = [Write(path, text, new + line + "\n",
                            why="rsyslog creates the socket the chrooted smtpd logs to")]
        return plan


    async def syslog_reload(self, stage) -> Plan:
        socket = f"{self.queue_dir}/dev/log"
        installed, running, has_socket = await facts.read(
            stage, self.packages(), self.running_services(), self.log_socket())
        plan = Plan("system logger re-reads its configuration")
        if not installed.get("rsyslog"):
            plan.skip = "rsyslog is not installed"
        elif running.get("rsyslog") != "active":
            plan.found = "rsyslog is not running (it was installed with services held)"
            plan.steps = [Run("systemctl enable --now rsyslog",
                              why="it writes the mail log and the chroot socket",
                              effect=lambda host: (host.enabled.add("rsyslog"),
                                                   host.running.add("rsyslog"),
                                                   host.add(socket)))]
        elif not has_socket:
            plan.found = f"{socket} is missing"
            plan.steps = [Run("systemctl restart rsyslog", why=f"create {socket}",
                              effect=lambda host: host.add(socket))]
        else:
            plan.found = f"rsyslog runs and {socket} exists"
        return plan

