"""Opening the SSH session to the target: host keys checked (strict, or accept-new for a first
contact; a changed key is always refused), the key file or the agent, and every refusal
turned into one RunbookError that names the host and what to do."""

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


async def open_session(params) -> asyncssh.SSHClientConnection:
    """The connection to `params` (a params.Target)."""
    dest = f"{params.user}@{params.host}:{params.port}"
    known = Path(params.known_hosts or "~/.ssh/known_hosts").expanduser()
    client = HostKeyCheck(known, params.host_key_policy)
    options = {
        "port": params.port,
        "username": params.user,
        # Never None (that disables checking); a missing file means nothing is known yet.
        "known_hosts": str(known) if known.exists() else asyncssh.SSHKnownHosts(),
        "connect_timeout": params.connect_timeout,
        "client_factory": lambda: client,
    }
    if params.key_file:
        if not Path(params.key_file).expanduser().exists():
            raise AuthenticationRefused(f"{dest}: key_file {params.key_file} does not exist")
        options["client_keys"] = [str(Path(params.key_file).expanduser())]
    if not params.use_agent:
        options["agent_path"] = None
    try:
        async with slots.handshake():  # a fleet's cap on handshakes under way (MaxStartups)
            conn = await asyncssh.connect(params.host, **options)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise host_key_error(dest, params, known, client, exc) from None
    except asyncssh.PermissionDenied:
        raise AuthenticationRefused(
            f"{dest} refused authentication — check target.user, target.key_file "
            f"({params.key_file or 'none'}) or the agent, and that the public key is in "
            f"that user's ~/.ssh/authorized_keys on {params.host}"
        ) from None
    except TimeoutError:
        raise HostUnreachable(
            f"cannot reach {dest}: no SSH answer within {params.connect_timeout} s — check "
            "target.host and target.port, that sshd runs there, and any firewall"
        ) from None
    except OSError as exc:
        raise HostUnreachable(
            f"cannot reach {dest}: {exc.strerror or exc} — "
            "check target.host and target.port, and that sshd runs there"
        ) from None
    except asyncssh.Error as exc:
        raise TargetError(f"{dest}: the SSH handshake failed: {exc.reason}") from None
    return conn


class HostKeyCheck(asyncssh.SSHClient):
    """Called by asyncssh only for a key not trusted by known_hosts: unknown or changed?"""

    def __init__(self, known_hosts: Path, policy: str):
        self.known_hosts, self.policy = known_hosts, policy
        self.refused: str | None = None
        self.fingerprint = ""

    def validate_host_public_key(self, host, addr, port, key) -> bool:
        self.fingerprint = key.get_fingerprint("sha256")
        if has_keys(self.known_hosts, host, addr, port):
            self.refused = "changed"  # never accepted, whatever the policy
            return False
        if self.policy != "accept-new":
            self.refused = "unknown"
            return False
        remember(self.known_hosts, host, port, key)
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


def host_key_error(dest, params, known: Path, client: HostKeyCheck, exc) -> TargetError:
    fp = client.fingerprint or "unknown fingerprint"
    if client.refused == "unknown":
        return HostKeyUnknown(
            f"{dest}: host key {fp} of {params.host} is not in {known} — check that "
            "fingerprint with the host's administrator and add the key (`ssh-keyscan -p "
            f"{params.port} {params.host} >> {known}`), or set target.host_key_policy: "
            "accept-new for a first contact"
        )
    reason = "" if client.refused else f" ({exc.reason})"
    return HostKeyChanged(
        f"{dest}: the key of {params.host} ({fp}) differs from the one in {known}{reason} — "
        "if the host was reinstalled, remove its line with "
        f"`ssh-keygen -R {q(pattern(params.host, params.port))} -f {known}`; "
        "otherwise do not connect"
    )
