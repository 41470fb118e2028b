"""JupyterLab in Debian's headless Chromium, driven by Playwright: the start notebook's form,
an approval click reaching an awaiting cell, and a stage run interactively against a lab host
with every change approved in the browser. Fails, never skips, without the browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import nbformat
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from runbook import params as model
from runbook.interactive import session

pytestmark = pytest.mark.browser

PROJECT = Path(__file__).resolve().parent.parent
ARTIFACTS = PROJECT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
BAD_DOMAIN = "example.com; touch /tmp/x"
SECOND = 1000  # Playwright counts milliseconds


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (make system-deps)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on loopback, rooted at a runs folder, saving params files to a temp dir."""
    base = tmp_path_factory.mktemp("browser")
    runs, params_dir = base / "runs", base / "params"
    params_dir.mkdir()
    shutil.copy(PROJECT / "params" / "example-debian.yaml", params_dir)
    with (base / "jupyterlab.log").open("w") as log, session.Lab(
        runs, env={"RUNBOOK_PARAMS_DIR": str(params_dir)}, log=log,
        args=(f"--LabApp.workspaces_dir={base / 'workspaces'}",),
    ) as server:
        server.runs, server.params_dir = runs, params_dir
        yield server


@pytest.fixture
def page(browser, request):
    """A fresh page; when the test fails, its last view is kept in test-artifacts/."""
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    failed_before = request.session.testsfailed
    yield page
    if request.session.testsfailed > failed_before and page.url != "about:blank":
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"failed-{request.node.name}.png"))
    page.close()


def kernel_status(page) -> str | None:
    return page.get_attribute(".jp-Notebook-ExecutionIndicator", "data-status")


def open_notebook(page, lab, path: str) -> None:
    """Open one notebook in a workspace of its own and wait for its kernel to be idle."""
    workspace = re.sub(r"[^A-Za-z0-9]", "-", path)
    page.goto(lab.url(path).replace("/lab/tree/", f"/lab/workspaces/{workspace}/tree/"))
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60 * SECOND)
    # The execution indicator says idle before any kernel exists; the status bar names it.
    page.wait_for_function(
        "() => document.querySelector('.jp-StatusBar-Widget')?.innerText"
        ".includes('(ipykernel) | Idle')", timeout=60 * SECOND)


def run_all(page) -> None:
    page.click("li.lm-MenuBar-item:has-text('Run')")
    page.click(".lm-Menu-item:has-text('Run All Cells')")


# Finished: the kernel idle, no cell queued or running, and the first cell has run.
_DONE = """() => {
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
    .map(e => e.textContent.trim());
  const status = document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status;
  return status === 'idle' && prompts.length > 0 && !prompts.includes('[*]:')
    && /\\d/.test(prompts[0]);
}"""


def finished(page) -> bool:
    return bool(page.evaluate(_DONE))


def errors_shown(page) -> list[str]:
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                        ).all_inner_texts()


def run_all_approving(page, timeout: float, screenshot: Path | None = None) -> int:
    """Run every cell, clicking each Approve that appears; returns the number of clicks."""
    run_all(page)
    deadline, clicks = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        gates = page.locator("button.rb-approve")
        if gates.count() > clicks:  # a new plan waits: each gate is clicked once
            gate = gates.nth(clicks)
            assert kernel_status(page) == "busy", "the cell awaits the click: the kernel is busy"
            if screenshot and not clicks:  # the first plan, with its buttons
                gate.evaluate("e => e.scrollIntoView({block: 'end'})")
                screenshot.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(screenshot))
            gate.click()
            clicks += 1
        elif finished(page):
            return clicks
        else:
            page.wait_for_timeout(250)
    pytest.fail(f"the notebook did not finish in {timeout:.0f} s ({clicks} approvals)")


def screenshot_form(page, path: Path) -> None:
    """The whole form in one picture: a viewport tall enough for it, the news toast gone."""
    news = page.locator(".Toastify button:has-text('No')")
    if news.count():
        news.first.click()
    height = page.evaluate("() => document.querySelector('.rb-form').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": height + 400})
    page.locator(".rb-form").scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    path.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(path))


def test_start_notebook_form_validates_and_saves(lab, page):
    folder = session.create(runs=lab.runs)
    open_notebook(page, lab, f"{folder.name}/start.ipynb")
    run_all(page)
    domain = page.locator(".rb-field-postfix-mydomain input")
    domain.wait_for(timeout=60 * SECOND)
    status, error = page.locator(".rb-status"), page.locator(".rb-error-postfix-mydomain")

    page.select_option(".rb-files select", "example-debian.yaml")
    page.click("button.rb-load")
    page.wait_for_function("s => document.querySelector(s).innerText.includes('valid')",
                           arg=".rb-status", timeout=30 * SECOND)
    assert domain.input_value() == "example.org"

    domain.fill(BAD_DOMAIN)
    domain.press("Enter")
    page.wait_for_function("s => document.querySelector(s).innerText.includes('not a DNS name')",
                           arg=".rb-error-postfix-mydomain", timeout=30 * SECOND)
    screenshot_form(page, ARTIFACTS / "form-field-error.png")
    others = [t for t in page.locator(".rb-error").all_inner_texts() if t.strip()]
    assert others == [error.inner_text()], "only the bad field shows an error"

    domain.fill("example.test")
    domain.press("Enter")
    page.wait_for_function("s => document.querySelector(s).innerText.trim() === ''",
                           arg=".rb-error-postfix-mydomain", timeout=30 * SECOND)
    page.fill(".rb-save-name input", "browser-made")
    page.click("button.rb-save")
    page.wait_for_function("s => document.querySelector(s).innerText.includes('saved')",
                           arg=".rb-status", timeout=30 * SECOND)
    assert "browser-made.yaml" in status.inner_text()

    saved = model.load(lab.params_dir / "browser-made.yaml")
    example = model.load(PROJECT / "params" / "example-debian.yaml")
    postfix = example.postfix.model_copy(update={"mydomain": "example.test"})
    assert saved == example.model_copy(update={"postfix": postfix})


