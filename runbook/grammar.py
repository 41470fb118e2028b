"""The grammars of the parameter model's values (pure): host and domain names, networks,
users, lookup tables, setting values, releases, jump hosts and paths, each a pydantic type
that refuses what does not fit with the reason. params.py builds the model from them."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_REFERENCE = re.compile(r"\$(?:\{(myhostname|mydomain)\}|(myhostname|mydomain))")
_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
PACKAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+%-]{0,127}")  # % : postfix--%stable
_SETTING = re.compile(r"[a-z][a-z0-9_]{0,63}")
_MAP = re.compile(r"(hash|btree|lmdb|cdb|dbm|texthash):(/[A-Za-z0-9._/-]+)")
_RELEASE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){0,2}")  # \d would take ١٢ too
# Postfix features that parent_domain_matches_subdomains may name (postconf(5)).
PARENT_DOMAIN_FEATURES = frozenset({
    "debug_peer_list", "fast_flush_domains", "mynetworks", "permit_mx_backup_networks",
    "qmqpd_authorized_clients", "relay_domains", "smtpd_access_maps",
})


def whole(pattern: str) -> str:
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


_JUMP = re.compile(r"""(?:(?P<user>[^@]*)@)?
    (?:\[(?P<v6>[^]]*)\] | (?P<host>[^:[\]]* | [^[\]]*:[^[\]]*:[^[\]]*))  # 2+ colons: IPv6
    (?::(?P<port>[0-9]{1,5}))?""", re.X)


def _jump_host(value: str) -> str:
    """A jump host as ssh's ProxyJump writes one: [user@]host[:port], IPv6 in brackets."""
    found = _JUMP.fullmatch(value) if isinstance(value, str) else None
    if found is None or (found["port"] and not 1 <= int(found["port"]) <= 65535):
        raise ValueError(f"{value!r} is not a jump host: [user@]host[:port], e.g. "
                         "admin@bastion.example.org:22 (port 1 to 65535, IPv6 in brackets)")
    if found["user"] is not None:
        _user(found["user"])
    _host(found["v6"] if found["v6"] is not None else found["host"])
    return value


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


def one_or_many(value: Any) -> Any:
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
JumpHost = Annotated[str, AfterValidator(_jump_host)]
LookupTable = Annotated[str, AfterValidator(_lookup_table)]
SettingValue = Annotated[str, AfterValidator(_setting_value)]
SettingName = Annotated[str, Field(pattern=whole(_SETTING.pattern))]
RemotePath = Annotated[Path, AfterValidator(_absolute_path)]
LocalPath = Annotated[Path, AfterValidator(_local_path)]
Release = Annotated[str | None, BeforeValidator(_release)]


def unsupported_release(name: str, release: str) -> str | None:
    """Why the runbook has no profile for this system's release, or None: one rule for the
    parameter model (said before any connection) and the profiles (what a host says it is)."""
    if name == "debian":
        if release.split(".")[0] in ("12", "13"):
            return None
        return (f"Debian {release} is not supported yet: the runbook knows Debian 12 "
                "(bookworm) and 13 (trixie)")
    if name == "openbsd":
        try:
            version = tuple(int(x) for x in release.split(".")[:2])
        except ValueError:
            version = ()
        if len(version) != 2:
            return f"OpenBSD {release!r}: not a release number such as 5.0 or 7.6"
        if version < (5, 0):
            return (f"OpenBSD {release} is not supported: the runbook knows OpenBSD 5.0 "
                    "(the guide's) and later")
        return None
    return None  # a system the runbook does not know is refused by its name
