"""What differs per operating system: one `Profile` per platform, chosen once per stage.

The notebooks never ask which system they are on. Every guide step whose commands differ
between systems is a method of the profile returning a `Plan` (or the facts a check needs);
the steps that are the same everywhere live in `postfix.py` and only read the profile's
paths. A new platform (OpenBSD 5.0 as the guide has it, OpenBSD 7.x with rcctl) is a new
subclass registered in `FAMILIES`, with the same methods.

Debian 12 is here now. Its departures from the guide's OpenBSD, step by step:

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
from shlex import quote as q
from typing import ClassVar

from . import facts
from .errors import RunbookError
from .facts import Fact
from .operations import OperationFailed, Plan, Run, Write, active_lines

POLICY_RC_D = "/usr/sbin/policy-rc.d"
POLICY_SAVED = "/usr/sbin/policy-rc.d.mail-runbook-saved"
POLICY_MARK = "mail-runbook"
RSYSLOG_CONF = "/etc/rsyslog.d/postfix.conf"


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


def dovecot_detached(command: str) -> str:
    """`command` with its stdio off the SSH channel: a daemon started over SSH that keeps
    the channel's stdout open holds the session until it exits. Its output is shown
    afterwards from a file, and its exit status kept."""
    return (f"o=$(mktemp) && ( {command} </dev/null >\"$o\" 2>&1; s=$?; cat \"$o\"; "
            "rm -f \"$o\"; exit $s )")


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
        return Fact("dpkg packages", command, lambda out, _s: parse_dpkg_status(out), fresh={})

    def boot_services(self) -> Fact:
        """Each service's boot state (is-enabled; "absent" when there is no such unit).
        One call per unit: systemctl stops at the first unknown one."""
        command = (f"for u in {' '.join(self.SERVICES)}; do "
                   'e=$(systemctl is-enabled "$u" 2>/dev/null); echo "$u ${e:-absent}"; done')
        fresh = dict.fromkeys(self.SERVICES, "absent")
        return Fact("services at boot", command, lambda out, _s: parse_pairs(out), fresh)

    def running_services(self) -> Fact:
        """Each service's state now (active, inactive, failed, …), in one call."""
        command = "systemctl is-active " + " ".join(self.SERVICES)
        fresh = dict.fromkeys(self.SERVICES, "inactive")
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
        return facts.command_output("sendmail owner", f"dpkg-query -S {q(self.sendmail)} 2>&1")

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
                why="install " + ", ".join(wanted)),
        ]
        plan.cleanup = [
            Run(f"if grep -q {POLICY_MARK} {POLICY_RC_D} 2>/dev/null; then rm -f {POLICY_RC_D}; "
                f"fi; if [ -e {POLICY_SAVED} ]; then mv {POLICY_SAVED} {POLICY_RC_D}; fi",
                why="services may start again (a policy-rc.d left behind would stop them)"),
        ]
        return plan

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
        plan.steps = [Run(f"systemctl disable {q(s)}", why=f"{s} must not start at boot")
                      for s in enabled]
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
            plan.steps = [Run("systemctl enable postfix", why="start Postfix at boot")]
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
                              why="it writes the mail log and the chroot socket")]
        elif not has_socket:
            plan.found = f"{socket} is missing"
            plan.steps = [Run("systemctl restart rsyslog", why=f"create {socket}")]
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
        plan.steps = [Run(f"systemctl stop {q(s)}", why=f"{s} would hold port 25")
                      for s in running]
        plan.undo = [Run(f"systemctl start {q(s)}", why="Postfix did not take over")
                     for s in running]
        return plan

    def start_postfix(self) -> Run:
        return Run("systemctl start postfix", why="systemd starts the master process")

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
        return Fact("dovecot packages", command, parse, fresh=dict.fromkeys(
            self.DOVECOT_PACKAGES, False))

    def dovecot_boot(self) -> Fact:
        return Fact("dovecot at boot", "systemctl is-enabled dovecot 2>/dev/null",
                    lambda out, _s: out.strip() == "enabled", fresh=False)

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
                why="install " + ", ".join(wanted)),
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
            plan.steps = [Run("systemctl enable dovecot", why="start Dovecot at boot")]
            plan.undo = [Run("systemctl disable dovecot", why="it was not enabled before")]
        return plan

    def dovecot_service(self, action: str) -> Run:
        return Run(dovecot_detached(f"systemctl {q(action)} dovecot"),
                   why=f"systemd {action}s Dovecot")


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
    )


# name as params.platform.name spells it -> profile for a release ("12", "7.6").
# OpenBSD (5.0 as the guide has it, 7.x with rcctl) joins here as another entry.
FAMILIES = {"debian": debian}


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
