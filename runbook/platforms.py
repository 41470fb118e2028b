"""What differs per operating system: one `Profile` per platform, chosen once per stage.

The notebooks never ask which system they are on. Every guide step whose commands differ
between systems is a method of the profile returning a `Plan` (or the facts a check needs);
the steps that are the same everywhere live in `postfix.py` and only read the profile's
paths. A new platform (OpenBSD 5.0 as the guide has it, OpenBSD 7.x with rcctl) is a new
subclass registered in `FAMILIES`, with the same methods.

Here: Debian 12, and OpenBSD in two eras (`OpenBSDRcConf`: 5.0 as the guide has it, up to
5.6; `OpenBSDRcctl`: 5.7 and later), described where their classes begin. Each profile also
describes a fresh host (`fresh_host`, runbook/stock/) for `runbook plan`, and the way back
(G23, stage 95-rollback). Debian's departures from the guide's OpenBSD, step by step:

- G1: `apt-get install` instead of `pkg_add`, with debconf answers preseeded and a
  `policy-rc.d` that keeps every service stopped until the configuration is ours;
- G3: the postfix package itself installs `/usr/sbin/sendmail` (Debian has no mailer.conf);
- G4/G6: boot start and stop are systemd units, not rc.conf.local lines;
- G5/G8: rsyslog gets the extra log socket in Postfix's chroot from a file in
  /etc/rsyslog.d (the postfix package ships it), and is restarted rather than sent HUP;
- G7: Debian's MTAs keep no queue runner in root's crontab (checked anyway);
- G13/G16: `systemctl stop`/`start`; systemd's postfix unit also conflicts with exim4.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from shlex import quote as q
from typing import ClassVar

from . import facts
from .errors import RunbookError
from .facts import Fact
from .operations import (
    Keep,
    OperationFailed,
    Plan,
    Run,
    Write,
    active_lines,
    get_shell_var,
    merge_words,
    rcctl_edit,
    set_shell_var,
)

POLICY_RC_D = "/usr/sbin/policy-rc.d"
POLICY_SAVED = "/usr/sbin/policy-rc.d.mail-runbook-saved"
POLICY_MARK = "mail-runbook"
RSYSLOG_CONF = "/etc/rsyslog.d/postfix.conf"
PREVIOUS_MTA = "previous-mta"  # in the profile's state_dir: services G4 disabled
STOCK = Path(__file__).resolve().parent / "stock"


class UnsupportedPlatform(RunbookError):
    pass


@dataclass(frozen=True)
class Profile:
    """The paths and procedures of one platform. Methods taking `stage` read the facts they
    need (through `facts.read`, so several share one round trip) and return a `Plan`."""

    name: str
    release: str
    label: str
    sbin: str  # where Postfix's commands are
    mail_log: str
    aliases_table: str  # alias_maps when the parameters give none
    mailbox_dir: str = "/var/mail"
    config_dir: str = "/etc/postfix"
    queue_dir: str = "/var/spool/postfix"
    sendmail: str = "/usr/sbin/sendmail"
    crontab_file: str = ""  # root's crontab as cron keeps it
    queue_runner: str = ""  # regex: the previous MTA's queue runner line in root's crontab
    previous_mtas: tuple[str, ...] = ()  # services of the MTAs Postfix replaces
    chroot_files: tuple[str, ...] = ("etc/resolv.conf", "etc/hosts", "etc/services")
    state_dir: str = "/var/lib/mail-runbook"  # small markers the runbook keeps on the host
    mail_reader: str = "mail"  # the command-line reader the guide uses (G19)
    stock: str = ""  # runbook/stock/<stock>: a fresh host's files, for `runbook plan`

    # --- paths ---------------------------------------------------------------------------
    def tool(self, name: str) -> str:
        return f"{self.sbin}/{name}"

    @property
    def postconf(self) -> str:
        return self.tool("postconf")

    @property
    def postfix(self) -> str:
        return self.tool("postfix")

    @property
    def loaded_stamp(self) -> str:
        """Touched whenever the runbook starts or reloads Postfix."""
        return f"{self.state_dir}/postfix-loaded"

    def __str__(self) -> str:
        return self.label

    # --- what each platform defines (the contract a new profile fills in) ----------------
    async def install(self, stage) -> Plan:
        """G1: install Postfix (and what the later stages need) without starting it."""
        raise NotImplementedError

    async def publish_docs(self, stage, directory: str | None) -> Plan:
        """G2 (optional): Postfix's HTML documentation copied into a local web root."""
        raise NotImplementedError

    async def system_mailer(self, stage) -> Plan:
        """G3: the system's sendmail command is Postfix's."""
        raise NotImplementedError

    async def previous_mta_off_at_boot(self, stage) -> Plan:
        """G4: the MTA Postfix replaces does not start at boot."""
        raise NotImplementedError

    async def chroot_log_socket(self, stage) -> Plan:
        """G5: the system logger offers a log socket inside Postfix's chroot."""
        raise NotImplementedError

    async def postfix_on_at_boot(self, stage) -> Plan:
        """G6: Postfix starts at boot."""
        raise NotImplementedError

    async def syslog_reload(self, stage) -> Plan:
        """G8: the system logger re-reads its configuration so the socket exists."""
        raise NotImplementedError

    async def stop_previous_mta(self, stage) -> Plan:
        """G13: the running MTA Postfix replaces is stopped."""
        raise NotImplementedError

    def start_postfix(self) -> Run:
        """G16: the command that starts Postfix the platform's way."""
        raise NotImplementedError

    def listeners(self) -> Fact:
        """The listening TCP sockets with their owning processes (`facts.Listener`)."""
        raise NotImplementedError

    def postfix_check(self) -> str:
        """The command for G14. postfix-script logs its warnings with postlog, which also
        prints them only when stderr is a terminal: a profile must make them visible."""
        return f"{q(self.postfix)} check"

    def settle(self, path: str) -> Run:
        """Postfix's commands pause until main.cf is two seconds old (so as not to read a
        file still being written); our writes are atomic renames, so the new file's time
        is set two seconds back and no command waits."""
        return Run(f"touch -d '2 seconds ago' {q(path)}",
                   why="Postfix would pause up to 2 s reading a just-written main.cf")

    def queue_runner_crontab(self) -> Fact:
        """Root's crontab as cron keeps it (None when root has none)."""
        return facts.file(self.crontab_file)

    def prefetch(self, stage_name: str) -> list[Fact]:
        """The platform's facts a stage's operations will read (fetched together)."""
        return []

    def docs_facts(self, directory: str | None) -> list[Fact]:
        """What G2 reads about the web root `directory` (prefetched with the install stage)."""
        return [facts.exists(f"{directory}/index.html")] if directory else []

    # --- a fresh host, imagined for `runbook plan` (runbook/stock/<stock>/) ---------------
    def fresh_host(self, params) -> facts.FreshHost:
        """The host before the runbook's first run: the base system's stock files."""
        host = facts.FreshHost(config_dir=self.config_dir)
        host.files.update(stock_files(self.stock, "base", params))
        host.paths.update(f"/{f}" for f in self.chroot_files)
        return host

    def add_package_files(self, host: facts.FreshHost, params) -> None:
        """What installing the postfix package (G1) leaves on the imagined host."""
        host.packages.add("postfix")
        for path, text in stock_files(self.stock, "package", params).items():
            host.write(path, text)

    # --- G23: going back (stage 95-rollback) ------------------------------------------------
    def stop_postfix(self) -> Run:
        """The command that stops Postfix the platform's way."""
        return Run(f"{q(self.postfix)} stop", why="the master process and its children stop")

    async def postfix_off_at_boot(self, stage) -> Plan:
        """Rollback: Postfix no longer starts at boot (where the restored files do not
        already say so)."""
        return Plan("Postfix off at boot", found="the restored files decide it")

    async def restore_system_mailer(self, stage) -> Plan:
        """Rollback of G3: the system's sendmail is the previous mailer's again."""
        raise NotImplementedError

    async def previous_mta_back(self, stage) -> Plan:
        """Rollback of G4/G5/G8/G13: the previous mail server (and the system logger) run as
        the restored files say."""
        raise NotImplementedError

    # --- Dovecot (G22, stage 70-dovecot; the steps themselves are in dovecot.py) ---------
    # Class attributes, not fields: a profile states them once in its class.
    dovecot_config_dir: ClassVar[str] = "/etc/dovecot"
    dovecot_sbin: ClassVar[str] = "/usr/sbin"  # the dovecot daemon
    dovecot_bin: ClassVar[str] = "/usr/bin"  # doveconf, doveadm
    dovecot_cert: ClassVar[str] = ""  # where a generated self-signed certificate is kept
    dovecot_key: ClassVar[str] = ""
    dovecot_privileged_group: ClassVar[str] = ""  # may dotlock in the mail spool; "" none

    def dovecot_tool(self, name: str) -> str:
        return f"{self.dovecot_sbin if name == 'dovecot' else self.dovecot_bin}/{name}"

    @property
    def dovecot_conf(self) -> str:
        """The one file the runbook writes (read after the package's own conf.d files,
        which stay as shipped)."""
        return f"{self.dovecot_config_dir}/conf.d/99-mail-runbook.conf"

    def _no_dovecot(self):
        return UnsupportedPlatform(f"{self.label}: the runbook does not know how to set up "
                                   "Dovecot here yet (nothing was changed)")

    def dovecot_packages(self) -> Fact:
        """{"imap": installed?, "pop3": installed?}: Dovecot's IMAP and POP3 servers."""
        raise self._no_dovecot()

    def dovecot_boot(self) -> Fact:
        """Whether Dovecot starts at boot (bool)."""
        raise self._no_dovecot()

    async def dovecot_install(self, stage, pop3: bool) -> Plan:
        """Dovecot's IMAP server (and POP3 with `pop3`) installed, nothing started."""
        raise self._no_dovecot()

    async def dovecot_login_class(self, stage) -> Plan:
        """The login(1) class the platform's package asks for (OpenBSD)."""
        return Plan("Dovecot's login class", skip=f"{self.label} has no login classes")

    async def dovecot_at_boot(self, stage) -> Plan:
        """Dovecot starts at boot."""
        raise self._no_dovecot()

    def dovecot_service(self, action: str) -> Run:
        """start, stop or reload Dovecot the platform's way (stdio detached)."""
        raise self._no_dovecot()

    async def dovecot_off_at_boot(self, stage) -> Plan:
        """G23 (95-rollback): Dovecot no longer starts at boot."""
        raise self._no_dovecot()


