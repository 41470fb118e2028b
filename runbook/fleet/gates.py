"""When a host may start its next stage, and when the fleet stops starting new work.

Every host asks its gate before each stage. The free strategy lets it go at once; the linear
strategy holds it until every host of its batch still running has reached the same stage,
and lets `forks` of them run that stage at a time. Either way the gate says stop once the
fleet is stopping (Ctrl-C, or too many failures): each host ends after the stage it is in.
"""

from __future__ import annotations

import math
import re
import threading

from runbook.errors import ParamsError


class Stop:
    """Why the fleet stopped starting new work, once it has."""

    def __init__(self):
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        self.reason = self.reason or reason


class FreeGate:
    def __init__(self, stop: Stop):
        self.stop = stop

    def __call__(self, name: str, stage: str) -> str | None:
        return self.stop.reason

    def finished(self, name: str) -> None:
        pass


class LinearGate:
    """Stage k runs on every host of the batch before any host starts stage k+1."""

    def __init__(self, stop: Stop, names: list[str], forks: int):
        self.stop, self.forks = stop, forks
        self.active = set(names)
        self.arrived: dict[str, set[str]] = {}
        self.running: set[str] = set()  # hosts holding one of the forks
        self.changed = threading.Condition()

    def __call__(self, name: str, stage: str) -> str | None:
        with self.changed:
            self.running.discard(name)
            self.arrived.setdefault(stage, set()).add(name)
            self.changed.notify_all()
            while not self.stop.reason and not (
                    self.active <= self.arrived[stage] and len(self.running) < self.forks):
                self.changed.wait(0.5)
            if self.stop.reason:
                return self.stop.reason
            self.running.add(name)
            return None

    def finished(self, name: str) -> None:
        with self.changed:
            self.active.discard(name)
            self.running.discard(name)
            self.changed.notify_all()


def batches(names: list[str], serial: str | None) -> list[list[str]]:
    """The hosts in batches of `serial` (a count, or a percentage of the fleet, at least 1)."""
    if not serial:
        return [names] if names else []
    match = re.fullmatch(r"([1-9][0-9]*)(%?)", str(serial).strip())
    if not match or (match[2] and int(match[1]) > 100):
        raise ParamsError([("--serial", f"{serial!r} is not a host count (5) or a "
                            "percentage of the fleet (25%)")])
    size = (max(1, math.floor(len(names) * int(match[1]) / 100)) if match[2]
            else int(match[1]))
    return [names[i:i + size] for i in range(0, len(names), size)]


def too_many_failed(failed: int, total: int, max_fail_percent: float | None) -> bool:
    """More than `max_fail_percent` of the fleet failed (None: no such limit)."""
    return max_fail_percent is not None and total and failed * 100 / total > max_fail_percent
