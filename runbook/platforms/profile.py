"""The platform contract: what every profile defines, and what they share.

`Profile` is the Postfix side (paths, and one method per guide step whose commands differ
between systems, each returning a `Plan`); `DovecotContract` the Dovecot side (G22), a base
of `Profile` so every profile answers both. A new platform subclasses `Profile` and fills
in the methods that raise NotImplementedError; `choice.py` registers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from shlex import quote as q
from typing import ClassVar

from runbook.errors import RunbookError
from runbook.ops import facts
from runbook.ops.facts import Fact
from runbook.ops.operations import Plan, Run

STOCK = Path(__file__).resolve().parent / "stock"


class UnsupportedPlatform(RunbookError):
    pass


class DovecotContract:
    """What a profile says about Dovecot (G22, stage 70-dovecot; the steps themselves are in
    runbook/services/dovecot/). A profile without Dovecot support inherits the refusals."""

    label: str
    state_dir: str

    # Class attributes, not fields: a profile states them once in its class.
    dovecot_config_dir: ClassVar[str] = "/etc/dovecot"
    dovecot_sbin: ClassVar[str] = "/usr/sbin"  # the dovecot daemon
    dovecot_bin: ClassVar[str] = "/usr/bin"  # doveconf, doveadm
    dovecot_cert: ClassVar[str] = ""  # where a generated self-signed certificate is kept
    dovecot_key: ClassVar[str] = ""
    dovecot_privileged_group: ClassVar[str] = ""  # may dotlock in the mail spool; "" none
    dovecot_syntax: ClassVar[str] = "2.3"  # the configuration syntax of its Dovecot (2.3, 2.4)

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


class MailLog:
    """The mail log (G18, G24): a file (`mail_log`), or a command that prints it
    (`mail_log_reader`: the journal), both fields of `Profile`."""

    mail_log: str
    mail_log_reader: str

    @property
    def mail_log_shown(self) -> str:
        """Where the mail log is, as a message names it."""
        return self.mail_log or f"the journal, `{self.mail_log_reader}`"

    def mail_log_tail(self, lines: int) -> str:
        if self.mail_log_reader:
            return f"{self.mail_log_reader} | tail -n {int(lines)}"
        return f"tail -n {int(lines)} {q(self.mail_log)}"


@dataclass(frozen=True)
class Profile(MailLog, DovecotContract):
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
    stock: str = ""  # runbook/platforms/stock/<stock>: a fresh host's files, for `runbook plan`
    # a command printing the mail log where it is no file (the journal); else mail_log is read
    mail_log_reader: str = ""

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

    def check_complaints(self, said: str) -> str:
        """What `postfix check` printed that is a complaint (a profile drops its notices)."""
        return said

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

    # --- a fresh host, imagined for `runbook plan` (platforms/stock/<stock>/) ------------
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


def dovecot_detached(command: str) -> str:
    """`command` with its stdio off the SSH channel: a daemon started over SSH that keeps
    the channel's stdout open holds the session until it exits. Its output is shown
    afterwards from a file, and its exit status kept."""
    return (f"o=$(mktemp) && ( {command} </dev/null >\"$o\" 2>&1; s=$?; cat \"$o\"; "
            "rm -f \"$o\"; exit $s )")

def stock_files(stock: str, part: str, params) -> dict[str, str]:
    """The files under runbook/platforms/stock/<stock>/<part>/ by their path on the host, with
    @@myhostname@@ and @@mydomain@@ filled in from the parameters (a fresh host's files,
    for `runbook plan`; see runbook/platforms/stock/README.md for where each comes from)."""
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

