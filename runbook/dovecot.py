"""G22: Dovecot serves the mailboxes Postfix delivers to — the named operations of 70-dovecot.

The guide's stated aim is "Postfix and Dovecot"; it gives no Dovecot steps. This stage
installs Dovecot's IMAP server (POP3 by parameter) and configures it with ONE file the
runbook owns (`profile.dovecot_conf`, read after the package's files, which stay as
shipped): the mailboxes Postfix delivers to, the listen addresses from the parameters,
TLS with a given or a generated self-signed certificate, plaintext authentication only
over TLS. Then it proves it:

- an IMAP session over TLS (IMAPS through the SSH connection, the certificate pinned to
  the one read from the host) logs in as the test recipient and finds the validation
  stage's message by its subject, read-only (EXAMINE, BODY.PEEK);
- a plaintext login without TLS is refused, tried from THIS machine straight to port 143
  from `postfix.probe_source`: Dovecot counts a connection from the server itself as
  secure, so a probe through the SSH tunnel would prove nothing.

The test recipient's password is read at run time from `dovecot.test_password_env` (a
variable's name) or `dovecot.test_password_file` (a file on this machine), registered as
a secret of the audit (no record carries it), and never printed. The plaintext probe sends
a made-up password: a real one never crosses the network in clear.

What differs per platform (packages, service commands, paths, the OpenBSD login class) is
in the profile's `dovecot_*` members (platforms.py). Pure functions (rendering the
configuration, reading IMAP and POP3 replies, the verdict on a plaintext login) are at the
top and tested without SSH.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import email.policy
import functools
import hashlib
import ipaddress
import os
import re
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote as q

from . import facts
from .facts import Fact
from .operations import OperationFailed, Outcome, Plan, Run, Write, operation

TIMEOUT = 15.0  # seconds for any one IMAP or POP3 reply
LISTEN_WAIT = 3.0  # seconds Dovecot may take to (re)bind its listeners
PORTS = {"imap": (143, 993), "pop3": (110, 995)}  # plain (STARTTLS), TLS
LOGIN_PROCESSES = {"imap": "imap-login", "pop3": "pop3-login"}
STAMP = "dovecot-loaded"  # in profile.state_dir: what the running Dovecot was started with
HEADER_FIELDS = ("Subject", "Date", "Message-ID", "From", "To")


class IMAPError(OperationFailed):
    """An IMAP or POP3 server answered, but not as it must; the message quotes the exchange."""


# --- what is wanted (pure) -------------------------------------------------------------------

def listen_addresses(params) -> list[str]:
    """dovecot.listen, or the addresses of Postfix's inet_interfaces (loopback-only and
    localhost: 127.0.0.1; all: every address)."""
    if params.dovecot.listen:
        return list(dict.fromkeys(params.dovecot.listen))
    found: list[str] = []
    for item in params.postfix.inet_interfaces:
        if item == "all":
            return ["*", "::"]
        found.append("127.0.0.1" if item in ("loopback-only", "localhost") else item)
    return list(dict.fromkeys(found))


def protocols(params) -> list[str]:
    return ["imap", "pop3"] if params.dovecot.pop3 else ["imap"]


def postfix_settings(params) -> dict[str, str]:
    """The main.cf settings Dovecot's mailbox format needs from Postfix (merged into the
    configure stage's wanted settings): Maildir delivery is `home_mailbox = Maildir/`."""
    d = params.dovecot
    return {"home_mailbox": "Maildir/"} if d.enabled and d.mailbox_format == "maildir" else {}


DELIVERY_SETTINGS = ("home_mailbox", "mail_spool_directory", "mailbox_command",
                     "mailbox_transport")


def delivery_problems(mailbox_format: str, values: dict[str, str]) -> list[str]:
    """Why Postfix does not deliver where Dovecot (with this mailbox format) will read;
    `values` are Postfix's effective DELIVERY_SETTINGS."""
    problems = []
    for name in ("mailbox_command", "mailbox_transport"):
        if values.get(name, "").strip():
            problems.append(f"{name} = {values[name]}: Postfix hands local mail to another "
                            "program, so the runbook cannot tell where it lands — remove it "
                            "from main.cf (or set it up for Dovecot by hand)")
    home = values.get("home_mailbox", "").strip()
    spool = values.get("mail_spool_directory", "").strip()
    if mailbox_format == "maildir":
        if home != "Maildir/":
            problems.append(f"home_mailbox is {home or '(empty: the mbox spool)'}, but "
                            "dovecot.mailbox_format is maildir: Postfix must deliver to "
                            "~/Maildir/ (home_mailbox = Maildir/, set by the configure stage)")
    elif home:
        problems.append(f"home_mailbox = {home}: Postfix delivers into the home directory, "
                        "but dovecot.mailbox_format is mbox (the mail spool) — remove "
                        "home_mailbox or set dovecot.mailbox_format: maildir")
    elif not spool.startswith("/") or spool.endswith("/"):
        problems.append(f"mail_spool_directory = {spool or '(empty)'}: not an mbox spool "
                        "directory (a trailing / means maildir files there)")
    return problems


def mail_location(mailbox_format: str, values: dict[str, str]) -> str:
    """Dovecot's mail_location for what Postfix delivers: the spool's mbox files as INBOX
    (folders in ~/mail), or the Maildir in the home directory."""
    if mailbox_format == "maildir":
        return "maildir:~/" + (values.get("home_mailbox") or "Maildir/").strip().rstrip("/")
    spool = (values.get("mail_spool_directory") or "/var/mail").strip()
    return f"mbox:~/mail:INBOX={spool}/%u"


@dataclass(frozen=True)
class Certificate:
    cert: str
    key: str
    generated: bool  # True: the runbook makes a self-signed one when it is missing


def certificate(params, profile) -> Certificate:
    d = params.dovecot
    if d.ssl_cert_file:  # the model makes sure the key comes with it
        return Certificate(str(d.ssl_cert_file), str(d.ssl_key_file), False)
    return Certificate(profile.dovecot_cert, profile.dovecot_key, True)


@dataclass(frozen=True)
class Settings:
    """The settings the runbook's Dovecot file sets, in the order it writes them."""

    protocols: tuple[str, ...]
    listen: tuple[str, ...]
    mail_location: str
    privileged_group: str
    ssl_cert: str
    ssl_key: str

    def values(self) -> dict[str, str]:
        """What `doveconf NAME…` must print for each setting."""
        values = {
            "protocols": " ".join(self.protocols),
            "listen": ", ".join(self.listen),
            "mail_location": self.mail_location,
            "ssl": "required",
            "disable_plaintext_auth": "yes",
            "ssl_cert": f"<{self.ssl_cert}",
        }
        if self.privileged_group:
            values["mail_privileged_group"] = self.privileged_group
        return values