def dovecot_detached(command: str) -> str:
    """`command` with its stdio off the SSH channel: a daemon started over SSH that keeps
    the channel's stdout open holds the session until it exits. Its output is shown
    afterwards from a file, and its exit status kept."""
    return (f"o=$(mktemp) && ( {command} </dev/null >\"$o\" 2>&1; s=$?; cat \"$o\"; "
            "rm -f \"$o\"; exit $s )")


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
        env = _pkg_env(stage)

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
        on = await facts.read_one(stage, self.enabled())
        plan = Plan("Dovecot at boot",
                    found=f"dovecot is {'enabled' if 'dovecot' in on else 'not enabled'}")
        if "dovecot" not in on:
            plan.steps = self._rcctl("enable", "dovecot", base=False,
                                     why="dovecot joins pkg_scripts: it starts at boot")
        return plan

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


class Debian(Profile):
    """Debian 12 (bookworm) with systemd."""

    PACKAGES: ClassVar[dict[str, tuple[str, ...]]] = {
        # role: (package to install, other packages that already fill the role)
        "postfix": ("postfix",),
        "syslog": ("rsyslog", "syslog-ng-core", "busybox-syslogd", "inetutils-syslogd"),
        "reader": ("bsd-mailx", "mailutils", "s-nail"),
    }
    SERVICES: ClassVar[tuple[str, ...]] = ("postfix", "rsyslog", "exim4", "sendmail",
                                           "opensmtpd")

    # --- facts ---------------------------------------------------------------------------
    def packages(self) -> Fact:
        names = sorted({p for group in self.PACKAGES.values() for p in group})
        command = ("dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' "
                   + " ".join(names) + " 2>/dev/null")
        return Fact("dpkg packages", command, lambda out, _s: parse_dpkg_status(out),
                    fresh=lambda host: {n: n in host.packages for n in names})

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

    def listeners(self) -> Fact:
        return Fact("listening sockets", "ss -Hltnp",
                    lambda out, _s: facts.parse_ss_listeners(out), fresh=[])

    def postfix_check(self) -> str:
        # script(1) gives postfix check a terminal, so its warnings reach us (and not only
        # the mail log); -e passes on its exit status.
        return f"script -qec {q(self.postfix + ' check')} /dev/null"

    def sendmail_owner(self) -> Fact:
        def fresh(host):
            if "postfix" in host.packages:
                return f"postfix: {self.sendmail}\n", 0
            return f"dpkg-query: no path found matching pattern {self.sendmail}\n", 1
        return Fact("sendmail owner", f"dpkg-query -S {q(self.sendmail)} 2>&1",
                    lambda out, status: (out, status), fresh)

    def rsyslog_conf(self) -> Fact:
        return facts.file(RSYSLOG_CONF)

    def log_socket(self) -> Fact:
        return facts.exists(f"{self.queue_dir}/dev/log", "-S")

    def prefetch(self, stage_name: str) -> list[Fact]:
        return {
            "10-install": [self.packages()],
            "20-enable": [self.sendmail_owner(), self.boot_services(), self.packages(),
                          self.rsyslog_conf(), self.running_services(), self.log_socket()],
            "40-start": [self.running_services(), self.listeners()],
            "95-rollback": [self.boot_services(), self.previous_mta_marker()],
        }.get(stage_name, [])

    # --- G1, G2 ----------------------------------------------------------------------------
    async def install(self, stage) -> Plan:
        installed = await facts.read_one(stage, self.packages())
        wanted = [package for package, *others in self.PACKAGES.values()
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
            Run(f"if [ -e {POLICY_RC_D} ] && ! grep -q {POLICY_MARK} {POLICY_RC_D}; then "
                f"mv {POLICY_RC_D} {POLICY_SAVED}; fi; "
                f"printf '#!/bin/sh\\n# {POLICY_MARK}: no service starts while it installs\\n"
                f"exit 101\\n' > {POLICY_RC_D} && chmod 755 {POLICY_RC_D}",
                why="no service may start before its configuration is ours"),
            Run("debconf-set-selections", input=preseed,
                why="answer the package's questions ahead (no dialogs)"),
            Run("apt-cache show postfix >/dev/null 2>&1 || apt-get update -q; "
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
                "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "
                + " ".join(q(p) for p in wanted), timeout=900,
                why="install " + ", ".join(wanted),
                effect=lambda host: self._apt_installed(host, wanted, stage.params)),
        ]
        plan.cleanup = [
            Run(f"if grep -q {POLICY_MARK} {POLICY_RC_D} 2>/dev/null; then rm -f {POLICY_RC_D}; "
                f"fi; if [ -e {POLICY_SAVED} ]; then mv {POLICY_SAVED} {POLICY_RC_D}; fi",
                why="services may start again (a policy-rc.d left behind would stop them)"),
        ]
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

    # --- G3 .. G8 ----------------------------------------------------------------------------
    async def system_mailer(self, stage) -> Plan:
        (text, status), installed = await facts.read(
            stage, self.sendmail_owner(), self.packages())
        plan = Plan("Postfix is the system mailer")
        package = text.split(":", 1)[0].strip() if status == 0 else ""
        if package != "postfix" and stage.dry_run and not installed.get("postfix"):
            plan.skip = "dry run: the postfix package (install stage) would install it"
        elif package != "postfix":
            raise OperationFailed(
                f"{self.sendmail} belongs to {package or 'no package'} ({text.strip()}), not "
                "to postfix: on Debian the postfix package installs it, so the install "
                "stage (10-install) has not completed — run it again")
        else:
            plan.found = f"{self.sendmail} is installed by the postfix package"
        return plan

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

    async def postfix_on_at_boot(self, stage) -> Plan:
        state = (await facts.read_one(stage, self.boot_services())).get("postfix", "absent")
        plan = Plan("Postfix on at boot", found=f"postfix.service is {state}")
        if state != "enabled":
            plan.steps = [Run("systemctl enable postfix", why="start Postfix at boot",
                              effect=lambda host: host.enabled.add("postfix"))]
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

    async def restore_system_mailer(self, stage) -> Plan:
        return Plan("system mailer", skip=(
            "Debian has no mailer.conf: /usr/sbin/sendmail belongs to the postfix package "
            "while it is installed (installing it removed any other MTA package)"))

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

    # --- Dovecot (G22) -----------------------------------------------------------------------
    dovecot_cert: ClassVar[str] = "/etc/dovecot/private/mail-runbook.pem"
    dovecot_key: ClassVar[str] = "/etc/dovecot/private/mail-runbook.key"
    dovecot_privileged_group: ClassVar[str] = "mail"  # /var/mail is root:mail, mode 2775
    DOVECOT_PACKAGES: ClassVar[dict[str, str]] = {"imap": "dovecot-imapd",
                                                   "pop3": "dovecot-pop3d"}

    def dovecot_packages(self) -> Fact:
        command = ("dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' "
                   + " ".join(self.DOVECOT_PACKAGES.values()) + " 2>/dev/null")

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
        installed = await facts.read_one(stage, self.dovecot_packages())
        roles = ["imap", "pop3"] if pop3 else ["imap"]
        wanted = [self.DOVECOT_PACKAGES[r] for r in roles if not installed.get(r)]
        have = [p for r, p in self.DOVECOT_PACKAGES.items() if installed.get(r)]
        plan = Plan("install Dovecot", found=f"installed: {', '.join(have) or 'none'}")
        if not wanted:
            return plan
        plan.steps = [
            Run(f"if [ -e {POLICY_RC_D} ] && ! grep -q {POLICY_MARK} {POLICY_RC_D}; then "
                f"mv {POLICY_RC_D} {POLICY_SAVED}; fi; "
                f"printf '#!/bin/sh\\n# {POLICY_MARK}: no service starts while it installs\\n"
                f"exit 101\\n' > {POLICY_RC_D} && chmod 755 {POLICY_RC_D}",
                why="Dovecot would start listening on every address before its "
                    "configuration is ours"),
            Run(f"apt-cache show {wanted[0]} >/dev/null 2>&1 || apt-get update -q; "
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
                "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "
                + " ".join(q(p) for p in wanted), timeout=900,
                why="install " + ", ".join(wanted),
                effect=lambda host: host.packages.update(wanted)),
        ]
        if not installed.get("imap"):
            plan.steps.append(Run(
                "systemctl disable dovecot",
                why="the package enables it at boot; the boot step enables it again once "
                    "the configuration is ours"))
        plan.cleanup = [
            Run(f"if grep -q {POLICY_MARK} {POLICY_RC_D} 2>/dev/null; then rm -f {POLICY_RC_D}; "
                f"fi; if [ -e {POLICY_SAVED} ]; then mv {POLICY_SAVED} {POLICY_RC_D}; fi",
                why="services may start again (a policy-rc.d left behind would stop them)"),
        ]
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


