"""The floor: the runbook's job done by a bare asyncssh script over one connection.

    .venv/bin/python -m bench.floor JOB.json       # prints {"install": seconds}

A job (written by bench/run.py from a params file, so this process imports nothing but
asyncssh and the standard library, as a hand-written script would) is either

- fresh: the fewest commands that do what the default run does on a fresh host — one
  apt-get for every package (services held), main.cf values, aliases, Dovecot's file and
  certificate, the checks, the starts — then the guide's proofs: a test message through the
  SSH connection, its log line, the mailbox, the relay probe from outside, an IMAP login
  over TLS and the plaintext login refused from outside; or
- replay: the very commands a runbook re-run recorded in its audit.jsonl (a re-run writes
  no files, so none needs input), with the same SMTP session where the runbook had it and
  the log read for the floor's own queue id.

No audit, no notebooks, no kernel: what is left is SSH. bench/run.py times the whole
process (interpreter and imports included), as it times `runbook run`.
"""

from __future__ import annotations

import asyncio
import imaplib
import json
import re
import shlex
import smtplib
import ssl
import sys
import time

import asyncssh

STAGES = ("10-install", "20-enable", "30-configure", "40-start", "50-validate")
QUEUED = re.compile(r"queued as ([0-9A-Za-z]+)")
LOG_WAIT = ("i=0; while [ $i -lt 300 ]; do grep -Eq '{qid}: (removed|.*status=)' {log} && "
            "break; i=$((i+1)); sleep 0.1; done; grep -F ' {qid}: ' {log}")


def fresh_job(p, password: str) -> dict:
    """The default run's job on a fresh Debian host (p: a runbook Params)."""
    pf, dv = p.postfix, p.dovecot
    settings = {
        "mydomain": pf.mydomain, "myhostname": pf.myhostname, "myorigin": pf.myorigin,
        "mydestination": ", ".join(pf.mydestination), "mynetworks": " ".join(pf.mynetworks),
        "mynetworks_style": pf.mynetworks_style,
        "inet_interfaces": ", ".join(pf.inet_interfaces),
        "alias_maps": "hash:/etc/aliases", "alias_database": "hash:/etc/aliases",
        "parent_domain_matches_subdomains": "", **pf.extra_settings,
    }
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in settings.items())
    aliases = "".join(f"{k}: {v}\n" for k, v in pf.aliases.items())
    cert, key = "/etc/dovecot/private/floor.pem", "/etc/dovecot/private/floor.key"
    dovecot_conf = (f"protocols = imap\nlisten = {', '.join(dv.listen)}\n"
                    "mail_location = mbox:~/mail:INBOX=/var/mail/%u\n"
                    "mail_privileged_group = mail\nssl = required\n"
                    f"ssl_cert = <{cert}\nssl_key = <{key}\ndisable_plaintext_auth = yes\n")
    preseed = ("postfix postfix/main_mailer_type select Internet Site\n"
               f"postfix postfix/mailname string {pf.myhostname}\n")
    commands = [
        ["printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; "
         "chmod 755 /usr/sbin/policy-rc.d", None],
        ["debconf-set-selections", preseed],
        ["apt-cache show postfix >/dev/null 2>&1 || apt-get update -q; "
         "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
         "postfix rsyslog bsd-mailx dovecot-imapd; s=$?; rm -f /usr/sbin/policy-rc.d; exit $s",
         None],
        [f"postconf -e {assignments}", None],
        ["cat > /etc/aliases && newaliases", aliases],
        [f"umask 077; openssl req -new -x509 -nodes -newkey rsa:2048 -days 3650 "
         f"-subj /CN={shlex.quote(pf.myhostname)} -keyout {key} -out {cert} 2>/dev/null && "
         f"chmod 644 {cert}", None],
        ["cat > /etc/dovecot/conf.d/99-floor.conf && doveconf -n >/dev/null", dovecot_conf],
        ["script -qec 'postfix check' /dev/null", None],
        ["systemctl enable -q postfix rsyslog dovecot && "
         "systemctl start rsyslog postfix dovecot", None],
    ]
    return {**_target(p), "commands": commands, "smtp_before": None,
            "probes": {"relay": {"address": pf.inet_interfaces[0],
                                 "source": pf.probe_source},
                       "imap": {"address": dv.listen[0], "user": pf.test_recipient,
                                "password": password}}}


