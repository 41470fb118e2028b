"""What Postfix should look like, from the parameters alone (pure, tested without SSH): the
main.cf values by guide step, the alias table, the test address, where it must listen."""

from __future__ import annotations

from runbook.ops.edits import same_value
from runbook.remote import files
from runbook.services.dovecot import wanted as dovecot_wanted

LIST_SETTINGS = frozenset({"mydestination", "mynetworks", "inet_interfaces", "alias_maps",
                           "alias_database", "parent_domain_matches_subdomains"})
# main.cf settings by guide step, in the guide's order.
IDENTITY = ("mydomain", "myhostname", "myorigin", "mydestination")  # G9
LISTEN = ("inet_interfaces",)
TRUST = ("mynetworks", "mynetworks_style")  # G10
ALIASES = ("alias_maps", "alias_database")  # G11
PARENT = ("parent_domain_matches_subdomains",)  # G12
DB_SUFFIX = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb", "dbm": ".pag"}
LOG_WAIT = 30.0  # seconds the log may take to show the test message delivered
BASELINE = f"{files.BACKUP_ROOT}/{files.BASELINE}"  # each edited file before its first edit
CRONTAB_LISTING = "crontab-l.root"  # in BASELINE: `crontab -l` before G7's first edit


def wanted_settings(params, profile) -> dict[str, str]:
    """Every main.cf value the runbook sets, in the guide's order."""
    p = params.postfix
    alias_maps = p.alias_maps or profile.aliases_table
    return {
        "mydomain": p.mydomain,
        "myhostname": p.myhostname,
        "myorigin": p.myorigin,
        "mydestination": ", ".join(p.mydestination),
        "inet_interfaces": ", ".join(p.inet_interfaces),
        "mynetworks": " ".join(p.mynetworks),
        "mynetworks_style": p.mynetworks_style,
        "alias_maps": alias_maps,
        "alias_database": p.alias_database or alias_maps,
        "parent_domain_matches_subdomains": " ".join(p.parent_domain_matches_subdomains),
        **dovecot_wanted.postfix_settings(params),  # Maildir delivery when Dovecot reads Maildir
        **p.extra_settings,
    }


def differing(current: dict[str, str], wanted: dict[str, str]) -> dict[str, str]:
    """The wanted settings whose current value means something else."""
    return {k: v for k, v in wanted.items()
            if not same_value(current.get(k), v, as_list=k in LIST_SETTINGS)}


def alias_source(table: str) -> tuple[str, str, str | None]:
    """(type, source file, database file or None) of an alias table like hash:/etc/aliases."""
    kind, _, path = table.partition(":")
    suffix = DB_SUFFIX.get(kind)
    return kind, path, (path + suffix) if suffix else None


def expand(value: str, params) -> str:
    """$myhostname / $mydomain references replaced by the parameters' values."""
    p = params.postfix
    for name, real in (("myhostname", p.myhostname), ("mydomain", p.mydomain)):
        value = value.replace("${" + name + "}", real).replace("$" + name, real)
    return value


def test_address(params) -> str:
    """The test recipient at a domain this server delivers locally (G17)."""
    domains = [expand(d, params) for d in params.postfix.mydestination]
    domain = params.postfix.myhostname if params.postfix.myhostname in domains else (
        domains[0] if domains else "localhost")
    return f"{params.postfix.test_recipient}@{domain}"


def smtp_address(interfaces: list[str]) -> str:
    """Where a client on the server itself reaches Postfix (the guide: telnet localhost)."""
    for item in interfaces:
        if item not in ("all", "loopback-only", "localhost"):
            return item
    return "127.0.0.1"


def expected_listeners(interfaces: list[str], protocols: list[str]) -> tuple[set, set]:
    """(addresses that must listen, addresses that may) for inet_interfaces/inet_protocols;
    a host name can only be checked by the port."""
    v4 = any(p in ("all", "ipv4") for p in protocols)
    v6 = any(p in ("all", "ipv6") for p in protocols)
    must, may = set(), set()
    for item in interfaces:
        if item == "all":
            must |= {"0.0.0.0", "*"} & ({"0.0.0.0", "*"} if v4 else set())
            may |= {"0.0.0.0", "*", "::"}
        elif item in ("loopback-only", "localhost"):
            must.add("127.0.0.1")
            may |= {"127.0.0.1", "::1"} if v6 else {"127.0.0.1"}
        else:
            must.add(item)
            may.add(item)
    return must, may


