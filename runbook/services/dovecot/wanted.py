"""What Dovecot should look like, from the parameters and Postfix's delivery settings alone
(pure, tested without SSH): listen addresses, protocols, where the mail is, the one
configuration file the runbook writes and how to read back what Dovecot made of it."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

PORTS = {"imap": (143, 993), "pop3": (110, 995)}  # plain (STARTTLS), TLS
# The settings the check reads back (a fixed list, so the stage's first read fetches them).
CHECKED = ("protocols", "listen", "mail_location", "mail_privileged_group", "ssl",
           "disable_plaintext_auth", "ssl_cert", "login_trusted_networks")
# Dovecot 2.4 (Debian 13) renamed them: mail_location became mail_driver, mail_path and
# mail_inbox_path; ssl_cert = <FILE became ssl_server_cert_file = FILE (which doveconf shows
# inside `ssl_server { cert_file }`); disable_plaintext_auth became auth_allow_cleartext
# (inverted); %u is %{user}.
CHECKED_24 = ("protocols", "listen", "mail_driver", "mail_path", "mail_inbox_path",
              "mail_privileged_group", "ssl", "auth_allow_cleartext", "ssl_server/cert_file",
              "login_trusted_networks")


def checked(syntax: str) -> tuple[str, ...]:
    """The settings the check reads back, in the configuration syntax of that Dovecot."""
    return CHECKED_24 if syntax == "2.4" else CHECKED


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
    mail_location: str  # as Dovecot 2.3 writes it; 2.4's three settings are made from it
    privileged_group: str
    ssl_cert: str
    ssl_key: str
    syntax: str = "2.3"  # the Dovecot whose configuration syntax is written: 2.3 or 2.4

    def mail(self) -> dict[str, str]:
        """Where the mail is: 2.3's mail_location, or 2.4's mail_driver, mail_path and (an
        mbox spool as INBOX) mail_inbox_path."""
        if self.syntax != "2.4":
            return {"mail_location": self.mail_location}
        driver, _, rest = self.mail_location.partition(":")
        path, _, inbox = rest.partition(":INBOX=")
        # Debian 13's conf.d/10-mail.conf sets mail_inbox_path = /var/mail/%{user}: a Maildir
        # must replace it, or Dovecot opens the mbox spool file as a maildir and fails every
        # SELECT/EXAMINE INBOX (NO [SERVERBUG]). Emptied, 2.4 makes INBOX ~/Maildir/.INBOX;
        # Postfix delivers to the Maildir itself (home_mailbox = Maildir/), so INBOX is that.
        if driver == "maildir":
            inbox = inbox or path
        found = {"mail_driver": driver, "mail_path": path}
        if inbox:
            found["mail_inbox_path"] = inbox.replace("%u", "%{user}")
        return found

    def tls(self) -> dict[str, str]:
        if self.syntax == "2.4":
            return {"ssl_server_cert_file": self.ssl_cert, "ssl_server_key_file": self.ssl_key}
        return {"ssl_cert": f"<{self.ssl_cert}", "ssl_key": f"<{self.ssl_key}"}

    def cleartext(self) -> dict[str, str]:
        """Passwords only over TLS."""
        if self.syntax == "2.4":
            return {"auth_allow_cleartext": "no"}
        return {"disable_plaintext_auth": "yes"}

    @property
    def location(self) -> str:
        """Where the mail is, in one line of this syntax."""
        return " ".join(f"{k}={v}" for k, v in self.mail().items()) if self.syntax == "2.4" \
            else self.mail_location

    def values(self) -> dict[str, str]:
        """What `doveconf NAME…` must print for each setting."""
        # the certificate only (the key is the certificate's pair), as doveconf names it
        tls = ({"ssl_server/cert_file": self.ssl_cert} if self.syntax == "2.4"
               else {"ssl_cert": f"<{self.ssl_cert}"})
        values = {
            "protocols": " ".join(self.protocols),
            "listen": ", ".join(self.listen),
            **self.mail(),
            "ssl": "required",
            **self.cleartext(),
            **tls,
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
        *(f"{name} = {value}" for name, value in settings.mail().items()),
    ]
    if settings.privileged_group:
        lines += ["# Dotlocks in the mail spool need the spool's group.",
                  f"mail_privileged_group = {settings.privileged_group}"]
    lines += [
        "",
        "# TLS always; passwords only over TLS (or from the server itself).",
        "ssl = required",
        *(f"{name} = {value}" for name, value in settings.tls().items()),
        *(f"{name} = {value}" for name, value in settings.cleartext().items()),
    ]
    return "\n".join(lines) + "\n"


def parse_settings(text: str) -> dict[str, str]:
    """`doveconf NAME…` (or `doveconf -n`): name = value lines; a setting inside a section
    is named by its path, `ssl_server/cert_file` (as doveconf's own arguments name it)."""
    found: dict[str, str] = {}
    sections: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("{"):
            sections.append(stripped[:-1].strip())
            continue
        if stripped == "}":
            sections = sections[:-1]
            continue
        name, sep, value = stripped.partition(" = ")
        if not sep and stripped.endswith(" ="):
            name, sep, value = stripped[:-2].strip(), "=", ""
        if sep:
            found["/".join([*sections, name])] = value.strip()
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


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def connect_address(params) -> str:
    """Where a client on the server itself reaches Dovecot."""
    for address in listen_addresses(params):
        if address not in ("*", "::"):
            return address
    return "::1" if listen_addresses(params) == ["::"] else "127.0.0.1"