def render_config(settings: Settings) -> str:
    """The runbook's Dovecot configuration file."""
    lines = [
        "# Written by mail-runbook (stage 70-dovecot, guide step G22). The next run replaces",
        "# any edit here: change the params file's dovecot section instead. The package's",
        "# own files are left as shipped; this file is read after them and wins.",
        "",
        "# IMAP (and POP3 when dovecot.pop3 is set); no other protocol.",
        f"protocols = {' '.join(settings.protocols)}",
        "# Only the addresses the parameters give.",
        f"listen = {', '.join(settings.listen)}",
        "",
        "# The mailboxes Postfix delivers to.",
        f"mail_location = {settings.mail_location}",
    ]
    if settings.privileged_group:
        lines += ["# Dotlocks in the mail spool need the spool's group.",
                  f"mail_privileged_group = {settings.privileged_group}"]
    lines += [
        "",
        "# TLS always; passwords only over TLS (or from the server itself).",
        "ssl = required",
        f"ssl_cert = <{settings.ssl_cert}",
        f"ssl_key = <{settings.ssl_key}",
        "disable_plaintext_auth = yes",
    ]
    return "\n".join(lines) + "\n"


def parse_settings(text: str) -> dict[str, str]:
    """`doveconf NAME…` (or the top level of `doveconf -n`): name = value lines, sections
    skipped."""
    found, depth = {}, 0
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("{"):
            depth += 1
            continue
        if stripped == "}":
            depth = max(0, depth - 1)
            continue
        name, sep, value = stripped.partition(" = ")
        if depth == 0 and sep:
            found[name] = value.strip()
        elif depth == 0 and stripped.endswith(" ="):
            found[stripped[:-2].strip()] = ""
    return found


def settings_problems(wanted: dict[str, str], current: dict[str, str]) -> list[str]:
    """Settings Dovecot reads that differ from what the runbook wrote (another file, e.g.
    local.conf, overriding them)."""
    problems = []
    for name, value in wanted.items():
        have = current.get(name)
        if name in ("protocols", "listen"):
            same = have is not None and _words(have) == _words(value)
        else:
            same = have == value
        if not same:
            problems.append(f"{name} is {have!r}, wanted {value!r}")
    return problems


def _words(value: str) -> list[str]:
    return sorted(w for w in re.split(r"[\s,]+", value.strip().strip('"')) if w)


def doveconf_complaints(output: str) -> list[str]:
    """doveconf's warnings and errors (it prints them as `doveconf: Warning: …`)."""
    return [line.strip() for line in output.splitlines()
            if re.match(r"\s*doveconf: (Warning|Error|Fatal|Panic)", line)]


def expected_sockets(listen: list[str], protocols_: list[str]) -> set[tuple[str, int]]:
    """(address as the socket table shows it, port) Dovecot's listeners must have."""
    ports = [p for proto in protocols_ for p in PORTS[proto]]
    shown = {"*": "0.0.0.0", "::": "::"}
    return {(shown.get(a, a), port) for a in listen for port in ports}


def fingerprint(pem: str) -> str:
    """SHA-256 fingerprint (AB:CD:…) of the first certificate in a PEM text."""
    der = ssl.PEM_cert_to_DER_cert(first_pem(pem))
    return _colons(hashlib.sha256(der).hexdigest())


def _colons(hexdigest: str) -> str:
    return ":".join(hexdigest[i:i + 2] for i in range(0, len(hexdigest), 2)).upper()


_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def first_pem(text: str) -> str:
    match = _PEM.search(text or "")
    if not match:
        raise OperationFailed("the certificate file holds no PEM certificate")
    return match.group(0) + "\n"


def pinned_context(pem: str) -> ssl.SSLContext:
    """A TLS client context that trusts exactly this certificate (self-signed or not: it
    is the trust anchor itself, expiry still checked) and no other."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the pin is stronger than a name
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.load_verify_locations(cadata=first_pem(pem))
    return context


def quoted(value: str) -> str:
    """An IMAP quoted string (RFC 3501); refuses what a quoted string cannot carry."""
    if any(c in value for c in "\r\n\0") or not value.isascii():
        raise OperationFailed("the test password has a line break or a non-ASCII character, "
                              "which an IMAP LOGIN cannot carry as a quoted string")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- IMAP replies (pure) ---------------------------------------------------------------------

@dataclass
class Response:
    """A tagged IMAP response with the untagged lines before it (literals inline)."""

    tag: str
    status: str  # OK, NO, BAD (or PREAUTH/BYE for a greeting)
    code: str  # the response code in brackets, e.g. PRIVACYREQUIRED, READ-ONLY
    text: str
    untagged: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "OK"


_STATUS = re.compile(r"(?P<tag>\S+) (?P<status>OK|NO|BAD|PREAUTH|BYE)\b ?"
                     r"(?:\[(?P<code>[^\]]*)\] ?)?(?P<text>.*)", re.I)


def parse_status(line: str) -> tuple[str, str, str, str]:
    """(tag, status, code, text) of a status line such as `a1 NO [PRIVACYREQUIRED] …`."""
    match = _STATUS.match(line.strip())
    if not match:
        raise IMAPError(f"not an IMAP status line: {line!r}")
    return (match["tag"], match["status"].upper(), (match["code"] or "").strip(),
            match["text"].strip())


def parse_capabilities(lines: list[str]) -> set[str]:
    """Capabilities from a greeting's [CAPABILITY …] code or `* CAPABILITY …` lines."""
    found: set[str] = set()
    for line in lines:
        match = re.search(r"\[CAPABILITY ([^\]]*)\]", line, re.I) or re.match(
            r"\* CAPABILITY (.*)", line, re.I)
        if match:
            found |= {c.upper() for c in match.group(1).split()}
    return found


def parse_search(untagged: list[str]) -> list[int]:
    """Message numbers from `* SEARCH 1 4 7`."""
    numbers: list[int] = []
    for line in untagged:
        match = re.match(r"\* SEARCH\b(.*)", line, re.I)
        if match:
            numbers += [int(n) for n in match.group(1).split() if n.isdigit()]
    return numbers


def parse_exists(untagged: list[str]) -> int | None:
    for line in untagged:
        match = re.match(r"\* (\d+) EXISTS", line, re.I)
        if match:
            return int(match.group(1))
    return None


def parse_fetched_headers(untagged: list[str]) -> dict[str, str]:
    """The header fields of a `* n FETCH (BODY[HEADER.FIELDS (…)] {k}…)` response."""
    for line in untagged:
        if re.match(r"\* \d+ FETCH", line, re.I) and "\n" in line:
            block = line.split("\n", 1)[1]
            message = email.message_from_string(block, policy=email.policy.default)
            return {name: str(message[name]) for name in HEADER_FIELDS if message[name]}
    return {}


