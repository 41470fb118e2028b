"""Talking to the mail server as a client does, and reading what it wrote.

- `LineClient`: what every line-based client here shares (SMTP; IMAP and POP3 in imap.py).
- `SMTP`: a small SMTP client over any asyncio-style (reader, writer) pair: the SSH
  tunnel's (a session from the server itself, as the guide's telnet) or a direct TCP
  connection from this machine (the open-relay probe). Every line is kept in a transcript.
- `parse_queue_log`: the mail log lines of one queue id, as the guide's G18 reads them.
- `find_message`: one message in an mbox mailbox, found without changing the mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import re
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import ClassVar

from runbook.errors import RunbookError

TIMEOUT = 15.0  # seconds for any one SMTP reply
RELAY_REFUSED = (454, 554)


class ProbeFailed(RunbookError):
    """The server answered, but not as it must; the message quotes the exchange."""


@dataclass
class Reply:
    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return " ".join(line[4:] for line in self.lines)


@dataclass
class LineClient:
    """A line-based conversation with a server (SMTP, IMAP, POP3): `transcript` holds every
    line, C: ours and S: the server's, and every read is bounded by `timeout`."""

    reader: object
    writer: object
    timeout: float = TIMEOUT
    transcript: list[str] = field(default_factory=list)
    error: ClassVar[type[Exception]] = ProbeFailed

    async def read_line(self) -> str:
        raw = await asyncio.wait_for(self.reader.readline(), self.timeout)
        if not raw:
            raise self.error("the server closed the connection\n" + self.shown())
        line = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
        line = line.rstrip("\r\n")
        self.transcript.append(f"S: {line}")
        return line

    async def read_exactly(self, size: int) -> str:
        data = await asyncio.wait_for(self.reader.readexactly(size), self.timeout)
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else data

    async def send(self, line: str, *, shown: str | None = None) -> None:
        self.transcript.append(f"C: {shown if shown is not None else line}")
        self.writer.write((line + "\r\n").encode())
        await self.writer.drain()

    def shown(self) -> str:
        return "\n".join(self.transcript)


@dataclass
class SMTP(LineClient):
    """One SMTP conversation."""

    async def reply(self) -> Reply:
        lines = []
        while True:
            line = await self.read_line()
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                break
        code = lines[-1][:3]
        if not code.isdigit():
            raise ProbeFailed(f"not an SMTP reply: {lines[-1]!r}\n" + self.shown())
        return Reply(int(code), lines)

    async def command(self, line: str, expect: tuple[int, ...] = ()) -> Reply:
        await self.send(line)
        reply = await self.reply()
        if expect and reply.code not in expect:
            raise ProbeFailed(
                f"{line.split(':')[0]} was answered {reply.code} "
                f"(expected {' or '.join(map(str, expect))}): {reply.text}\n" + self.shown())
        return reply

    async def greeting(self) -> Reply:
        reply = await self.reply()
        if reply.code != 220:
            raise ProbeFailed(f"greeting {reply.code}, expected 220\n" + self.shown())
        return reply

    async def data(self, message: str) -> Reply:
        await self.command("DATA", (354,))
        for line in message.split("\n"):
            await self.send("." + line if line.startswith(".") else line)
        return await self.command(".", (250,))

    async def quit(self) -> None:
        with contextlib.suppress(ProbeFailed, OSError, TimeoutError):
            await self.command("QUIT")
        self.writer.close()


def queue_id(reply: Reply) -> str:
    match = re.search(r"queued as ([0-9A-Za-z]+)", reply.text)
    if not match:
        raise ProbeFailed(f"the end of DATA was accepted but named no queue id: {reply.text}")
    return match.group(1)


def test_message(*, sender: str, recipient: str, subject: str, message_id: str,
                 date: str, run_id: str) -> str:
    """The validation message: plain headers, a body that says where it came from."""
    return "\n".join([
        f"From: mail-runbook <{sender}>",
        f"To: <{recipient}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <{message_id}>",
        "",
        "This message was sent by mail-runbook's validation stage (guide steps G17-G19)",
        f"to show that Postfix accepts, logs and delivers local mail. Run {run_id}.",
    ])


@dataclass
class Delivery:
    """What the mail log says about one queue id."""

    queue_id: str
    lines: list[str]
    client: str = ""
    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    relay: str = ""
    status: str = ""  # sent, deferred, bounced, expired
    status_text: str = ""
    removed: bool = False

    @property
    def finished(self) -> bool:
        return self.removed or self.status in ("bounced", "deferred", "expired")


def parse_queue_log(text: str, qid: str) -> Delivery:
    """The log lines of `qid` (client, from, to, relay, status, removed)."""
    marker = f" {qid}: "
    found = Delivery(qid, [line for line in text.splitlines() if marker in line])
    for line in found.lines:
        rest = line.split(marker, 1)[1]
        if rest.startswith("client="):
            found.client = rest.split("=", 1)[1].split(",")[0]
        elif rest.startswith("from=<"):
            found.sender = rest[6:].split(">", 1)[0]
        elif rest.startswith("to=<"):
            found.recipients.append(rest[4:].split(">", 1)[0])
            relay = re.search(r"relay=([^,]+)", rest)
            status = re.search(r"status=(\w+)(.*)", rest)
            found.relay = relay.group(1) if relay else found.relay
            if status:
                found.status, found.status_text = status.group(1), status.group(2).strip()
        elif rest.strip() == "removed":
            found.removed = True
    return found


def follow_log_command(log: str, qid: str, seconds: float, reader: str = "") -> str:
    """Wait (on the target, bounded) until the log shows `qid` finished, then print its
    lines: one round trip however long delivery takes. `log` is the (quoted) file, unless
    `reader` is a command that prints the log (the journal)."""
    steps = max(1, int(seconds / 0.1))
    pattern = f"{qid}: (removed|.*status=(bounced|deferred|expired))"
    done, lines = f"grep -Eq '{pattern}'", f"grep -F ' {qid}: '"
    if reader:
        done, lines = f"{reader} 2>/dev/null | {done}", f"{reader} | {lines}"
    else:
        done, lines = f"{done} {log} 2>/dev/null", f"{lines} {log}"
    return (f"i=0; while [ $i -lt {steps} ]; do "
            f"{done} && break; i=$((i+1)); sleep 0.1; done; {lines}")


def split_mbox(text: str) -> list[str]:
    """An mbox's messages (each starting with its 'From ' line)."""
    messages, current = [], []
    previous_blank = True
    for line in text.splitlines(keepends=True):
        if line.startswith("From ") and previous_blank and current:
            messages.append("".join(current))
            current = []
        current.append(line)
        previous_blank = not line.strip()
    if current:
        messages.append("".join(current))
    return [m for m in messages if m.startswith("From ")]


def find_message(mbox: str, subject: str) -> EmailMessage | None:
    """The last message in the mbox with exactly this subject."""
    for raw in reversed(split_mbox(mbox)):
        body = raw.split("\n", 1)[1] if "\n" in raw else ""
        message = email.message_from_string(body, policy=email.policy.default)
        if str(message.get("Subject", "")).strip() == subject:
            message.set_unixfrom(raw.split("\n", 1)[0])
            return message
    return None


def show_message(message: EmailMessage) -> str:
    lines = [message.get_unixfrom() or ""]
    for name in ("Return-Path", "Delivered-To", "From", "To", "Subject", "Date", "Message-ID"):
        if message.get(name):
            lines.append(f"{name}: {message[name]}")
    body = message.get_body(("plain",))
    lines += ["", body.get_content().rstrip() if body else ""]
    return "\n".join(lines)
