"""Dovecot's TLS material (G22): the certificate given or made once, its fingerprint, and a
TLS connection through the SSH tunnel that trusts exactly the certificate read from the
host."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import ssl
from shlex import quote as q

from runbook.ops import facts
from runbook.ops.facts import Fact
from runbook.ops.operations import OperationFailed, Plan, Run, operation
from runbook.remote.probes import TIMEOUT
from runbook.services.dovecot.common import pending, scratch, when_wanted
from runbook.services.dovecot.wanted import certificate, connect_address


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


def certificate_fact(stage) -> Fact:
    """The certificate's PEM text and whether the key file exists and matches it."""
    c = certificate(stage.params, stage.platform)
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


@operation("G22 TLS certificate for Dovecot (given, or self-signed once)")
@when_wanted
async def ensure_certificate(stage) -> Plan:
    params, profile = stage.params, stage.platform
    c = certificate(params, profile)
    found = await facts.read_one(stage, certificate_fact(stage))
    state = found["state"]
    plan = Plan("TLS certificate")
    if state == "match":
        plan.found = f"{c.cert} and its key {c.key} are in place"
        scratch(stage)["pem"] = found["pem"]
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
    return pending(stage, plan)


async def pinned_pem(stage) -> str:
    pem = scratch(stage).get("pem")
    if not pem:
        found = await facts.read_one(stage, certificate_fact(stage))
        if found["state"] != "match":
            raise OperationFailed("Dovecot's certificate and key are not in place "
                                  "(the certificate step above should have made them)")
        pem = scratch(stage)["pem"] = found["pem"]
    return pem


@contextlib.asynccontextmanager
async def tls_via_ssh(stage, port: int):
    """A TLS connection to Dovecot's `port` through the SSH connection (as a client on the
    server would make it), trusting exactly the certificate read from the host."""
    pem = await pinned_pem(stage)
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