def plaintext_verdict(capabilities: set[str], response: Response) -> tuple[bool, str]:
    """Whether a LOGIN without TLS was refused *because* there was no TLS, and why.

    A made-up password is sent: an answer about the password (AUTHENTICATIONFAILED) means
    the server was willing to check a password sent in clear."""
    disabled = "LOGINDISABLED" in capabilities
    if response.ok:
        return False, "the server ACCEPTED a plaintext LOGIN with a made-up password"
    if response.code.upper().startswith("PRIVACYREQUIRED") or re.search(
            r"plaintext authentication disallowed", response.text, re.I):
        return True, (f"LOGIN refused without TLS: {response.status} [{response.code}] "
                      f"{response.text}" + (" (and LOGINDISABLED was advertised)"
                                            if disabled else ""))
    if response.code.upper().startswith("AUTHENTICATIONFAILED"):
        return False, ("the server checked a password sent in clear (AUTHENTICATIONFAILED): "
                       "plaintext authentication is allowed without TLS")
    if disabled:
        return True, (f"LOGINDISABLED advertised, LOGIN answered {response.status} "
                      f"{response.text}")
    return False, (f"LOGIN answered {response.status} [{response.code}] {response.text}, "
                   "which does not say plaintext logins are refused")


def pop3_plaintext_verdict(reply: str) -> tuple[bool, str]:
    """Whether POP3's USER (or PASS) without TLS was refused for want of TLS."""
    if reply.startswith("-ERR") and re.search(r"plaintext|\[AUTH\]|TLS|SSL", reply, re.I):
        return True, f"refused without TLS: {reply}"
    if reply.startswith("-ERR"):
        return False, f"answered {reply}, which does not say plaintext logins are refused"
    return False, f"answered {reply}: the server takes a user name and password in clear"


# --- clients -----------------------------------------------------------------------------------

@dataclass
class IMAP:
    """One IMAP conversation; `transcript` holds every line, C: ours and S: the server's."""

    reader: object
    writer: object
    timeout: float = TIMEOUT
    transcript: list[str] = field(default_factory=list)
    count: int = 0

    async def _line(self) -> str:
        raw = await asyncio.wait_for(self.reader.readline(), self.timeout)
        if not raw:
            raise IMAPError("the server closed the connection\n" + self.shown())
        line = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
        return line.rstrip("\r\n")

    async def _logical(self) -> str:
        """One response line with any literals ({n} + n bytes) joined in with newlines."""
        line = await self._line()
        self.transcript.append(f"S: {line}")
        whole = line
        while (match := re.search(r"\{(\d+)\}$", line)):
            data = await asyncio.wait_for(self.reader.readexactly(int(match.group(1))),
                                          self.timeout)
            text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
            self.transcript += [f"S: {t}" for t in text.replace("\r\n", "\n").split("\n")]
            line = await self._line()
            self.transcript.append(f"S: {line}")
            whole += "\n" + text.replace("\r\n", "\n") + line
        return whole

    async def greeting(self) -> Response:
        line = await self._logical()
        if not line.startswith("* "):
            raise IMAPError(f"not an IMAP greeting: {line!r}\n" + self.shown())
        tag, status, code, text = parse_status(line)
        if status not in ("OK", "PREAUTH"):
            raise IMAPError(f"the server greeted with {status}: {text}\n" + self.shown())
        return Response(tag, status, code, text, [line])

    async def command(self, command: str, *, shown: str | None = None) -> Response:
        self.count += 1
        tag = f"a{self.count}"
        self.transcript.append(f"C: {tag} {shown if shown is not None else command}")
        self.writer.write(f"{tag} {command}\r\n".encode())
        await self.writer.drain()
        untagged = []
        while True:
            line = await self._logical()
            if line.startswith(f"{tag} "):
                _, status, code, text = parse_status(line)
                return Response(tag, status, code, text, untagged)
            untagged.append(line)

    async def expect_ok(self, command: str, *, shown: str | None = None) -> Response:
        response = await self.command(command, shown=shown)
        if not response.ok:
            what = (shown or command).split(" ", 1)[0]
            raise IMAPError(f"{what} was answered {response.status} "
                            f"[{response.code}] {response.text}\n" + self.shown())
        return response

    async def logout(self) -> None:
        with contextlib.suppress(IMAPError, OSError, TimeoutError, EOFError):
            await self.command("LOGOUT")

    def shown(self) -> str:
        return "\n".join(self.transcript)


@dataclass
class POP3:
    """One POP3 conversation (RFC 1939), transcript as IMAP's."""

    reader: object
    writer: object
    timeout: float = TIMEOUT
    transcript: list[str] = field(default_factory=list)

    async def line(self) -> str:
        raw = await asyncio.wait_for(self.reader.readline(), self.timeout)
        if not raw:
            raise IMAPError("the server closed the connection\n" + self.shown())
        line = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
        line = line.rstrip("\r\n")
        self.transcript.append(f"S: {line}")
        return line

    async def command(self, command: str, *, shown: str | None = None,
                      expect_ok: bool = True) -> str:
        self.transcript.append(f"C: {shown if shown is not None else command}")
        self.writer.write(f"{command}\r\n".encode())
        await self.writer.drain()
        reply = await self.line()
        if expect_ok and not reply.startswith("+OK"):
            raise IMAPError(f"{(shown or command).split(' ', 1)[0]} was answered {reply}\n"
                            + self.shown())
        return reply

    async def multiline(self) -> str:
        lines = []
        while (line := await self.line()) != ".":
            lines.append(line[1:] if line.startswith("..") else line)
        return "\n".join(lines)

    def shown(self) -> str:
        return "\n".join(self.transcript)


# --- state shared by the stage's cells -----------------------------------------------------------

def _state(stage) -> dict:
    return facts.scratch(stage).setdefault("dovecot", {})


def _profile(stage):
    return stage.platform


def _disabled(stage) -> str:
    return "" if stage.params.dovecot.enabled else "dovecot.enabled is false"


def _when_wanted(operation_fn):
    """Under @operation: the step is skipped, saying why, when dovecot.enabled is false."""
    @functools.wraps(operation_fn)
    async def wrapper(stage, *args, **kwargs):
        if _disabled(stage):
            return Outcome("", "skipped", _disabled(stage))
        return await operation_fn(stage, *args, **kwargs)
    return wrapper


def _pending(stage, plan: Plan) -> Plan:
    """Note a dry run's would-be change: the checks after it cannot show the result."""
    if stage.dry_run and not plan.empty and not plan.skip:
        _state(stage)["pending"] = True
    return plan


def _delivery(stage) -> Fact:
    profile = _profile(stage)

    def fresh(host) -> dict[str, str] | None:  # a plan made without connecting
        settings = host.postconf_n()
        if settings is None:
            return None
        defaults = dict.fromkeys(DELIVERY_SETTINGS, "") | {
            "mail_spool_directory": profile.mailbox_dir}
        return {k: settings.get(k, defaults[k]) for k in DELIVERY_SETTINGS}
    return dataclasses.replace(facts.postconf_values(profile.postconf, DELIVERY_SETTINGS),
                               fresh=fresh)


