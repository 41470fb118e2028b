"""The whole switch and the way back (G23) on real lab hosts, for each platform: Debian 12 and
the emulated OpenBSD 5.0 (the guide's) and 7.6.

On a fresh host: the install stage, then a snapshot of every file the plan says the runbook
edits (and /etc/mailer.conf, and root's crontab as `crontab -l` prints it) — the state before
the runbook's first edit —, then the rest of the run (mail delivered and read, the log shows
status=sent; on OpenBSD rc.conf.local holds each entry once, the crontab line is commented,
mailer.conf is Postfix's with the old one kept), a second run changing nothing, 95-rollback,
the snapshot again (byte for byte), a second rollback changing nothing, and a fresh run that
succeeds again.

Hosts: RUNBOOK_TEST_HOST (Debian), RUNBOOK_TEST_OPENBSD50 / RUNBOOK_TEST_OPENBSD76 name a lab
host of one's own (reset first); otherwise the lab's first host of that flavor, reset.
They need root and the lab; they fail (never skip) when the lab cannot start.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

import pytest
from labrun import operations, ssh

from runbook import lab, params
from runbook.ops.operations import Keep, Write
from runbook.run import plan, runner

pytestmark = pytest.mark.lab

PROJECT = Path(__file__).resolve().parent.parent
SETUP = ["00-preflight", "10-install"]
SWITCH = ["20-enable", "30-configure", "40-start", "50-validate", "60-harden"]
FLAVORS = {"debian-12": ("debian", "12", "RUNBOOK_TEST_HOST"),
           "openbsd-5.0": ("openbsd", "5.0", "RUNBOOK_TEST_OPENBSD50"),
           "openbsd-7.6": ("openbsd", "7.6", "RUNBOOK_TEST_OPENBSD76")}
TIMINGS: dict[str, float] = {}


def fresh_host(flavor: str) -> dict:
    name, release, variable = FLAVORS[flavor]
    if os.geteuid() != 0:
        pytest.fail("lab tests need root: they boot real target hosts")
    chosen = os.environ.get(variable)
    try:
        if not chosen:
            hosts = lab.up(1, checkout=PROJECT, flavor=name, release=release)
            chosen = next(h["name"] for h in hosts if h["flavor"] == name
                          and h["release"] == release)
        return lab.reset(chosen)
    except Exception as e:
        pytest.fail(f"the lab could not give a fresh {flavor} host: {e}")


def run(host: dict, tmp: Path, stages: list[str], label: str) -> Path:
    started = time.monotonic()
    run_dir = runner.run(host["params_file"], stages=stages, runs_root=tmp / "runs",
                         echo=lambda *a, **k: None)
    TIMINGS[f"{host['name']} {label}"] = round(time.monotonic() - started, 2)
    return run_dir


def edited_paths(host: dict) -> list[str]:
    """What the plan for this host's parameters says the runbook writes (or lets rcctl
    rewrite), plus mailer.conf, which postfix-enable swaps."""
    loaded = params.load(host["params_file"])
    paths = set()
    for stage_plan in plan.make(loaded, SETUP + SWITCH):
        for entry in stage_plan.entries:
            for step in (entry.plan.steps if entry.plan else []):
                if isinstance(step, Write | Keep):
                    paths.add(step.path)
    if loaded.platform.name == "openbsd":
        paths.add("/etc/mailer.conf")
    return sorted(paths)


def planned_changes(host: dict) -> list[str]:
    """The operations the plan for this host's parameters says will change something."""
    loaded = params.load(host["params_file"])
    return [entry.name for stage_plan in plan.make(loaded, SETUP + SWITCH)
            for entry in stage_plan.entries
            if entry.plan and not entry.plan.skip and not entry.plan.empty]


def snapshot(host: dict, paths: list[str]) -> dict[str, str]:
    """Each path's SHA-256 (or "absent"), and root's crontab as `crontab -l` prints it."""
    script = "; ".join(
        f"if [ -e {shlex.quote(p)} ]; then echo \"$(sha256sum < {shlex.quote(p)} | "
        f"cut -c1-64) {p}\"; else echo 'absent {p}'; fi" for p in paths)
    found = dict(reversed(line.split(" ", 1)) for line in ssh(host, script).splitlines())
    found["crontab -l"] = ssh(host, "crontab -u root -l 2>&1", check=False)
    return found


