"""Building what hosts boot from, once: the lab's SSH key, the Debian base image
(mmdebstrap) and, per OpenBSD release, the emulation layer over it; the tools they need."""


import fcntl
import functools
import hashlib
import inspect
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runbook.errors import LabError
from runbook.lab import config
from runbook.lab.config import (
    APT_KEEP_DEBS,
    BUILD_TOOLS,
    DIVERTED,
    EMULATION_MARKER,
    EMULATION_MTA_CONTROL,
    FLAVORS,
    LABFILES,
    MASKED_UNITS,
    NSPAWN_PROPAGATE,
    TOOLS,
    Flavor,
    Host,
    _all_hosts,
    _record,
)
from runbook.lab.emulation import _emulate
from runbook.lab.system import _mask, _remove_tree, _rmdir, _run, _run_logged, _say

# --- checks and naming -----------------------------------------------------------------------

def _preflight(build: Flavor | None = None) -> None:
    """Refuse early, with one message, anything that would leave a half-made lab.

    `build` is the flavor whose base image is still to be built, if any.
    """
    if not sys.platform.startswith("linux"):
        raise LabError(f"the lab needs Linux (systemd-nspawn, overlayfs); this is {sys.platform}")
    if os.geteuid() != 0:
        raise LabError("the lab needs root: run as root (sudo make demo)")
    tools = (TOOLS | BUILD_TOOLS) if build else TOOLS
    missing = sorted({cmd for cmd in tools if not shutil.which(cmd, path=config.PATH)})
    if missing:
        packages = " ".join(sorted({tools[cmd] for cmd in missing}))
        raise LabError(f"the lab needs {', '.join(missing)}, not found: "
                       f"install with `apt-get install -y {packages}`")
    overlay_module = Path(f"/lib/modules/{os.uname().release}/kernel/fs/overlayfs")
    if "overlay" not in Path("/proc/filesystems").read_text() and not overlay_module.exists():
        raise LabError("the lab needs overlayfs, which this kernel does not offer: "
                       "load it with `modprobe overlay`")
    if build:
        _apt_sources(build.suite)


def _apt_sources(suite: str) -> Path:
    """This machine's own apt sources file for `suite`: the lab never names a mirror itself.
    Another release of Debian than the machine's (trixie on a bookworm machine) comes from
    the same mirror: its sources are the machine's own with the suite names changed."""
    found = _sources_naming(suite)
    if found:
        return found
    own = _own_codename()
    mine = _sources_naming(own) if own else None
    if mine is None:
        raise LabError(f"no apt source for {suite} (nor for this machine's own release) in "
                       "/etc/apt/sources.list or sources.list.d: the lab bootstraps its image "
                       "from this machine's own Debian mirror; add one")
    kind = ".sources" if mine.suffix == ".sources" else ".list"  # deb822 or one-line
    derived = config.CACHE / f"sources-{suite}{kind}"
    derived.parent.mkdir(parents=True, exist_ok=True)
    derived.write_text(_resuite(mine.read_text(), own, suite))
    return derived


def _sources_naming(suite: str) -> Path | None:
    etc = Path("/etc/apt")
    candidates = [*sorted(etc.glob("sources.list.d/*.sources")),
                  *sorted(etc.glob("sources.list.d/*.list")), etc / "sources.list"]
    pattern = re.compile(rf"^(Suites:|deb\s).*\s{suite}(\s|$)", re.MULTILINE)
    return next((path for path in candidates
                 if path.is_file() and pattern.search(path.read_text())), None)


def _own_codename() -> str | None:
    try:
        text = Path("/etc/os-release").read_text()
    except FileNotFoundError:
        return None
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)\"?$", text, re.MULTILINE)
    return match[1] if match else None