def _conf(stage) -> Fact:
    return facts.file(_profile(stage).dovecot_conf)


def _certificate_fact(stage) -> Fact:
    """The certificate's PEM text and whether the key file exists and matches it."""
    c = certificate(stage.params, _profile(stage))
    cert, key = q(c.cert), q(c.key)
    command = (f"[ -f {cert} ] || {{ echo nocert; exit 0; }}; [ -f {key} ] || "
               f"{{ echo nokey; exit 0; }}; if a=$(openssl x509 -in {cert} -noout -pubkey) && "
               f"b=$(openssl pkey -in {key} -pubout) && [ \"$a\" = \"$b\" ]; then echo match; "
               f"else echo mismatch; fi 2>/dev/null; cat {cert}")

    def parse(out: str, status: int) -> dict:
        state, _, pem = out.partition("\n")
        if state not in ("nocert", "nokey", "match", "mismatch"):
            raise facts.FactError(f"cannot read the certificate {c.cert} (exit {status})")
        return {"state": state, "pem": pem}
    return Fact(f"dovecot certificate {c.cert}", command, parse, fresh=lambda host: {
        "state": "match" if host.exists(c.cert) and host.exists(c.key) else "nocert",
        "pem": ""})


def _files(stage) -> str:
    """Shell words: the files Dovecot reads its configuration and TLS keys from."""
    profile = _profile(stage)
    c = certificate(stage.params, profile)
    d = q(profile.dovecot_config_dir)
    return (f"{d}/dovecot.conf {d}/conf.d/*.conf $(ls {d}/local.conf 2>/dev/null) "
            f"{q(c.cert)} {q(c.key)}")


def _pid_script(stage) -> str:
    """Shell: sets $pidf to Dovecot's master.pid and $pid when the master runs."""
    doveconf = q(_profile(stage).dovecot_tool("doveconf"))
    return (f"pid=; pidf=$({doveconf} -h base_dir 2>/dev/null)/master.pid; "
            "[ -r \"$pidf\" ] && read pid < \"$pidf\" && kill -0 \"$pid\" 2>/dev/null || pid=")


def _stamp(stage) -> str:
    profile = _profile(stage)
    return f"{profile.state_dir}/{STAMP}"


def _master(stage) -> Fact:
    """{"pid": the running master's pid or None, "stale": whether the configuration files
    changed since it read them}. Like Postfix's: the stamp holds the files' checksums when
    the runbook last (re)loaded Dovecot; after a start by something else (a boot), the
    files must not be newer than its pid file."""
    stamp = q(_stamp(stage))
    command = (f"{_pid_script(stage)}; [ -n \"$pid\" ] || exit 0; echo \"pid $pid\"; "
               f"if [ -f {stamp} ] && [ ! \"$pidf\" -nt {stamp} ]; then "
               f"[ \"$(cksum {_files(stage)} 2>&1)\" = \"$(cat {stamp})\" ] || echo stale; "
               f"else for f in {_files(stage)}; do "
               "[ \"$f\" -nt \"$pidf\" ] && { echo stale; break; }; done; fi")

    def parse(out: str, _status: int) -> dict:
        pid = re.search(r"^pid (\d+)$", out, re.M)
        return {"pid": int(pid.group(1)) if pid else None, "stale": "stale" in out.split()}
    return Fact("dovecot master", command, parse, fresh=lambda host: {
        "pid": 1 if "dovecot" in host.running else None, "stale": False})


# The settings the check reads back (a fixed list, so the stage's first read fetches them).
CHECKED = ("protocols", "listen", "mail_location", "mail_privileged_group", "ssl",
           "disable_plaintext_auth", "ssl_cert", "login_trusted_networks")


def _doveconf(stage, names: tuple[str, ...] = ()) -> Fact:
    doveconf = q(_profile(stage).dovecot_tool("doveconf"))
    args = " ".join(q(n) for n in names) if names else "-n"
    return facts.command_output(f"doveconf {args}", f"{doveconf} {args} 2>&1")


def _settings(stage, values: dict[str, str] | None) -> Settings:
    """The wanted settings, from Postfix's effective delivery values (or, in a dry run on a
    host without Postfix yet, the platform's defaults)."""
    params, profile = stage.params, _profile(stage)
    values = values or {"mail_spool_directory": profile.mailbox_dir}
    c = certificate(params, profile)
    return Settings(
        protocols=tuple(protocols(params)),
        listen=tuple(listen_addresses(params)),
        mail_location=mail_location(params.dovecot.mailbox_format, values),
        privileged_group=(profile.dovecot_privileged_group
                          if params.dovecot.mailbox_format == "mbox" else ""),
        ssl_cert=c.cert, ssl_key=c.key)


async def _delivery_values(stage) -> dict[str, str] | None:
    values = await facts.read_one(stage, _delivery(stage))
    if values is None and not stage.dry_run:
        raise OperationFailed("Postfix is not installed on this host: Dovecot serves the "
                              "mailboxes Postfix delivers to — run the Postfix stages first")
    return values


# --- what each check looks at, for plans made without connecting (`runbook plan`) -------------

def _described(describe):
    """A describer that says "skipped" when Dovecot is not wanted."""
    @functools.wraps(describe)
    def wrapper(stage) -> list[str]:
        return [f"# skipped: {_disabled(stage)}"] if _disabled(stage) else describe(stage)
    return wrapper


@_described
def _describe_password(stage) -> list[str]:
    d = stage.params.dovecot
    where = (f"the environment variable {d.test_password_env}" if d.test_password_env
             else f"the file {d.test_password_file}" if d.test_password_file
             else "nowhere yet: set dovecot.test_password_env or dovecot.test_password_file")
    return [f"# the test recipient's password is read on this machine from {where}; never "
            "shown, masked in every record"]


@_described
def _describe_delivery(stage) -> list[str]:
    fmt = stage.params.dovecot.mailbox_format
    want = ("home_mailbox = Maildir/" if fmt == "maildir" else
            "no home_mailbox, an mbox spool directory")
    return [f"$ {_profile(stage).postconf} {' '.join(DELIVERY_SETTINGS)}",
            f"# {fmt}: {want}, and no mailbox_command or mailbox_transport"]


@_described
def _describe_check_config(stage) -> list[str]:
    doveconf = _profile(stage).dovecot_tool("doveconf")
    wanted = _settings(stage, None).values()
    return [f"$ {doveconf} -n    # shown; no warning or error",
            f"$ {doveconf} {' '.join(CHECKED)}    # each as written:",
            *(f"#   {k} = {v}" for k, v in wanted.items())]


@_described
def _describe_listening(stage) -> list[str]:
    expected = expected_sockets(listen_addresses(stage.params), protocols(stage.params))
    return [f"$ {_profile(stage).listeners().command}",
            f"# Dovecot's master listens on exactly {_pairs(expected)}"]


