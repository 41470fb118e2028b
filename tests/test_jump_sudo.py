"""An operator's habits on real lab hosts (Debian 12): deb8 reached through deb7 as the
bastion (ProxyJump from an ssh_config, both host keys checked), logged in as a user who is
not root and becomes root with sudo and a password given by reference.

- the full default run completes through the bastion (SMTP and IMAP probes tunnelled
  through the target, Dovecot's login included), and deb7's sshd log (the journal, at
  LogLevel DEBUG1) shows the forwarded connection to deb8's SSH port;
- the audit records the effective destination and each hop's host key;
- the sudo password appears nowhere under the run folder;
- a changed key on the bastion refuses the run before anything reaches deb8;
- a wrong sudo password fails at once, naming target.sudo_password_env.

Hosts deb7 and deb8 are made fresh for the module. They need root and the lab; they fail
(never skip) when the lab cannot start.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import asyncssh
import labrun
import pytest
import yaml
from labrun import audit, operations, ssh

from runbook import lab
from runbook.errors import HostKeyChanged, PrivilegeRefused
from runbook.run import runner

pytestmark = pytest.mark.lab

CHECKOUT = Path(__file__).resolve().parents[1]
DEFAULT = ["00-preflight", "10-install", "20-enable", "30-configure", "40-start",
           "50-validate", "60-harden", "70-dovecot"]
ALIAS = "mail-behind-bastion"
OPERATOR = "mailop"
ENV = "LAB_SUDO_PASSWORD"
SSH_CONFIG = """\
Host {alias}
    HostName {target}
    User {operator}
    IdentityFile {key}
    IdentitiesOnly yes
    UserKnownHostsFile {target_known}
    ProxyJump bastion

Host bastion
    HostName {bastion}
    User root
    IdentityFile {key}
    IdentitiesOnly yes
    UserKnownHostsFile {bastion_known}
"""
TIMINGS: dict[str, float] = {}


def fresh(name: str) -> dict:
    try:
        return lab.up_host(name, checkout=CHECKOUT, fresh=True)
    except Exception as e:  # the message says what is missing and how to fix it
        pytest.fail(f"the lab could not start {name}: {e}")


@pytest.fixture(scope="module")
def hosts() -> tuple[dict, dict]:
    """deb7 the bastion (sshd logging forwarded connections), deb8 the target (sudo)."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root: they boot real target hosts (run `make test` as root)")
    bastion, target = fresh("deb7"), fresh("deb8")
    ssh(bastion, "printf 'LogLevel DEBUG1\\n' > /etc/ssh/sshd_config.d/zz-test-debug.conf "
                 "&& systemctl reload ssh")
    return bastion, target


@pytest.fixture(scope="module")
def password(hosts) -> str:
    """A non-root user on deb8 in the sudo group, whose sudo asks for its password."""
    _, target = hosts
    value = secrets.token_urlsafe(18)
    ssh(target, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
                f"sudo >/dev/null && useradd -m -s /bin/sh -G sudo {OPERATOR} && "
                f"install -d -m 700 -o {OPERATOR} -g {OPERATOR} /home/{OPERATOR}/.ssh && "
                f"install -m 600 -o {OPERATOR} -g {OPERATOR} /root/.ssh/authorized_keys "
                f"/home/{OPERATOR}/.ssh/authorized_keys")
    login(target, "root", "chpasswd", input=f"{OPERATOR}:{value}\n")  # never a command line
    os.environ[ENV] = value
    yield value
    os.environ.pop(ENV, None)


@pytest.fixture(scope="module")
def setup(hosts, password, tmp_path_factory) -> dict:
    bastion, target = hosts
    tmp = tmp_path_factory.mktemp("jump")
    bastion_known = tmp / "bastion_known_hosts"
    shutil.copy(bastion["known_hosts"], bastion_known)  # a copy the test may tamper with
    config = tmp / "ssh_config"
    config.write_text(SSH_CONFIG.format(
        alias=ALIAS, target=target["address"], operator=OPERATOR, key=target["key_file"],
        target_known=target["known_hosts"], bastion=bastion["address"],
        bastion_known=bastion_known))
    data = yaml.safe_load(Path(target["params_file"]).read_text())
    data["target"] = {"host": ALIAS, "ssh_config": str(config), "privilege": "sudo",
                      "sudo_password_env": ENV}
    return {"data": data, "tmp": tmp, "bastion_known": bastion_known}


@pytest.fixture(scope="module")
def first_run(hosts, setup) -> dict:
    bastion, _ = hosts
    since = int(time.time()) - 1
    run_dir = labrun.run(setup["tmp"], setup["data"], DEFAULT, timings=TIMINGS)
    log = ssh(bastion, f"journalctl -q --no-pager -t sshd --since @{since}")
    return {"run_dir": run_dir, "bastion_log": log}