def _resuite(text: str, old: str, new: str) -> str:
    """Sources text with the suites `old`, `old-updates`, `old-security` … renamed for `new`
    (deb822 `Suites:` fields and one-line `deb` entries; URIs and comments untouched)."""
    def rename(word: str) -> str:
        return new + word[len(old):] if word == old or word.startswith(old + "-") else word

    lines = []
    for line in text.splitlines(keepends=True):
        if line.startswith("Suites:"):
            words = line[len("Suites:"):].split()
            line = "Suites: " + " ".join(rename(w) for w in words) + "\n"
        elif re.match(r"deb(-src)?\s", line):
            words = line.split()  # deb [options] URI SUITE COMPONENTS…
            uri = 1 if not words[1].startswith("[") else 1 + next(
                i for i, w in enumerate(words) if w.endswith("]"))
            words[uri + 1] = rename(words[uri + 1])
            line = " ".join(words) + "\n"
        lines.append(line)
    return "".join(lines)


@contextmanager
def _locked() -> Iterator[int]:
    """Serialise lab commands across processes and checkouts; yields the lock's fd."""
    config.LAB.mkdir(parents=True, exist_ok=True)
    # Python opens it close-on-exec, so the hosts we boot never inherit (and hold) the lock
    with open(config.LAB / "lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say("lab: waiting for another lab command to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield lock.fileno()


# --- the base image and the lab key ----------------------------------------------------------

def _ensure_key() -> None:
    if not config.KEY.exists():
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mail-runbook lab",
             "-f", config.KEY)
    pub = config.KEY.with_suffix(".pub")
    if not pub.exists():  # a run killed between the two files ssh-keygen writes
        pub.write_text(_run("ssh-keygen", "-y", "-f", config.KEY))


def _ensure_base(kind: Flavor, lock: int) -> None:
    """Build the base image once, into a temp dir renamed into place only when complete.

    The build steps hold the lab's `lock` too: if this process is killed they wind down
    (mmdebstrap finishes its current step and cleans up) before the next command may start.
    """
    if kind.base.exists():
        return
    partial = kind.base.with_name(kind.base.name + ".partial")
    log = kind.base.with_name(kind.base.name + ".log")
    _say(f"lab: building the {kind.name} {kind.release} base image once (about a minute); "
         f"log: {log}")
    _remove_tree(partial)
    config.DEBS.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    _run_logged(log, lock, "mmdebstrap", "--variant=minbase", f"--include={','.join(kind.include)}",
                kind.suite, partial, _apt_sources(kind.suite))
    # Package lists for later installs, and the packages later stages install (on any flavor
    # of this suite) fetched into the shared cache now, so that hosts download nothing.
    packages = " ".join(dict.fromkeys(
        p for f in FLAVORS.values() if f.suite == kind.suite for p in f.predownload))
    fetch = f"apt-get -q update && apt-get -q -y install --download-only {packages}"
    _run_logged(log, lock, "systemd-nspawn", "--quiet", "--register=no", "--keep-unit",
                f"--directory={partial}", f"--bind={config.DEBS}:/var/cache/apt/archives",
                "sh", "-c", fetch)
    _rmdir(NSPAWN_PROPAGATE / partial.name)
    _customize_base(partial)
    partial.rename(kind.base)


def _customize_base(root: Path) -> None:
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # every host gets its own
    (root / "etc/apt/apt.conf.d/99mail-runbook-keep-debs").write_text(APT_KEEP_DEBS)
    _mask(root, MASKED_UNITS)
    (root / "etc/machine-id").write_text("")  # each host writes its own


@functools.cache
def _layer_digest(kind: Flavor) -> str:
    """What an emulation layer is built from: the release's lab files (names, modes,
    contents) and the code that builds it."""
    digest = hashlib.sha256()
    source = LABFILES / kind.name
    for tree in (source / "common", source / kind.release):
        for path in sorted(p for p in tree.rglob("*") if p.is_file()):
            digest.update(f"{path.relative_to(tree)}:{os.access(path, os.X_OK)}\n".encode())
            digest.update(path.read_bytes())
    for part in (inspect.getsource(_build_layer), inspect.getsource(_emulate),
                 EMULATION_MARKER, EMULATION_MTA_CONTROL, repr(kind)):
        digest.update(part.encode())
    return digest.hexdigest()[:10]