def _describe_login(protocol: str):
    def describe(stage) -> list[str]:
        if protocol == "pop3" and not stage.params.dovecot.pop3:
            return ["# skipped: dovecot.pop3 is false"]
        port = PORTS[protocol][1]
        steps = ("LOGIN, EXAMINE INBOX (read-only), SEARCH SUBJECT of the validation "
                 "message, FETCH BODY.PEEK[HEADER.FIELDS (…)], LOGOUT" if protocol == "imap"
                 else "USER, PASS, STAT, TOP n 0 until the test message, closed without QUIT")
        return [f"# TLS to {connect_address(stage.params)}:{port} through the SSH connection, "
                "the certificate pinned to the one read from the host",
                f"# as {stage.params.postfix.test_recipient}: {steps}"]
    return _described(describe)


@_described
def _describe_probe(stage) -> list[str]:
    address, why = _reachable(stage.params, listen_addresses(stage.params))
    if address is None:
        return [f"# skipped: {why}"]
    source = stage.params.postfix.probe_source or "(the address this machine picks)"
    ports = ", ".join(str(PORTS[p][0]) for p in protocols(stage.params))
    return [f"# from this machine, source {source}, straight to {address} port {ports}",
            "# LOGIN (USER/PASS) with a made-up password must be refused for want of TLS "
            "(LOGINDISABLED, NO [PRIVACYREQUIRED])"]


# --- 70-dovecot: setting up --------------------------------------------------------------------

@operation("G22 the test recipient's password is at hand (read here, never shown)",
           offline=_describe_password)
@_when_wanted
async def check_password(stage) -> Outcome:
    """Read before anything changes, so a missing password stops the stage while the host
    is still as it was."""
    d = stage.params.dovecot
    _secret(stage, test_password(stage.params))
    where = (f"environment variable {d.test_password_env}" if d.test_password_env
             else f"file {d.test_password_file} on this machine")
    return Outcome("", "ok", f"read from the {where}; masked in every record")


@operation("G22 Postfix delivers where Dovecot will read", offline=_describe_delivery)
@_when_wanted
async def check_delivery(stage) -> Outcome:
    """Postfix's delivery settings must match dovecot.mailbox_format: mbox files in the
    spool (the default), or ~/Maildir/ (home_mailbox = Maildir/)."""
    values = await _delivery_values(stage)
    if values is None:
        return Outcome("", "skipped", "dry run: Postfix is not installed yet")
    fmt = stage.params.dovecot.mailbox_format
    problems = delivery_problems(fmt, values)
    shown = "\n".join(f"{k} = {values.get(k, '')}" for k in DELIVERY_SETTINGS)
    if problems and not stage.dry_run:
        raise OperationFailed("Postfix does not deliver where Dovecot would read:\n  "
                              + "\n  ".join(problems))
    location = mail_location(fmt, values)
    detail = (f"dry run: would differ: {'; '.join(problems)}" if problems
              else f"{fmt}: Dovecot reads {location}")
    return Outcome("", "ok", detail, evidence=shown, value=location)


@operation("G22 install Dovecot's IMAP server (nothing started until configured)")
@_when_wanted
async def install(stage) -> Plan:
    return _pending(stage, await _profile(stage).dovecot_install(stage, stage.params.dovecot.pop3))


@operation("G22 Dovecot's login class (OpenBSD package README)")
@_when_wanted
async def ensure_login_class(stage) -> Plan:
    return _pending(stage, await _profile(stage).dovecot_login_class(stage))


@operation("G22 TLS certificate for Dovecot (given, or self-signed once)")
@_when_wanted
async def ensure_certificate(stage) -> Plan:
    params, profile = stage.params, _profile(stage)
    c = certificate(params, profile)
    found = await facts.read_one(stage, _certificate_fact(stage))
    state = found["state"]
    plan = Plan("TLS certificate")
    if state == "match":
        plan.found = f"{c.cert} and its key {c.key} are in place"
        _state(stage)["pem"] = found["pem"]
        return plan
    if not c.generated:
        why = {"nocert": f"dovecot.ssl_cert_file {c.cert} does not exist on the host",
               "nokey": f"dovecot.ssl_key_file {c.key} does not exist on the host",
               "mismatch": f"dovecot.ssl_key_file {c.key} is not the key of {c.cert}"}[state]
        if stage.dry_run:
            plan.skip = f"dry run: {why}"
            return plan
        raise OperationFailed(why + " — put them there, or leave both empty for a "
                              "generated self-signed certificate")
    name = params.postfix.myhostname
    plan.found = {"nocert": f"no certificate at {c.cert} yet",
                  "nokey": f"{c.cert} exists but its key {c.key} does not",
                  "mismatch": f"{c.key} is not the key of {c.cert}"}[state]
    cert, key = q(c.cert), q(c.key)
    plan.steps = [Run(
        f"umask 077; mkdir -p $(dirname {cert}) $(dirname {key}) && "
        f"out=$(openssl req -new -x509 -nodes -newkey rsa:2048 -days 3650 "
        f"-subj {q('/CN=' + name)} -keyout {key}.new -out {cert}.new 2>&1) "
        f"|| {{ echo \"$out\" >&2; exit 1; }}; chmod 644 {cert}.new && "
        f"mv {key}.new {key} && mv {cert}.new {cert} && "
        f"openssl x509 -in {cert} -noout -subject -enddate -fingerprint -sha256",
        why=f"a self-signed certificate for {name}, made once and kept on the host",
        effect=lambda host: (host.add(c.cert), host.add(c.key)))]
    if state == "nocert":
        plan.undo = [Run(f"rm -f {cert} {key}", why="the certificate was made by this stage")]
    return _pending(stage, plan)


@operation("G22 Dovecot configuration: one runbook-managed file")
@_when_wanted
async def ensure_config(stage) -> Plan:
    profile = _profile(stage)
    values = await _delivery_values(stage)
    settings = _settings(stage, values)
    text = await facts.read_one(stage, _conf(stage))
    new = render_config(settings)
    plan = Plan("Dovecot configuration", found=(
        f"listen {', '.join(settings.listen)}; {settings.mail_location}; "
        f"protocols {' '.join(settings.protocols)}; TLS {settings.ssl_cert}"))
    _state(stage)["settings"] = settings
    if text != new:
        plan.steps = [Write(profile.dovecot_conf, text, new, mode=0o644,
                            why="the runbook's settings, read after the package's files")]
    return _pending(stage, plan)


@operation("G22 doveconf -n: no errors, settings as intended",
           offline=_describe_check_config)
