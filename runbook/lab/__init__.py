"""The lab: disposable real target hosts on this machine, Debian 12 and 13, emulated OpenBSD.

One lab per machine, whichever checkout drives it. A base image is bootstrapped once with
mmdebstrap; each host is an overlayfs over it (its own upper dir), booted by
`systemd-nspawn -b` with systemd as PID 1 on the machine's network, reachable by SSH on its
own loopback address 127.0.0.N with its own host keys. `down` stops the hosts and keeps their
state; `reset` replaces one with a fresh host.

Two flavors. `debian` hosts (deb1 …, 127.0.0.11 …) are plain Debian 12; with release 13,
Debian 13 (trixie1 …, 127.0.0.71 …), bootstrapped the same way from this machine's own
mirror (its apt sources with the suite renamed). `openbsd` hosts
(obsd1 …, 127.0.0.41 …) are the same Debian underneath with an *emulated* OpenBSD layout on
top, imitating OpenBSD 5.0 (the guide's era: sendmail, rc.conf.local edited by hand) or 7.6
(smtpd, rcctl, doas): a layer per release, built once over the base, holds small labelled
shims (uname, pkg_add, mailwrapper, rc.d, rcctl, syslogd over rsyslogd, daemon stand-ins)
from runbook/lab/files/openbsd/. docs/openbsd-emulation.md lists what is imitated and how.

The package: `config` (places, names, flavors, a host's paths and record), `image` (the
lab key, the base image, the emulation layers), `emulation` (laying the OpenBSD shims over
a layer), `hosts` (one host's life: create, boot, wait for SSH, stop, its params file),
`system` (mounts, addresses, processes, commands), `inventory` (params/lab-inventory.yaml of
the running Debian hosts); the API is here.

Layout:
  /var/lib/mail-runbook/lab/            lock, id_ed25519(.pub): the lab's SSH key
    hosts/<name>/                       upper/ work/ root/ debs-upper/ host.json known_hosts
                                        mail_password nspawn.pid nspawn.log
  /var/cache/mail-runbook/base-<suite>/ the base image (renamed into place when complete)
  /var/cache/mail-runbook/sources-<suite>.sources
                                        another release's apt sources, made from this machine's
  /var/cache/mail-runbook/layer-openbsd-<release>/
                                        an emulation layer: overlay upper dir over the base
  /var/cache/mail-runbook/debs/         .deb cache bound into every host
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from runbook.errors import LabError
from runbook.lab import config
from runbook.lab.config import (
    DEBIAN,
    DEBIAN_13,
    FLAVORS,
    LABFILES,
    MAX_HOSTS,
    Host,
    _all_hosts,
    _flavor,
    _host,
    _record,
    _wanted,
)
from runbook.lab.hosts import (
    _boot,
    _create,
    _processes_in,
    _running,
    _status,
    _stop,
    _wait_ready,
    _wait_while,
    _write_params,
)
from runbook.lab.image import (
    _ensure_base,
    _ensure_key,
    _ensure_layer,
    _locked,
    _preflight,
    _tidy_layers,
)
from runbook.lab.inventory import _write_inventory
from runbook.lab.system import _run

# --- the API ---------------------------------------------------------------------------------

@contextmanager
def _images_ready(kind):
    """Under the lab's lock, with the key, the base image and the flavor's layer built."""
    _preflight(build=None if kind.base.exists() else kind)
    with _locked() as lock:
        _ensure_key()
        _ensure_base(kind, lock)
        _ensure_layer(kind, lock)
        yield


def up(hosts: int = 1, checkout: Path | None = None, flavor: str = "debian",
       release: str | None = None) -> list[dict]:
    """At least `hosts` lab hosts of the flavor (and release) running and accepting SSH; the
    params files of every running host written. Debian hosts are deb1 … debN; OpenBSD hosts
    are the first `hosts` obsd hosts of that release, new ones taking the free names."""
    kind = _flavor(flavor, release)
    if not 1 <= hosts <= MAX_HOSTS:
        raise LabError(f"the lab runs 1 to {MAX_HOSTS} hosts of a flavor, not {hosts}")
    checkout = Path.cwd() if checkout is None else Path(checkout)
    with _images_ready(kind):
        for host in _all_hosts():
            if not _running(host):
                _stop(host)  # leftovers of a killed run: mount, address, orphaned container
        wanted = _wanted(kind, hosts)
        for host in wanted:
            if not _running(host):
                if not host.record.exists():
                    _create(host)
                _boot(host)
        for host in wanted:
            _wait_ready(host)
        running = [host for host in _all_hosts() if _running(host)]
        for host in running:
            _write_params(host, checkout / "params" / f"lab-{host.name}.yaml")
        debian = [host for host in running if host.flavor == DEBIAN]
        if debian:
            _write_inventory(debian, checkout / "params" / "lab-inventory.yaml")
        _tidy_layers()
        return [_status(host) for host in running]


def up_host(name: str, release: str | None = None, checkout: Path | None = None,
            fresh: bool = False) -> dict:
    """This one host running: made if it does not exist or is of another release than
    `release` (an OpenBSD host's), made afresh if `fresh`; its params file written. For
    whoever needs a host of their own by name (a test module), beside those `up` hands out."""
    named = _host(name)
    # the record says which release a host is; else the name does, unless its prefix is shared
    shared = sum(f.prefix == named.flavor.prefix for f in FLAVORS.values()) > 1
    known = named.flavor.release if named.record.exists() or not shared else None
    kind = _flavor(named.flavor.name, release or known)
    if kind.prefix != named.flavor.prefix:
        raise LabError(f"{name} is not a name for a {kind.name} {kind.release} host: those are "
                       f"{kind.prefix}1 … {kind.prefix}{MAX_HOSTS}")
    host = Host(kind, named.index)
    checkout = Path.cwd() if checkout is None else Path(checkout)
    with _images_ready(kind):
        if fresh or not host.record.exists() or _host(name).flavor != kind:
            _stop(_host(name))
            _create(host)
        if not _running(host):
            _stop(host)  # leftovers of a killed run
            _boot(host)
        _wait_ready(host)
        _write_params(host, Path(_record(host).get("params_file")
                                 or checkout / "params" / f"lab-{name}.yaml"))
        _tidy_layers()
        return _status(host)


def down(names: list[str] | None = None) -> list[str]:
    """Stop every lab host (or the named ones); return the names of those that had something
    to stop."""
    _preflight()
    chosen = None if names is None else {_host(name).name for name in names}
    if not config.HOSTS.exists():
        return []
    with _locked():
        return [host.name for host in _all_hosts()
                if (chosen is None or host.name in chosen) and _stop(host)]


def write_inventory(names: list[str], path: Path) -> Path:
    """An inventory of these running lab hosts (as `up` writes params/lab-inventory.yaml)."""
    hosts = [_host(name) for name in names]
    stopped = [host.name for host in hosts if not _running(host)]
    if stopped:
        raise LabError(f"not running: {', '.join(stopped)} (runbook lab up)")
    return _write_inventory(hosts, Path(path))


def reset(name: str) -> dict:
    """Replace a host by a fresh one in place: same name and address, new empty state."""
    host = _host(name)
    _preflight(build=None if host.flavor.base.exists() else host.flavor)
    with _locked() as lock:
        _ensure_key()
        _ensure_base(host.flavor, lock)
        _ensure_layer(host.flavor, lock)
        params_file = _record(host).get("params_file")
        _stop(host)
        _create(host)
        _boot(host)
        _wait_ready(host)
        if params_file:
            _write_params(host, Path(params_file))
        _tidy_layers()
        return _status(host)


def reboot(name: str) -> dict:
    """Halt a host cleanly and boot it again on the same state."""
    host = _host(name)
    _preflight()
    with _locked():
        if not host.record.exists():
            how = (f"--flavor openbsd --release {host.flavor.release} "
                   if host.flavor.emulated else "")
            raise LabError(f"there is no lab host {name}: create it with "
                           f"`runbook lab up {how}--hosts {host.index}`")
        _stop(host)
        _boot(host)
        _wait_ready(host)
        return _status(host)


def status() -> list[dict]:
    """Every lab host, running or not, with how to reach it."""
    _preflight()
    return [_status(host) for host in _all_hosts() if host.record.exists()]


__all__ = [
    "DEBIAN",
    "DEBIAN_13",
    "LABFILES",
    "_flavor",
    "_host",
    "_processes_in",
    "_run",
    "_wait_while",
    "_wanted",
    "config",
    "down",
    "reboot",
    "reset",
    "status",
    "up",
    "up_host",
    "write_inventory",
]
