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
    """The first Debian lab host, fresh (reset) for each test module that uses it."""
    from runbook import lab

    name = next(h["name"] for h in lab_hosts if h["flavor"] == "debian")
    return lab.reset(name)
