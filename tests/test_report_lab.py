"""The report and the docs site of real lab runs, opened in Debian's headless Chromium.

One real default run serves every test: deb3 made fresh, then a fleet run of deb3 and a host
nobody answers for (so the fleet folder, fleet.json and all, is a real one); each host's
runner writes its report. Then a run on deb3 failing in 40-start. Every page is opened with
each request watched: none may leave the file. Needs root, the lab and /usr/bin/chromium;
fails (never skips) without them. deb3 is stopped at the end.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import labrun
import pytest
import yaml
from labrun import booted, ssh

from runbook import cli, inventory, lab
from runbook.fleet import controller, record
from runbook.report import steps
from runbook.run import manifest

pytestmark = [pytest.mark.lab, pytest.mark.browser]

PROJECT = Path(__file__).resolve().parent.parent
ARTIFACTS = PROJECT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
DEFAULT = [s.name for s in manifest.MANIFEST if s.default]
HOST = "deb3"  # this module's own lab host
# The fleet's second host: nothing listens there. Not deb3's address on another port: two
# hosts of one address started in the same second pick the same run folder name, and the
# unreachable one's fleet.json entry then names deb3's run (see the fleet's child.run).
GONE = "gone"
GONE_TARGET = {"host": "127.0.0.1", "port": 1}


@pytest.fixture(scope="module")
def host():
    made = booted(HOST, fresh=True)
    yield made
    lab.down([HOST])  # the reports need only the records


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("report")


@pytest.fixture(scope="module")
def fleet(host, runs) -> Path:
    """The fleet folder of a real fleet run: deb3's default run, and a host unreachable."""
    params = yaml.safe_load(Path(host["params_file"]).read_text())
    gone = inventory.merge(params, {"target": GONE_TARGET})
    path = runs / "fleet.yaml"
    path.write_text(yaml.safe_dump({"shared": {}, "hosts": [
        {"name": HOST, **params}, {"name": GONE, **gone}]}))
    return controller.run(inventory.load(path), controller.Options(stages=DEFAULT),
                          runs_root=runs / "runs", out=io.StringIO())


@pytest.fixture(scope="module")
def full_run(fleet) -> Path:
    entry = next(h for h in record.read(fleet)["hosts"] if h["name"] == HOST)
    assert entry["status"] == "ok", entry
    return Path(entry["run_dir"])


@pytest.fixture(scope="module")
def failed_run(host, full_run, runs) -> Path:
    """40-start after a broken main.cf value was put on the host: `postfix check` fails."""
    ssh(host, "postconf -e mail_owner=nosuchuser")
    try:
        return labrun.run(runs, host["params_file"], ["40-start"], expect_failure=True)
    finally:
        ssh(host, "postconf -e mail_owner=postfix")


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


class Offline:
    """A page whose every request is watched: files under `root` load, anything else is
    refused and remembered."""

    def __init__(self, browser, root: Path):
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.root = root.resolve().as_uri()
        self.outside: list[str] = []
        self.page.route("**/*", self._route)

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.root + "/") or url.startswith("data:"):
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def open(self, path: Path):
        self.page.goto(path.resolve().as_uri())
        return self.page

    def close(self):
        self.page.close()


def records(run_dir: Path) -> list[dict]:
    return labrun.audit(run_dir)


def test_report_of_a_real_run_shows_stages_timeline_and_diffs_offline(browser, host, full_run):
    view = Offline(browser, full_run)
    page = view.open(full_run / "report.html")
    rows = page.locator("table.stages tbody tr")
    assert [rows.nth(i).get_attribute("data-stage") for i in range(rows.count())] == DEFAULT
    assert page.locator("table.stages .status.failed").count() == 0
    commands = [r for r in records(full_run) if r["type"] == "command"]
    assert page.locator("svg.timeline rect.bar").count() == len(commands)
    assert page.locator("svg.timeline rect.bar.changed").count() > 0
    assert page.locator("svg.timeline g.lane").count() == len(DEFAULT)
    assert page.locator("svg.timeline rect.bar title").first.text_content()  # the command
    main_cf = page.locator(".changed-file", has_text="/etc/postfix/main.cf").first
    assert main_cf.locator("pre.diff .add").count() > 0
    header = page.locator("dl.header").inner_text()
    assert commands[0]["fingerprint"] in header and f"debian {host['release']}" in header
    assert "intact" in page.locator("dd.audit").inner_text()
    transcripts = page.locator(".probe pre.transcript").all_inner_texts()
    assert any("S: 220" in t for t in transcripts) and any("LOGIN" in t for t in transcripts)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-run.png"), full_page=True)
    # the run wrote the report page only: each stage links its notebook until runbook report
    assert page.locator("table.stages a[href='40-start.ipynb']").count() == 1
    assert not list(full_run.glob("*-*.html"))
    assert cli.main(["report", str(full_run)]) == 0
    page = view.open(full_run / "report.html")
    page.click("table.stages a[href='40-start.html']")
    page.wait_for_load_state()
    assert page.url.endswith("/40-start.html")
    assert "postfix check" in page.locator("main").inner_text()
    assert view.outside == [], view.outside
    view.close()


