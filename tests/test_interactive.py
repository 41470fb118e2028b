"""Interactive mode without a browser: the approval gate (clicks simulated), batch mode never
waiting, the audit record, progress and summary; every notebook headless under papermill."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import nbformat
import papermill
import pytest
import yaml
from papermill.exceptions import PapermillExecutionError

from runbook.audit import Audit, verify
from runbook.errors import ParamsError
from runbook.interactive import approval as interactive
from runbook.interactive import session

PROJECT = Path(__file__).resolve().parent.parent
WIDGET = "application/vnd.jupyter.widget-view+json"
STAGE_NOTEBOOKS = sorted((PROJECT / "notebooks").glob("[0-9][0-9]-*.ipynb"))


@dataclass
class Edit:
    path: str
    diff: str


@dataclass
class FakePlan:
    """The smallest plan approve() accepts: name, commands and files with a diff."""

    name: str = "set mydomain"
    commands: list[str] = field(default_factory=lambda: ["postfix reload"])
    files: list[Edit] = field(default_factory=lambda: [Edit(
        "/etc/postfix/main.cf",
        "--- /etc/postfix/main.cf (now)\n+++ /etc/postfix/main.cf (after)\n"
        "@@ -1 +1 @@\n-mydomain = old.test\n+mydomain = <new>.test\n")])


def make_stage(tmp_path: Path, mode: str) -> SimpleNamespace:
    audit = Audit(tmp_path / "run", stage="30-configure", display=False)
    return SimpleNamespace(name="30-configure", mode=mode, audit=audit, results=[])


def records(stage) -> list[dict]:
    path = stage.audit.path
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Shown(list):
    """Display data in the order shown, and the approval gates made."""

    def __init__(self):
        super().__init__()
        self.gates: list = []


@pytest.fixture
def shown(monkeypatch) -> Shown:
    """What interactive displays, instead of a kernel's output."""
    out = Shown()

    def display(obj, raw=False, display_id=None):
        out.append(obj)
        return SimpleNamespace(update=lambda new, raw=False: out.append(new))

    class KeptGate(interactive.Gate):
        def __init__(self):
            super().__init__()
            out.gates.append(self)

    monkeypatch.setattr(interactive, "display", display)
    monkeypatch.setattr(interactive, "Gate", KeptGate)
    return out


async def gate_shown(shown):
    """Wait (on the loop, as a kernel would) until approve() shows its buttons."""
    for _ in range(1000):
        if any(WIDGET in o for o in shown if isinstance(o, dict)):
            return shown.gates[-1].widget
        await asyncio.sleep(0)
    raise AssertionError("approve() never showed its buttons")


def buttons(gate_widget):
    approve, skip, note = gate_widget.children
    return approve, skip, note


async def decide(stage, shown, click) -> tuple[bool, object]:
    task = asyncio.ensure_future(interactive.approve(stage, FakePlan()))
    gate = await gate_shown(shown)
    click(gate)
    return await asyncio.wait_for(task, 5), gate


def test_batch_never_waits_shows_or_records(tmp_path, shown):
    stage = make_stage(tmp_path, "batch")
    began = time.monotonic()
    assert asyncio.run(asyncio.wait_for(interactive.approve(stage, FakePlan()), 0.5)) is True
    assert time.monotonic() - began < 0.5
    assert shown == [] and records(stage) == []


def test_approve_click_resolves_the_wait_and_is_recorded(tmp_path, shown):
    stage = make_stage(tmp_path, "interactive")
    approved, gate = asyncio.run(decide(stage, shown, lambda g: buttons(g)[0].click()))
    assert approved is True
    (record,) = records(stage)
    assert record["type"] == "approval" and record["stage"] == "30-configure"
    assert (record["name"], record["decision"]) == ("set mydomain", "approve")
    assert all(b.disabled for b in buttons(gate)[:2]) and "approve" in buttons(gate)[2].value
    assert verify(stage.audit.run_dir) == 1


def test_skip_click_returns_false_and_records_skip(tmp_path, shown):
    stage = make_stage(tmp_path, "interactive")
    approved, _ = asyncio.run(decide(stage, shown, lambda g: buttons(g)[1].click()))
    assert approved is False
    assert [(r["type"], r["decision"]) for r in records(stage)] == [("approval", "skip")]


def test_a_click_from_another_thread_and_a_second_click_are_safe(tmp_path, shown):
    stage = make_stage(tmp_path, "interactive")

    def click_twice_elsewhere(gate):
        approve, skip, _ = buttons(gate)
        threading.Thread(target=lambda: (approve.click(), skip.click())).start()

    approved, _ = asyncio.run(decide(stage, shown, click_twice_elsewhere))
    assert approved is True
    assert [r["decision"] for r in records(stage)] == ["approve"]


