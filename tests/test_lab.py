"""The lab against real hosts: these boot systemd-nspawn hosts and need root.

They fail (never skip) when the lab cannot start. The session leaves the lab up: other test
modules use it, and the down test brings it back up.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
from pathlib import Path

import asyncssh
import pytest
import yaml

from runbook import lab, params
from runbook.errors import LabError

CHECKOUT = Path(__file__).resolve().parents[1]
FIELDS = {"name", "address", "port", "user", "key_file", "known_hosts", "params_file", "running",
          "flavor", "release", "emulated", "privilege", "mail_user", "mail_password_file", "pid",
          "root"}


async def _ssh(entry: dict, command: str, known_hosts: str | None = None) -> str:
    async with asyncssh.connect(
        entry["address"], port=entry["port"], username=entry["user"],
        client_keys=[entry["key_file"]], known_hosts=known_hosts or entry["known_hosts"],
        agent_path=None, config=[],
    ) as conn:
        return (await conn.run(command, check=True)).stdout.strip()


def ssh(entry: dict, command: str, known_hosts: str | None = None) -> str:
    """Run `command` as root on the host, checking its host key strictly."""
    return asyncio.run(_ssh(entry, command, known_hosts))


def entry(name: str) -> dict:
    return next(e for e in lab.status() if e["name"] == name)


def nspawn_processes(name: str | None = None) -> list[int]:
    """Live (not zombie) systemd-nspawn processes of the lab, of one host if named."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            continue
        mine = any(str(lab.config.HOSTS) in arg for arg in argv)
        if Path(argv[0]).name == "systemd-nspawn" and mine and state != "Z" and (
                name is None or f"--machine={name}" in argv):
            pids.append(int(proc.name))
    return pids


def lab_mounts() -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines()
            if str(lab.config.LAB) in line]


def lo_addresses() -> str:
    return lab._run("ip", "-4", "-o", "addr", "show", "dev", "lo")


@pytest.fixture(scope="module")
def hosts() -> dict[str, dict]:
    """deb1 is only looked at (other test modules use it); deb2 is reset, rebooted, killed."""
    return {e["name"]: e for e in lab.up(2, CHECKOUT)}


@pytest.fixture
def deb1(hosts) -> dict:
    return hosts["deb1"]


@pytest.fixture
def deb2(hosts) -> dict:
    return entry("deb2")


# --- refusals: no root needed ----------------------------------------------------------------