def parse_pairs(text: str) -> dict[str, str]:
    """Lines `name state` as a dict."""
    return dict(line.split(None, 1) for line in text.splitlines() if len(line.split()) == 2)


def stock_files(stock: str, part: str, params) -> dict[str, str]:
    """The files under runbook/stock/<stock>/<part>/ by their path on the host, with
    @@myhostname@@ and @@mydomain@@ filled in from the parameters (a fresh host's files,
    for `runbook plan`; see runbook/stock/README.md for where each comes from)."""
    root = STOCK / stock / part
    if not stock or not root.is_dir():
        return {}
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            text = path.read_text().replace("@@myhostname@@", params.postfix.myhostname)
            found["/" + path.relative_to(root).as_posix()] = text.replace(
                "@@mydomain@@", params.postfix.mydomain)
    return found


def debian(release: str) -> Profile:
    if release.split(".")[0] != "12":
        raise UnsupportedPlatform(
            f"Debian {release} is not supported yet: the runbook knows Debian 12 (bookworm)")
    return Debian(
        name="debian", release="12", label="Debian 12", sbin="/usr/sbin",
        mail_log="/var/log/mail.log", aliases_table="hash:/etc/aliases",
        crontab_file="/var/spool/cron/crontabs/root",
        queue_runner=r"\b(sendmail|exim4?)\b.*\s-q",
        previous_mtas=("exim4", "sendmail", "opensmtpd"),
        chroot_files=("etc/localtime", "etc/services", "etc/resolv.conf", "etc/hosts",
                      "etc/host.conf", "etc/nsswitch.conf"),
        stock="debian-12",
    )


