"""Notebooks as self-contained HTML pages (nbconvert), for the report and the docs site.

The page is JupyterLab's own cell markup with a small style sheet of ours and nothing that
would fetch from a CDN (templates/nbconvert/offline): it opens with no network. nbconvert is
imported on first use only: it costs about a second with its templates.

`runbook run` has its stage pages made by a process of its own (`PageMaker`, this module
run as a script) while the run goes on: nbconvert is imported while the first stage runs,
each stage's page made as soon as its notebook is written, and the report at the end finds
them made instead of adding their second or two to every run. The report itself is written
by that process too (`PageMaker.finish`): it has the report's modules loaded by then, which
the runner would otherwise import after the last stage.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
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
    if not page.exists() or page.stat().st_mtime < notebook.stat().st_mtime:
        render(notebook, page, title=f"{notebook.stem} — {notebook.parent.name}", nav=BACK)
    return page


def render_stages(run_dir: Path, stages: list[dict]) -> None:
    """Each stage's page beside its notebook; sets each stage row's `notebook_html`."""
    for stage in stages:
        if not stage.get("notebook"):
            continue
        try:
            stage["notebook_html"] = stage_page(run_dir / stage["notebook"]).name
        except (OSError, ValueError) as e:  # a damaged notebook: the report says so, and goes on
            stage["notebook_error"] = f"{type(e).__name__}: {e}"


REPORT = "\0report "  # the line asking for a run folder's report (no path starts so)


class PageMaker:
    """Stage pages made by a process of its own while a run goes on (see the docstring)."""

    def __init__(self):
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
            env=os.environ | {"PYTHONPATH": path})

    def add(self, notebook: Path) -> None:
        with contextlib.suppress(OSError, ValueError):  # gone: the report makes the page
            self.process.stdin.write(f"{notebook}\n")
            self.process.stdin.flush()

    def finish(self, run_dir: Path, timeout: float = 60.0) -> bool:
        """Ask for the run's report once its pages are made, and wait for it (at most
        `timeout`); True when it was written (else the runner writes it itself)."""
        self.add(f"{REPORT}{run_dir}")
        self.close(timeout)
        return self.process.returncode == 0

    def cancel(self) -> None:
        """No run began (the lock was refused, the host unreachable): no page to make."""
        self.process.kill()
        self.process.wait()
        with contextlib.suppress(OSError):
            self.process.stdin.close()

    def close(self, timeout: float = 60.0) -> None:
        """Wait for the pages asked for (at most `timeout`); the report makes any missing."""
        with contextlib.suppress(OSError, ValueError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main() -> int:
    """The page maker: a notebook path a line on stdin, its page made; until stdin ends. A
    REPORT line has the run's report written: exit status 0 once it is, else 1."""
    with contextlib.suppress(OSError):
        os.nice(10)  # it uses what CPU the run's kernel and runner leave
    _exporter()  # nbconvert's import and templates, while the first stage runs
    from runbook import report  # and the report's, for the end of the run

    written = False
    for line in sys.stdin:
        line = line.rstrip("\n")
        # A page that cannot be made here is made (or its error shown) by the report; a
        # report that cannot be written here is written (or its error said) by the runner.
        with contextlib.suppress(Exception):
            if line.startswith(REPORT):
                report.write(Path(line.removeprefix(REPORT)))
                written = True
            else:
                stage_page(Path(line))
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
