"""What both OpenBSD eras share: the postfix package (G1), its HTML documentation (G2),
mailer.conf and postfix-enable (G3), the paths, `postfix check` made visible.

The guide's own platform comes in two eras, two profiles with the same methods:

- `OpenBSDRcConf` (rcconf.py), before rcctl(8) (5.0 as the guide has it, up to 5.6): every
  boot setting is a line of /etc/rc.conf.local, written by the runbook (G4
  sendmail_flags=NO, G5 syslogd_flags with -a merged into the flags already there, G6
  postfix merged into pkg_scripts); syslogd gets its chroot socket by a HUP and, since a HUP
  cannot give the running syslogd a new command-line flag, a restart through its rc.d
  script when the socket is still missing (G8); the running sendmail is stopped through its
  pid file (G13); Postfix starts through /etc/rc.d/postfix (G16).
- `OpenBSDRcctl` (rcctl.py), 5.7 and later: rcctl(8) enable / disable / start / stop /
  check, which rewrites rc.conf.local itself (sorted, de-duplicated), so the runbook keeps a
  copy of the file first; smtpd is the MTA to replace (since 5.6); no syslogd socket: since
  5.6 syslog(3) writes through sendsyslog(2), which works inside a chroot.

Both: pkg_add of params.platform.postfix_package (flavoured names allowed), postfix-enable
for mailer.conf (G3), root's crontab /var/cron/tabs/root (G7), /usr/local/sbin,
/var/log/maillog, the chroot's etc files as the package's postfix-install copies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from shlex import quote as q

from runbook.ops import facts
from runbook.ops.facts import Fact
from runbook.ops.operations import OperationFailed, Plan, Run
from runbook.platforms.openbsd.dovecot import DovecotOnOpenBSD
from runbook.platforms.openbsd.system import (
    MAILER_CONF,
    POSTFIX_DOCS,
    POSTFIX_MAILER,
    mailer_conf_program,
    pkg_env,
)
from runbook.platforms.profile import Profile


@dataclass(frozen=True)
class OpenBSD(DovecotOnOpenBSD, Profile):
    """What both OpenBSD eras share (the postfix package, mailer.conf, paths, checks)."""

    previous_mta: str = "sendmail"

    @property
    def socket(self) -> str:
        return f"{self.queue_dir}/dev/log"

    # --- facts ---------------------------------------------------------------------------
    def package(self) -> Fact:
        """The installed postfix package(s) (`inst:postfix-2.8.7-mysql`), or Postfix's
        binaries when they were installed some other way."""
        command = (f"pkg_info -e 'postfix-*' 2>/dev/null || "
                   f"{{ test -x {q(self.postfix)} && echo 'inst:(postfix, not from a package)'; }}")
        return Fact("postfix package", command,
                    lambda out, _s: [w[5:] for w in out.split() if w.startswith("inst:")],
                    fresh=lambda host: ["postfix"] if "postfix" in host.packages else [])

    def mailer_facts(self) -> list[Fact]:
        return [facts.file(MAILER_CONF), facts.exists(f"{MAILER_CONF}.postfix"),
                facts.exists(f"{MAILER_CONF}.pre-postfix")]

    def log_socket(self) -> Fact:
        return facts.exists(self.socket, "-S")

    def listeners(self) -> Fact:
        # fstat(1) on OpenBSD; ss(8) where there is no fstat (the emulated lab host).
        command = ("if command -v fstat >/dev/null 2>&1; then fstat | grep -E "
                   "' internet6? stream tcp '; else ss -Hltnp; fi")
        return Fact("listening sockets", command,
                    lambda out, _s: facts.parse_listeners(out), fresh=[])

    def settle(self, path: str) -> Run:
        # OpenBSD's touch(1) knows no "2 seconds ago"; perl is in the base system.
        return Run(f"perl -e '$t = time - 2; utime $t, $t, @ARGV' {q(path)}",
                   why="Postfix would pause up to 2 s reading a just-written main.cf")

    def postfix_check(self) -> str:
        # postfix-script reports through postlog, which prints to a terminal only: its
        # warnings reach the mail log. So the lines the check added to the log are shown.
        log = q(self.mail_log)
        return (f"n=$(wc -l < {log} 2>/dev/null || echo 0); {q(self.postfix)} check; s=$?; "
                f"sleep 0.2; tail -n +$((n + 1)) {log} 2>/dev/null | "
                "grep -E 'postfix[^ ]*: (warning|error|fatal|panic):'; exit $s")

    # --- G1, G2 ----------------------------------------------------------------------------
    async def install(self, stage) -> Plan:
        installed = await facts.read_one(stage, self.package())
        plan = Plan("install Postfix", found=f"installed: {', '.join(installed) or 'no postfix'}")
        if installed:
            return plan
        package = stage.params.platform.postfix_package or "postfix"
        env = pkg_env(stage)
        plan.steps = [Run(
            f"{env}pkg_add {q(package)}", timeout=900,
            why="the package leaves /etc/mailer.conf.postfix, the spool and chroot under "
                f"{self.queue_dir}, /etc/postfix and /etc/rc.d/postfix; it starts nothing",
            effect=lambda host: self.add_package_files(host, stage.params))]
        return plan

    def add_package_files(self, host, params) -> None:
        super().add_package_files(host, params)
        for name in self.chroot_files:  # postfix-install copies them into the chroot
            host.add(f"{self.queue_dir}/{name}")
        host.add("/etc/rc.d/postfix")
        host.add(f"{POSTFIX_DOCS}/index.html")

    def docs_facts(self, directory: str | None) -> list[Fact]:
        if not directory:
            return []
        return [facts.exists(f"{directory}/index.html"), facts.exists(directory, "-d")]

    async def publish_docs(self, stage, directory: str | None) -> Plan:
        plan = Plan("publish Postfix's HTML documentation")
        if not directory:
            plan.skip = "optional, and no postfix.html_docs_dir given"
            return plan
        present, exists = await facts.read(stage, *self.docs_facts(directory))
        if present:
            plan.found = f"{directory}/index.html exists"
            return plan
        parent = directory.rsplit("/", 1)[0] or "/"
        copy = (f"cp -R {POSTFIX_DOCS}/. {q(directory)}" if exists else
                f"mkdir -p {q(parent)} && cp -R {POSTFIX_DOCS} {q(directory)}")
        plan.steps = [Run(copy, why=f"readable on the host under {directory}",
                          effect=lambda host: host.add(f"{directory}/index.html"))]
        return plan

    # --- G3, G7 ----------------------------------------------------------------------------
    async def system_mailer(self, stage) -> Plan:
        text, postfix_conf, saved, installed = await facts.read(
            stage, *self.mailer_facts(), self.package())
        program = mailer_conf_program(text)
        plan = Plan("Postfix is the system mailer",
                    found=f"{MAILER_CONF} runs {program or 'nothing'} for sendmail")
        if program == POSTFIX_MAILER:
            if saved:
                plan.found += f"; the previous one is kept as {MAILER_CONF}.pre-postfix"
            return plan
        if not postfix_conf:
            if stage.dry_run and not installed:
                plan.skip = "dry run: the postfix package (install stage) would install it"
                return plan
            raise OperationFailed(
                f"{MAILER_CONF}.postfix is missing, so postfix-enable cannot swap "
                f"{MAILER_CONF}: the postfix package writes it when it is added — add the "
                "package again (pkg_add -r) or write it as the package does")
        plan.steps = [
            Run(self.tool("postfix-enable"),
                why=f"the package's way: {MAILER_CONF} becomes Postfix's, the old one is "
                    f"kept as {MAILER_CONF}.pre-postfix",
                effect=lambda host: (host.move(MAILER_CONF, f"{MAILER_CONF}.pre-postfix"),
                                     host.move(f"{MAILER_CONF}.postfix", MAILER_CONF))),
            Run(f"awk '$1 == \"sendmail\" && $2 == \"{POSTFIX_MAILER}\" {{f = 1}} "
                f"END {{exit !f}}' {MAILER_CONF}",
                why="postfix-enable exits 0 even when it enabled nothing"),
        ]
        plan.undo = [Run(self.tool("postfix-disable"), why="the previous mailer.conf back")]
        return plan

    async def restore_system_mailer(self, stage) -> Plan:
        text, _postfix_conf, saved = await facts.read(stage, *self.mailer_facts())
        program = mailer_conf_program(text)
        plan = Plan("the previous mailer.conf back",
                    found=f"{MAILER_CONF} runs {program or 'nothing'} for sendmail")
        if saved:
            plan.steps = [Run(self.tool("postfix-disable"),
                              why=f"{MAILER_CONF}.pre-postfix becomes {MAILER_CONF} again "
                                  f"(Postfix's is kept as {MAILER_CONF}.postfix)")]
        elif program == POSTFIX_MAILER:
            raise OperationFailed(
                f"{MAILER_CONF} is Postfix's but {MAILER_CONF}.pre-postfix is missing: the "
                "previous mailer.conf was not kept, so there is nothing to go back to")
        return plan

    def start_previous_mta(self) -> Run:
        raise NotImplementedError