# --- OpenBSD --------------------------------------------------------------------------------
#
# The guide's own platform. Two eras, two profiles with the same methods:
#
# - OpenBSDRcConf, before rcctl(8) (5.0 as the guide has it, up to 5.6): every boot setting
#   is a line of /etc/rc.conf.local, written by the runbook (G4 sendmail_flags=NO, G5
#   syslogd_flags with -a merged into the flags already there, G6 postfix merged into
#   pkg_scripts); syslogd gets its chroot socket by a HUP and, since a HUP cannot give the
#   running syslogd a new command-line flag, a restart through its rc.d script when the
#   socket is still missing (G8); the running sendmail is stopped through its pid file
#   (G13); Postfix starts through /etc/rc.d/postfix (G16).
# - OpenBSDRcctl, 5.7 and later: rcctl(8) enable / disable / start / stop / check, which
#   rewrites rc.conf.local itself (sorted, de-duplicated), so the runbook keeps a copy of
#   the file first; smtpd is the MTA to replace (since 5.6); no syslogd socket: since 5.6
#   syslog(3) writes through sendsyslog(2), which works inside a chroot.
#
# Both: pkg_add of params.platform.postfix_package (flavoured names allowed), postfix-enable
# for mailer.conf (G3), root's crontab /var/cron/tabs/root (G7), /usr/local/sbin,
# /var/log/maillog, the chroot's etc files as the package's postfix-install copies them.

