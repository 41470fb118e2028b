"""The parameter model: everything a run needs, validated before any connection.

One pydantic model is the single source for the params files, the notebooks' papermill
parameters (one per top-level section), the JupyterLab form and validation. Every value
that can reach a remote shell is checked here against a narrow grammar, and is still
quoted where it is used.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from runbook.errors import ParamsError

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_REFERENCE = re.compile(r"\$(?:\{(myhostname|mydomain)\}|(myhostname|mydomain))")
_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_PACKAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+%-]{0,127}")  # % : postfix--%stable
_SETTING = re.compile(r"[a-z][a-z0-9_]{0,63}")
_MAP = re.compile(r"(hash|btree|lmdb|cdb|dbm|texthash):(/[A-Za-z0-9._/-]+)")
_RELEASE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){0,2}")  # \d would take ١٢ too
# Postfix features that parent_domain_matches_subdomains may name (postconf(5)).
PARENT_DOMAIN_FEATURES = frozenset({
    "debug_peer_list", "fast_flush_domains", "mynetworks", "permit_mx_backup_networks",
    "qmqpd_authorized_clients", "relay_domains", "smtpd_access_maps",
})


def _whole(pattern: str) -> str:
    """A pydantic `pattern` matching the whole value: pydantic searches, it does not
    fullmatch, so an unanchored pattern lets `name\\nrelayhost = …` through."""
    return f"^(?:{pattern})$"


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP address, refusing IPv6 zone ids (fe80::1%eth0): ipaddress takes any text
    after the %, and no setting here needs a link-local zone."""
    if not isinstance(value, str) or "%" in value:
        raise ValueError(f"{value!r} is not an IP address (zone ids such as %eth0 are not "
                         "accepted)")
    return ipaddress.ip_address(value)


def _dns_name(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a DNS name such as mail.example.org")
    name = value[:-1] if value.endswith(".") else value
    if len(name) > 253:
        raise ValueError(f"is {len(name)} characters; a DNS name has at most 253")
    for label in name.split("."):
        if len(label) > 63:
            raise ValueError(f"label {label[:20]!r}… is {len(label)} characters; at most 63")
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"{value!r} is not a DNS name: labels are letters, digits and inner hyphens "
                "(RFC 1123)"
            )
    return value.lower()