@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """Point the lab's state and cache at an empty temp dir, to see nothing is created."""
    monkeypatch.setattr(lab.config, "LAB", tmp_path / "lab")
    monkeypatch.setattr(lab.config, "HOSTS", tmp_path / "lab/hosts")
    monkeypatch.setattr(lab.config, "KEY", tmp_path / "lab/id_ed25519")
    monkeypatch.setattr(lab.config, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(lab.config, "DEBS", tmp_path / "cache/debs")
    return tmp_path


def test_not_root_is_refused_before_anything_is_created(elsewhere, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for command in (lambda: lab.up(1, elsewhere), lab.down, lab.status,
                    lambda: lab.reset("deb1"), lambda: lab.reboot("deb1")):
        with pytest.raises(LabError, match=r"the lab needs root: run as root \(sudo make demo\)"):
            command()
    assert sorted(elsewhere.iterdir()) == []


def test_missing_tools_are_named_with_their_package(elsewhere, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(lab.config, "PATH", str(elsewhere))  # a PATH where no tool is found
    with pytest.raises(LabError) as refused:
        lab.up(1, elsewhere)
    message = str(refused.value)
    assert "systemd-nspawn" in message and "mmdebstrap" in message
    assert "apt-get install -y" in message and "systemd-container" in message
    assert "\n" not in message
    assert sorted(elsewhere.iterdir()) == []


def test_not_linux_is_refused(elsewhere, monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(LabError, match="needs Linux"):
        lab.status()


def test_unknown_names_and_flavors_are_refused():
    for name in ("deb0", "deb", "mail1", "deb99", "../deb1"):
        with pytest.raises(LabError, match="not a lab host name"):
            lab.reset(name)
    with pytest.raises(LabError, match="unknown lab flavor"):
        lab.up(1, CHECKOUT, flavor="plan9")


def test_debian_13_hosts_have_a_name_range_of_their_own():
    assert lab._flavor("debian") == lab.DEBIAN  # no --release: Debian 12, as before
    trixie = lab._flavor("debian", "13")
    assert trixie == lab.DEBIAN_13 and trixie.suite == "trixie"
    assert [h.name for h in lab._wanted(trixie, 2)] == ["trixie1", "trixie2"]
    assert lab._host("trixie1").flavor == trixie and lab._host("trixie1").address == "127.0.0.71"
    assert lab._host("trixie29").address == "127.0.0.99"
    assert lab._host("deb9").flavor == lab.DEBIAN
    with pytest.raises(LabError, match=r"runs release 12 or 13.*--release 12"):
        lab._flavor("debian", "11")
    with pytest.raises(LabError, match=r"not a name for a debian 12 host: those are deb1"):
        lab.up_host("trixie1", release="12")


def test_another_releases_sources_are_this_machines_own_with_the_suite_renamed():
    deb822 = ("Types: deb\nURIs: http://mirror.invalid/debian\n"
              "Suites: bookworm bookworm-updates\nComponents: main\n\n"
              "Types: deb\nURIs: http://mirror.invalid/debian-security\n"
              "Suites: bookworm-security\nComponents: main\n")
    renamed = lab.image._resuite(deb822, "bookworm", "trixie")
    assert "Suites: trixie trixie-updates\n" in renamed
    assert "Suites: trixie-security\n" in renamed and "bookworm" not in renamed
    assert renamed.count("URIs: http://mirror.invalid/") == 2
    one_line = ("deb [signed-by=/k.gpg] http://mirror.invalid/debian bookworm main\n"
                "# deb http://mirror.invalid/debian bookworm contrib\n")
    assert lab.image._resuite(one_line, "bookworm", "trixie") == (
        "deb [signed-by=/k.gpg] http://mirror.invalid/debian trixie main\n"
        "# deb http://mirror.invalid/debian bookworm contrib\n")


# --- real hosts ------------------------------------------------------------------------------

@pytest.mark.lab
def test_up_gives_a_host_reachable_with_strict_host_keys(deb1):
    assert deb1.keys() >= FIELDS
    expected = {
        "address": "127.0.0.11", "port": 22, "user": "root", "running": True,
        "flavor": "debian", "release": "12", "emulated": False, "privilege": "none",
        "mail_user": "mailtest",
        "key_file": "/var/lib/mail-runbook/lab/id_ed25519",
        "known_hosts": "/var/lib/mail-runbook/lab/hosts/deb1/known_hosts",
        "mail_password_file": "/var/lib/mail-runbook/lab/hosts/deb1/mail_password",
        "params_file": str(CHECKOUT / "params/lab-deb1.yaml"),
        "root": "/var/lib/mail-runbook/lab/hosts/deb1/root"}
    assert {key: deb1[key] for key in expected} == expected
    assert deb1["pid"] in nspawn_processes("deb1")
    assert ssh(deb1, "systemctl is-active ssh cron") == "active\nactive"
    assert ssh(deb1, "hostname") == "deb1"
    assert ssh(deb1, "getent hosts mail.deb1.test").split() == [
        "127.0.0.11", "mail.deb1.test", "deb1.test", "deb1"]
    sshd = ssh(deb1, "sshd -T").splitlines()
    assert {"listenaddress 127.0.0.11:22", "passwordauthentication no",
            "permitrootlogin without-password", "usedns no"} <= set(sshd)
    assert "mail" in ssh(deb1, "id -nG mailtest").split()
    assert ssh(deb1, "stat -c '%U %G' /var/mail/mailtest") == "mailtest mail"


@pytest.mark.lab
def test_host_keys_in_known_hosts_are_the_hosts_own(deb1):
    inside = ssh(deb1, "cat /etc/ssh/ssh_host_*_key.pub").splitlines()
    known = Path(deb1["known_hosts"]).read_text().splitlines()
    assert sorted(known) == sorted(f"127.0.0.11 {' '.join(k.split()[:2])}" for k in inside)
    assert {line.split()[1] for line in known} >= {"ssh-ed25519"}
    assert oct(Path(deb1["key_file"]).stat().st_mode & 0o777) == "0o600"


@pytest.mark.lab
def test_mail_password_is_set_inside_and_kept_secret_outside(deb1):
    secret_file = Path(deb1["mail_password_file"])
    assert oct(secret_file.stat().st_mode & 0o777) == "0o600"
    password = secret_file.read_text().strip()
    hashed = ssh(deb1, "getent shadow mailtest | cut -d: -f2")
    libcrypt = ctypes.CDLL("libcrypt.so.1")
    libcrypt.crypt.restype = ctypes.c_char_p
    assert libcrypt.crypt(password.encode(), hashed.encode()).decode() == hashed


@pytest.mark.lab
def test_params_file_is_valid_and_narrows_mynetworks(deb1):
    path = Path(deb1["params_file"])
    text = path.read_text()
    assert text.startswith("# Generated by `runbook lab up`")
    data = yaml.safe_load(text)
    assert data["target"] == {
        "host": "127.0.0.11", "port": 22, "user": "root",
        "key_file": "/var/lib/mail-runbook/lab/id_ed25519",
        "known_hosts": "/var/lib/mail-runbook/lab/hosts/deb1/known_hosts",
        "host_key_policy": "strict", "privilege": "none"}
    assert data["platform"] == {"name": "debian", "release": "12"}
    assert data["postfix"]["mynetworks"] == ["127.0.0.1/32", "127.0.0.11/32"]
    assert data["postfix"]["inet_interfaces"] == ["127.0.0.11"]
    assert data["postfix"]["extra_settings"]["default_transport"].startswith("error:")
    assert data["dovecot"] == {"listen": ["127.0.0.11"],
                               "test_password_file": deb1["mail_password_file"]}
    assert list(data["postfix"]) == [
        "mydomain", "myhostname", "myorigin", "mydestination", "mynetworks", "mynetworks_style",
        "inet_interfaces", "parent_domain_matches_subdomains", "aliases", "test_recipient",
        "probe_source", "extra_settings"]
    params.load(path)  # the params model accepts it


@pytest.mark.lab
def test_shared_deb_cache_holds_what_later_stages_install(deb1):
    packages = " ".join(lab.DEBIAN.predownload)
    uris = ssh(deb1, f"apt-get install -y -q --print-uris {packages} | grep -c '^.http' || true")
    assert uris == "0"  # nothing left to download
    assert "Keep-Downloaded-Packages \"true\"" in ssh(deb1, "apt-config dump")


@pytest.mark.lab
def test_up_twice_reports_running_hosts_without_duplicating_them(deb1):
    before = entry("deb1")
    again = lab.up(1, CHECKOUT)
    assert [e["name"] for e in again].count("deb1") == 1
    assert entry("deb1")["pid"] == before["pid"]
    assert nspawn_processes("deb1") == [before["pid"]]
    assert len([m for m in lab_mounts() if "/hosts/deb1/root " in m]) == 1
    assert lo_addresses().count(" 127.0.0.11/") == 1


@pytest.mark.lab
def test_reset_gives_a_fresh_host_with_its_new_keys_recorded(deb2, tmp_path):
    ssh(deb2, "echo old > /root/marker")
    old_known_hosts = tmp_path / "old_known_hosts"
    old_known_hosts.write_text(Path(deb2["known_hosts"]).read_text())
    old_password = Path(deb2["mail_password_file"]).read_text()
    # what the caller holds open (a `flock LOCK runbook lab ...` lock) the host must not keep
    held = os.open(tmp_path / "held", os.O_CREAT | os.O_RDONLY)
    os.set_inheritable(held, True)
    try:
        fresh = lab.reset("deb2")
    finally:
        os.close(held)
    kept = [os.readlink(fd) for fd in Path(f"/proc/{fresh['pid']}/fd").iterdir()]
    assert str(tmp_path / "held") not in kept, kept
    assert fresh["running"] and fresh["address"] == "127.0.0.12"
    assert ssh(fresh, "systemctl is-system-running --wait") == "running"
    assert ssh(fresh, "test -e /root/marker || echo fresh") == "fresh"
    assert ssh(fresh, "command -v sendmail || echo none") == "none"  # no MTA until the runbook
    assert ssh(fresh, "stat -c '%U %G %a %s' /var/mail/mailtest") == "mailtest mail 660 0"
    assert Path(fresh["known_hosts"]).read_text() != old_known_hosts.read_text()
    assert Path(fresh["mail_password_file"]).read_text() != old_password
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        ssh(fresh, "true", known_hosts=str(old_known_hosts))
    assert fresh["params_file"] == str(CHECKOUT / "params/lab-deb2.yaml")


@pytest.mark.lab
def test_reboot_keeps_the_disk_and_boots_again(deb2):
    ssh(deb2, "echo kept > /root/marker && echo gone > /run/marker")
    after = lab.reboot("deb2")
    assert after["running"] and after["pid"] != deb2["pid"]
    assert ssh(after, "cat /root/marker") == "kept"
    assert ssh(after, "test -e /run/marker || echo rebooted") == "rebooted"  # /run is a tmpfs
    assert ssh(after, "systemctl is-active ssh") == "active"
    assert Path(after["known_hosts"]).read_text() == Path(deb2["known_hosts"]).read_text()


@pytest.mark.lab
def test_stale_state_of_a_killed_host_is_recovered_by_up(deb2):
    os.kill(deb2["pid"], signal.SIGKILL)
    assert lab._wait_while(lambda: entry("deb2")["running"], 5)
    # the host's own processes outlive a SIGKILLed nspawn: up must find and end them
    assert lab._processes_in(Path(deb2["root"]))
    after = next(e for e in lab.up(2, CHECKOUT) if e["name"] == "deb2")
    assert after["running"] and after["pid"] != deb2["pid"]
    assert nspawn_processes("deb2") == [after["pid"]]
    assert len([m for m in lab_mounts() if "/hosts/deb2/root " in m]) == 1
    assert lo_addresses().count(" 127.0.0.12/") == 1
    assert ssh(after, "systemctl is-system-running --wait") == "running"


@pytest.mark.lab
def test_down_leaves_nothing_behind_then_up_restores_the_lab(deb1):
    running = {e["name"] for e in lab.status() if e["running"]}
    try:
        assert set(lab.down()) == running
        assert nspawn_processes() == []
        assert lab_mounts() == []
        for host in lab.status():
            assert not host["running"]
            assert lab._processes_in(Path(host["root"])) == []
            assert f" {host['address']}/" not in lo_addresses()
        assert " 127.0.0.1/8 " in lo_addresses()
        assert lab.down() == []  # nothing left to stop
    finally:  # bring back every host that ran, for the tests after this one
        debian = [name for name in running if name.startswith("deb")]
        lab.up(max((lab._host(name).index for name in debian), default=1), CHECKOUT)
        for name in sorted(running - set(debian)):
            lab.up_host(name, checkout=CHECKOUT)
    assert running <= {e["name"] for e in lab.status() if e["running"]}