MAILER_CONF = "/etc/mailer.conf"
RC_CONF_LOCAL = "/etc/rc.conf.local"
POSTFIX_MAILER = "/usr/local/sbin/sendmail"
SYSLOG_PID = "/var/run/syslog.pid"
SENDMAIL_PID = "/var/run/sendmail.pid"
SENDMAIL_PROGRAM = "/usr/libexec/sendmail/sendmail"  # what mailer.conf ran before Postfix
POSTFIX_DOCS = "/usr/local/share/doc/postfix/html"


def mailer_conf_program(text: str | None, name: str = "sendmail") -> str | None:
    """The program mailwrapper(8) runs for `name` according to /etc/mailer.conf."""
    for line in (text or "").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0] == name:
            return fields[1]
    return None


def wait_gone(pid: str, seconds: int = 10) -> str:
    """Shell: wait (bounded) until process `pid` has exited; fails if it has not."""
    ticks = seconds * 10
    return (f"i=0; while kill -0 {pid} 2>/dev/null && [ $i -lt {ticks} ]; do sleep 0.1; "
            f"i=$((i+1)); done; ! kill -0 {pid} 2>/dev/null")


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
        env = _pkg_env(stage)
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


@dataclass(frozen=True)
class OpenBSDRcConf(OpenBSD):
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

    def rc_default(self, key: str) -> str:
        return dict(self.rc_defaults).get(key, "")

    def rc_conf_local(self) -> Fact:
        return facts.file(RC_CONF_LOCAL)

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