def _lowers(host: Host) -> list[Path]:
    """The layers under a host's own upper dir: those it was made on."""
    recorded = _record(host).get("lowers")
    if recorded:
        return [Path(path) for path in recorded]
    legacy = config.CACHE / f"layer-{host.flavor.name}-{host.flavor.release}"
    if host.flavor.emulated and host.record.exists() and legacy.exists():
        return [legacy, host.flavor.base]  # made before layers were named by their digest
    return host.flavor.lowers


def _tidy_layers() -> None:
    """Remove emulation layers no host is made on and no flavor would use."""
    wanted = {f.layer for f in FLAVORS.values() if f.layer}
    for host in _all_hosts():
        wanted.update(_lowers(host))
    for layer in config.CACHE.glob("layer-*"):
        if layer.is_dir() and not layer.name.endswith(".partial") and layer not in wanted:
            _remove_tree(layer)
            layer.with_name(layer.name + ".log").unlink(missing_ok=True)


def _ensure_layer(kind: Flavor, lock: int) -> None:
    """Build an emulation layer once: an overlay upper dir over the base, holding what the
    release imitates, later stacked between the base and each host's own upper dir. Built
    in a temp dir renamed into place only when complete, like the base."""
    if kind.layer is None or kind.layer.exists():
        return
    partial = kind.layer.with_name(kind.layer.name + ".partial")
    log = kind.layer.with_name(kind.layer.name + ".log")
    _say(f"lab: building the {kind.name} {kind.release} emulation layer once (a few "
         f"seconds); log: {log}")
    _remove_tree(partial)
    upper, work, root = partial / "upper", partial / "work", partial / "root"
    for path in (upper, work, root):
        path.mkdir(parents=True)
    log.write_text("")
    _run("mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={kind.base},upperdir={upper},workdir={work}", root)
    try:
        _build_layer(kind, root, log, lock)
    finally:
        _run("umount", root)
    upper.rename(kind.layer)
    _remove_tree(partial)


def _build_layer(kind: Flavor, root: Path, log: Path, lock: int) -> None:
    machine = f"layer-{kind.name}-{kind.release.replace('.', '-')}"
    installs = " ".join(kind.layer_packages)
    fetch = " ".join(kind.predownload)
    diversions = "; ".join(
        f"dpkg-divert --quiet --local --rename --divert {path}.debian --add {path}"
        for path in DIVERTED)
    script = (
        "set -e; export DEBIAN_FRONTEND=noninteractive; "
        # OpenBSD's base MTA is a stand-in here: a package that only provides
        # mail-transport-agent lets mail(1) install without a Debian MTA (Debian's postfix
        # replaces it when pkg_add installs Postfix)
        f"mkdir -p /tmp/mta/DEBIAN; printf '%s' {shlex.quote(EMULATION_MTA_CONTROL)} "
        "> /tmp/mta/DEBIAN/control; dpkg-deb --build /tmp/mta /tmp/mta.deb >/dev/null; "
        "dpkg -i /tmp/mta.deb; rm -rf /tmp/mta /tmp/mta.deb; "
        # the base system's parts, installed with every service held
        "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; "
        "chmod 755 /usr/sbin/policy-rc.d; "
        f"apt-get -q -y install --no-install-recommends {installs}; "
        "rm -f /usr/sbin/policy-rc.d; "
        # what pkg_add will install later, fetched now if the cache lacks it
        f"apt-get -q -y install --download-only {fetch}; "
        # Debian's postfix must not replace mailwrapper: its files go beside, renamed
        f"{diversions}; "
        + ("useradd -m -s /bin/sh -c 'lab admin (doas)' admin; "
           if kind.privilege == "doas" else ""))
    _run_logged(log, lock, "systemd-nspawn", "--quiet", "--register=no", "--keep-unit",
                f"--machine={machine}", f"--directory={root}",
                f"--bind={config.DEBS}:/var/cache/apt/archives", "sh", "-c", script)
    _rmdir(NSPAWN_PROPAGATE / machine)
    _emulate(kind, root)