# --- approval: a click reaches a cell awaiting it -------------------------------------------

APPROVAL_STAGE = '''\
from pathlib import Path
from types import SimpleNamespace

from runbook.audit import Audit
from runbook.interactive.approval import approve

stage = SimpleNamespace(name="99-approval", mode=mode, results=[],
                        audit=Audit(Path(run_dir), stage="99-approval"))
plan = SimpleNamespace(name="write the marker", commands=[f"echo approved > {marker}"],
                       files=[])
if await approve(stage, plan):
    Path(marker).write_text("approved")
'''


def approval_notebook(folder: Path) -> Path:
    """A stage-like notebook in the session: its one change waits for Approve."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}})
    parameters = nbformat.v4.new_code_cell('mode = "batch"\nrun_dir = ""\nmarker = ""')
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell(APPROVAL_STAGE)]
    path = folder / "99-approval.ipynb"
    nbformat.write(nb, path)
    nb = parameterize_notebook(load_notebook_node(str(path)), {
        "mode": "interactive", "run_dir": str(folder), "marker": str(folder / "marker")})
    nbformat.write(nb, path)
    return path


def audit_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "audit.jsonl").read_text().splitlines()]


def test_approve_click_reaches_the_awaiting_cell(lab, page):
    folder = session.create(runs=lab.runs)
    approval_notebook(folder)
    open_notebook(page, lab, f"{folder.name}/99-approval.ipynb")
    assert run_all_approving(page, timeout=60) == 1
    assert (folder / "marker").read_text() == "approved"
    (record,) = audit_records(folder)
    assert (record["type"], record["name"], record["decision"]) == (
        "approval", "write the marker", "approve")


# --- a real stage, interactively, against a lab host ----------------------------------------

def stage_with_changes() -> str:
    """The stage notebook to run interactively: configure when it exists, else install."""
    for name in ("30-configure", "10-install"):
        if (PROJECT / "notebooks" / f"{name}.ipynb").exists():
            return name
    pytest.fail("no stage notebook that changes the host (10-install, 30-configure)")


@pytest.fixture(scope="module")
def stage_host(request) -> dict:
    """The shared fresh lab host (or RUNBOOK_TEST_HOST=debN, reset), fresh again afterwards."""
    from runbook import lab

    name = os.environ.get("RUNBOOK_TEST_HOST")
    host = lab.reset(name) if name else request.getfixturevalue("lab_host")
    yield host
    lab.reset(host["name"])  # the modules after this one expect a fresh host


def on_host(host: dict, command: str) -> subprocess.CompletedProcess:
    target = model.load(host["params_file"]).target
    return subprocess.run(
        ["ssh", "-i", str(target.key_file), "-o", f"UserKnownHostsFile={target.known_hosts}",
         "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"root@{target.host}",
         command], capture_output=True, text=True, timeout=30)


@pytest.mark.lab
def test_interactive_stage_applies_what_was_approved(lab, page, stage_host):
    from runbook.run import manifest as stages
    from runbook.run import runner

    name = stage_with_changes()
    before = [s.name for s in stages.MANIFEST[:[s.name for s in stages.MANIFEST].index(name)]
              if s.name != "00-preflight"]
    if before:  # earlier stages, headless, so this one has what it builds on
        runner.run(stage_host["params_file"], stages=before, runs_root=lab.runs / "batch")
    folder = session.create(stage_host["params_file"], runs=lab.runs)
    open_notebook(page, lab, f"{folder.name}/{name}.ipynb")
    began = time.monotonic()
    clicks = run_all_approving(page, timeout=300, screenshot=ARTIFACTS / "approval.png")
    seconds = time.monotonic() - began
    assert not errors_shown(page), errors_shown(page)
    records = audit_records(folder)
    approvals = [r for r in records if r["type"] == "approval"]
    assert clicks >= 1 and len(approvals) == clicks
    assert {r["decision"] for r in approvals} == {"approve"}
    changed = [r for r in records if r["type"] == "operation" and r["status"] == "changed"]
    assert changed, "what was approved was applied"
    stage_end = [r for r in records if r["type"] == "stage" and r["event"] == "end"][-1]
    assert stage_end["status"] == "ok"
    if name == "10-install":
        check = on_host(stage_host, "dpkg-query -W -f='${Status}' postfix")
        assert check.stdout == "install ok installed", check
    else:
        wanted = model.load(stage_host["params_file"]).postfix.mydomain
        check = on_host(stage_host, "postconf -h mydomain")
        assert check.stdout.strip() == wanted, check
    print(f"{name} interactively: {clicks} approval(s), {seconds:.1f} s")