def _domain_with_references(value: str) -> str:
    """A DNS name whose labels may be $myhostname or $mydomain (myorigin, mydestination)."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be a DNS name or a Postfix reference such as $mydomain")
    labels = value.split(".")
    plain = [label for label in labels if not _REFERENCE.fullmatch(label)]
    if "$" in "".join(plain):
        raise ValueError(
            f"{value!r}: only $myhostname and $mydomain (or ${{...}}) may be referenced here"
        )
    if plain:
        _dns_name(".".join(plain))
    if len(value) > 253:
        raise ValueError("is longer than a DNS name may be (253)")
    return value


def _network(value: str) -> str:
    """A mynetworks entry in Postfix notation: 192.0.2.0/24, 192.0.2.1, [2001:db8::]/32."""
    if not isinstance(value, str):
        raise ValueError("must be a network such as 192.0.2.0/24 or [::1]/128")
    address, _, prefix = value.partition("/")
    bracketed = address.startswith("[") and address.endswith("]")
    bare = address[1:-1] if bracketed else address
    try:
        ip = _ip(bare)
    except ValueError:
        raise ValueError(f"{value!r} is not an address or network in Postfix notation") from None
    if ip.version == 6 and not bracketed:
        raise ValueError(
            f"{value!r}: Postfix wants IPv6 networks in brackets: [{bare}]/{prefix or 128}"
        )
    if ip.version == 4 and bracketed:
        raise ValueError(f"{value!r}: brackets are for IPv6 only")
    if prefix and not prefix.isdigit():
        raise ValueError(f"{value!r}: the prefix length must be a number")
    try:
        network = ipaddress.ip_network(f"{bare}/{prefix or ip.max_prefixlen}", strict=True)
    except ValueError as e:
        raise ValueError(f"{value!r}: {e}") from None
    if network.prefixlen == 0:
        raise ValueError(f"{value!r} trusts every address on the Internet: an open relay")
    return value


def _interface(value: str) -> str:
    if value in ("all", "loopback-only", "localhost"):
        return value
    try:
        _ip(value)
        return value
    except (ValueError, TypeError):
        pass
    try:
        return _dns_name(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not all, loopback-only, an IP address or a host name"
        ) from None


def _user(value: str) -> str:
    if not isinstance(value, str) or not _USER.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a user name (lower-case letters, digits, _ . -; at most 32)"
        )
    return value


def _alias_target(value: str) -> str:
    local, at, domain = value.partition("@")
    _user(local)
    if at:
        _dns_name(domain)
    return value


def _address(value: str) -> str:
    try:
        return str(_ip(value))
    except (ValueError, TypeError):
        raise ValueError(f"{value!r} is not an IP address") from None


def _host(value: str) -> str:
    try:
        return _address(value)
    except ValueError:
        return _dns_name(value)


def _lookup_table(value: str) -> str:
    if not isinstance(value, str) or not _MAP.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not a Postfix lookup table such as hash:/etc/postfix/aliases"
        )
    return value


def _setting_value(value: str) -> str:
    # Cc: control characters (C0, DEL, C1); Zl/Zp: U+2028/U+2029, which Python's splitlines
    # takes for line ends; Cf: invisible format characters (U+202E turns the text around).
    if not isinstance(value, str) or any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")
                                         for c in value):
        raise ValueError("must be text on one line, without control, format or line "
                         "separator characters")
    if len(value) > 1000:
        raise ValueError("is longer than 1000 characters")
    return value


def _release(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError(
            f"write the release in quotes, e.g. \"{value}\" (a bare 7.10 would be read as 7.1)"
        )
    if isinstance(value, int):
        return str(value)
    if value is not None and not (isinstance(value, str) and _RELEASE.fullmatch(value)):
        raise ValueError(f"{value!r} is not a release number such as \"7.6\" or \"12\"")
    return value


def _one_or_many(value: Any) -> Any:
    """Postfix lists may be written as one string ("a, b" or "a b") or as a YAML list."""
    if isinstance(value, str):
        return [item for item in re.split(r"[\s,]+", value) if item]
    return value


def _local_path(value: Path) -> Path:
    if any(unicodedata.category(c) == "Cc" for c in str(value)):
        raise ValueError(f"{str(value)!r}: a file name here has no control characters "
                         "(NUL, newline)")
    try:
        return value.expanduser()
    except RuntimeError:  # ~name of no user on this machine
        raise ValueError(f"{str(value)!r}: {str(value).split('/')[0]} is no user's home "
                         "directory here") from None


def _absolute_path(value: Path) -> Path:
    text = str(value)
    if not text.startswith("/") or not re.fullmatch(r"[A-Za-z0-9._/-]+", text) or ".." in text:
        raise ValueError(f"{text!r} must be an absolute path of plain characters")
    return value


DnsName = Annotated[str, AfterValidator(_dns_name)]
DomainRef = Annotated[str, AfterValidator(_domain_with_references)]
Network = Annotated[str, AfterValidator(_network)]
Interface = Annotated[str, AfterValidator(_interface)]
UserName = Annotated[str, AfterValidator(_user)]
AliasTarget = Annotated[str, AfterValidator(_alias_target)]
IPAddress = Annotated[str, AfterValidator(_address)]
HostName = Annotated[str, AfterValidator(_host)]
LookupTable = Annotated[str, AfterValidator(_lookup_table)]
SettingValue = Annotated[str, AfterValidator(_setting_value)]
SettingName = Annotated[str, Field(pattern=_whole(_SETTING.pattern))]
RemotePath = Annotated[Path, AfterValidator(_absolute_path)]
LocalPath = Annotated[Path, AfterValidator(_local_path)]
Release = Annotated[str | None, BeforeValidator(_release)]


def _features(values: list[str]) -> list[str]:
    unknown = sorted(set(values) - PARENT_DOMAIN_FEATURES)
    if unknown:
        known = ", ".join(sorted(PARENT_DOMAIN_FEATURES))
        raise ValueError(f"unknown feature(s) {', '.join(unknown)}; known: {known}")
    return values


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(Section):
    """How to reach the host. Secrets are never here: keys come from a file or the agent."""

    host: HostName = Field(description="Host name or IP address of the mail server to set up.")
    port: int = Field(22, ge=1, le=65535, description="SSH port.")
    user: UserName = Field("root", description="SSH login user.")
    key_file: LocalPath | None = Field(
        None, description="Private key file; leave empty to use the SSH agent and ~/.ssh/config."
    )
    use_agent: bool = Field(True, description="Offer keys held by the SSH agent.")
    known_hosts: LocalPath | None = Field(
        None, description="known_hosts file holding the host's key (default ~/.ssh/known_hosts)."
    )
    host_key_policy: Literal["strict", "accept-new"] = Field(
        "strict",
        description="strict: the host key must already be known. accept-new: trust a host seen "
        "for the first time and record its key (a changed key is always refused).",
    )
    privilege: Literal["none", "sudo", "doas"] = Field(
        "none",
        description="How a non-root user becomes root: never interactive (sudo -n / doas -n).",
    )
    connect_timeout: float = Field(10, gt=0, le=300, description="Seconds to wait for SSH.")
    command_timeout: float = Field(
        300, gt=0, le=3600, description="Seconds a remote command may run before it is killed."
    )


class Platform(Section):
    """What kind of host it is; `auto` detects it in preflight."""

    name: Literal["auto", "debian", "openbsd"] = Field(
        "auto", description="Operating system of the target, or auto to detect it."
    )
    release: Release = Field(
        None, description='Release, e.g. "12" (Debian), "5.0" or "7.6" (OpenBSD); empty: detect.'
    )
    postfix_package: str | None = Field(
        None,
        pattern=_whole(_PACKAGE.pattern),
        description="OpenBSD package to pkg_add, flavour allowed (e.g. postfix-2.8.7-mysql).",
    )
    pkg_path: str | None = Field(
        None,
        pattern=_whole(r"(https?|ftp|file)://[A-Za-z0-9._~:/%+-]+|/[A-Za-z0-9._/-]+"),
        description="OpenBSD: PKG_PATH for pkg_add (releases before installurl, e.g. 5.0).",
    )

    @field_validator("release")
    @classmethod
    def _release_is_supported(cls, release: str | None, info) -> str | None:
        """A named system and release must be one the runbook has a profile for: said here,
        before any connection, rather than in preflight."""
        name = info.data.get("name")
        if release is None or name in (None, "auto"):
            return release
        from runbook.platforms.choice import choose  # the profiles are pure: no connection
        from runbook.platforms.profile import UnsupportedPlatform

        try:
            choose(name, release, name, release)
        except UnsupportedPlatform as e:
            raise ValueError(str(e)) from None
        return release


class Postfix(Section):
    """The guide's minimal Postfix configuration (G9-G12) and the test message's recipient."""

    mydomain: DnsName = Field(description="The mail domain, e.g. example.org.")
    myhostname: DnsName = Field(description="This server's fully qualified name.")
    myorigin: DomainRef = Field(
        "$mydomain", description="Domain that locally posted mail appears to come from."
    )
    mydestination: Annotated[list[DomainRef], BeforeValidator(_one_or_many)] = Field(
        ["$myhostname", "localhost.$mydomain", "localhost"],
        description="Domains this server delivers locally.",
    )
    mynetworks: Annotated[list[Network], BeforeValidator(_one_or_many)] = Field(
        ["127.0.0.0/8", "[::1]/128"],
        min_length=1,
        description="Clients trusted to relay (Postfix notation; IPv6 in brackets).",
    )
    mynetworks_style: Literal["host", "subnet", "class"] = Field(
        "host", description="How Postfix derives mynetworks when it is not given."
    )
    inet_interfaces: Annotated[list[Interface], BeforeValidator(_one_or_many)] = Field(
        ["loopback-only"], min_length=1, description="Addresses Postfix listens on."
    )
    alias_maps: LookupTable | None = Field(
        None, description="Alias lookup table; empty: the platform's usual aliases file."
    )
    alias_database: LookupTable | None = Field(
        None, description="Alias database that newaliases/postalias builds; empty: as alias_maps."
    )
    parent_domain_matches_subdomains: Annotated[
        list[str], BeforeValidator(_one_or_many), AfterValidator(_features)
    ] = Field(
        [],
        description="Features that match subdomains implicitly; the guide sets none explicitly.",
    )
    aliases: dict[UserName, Annotated[list[AliasTarget], BeforeValidator(_one_or_many)]] = Field(
        {}, description="Alias entries, e.g. postmaster: root."
    )
    test_recipient: UserName = Field(description="Local user who receives the test message.")
    probe_source: IPAddress | None = Field(
        None,
        description="Source address for the open-relay probe; must lie outside mynetworks.",
    )
    html_docs_dir: RemotePath | None = Field(
        None, description="OpenBSD (G2): copy Postfix's HTML documentation into this web root."
    )
    extra_settings: dict[SettingName, SettingValue] = Field(
        {}, description="Further main.cf settings, e.g. default_transport on a lab host."
    )


class Dovecot(Section):
    """Mailbox access (G22): Dovecot serves the mailboxes Postfix delivers to."""

    enabled: bool = Field(True, description="Set up Dovecot in the 70-dovecot stage.")
    listen: Annotated[list[IPAddress], BeforeValidator(_one_or_many)] = Field(
        [], description="Addresses Dovecot listens on; empty: Postfix's inet_interfaces "
        "addresses (127.0.0.1 for loopback-only)."
    )
    mailbox_format: Literal["mbox", "maildir"] = Field(
        "mbox",
        description="mbox: the spool files Postfix delivers to by default. maildir: Postfix "
        "delivers to ~/Maildir/ and Dovecot reads it there (both switched together).",
    )
    pop3: bool = Field(False, description="Also serve POP3 (995 with TLS, 110 with STARTTLS).")
    ssl_cert_file: RemotePath | None = Field(
        None, description="Certificate on the host; empty: a self-signed one is generated."
    )
    ssl_key_file: RemotePath | None = Field(
        None, description="Private key on the host, matching ssl_cert_file."
    )
    test_password_env: str | None = Field(
        None,
        pattern=_whole(r"[A-Z_][A-Z0-9_]{0,63}"),
        description="Name of the environment variable holding the test recipient's "
        "password (the password itself is never a parameter).",
    )
    test_password_file: LocalPath | None = Field(
        None, description="File on this machine holding the test recipient's password."
    )

    @model_validator(mode="after")
    def _certificate_and_key(self):
        if bool(self.ssl_cert_file) != bool(self.ssl_key_file):
            raise ValueError("ssl_cert_file and ssl_key_file go together: give both, or "
                             "neither for a self-signed certificate made on the host")
        return self


class Params(Section):
    """A whole params file: each top-level key is one papermill parameter of every stage."""

    target: Target
    platform: Platform = Platform()
    postfix: Postfix
    dovecot: Dovecot = Dovecot()


SECTIONS: tuple[str, ...] = tuple(Params.model_fields)


def validate(source: str = "parameters", **sections: Any) -> Params:
    """Validate the sections (as papermill passes them) into Params, or raise ParamsError."""
    try:
        return Params.model_validate(sections)
    except ValidationError as e:
        raise ParamsError(_problems(e), source) from None


def load(path: str | Path) -> Params:
    """Read and validate a YAML params file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError([("(file)", f"{path} does not exist")], str(path)) from None
    except yaml.YAMLError as e:
        raise ParamsError([("(file)", f"not valid YAML: {e}")], str(path)) from None
    if not isinstance(data, dict):
        raise ParamsError([("(file)", "must be a mapping of sections (target, postfix, …)")],
                          str(path))
    return validate(str(path), **data)


def as_parameters(params: Params) -> dict[str, Any]:
    """The papermill parameters for a stage notebook: one plain dict per section."""
    return params.model_dump(mode="json", exclude_none=False)


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(file)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (not a parameter of mail-runbook; check its spelling)"
        problems.append((field, message))
    return problems
