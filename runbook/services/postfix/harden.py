"""Stage 60-harden (G20, G21): chroot files current, mynetworks narrow, no open relay."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from shlex import quote as q

from runbook.ops import facts
from runbook.ops.facts import Fact
from runbook.ops.operations import OperationFailed, Outcome, Plan, Run, operation
from runbook.remote import probes
from runbook.remote.probes import SMTP, ProbeFailed
from runbook.services.postfix.common import (
    NOT_INSTALLED,
    effective,
    master_pid,
    postfix_values,
    prefetch,
)


@operation("G20 files Postfix's chrooted services need, current")
async def ensure_chroot_files(stage) -> Plan:
    profile = stage.platform
    states = await facts.read_one(stage, _chroot_copies(stage))
    differ = [f for f, state in states.items() if state == "differs"]
    plan = Plan("G20 chroot files", found=", ".join(f"{f}: {s}" for f, s in states.items()))
    if differ:
        queue = q(profile.queue_dir)
        copies = "; ".join(f"cp /{q(f)} {queue}/{q(f)}" for f in differ)
        plan.steps = [Run(f"umask 022; mkdir -p {queue}/etc && {copies}",
                          why="the chrooted services see these copies, not /etc",
                          effect=lambda host: [host.add(f"{profile.queue_dir}/{f}")
                                               for f in differ])]
    return plan


def _chroot_copies(stage) -> Fact:
    """For each file the chroot needs: same, differs (from /etc) or nosource."""
    profile = stage.platform
    names = " ".join(q(f) for f in profile.chroot_files)
    queue = q(profile.queue_dir)
    command = (f"for f in {names}; do if [ ! -f \"/$f\" ]; then echo \"nosource $f\"; "
               f"elif [ \"$(cksum < \"/$f\")\" = \"$(cksum < {queue}/\"$f\" 2>/dev/null)\" ]; "
               "then echo \"same $f\"; else echo \"differs $f\"; fi; done")

    def fresh(host):
        def state(name):
            source, copy = f"/{name}", f"{profile.queue_dir}/{name}"
            if not host.exists(source):
                return "nosource"
            same = host.exists(copy) and host.read(source) == host.read(copy)
            return "same" if same else "differs"
        return {name: state(name) for name in profile.chroot_files}

    return Fact("chroot copies", command, lambda out, _s: {
        name: state for state, _, name in (line.partition(" ") for line in out.splitlines())},
        fresh)


def _describe_mynetworks(stage) -> list[str]:
    allowed = ", ".join(stage.params.postfix.mynetworks)
    return [f"$ {effective(stage).command}",
            f"# every mynetworks entry lies within postfix.mynetworks ({allowed}); none is "
            "the whole Internet"]


@operation("G21/G10 mynetworks reviewed: not wider than the parameters",
           offline=_describe_mynetworks)
async def review_mynetworks(stage) -> Outcome:
    values = await postfix_values(stage)
    if values is None:
        return Outcome("", "skipped", NOT_INSTALLED)
    entries = facts.split_words(values["mynetworks"])
    allowed = [facts.network_of(n) for n in stage.params.postfix.mynetworks]
    problems, lines = [], []
    for entry in entries:
        network = facts.network_of(entry)
        if network is None:
            problems.append(f"{entry}: not an address, cannot be judged here — list "
                            "networks in postfix.mynetworks instead")
        elif network.prefixlen == 0:
            problems.append(f"{entry} trusts every address on the Internet: an open relay")
        elif not any(a and a.version == network.version and network.subnet_of(a)
                     for a in allowed):
            problems.append(f"{entry} is wider than postfix.mynetworks "
                            f"({', '.join(stage.params.postfix.mynetworks)}) allows")
        else:
            lines.append(f"{entry}: {network.num_addresses} address(es), as the parameters say")
    if problems and stage.dry_run:  # what the host has now; 30-configure would set it
        return Outcome("", "skipped", "dry run: mynetworks trusts more than intended: "
                       + "; ".join(problems), would=problems)
    if problems:
        raise OperationFailed("mynetworks trusts more than intended:\n  " + "\n  ".join(problems))
    return Outcome("", "ok", f"mynetworks = {' '.join(entries)}", evidence="\n".join(lines),
                   value=entries)


def _describe_relay_probe(stage) -> list[str]:
    p = stage.params.postfix
    named = [i for i in p.inet_interfaces if i not in ("all", "loopback-only", "localhost")]
    if not named and "all" not in p.inet_interfaces:
        return ["# skipped: Postfix listens on loopback only"]
    address = named[0] if named else stage.target.address
    source = f"from {p.probe_source}" if p.probe_source else "from an address outside mynetworks"
    return [f"# from this machine straight to {address}:25 ({source}, not through SSH): EHLO, "
            "MAIL FROM:<probe@relay-probe.invalid>, RCPT TO:<relay-test@relay-target.invalid>",
            "#   must be refused (454 or 554); 250 would be an open relay. QUIT after RCPT"]


@operation("G21 open-relay probe from outside mynetworks", offline=_describe_relay_probe)
async def probe_open_relay(stage) -> Outcome:
    """From this machine straight to the server's port 25 (not through SSH: the server
    trusts its own connections), ask to relay to a .invalid domain; quit after RCPT."""
    params = stage.params
    values, pid = await postfix_values(stage), await facts.read_one(stage, master_pid(stage))
    if values is None:
        return Outcome("", "skipped", NOT_INSTALLED)
    if pid is None and stage.dry_run:
        return Outcome("", "skipped", "dry run: Postfix is not running")
    interfaces = facts.split_words(values["inet_interfaces"])
    networks = [n for n in map(facts.network_of, facts.split_words(values["mynetworks"])) if n]
    named = [i for i in interfaces if i not in ("all", "loopback-only", "localhost")]
    if not named and "all" not in interfaces:
        return Outcome("", "skipped", "Postfix listens on loopback only: no client on "
                       "another host can reach it to relay")
    address = named[0] if named else stage.target.address  # ssh_config's HostName
    source = params.postfix.probe_source
    if source and _inside(source, networks) and stage.dry_run:  # mynetworks drifted wider
        inside = f"postfix.probe_source {source} is inside mynetworks as the host has it now"
        return Outcome("", "skipped", f"dry run: {inside}: no probe", would=[inside])
    if source and _inside(source, networks):
        raise OperationFailed(f"postfix.probe_source {source} is inside mynetworks: a probe "
                              "from there proves nothing — name an address outside it")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            address, 25, local_addr=(source, 0) if source else None), probes.TIMEOUT)
    except OSError as e:
        raise OperationFailed(f"cannot reach {address} port 25 from here"
                              f"{' (source ' + source + ')' if source else ''}: {e}") from None
    used = writer.get_extra_info("sockname")[0]
    smtp = SMTP(reader, writer)
    try:
        if _inside(used, networks):
            raise OperationFailed(
                f"this machine reaches {address} from {used}, which is inside mynetworks: "
                "the probe would prove nothing from here — set postfix.probe_source to an "
                "address of this machine outside mynetworks")
        await smtp.greeting()
        await smtp.command("EHLO relay-probe.invalid", (250,))
        await smtp.command("MAIL FROM:<probe@relay-probe.invalid>", (250,))
        reply = await smtp.command("RCPT TO:<relay-test@relay-target.invalid>")
        await smtp.quit()
    finally:
        with contextlib.suppress(Exception):
            writer.close()
        stage.audit.record("probe", host=address, protocol="smtp", transcript=smtp.transcript,
                           via=f"direct from {used}", purpose="open relay")
    if reply.code == 250:
        raise OperationFailed(f"OPEN RELAY: {address} accepted mail for another domain from "
                              f"{used}:\n{smtp.shown()}")
    if reply.code not in probes.RELAY_REFUSED:
        raise ProbeFailed(f"RCPT was answered {reply.code}, not a relay refusal (454/554), so "
                          f"the probe shows nothing about relaying:\n{smtp.shown()}")
    return Outcome("", "ok", f"relay refused from {used}: {reply.lines[-1]}",
                   evidence=smtp.shown(), value=reply.code)


def _inside(address: str, networks) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip.version == n.version and ip in n for n in networks)


prefetch("60-harden", lambda stage: [_chroot_copies(stage), effective(stage), master_pid(stage)])
