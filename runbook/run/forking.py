"""What a process forked to serve another does: a kernel forked by its runner (seed.py), a
run forked by `runbook warm` for its caller (warm.py), a fleet host's process (fleet/child.py).

Standard library only: warm.py's caller side imports it before anything else is loaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import traceback
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent(parent: int, signum: int) -> None:
    """This process gets `signum` when `parent` (the process that forked it) ends."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent:  # the parent ended before prctl took hold
        os.kill(os.getpid(), signum)


def take_over(cwd: str, env: dict, argv: list[str]) -> None:
    """Work where the one served works, with its environment and arguments."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [sys.argv[0], *argv]


def outcome(body: Callable[[], int | None]) -> int:
    """`body`'s exit status as a process's: what it returns, SystemExit's code (as Python
    gives it), or 1 after printing any other exception; stdout and stderr flushed, for the
    caller to end with os._exit (the exit handlers it inherited are its parent's)."""
    try:
        code = body() or 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed stream: nothing more to say there
            stream.flush()
    return code