def test_the_default_run_completes_through_the_bastion_with_sudo(hosts, first_run):
    run_dir = first_run["run_dir"]
    stages = json.loads((run_dir / "run.json").read_text())["stages"]
    assert list(stages) == DEFAULT and all(s["status"] == "ok" for s in stages.values()), stages
    assert not operations(run_dir, "failed")
    # the SMTP and IMAP sessions tunnelled through the target's SSH session, itself
    # carried by the bastion's
    tunnelled = {r["protocol"] for r in audit(run_dir)
                 if r["type"] == "probe" and r["via"] == "ssh tunnel"}
    assert {"smtp", "imaps"} <= tunnelled, tunnelled
    imap = next(r for r in operations(run_dir) if r["name"].startswith("G22 IMAP login"))
    assert imap["status"] == "ok", imap
    commands = [r for r in audit(run_dir) if r["type"] == "command"]
    assert commands and all(r.get("privilege") in (None, "sudo") for r in commands)
    # and that sudo really asks: without the password it refuses the operator
    refused = login(hosts[1], OPERATOR, "sudo -n true", check=False)
    assert refused.returncode != 0 and "password is required" in refused.stderr


def test_the_bastions_sshd_log_shows_the_connection_going_through_it(hosts, first_run):
    target = hosts[1]
    log = first_run["bastion_log"]
    assert "Accepted publickey for root" in log, log[-2000:]
    assert f"target {target['address']} port 22" in log, log[-2000:]  # direct-tcpip to deb8


def test_the_audit_records_the_destination_and_each_hops_key(hosts, first_run):
    bastion, target = hosts
    (connection,) = [r for r in audit(first_run["run_dir"]) if r["type"] == "connection"]
    assert connection["destination"] == f"{OPERATOR}@{target['address']}:22"
    assert connection["jumps"] == [f"root@{bastion['address']}:22"]
    hops = [h["hop"] for h in connection["hops"]]
    assert hops == [f"root@{bastion['address']}:22", f"{OPERATOR}@{target['address']}:22"]
    for hop, host in zip(connection["hops"], (bastion, target), strict=True):
        assert hop["fingerprint"] in fingerprints(Path(host["known_hosts"]))


def test_the_sudo_password_is_nowhere_under_the_run_folder(password, first_run, setup):
    runs = setup["tmp"] / "runs"
    found = [p for p in runs.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert found == []
    # and it was used: commands ran as root through sudo (which refuses `sudo -n`, above)
    privileged = [r for r in audit(first_run["run_dir"])
                  if r["type"] == "command" and r.get("privilege") == "sudo"]
    assert len(privileged) > 20, len(privileged)


def test_a_changed_key_on_the_bastion_refuses_the_run(hosts, setup, first_run):
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()
    known = setup["bastion_known"]
    saved = known.read_text()
    known.write_text(f"{hosts[0]['address']} {other[0]} {other[1]}\n")
    try:
        with pytest.raises(HostKeyChanged, match=rf"the key of {hosts[0]['address']}"):
            run_once(setup, "changed-key")
    finally:
        known.write_text(saved)
    assert not (setup["tmp"] / "changed-key").exists()  # refused before any run folder


def test_a_wrong_sudo_password_fails_at_once_naming_the_field(setup):
    data = {**setup["data"], "target": {**setup["data"]["target"],
                                        "sudo_password_env": "LAB_SUDO_WRONG"}}
    os.environ["LAB_SUDO_WRONG"] = "not-" + secrets.token_urlsafe(8)
    started = time.monotonic()
    try:
        with pytest.raises(PrivilegeRefused, match=r"target\.sudo_password_env \(LAB_SUDO_WRONG\)"):
            run_once({**setup, "data": data}, "wrong-password")
    finally:
        os.environ.pop("LAB_SUDO_WRONG", None)
    assert time.monotonic() - started < 10  # the connect timeout: one try, no hang


def run_once(setup: dict, name: str) -> None:
    path = setup["tmp"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(setup["data"]))
    runner.run(path, stages=["00-preflight"], runs_root=setup["tmp"] / name,
               echo=lambda *a, **k: None)


def login(host: dict, user: str, command: str, *, input: str | None = None,
          check: bool = True) -> subprocess.CompletedProcess:
    """`command` on the host as `user`, straight (not through the bastion)."""
    return subprocess.run(
        ["ssh", "-F", "none", "-i", host["key_file"], "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={host['known_hosts']}", "-o", "StrictHostKeyChecking=yes",
         f"{user}@{host['address']}", command],
        input=input, capture_output=True, text=True, check=check, timeout=60)


def fingerprints(known_hosts: Path) -> set[str]:
    return {asyncssh.import_public_key(" ".join(line.split()[1:3])).get_fingerprint("sha256")
            for line in known_hosts.read_text().splitlines() if line.strip()}
