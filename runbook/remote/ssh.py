"""Opening the SSH session to the target, through its jump hosts if any: each hop's host key
checked (strict, or accept-new for a first contact; a changed key is always refused), the
key files or the agent, and every refusal turned into one RunbookError that names the hop
and what to do. Where to connect is destination.py's (params over ssh_config)."""

from pathlib import Path
from shlex import quote as q

import asyncssh

from runbook.errors import (
    AuthenticationRefused,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
    TargetError,
)
from runbook.remote import slots
from runbook.remote.destination import Destination, Hop, resolve


class Session:
    """The open connections of a run: one per jump host, then the target's (`conn`)."""

    def __init__(self, destination: Destination, conns: list):
        self.destination, self.conns = destination, conns

    @property
    def conn(self) -> asyncssh.SSHClientConnection:
        return self.conns[-1]

    def fingerprints(self) -> list[dict]:
        """Each hop, first to last, with the host key it showed."""
        return [{"hop": hop.dest, "fingerprint":
                 conn.get_server_host_key().get_fingerprint("sha256")}
                for hop, conn in zip(self.destination.hops, self.conns, strict=True)]

    def close(self) -> None:
        for conn in reversed(self.conns):
            conn.close()

    async def wait_closed(self) -> None:
        for conn in reversed(self.conns):
            await conn.wait_closed()


async def open_session(params) -> Session:
    """The connections to `params` (a params.Target): each jump host in turn, each one
    tunnelled through the one before, then the target through the last."""
    destination = resolve(params)
    conns: list = []
    hops = destination.hops
    try:
        for i, hop in enumerate(hops):
            through = f" (through {hops[i - 1].dest})" if i else ""
            conns.append(await _connect(hop, conns[-1] if conns else None, through))
    except BaseException:
        for conn in reversed(conns):
            conn.close()
        raise
    return Session(destination, conns)


async def _connect(hop: Hop, tunnel, through: str) -> asyncssh.SSHClientConnection:
    dest = hop.dest + through
    known = [Path(k) for k in hop.known_hosts]
    client = HostKeyCheck(known, hop.policy)
    present = [str(k) for k in known if k.exists()]
    options = {
        "port": hop.port,
        "username": hop.user,
        # Never None (that disables checking); a missing file means nothing is known yet.
        "known_hosts": present or asyncssh.SSHKnownHosts(),
        "connect_timeout": hop.connect_timeout,
        "client_factory": lambda: client,
        "config": [],  # destination.py has applied the config files already
    }
    if tunnel is not None:
        options["tunnel"] = tunnel
    if hop.host_key_alias:  # its key is looked up (and, accept-new, recorded) under this name
        options["host_key_alias"] = hop.host_key_alias
    keys = [k for k in hop.keys if Path(k).exists()]  # ssh skips a config's missing ones
    if len(keys) < len(hop.keys) and hop.sources.get("keys", "").startswith("params"):
        raise AuthenticationRefused(f"{dest}: key_file {hop.keys[0]} does not exist")
    if keys:
        options["client_keys"] = keys
        if hop.identities_only:  # as ssh: agent keys only if they are these
            options["agent_identities"] = keys
    if not hop.agent:
        options["agent_path"] = None
    try:
        async with slots.handshake():  # a fleet's cap on handshakes under way (MaxStartups)
            return await asyncssh.connect(hop.address, **options)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise host_key_error(dest, hop, known, client, exc) from None
    except asyncssh.PermissionDenied:
        raise AuthenticationRefused(
            f"{dest} refused authentication — check the user ({hop.user}, from "
            f"{hop.sources.get('user')}), the keys ({', '.join(hop.keys) or 'none given'}) "
            f"or the agent, and that the public key is in that user's ~/.ssh/authorized_keys "
            f"on {hop.address}"
        ) from None
    except TimeoutError:
        raise HostUnreachable(
            f"cannot reach {dest}: no SSH answer within {hop.connect_timeout:g} s — check "
            "target.host and target.port (or the ssh_config entry), that sshd runs there, "
            "and any firewall"
        ) from None
    except OSError as exc:
        raise HostUnreachable(
            f"cannot reach {dest}: {exc.strerror or exc} — "
            "check target.host and target.port (or the ssh_config entry), and that sshd "
            "runs there"
        ) from None
    except asyncssh.Error as exc:
        raise TargetError(f"{dest}: the SSH handshake failed: {exc.reason}") from None


class HostKeyCheck(asyncssh.SSHClient):
    """Called by asyncssh only for a key not trusted by known_hosts: unknown or changed?"""

    def __init__(self, known_hosts: list[Path] | Path, policy: str):
        self.known_hosts = [known_hosts] if isinstance(known_hosts, Path) else known_hosts
        self.policy = policy
        self.refused: str | None = None
        self.fingerprint = ""

    def validate_host_public_key(self, host, addr, port, key) -> bool:
        self.fingerprint = key.get_fingerprint("sha256")
        if any(has_keys(path, host, addr, port) for path in self.known_hosts):
            self.refused = "changed"  # never accepted, whatever the policy
            return False
        if self.policy != "accept-new" or not self.known_hosts:
            self.refused = "unknown"
            return False
        remember(self.known_hosts[0], host, port, key)
        return True


def pattern(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def has_keys(path: Path, host: str, addr: str, port: int) -> bool:
    if not path.exists():
        return False
    keys, ca_keys, *_ = asyncssh.read_known_hosts(str(path)).match(host, addr, port)
    return bool(keys or ca_keys)


def remember(path: Path, host: str, port: int, key: asyncssh.SSHKey) -> None:
    """Add a first-seen host key, as OpenSSH's StrictHostKeyChecking=accept-new does."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    old = path.read_bytes() if path.exists() else b""
    lead = b"\n" if old and not old.endswith(b"\n") else b""
    line = f"{pattern(host, port)} {key.export_public_key().decode().strip()}\n"
    with open(path, "ab") as f:
        f.write(lead + line.encode())


def host_key_error(dest, hop: Hop, known: list[Path], client: HostKeyCheck, exc) -> TargetError:
    fp = client.fingerprint or "unknown fingerprint"
    where = ", ".join(str(k) for k in known) or "no known_hosts file"
    first = known[0] if known else Path("~/.ssh/known_hosts")
    name = hop.host_key_alias or hop.address  # the name its key is under in known_hosts
    alias = f" (its HostKeyAlias: the key goes under {name})" if hop.host_key_alias else ""
    if client.refused == "unknown":
        return HostKeyUnknown(
            f"{dest}: host key {fp} of {name} is not in {where} — check that "
            "fingerprint with the host's administrator and add the key (`ssh-keyscan -p "
            f"{hop.port} {hop.address} >> {first}`{alias}), or set target.host_key_policy: "
            "accept-new for a first contact"
        )
    reason = "" if client.refused else f" ({exc.reason})"
    return HostKeyChanged(
        f"{dest}: the key of {name} ({fp}) differs from the one in {where}{reason} — "
        "if the host was reinstalled, remove its line with "
        f"`ssh-keygen -R {q(pattern(name, hop.port))} -f {first}`; "
        "otherwise do not connect"
    )