@_when_wanted
async def check_config(stage) -> Outcome:
    """`doveconf -n` (the settings that differ from the defaults) shown; it must exit 0
    without warnings, and the settings the runbook wrote must be what Dovecot reads (no
    later file, such as local.conf, overriding them)."""
    installed = await facts.read_one(stage, _profile(stage).dovecot_packages())
    if not installed.get("imap"):
        if stage.dry_run:
            return Outcome("", "skipped", "dry run: Dovecot is not installed yet")
        raise OperationFailed("Dovecot's IMAP server is not installed (the install step "
                              "above should have installed it)")
    settings = _state(stage).get("settings") or _settings(stage, await _delivery_values(stage))
    wanted = settings.values()
    (shown, status), (values, _) = await facts.read(stage, _doveconf(stage),
                                                    _doveconf(stage, CHECKED))
    complaints = doveconf_complaints(shown) + doveconf_complaints(values)
    current = parse_settings(values)
    _state(stage)["trusted"] = current.get("login_trusted_networks", "")
    problems = complaints + settings_problems(wanted, current)
    if status != 0:
        problems.insert(0, f"doveconf -n exited {status}")
    if problems and not stage.dry_run:
        raise OperationFailed("Dovecot's configuration is not as intended:\n  "
                              + "\n  ".join(problems)
                              + "\nthe files this stage edited were put back as they were")
    detail = (f"dry run: differs now: {'; '.join(problems)}" if problems
              else f"no complaints; {len(wanted)} settings as intended")
    return Outcome("", "ok", detail, evidence=shown.rstrip())


@operation("G22 Dovecot starts at boot")
@_when_wanted
async def ensure_at_boot(stage) -> Plan:
    return _pending(stage, await _profile(stage).dovecot_at_boot(stage))


@operation("G22 Dovecot started (or reloaded onto a changed configuration)")
@_when_wanted
async def start(stage) -> Plan:
    profile = _profile(stage)
    master = await facts.read_one(stage, _master(stage))
    stamp = (f"mkdir -p {q(profile.state_dir)} && cksum {_files(stage)} > "
             f"{q(_stamp(stage))} 2>&1")
    plan = Plan("start Dovecot")
    if master["pid"] is None:
        run = profile.dovecot_service("start")
        plan.found = "Dovecot is not running"
        plan.steps = [Run(f"{run.command} && {stamp}", why=run.why)]
        plan.undo = [profile.dovecot_service("stop")]
    elif master["stale"]:
        run = profile.dovecot_service("reload")
        plan.found = (f"master {master['pid']} runs, but its configuration or certificate "
                      "changed since it read them")
        plan.steps = [Run(f"{run.command} && {stamp}", why="Dovecot re-reads its files")]
        plan.undo = [Run(run.command, why="back onto the restored files")]
    else:
        plan.found = f"master {master['pid']} runs the current configuration"
    return _pending(stage, plan)


@operation("G22 Dovecot listens on exactly the configured addresses",
           offline=_describe_listening)
@_when_wanted
async def verify_listening(stage) -> Outcome:
    if stage.dry_run and _state(stage).get("pending"):
        return Outcome("", "skipped", "dry run: Dovecot would be set up or changed first")
    profile = _profile(stage)
    listen = listen_addresses(stage.params)
    protos = protocols(stage.params)
    expected = expected_sockets(listen, protos)
    ports = {p for pair in PORTS.values() for p in pair}
    named = [a for a in listen if a not in ("*", "::") and not _is_ip(a)]
    for attempt in range(int(LISTEN_WAIT / 0.1)):
        master, sockets = await facts.read(stage, _master(stage), profile.listeners())
        pid = master["pid"]
        ours = {(s.address, s.port) for s in sockets if s.port in ports and s.pid == pid}
        strangers = [s for s in sockets if s.port in ports and s.pid != pid
                     and s.process not in LOGIN_PROCESSES.values()]
        good = pid is not None and not strangers and (
            {p for _, p in ours} == {p for _, p in expected} if named else ours == expected)
        if good or attempt == int(LISTEN_WAIT / 0.1) - 1:
            break
        facts.forget(stage)
        await asyncio.sleep(0.1)
    if pid is None:
        if stage.dry_run:
            return Outcome("", "skipped", "dry run: Dovecot is not running")
        raise OperationFailed("Dovecot's master process is not running; see the mail log "
                              f"({profile.mail_log}) for why it stopped")
    evidence = "\n".join(f"{a}:{p} dovecot pid {pid}" for a, p in sorted(ours))
    if strangers:
        raise OperationFailed("other processes of this host also listen on Dovecot's ports: "
                              + ", ".join(f"{s.process} pid {s.pid} on {s.address}:{s.port}"
                                          for s in strangers)
                              + " (on Debian, is dovecot.socket enabled?)")
    if not good:
        raise OperationFailed(
            f"Dovecot (master {pid}) listens on {_pairs(ours) or 'nothing'}, but the "
            f"parameters want {_pairs(expected)}")
    return Outcome("", "ok", f"master {pid} listens on {_pairs(ours)}", evidence=evidence)


def _pairs(pairs) -> str:
    return ", ".join(f"{a}:{p}" for a, p in sorted(pairs))


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


# --- 70-dovecot: verification ------------------------------------------------------------------

def test_password(params) -> str:
    """The test recipient's password, read now on this machine (never a parameter)."""
    d = params.dovecot
    if d.test_password_env:
        value = os.environ.get(d.test_password_env)
        if not value:
            raise OperationFailed(
                f"dovecot.test_password_env names {d.test_password_env}, which is not set "
                "(or empty) in the environment of this notebook's kernel")
    elif d.test_password_file:
        path = Path(d.test_password_file).expanduser()
        try:
            value = path.read_text().rstrip("\r\n")
        except OSError as e:
            raise OperationFailed(f"cannot read dovecot.test_password_file {path}: "
                                  f"{e.strerror or e}") from None
        if not value:
            raise OperationFailed(f"dovecot.test_password_file {path} is empty")
    else:
        raise OperationFailed(
            "no password for the test recipient: set dovecot.test_password_env (the name of "
            "an environment variable holding it) or dovecot.test_password_file (a file on "
            "this machine) — the password itself is never a parameter")
    return value


def _secret(stage, password: str) -> None:
    stage.audit.add_secret(password)
    stage.audit.add_secret(quoted(password)[1:-1])


def connect_address(params) -> str:
    """Where a client on the server itself reaches Dovecot."""
    for address in listen_addresses(params):
        if address not in ("*", "::"):
            return address
    return "::1" if listen_addresses(params) == ["::"] else "127.0.0.1"


async def _pinned_pem(stage) -> str:
    pem = _state(stage).get("pem")
    if not pem:
        found = await facts.read_one(stage, _certificate_fact(stage))
        if found["state"] != "match":
            raise OperationFailed("Dovecot's certificate and key are not in place "
                                  "(the certificate step above should have made them)")
        pem = _state(stage)["pem"] = found["pem"]
    return pem


