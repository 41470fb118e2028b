"""Interactive mode: approval before a change, live step progress, the summary table.

Batch mode (what `runbook run` passes) never waits for anyone: `approve` returns True at
once without showing anything, and progress is printed as plain lines. Interactively an
approval awaits an asyncio Future that a button click resolves: ipykernel >= 7.4 handles
comm messages (the click) while an async cell awaits, so the kernel stays responsive.
Everything shown interactively is display data with a text/plain form, never a widget
alone, so a saved notebook stays a true record where widget state is not kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
from collections.abc import AsyncIterator

from IPython.display import display

APPROVE, SKIP = "approve", "skip"
# The worst status of a step's operations is the step's status.
SEVERITY = ("ok", "skipped", "changed", "failed")
COLORS = {"ok": "#070", "changed": "#a60", "skipped": "#666", "failed": "#c00"}


# --- approval ------------------------------------------------------------------------------

async def approve(stage, plan) -> bool:
    """Show the plan with Approve / Skip and wait for the click; True if approved.

    `plan` has `name` and either `steps` (operations.Plan: Run and Write objects, plus
    `cleanup`) or `commands` (list of str) and `files` (objects with `path` and `diff`, a
    str or a method). Batch mode returns True at once: the run itself is the approval.
    """
    if stage.mode != "interactive":
        return True
    text, markup = describe(plan)
    display({"text/plain": text, "text/html": markup}, raw=True)
    gate = Gate()
    # Where widget state is not saved, the notebook shows this text instead of the buttons.
    display(gate.widget._repr_mimebundle_() | {"text/plain": f"[Approve / Skip] {plan.name}"},
            raw=True)
    started = time.monotonic()
    try:
        decision = await gate.decision
    finally:
        gate.close()
    stage.audit.record("approval", name=plan.name, decision=decision,
                       waited=round(time.monotonic() - started, 1))
    return decision == APPROVE


class Gate:
    """Approve / Skip buttons resolving one Future; the buttons go inert once decided."""

    def __init__(self):
        import ipywidgets as w  # only an interactive approval needs widgets

        self._loop = asyncio.get_running_loop()
        self.decision: asyncio.Future[str] = self._loop.create_future()
        self.approve = w.Button(description="Approve", icon="check", button_style="success")
        self.skip = w.Button(description="Skip", icon="forward", button_style="warning")
        self.approve.add_class("rb-approve")
        self.skip.add_class("rb-skip")
        self.note = w.HTML("<i>waiting for your decision…</i>")
        # The click may arrive on another thread than the loop's: hand it over safely.
        self.approve.on_click(lambda _: self._loop.call_soon_threadsafe(self._decide, APPROVE))
        self.skip.on_click(lambda _: self._loop.call_soon_threadsafe(self._decide, SKIP))
        self.widget = w.HBox([self.approve, self.skip, self.note])
        self.widget.add_class("rb-gate")

    def _decide(self, decision: str) -> None:
        if not self.decision.done():
            self.decision.set_result(decision)

    def close(self) -> None:
        self.approve.disabled = self.skip.disabled = True
        decided = self.decision.result() if self.decision.done() and not (
            self.decision.cancelled()) else "interrupted"
        self.note.value = f"<b>{decided}</b> at {time.strftime('%H:%M:%S')}"


def _steps(plan) -> list[tuple[str, object]]:
    """(when, step) in order: `always` marks cleanups that run even after a failure."""
    steps = getattr(plan, "steps", None)
    if steps is None:
        steps = [*plan.commands, *plan.files]
    return [("", s) for s in steps] + [("always", s) for s in getattr(plan, "cleanup", [])]


def _diff(edit) -> str:
    diff = edit.diff
    return diff() if callable(diff) else diff


def describe(plan) -> tuple[str, str]:
    """The plan as text and as HTML: each command, each file edit with its unified diff."""
    found = getattr(plan, "found", "")
    text = [f"plan: {plan.name}" + (f" ({found})" if found else "")]
    items = []
    for when, step in _steps(plan):
        note = " (always, also after a failure)" if when else ""
        why = getattr(step, "why", "")
        if isinstance(step, str) or hasattr(step, "command"):
            command = step if isinstance(step, str) else step.command
            text.append(f"$ {command}{note}" + (f"    # {why}" if why else ""))
            items.append(f"<li><code>$ {html.escape(command)}</code>{html.escape(note)}"
                         f"{_why(why)}</li>")
        else:
            diff = _diff(step)
            text.append(f"edit {step.path}" + (f"    # {why}" if why else "") + "\n"
                        + diff.rstrip("\n"))
            items.append(f"<li>edit <code>{html.escape(str(step.path))}</code>{_why(why)}"
                         f"{_diff_html(diff)}</li>")
    title = f"<b>Plan: {html.escape(plan.name)}</b>" + (
        f" <i>{html.escape(found)}</i>" if found else "")
    markup = f'<div class="rb-plan">{title}<ol>{"".join(items)}</ol></div>'
    return "\n".join(text), markup


def _why(why: str) -> str:
    return f' <small style="color:#666">{html.escape(why)}</small>' if why else ""


def _diff_html(diff: str) -> str:
    def line(text: str) -> str:
        color = {"+": "#070", "-": "#c00", "@": "#06c"}.get(text[:1], "inherit")
        if text.startswith(("+++", "---")):
            color = "#666"
        return f'<span style="color:{color}">{html.escape(text)}</span>'

    body = "\n".join(line(t) for t in diff.splitlines())
    return f'<pre style="margin:0.3em 0;padding:0.4em;background:#f7f7f7">{body}</pre>'


# --- progress ------------------------------------------------------------------------------

class Progress:
    """Steps done out of a total, with the elapsed time.

    Interactively each step is one live line in its cell, its time ticking while it runs;
    in batch each step prints plain lines. Either way what stays in the notebook is the
    final text, never a frozen bar.
    """

    def __init__(self, stage, total: int, tick: float = 1.0):
        self.stage = stage
        self.total = total
        self.tick = tick
        self.done = 0
        self.started = time.monotonic()

    def line(self, index: int, name: str, state: str, seconds: float) -> str:
        elapsed = time.monotonic() - self.started
        return (f"[{index}/{self.total}] {name}: {state} {seconds:.1f} s"
                f" · {elapsed:.1f} s elapsed")

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[None]:
        """Wrap one step; its status is the worst of the operations it adds to stage.results."""
        index, first, began = self.done + 1, len(self.stage.results), time.monotonic()
        live = _Live(self, index, name, began) if self.stage.mode == "interactive" else None
        if live is None:
            print(f"[{index}/{self.total}] {name} …", flush=True)
        status = "failed"
        try:
            yield
            status = _worst(r["status"] for r in self.stage.results[first:])
        finally:
            self.done = index
            line = self.line(index, name, f"{status} in", time.monotonic() - began)
            if live is None:
                print(line, flush=True)
            else:
                live.finish(line, status)


class _Live:
    """One display line updated in place (a display id, not a widget) while a step runs."""

    def __init__(self, progress: Progress, index: int, name: str, began: float):
        self.progress, self.index, self.name, self.began = progress, index, name, began
        self.handle = display(self._bundle(self._running(), "running"), raw=True,
                              display_id=True)
        self.ticker = asyncio.get_running_loop().create_task(self._tick())

    def _running(self) -> str:
        return self.progress.line(self.index, self.name, "running for",
                                  time.monotonic() - self.began)

    def _bundle(self, line: str, status: str) -> dict:
        p = self.progress
        bar = f'<progress value="{p.done}" max="{p.total}"></progress>'
        color = COLORS.get(status, "inherit")
        return {"text/plain": line,
                "text/html": f'{bar} <span style="color:{color}">{html.escape(line)}</span>'}

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.progress.tick)
            self.handle.update(self._bundle(self._running(), "running"), raw=True)

    def finish(self, line: str, status: str) -> None:
        self.ticker.cancel()
        self.handle.update(self._bundle(line, status), raw=True)


def _worst(statuses) -> str:
    found = [s for s in statuses if s in SEVERITY]
    return max(found, key=SEVERITY.index) if found else "done"


# --- summary -------------------------------------------------------------------------------

def summary(rows: list[dict]) -> dict:
    """A step / status / duration table as display data: HTML with a text/plain twin."""
    table = [(str(r.get("name", "")), str(r.get("status", "")), _seconds(r.get("duration")))
             for r in rows]
    width = max([4, *(len(name) for name, _, _ in table)])
    text = [f"{'step':<{width}}  {'status':<8}  duration"]
    text += [f"{name:<{width}}  {status:<8}  {secs}" for name, status, secs in table]
    cells = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        f'<td style="color:{COLORS.get(status, "inherit")}"><b>{html.escape(status)}</b></td>'
        f'<td style="text-align:right">{secs}</td></tr>' for name, status, secs in table)
    markup = ('<table class="rb-summary"><thead><tr><th>step</th><th>status</th>'
              f"<th>duration</th></tr></thead><tbody>{cells}</tbody></table>")
    return {"text/plain": "\n".join(text), "text/html": markup}


def _seconds(value) -> str:
    return f"{value:.2f} s" if isinstance(value, int | float) else ""


def show_summary(stage) -> None:
    """The stage's operations so far (stage.results) as a table in the cell (plain text
    outside a kernel)."""
    bundle = summary(stage.results)
    if _in_kernel():
        display(bundle, raw=True)
    else:
        print(bundle["text/plain"])


def _in_kernel() -> bool:
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None
