"""An inventory: many hosts in one params file, validated as a whole before anything connects.

```yaml
shared:                 # values every host gets: any section of a params file
  target: {user: root, key_file: ~/.ssh/id_ed25519}
  postfix: {mydomain: example.org, test_recipient: samt}
hosts:
  - name: mx1           # unique; used in records and on the command line
    target: {host: 192.0.2.10}
    postfix: {myhostname: mx1.example.org}
  - name: mx2
    target: {host: 192.0.2.11, port: 2222}
    postfix: {myhostname: mx2.example.org}
```

A host's parameters are `shared` with the host's own values laid over it: mappings merge key
by key, anything else (a list, a value) is replaced whole, so any field may be overridden.
Every host's merged parameters must pass the params model; an error names the host and the
field. A file without `hosts` is a single-host params file, which loads as an inventory of
one host named after `target.host`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from runbook import params as params_model
from runbook.errors import ParamsError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
KEYS = ("shared", "hosts")


@dataclass(frozen=True)
class Host:
    name: str
    params: params_model.Params

    @property
    def data(self) -> dict[str, Any]:
        """The merged parameters as a params file holds them."""
        return params_model.as_parameters(self.params)


def is_inventory(data: Any) -> bool:
    return isinstance(data, dict) and "hosts" in data


def read(path: str | Path) -> Any:
    """The YAML of a params or inventory file; a missing or broken file is a ParamsError."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise ParamsError([("(file)", f"{path} does not exist")], str(path)) from None
    except yaml.YAMLError as e:
        raise ParamsError([("(file)", f"not valid YAML: {e}")], str(path)) from None


def load(path: str | Path) -> list[Host]:
    """Every host of an inventory (or the one host of a params file), validated."""
    data = read(path)
    if not is_inventory(data):
        single = params_model.load(path)
        return [Host(single.target.host, single)]
    return validate(data, str(path))


def validate(data: dict, source: str = "inventory") -> list[Host]:
    """The hosts of an inventory mapping, or one ParamsError naming every problem."""
    problems: list[tuple[str, str]] = []
    problems += [(key, f"unknown key (an inventory has {' and '.join(KEYS)})")
                 for key in data if key not in KEYS]
    shared = {} if data.get("shared") is None else data["shared"]
    entries = data.get("hosts")
    if not isinstance(shared, dict):
        problems.append(("shared", "must be a mapping of sections (target, postfix, …)"))
        shared = {}
    if not isinstance(entries, list) or not entries:
        problems.append(("hosts", "must be a non-empty list of hosts, each with a name"))
        entries = []
    hosts = []
    for index, entry in enumerate(entries):
        host, found = _host(index, entry, shared)
        problems += found
        if host:
            hosts.append(host)
    problems += _duplicates(hosts)
    if problems:
        raise ParamsError(problems, source)
    return hosts


def _host(index: int, entry: Any, shared: dict) -> tuple[Host | None, list]:
    where = f"hosts[{index}]"
    if not isinstance(entry, dict):
        return None, [(where, "must be a mapping with a name and the host's own values")]
    overrides = {k: v for k, v in entry.items() if k != "name"}
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return None, [(f"{where}.name", f"{name!r} is not a host name (letters, digits, "
                       ". _ -; at most 63)")]
    try:
        return Host(name, params_model.validate(name, **merge(shared, overrides))), []
    except ParamsError as e:
        return None, [(f"{name} ({where}): {field}", reason) for field, reason in e.problems]


def _duplicates(hosts: list[Host]) -> list[tuple[str, str]]:
    problems, names, targets = [], {}, {}
    for host in hosts:
        if host.name in names:
            problems.append((f"{host.name}: name", "is given to more than one host"))
            continue
        names[host.name] = host
        where = (host.params.target.host, host.params.target.port or 22)
        if where in targets:
            problems.append((f"{host.name}: target.host",
                             f"{where[0]}:{where[1]} is also {targets[where]}'s target; two "
                             "runs on one host at once would wait for each other's lock"))
        targets.setdefault(where, host.name)
    return problems


def merge(base: dict, overrides: dict) -> dict:
    """`overrides` laid over `base`: mappings merge key by key, anything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def select(hosts: list[Host], names: list[str] | None) -> list[Host]:
    """The named hosts, in inventory order; an unknown name is refused."""
    if names is None:
        return hosts
    known = {host.name for host in hosts}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ParamsError([("hosts", f"{', '.join(unknown)} not in the inventory "
                            f"(it has {', '.join(sorted(known))})")])
    return [host for host in hosts if host.name in names]


def dump(host: Host, path: Path) -> Path:
    """Write one host's merged parameters as a params file (what its run reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# host {host.name} of a fleet run: the inventory's values merged\n"
                    + yaml.safe_dump(host.data, sort_keys=False))
    return path