@contextlib.asynccontextmanager
async def tls_via_ssh(stage, port: int):
    """A TLS connection to Dovecot's `port` through the SSH connection (as a client on the
    server would make it), trusting exactly the certificate read from the host."""
    pem = await _pinned_pem(stage)
    address = connect_address(stage.params)
    listener, local = await stage.target.forward_local_port(address, port)
    writer = None
    try:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", local, ssl=pinned_context(pem),
                server_hostname=stage.params.postfix.myhostname), TIMEOUT)
        except ssl.SSLCertVerificationError as e:
            raise OperationFailed(
                f"{address} port {port} presented a certificate that is not the one on the "
                f"host (pinned {fingerprint(pem)}): {e.verify_message}") from None
        except (OSError, ssl.SSLError, TimeoutError) as e:
            raise OperationFailed(f"no TLS session with {address} port {port} through the "
                                  f"SSH connection: {e or type(e).__name__}") from None
        peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        seen = _colons(hashlib.sha256(peer).hexdigest())
        if seen != fingerprint(pem):
            raise OperationFailed(f"{address} port {port} presented {seen}, not the pinned "
                                  f"{fingerprint(pem)}")
        yield reader, writer, f"TLS {writer.get_extra_info('ssl_object').version()}, " \
            f"certificate sha256 {seen} (pinned)"
    finally:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        listener.close()


def _skip_verification(stage) -> str:
    if _disabled(stage):
        return _disabled(stage)
    if stage.dry_run:
        return "dry run: no login"
    return ""


def _search_terms(stage) -> list[tuple[str, str]]:
    """(what, SEARCH criteria): the validation message of this run, else the newest one."""
    run = f"test of run {stage.run_id}"
    return [("this run's test message", f"SUBJECT {quoted(run)}"),
            ("the newest mail-runbook test message", f"SUBJECT {quoted('mail-runbook')}")]


@operation("G22 IMAP login over TLS finds the test message (read-only)",
           offline=_describe_login("imap"))
async def imap_login(stage) -> Outcome:
    """IMAPS through the SSH connection, the certificate pinned: LOGIN as the test
    recipient, EXAMINE INBOX (read-only), SEARCH for the validation stage's subject, and
    FETCH its headers with BODY.PEEK (nothing is marked seen), LOGOUT."""
    if skip := _skip_verification(stage):
        return Outcome("", "skipped", skip)
    params = stage.params
    user = params.postfix.test_recipient
    password = test_password(params)
    _secret(stage, password)
    port = PORTS["imap"][1]
    imap = None
    try:
        async with tls_via_ssh(stage, port) as (reader, writer, tls):
            imap = IMAP(reader, writer)
            imap.transcript.append(f"# {tls}")
            greeting = await imap.greeting()
            await imap.expect_ok(f"LOGIN {quoted(user)} {quoted(password)}",
                                 shown=f"LOGIN {quoted(user)} \"********\"")
            examined = await imap.expect_ok("EXAMINE INBOX")
            if not examined.code.upper().startswith("READ-ONLY"):
                raise IMAPError("EXAMINE did not open INBOX read-only\n" + imap.shown())
            found, what = [], ""
            for label, criteria in _search_terms(stage):
                found = parse_search((await imap.expect_ok(f"SEARCH {criteria}")).untagged)
                if found:
                    what = label
                    break
            if not found:
                raise OperationFailed(
                    f"{user}'s INBOX ({parse_exists(examined.untagged)} messages) holds no "
                    "mail-runbook test message: run the validation stage (50-validate) "
                    "first\n" + imap.shown())
            number = max(found)
            fields = " ".join(f.upper() for f in HEADER_FIELDS)
            fetched = await imap.expect_ok(f"FETCH {number} (BODY.PEEK[HEADER.FIELDS "
                                           f"({fields})])")
            headers = parse_fetched_headers(fetched.untagged)
            await imap.logout()
    finally:
        if imap is not None:
            stage.audit.record("probe", host=stage.target.host, protocol="imaps",
                               transcript=imap.transcript, via="ssh tunnel",
                               address=connect_address(params), port=port)
    subject = headers.get("Subject", "")
    if "mail-runbook" not in subject:
        raise IMAPError(f"message {number} has the subject {subject!r}, not a mail-runbook "
                        "test message\n" + imap.shown())
    exists = parse_exists(examined.untagged)
    _state(stage)["found"] = headers
    capabilities = parse_capabilities(greeting.untagged)
    return Outcome("", "ok", f"{user} logged in over TLS; INBOX ({exists} messages) has "
                   f"{what}: message {number}, {subject!r}", evidence=imap.shown(),
                   value={"number": number, "headers": headers,
                          "capabilities": sorted(capabilities)})


@operation("G22 POP3 login over TLS finds the test message (optional, read-only)",
           offline=_describe_login("pop3"))
async def pop3_login(stage) -> Outcome:
    """POP3S through the SSH connection, certificate pinned: USER/PASS, STAT, TOP n 0 (the
    headers only) from the newest message down until the test message is found; the
    connection is then closed without QUIT, so the session never reaches its UPDATE state
    and nothing in the mailbox changes (RFC 1939)."""
    if not stage.params.dovecot.pop3:
        return Outcome("", "skipped", "dovecot.pop3 is false")
    if skip := _skip_verification(stage):
        return Outcome("", "skipped", skip)
    params = stage.params
    user = params.postfix.test_recipient
    password = test_password(params)
    _secret(stage, password)
    port = PORTS["pop3"][1]
    pop = None
    run = f"test of run {stage.run_id}"
    try:
        async with tls_via_ssh(stage, port) as (reader, writer, tls):
            pop = POP3(reader, writer)
            pop.transcript.append(f"# {tls}")
            if not (await pop.line()).startswith("+OK"):
                raise IMAPError("no +OK greeting\n" + pop.shown())
            await pop.command(f"USER {user}")
            await pop.command(f"PASS {password}", shown="PASS ********")
            count = int((await pop.command("STAT")).split()[1])
            newest, chosen = None, None
            for number in range(count, max(0, count - 50), -1):
                await pop.command(f"TOP {number} 0")
                message = email.message_from_string(await pop.multiline(),
                                                    policy=email.policy.default)
                subject = str(message.get("Subject", ""))
                if "mail-runbook" in subject and newest is None:
                    newest = (number, subject)
                if run in subject:
                    chosen = (number, subject)
                    break
            pop.transcript.append("# closed without QUIT: nothing in the mailbox changes")
    finally:
        if pop is not None:
            stage.audit.record("probe", host=stage.target.host, protocol="pop3s",
                               transcript=pop.transcript, via="ssh tunnel",
                               address=connect_address(params), port=port)
    found = chosen or newest
    if found is None:
        raise OperationFailed(f"{user}'s mailbox ({count} messages) holds no mail-runbook "
                              "test message among the newest 50\n" + pop.shown())
    return Outcome("", "ok", f"{user} logged in over POP3 with TLS; message {found[0]} of "
                   f"{count}: {found[1]!r}", evidence=pop.shown(), value=found)


