"""Stage 70-dovecot, proving it (G22): an IMAP (and POP3) login over TLS that finds the
validation stage's message read-only, and a plaintext login refused from outside."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import ipaddress
import os
import re
import secrets
from pathlib import Path

from runbook.ops import facts
from runbook.ops.operations import OperationFailed, Outcome, operation
from runbook.remote.imap import (
    HEADER_FIELDS,
    IMAP,
    POP3,
    IMAPError,
    Response,
    parse_capabilities,
    parse_exists,
    parse_fetched_headers,
    parse_search,
    quoted,
)
from runbook.remote.probes import TIMEOUT
from runbook.services.dovecot.common import (
    described,
    disabled,
    master_fact,
    read_back,
    scratch,
    when_wanted,
)
from runbook.services.dovecot.tls import tls_via_ssh
from runbook.services.dovecot.wanted import (
    PORTS,
    connect_address,
    is_ip,
    listen_addresses,
    parse_settings,
    protocols,
)


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
    return described(describe)


@described
def _describe_probe(stage) -> list[str]:
    address, why = _reachable(stage.target.address, listen_addresses(stage.params))
    if address is None:
        return [f"# skipped: {why}"]
    source = stage.params.postfix.probe_source or "(the address this machine picks)"
    ports = ", ".join(str(PORTS[p][0]) for p in protocols(stage.params))
    return [f"# from this machine, source {source}, straight to {address} port {ports}",
            "# LOGIN (USER/PASS) with a made-up password must be refused for want of TLS "
            "(LOGINDISABLED, NO [PRIVACYREQUIRED])"]


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


def keep_secret(stage, password: str) -> None:
    stage.audit.add_secret(password)
    stage.audit.add_secret(quoted(password)[1:-1])


def _credentials(stage) -> tuple[str, str]:
    """The test recipient and its password, read now and masked in every record."""
    password = test_password(stage.params)
    keep_secret(stage, password)
    return stage.params.postfix.test_recipient, password


def _skip_verification(stage) -> str:
    if disabled(stage):
        return disabled(stage)
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
    user, password = _credentials(stage)
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
    scratch(stage)["found"] = headers
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
    user, password = _credentials(stage)
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


def _reachable(host: str, listen: list[str]) -> tuple[str | None, str]:
    """The address this machine can try Dovecot's plain ports at, or None and why not;
    `host` is where the server is reached (ssh_config's HostName for an alias)."""
    for address in listen:
        if address in ("*", "::"):
            return host, ""
        if not is_ip(address):
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
@when_wanted
async def probe_plaintext_refused(stage) -> Outcome:
    """From this machine straight to port 143 (110 too with POP3), from postfix.probe_source:
    the greeting's capabilities, then LOGIN with a made-up password. It must be refused
    for want of TLS (LOGINDISABLED, NO [PRIVACYREQUIRED]); an answer about the password
    means the server would check a password sent in clear."""
    params = stage.params
    master = await facts.read_one(stage, master_fact(stage))
    if master["pid"] is None or (stage.dry_run and scratch(stage).get("pending")):
        if stage.dry_run:
            return Outcome("", "skipped", "dry run: Dovecot is not set up and running yet")
        raise OperationFailed("Dovecot is not running: nothing to probe")
    address, why = _reachable(stage.target.address, listen_addresses(params))
    if address is None:
        return Outcome("", "skipped", why)
    source = params.postfix.probe_source
    trusted = scratch(stage).get("trusted")
    if trusted is None:
        (out, _), = await facts.read(stage, read_back(stage))
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


