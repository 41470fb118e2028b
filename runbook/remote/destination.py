"""Where a run connects, worked out without connecting: the params' target laid over the
OpenSSH client config files the way `ssh` does it, for the target and for each jump host.

As on ssh's command line, a value the params set wins; one they leave out comes from the
first config file that sets it (~/.ssh/config, then /etc/ssh/ssh_config; `target.ssh_config`
names another file, `none` reads none), then from ssh's own default. asyncssh parses the
files (Host and Match blocks, Include, %-tokens); this module picks the values the runbook
applies and keeps where each came from, for `runbook validate --show-target`, the
connection (ssh.py) and the audit record. Host keys are always checked: a config's
`StrictHostKeyChecking no` is taken as accept-new, whose changed-key refusal stays.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from asyncssh.config import ConfigParseError, SSHClientConfig, SSHConfig

from runbook.errors import ParamsError

DEFAULT_FILES = ("~/.ssh/config", "/etc/ssh/ssh_config")
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_TIMEOUT = 10.0
# StrictHostKeyChecking as the runbook applies it: never weaker than accept-new
POLICIES = {"yes": "strict", "ask": "strict", "accept-new": "accept-new",
            "no": "accept-new", "off": "accept-new"}


class _Config(SSHClientConfig):
    """asyncssh's reading of a client config, keeping StrictHostKeyChecking too (asyncssh
    itself ignores it; the runbook applies it through its own host-key policy)."""

    _handlers: ClassVar[dict] = {**SSHClientConfig._handlers,
        "stricthostkeychecking": ("StrictHostKeyChecking", SSHConfig._set_string)}


@dataclass(frozen=True)
class Hop:
    """One SSH connection of a run: a jump host or the target itself."""

    name: str  # as given: target.host, or a jump host's host part
    address: str  # what is connected to (ssh_config's HostName, else the name)
    user: str
    port: int
    keys: tuple[str, ...]  # identity files offered; empty: the agent and the default keys
    identities_only: bool  # offer only `keys`, from disk or the agent
    agent: bool
    known_hosts: tuple[str, ...]  # checked in order; a first-seen key goes to the first
    policy: str  # strict | accept-new
    connect_timeout: float
    sources: dict[str, str] = field(default_factory=dict)  # value -> where it came from
    host_key_alias: str | None = None  # the name its key is under in known_hosts, if not its own

    @property
    def dest(self) -> str:
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.user}@{address}:{self.port}"


@dataclass(frozen=True)
class Destination:
    target: Hop
    jumps: tuple[Hop, ...]  # first to last: the target is reached through all of them
    config_files: tuple[str, ...]  # read, in order (empty: none)

    @property
    def hops(self) -> tuple[Hop, ...]:
        return (*self.jumps, self.target)

    def summary(self) -> dict:
        """The effective destination as the audit records it."""
        return {"destination": self.target.dest, "alias": self.target.name,
                "jumps": [hop.dest for hop in self.jumps],
                "config_files": list(self.config_files),
                "known_hosts": list(self.target.known_hosts), "policy": self.target.policy,
                "sources": self.target.sources}


def config_files(params) -> tuple[Path, ...]:
    """The config files to read, in order (those of the defaults that exist)."""
    if params.ssh_config == "none":
        return ()
    if params.ssh_config is not None:
        path = Path(params.ssh_config).expanduser()
        if not path.is_file():
            raise ParamsError([("target.ssh_config", f"{path} is not a file")], "parameters")
        return (path,)
    return tuple(p for p in (Path(f).expanduser() for f in DEFAULT_FILES) if p.is_file())


def resolve(params) -> Destination:
    """The destination `params` (a params.Target) means, hops first; reads local files only.
    Raises ParamsError naming target.ssh_config when a config file cannot be read."""
    files = config_files(params)
    target = _hop(params, files, params.host, params.user, params.port, final=True)
    if params.jump is not None:
        specs, source = list(params.jump), "params (target.jump)"
    else:
        specs, source = _proxy_jump(files, params)
    jumps = []
    for spec in specs:
        user, host, port = split_jump(spec)
        hop = _hop(params, files, host, user, port, final=False)
        hop.sources["jump"] = source
        jumps.append(hop)
    return Destination(target, tuple(jumps), tuple(str(f) for f in files))


def split_jump(spec: str) -> tuple[str | None, str, int | None]:
    """`[user@]host[:port]` (IPv6 in brackets) as (user, host, port)."""
    user, at, rest = spec.rpartition("@")
    host, port = rest, ""
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port = tail[1:]
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    return (user if at else None), host.lower(), (int(port) if port else None)


def _options(files, host: str, user, port) -> list[dict]:
    """The options after each file in turn (ssh takes a value from the first file that sets
    it, so the first of these holding an option names its source)."""
    local = getpass.getuser()
    found = []
    for count in range(1, len(files) + 1):
        try:
            config = _Config.load(None, list(files[:count]), False, False, False, local,
                                  user if user is not None else (), host,
                                  port if port is not None else ())
        except (ConfigParseError, OSError, ValueError) as e:
            raise ParamsError([("target.ssh_config", f"cannot read {files[count - 1]}: {e}")],
                              "parameters") from None
        found.append(config.get_options(False))
    return found


def _hop(params, files, host: str, user, port, *, final: bool) -> Hop:
    """One hop's values: `user` and `port` as given (the target's params, or a jump spec),
    the rest from the params that apply to it, its config, then the defaults."""
    layers = _options(files, host, user, port)
    if not (final and params.jump is not None):  # target.jump replaces it, as ssh's -J
        _refuse_proxy_command(files, layers, host)
    sources: dict[str, str] = {}

    def given(name: str) -> str:
        return f"params (target.{name})" if final else "jump spec"

    def pick(name: str, given, source: str, option: str, default, default_source="default"):
        if given is not None:
            sources[name] = source
            return given
        for path, options in zip(files, layers, strict=True):
            if options.get(option) is not None:
                sources[name] = f"{path} ({option})"
                return layers[-1][option]
        sources[name] = default_source
        return default

    address = pick("address", None, "", "Hostname", host,
                   "target.host" if final else "jump spec")
    login = pick("user", user, given("user"), "User", getpass.getuser(),
                 "this machine's user (as ssh)")
    number = int(pick("port", port, given("port"), "Port", 22))
    # a jump host's own IdentityFile comes first; else it is offered the target's key
    key = params.key_file if final or not _set(layers, "IdentityFile") else None
    keys = pick("keys", [str(key)] if key else None, "params (target.key_file)",
                "IdentityFile", [])
    only = bool(pick("identities_only", None, "", "IdentitiesOnly", False))
    known = pick("known_hosts", [str(params.known_hosts)] if params.known_hosts else None,
                 "params (target.known_hosts)", "UserKnownHostsFile", [DEFAULT_KNOWN_HOSTS])
    strict = pick("policy", params.host_key_policy, "params (target.host_key_policy)",
                  "StrictHostKeyChecking", "strict")
    timeout = float(pick("connect_timeout", params.connect_timeout,
                         "params (target.connect_timeout)", "ConnectTimeout",
                         DEFAULT_TIMEOUT))
    key_alias = pick("host_key_alias", None, "", "HostKeyAlias", None)
    sources["agent"] = "default" if params.use_agent else "params (target.use_agent)"
    policy = POLICIES.get(str(strict).lower(), str(strict))
    if str(strict).lower() in ("no", "off"):
        sources["policy"] += ": taken as accept-new (a changed key is always refused)"
    return Hop(
        name=host, address=str(address).lower(), user=str(login), port=number,
        keys=tuple(str(Path(k).expanduser()) for k in keys), identities_only=only,
        agent=params.use_agent,
        known_hosts=tuple(str(Path(k).expanduser()) for k in known),
        policy=policy, connect_timeout=timeout, sources=sources,
        host_key_alias=str(key_alias) if key_alias else None)


def _refuse_proxy_command(files, layers: list[dict], host: str) -> None:
    """A ProxyCommand the runbook would not run must not be skipped silently: the connection
    would then go straight to the address instead."""
    for path, options in zip(files, layers, strict=True):
        if "ProxyCommand" in options:
            if layers[-1]["ProxyCommand"] is not None:  # `ProxyCommand none` is none
                raise ParamsError([("target.ssh_config", (
                    f"{path} gives {host} a ProxyCommand, which the runbook does not run: "
                    "use ProxyJump there, or target.jump"))], "parameters")
            return


def _set(layers: list[dict], option: str) -> bool:
    return bool(layers) and layers[-1].get(option) is not None


def _proxy_jump(files, params) -> tuple[list[str], str]:
    layers = _options(files, params.host, params.user, params.port)
    for path, options in zip(files, layers, strict=True):
        if "ProxyJump" in options:
            value = layers[-1]["ProxyJump"]
            if value is None:  # ProxyJump none
                return [], f"{path} (ProxyJump none)"
            return [j for j in re.split(r"\s*,\s*", str(value)) if j], f"{path} (ProxyJump)"
    return [], "none"


def describe(destination: Destination) -> str:
    """`runbook validate --show-target`: each hop's values and where each came from."""
    lines = [f"ssh_config files read: {', '.join(destination.config_files) or 'none'}"]
    for hop in destination.hops:
        role = "target" if hop is destination.target else "jump host"
        lines.append(f"{role} {hop.name}: {hop.dest}")
        keys = ", ".join(hop.keys) or "the agent's and the default keys"
        if hop.identities_only:
            keys += " (IdentitiesOnly: these only)"
        rows = [("address", hop.address, "address"), ("user", hop.user, "user"),
                ("port", str(hop.port), "port"), ("keys", keys, "keys"),
                ("agent", "offered" if hop.agent else "not used", "agent"),
                ("known_hosts", ", ".join(hop.known_hosts), "known_hosts"),
                ("policy", hop.policy, "policy"),
                ("connect timeout", f"{hop.connect_timeout:g} s", "connect_timeout")]
        if hop.host_key_alias:
            rows.insert(6, ("host key alias", hop.host_key_alias, "host_key_alias"))
        if "jump" in hop.sources:
            rows.insert(0, ("jump", f"hop {destination.jumps.index(hop) + 1}", "jump"))
        width = max(len(value) for _, value, _ in rows)
        for label, value, name in rows:
            lines.append(f"  {label:16} {value:{width}}  from {hop.sources.get(name, 'default')}")
    if destination.jumps:
        lines.append("reached through: " + " -> ".join(h.dest for h in destination.jumps))
    return "\n".join(lines) + "\n"