def replay_job(p, records: list[dict], stages=STAGES) -> dict:
    """A re-run's commands, from its audit records, in order."""
    commands = [[r["command"], None] for r in records
                if r["type"] == "command" and r.get("stage") in stages]
    log_reads = [i for i, (c, _) in enumerate(commands) if "/var/log/mail.log" in c
                 and "grep -F" in c]
    return {**_target(p), "commands": commands,
            "smtp_before": log_reads[0] if log_reads else None, "probes": {}}


def _target(p) -> dict:
    t, pf = p.target, p.postfix
    return {"host": t.host, "port": t.port, "user": t.user, "key_file": str(t.key_file),
            "known_hosts": str(t.known_hosts),
            "smtp": {"address": pf.inet_interfaces[0], "helo": pf.myhostname,
                     "recipient": f"{pf.test_recipient}@{pf.myhostname}",
                     "mailbox": f"/var/mail/{pf.test_recipient}", "log": "/var/log/mail.log"}}


async def smtp_session(conn, smtp: dict) -> tuple[str, str]:
    """The guide's SMTP session through the SSH connection; (queue id, subject)."""
    reader, writer = await conn.open_connection(smtp["address"], 25)

    async def say(line: str | None, code: int) -> str:
        if line is not None:
            writer.write((line + "\r\n").encode())
        while (reply := (await reader.readline()).decode())[3:4] == "-":
            pass
        if not reply.startswith(str(code)):
            raise RuntimeError(f"{line!r}: {reply!r}")
        return reply

    subject = f"floor {time.time_ns()}"
    await say(None, 220)
    await say(f"EHLO {smtp['helo']}", 250)
    await say(f"MAIL FROM:<root@{smtp['helo']}>", 250)
    await say(f"RCPT TO:<{smtp['recipient']}>", 250)
    await say("DATA", 354)
    queued = await say(f"Subject: {subject}\r\n\r\nfloor\r\n.", 250)
    await say("QUIT", 221)
    writer.close()
    return QUEUED.search(queued).group(1), subject


def relay_refused(probe: dict) -> None:
    """From this machine, outside mynetworks: RCPT to a foreign domain must be refused."""
    with smtplib.SMTP(probe["address"], 25, source_address=(probe["source"], 0),
                      timeout=10) as s:
        s.ehlo("relay-probe.invalid")
        s.mail("probe@relay-probe.invalid")
        code, _ = s.rcpt("relay-test@relay-target.invalid")
    if code not in (454, 554):
        raise RuntimeError(f"relay probe answered {code}")


def imap_login(port: int, probe: dict, subject: str) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # a bare script
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context) as imap:
        imap.login(probe["user"], probe["password"])
        imap.select("INBOX", readonly=True)
        _, found = imap.search(None, "SUBJECT", f'"{subject}"')
        if not found[0]:
            raise RuntimeError("the test message is not in the IMAP INBOX")
    with imaplib.IMAP4(probe["address"], 143) as plain:
        try:
            plain.login(probe["user"], "wrong")
        except imaplib.IMAP4.error:
            return
        raise RuntimeError("a plaintext login was accepted")


async def play(job: dict) -> float:
    """Run the job; returns the seconds apt-get took."""
    install = 0.0
    async with asyncssh.connect(job["host"], port=job["port"], username=job["user"],
                                known_hosts=job["known_hosts"],
                                client_keys=[job["key_file"]]) as conn:
        qid = subject = None
        smtp = job["smtp"]
        for index, (command, given) in enumerate(job["commands"]):
            if index == job["smtp_before"]:
                qid, subject = await smtp_session(conn, smtp)
                command = re.sub(r"\b[0-9A-F]{6,}\b(?=:)", qid, command)
            t0 = time.monotonic()
            await conn.run(command, input=given, check="apt-get install" in command)
            if "apt-get install" in command:
                install += time.monotonic() - t0
        if job["probes"]:  # fresh: the proofs, after the starts
            qid, subject = await smtp_session(conn, smtp)
            await conn.run(LOG_WAIT.format(qid=qid, log=smtp["log"]))
            await conn.run(f"grep -c {shlex.quote(subject)} {smtp['mailbox']}", check=True)
            await asyncio.to_thread(relay_refused, job["probes"]["relay"])
            imap = job["probes"]["imap"]
            listener = await conn.forward_local_port("127.0.0.1", 0, imap["address"], 993)
            try:
                await asyncio.to_thread(imap_login, listener.get_port(), imap, subject)
            finally:
                listener.close()
    return install


def main() -> None:
    with open(sys.argv[1]) as f:
        job = json.load(f)
    print(json.dumps({"install": asyncio.run(play(job))}))


if __name__ == "__main__":
    main()
