"""A cap on SSH handshakes under way at once, shared by every process of a fleet run.

sshd drops new connections once `MaxStartups` (10:30:100 by default: from 10) of them are
still unauthenticated. A fleet opens two connections a host (the run lock, then the stages'
kernel), from many processes at once, so the cap lives outside any one process: N lock files
in a directory named by RUNBOOK_SSH_SLOTS ("DIR:N"), one held (flock) for the length of a
handshake. A process that dies lets go of its slot with its file descriptors.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from contextlib import asynccontextmanager
from pathlib import Path

ENV = "RUNBOOK_SSH_SLOTS"
POLL = 0.02  # s between tries while every slot is taken


def spec(directory: Path, count: int) -> str:
    """The value of RUNBOOK_SSH_SLOTS for `count` slots in `directory`."""
    return f"{directory}:{count}"


@asynccontextmanager
async def handshake():
    """Hold one slot while the body connects; no cap when RUNBOOK_SSH_SLOTS is unset."""
    value = os.environ.get(ENV)
    if not value:
        yield
        return
    directory, _, count = value.rpartition(":")
    fd = await _take(Path(directory), max(1, int(count)))
    try:
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


async def _take(directory: Path, count: int) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    while True:
        for slot in range(count):
            fd = os.open(directory / f"slot-{slot}", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                os.close(fd)
        await asyncio.sleep(POLL)
