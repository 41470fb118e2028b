"""Kernels forked from a process that has already loaded them, instead of started afresh.

A kernel started as a new process spends about 0.8 s of CPU on its interpreter and its
imports (ipykernel and the package), on every run. That is most of a host's cost in a fleet
on a small machine, where every host starts its own kernel. Importing this module loads
what a kernel needs (`kernel.preload`); the fleet's fork server imports it once, so each
host's process (forked from that server) can fork its kernel from itself with all of it
already in memory, shared page by page.

`Seed.fork()` forks the kernel-to-be at once, before the kernel manager makes any ZeroMQ
context, event loop or thread (none of which survive a fork), and it waits on a pipe for
what `launch` sends: the kernel's arguments (its connection file), environment and working
directory. The kernel is then this process's own child, as a started one is: the provisioner
below hands jupyter_client a Popen-like handle to it, and ipykernel's parent poller ends it
should this process die.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import threading
import time

from jupyter_client.provisioning import LocalProvisioner

from runbook.run import forking, kernel

kernel.preload()


_enabled = False
_KEPT = []  # what a forked kernel inherits and must never free (see _grow)


def enable() -> None:
    """This process forks its kernels from itself from now on (a process that loads the
    kernel's modules on purpose to serve runs: a fleet host's, a warm run's)."""
    global _enabled
    _enabled = True


def can_fork() -> bool:
    """Enabled, and only in a process with one thread (a thread's locks would stay taken
    in the child)."""
    return _enabled and threading.active_count() == 1


class Seed:
    """A forked child that becomes the run's kernel when `launch` tells it how."""

    def __init__(self, pid: int, orders: int):
        self.pid, self.orders = pid, orders

    @classmethod
    def fork(cls) -> Seed:
        read, write = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(write)
            _grow(read, parent)
        os.close(read)
        return cls(pid, write)

    def launch(self, argv: list[str], env: dict, cwd: str) -> Forked:
        order = json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode()
        try:
            with os.fdopen(self.orders, "wb") as pipe:
                pipe.write(order)
        finally:
            self.orders = None
        return Forked(self.pid)

    def discard(self) -> None:
        """A seed never launched: its pipe closed, it ends, and it is reaped."""
        if self.orders is not None:
            os.close(self.orders)
            self.orders = None
            Forked(self.pid).wait(timeout=5)


class Forked:
    """The forked kernel as jupyter_client uses a Popen: poll, wait, signals."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: gone all the same
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class SeedProvisioner(LocalProvisioner):
    """jupyter_client's local provisioner, launching by the seed instead of Popen."""

    seed: Seed | None = None

    async def launch_kernel(self, cmd: list[str], **kwargs):
        env = dict(kwargs.get("env") or os.environ)
        env["JPY_PARENT_PID"] = str(os.getpid())  # as jupyter_client's launch_kernel
        cwd = str(kwargs.get("cwd") or os.getcwd())
        # ipykernel reads JPY_PARENT_PID when imported, here before there was a parent
        argv = [*cmd[cmd.index("-f"):], f"--IPKernelApp.parent_handle={os.getpid()}"]
        self.process = self.seed.launch(argv, env, cwd)
        self.pid, self.pgid, self.cwd = self.process.pid, self.process.pid, cwd
        return self.connection_info


def _grow(orders: int, parent: int) -> None:
    """In the forked child: wait for the launch order, then serve as the kernel."""
    os._exit(forking.outcome(lambda: _become_kernel(orders, parent)))


def _become_kernel(orders: int, parent: int) -> None:
    os.setsid()  # as a started kernel: the terminal's Ctrl-C reaches only the runner
    # The runner killed outright takes its kernel along at once (ipykernel's own poller
    # would take up to a second): its SSH connection, and the host's lock, close with it.
    forking.die_with_parent(parent, signal.SIGKILL)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    # What the parent made is never collected here (frozen): a socket or event loop freed
    # later would close a descriptor number the kernel may be using by then. The parent's
    # event loop stays the parent's; the kernel makes its own.
    gc.freeze()
    _KEPT.append(asyncio.get_event_loop_policy())
    asyncio.set_event_loop_policy(None)
    _close_inherited(keep=orders)
    with os.fdopen(orders, "rb") as pipe:
        order = pipe.read()
    if not order:  # the runner discarded the seed
        return
    order = json.loads(order)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    forking.take_over(order["cwd"], order["env"], order["argv"])
    kernel.serve(order["argv"])


def _close_inherited(keep: int) -> None:
    """The parent's descriptors (its connection to the fleet, its sockets) are not the
    kernel's: a kept copy would hold them open after the parent closed them."""
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
