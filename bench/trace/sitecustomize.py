"""Timing probes for bench/profile.py, loaded by every Python process of a profiled run.

bench/profile.py puts this folder first on PYTHONPATH and names a trace file in
RUNBOOK_TRACE; Python then imports this module at start-up in the `runbook` process and
in its kernel alike. Each probe wraps a function of the package once its module is
imported and appends one JSON line per call: process, name, start, end (seconds since boot,
shared by all processes). Without RUNBOOK_TRACE it does nothing. Never part of a real run.
"""

import functools
import importlib.abc
import importlib.util
import inspect
import json
import os
import sys
import time

TRACE = os.environ.get("RUNBOOK_TRACE")


def now() -> float:
    """Seconds since boot: the clock /proc/PID/stat counts a process's start in."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _born() -> float:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")

# module -> functions to time ("Class.method" for methods); missing ones are skipped, so
# the probes outlive a refactoring that renames a function (the table then lacks that row).
PROBES = {
    "runbook.cli": ["main"],
    "runbook.params": ["load"],
    "runbook.run.runner": ["run", "_record_run_start", "_kernel.__enter__", "_kernel.__exit__",
                           "_record_stage", "_recover"],
    "runbook.run.kernel": ["Kernel.__init__", "Kernel.ready", "Kernel.open_run",
                           "Kernel.recover_run", "Kernel.close_run", "Kernel.stop",
                           "open_run", "recover_run", "close_run"],
    "runbook.run.engine": [],
    "runbook.run.warm": ["*"],
    "runbook.remote.lock": ["TargetLock.__enter__", "TargetLock.__exit__",
                            "TargetLock._acquire", "TargetLock._release", "hold", "release"],
    "runbook.remote.recovery": ["inspect"],
    "runbook.remote.ssh": ["open_session"],
    "runbook.remote.target": ["Target.run"],
    "runbook.audit": ["Audit.record", "update_run_json", "Audit.flush"],
    "runbook.run.stage": ["begin", "end"],
    "runbook.platforms": ["detect"],
    "papermill": ["execute_notebook"],
    "papermill.execute": ["load_notebook_node", "parameterize_notebook",
                          "prepare_notebook_metadata", "write_ipynb",
                          "raise_for_execution_errors"],
    "papermill.engines": ["NotebookExecutionManager.save",
                          "NotebookExecutionManager.notebook_start",
                          "NotebookExecutionManager.notebook_complete",
                          "NotebookExecutionManager.cell_start",
                          "NotebookExecutionManager.cell_complete"],
    "nbclient.client": ["NotebookClient.async_execute_cell"],
    "ipykernel.kernelapp": ["IPKernelApp.initialize", "IPKernelApp.start",
                            "IPKernelApp.init_sockets", "IPKernelApp.init_kernel",
                            "IPKernelApp.init_shell", "IPKernelApp.init_gui_pylab",
                            "IPKernelApp.init_extensions", "IPKernelApp.init_code",
                            "IPKernelApp.init_heartbeat", "IPKernelApp.init_io"],
    "jupyter_client.blocking.client": ["BlockingKernelClient.wait_for_ready"],
    "runbook.ops.operations": ["record", "apply"],
}
IMPORTS = {"runbook.cli", "runbook.run.runner", "runbook.run.stage", "papermill",
           "asyncssh", "runbook.services.postfix", "runbook.services.dovecot",
           "runbook.platforms", "jupyter_client", "ipykernel.kernelapp", "runbook.params"}


def _process() -> str:
    argv = " ".join(sys.argv) if hasattr(sys, "argv") else ""
    return "kernel" if "ipykernel" in argv or "-f" in sys.argv[1:2] else "runner"


def emit(name: str, start: float, end: float, **extra) -> None:
    line = json.dumps({"pid": os.getpid(), "name": name, "start": start, "end": end, **extra})
    fd = os.open(TRACE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _label(name, args, kwargs) -> dict:
    """What tells one call from another in the table: the stage, the command."""
    extra = {}
    if name == "execute_notebook" and args:
        extra["notebook"] = os.path.basename(str(args[0]))
    if name == "Target.run" and len(args) > 1:
        extra["command"] = str(args[1])[:60]
    if name == "begin" and args:
        extra["stage"] = args[0]
    return extra


def _timed(qualname, function):
    if inspect.iscoroutinefunction(function):
        @functools.wraps(function)
        async def wrapper(*args, **kwargs):
            start = now()
            try:
                return await function(*args, **kwargs)
            finally:
                emit(qualname, start, now(), **_label(qualname, args, kwargs))
    else:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = now()
            try:
                return function(*args, **kwargs)
            finally:
                emit(qualname, start, now(), **_label(qualname, args, kwargs))
    return wrapper


def _patch(module_name: str, module) -> None:
    for qualname in PROBES.get(module_name, ()):
        if qualname == "*":
            names = [n for n, f in vars(module).items()
                     if inspect.isfunction(f) and f.__module__ == module_name]
        else:
            names = [qualname]
        for name in names:
            owner, _, attr = name.rpartition(".")
            holder = getattr(module, owner, None) if owner else module
            function = getattr(holder, attr, None) if holder is not None else None
            if callable(function):
                label = name if qualname != "*" else f"{module_name.rsplit('.', 1)[1]}.{name}"
                setattr(holder, attr, _timed(label, function))


class _Hook(importlib.abc.MetaPathFinder):
    """Times the import of the modules in IMPORTS and patches those in PROBES once loaded."""

    def __init__(self):
        self.busy: set[str] = set()

    def find_spec(self, name, path=None, target=None):
        if name in self.busy or (name not in PROBES and name not in IMPORTS):
            return None
        self.busy.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy.discard(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def timed_exec(module):
            start = now()
            exec_module(module)
            emit(f"import {name}", start, now())
            _patch(name, module)
        spec.loader.exec_module = timed_exec
        return spec


if TRACE:
    sys.meta_path.insert(0, _Hook())
    emit("python started", _born(), now(), process=_process(),
         argv=getattr(sys, "argv", [])[:3])