def test_the_kernel_stays_free_while_waiting(tmp_path, shown):
    """Other work on the loop (the kernel's comm handling) goes on while approve() waits."""
    stage = make_stage(tmp_path, "interactive")

    async def scenario():
        task = asyncio.ensure_future(interactive.approve(stage, FakePlan()))
        gate = await gate_shown(shown)
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1
        assert not task.done()
        buttons(gate)[0].click()
        return ticks, await task

    assert asyncio.run(scenario()) == (5, True)


def test_an_interrupted_wait_leaves_inert_buttons_and_no_approval(tmp_path, shown):
    stage = make_stage(tmp_path, "interactive")

    async def scenario():
        task = asyncio.ensure_future(interactive.approve(stage, FakePlan()))
        gate = await gate_shown(shown)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return gate

    gate = asyncio.run(scenario())
    assert all(b.disabled for b in buttons(gate)[:2]) and "interrupted" in buttons(gate)[2].value
    assert records(stage) == []


def test_the_plan_is_shown_as_text_and_html(tmp_path, shown):
    stage = make_stage(tmp_path, "interactive")
    asyncio.run(decide(stage, shown, lambda g: buttons(g)[0].click()))
    bundle = shown[0]
    assert "$ postfix reload" in bundle["text/plain"]
    assert "edit /etc/postfix/main.cf" in bundle["text/plain"]
    assert "+mydomain = <new>.test" in bundle["text/plain"]
    assert "+mydomain = &lt;new&gt;.test" in bundle["text/html"], "diffs are escaped"
    assert shown[1]["text/plain"] == "[Approve / Skip] set mydomain", "no widget repr as record"


def test_describe_reads_operations_plans_in_step_order():
    run = SimpleNamespace(command="newaliases", why="rebuild the alias database")
    write = SimpleNamespace(path="/etc/aliases", why="", diff=lambda: "+root: mailtest\n")
    plan = SimpleNamespace(name="aliases", found="root has no alias", steps=[write, run],
                           cleanup=[SimpleNamespace(command="rm -f /tmp/x", why="")])
    text, markup = interactive.describe(plan)
    lines = text.splitlines()
    assert lines[0] == "plan: aliases (root has no alias)"
    assert lines[1] == "edit /etc/aliases" and lines[2] == "+root: mailtest"
    assert lines[3] == "$ newaliases    # rebuild the alias database"
    assert lines[4] == "$ rm -f /tmp/x (always, also after a failure)"
    assert markup.index("/etc/aliases") < markup.index("newaliases")


def test_batch_progress_prints_plain_lines_with_the_worst_status(tmp_path, capsys):
    stage = make_stage(tmp_path, "batch")
    progress = interactive.Progress(stage, total=2)

    async def scenario():
        async with progress.step("install Postfix"):
            stage.results += [{"name": "a", "status": "ok"}, {"name": "b", "status": "changed"}]
        with pytest.raises(RuntimeError):
            async with progress.step("start Postfix"):
                raise RuntimeError("boom")

    asyncio.run(scenario())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[1/2] install Postfix …"
    assert lines[1].startswith("[1/2] install Postfix: changed in ") and "elapsed" in lines[1]
    assert lines[3].startswith("[2/2] start Postfix: failed in ")
    assert "%" not in "".join(lines), "no progress bar text in a headless record"


def test_interactive_progress_is_one_live_line_ending_in_text(tmp_path, shown):
    stage = make_stage(tmp_path, "interactive")
    progress = interactive.Progress(stage, total=1, tick=0.01)

    async def scenario():
        async with progress.step("install Postfix"):
            await asyncio.sleep(0.05)
            stage.results.append({"name": "install", "status": "changed"})
        await asyncio.sleep(0.03)  # a cancelled ticker updates no more

    asyncio.run(scenario())
    assert len(shown) >= 3, "the running line ticks"
    assert "running for" in shown[1]["text/plain"]
    final = shown[-1]["text/plain"]
    assert final.startswith("[1/1] install Postfix: changed in ")
    assert all(isinstance(o, dict) and "text/plain" in o for o in shown), "no widget"


def test_summary_table_has_html_and_a_text_twin():
    rows = [{"name": "install Postfix", "status": "changed", "duration": 14.2},
            {"name": "check main.cf", "status": "ok", "duration": 0.01},
            {"name": "probe relay", "status": "skipped"}]
    bundle = interactive.summary(rows)
    text = bundle["text/plain"].splitlines()
    assert text[0].split() == ["step", "status", "duration"]
    assert text[1].split() == ["install", "Postfix", "changed", "14.20", "s"]
    assert text[3].split() == ["probe", "relay", "skipped"]
    assert bundle["text/html"].count("<tr>") == 4 and "rb-summary" in bundle["text/html"]


# --- every notebook headless: nothing waits for anyone --------------------------------------

def unreachable_parameters(tmp_path: Path) -> dict:
    data = yaml.safe_load((PROJECT / "params" / "example-debian.yaml").read_text())
    data["target"].update(host="127.0.0.254", connect_timeout=2, key_file=None,
                          known_hosts=str(tmp_path / "known_hosts"))
    (tmp_path / "known_hosts").write_text("")
    return data | {"mode": "batch", "run_dir": str(tmp_path / "run"), "dry_run": False}


