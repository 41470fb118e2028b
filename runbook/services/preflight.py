"""Preflight: what is on the host before anything changes (one read-only survey).

The survey is one portable shell script (Debian and OpenBSD alike) whose output is
sections of lines; `parse_survey` is a pure function of that text. One round trip
answers every question the later stages depend on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from shlex import quote as q

from runbook.ops.operations import Outcome, record

# Settings the runbook manages; any other non-default main.cf setting is reported.
MANAGED = {
    "mydomain", "myhostname", "myorigin", "mydestination", "mynetworks", "mynetworks_style",
    "inet_interfaces", "alias_maps", "alias_database", "parent_domain_matches_subdomains",
}
MTA_PROCESSES = {"master": "postfix", "exim4": "exim4", "exim": "exim", "sendmail": "sendmail",
                 "smtpd": "smtpd (OpenSMTPD)", "nullmailer-send": "nullmailer"}
PORTS = (25, 143, 993)

_SURVEY = r"""
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
echo '@@ clock'; date -u +%Y-%m-%dT%H:%M:%SZ
echo '@@ sendmail'
if [ -f /etc/mailer.conf ]; then awk '$1 == "sendmail" { print $2 }' /etc/mailer.conf
elif [ -e /usr/sbin/sendmail ]; then readlink -f /usr/sbin/sendmail; fi
echo '@@ processes'; ps -ax -o comm= 2>/dev/null | sort -u
echo '@@ postconf'; postconf -n 2>/dev/null && echo '# present'
echo '@@ listening'
if command -v ss >/dev/null; then ss -Hltnp 2>/dev/null | grep 'users:'
else netstat -an -p tcp 2>/dev/null | grep LISTEN; fi
echo '@@ disk'; df -Pk /var | tail -n 1
echo '@@ resolves'; getent hosts {host} 2>/dev/null || grep -w {host} /etc/hosts 2>/dev/null
echo '@@ recipient'; id {user} 2>/dev/null && ls -ld {mailbox} 2>/dev/null
"""


@dataclass
class Survey:
    clock: datetime | None = None
    sendmail: str = ""  # what /usr/sbin/sendmail runs
    mta_running: list[str] = field(default_factory=list)
    postfix_present: bool = False
    postconf: dict[str, str] = field(default_factory=dict)
    listening: dict[int, list[str]] = field(default_factory=dict)
    var_free_mb: int | None = None
    hostname_resolves: str = ""
    recipient: str = ""
    mailbox: str = ""

    @property
    def unmanaged(self) -> dict[str, str]:
        """Non-default settings the runbook will leave as they are."""
        return {k: v for k, v in self.postconf.items() if k not in MANAGED}


def survey_command(myhostname: str, user: str, mailbox_dir: str = "/var/mail") -> str:
    return _SURVEY.replace("{host}", q(myhostname)).replace("{user}", q(user)).replace(
        "{mailbox}", q(f"{mailbox_dir}/{user}"))


def parse_survey(text: str) -> Survey:
    sections = _sections(text)
    survey = Survey()
    clock = "".join(sections.get("clock", [])).strip()
    if clock:
        survey.clock = datetime.strptime(clock, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    survey.sendmail = "".join(sections.get("sendmail", [])).strip()
    running = {line.strip().rsplit("/", 1)[-1] for line in sections.get("processes", [])}
    if "master" in running:
        running.discard("smtpd")  # Postfix's own SMTP server, not OpenSMTPD
    survey.mta_running = sorted({name for proc, name in MTA_PROCESSES.items() if proc in running})
    postconf = sections.get("postconf", [])
    survey.postfix_present = "# present" in postconf
    survey.postconf = parse_postconf([line for line in postconf if line != "# present"])
    survey.listening = _listeners(sections.get("listening", []))
    disk = "".join(sections.get("disk", [])).split()
    if len(disk) >= 4 and disk[3].isdigit():
        survey.var_free_mb = int(disk[3]) // 1024
    survey.hostname_resolves = " ".join("".join(sections.get("resolves", [])).split())
    recipient = sections.get("recipient", [])
    survey.recipient = recipient[0] if recipient else ""
    survey.mailbox = recipient[1] if len(recipient) > 1 else ""
    return survey


def parse_postconf(lines: list[str]) -> dict[str, str]:
    """`postconf -n` output as a dict (continuation lines folded)."""
    settings: dict[str, str] = {}
    key = None
    for line in lines:
        if line[:1].isspace() and key:
            settings[key] += " " + line.strip()
        elif " = " in line or line.rstrip().endswith(" ="):
            key, _, value = line.partition("=")
            key = key.strip()
            settings[key] = value.strip()
    return settings


def _sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@@ "):
            current = line[3:].strip()
            sections[current] = []
        elif current and line.strip():
            sections[current].append(line)
    return sections


def _listeners(lines: list[str]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for line in lines:
        for token in line.split():
            match = re.fullmatch(r"(.+)[:.](\d+)", token)
            if match and int(match.group(2)) in PORTS:
                owners = sorted(set(re.findall(r'\("([^"]+)",pid=', line)))
                label = match.group(1) + (f" ({', '.join(owners)})" if owners else "")
                found.setdefault(int(match.group(2)), []).append(label)
                break
    return found


# --- what the notebook cells call -------------------------------------------------------

async def survey(stage) -> Survey:
    """Read every preflight fact in one command."""
    p = stage.params.postfix
    mail_dir = getattr(stage.platform, "mailbox_dir", "/var/mail")
    result = await stage.run(survey_command(p.myhostname, p.test_recipient, mail_dir),
                             check=False, stream=False)
    facts = parse_survey(result.stdout)
    stage.audit.record("fact", name="preflight survey", value=_as_record(facts))
    return facts


def show_platform(stage) -> None:
    profile = stage.platform
    print(f"{stage.target.host}: {profile.name} {profile.release} "
          f"(host key {stage.target.fingerprint})")
    _result(stage, "platform supported", "ok", f"{profile.name} {profile.release}")


def show_mail_system(stage, facts: Survey) -> None:
    print(f"/usr/sbin/sendmail runs: {facts.sendmail or 'nothing (no MTA installed)'}")
    print(f"mail servers running: {', '.join(facts.mta_running) or 'none'}")
    if not facts.postfix_present:
        print("Postfix: not installed yet")
    else:
        print(f"Postfix: installed, {len(facts.postconf)} settings differ from its defaults")
        for key, value in sorted(facts.unmanaged.items()):
            print(f"  not managed by the runbook, left as is: {key} = {value}")
    _result(stage, "mail system surveyed", "ok", ", ".join(facts.mta_running) or "none")


def show_listeners(stage, facts: Survey) -> None:
    for port in PORTS:
        owners = facts.listening.get(port)
        print(f"port {port}: {'listening on ' + ', '.join(owners) if owners else 'free'}")
    _result(stage, "ports surveyed", "ok", str(facts.listening))


def check_resources(stage, facts: Survey) -> None:
    """Free disk in /var and the clock: a full /var or a wrong clock breaks mail quietly."""
    skew = (facts.clock - datetime.now(UTC)).total_seconds() if facts.clock else None
    print(f"free in /var: {facts.var_free_mb} MB; target clock {facts.clock} "
          f"({skew:+.0f} s from this machine)" if skew is not None else "clock unknown")
    problems = []
    if facts.var_free_mb is not None and facts.var_free_mb < 100:
        problems.append(f"only {facts.var_free_mb} MB free in /var (the queue and mailboxes)")
    if skew is not None and abs(skew) > 300:
        problems.append(f"the target's clock is {skew:+.0f} s off: fix NTP first")
    _result(stage, "disk and clock", "failed" if problems else "ok", "; ".join(problems))
    if problems:
        raise PreflightFailed("; ".join(problems))


def check_names(stage, facts: Survey) -> None:
    p = stage.params.postfix
    if facts.hostname_resolves:
        print(f"{p.myhostname} resolves on the target: {facts.hostname_resolves}")
    else:
        print(f"warning: {p.myhostname} does not resolve on the target; local delivery works, "
              "mail from other hosts needs DNS (or /etc/hosts) for it")
    if not facts.recipient:
        _result(stage, "test recipient exists", "failed", p.test_recipient)
        raise PreflightFailed(
            f"the test recipient {p.test_recipient!r} has no account on {stage.target.host}: "
            "create it (useradd -m) or set postfix.test_recipient to an existing user"
        )
    print(f"test recipient: {facts.recipient}")
    print(f"mailbox: {facts.mailbox or 'none yet (created on first delivery)'}")
    _result(stage, "test recipient exists", "ok", facts.recipient)


class PreflightFailed(Exception):
    pass


def _result(stage, name: str, status: str, detail: str = "") -> None:
    record(stage, Outcome(name, status, detail))


def _as_record(facts: Survey) -> dict:
    return {
        "sendmail": facts.sendmail, "mta_running": facts.mta_running,
        "postfix_present": facts.postfix_present, "unmanaged": facts.unmanaged,
        "listening": {str(k): v for k, v in facts.listening.items()},
        "var_free_mb": facts.var_free_mb, "hostname_resolves": facts.hostname_resolves,
        "recipient": facts.recipient,
    }