SENDSYSLOG = ("not needed on OpenBSD 5.6 and later: syslog(3) writes through sendsyslog(2), "
              "which needs no /dev/log, so Postfix's chrooted services log without a socket "
              "in the chroot")


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
        on = await facts.read_one(stage, self.enabled())
        plan = Plan("Postfix on at boot",
                    found=f"postfix is {'enabled' if 'postfix' in on else 'not enabled'}")
        if "postfix" not in on:
            plan.steps = self._rcctl("enable", "postfix", base=False,
                                     why="postfix joins pkg_scripts: it starts at boot")
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


def openbsd(release: str) -> Profile:
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        raise UnsupportedPlatform(f"OpenBSD {release!r}: not a release number such as 5.0 "
                                  "or 7.6") from None
    version = (major, minor)
    if version < (5, 0):
        raise UnsupportedPlatform(f"OpenBSD {release} is not supported: the runbook knows "
                                  "OpenBSD 5.0 (the guide's) and later")
    common = dict(
        name="openbsd", release=release, label=f"OpenBSD {release}", sbin="/usr/local/sbin",
        mail_log="/var/log/maillog", crontab_file="/var/cron/tabs/root",
        queue_runner=r"\bsendmail\b.*\s-q", state_dir="/var/db/mail-runbook",
        chroot_files=("etc/hosts", "etc/localtime", "etc/resolv.conf", "etc/services"),
    )
    if version < (5, 7):
        mta = "sendmail" if version < (5, 6) else "smtpd"
        return OpenBSDRcConf(
            **common, aliases_table="hash:/etc/postfix/aliases",  # the guide's choice (G11)
            previous_mtas=(mta,), previous_mta=mta, syslog_socket=version < (5, 6),
            stock="openbsd-5.0" if mta == "sendmail" else "")
    return OpenBSDRcctl(**common, aliases_table="hash:/etc/mail/aliases",
                        previous_mtas=("smtpd",), stock="openbsd-7.6")