@pytest.mark.parametrize("flavor", list(FLAVORS))
def test_switch_and_rollback_byte_for_byte_then_a_fresh_run(flavor, tmp_path):
    host = fresh_host(flavor)
    openbsd = flavor.startswith("openbsd")
    paths = edited_paths(host)
    assert ("/etc/rc.conf.local" in paths) == openbsd
    installed = run(host, tmp_path, SETUP, "install")
    assert not operations(installed, "failed")
    before = snapshot(host, paths)  # every file as before the runbook's first edit

    first = run(host, tmp_path, SWITCH, "full run after install")
    TIMINGS[f"{host['name']} fresh full run"] = round(
        TIMINGS.pop(f"{host['name']} install") + TIMINGS[f"{host['name']} full run after install"],
        2)
    assert not operations(first, "failed")
    # what the plan said would change is what changed
    changed = [r["name"] for r in operations(installed, "changed") + operations(first, "changed")]
    assert changed == planned_changes(host)
    _assert_mail_delivered(host, first)
    if openbsd:
        _assert_openbsd_switched(host, flavor)

    again = run(host, tmp_path, SETUP + SWITCH, "re-run")
    assert operations(again, "changed") == [], [r["name"] for r in operations(again, "changed")]
    if openbsd:
        _assert_openbsd_switched(host, flavor)

    back = run(host, tmp_path, ["95-rollback"], "rollback")
    assert not operations(back, "failed")
    assert snapshot(host, paths) == before
    assert "master" not in ssh(host, "ps ax -o comm=")  # Postfix stopped
    if flavor == "openbsd-5.0":
        assert ssh(host, "cat /var/run/sendmail.pid", check=False).strip()  # sendmail back
    if flavor == "openbsd-7.6":
        assert ssh(host, "rcctl check smtpd", check=False).strip() == "smtpd(ok)"
    if flavor == "debian-12":
        assert ssh(host, "systemctl is-enabled postfix", check=False).strip() == "disabled"

    still = run(host, tmp_path, ["95-rollback"], "second rollback")
    assert operations(still, "changed") == []

    after = run(host, tmp_path, SETUP + SWITCH, "fresh run after rollback")
    assert not operations(after, "failed")
    _assert_mail_delivered(host, after)
    if openbsd:
        _assert_openbsd_switched(host, flavor)


def _assert_mail_delivered(host: dict, run_dir: Path) -> None:
    records = [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines()]
    probe = next(r for r in records if r["type"] == "probe" and r["stage"] == "50-validate")
    qid = next(line for line in probe["transcript"] if "queued as" in line).rsplit(" ", 1)[1]
    log = "/var/log/maillog" if "obsd" in host["name"] else "/var/log/mail.log"
    lines = ssh(host, f"grep -F ' {qid}: ' {log}")
    assert "status=sent" in lines and "relay=local" in lines, lines
    read = next(r for r in operations(run_dir) if r["name"].startswith("G19 "))
    assert read["status"] == "ok", read
    subject = next(line for line in probe["transcript"] if line.startswith("C: Subject: "))
    assert subject[12:] in ssh(host, f"cat /var/mail/{host['mail_user']}")  # still there


def _assert_openbsd_switched(host: dict, flavor: str) -> None:
    rc = ssh(host, "cat /etc/rc.conf.local")
    keys = [line.split("=", 1)[0] for line in rc.splitlines() if "=" in line]
    assert len(keys) == len(set(keys)), rc  # each entry exactly once
    if flavor == "openbsd-5.0":
        assert rc == ('sendmail_flags=NO\nsyslogd_flags="-a /var/spool/postfix/dev/log"\n'
                      'pkg_scripts="postfix"\n'), rc
        crontab = ssh(host, "crontab -u root -l")
        assert "\n#*/30\t*\t*\t*\t*\t/usr/sbin/sendmail -L sm-msp-queue -Ac -q\n" in crontab
    else:
        assert rc == "pkg_scripts=postfix\nsmtpd_flags=NO\n", rc
    assert ssh(host, "awk '$1 == \"sendmail\" {print $2}' /etc/mailer.conf").strip() == (
        "/usr/local/sbin/sendmail")
    assert ssh(host, "test -f /etc/mailer.conf.pre-postfix && echo kept").strip() == "kept"


def test_report_timings():
    print("\ntimings (s):", json.dumps(TIMINGS, indent=1))
