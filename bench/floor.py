"""The floor: the install-to-validate job as a bare asyncssh script over one connection.

    .venv/bin/python -m bench.floor --host deb3            # fresh host (reset first)
    .venv/bin/python -m bench.floor --host deb3 --replay RUN_DIR

Fresh: the fewest commands that do what stages 10-install … 50-validate do (install with
services held, main.cf values, aliases, check, start, a test message through an SSH
tunnel, its log line, the mailbox). Replay: the very commands a runbook run recorded in
its audit.jsonl for those stages (a re-run writes no files, so no command needs input),
plus the same SMTP session. No audit, no notebooks, no kernel: what is left is SSH.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import smtplib
import time
from pathlib import Path

import asyncssh

from runbook import lab, params

STAGES = ("10-install", "20-enable", "30-configure", "40-start", "50-validate")


def fresh_commands(p: params.Params) -> list[str]:
    pf = p.postfix
    settings = {
        "mydomain": pf.mydomain, "myhostname": pf.myhostname, "myorigin": pf.myorigin,
        "mydestination": ", ".join(pf.mydestination), "mynetworks": " ".join(pf.mynetworks),
        "mynetworks_style": pf.mynetworks_style,
        "inet_interfaces": ", ".join(pf.inet_interfaces),
        "alias_maps": "hash:/etc/aliases", "alias_database": "hash:/etc/aliases",
        "parent_domain_matches_subdomains": "", **pf.extra_settings,
    }
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in settings.items())
    return [
        "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d",
        "echo 'postfix postfix/main_mailer_type select Internet Site' | debconf-set-selections",
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
        "postfix rsyslog bsd-mailx; rm -f /usr/sbin/policy-rc.d",
        f"postconf -e {assignments}",
        "grep -q '^root:' /etc/aliases || echo 'root: mailtest' >> /etc/aliases; newaliases",
        "systemctl enable -q postfix rsyslog && systemctl start rsyslog",
        "script -qec 'postfix check' /dev/null",
        "systemctl start postfix",
    ]


async def smtp_session(conn, address: str, recipient: str) -> str:
    listener = await conn.forward_local_port("127.0.0.1", 0, address, 25)
    try:
        subject = f"floor {time.time_ns()}"
        smtp = await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", listener.get_port())
        await asyncio.to_thread(smtp.sendmail, "root@localhost", [recipient],
                                f"Subject: {subject}\r\n\r\nfloor\r\n")
        await asyncio.to_thread(smtp.quit)
    finally:
        listener.close()
    return subject


async def floor(p: params.Params, commands: list[str]) -> tuple[float, float]:
    t = p.target
    started = time.perf_counter()
    async with asyncssh.connect(t.host, port=t.port, username=t.user,
                                known_hosts=str(t.known_hosts),
                                client_keys=[str(t.key_file)]) as conn:
        install = 0.0
        for command in commands:
            t0 = time.perf_counter()
            await conn.run(command)
            if "apt-get install" in command:
                install += time.perf_counter() - t0
        recipient = f"{p.postfix.test_recipient}@{p.postfix.myhostname}"
        subject = await smtp_session(conn, p.postfix.inet_interfaces[0], recipient)
        log = ("for i in $(seq 50); do grep -q 'status=sent' /var/log/mail.log && break; "
               "sleep 0.1; done")
        await conn.run(log)
        await conn.run(f"grep -c {shlex.quote(subject)} /var/mail/{p.postfix.test_recipient}")
    return time.perf_counter() - started, install


def replayed_commands(run_dir: Path) -> list[str]:
    records = [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines()]
    return [r["command"] for r in records if r["type"] == "command" and r["stage"] in STAGES]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="deb3")
    parser.add_argument("--replay", type=Path, help="a re-run's folder: replay its commands")
    args = parser.parse_args()
    host = next(h for h in lab.status() if h["name"] == args.host)
    p = params.load(host["params_file"])
    commands = replayed_commands(args.replay) if args.replay else fresh_commands(p)
    total, install = asyncio.run(floor(p, commands))
    kind = f"replay of {len(commands)} commands" if args.replay else "fresh host"
    print(f"floor ({kind}): {total:.2f} s, of which package installation {install:.2f} s")


if __name__ == "__main__":
    main()