def _reachable(params, listen: list[str]) -> tuple[str | None, str]:
    """The address this machine can try Dovecot's plain ports at, or None and why not."""
    host = params.target.host
    for address in listen:
        if address in ("*", "::"):
            return host, ""
        if not _is_ip(address):
            return address, ""
        ip = ipaddress.ip_address(address)
        if not ip.is_loopback or address == host:
            return address, ""
    return None, (f"Dovecot listens on the server's loopback only ({', '.join(listen)}): no "
                  "client on another host can reach it to try a plaintext login")


def _inside(address: str, networks: str) -> bool:
    ip = ipaddress.ip_address(address)
    for entry in re.split(r"[\s,]+", networks.strip()):
        if not entry:
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if network.version == ip.version and ip in network:
            return True
    return False


@operation("G22 plaintext login without TLS refused, tried from outside",
           offline=_describe_probe)
@_when_wanted
async def probe_plaintext_refused(stage) -> Outcome:
    """From this machine straight to port 143 (110 too with POP3), from postfix.probe_source:
    the greeting's capabilities, then LOGIN with a made-up password. It must be refused
    for want of TLS (LOGINDISABLED, NO [PRIVACYREQUIRED]); an answer about the password
    means the server would check a password sent in clear."""
    params = stage.params
    master = await facts.read_one(stage, _master(stage))
    if master["pid"] is None or (stage.dry_run and _state(stage).get("pending")):
        if stage.dry_run:
            return Outcome("", "skipped", "dry run: Dovecot is not set up and running yet")
        raise OperationFailed("Dovecot is not running: nothing to probe")
    address, why = _reachable(params, listen_addresses(params))
    if address is None:
        return Outcome("", "skipped", why)
    source = params.postfix.probe_source
    trusted = _state(stage).get("trusted")
    if trusted is None:
        (out, _), = await facts.read(stage, _doveconf(stage, CHECKED))
        trusted = parse_settings(out).get("login_trusted_networks", "")
    if source and (source == address or _inside(source, trusted)):
        raise OperationFailed(
            f"postfix.probe_source {source} is one Dovecot trusts (the server's own address "
            "or login_trusted_networks): a probe from there proves nothing — name an address "
            "outside them")
    lines, verdicts = [], []
    for protocol in protocols(params):
        port = PORTS[protocol][0]
        transcript, refused, verdict, used = await _plaintext_probe(
            stage, protocol, address, port, source, trusted)
        lines += [f"# {protocol} {address}:{port} from {used}", *transcript]
        verdicts.append((protocol, refused, verdict))
    evidence = "\n".join(lines)
    accepted = [f"{p}: {v}" for p, ok, v in verdicts if not ok]
    if accepted:
        raise OperationFailed("plaintext authentication without TLS is NOT refused:\n  "
                              + "\n  ".join(accepted) + "\n" + evidence)
    return Outcome("", "ok", "; ".join(f"{p}: {v}" for p, _, v in verdicts),
                   evidence=evidence)


async def _plaintext_probe(stage, protocol: str, address: str, port: int,
                           source: str | None, trusted: str):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            address, port, local_addr=(source, 0) if source else None), TIMEOUT)
    except OSError as e:
        raise OperationFailed(f"cannot reach {address} port {port} from here"
                              f"{' (source ' + source + ')' if source else ''}: "
                              f"{e.strerror or e}") from None
    used = writer.get_extra_info("sockname")[0]
    user = stage.params.postfix.test_recipient
    made_up = "not-the-password-" + secrets.token_hex(6)
    client = IMAP(reader, writer) if protocol == "imap" else POP3(reader, writer)
    try:
        if used == address or _inside(used, trusted):
            raise OperationFailed(
                f"this machine reaches {address} from {used}, which Dovecot counts as secure "
                "(the server's own address or login_trusted_networks): the probe would prove "
                "nothing from here — set postfix.probe_source to an address of this machine "
                "that Dovecot does not trust")
        if protocol == "imap":
            greeting = await client.greeting()
            capabilities = parse_capabilities(greeting.untagged)
            if not capabilities:
                capabilities = parse_capabilities(
                    (await client.expect_ok("CAPABILITY")).untagged)
            response = await client.command(
                f"LOGIN {quoted(user)} {quoted(made_up)}",
                shown=f"LOGIN {quoted(user)} \"(a made-up password)\"")
            refused, verdict = plaintext_verdict(capabilities, response)
            await client.logout()
        else:
            if not (await client.line()).startswith("+OK"):
                raise IMAPError("no +OK greeting\n" + client.shown())
            reply = await client.command(f"USER {user}", expect_ok=False)
            if reply.startswith("+OK"):
                reply = await client.command(f"PASS {made_up}", shown="PASS (a made-up "
                                             "password)", expect_ok=False)
            refused, verdict = pop3_plaintext_verdict(reply)
            with contextlib.suppress(IMAPError, OSError, TimeoutError):
                await client.command("QUIT", expect_ok=False)
    finally:
        with contextlib.suppress(Exception):
            writer.close()
        stage.audit.record("probe", host=address, protocol=protocol, port=port,
                           transcript=client.transcript, via=f"direct from {used}",
                           purpose="plaintext login refused")
    return client.transcript, refused, verdict, used


# --- 95-rollback (G23) ---------------------------------------------------------------------------

@operation("G23 Dovecot stopped and off at boot (before the files go back)")
async def stop_for_rollback(stage) -> Plan:
    """Where the runbook set Dovecot up (its file is there): Dovecot stops, then no longer
    starts at boot, before 95-rollback puts the edited files back (which removes the
    runbook's Dovecot file). Otherwise Dovecot would, at its next start, listen with the
    package's defaults: every address. The package and the certificate stay, as Postfix's
    package does; a later run sets Dovecot up again from here."""
    profile = _profile(stage)
    text, master = await facts.read(stage, _conf(stage), _master(stage))
    plan = Plan("Dovecot stopped")
    if text is None:
        plan.found = f"{profile.dovecot_conf} is not there: the runbook did not set Dovecot up"
        return plan
    plan.found = (f"master {master['pid']} runs" if master["pid"] else
                  "Dovecot is not running")
    if master["pid"]:
        plan.steps.append(profile.dovecot_service("stop"))
        plan.undo = [profile.dovecot_service("start")]
    boot = await profile.dovecot_off_at_boot(stage)
    plan.steps += boot.steps
    plan.found += f"; {boot.skip or boot.found}"
    return plan


# --- what the stage reads, fetched in its first round trip --------------------------------------

def _prefetch(stage) -> list[Fact]:
    if not stage.params.dovecot.enabled:
        return []
    profile = _profile(stage)
    found = [_delivery(stage), _conf(stage), _master(stage), profile.listeners(),
             _doveconf(stage), _doveconf(stage, CHECKED)]
    with contextlib.suppress(Exception):  # a platform without Dovecot, a half-given
        found += [profile.dovecot_packages(), profile.dovecot_boot()]  # certificate:
    with contextlib.suppress(Exception):  # the operation that needs it says so
        found.append(_certificate_fact(stage))
    return found


facts.PREFETCH["70-dovecot"] = _prefetch
