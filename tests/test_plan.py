"""`runbook plan`: the whole run for a fresh host, made without connecting, checked against
golden files (regenerate them with UPDATE_GOLDEN=1 after reviewing the difference)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from runbook import params
from runbook.cli import main as cli_main
from runbook.remote import target
from runbook.run import plan

PROJECT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
# The default run: the Postfix stages and Dovecot's.
STAGES = ["00-preflight", "10-install", "20-enable", "30-configure", "40-start",
          "50-validate", "60-harden", "70-dovecot"]
EXAMPLES = ["example-openbsd", "example-openbsd-7", "example-debian", "example-debian-13"]


def rendered(name: str) -> str:
    source = f"params/{name}.yaml"
    loaded = params.load(PROJECT / source)
    return plan.render(plan.make(loaded, STAGES), loaded, source)


@pytest.fixture(autouse=True)
def no_connection(monkeypatch):
    async def refuse(*_args, **_kwargs):
        raise AssertionError("a plan must not connect")

    monkeypatch.setattr(target.Target, "connect", refuse)


@pytest.mark.parametrize("name", EXAMPLES)
def test_plan_matches_its_golden_file(name):
    golden = GOLDEN / f"plan-{name}.txt"
    text = rendered(name)
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"the plan differs from {golden}; review, then regenerate"


def _positions(text: str, markers: list[str]) -> list[int]:
    found = [text.find(marker) for marker in markers]
    assert -1 not in found, [m for m, i in zip(markers, found, strict=True) if i == -1]
    return found


def test_the_guides_plan_follows_the_guides_order():
    text = rendered("example-openbsd")
    order = [
        "$ pkg_add postfix-2.8.7-mysql",  # G1
        "cp -R /usr/local/share/doc/postfix/html /var/www/htdocs/manual/postfix",  # G2
        "$ /usr/local/sbin/postfix-enable",  # G3
        "+sendmail_flags=NO",  # G4
        '+syslogd_flags="-a /var/spool/postfix/dev/log"',  # G5
        '+pkg_scripts="postfix"',  # G6
        "+#*/30\t*\t*\t*\t*\t/usr/sbin/sendmail -L sm-msp-queue -Ac -q",  # G7
        "$ kill -HUP $(cat /var/run/syslog.pid)",  # G8
        "+mydomain = example.org",  # G9
        "+mynetworks = 192.0.2.0/23 [::1]/128",  # G10
        "+alias_maps = hash:/etc/postfix/aliases",  # G11
        "$ /usr/local/sbin/postalias hash:/etc/postfix/aliases",
        "+parent_domain_matches_subdomains =",  # G12
        "/usr/local/sbin/postfix check",  # G14
        "G15 postconf -n",
        "pid=$(head -1 /var/run/sendmail.pid)",  # G13, after the checks
        "$ /etc/rc.d/postfix start",  # G16
        "G17 SMTP session",
        "G18 the mail log", "grep -F ' QUEUEID: ' /var/log/maillog",
        "mail -N -u samt",  # G19
        "G20 files Postfix's chrooted services need",
        "G21 open-relay probe",
    ]
    positions = _positions(text, order)
    assert positions == sorted(positions)


def test_today_openbsd_uses_rcctl_and_replaces_smtpd():
    text = rendered("example-openbsd-7")
    positions = _positions(text, ["$ rcctl disable smtpd", "$ rcctl enable postfix",
                                  "$ rcctl stop smtpd", "$ rcctl start postfix"])
    assert positions == sorted(positions)
    assert "sendsyslog(2)" in text and "kill -HUP" not in text
    assert "+root: samt" in text and "/etc/mail/aliases" in text
    assert "keep a copy of /etc/rc.conf.local" in text


def test_a_plan_needs_the_platform_named(tmp_path):
    data = (PROJECT / "params/example-debian.yaml").read_text().replace(
        "name: debian", "name: auto")
    loaded = params.validate(**yaml.safe_load(data))
    with pytest.raises(plan.PlanError, match=r"platform\.name and platform\.release"):
        plan.make(loaded)


def test_runbook_plan_prints_the_plan(capsys):
    assert cli_main(["plan", str(PROJECT / "params/example-openbsd.yaml"),
                     "--stages", ",".join(STAGES)]) == 0
    out = capsys.readouterr().out
    assert "$ pkg_add postfix-2.8.7-mysql" in out and "== 60-harden" in out
