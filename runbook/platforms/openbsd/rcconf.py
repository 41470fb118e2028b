"""OpenBSD before rcctl(8) (5.0 as the guide has it, up to 5.6): every boot setting a line of
/etc/rc.conf.local that the runbook writes itself, daemons handled through their pid files
and rc.d scripts."""

from __future__ import annotations

from dataclasses import dataclass
from shlex import quote as q

from runbook.ops import facts
from runbook.ops.edits import get_shell_var, merge_words, set_shell_var
from runbook.ops.facts import Fact
from runbook.ops.operations import Plan, Run, Write
from runbook.platforms.openbsd.common import OpenBSD
from runbook.platforms.openbsd.system import (
    RC_CONF_LOCAL,
    SENDMAIL_PID,
    SENDMAIL_PROGRAM,
    SENDSYSLOG,
    SYSLOG_PID,
    wait_gone,
)


class RcConfLocal:
    """A setting of /etc/rc.conf.local over the defaults of /etc/rc.conf (`rc_defaults`)."""

    rc_defaults: tuple[tuple[str, str], ...]

    def rc_default(self, key: str) -> str:
        return dict(self.rc_defaults).get(key, "")

    def rc_conf_local(self) -> Fact:
        return facts.file(RC_CONF_LOCAL)

    async def _rc_conf_plan(self, stage, name: str, key: str, value_of, *,
                            quoted: bool = False, why: str = "") -> Plan:
        """A plan setting `key` in rc.conf.local to value_of(current effective value)."""
        text = await facts.read_one(stage, self.rc_conf_local())
        current = get_shell_var(text or "", key)
        effective = self.rc_default(key) if current is None else current
        wanted = value_of(effective)
        plan = Plan(name, found=f"{RC_CONF_LOCAL}: " + (
            f"{key}={current}" if current is not None
            else f"no {key} (the default from /etc/rc.conf: {effective or 'empty'})"))
        if current != wanted:
            plan.steps = [Write(RC_CONF_LOCAL, text,
                                set_shell_var(text or "", key, wanted, quoted=quoted),
                                mode=0o644 if text is None else None, why=why)]
        return plan


