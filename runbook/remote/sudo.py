"""sudo with a password, safely: the password is read on this machine from the reference the
params give (target.sudo_password_env or sudo_password_file), and written to `sudo -S` on
stdin only when sudo asks for it, seen by its own prompt on stderr. It is never on a command
line, never sent when sudo does not ask (a cached or NOPASSWD sudo would hand it to the
command as its input), and never sent twice: a second prompt means the password was wrong,
and the command ends there, at once, naming the field. doas takes no password (the model
refuses one): OpenBSD's doas -n cannot be given one non-interactively.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from shlex import quote as q

from runbook.errors import PrivilegeRefused

PROMPT = "[mail-runbook: sudo password]"  # no %: sudo expands %-escapes in its prompt
AUTHED = "__mail_runbook_sudo_ok__"  # printed by the command once sudo let it run
RETRY = "Sorry, try again."


def reference(params) -> str:
    """The field naming the password, as a message says it."""
    if params.sudo_password_env:
        return f"target.sudo_password_env ({params.sudo_password_env})"
    return f"target.sudo_password_file ({params.sudo_password_file})"


def describe(params) -> str:
    """How the login user becomes root, as `validate --show-target` says it (never the
    password: only where it is read from)."""
    if params.privilege == "none":
        return "none: the login user runs every command itself (root, or nothing works)"
    if params.privilege == "doas":
        return "doas -n: passwordless only (a `permit nopass` rule)"
    if params.sudo_password_env or params.sudo_password_file:
        return f"sudo -S, its password read from {reference(params)}, fed when sudo asks"
    return "sudo -n: passwordless only (a NOPASSWD rule)"


def read_password(params) -> str | None:
    """The sudo password the params refer to, read now; None when they name none."""
    if getattr(params, "sudo_password_env", None):
        value = os.environ.get(params.sudo_password_env)
        if not value:
            raise PrivilegeRefused(f"target.sudo_password_env names {params.sudo_password_env}, "
                                   "which is not set (or empty) in this process's environment")
        return value
    if getattr(params, "sudo_password_file", None):
        path = Path(params.sudo_password_file).expanduser()
        try:
            value = path.read_text().rstrip("\r\n")
        except OSError as e:
            raise PrivilegeRefused(f"cannot read target.sudo_password_file {path}: "
                                   f"{e.strerror or e}") from None
        if not value:
            raise PrivilegeRefused(f"target.sudo_password_file {path} is empty")
        return value
    return None


def wrap(command: str) -> str:
    """`command` under `sudo -S`, which reads the password from stdin after its prompt."""
    return f"exec sudo -S -p {q(PROMPT)} sh -c {q(command)}"


class Prompts:
    """sudo's stderr before the command runs: finds its prompts, keeps everything else."""

    def __init__(self):
        self.seen = 0
        self.pending = b""

    def feed(self, data: bytes) -> tuple[bytes, str | None]:
        """(stderr to keep, "ask" | "wrong" | None): ask on the first prompt, wrong on the
        next (sudo asks again only after a wrong password)."""
        text = self.pending + data
        mark = PROMPT.encode()
        if mark not in text:
            keep = len(text) - len(mark)  # a prompt may arrive split over two packets
            self.pending = text[max(keep, 0):]
            return text[:max(keep, 0)], None
        before, _, after = text.partition(mark)
        self.pending = after
        self.seen += 1
        kept = before.replace(RETRY.encode() + b"\n", b"")
        return kept, "ask" if self.seen == 1 else "wrong"

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        return rest


def wrong(params, user: str, dest: str) -> PrivilegeRefused:
    return PrivilegeRefused(
        f"{dest}: sudo refused the password from {reference(params)} for {user} — check that "
        "it is that user's password (it was tried once; nothing ran)")


async def answer(process, password: str, params, user: str, dest: str, timeout: float) -> None:
    """For a long-lived process (the run lock) started as `wrap("echo AUTHED; …")`: feed the
    password when sudo asks, and return once the command runs (its first line is AUTHED)."""
    prompts = Prompts()
    first = asyncio.ensure_future(process.stdout.readline())
    try:
        async with asyncio.timeout(timeout):
            while not first.done():
                chunk = asyncio.ensure_future(process.stderr.read(4096))
                await asyncio.wait({first, chunk}, return_when=asyncio.FIRST_COMPLETED)
                if not chunk.done():
                    chunk.cancel()
                    break
                data = chunk.result()
                data = data.encode() if isinstance(data, str) else data
                if not data:  # sudo ended without running the command
                    await first
                    break
                _, event = prompts.feed(data)
                if event == "ask":
                    process.stdin.write(password + "\n")
                elif event == "wrong":
                    process.stdin.write_eof()
                    raise wrong(params, user, dest)
            line = await first
    except TimeoutError:
        raise PrivilegeRefused(f"{dest}: sudo did not let the command run within {timeout:g} s "
                               f"({reference(params)})") from None
    finally:
        if not first.done():
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
    if line.strip() != AUTHED:
        said = line.strip() or "no output"
        raise PrivilegeRefused(f"{dest}: sudo did not run the command ({said}): is {user} "
                               "allowed to use sudo?")
