"""Notebooks as self-contained HTML pages (nbconvert), for the report and the docs site.

The page is JupyterLab's own cell markup with a small style sheet of ours and nothing that
would fetch from a CDN (templates/nbconvert/offline): it opens with no network. nbconvert is
imported on first use only: it costs about half a second, and a run that makes no report
never pays it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from html import escape
from pathlib import Path

import nbformat

TEMPLATES = Path(__file__).resolve().parent / "templates"
STYLE = ("report.css", "notebook.css")


@lru_cache(maxsize=1)
def _exporter():
    from nbconvert import HTMLExporter  # lazily: see the module's docstring

    return HTMLExporter(template_name="offline",
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
    out.write_text(body, encoding="utf-8")
    return out


def render_stages(run_dir: Path, stages: list[dict], nav: str = "") -> None:
    """Each stage's executed notebook as `NN-stage.html` beside it (kept when it is newer
    than the notebook); sets each stage row's `notebook_html`."""
    for stage in stages:
        if not stage.get("notebook"):
            continue
        source = run_dir / stage["notebook"]
        page = source.with_suffix(".html")
        try:
            if not page.exists() or page.stat().st_mtime < source.stat().st_mtime:
                render(source, page, title=f"{stage['name']} — {run_dir.name}", nav=nav)
        except (OSError, ValueError) as e:  # a damaged notebook: the report says so, and goes on
            stage["notebook_error"] = f"{type(e).__name__}: {e}"
            continue
        stage["notebook_html"] = page.name
