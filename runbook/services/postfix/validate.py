"""Stage 50-validate (G17-G19): a test message through SMTP, the log, the mailbox."""

from __future__ import annotations

import contextlib
import secrets
from datetime import UTC, datetime
from email.utils import format_datetime
from shlex import quote as q

from runbook.ops import facts
from runbook.ops.operations import OperationFailed, Outcome, operation
from runbook.remote import probes
from runbook.remote.probes import SMTP
from runbook.services.dovecot import wanted as dovecot_wanted
from runbook.services.postfix.common import (
    NOT_INSTALLED,
    effective,
    postfix_values,
    prefetch,
    scratch,
)
from runbook.services.postfix.wanted import LOG_WAIT, smtp_address, test_address


def _describe_smtp_session(stage) -> list[str]:
    p = stage.params.postfix
    address = smtp_address(p.inet_interfaces)
    return [f"# SMTP to {address}:25 from the server itself (a TCP connection through the "
            "SSH session, as the guide's telnet localhost smtp):",
            f"#   220 greeting, EHLO {p.myhostname}, MAIL FROM:<root@{p.myhostname}>, "
            f"RCPT TO:<{test_address(stage.params)}>, DATA 354, a message whose subject is "
            "unique to the run, 250 queued as ID, QUIT 221"]


@operation("G17 SMTP session from the server itself", offline=_describe_smtp_session)
async def send_test_message(stage) -> Outcome:
    """The guide's hand-typed SMTP session, through the SSH connection to the server's own
    SMTP port: greeting, EHLO, MAIL FROM, RCPT TO, DATA, the message, QUIT."""
    params = stage.params
    if stage.dry_run:
        return Outcome("", "skipped", "dry run: no test message is sent")
    values = await postfix_values(stage)
    if values is None:
        return Outcome("", "skipped", NOT_INSTALLED)
    address = smtp_address(facts.split_words(values["inet_interfaces"]))
    recipient = test_address(params)
    token = secrets.token_hex(4)
    subject = f"mail-runbook {token} test of run {stage.run_id}"
    message_id = f"{stage.run_id}.{token}@{params.postfix.myhostname}"
    sender = f"root@{params.postfix.myhostname}"
    reader, writer = await stage.target.open_connection(address, 25)
    smtp = SMTP(reader, writer)
    try:
        await smtp.greeting()
        ehlo = await smtp.command(f"EHLO {params.postfix.myhostname}", (250,))
        await smtp.command(f"MAIL FROM:<{sender}>", (250,))
        await smtp.command(f"RCPT TO:<{recipient}>", (250,))
        message = probes.test_message(
            sender=sender, recipient=recipient, subject=subject, message_id=message_id,
            date=format_datetime(datetime.now(UTC)), run_id=stage.run_id)
        queued = await smtp.data(message)
        qid = probes.queue_id(queued)
        await smtp.quit()
    finally:
        with contextlib.suppress(Exception):
            writer.close()
        stage.audit.record("probe", host=stage.target.host, protocol="smtp",
                           transcript=smtp.transcript, via="ssh tunnel", address=address)
    extensions = [line[4:] for line in ehlo.lines[1:]]
    sent = {"queue_id": qid, "subject": subject, "recipient": recipient,
            "message_id": message_id}
    scratch(stage)["sent"] = sent
    return Outcome("", "ok", f"queued as {qid} for {recipient} "
                   f"(EHLO listed {', '.join(extensions)})", evidence=smtp.shown(), value=sent)


def _follow(profile, qid: str) -> str:
    return probes.follow_log_command(q(profile.mail_log), qid, LOG_WAIT,
                                     reader=profile.mail_log_reader)


@operation("G18 the mail log follows the queue id to status=sent",
           offline=lambda stage: [
               f"$ {_follow(stage.platform, 'QUEUEID')}",
               "# QUEUEID from G17: its client, from, to, relay=local, status=sent, removed "
               f"(waits up to {LOG_WAIT:.0f} s)"])
