"""IMAP (RFC 3501) and POP3 (RFC 1939) as a mail client speaks them, over any asyncio-style
(reader, writer) pair: the TLS connection through the SSH tunnel, or a direct TCP
connection from this machine (the plaintext-login probe). Every line is kept in a
transcript; the replies are read by pure functions, tested without a server."""

from __future__ import annotations

import contextlib
import email
import email.policy
import re
from dataclasses import dataclass, field

from runbook.remote.probes import LineClient, ProbeFailed

HEADER_FIELDS = ("Subject", "Date", "Message-ID", "From", "To")  # what a FETCH shows


class IMAPError(ProbeFailed):
    """An IMAP or POP3 server answered, but not as it must; the message quotes the exchange."""


def quoted(value: str) -> str:
    """An IMAP quoted string (RFC 3501); refuses what a quoted string cannot carry."""
    if any(c in value for c in "\r\n\0") or not value.isascii():
        raise IMAPError("the test password has a line break or a non-ASCII character, "
                              "which an IMAP LOGIN cannot carry as a quoted string")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Response:
    """A tagged IMAP response with the untagged lines before it (literals inline)."""

    tag: str
    status: str  # OK, NO, BAD (or PREAUTH/BYE for a greeting)
    code: str  # the response code in brackets, e.g. PRIVACYREQUIRED, READ-ONLY
    text: str
    untagged: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "OK"


_STATUS = re.compile(r"(?P<tag>\S+) (?P<status>OK|NO|BAD|PREAUTH|BYE)\b ?"
                     r"(?:\[(?P<code>[^\]]*)\] ?)?(?P<text>.*)", re.I)


def parse_status(line: str) -> tuple[str, str, str, str]:
    """(tag, status, code, text) of a status line such as `a1 NO [PRIVACYREQUIRED] …`."""
    match = _STATUS.match(line.strip())
    if not match:
        raise IMAPError(f"not an IMAP status line: {line!r}")
    return (match["tag"], match["status"].upper(), (match["code"] or "").strip(),
            match["text"].strip())


def parse_capabilities(lines: list[str]) -> set[str]:
    """Capabilities from a greeting's [CAPABILITY …] code or `* CAPABILITY …` lines."""
    found: set[str] = set()
    for line in lines:
        match = re.search(r"\[CAPABILITY ([^\]]*)\]", line, re.I) or re.match(
            r"\* CAPABILITY (.*)", line, re.I)
        if match:
            found |= {c.upper() for c in match.group(1).split()}
    return found


def parse_search(untagged: list[str]) -> list[int]:
    """Message numbers from `* SEARCH 1 4 7`."""
    numbers: list[int] = []
    for line in untagged:
        match = re.match(r"\* SEARCH\b(.*)", line, re.I)
        if match:
            numbers += [int(n) for n in match.group(1).split() if n.isdigit()]
    return numbers


def parse_exists(untagged: list[str]) -> int | None:
    for line in untagged:
        match = re.match(r"\* (\d+) EXISTS", line, re.I)
        if match:
            return int(match.group(1))
    return None


def parse_fetched_headers(untagged: list[str]) -> dict[str, str]:
    """The header fields of a `* n FETCH (BODY[HEADER.FIELDS (…)] {k}…)` response."""
    for line in untagged:
        if re.match(r"\* \d+ FETCH", line, re.I) and "\n" in line:
            block = line.split("\n", 1)[1]
            message = email.message_from_string(block, policy=email.policy.default)
            return {name: str(message[name]) for name in HEADER_FIELDS if message[name]}
    return {}


@dataclass
class IMAP(LineClient):
    """One IMAP conversation; `transcript` holds every line, C: ours and S: the server's."""

    error = IMAPError
    count: int = 0

    async def _logical(self) -> str:
        """One response line with any literals ({n} + n bytes) joined in with newlines."""
        line = await self.read_line()
        whole = line
        while (match := re.search(r"\{(\d+)\}$", line)):
            text = await self.read_exactly(int(match.group(1)))
            self.transcript += [f"S: {t}" for t in text.replace("\r\n", "\n").split("\n")]
            line = await self.read_line()
            whole += "\n" + text.replace("\r\n", "\n") + line
        return whole

    async def greeting(self) -> Response:
        line = await self._logical()
        if not line.startswith("* "):
            raise IMAPError(f"not an IMAP greeting: {line!r}\n" + self.shown())
        tag, status, code, text = parse_status(line)
        if status not in ("OK", "PREAUTH"):
            raise IMAPError(f"the server greeted with {status}: {text}\n" + self.shown())
        return Response(tag, status, code, text, [line])

    async def command(self, command: str, *, shown: str | None = None) -> Response:
        self.count += 1
        tag = f"a{self.count}"
        await self.send(f"{tag} {command}", shown=None if shown is None else f"{tag} {shown}")
        untagged = []
        while True:
            line = await self._logical()
            if line.startswith(f"{tag} "):
                _, status, code, text = parse_status(line)
                return Response(tag, status, code, text, untagged)
            untagged.append(line)

    async def expect_ok(self, command: str, *, shown: str | None = None) -> Response:
        response = await self.command(command, shown=shown)
        if not response.ok:
            what = (shown or command).split(" ", 1)[0]
            raise IMAPError(f"{what} was answered {response.status} "
                            f"[{response.code}] {response.text}\n" + self.shown())
        return response

    async def logout(self) -> None:
        with contextlib.suppress(IMAPError, OSError, TimeoutError, EOFError):
            await self.command("LOGOUT")


@dataclass
class POP3(LineClient):
    """One POP3 conversation (RFC 1939), transcript as IMAP's."""

    error = IMAPError

    async def line(self) -> str:
        return await self.read_line()

    async def command(self, command: str, *, shown: str | None = None,
                      expect_ok: bool = True) -> str:
        await self.send(command, shown=shown)
        reply = await self.read_line()
        if expect_ok and not reply.startswith("+OK"):
            raise IMAPError(f"{(shown or command).split(' ', 1)[0]} was answered {reply}\n"
                            + self.shown())
        return reply

    async def multiline(self) -> str:
        lines = []
        while (line := await self.read_line()) != ".":
            lines.append(line[1:] if line.startswith("..") else line)
        return "\n".join(lines)
