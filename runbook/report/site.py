"""`runbook docs`: the stage notebooks as a static site (default docs/site/, git-ignored).

A page a stage, in the manifest's order: the notebook's prose and code as they stand, every
guide step id linked to the page of the guide's numbered steps (steps.html, from
`steps.STEPS`), which links back to the cells carrying each step out. With a run folder,
each page is that run's executed notebook instead: every step with its real output.
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

from runbook.errors import RunbookError
from runbook.report import render, steps
from runbook.report.collect import read_run
from runbook.report.fleet import link
from runbook.run import manifest

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "docs" / "site"
HEADING = re.compile(r"^(#{1,6})\s", re.M)


def build(out: Path | None = None, run: Path | None = None) -> Path:
    """Write the site; returns its index.html."""
    from runbook.report import notebooks  # nbconvert: imported only when a site is built

    out = Path(out) if out else DEFAULT_OUT
    if run is not None and not Path(run).is_dir():
        raise RunbookError(f"--run {run}: no such run folder")
    out.mkdir(parents=True, exist_ok=True)
    facts = read_run(Path(run)) if run else None
    carried: dict[str, list[dict]] = {step: [] for step in steps.STEPS}
    pages = []
    stages = manifest.MANIFEST
    for index, stage in enumerate(stages):
        executed = Path(run) / f"{stage.name}.ipynb" if run else None
        ran = executed is not None and executed.exists()
        page = {"name": stage.name, "title": stage.title, "href": f"{stage.name}.html",
                "steps": steps.ids_in(stage.steps), "ran": ran}
        nav = _nav(stages, index, page["steps"])
        notebooks.render(executed if ran else stage.notebook, out / page["href"],
                         title=f"{stage.name} · {stage.title}", nav=nav,
                         note=_note(facts, ran, run),
                         change=lambda nb, s=stage: link_steps(nb, s.name, carried))
        pages.append(page)
    report = None
    if facts and (Path(run) / "report.html").exists():
        report = link(out, Path(run) / "report.html")
    (out / "steps.html").write_text(render.page(
        "site-steps.html.j2", steps=steps.STEPS, carried=carried, made_by="runbook docs",
        safe_nav=_nav(stages, None, [])), encoding="utf-8")
    index = out / "index.html"
    index.write_text(render.page(
        "site-index.html.j2", pages=pages, run=facts, report=report, made_by="runbook docs",
        safe_nav=_nav(stages, None, [])), encoding="utf-8")
    return index


def _note(facts: dict | None, ran: bool, run: Path | None) -> str:
    if facts is None:
        return ""
    where = f"run {facts['folder']} on {facts['header']['host']}"
    if not ran:
        return f"This stage was not part of {where}: the procedure only, without output."
    return f"Every step below with its real output, as {where} recorded it."


def _nav(stages, index: int | None, ids: list[str]) -> str:
    links = ['<a href="index.html">contents</a>', '<a href="steps.html">the guide\'s steps</a>']
    if index is not None and index > 0:
        before = stages[index - 1]
        links.append(f'<a href="{before.name}.html">&larr; {escape(before.name)}</a>')
    if index is not None and index + 1 < len(stages):
        after = stages[index + 1]
        links.append(f'<a href="{after.name}.html">{escape(after.name)} &rarr;</a>')
    named = ""
    if ids:
        named = ('<p class="guide-steps">guide steps: ' + ", ".join(
            f'<a class="step-id" href="steps.html#{s}" title="{escape(steps.STEPS[s])}">{s}</a>'
            for s in ids) + "</p>")
    return f'<nav class="runbook">{" ".join(links)}</nav>' + named


def link_steps(nb, stage: str, carried: dict[str, list[dict]]) -> None:
    """Link every step id in the notebook's prose to steps.html, and anchor each step at
    the heading that carries it out (a section heading, else the page's title), noting
    it in `carried` for the steps page."""
    cells = [c for c in nb.cells if c.cell_type == "markdown"]
    anchored: dict[str, object] = {}
    for deep in (True, False):  # sections first; the title only anchors what they do not
        for cell in cells:
            for level, text in _headings(cell.source):
                if (level > 1) == deep:
                    for step in steps.ids_in(text):
                        if step not in anchored:
                            anchored[step] = cell
                            carried[step].append({"stage": stage, "heading": _plain(text),
                                                  "href": f"{stage}.html#step-{step}"})
    for cell in cells:
        names = [s for s, c in anchored.items() if c is cell]
        marks = "".join(f'<a id="step-{s}"></a>' for s in names)
        cell.source = (marks + "\n\n" if marks else "") + _linked(cell.source)


def _headings(source: str) -> list[tuple[int, str]]:
    return [(len(m.group(1)), line.strip("# ").strip())
            for line in source.splitlines() if (m := HEADING.match(line))]


def _plain(text: str) -> str:
    return text.replace("`", "")


def _linked(source: str) -> str:
    """Markdown with each step id (outside code spans) a link to its row in steps.html."""
    parts = re.split(r"(`[^`]*`)", source)
    return "".join(part if part.startswith("`") else steps.STEP_ID.sub(
        lambda m: f"[{m.group(0)}](steps.html#{m.group(0)})"
        if m.group(0) in steps.STEPS else m.group(0), part) for part in parts)
