"""The timeline picture: every remote command a bar on one time axis, a lane per stage (or per
host in a fleet), coloured by its result, the command itself in the bar's <title> (shown on
hover). Written directly as SVG: no library, no script, nothing fetched."""

from __future__ import annotations

import math
from datetime import datetime
from functools import lru_cache
from html import escape

COLOURS = {"ok": "#3f8f5f", "changed": "#d98e04", "failed": "#c62828"}
WIDTH = 1100  # user units; the picture scales to the page's width
LABEL = 190  # room for the lane names on the left
LANE = 20  # height of a lane: 20 hosts make a 400-unit picture
TOP, AXIS = 8, 34  # margin above the first lane; room for the axis and the legend below
MIN_BAR = 1.5  # a 3 ms command still shows


@lru_cache(maxsize=65536)
def seconds(stamp: str) -> float | None:
    """An ISO 8601 time (as the audit writes it, with Z) as a POSIX timestamp."""
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return None


def draw(lanes: list[tuple[str, list[dict]]], *, label: str = "timeline") -> str:
    """The SVG for lanes of (name, commands); each command has start (ISO), duration (s),
    result (ok, changed, failed), command and optionally stage/host for its tooltip."""
    timed = [(name, [(seconds(c.get("start") or ""), c) for c in commands])
             for name, commands in lanes]
    starts = [t for _, bars in timed for t, _ in bars if t is not None]
    if not starts:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" role="img" '
                f'aria-label="{escape(label)}" viewBox="0 0 {WIDTH} 30" width="100%">'
                '<text x="10" y="20">no remote commands recorded</text></svg>')
    t0 = min(starts)
    t1 = max(t + c.get("duration", 0) for _, bars in timed for t, c in bars if t is not None)
    span = max(t1 - t0, 0.001)
    scale = (WIDTH - LABEL - 12) / span
    height = TOP + LANE * len(lanes) + AXIS
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" role="img" '
             f'aria-label="{escape(label)}" viewBox="0 0 {WIDTH} {height}" width="100%" '
             f'font-family="sans-serif" font-size="11">']
    for index, (name, bars) in enumerate(timed):
        parts += _lane(index, name, bars, t0, scale)
    parts += _axis(span, scale, TOP + LANE * len(lanes))
    parts.append("</svg>")
    return "".join(parts)


def _lane(index: int, name: str, bars, t0: float, scale: float) -> list[str]:
    y = TOP + index * LANE
    shown = name if len(name) <= 28 else name[:27] + "…"
    parts = [f'<g class="lane" data-lane="{escape(name)}">',
             f'<rect x="0" y="{y}" width="{WIDTH}" height="{LANE}" '
             f'fill="{"#f3f5f7" if index % 2 else "#ffffff"}"/>',
             f'<text x="6" y="{y + LANE * 0.68:.1f}"><title>{escape(name)}</title>'
             f'{escape(shown)}</text>']
    # failed bars last, so they are drawn over their neighbours
    for start, command in sorted(bars, key=lambda b: b[1].get("result") == "failed"):
        if start is None:
            continue
        parts.append(_bar(command, LABEL + (start - t0) * scale, y, scale))
    parts.append("</g>")
    return parts


def _bar(command: dict, x: float, y: float, scale: float) -> str:
    result = command.get("result", "ok")
    duration = command.get("duration", 0) or 0
    width = max(duration * scale, MIN_BAR * (2 if result == "failed" else 1))
    where = command.get("host") or ""
    if command.get("stage"):
        where = f"{where} {command['stage']}".strip()
    ended = (f"timed out after {command['timed_out']} s" if command.get("timed_out") is not None
             else f"exit {command.get('exit_status')}")
    tip = f"{command.get('command', '')}\n{result}, {ended}, {duration:.3f} s — {where}"
    return (f'<rect class="bar {result}" data-result="{result}" data-seq="{command.get("seq")}"'
            f' x="{x:.2f}" y="{y + 3}" width="{width:.2f}" height="{LANE - 6}" '
            f'fill="{COLOURS.get(result, COLOURS["ok"])}"><title>{escape(tip)}</title></rect>')


def _axis(span: float, scale: float, y: float) -> list[str]:
    step = tick_step(span)
    parts = [f'<line x1="{LABEL}" y1="{y}" x2="{WIDTH - 12}" y2="{y}" stroke="#555"/>']
    n = 0
    while n * step <= span + 1e-9:
        x = LABEL + n * step * scale
        parts.append(f'<line x1="{x:.2f}" y1="{y}" x2="{x:.2f}" y2="{y + 4}" stroke="#555"/>'
                     f'<text x="{x:.2f}" y="{y + 15}" text-anchor="middle">'
                     f'{_seconds_label(n * step)}</text>')
        n += 1
    legend_x = 6
    for result, colour in COLOURS.items():
        parts.append(f'<rect x="{legend_x}" y="{y + 21}" width="10" height="10" '
                     f'fill="{colour}"/><text x="{legend_x + 14}" y="{y + 30}">{result}</text>')
        legend_x += 70
    return parts


def tick_step(span: float) -> float:
    """A round step (1, 2 or 5 times a power of ten seconds) giving at most 10 ticks."""
    power = 10 ** math.floor(math.log10(span / 10)) if span > 0 else 1
    for factor in (1, 2, 5, 10):
        if span / (factor * power) <= 10:
            return factor * power
    return 10 * power


def _seconds_label(value: float) -> str:
    if value >= 60:
        return f"{int(value // 60)}m{value % 60:02.0f}s"
    return f"{value:g} s" if value >= 1 or value == 0 else f"{value * 1000:g} ms"
