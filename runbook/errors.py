"""Errors an operator can act on: each message names what failed and what to do."""


class RunbookError(Exception):
    """Base of every error the runbook reports without a traceback."""


class ParamsError(RunbookError, ValueError):
    """A params file or value was refused; raised before any connection."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "parameters"):
        self.problems = problems
        self.source = source
        lines = [f"{source}: {len(problems)} invalid field(s), nothing was run:"]
        lines += [f"  {field}: {reason}" for field, reason in problems]
        super().__init__("\n".join(lines))


class TargetError(RunbookError):
    """Something went wrong talking to the target host."""


class HostUnreachable(TargetError):
    pass


class AuthenticationRefused(TargetError):
    pass


class HostKeyUnknown(TargetError):
    pass


class HostKeyChanged(TargetError):
    pass


class PrivilegeRefused(TargetError):
    pass


class TargetBusy(RunbookError):
    """Another run holds the target's lock (remote/lock.py)."""


class CommandFailed(TargetError):
    """A remote command exited non-zero; carries its result for the record."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


class CommandTimeout(CommandFailed):
    pass


class AuditError(RunbookError):
    pass


class LabError(RunbookError):
    pass


def verdict_of(kind: type | None) -> str:
    """How a run ended, for the journal its lock keeps on the host (remote/lock.py), from the
    exception that ended it (None: none did). A failed stage restored that stage's files."""
    return ("ok" if kind is None else
            "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed")