def test_a_run_failing_in_40_start_shows_the_failed_command_and_its_output(browser,
                                                                           failed_run):
    view = Offline(browser, failed_run)
    page = view.open(failed_run / "report.html")
    failure = page.locator(".failure").first.inner_text()
    assert "40-start" in failure and "G14" in failure
    command = page.locator(".failure pre.command").first.inner_text()
    assert "postfix check" in command
    assert "nosuchuser" in " ".join(page.locator(".failure pre.output").all_inner_texts())
    red = page.locator("svg.timeline rect.bar.failed")
    assert red.count() == 1 and "postfix check" in red.locator("title").text_content()
    assert page.locator("table.stages tr[data-stage='40-start'] .status").inner_text() == (
        "failed")
    assert json.loads((failed_run / "report.json").read_text())["header"]["status"] == "failed"
    assert view.outside == [], view.outside
    view.close()


def test_one_changed_byte_in_the_record_is_named_in_the_report(browser, full_run, tmp_path):
    copy = shutil.copytree(full_run, tmp_path / full_run.name)
    path = copy / "audit.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    target = next(i for i, line in enumerate(lines) if b'"type":"command"' in line)
    lines[target] = lines[target].replace(b'"exit_status":0', b'"exit_status":1', 1)
    path.write_bytes(b"".join(lines))
    assert cli.main(["report", str(copy)]) == 0
    view = Offline(browser, copy)
    audit = view.open(copy / "report.html").locator("dd.audit").inner_text()
    assert f"NOT intact at line {target + 1}" in audit
    assert f"audit.jsonl line {target + 1}" in audit
    view.close()


def test_fleet_of_real_runs_gives_the_hosts_by_stages_matrix(browser, fleet, full_run,
                                                             failed_run, tmp_path):
    gone = next(h for h in record.read(fleet)["hosts"] if h["name"] == GONE)
    assert gone["status"] == "unreachable" and gone["run_dir"] is None, gone
    assert cli.main(["report", str(fleet)]) == 0
    view = Offline(browser, fleet.parent)
    page = view.open(fleet / "report.html")
    cells = {row.get_attribute("data-host"): [c.get_attribute("data-key") for c in
                                              row.locator("td.cell").all()]
             for row in page.locator("table.matrix tbody tr").all()}
    assert set(cells) == {HOST, GONE}
    assert len(cells[HOST]) == len(DEFAULT) and set(cells[HOST]) == {"ok", "changed"}
    assert cells[GONE] == ["unreachable"] * len(DEFAULT)
    gone_row = page.locator(f"table.matrix tr[data-host='{GONE}']").inner_text()
    assert "Connect call failed" in gone_row  # the reason, beside the row
    page.click(f"table.matrix a:has-text('{HOST}')")  # the host's own report, one click away
    page.wait_for_load_state()
    assert page.url.endswith(f"/{full_run.name}/report.html")
    from playwright.sync_api import expect  # as the browser fixture: imported when it runs

    expect(page.locator("table.stages tbody tr")).to_have_count(len(DEFAULT))
    assert view.outside == [], view.outside
    view.close()
    # and two runs of deb3 given together, without a fleet.json
    assert cli.main(["report", str(full_run), str(failed_run), "--out",
                     str(tmp_path / "both")]) == 0
    matrix = json.loads((tmp_path / "both" / "report.json").read_text())
    assert [h["status"] for h in matrix["hosts"]] == ["ok", "failed"]
    assert matrix["hosts"][1]["cells"]["40-start"]["status"] == "failed"
    assert matrix["hosts"][1]["cells"]["00-preflight"]["status"] == "not run"


def test_docs_site_with_a_run_shows_each_steps_real_output(browser, full_run, tmp_path):
    site = tmp_path / "site"
    assert cli.main(["docs", "--out", str(site), "--run", str(full_run)]) == 0
    view = Offline(browser, tmp_path.parent)
    page = view.open(site / "index.html")
    assert full_run.name in page.locator("p.run").inner_text()
    for stage in manifest.MANIFEST:
        page = view.open(site / f"{stage.name}.html")
        named = page.locator("p.guide-steps a.step-id").all_inner_texts()
        assert named == steps.ids_in(stage.steps), stage.name
        outputs = page.locator(".jp-OutputArea-output").count()
        if stage.default:
            assert outputs > 0, f"{stage.name} shows no output of the run"
            assert "real output" in page.locator(".runbook-note").inner_text()
        else:
            assert outputs == 0 and "not part of" in page.locator(".runbook-note").inner_text()
    page = view.open(site / "40-start.html")
    assert re.search(r"\[(ok|changed)\] G14", page.locator("main").inner_text())
    page.click("a.step-id:has-text('G14')")
    assert page.url.endswith("steps.html#G14")
    page.click("tr#G14 a")
    assert page.url.endswith("40-start.html#step-G14")
    assert view.outside == [], view.outside
    view.close()