async def follow_mail_log(stage) -> Outcome:
    sent = scratch(stage).get("sent")
    if sent is None:
        return Outcome("", "skipped", "no test message was sent in this stage")
    log = stage.platform.mail_log_shown
    qid = sent["queue_id"]
    result = await stage.run(_follow(stage.platform, qid), check=False,
                             timeout=LOG_WAIT + 15, stream=False)
    delivery = probes.parse_queue_log(result.stdout, qid)
    shown = "\n".join(delivery.lines)
    if delivery.status != "sent":
        why = (f"status={delivery.status} {delivery.status_text}" if delivery.status
               else f"no delivery line within {LOG_WAIT:.0f} s")
        raise OperationFailed(
            f"{log} does not show {qid} delivered ({why}):\n{shown or '(no lines)'}")
    return Outcome("", "ok", f"{qid}: to=<{', '.join(delivery.recipients)}>, relay="
                   f"{delivery.relay}, status=sent" + (", removed" if delivery.removed else ""),
                   evidence=shown, value=delivery)


def _mail_listing(profile, user: str) -> str:
    """The guide's `mail -u USER`, showing the newest header line and leaving with `x`."""
    return f"printf 'f $\\nx\\n' | {profile.mail_reader} -N -u {q(user)}"


def _mailbox(stage) -> str:
    user = stage.params.postfix.test_recipient
    return f"~{user}/Maildir" if dovecot_wanted.postfix_settings(stage.params) else (
        f"{stage.platform.mailbox_dir}/{user}")


def _mailbox_tail(mailbox: str) -> str:
    """The end of an mbox (tail only reads: the mailbox is left as it was)."""
    return f"tail -c 1048576 {q(mailbox)}"


@operation("G19 the recipient's mailbox holds the message (read without changing it)",
           offline=lambda stage: [
               *(f"$ {command}" for command in _mailbox_reads(stage, "<G17's subject>")),
               "# the message with G17's subject is in the mailbox, which is left as it was"])
async def read_mailbox(stage) -> Outcome:
    """The guide's `mail -u USER`, told to show the newest message's header line and leave
    with `x` (no change to the mailbox); then the message itself, read from the end of the
    mailbox file (tail only reads)."""
    sent = scratch(stage).get("sent")
    if sent is None:
        return Outcome("", "skipped", "no test message was sent in this stage")
    profile, mailbox = stage.platform, _mailbox(stage)
    *listing, read = _mailbox_reads(stage, sent["subject"])
    listed = [await stage.run(command, check=False, stream=False) for command in listing]
    result = await stage.run(read, stream=False, quiet=True)
    message = probes.find_message(result.stdout, sent["subject"])
    if message is None:
        raise OperationFailed(f"{mailbox} has no message with subject {sent['subject']!r}, "
                              "though the log says it was delivered")
    token = sent["subject"].split()[1]
    seen = [line for r in listed for line in r.stdout.splitlines() if token in line]
    shown = (f"{profile.mail_reader} -u shows: {seen[0].strip()}" if seen else
             f"({profile.mail_reader} -u did not list it: {listed[0].stdout.strip()[-200:]})"
             if listed else f"found in {mailbox}/{message.get_unixfrom().split(':', 1)[-1]}")
    return Outcome("", "ok", f"{mailbox}: {sent['subject']}",
                   evidence=shown + "\n\n" + probes.show_message(message), value=message)


def _mailbox_reads(stage, subject: str) -> list[str]:
    """The commands that show the message without changing the mailbox: the guide's
    `mail -u` and the mbox's tail; a Maildir (which mail(1) cannot read) by its file."""
    user = stage.params.postfix.test_recipient
    if not dovecot_wanted.postfix_settings(stage.params):
        return [_mail_listing(stage.platform, user), _mailbox_tail(_mailbox(stage))]
    # the user name is validated ([a-z_][a-z0-9_.-]*), so ~user may stay unquoted
    return [f"cd ~{user}/Maildir && f=$(grep -lF -- {q('Subject: ' + subject)} new/* cur/* "
            f"2>/dev/null | tail -n 1) && echo \"From maildir:$f\" && cat \"$f\""]


prefetch("50-validate", lambda stage: [effective(stage)])