@pytest.mark.parametrize("notebook", STAGE_NOTEBOOKS, ids=lambda p: p.name)
def test_stage_notebook_in_batch_fails_fast_on_an_unreachable_host(notebook, tmp_path):
    began = time.monotonic()
    with pytest.raises(PapermillExecutionError) as caught:
        papermill.execute_notebook(
            str(notebook), str(tmp_path / notebook.name), kernel_name="python3",
            parameters=unreachable_parameters(tmp_path), progress_bar=False,
            execution_timeout=30, start_timeout=30, cwd=str(tmp_path))
    seconds = time.monotonic() - began
    assert caught.value.ename == "HostUnreachable", caught.value.evalue
    assert "127.0.0.254" in caught.value.evalue
    assert seconds < 25, f"took {seconds:.1f} s: something waited"
    assert (tmp_path / notebook.name).exists(), "the failed run is kept as its record"


def test_start_notebook_finishes_headless(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNBOOK_PARAMS_DIR", str(tmp_path))
    output = tmp_path / "start.ipynb"
    papermill.execute_notebook(str(PROJECT / "notebooks" / "start.ipynb"), str(output),
                               kernel_name="python3", progress_bar=False,
                               execution_timeout=30, start_timeout=30, cwd=str(tmp_path))
    nb = nbformat.read(output, as_version=4)
    plain = [o.get("data", {}).get("text/plain", "") for c in nb.cells
             if c.cell_type == "code" for o in c.outputs]
    assert plain and all("Box(" in text for text in plain), plain
    assert not any(o.get("output_type") == "error" for c in nb.cells
                   for o in c.get("outputs", []))


# --- session folders ------------------------------------------------------------------------

def test_a_session_holds_clean_copies_of_every_notebook(tmp_path):
    folder = session.create(runs=tmp_path)
    assert folder.parent == tmp_path and folder.name.startswith("session-")
    committed = sorted(p.name for p in (PROJECT / "notebooks").glob("*.ipynb"))
    assert sorted(p.name for p in folder.glob("*.ipynb")) == committed
    for name in committed:
        nb = nbformat.read(folder / name, as_version=4)
        assert not any(c.get("outputs") for c in nb.cells), name
    assert session.create(runs=tmp_path) != folder, "a second session gets its own folder"


def test_a_session_for_a_params_file_prepares_its_stage_notebooks(tmp_path):
    params_file = PROJECT / "params" / "example-debian.yaml"
    folder = session.create(params_file, runs=tmp_path)
    for notebook in STAGE_NOTEBOOKS:
        nb = nbformat.read(folder / notebook.name, as_version=4)
        (injected,) = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert 'mode = "interactive"' in injected.source
        assert f'run_dir = "{folder}"' in injected.source
        assert "mail.example.org" in injected.source
    start = nbformat.read(folder / "start.ipynb", as_version=4)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in start.cells)
    run = json.loads((folder / "run.json").read_text())
    assert (run["host"], run["mode"]) == ("mail.example.org", "interactive")


def test_bad_params_create_no_session(tmp_path):
    data = yaml.safe_load((PROJECT / "params" / "example-debian.yaml").read_text())
    data["postfix"]["mydomain"] = "example.com; touch /tmp/x"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError, match=r"postfix\.mydomain"):
        session.create(tmp_path / "bad.yaml", runs=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_jupyterlab_listens_on_loopback_with_a_token_and_fetches_nothing(tmp_path):
    lab = session.Lab(tmp_path)
    command = lab.command()
    assert "--ServerApp.ip=127.0.0.1" in command and "--no-browser" in command
    assert f"--IdentityProvider.token={lab.token}" in command and len(lab.token) >= 32
    assert f"--ServerApp.root_dir={tmp_path}" in command
    assert "--LabApp.news_url=None" in command
    assert ("--allow-root" in command) == (os.geteuid() == 0)
    assert lab.url("s/start.ipynb") == (
        f"http://127.0.0.1:{lab.port}/lab/tree/s/start.ipynb?token={lab.token}")


def test_the_start_notebook_offers_a_session_for_the_saved_file(tmp_path, monkeypatch):
    shown: list = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    form = SimpleNamespace(saved=None)
    session.offer(form, runs=tmp_path)
    button, result = shown[0].children
    button.click()
    assert "Save a params file" in result.value and not list(tmp_path.iterdir())
    form.saved = PROJECT / "params" / "example-debian.yaml"
    button.click()
    (folder,) = tmp_path.iterdir()
    assert folder.name in result.value and "30-configure" in result.value


def test_summary_outside_a_kernel_is_plain_text(tmp_path, capsys):
    stage = make_stage(tmp_path, "batch")
    stage.results = [{"name": "check main.cf", "status": "ok", "duration": 0.5}]
    interactive.show_summary(stage)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["step", "status", "duration"]
    assert out[1].split() == ["check", "main.cf", "ok", "0.50", "s"]