@dataclass(frozen=True)
class OpenBSDRcConf(RcConfLocal, OpenBSD):
    """OpenBSD before rcctl(8): 5.0 as the guide has it (sendmail), up to 5.6 (smtpd)."""

    syslog_socket: bool = True  # syslogd needs -a for the chroot (before sendsyslog, 5.6)
    # /etc/rc.conf's defaults, which rc.conf.local overrides (rc.conf rev 1.172)
    rc_defaults: tuple[tuple[str, str], ...] = (
        ("sendmail_flags", "-L sm-mta -C/etc/mail/localhost.cf -bd -q30m"),
        ("smtpd_flags", "NO"), ("syslogd_flags", ""), ("pkg_scripts", ""))

    def fresh_host(self, params) -> facts.FreshHost:
        host = super().fresh_host(params)
        host.running |= {"syslogd", "cron", self.previous_mta}
        host.add(SYSLOG_PID)
        if self.previous_mta == "sendmail":
            host.add(SENDMAIL_PID)
        return host

    def previous_mta_running(self) -> Fact:
        if self.previous_mta == "sendmail":
            command = (f"[ -r {SENDMAIL_PID} ] || exit 0; pid=$(head -1 {SENDMAIL_PID}); "
                       "kill -0 \"$pid\" 2>/dev/null && echo \"$pid\"")
            return Fact("sendmail pid", command,
                        lambda out, _s: int(out) if out.strip().isdigit() else None,
                        fresh=lambda host: 1 if "sendmail" in host.running else None)
        return Fact(f"{self.previous_mta} running", f"/etc/rc.d/{self.previous_mta} check",
                    lambda _out, status: status == 0,
                    fresh=lambda host: self.previous_mta in host.running)

    def prefetch(self, stage_name: str) -> list[Fact]:
        return {
            "10-install": [self.package()],
            "20-enable": [*self.mailer_facts(), self.package(), self.rc_conf_local(),
                          self.log_socket()],
            "40-start": [self.previous_mta_running(), self.listeners()],
            "95-rollback": [*self.mailer_facts(), self.rc_conf_local(), self.log_socket(),
                            self.previous_mta_running()],
        }.get(stage_name, [])

    # --- G4, G5, G6, G8 ----------------------------------------------------------------------
    async def previous_mta_off_at_boot(self, stage) -> Plan:
        key = f"{self.previous_mta}_flags"
        return await self._rc_conf_plan(
            stage, "previous mail server off at boot", key, lambda _value: "NO",
            why=f"{self.previous_mta} does not start at boot (postfix-enable's first NOTE)")

    async def chroot_log_socket(self, stage) -> Plan:
        if not self.syslog_socket:
            return Plan("log socket inside Postfix's chroot", skip=SENDSYSLOG)
        flag = f"-a {self.socket}"
        return await self._rc_conf_plan(
            stage, "log socket inside Postfix's chroot", "syslogd_flags",
            lambda value: merge_words(value, flag),
            why="syslogd adds a log socket in Postfix's chroot (added to the flags "
                "already there)")

    async def postfix_on_at_boot(self, stage) -> Plan:
        return await self._rc_conf_plan(
            stage, "Postfix on at boot", "pkg_scripts",
            lambda value: merge_words(value, "postfix"), quoted=True,
            why="/etc/rc starts the package scripts listed here, in order")

    async def syslog_reload(self, stage) -> Plan:
        plan = Plan("system logger re-reads its configuration")
        if not self.syslog_socket:
            plan.skip = SENDSYSLOG
            return plan
        present = await facts.read_one(stage, self.log_socket())
        sock = q(self.socket)
        if present:
            plan.found = f"{self.socket} exists"
            return plan
        text = await facts.read_one(stage, self.rc_conf_local())  # prefetched with the socket
        flags = get_shell_var(text or "", "syslogd_flags")
        flags = self.rc_default("syslogd_flags") if flags is None else flags
        restart = self.restart_syslogd(flags)
        plan.found = f"{self.socket} is missing"
        plan.steps = [
            Run(f"kill -HUP $(cat {SYSLOG_PID})",
                why="the guide's step: syslogd re-reads /etc/syslog.conf"),
            Run(f"i=0; while [ ! -S {sock} ] && [ $i -lt 10 ]; do sleep 0.1; i=$((i+1)); "
                f"done; [ -S {sock} ] || {{ {restart} && [ -S {sock} ]; }}",
                why="a HUP cannot give the running syslogd its new -a flag: when the socket "
                    f"is still missing, syslogd starts again with syslogd_flags={flags}",
                effect=lambda host: host.add(self.socket)),
        ]
        return plan

    def restart_syslogd(self, flags: str) -> str:
        """Shell: syslogd started again with `flags`, through /etc/rc.d/syslogd where there is
        one, otherwise as 5.0's /etc/rc starts it (stopped through its pid file first)."""
        gone = wait_gone('"$pid"')
        return ("if [ -x /etc/rc.d/syslogd ]; then /etc/rc.d/syslogd restart; else "
                f'pid=$(cat {SYSLOG_PID}) && kill "$pid" && {{ {gone}; }} && '
                f"syslogd {' '.join(q(w) for w in flags.split())}; fi")

    # --- G13, G16 ----------------------------------------------------------------------------
    async def stop_previous_mta(self, stage) -> Plan:
        running = await facts.read_one(stage, self.previous_mta_running())
        mta = self.previous_mta
        how = f"pid file {SENDMAIL_PID}" if mta == "sendmail" else f"/etc/rc.d/{mta} check"
        plan = Plan("previous mail server stopped",
                    found=f"{mta} {'runs' if running else 'is not running'} ({how})")
        if not running:
            return plan
        if mta == "sendmail":
            stop = (f"pid=$(head -1 {SENDMAIL_PID}) && kill \"$pid\" && {{ "
                    + wait_gone('"$pid"') + "; }")
            why = "through its pid file, as the guide does (TERM: it finishes what it is doing)"
        else:
            stop, why = f"/etc/rc.d/{mta} stop", f"{mta} would hold port 25"
        plan.steps = [Run(stop, why=why, effect=lambda host: host.running.discard(mta))]
        plan.undo = [self.start_previous_mta()]
        return plan

    def start_previous_mta(self) -> Run:
        if self.previous_mta == "sendmail":  # rc.conf.local says NO by now: start it directly
            return Run(f"{SENDMAIL_PROGRAM} {self.rc_default('sendmail_flags')}",
                       why="sendmail back, as /etc/rc starts it")
        return Run(f"/etc/rc.d/{self.previous_mta} -f start", why="the previous MTA back")

    def start_postfix(self) -> Run:
        return Run("/etc/rc.d/postfix start", why="the package's rc.d script starts the master",
                   effect=lambda host: host.running.add("postfix"))

    def stop_postfix(self) -> Run:
        return Run("/etc/rc.d/postfix stop", why="Postfix stops serving mail")

    # --- G23 (95-rollback): after rc.conf.local and the crontab were restored ------------------
    async def previous_mta_back(self, stage) -> Plan:
        text, present, running = await facts.read(
            stage, self.rc_conf_local(), self.log_socket(), self.previous_mta_running())
        mta = self.previous_mta
        flags = get_shell_var(text or "", f"{mta}_flags")
        flags = self.rc_default(f"{mta}_flags") if flags is None else flags
        syslogd = get_shell_var(text or "", "syslogd_flags")
        syslogd = self.rc_default("syslogd_flags") if syslogd is None else syslogd
        plan = Plan("previous mail server back",
                    found=f"{mta}_flags={flags or '(empty)'}; {mta} "
                          f"{'runs' if running else 'is not running'}")
        if self.syslog_socket and present and self.socket not in syslogd:
            plan.steps.append(Run(self.restart_syslogd(syslogd),
                                  why="syslogd drops the chroot socket, as its restored "
                                      "flags say"))
        if flags != "NO" and not running:
            plan.steps.append(Run(f"/etc/rc.d/{mta} start",
                                  why=f"{mta} runs again, with its restored flags"))
        return plan

