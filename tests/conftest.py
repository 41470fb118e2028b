"""Shared fixtures. Lab tests boot real hosts: they need root and fail loudly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def lab_hosts() -> list[dict]:
    """The lab's running hosts (booted if needed). Fails, never skips, when it cannot start."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root: they boot real target hosts (run `make test` as root)")
    from runbook import lab

    try:
        return lab.up(1, checkout=PROJECT)
    except Exception as e:  # the message says what is missing and how to fix it
        pytest.fail(f"the lab could not start: {e}")


@pytest.fixture(scope="module")
def lab_host(lab_hosts) -> dict:
    """The first Debian 12 lab host, fresh (reset) for each test module that uses it."""
    from runbook import lab

    name = next(h["name"] for h in lab_hosts
                if (h["flavor"], h["release"]) == ("debian", "12"))
    return lab.reset(name)


@pytest.fixture(scope="session")
def configured_host(tmp_path_factory) -> dict:
    """deb4 made fresh, then one whole default run, signed and anchored (the record is in
    host["record"], the key and allowed_signers beside it): for the tests that need a
    configured host. Each leaves it configured and working as it found it."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root: they boot real target hosts (run `make test` as root)")
    import subprocess

    from runbook import lab
    from runbook.run import runner

    try:
        host = lab.up_host("deb4", checkout=PROJECT, fresh=True)
    except Exception as e:
        pytest.fail(f"the lab could not give a fresh deb4: {e}")
    home = tmp_path_factory.mktemp("configured")
    key = home / "operator"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator",
                    "-f", str(key)], check=True)
    (home / "allowed_signers").write_text(
        "operator@lab.test " + " ".join(key.with_suffix(".pub").read_text().split()[:2]) + "\n")
    record = runner.run(host["params_file"], runs_root=home / "runs", sign_key=key,
                        anchor=home / "anchor.jsonl", echo=lambda *a, **k: None)
    return host | {"record": record, "sign_key": key, "anchor": home / "anchor.jsonl",
                   "allowed_signers": home / "allowed_signers", "home": home}
