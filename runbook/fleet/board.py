"""What a fleet run shows: one live line per host, and a summary table at the end.

On a terminal the lines are redrawn in place (stage, cell, elapsed). Anywhere else (a CI
log, a pipe) each change of a host's state is printed once as a line of its own, so the log
reads top to bottom with nothing overwritten.
"""

from __future__ import annotations

import sys
import threading
import time

REDRAW = 0.5  # s between redraws on a terminal


class Board:
    def __init__(self, names: list[str], out=None, live: bool | None = None):
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self.names = names
        self.width = max([len(n) for n in names] + [4])
        self.state = {name: "waiting" for name in names}
        self.began: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.lock = threading.Lock()
        self.drawn = 0
        self.ticker: threading.Thread | None = None
        self.closed = threading.Event()

    def __enter__(self) -> Board:
        if self.live:
            self.ticker = threading.Thread(target=self._tick, daemon=True)
            self.ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closed.set()
        if self.ticker:
            self.ticker.join()
        self._redraw()

    def event(self, name: str, event: dict) -> None:
        """A host's event (see runbook.fleet.child); prints or updates its line."""
        kind = event.get("event")
        line = None
        if kind == "started":
            self.began.setdefault(name, time.monotonic())
            line = "connecting"
        elif kind == "stage":
            line = f"[{event['index']}/{event['total']}] {event['stage']}"
        elif kind == "cell" and self.live:
            stage = self.state[name].split(" cell")[0]
            line = f"{stage} cell {event['cell']}/{event['cells']}"
        elif kind == "stage_done":
            counts = event.get("counts", {})
            detail = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no operations"
            line = (f"[{event['index']}/{event['total']}] {event['stage']} {event['status']} "
                    f"in {event['seconds']:.1f} s ({detail})")
        elif kind == "gate" and self.live:
            line = f"{self.state[name]} (waiting for the others)"
        elif kind == "result":
            line = event["status"] + (f": {_first_line(event.get('reason'))}"
                                      if event.get("reason") else "")
        if line is not None:
            self._set(name, line, final=kind == "result")

    def note(self, message: str) -> None:
        with self.lock:
            self._clear()
            print(message, file=self.out, flush=True)
            self.drawn = 0

    def _set(self, name: str, line: str, final: bool = False) -> None:
        with self.lock:
            self.state[name] = line
            if final:
                self.ended[name] = time.monotonic()
            if not self.live:
                print(f"{name:<{self.width}}  {line}{self._elapsed(name)}", file=self.out,
                      flush=True)

    def _elapsed(self, name: str) -> str:
        began = self.began.get(name)
        if began is None:
            return ""
        seconds = self.ended.get(name, time.monotonic()) - began
        return f"  ({seconds:.0f} s)"

    def _tick(self) -> None:
        while not self.closed.wait(REDRAW):
            self._redraw()

    def _redraw(self) -> None:
        if not self.live:
            return
        with self.lock:
            self._clear()
            for name in self.names:
                text = f"{name:<{self.width}}  {self.state[name]}{self._elapsed(name)}"
                print(text[:200], file=self.out)
            self.out.flush()
            self.drawn = len(self.names)

    def _clear(self) -> None:
        if self.live and self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")  # up to the first line, clear below


def summary(hosts: list[dict], seconds: float) -> str:
    """A table like pyinfra's: one row a host, its changed/ok/failed operations."""
    width = max([len(h["name"]) for h in hosts] + [4])
    rows = [f"{'host':<{width}}  {'status':<11}  {'changed':>7}  {'ok':>5}  {'failed':>6}  "
            f"{'time':>7}  reason"]
    for host in hosts:
        totals = {k: sum(s.get(k, 0) for s in host["stages"].values())
                  for k in ("changed", "ok", "failed")}
        rows.append(f"{host['name']:<{width}}  {host['status']:<11}  {totals['changed']:>7}  "
                    f"{totals['ok']:>5}  {totals['failed']:>6}  {host['duration']:>5.1f} s  "
                    f"{_first_line(host['reason'])[:100]}")
    counts = {s: sum(h["status"] == s for h in hosts) for s in ("ok", "failed", "unreachable")}
    rows.append(f"{len(hosts)} hosts in {seconds:.1f} s: {counts['ok']} ok, "
                f"{counts['failed']} failed, {counts['unreachable']} unreachable")
    return "\n".join(rows)


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""
