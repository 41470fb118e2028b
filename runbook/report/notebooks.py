"""Notebooks as self-contained HTML pages (nbconvert), for the report and the docs site.

The page is JupyterLab's own cell markup with a small style sheet of ours and nothing that
would fetch from a CDN (templates/nbconvert/offline): it opens with no network. nbconvert is
imported on first use only: it costs about a second with its templates, which is why
`runbook run` writes only its report page and the stage pages wait for `runbook report`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from functools import lru_cache
from html import escape
from pathlib import Path

import nbformat

TEMPLATES = Path(__file__).resolve().parent / "templates"
STYLE = ("report.css", "notebook.css")
BACK = '<nav class="runbook"><a href="report.html">&larr; the run report</a></nav>'


@lru_cache(maxsize=1)
def _exporter():
    from nbconvert import HTMLExporter  # lazily: see the module's docstring

    # No preprocessors but the template's own (the code highlighter's style): the others
    # do nothing here, and the notebook is validated again after each one.
    return HTMLExporter(template_name="offline", default_preprocessors=[],
                        extra_template_basedirs=[str(TEMPLATES / "nbconvert")])


@lru_cache(maxsize=1)
def _style() -> str:
    return "\n".join((TEMPLATES / name).read_text() for name in STYLE)


def render(notebook: Path, out: Path, *, title: str | None = None, nav: str = "",
           note: str = "", change: Callable | None = None) -> Path:
    """Write `notebook` as the page `out`. `nav` is HTML put above it (already escaped),
    `note` a line of text shown under it; `change(nb)` may edit the notebook first."""
    nb = nbformat.read(notebook, as_version=4)
    if change is not None:
        change(nb)
    resources = {"metadata": {"name": title or notebook.stem}, "nav": nav,
                 "note": escape(note), "page_css": _style()}
    body, _ = _exporter().from_notebook_node(nb, resources=resources)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:  # a reader never sees half a page
        os.fchmod(f.fileno(), 0o644)
        f.write(body)
    os.replace(tmp, out)
    return out


def stage_page(notebook: Path) -> Path:
    """A run's executed stage notebook as its page beside it (`NN-stage.html`), made when
    missing or older than the notebook."""
    page = notebook.with_suffix(".html")
    if not page_is_current(notebook):
        render(notebook, page, title=f"{notebook.stem} — {notebook.parent.name}", nav=BACK)
    return page


def page_is_current(notebook: Path) -> bool:
    """True when the notebook's page is there and not older than the notebook."""
    try:
        return notebook.with_suffix(".html").stat().st_mtime >= notebook.stat().st_mtime
    except FileNotFoundError:
        return False


def render_stages(run_dir: Path, stages: list[dict]) -> None:
    """Each stage's page beside its notebook; sets each stage row's `notebook_html`."""
    for stage in stages:
        if not stage.get("notebook"):
            continue
        try:
            stage["notebook_html"] = stage_page(run_dir / stage["notebook"]).name
        except (OSError, ValueError) as e:  # a damaged notebook: the report says so, and goes on
            stage["notebook_error"] = f"{type(e).__name__}: {e}"
