"""The pages, from Jinja2 templates (templates/): values escaped by default, the style sheet
inlined, no file or script fetched from anywhere."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

TEMPLATES = Path(__file__).resolve().parent / "templates"


def seconds(value) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.1f} s" if value >= 10 else f"{value:.2f} s"
    return "unknown"


def css(value) -> str:
    """A status as a class name: "not run" -> "not-run"."""
    return re.sub(r"[^a-z0-9]+", "-", str(value).lower()).strip("-")


def difflines(diff: str) -> list[tuple[str, str]]:
    """A unified diff's lines, each with its kind: add, del, hunk or context."""
    kinds = []
    for line in (diff or "").splitlines():
        if line.startswith(("+++", "---")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        else:
            kind = {"+": "add", "-": "del"}.get(line[:1], "context")
        kinds.append((kind, line))
    return kinds


def code(text: str) -> Markup:
    """Text with `backticked` parts as code, the rest escaped."""
    return Markup(re.sub(r"`([^`]*)`", r"<code>\1</code>", str(escape(text))))


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=jinja2.select_autoescape(["j2", "html"],
                                                                 default_for_string=True),
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(seconds=seconds, css=css, difflines=difflines, code=code)
    return env


def preload() -> None:
    """Compile the report's templates now (a process that forks runs does it once)."""
    env = environment()
    for name in ("run.html.j2", "fleet.html.j2"):
        env.get_template(name)


def page(template: str, **context) -> str:
    """A page from `template`; values given as `safe_*` keys (SVG, navigation) are inserted
    as they are, under their name without the prefix; everything else is escaped."""
    for key in [k for k in context if k.startswith("safe_")]:
        context[key.removeprefix("safe_")] = Markup(context.pop(key))
    made = datetime.now(UTC).isoformat(timespec="seconds")
    return environment().get_template(template).render(made=made, **context)
