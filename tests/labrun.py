"""Helpers shared by the lab integration tests: run stages, read the record, ssh in."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from runbook import lab
from runbook.run import runner


def booted(name: str, **options) -> dict:
    """Lab host `name`, booted for this checkout (`lab.up_host` options: fresh, release);
    the test fails, loudly, when it cannot be (not root, the lab not set up)."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root: they boot real target hosts (run `make test` as root)")
    try:
        return lab.up_host(name, checkout=Path(__file__).resolve().parents[1], **options)
    except Exception as e:  # the message says what is missing and how to fix it
        pytest.fail(f"the lab could not start {name}: {e}")


def module_host(request, variable: str = "RUNBOOK_TEST_HOST") -> dict:
    """The module's fresh lab host, or (VARIABLE=debN) a host of one's own, reset."""
    name = os.environ.get(variable)
    if not name:
        return request.getfixturevalue("lab_host")
    try:
        return lab.reset(name)
    except Exception as e:
        pytest.fail(f"the lab could not reset {name}: {e}")


def run(tmp: Path, params: dict | str | Path, names: list[str], *, dry_run: bool = False,
        expect_failure: bool = False, timings: dict | None = None) -> Path:
    """`runbook run` of these stages; params as a file or as a dict written to one."""
    if isinstance(params, dict):
        path = tmp / f"params-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(params))
        params = path
    started = time.monotonic()
    try:
        run_dir = runner.run(params, stages=list(names), dry_run=dry_run,
                             runs_root=tmp / "runs", echo=lambda *a, **k: print(*a))
    except runner.StageFailed:
        if not expect_failure:
            raise
        return max((tmp / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    finally:
        if timings is not None:
            label = f"{len(timings) + 1}. {'dry run ' if dry_run else ''}{names[0]}..{names[-1]}"
            timings[label] = time.monotonic() - started
    assert not expect_failure, "the run was expected to fail"
    return run_dir


def audit(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines()]


def operations(run_dir: Path, status: str | None = None) -> list[dict]:
    return [r for r in audit(run_dir) if r["type"] == "operation"
            and (status is None or r["status"] == status)]


def ssh(host: dict, command: str, *, check: bool = True) -> str:
    """A command on the host as its params' user, as root through doas/sudo when set."""
    settings = yaml.safe_load(Path(host["params_file"]).read_text())["target"]
    if settings.get("privilege", "none") != "none":
        command = f"{settings['privilege']} sh -c {shlex.quote(command)}"
    result = subprocess.run(
        ["ssh", "-i", host["key_file"], "-o", f"UserKnownHostsFile={host['known_hosts']}",
         "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
         f"{settings['user']}@{host['address']}", command],
        capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{command!r} on {host['name']} exited {result.returncode}: "
                             f"{result.stderr}")
    return result.stdout


def listening_after_reboot(host: dict, port: int, process: str) -> str:
    """Reboot the lab host, then wait (bounded) until `process` listens on `port` again;
    returns what `ss` shows for that port."""
    lab.reboot(host["name"])
    for _ in range(100):
        sockets = ssh(host, f"ss -Hltnp 'sport = :{port}'", check=False)
        if process in sockets:
            break
        time.sleep(0.1)
    return sockets