# name as params.platform.name spells it -> profile for a release ("12", "7.6").
FAMILIES = {"debian": debian, "openbsd": openbsd}


def identify(uname: str, os_release: str) -> tuple[str, str]:
    """(family, release) from `uname -sr` and /etc/os-release, e.g. ("debian", "12")."""
    system, _, kernel_release = uname.strip().partition(" ")
    if system == "OpenBSD":
        return "openbsd", kernel_release.strip()
    info = facts.parse_os_release(os_release)
    family = info.get("ID", system.lower() or "unknown")
    return family, info.get("VERSION_ID", "")


def choose(family: str, release: str, wanted_name: str = "auto",
           wanted_release: str | None = None) -> Profile:
    """The profile for what the host is, or for what the parameters say it is."""
    name = family if wanted_name == "auto" else wanted_name
    if wanted_name != "auto" and wanted_release is None and name != family:
        raise UnsupportedPlatform(
            f"platform.name is {wanted_name} but the host looks like {family} {release}: "
            f"give platform.release too (the release cannot be detected)")
    release = wanted_release or release
    factory = FAMILIES.get(name)
    if factory is None:
        known = ", ".join(sorted(FAMILIES))
        raise UnsupportedPlatform(
            f"{name} {release} is not a platform the runbook supports (known: {known}); "
            "nothing was changed")
    if not release:
        raise UnsupportedPlatform(f"cannot tell which {name} release this is: set "
                                  "platform.release")
    return factory(release)


# What each open connection's host turned out to be: the stages of a run share one
# connection, and the system does not change under it.
_identified: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def detect(stage) -> Profile:
    """The host's profile: `uname -sr` and /etc/os-release in one command (once per
    connection), honouring params.platform when it names the system. Raises
    UnsupportedPlatform."""
    try:
        family, release = _identified[stage.target]
    except (KeyError, TypeError):
        marker = "@@os-release"
        result = await stage.run(f"uname -sr; echo {marker}; cat /etc/os-release 2>/dev/null",
                                 privileged=False, check=False, stream=False, quiet=True)
        uname, _, os_release = result.stdout.partition(f"{marker}\n")
        family, release = identify(uname, os_release)
        with contextlib.suppress(TypeError):
            _identified[stage.target] = family, release
    wanted = stage.params.platform
    try:
        return choose(family, release, wanted.name, wanted.release)
    except UnsupportedPlatform as e:
        raise UnsupportedPlatform(f"{stage.target.host}: {e}") from None


def _pkg_env(stage) -> str:
    """PKG_PATH for pkg_add when the params give one (the guide's era had no installurl)."""
    pkg_path = stage.params.platform.pkg_path
    return f"PKG_PATH={q(pkg_path)} " if pkg_path else ""
