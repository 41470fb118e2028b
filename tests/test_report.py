"""The run report, the fleet matrix and the docs site, from run folders written through the
real audit module (tests/reportfakes.py); the lab's real runs are in test_report_lab.py."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from reportfakes import DETECT, MAIN_CF_DIFF, command, run_folder

from runbook import cli, report
from runbook.audit import Audit
from runbook.errors import RunbookError
from runbook.report import collect, site, steps, timeline
from runbook.run import manifest, runner


def html(folder: Path) -> str:
    return (folder / report.REPORT_HTML).read_text()


def facts(folder: Path) -> dict:
    return json.loads((folder / report.REPORT_JSON).read_text())


class Fetches(HTMLParser):
    """Every URL a page would load by itself (scripts, styles, images, frames)."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img", "iframe", "audio", "video", "source") and attrs.get("src"):
            self.urls.append(attrs["src"])
        if tag == "link" and attrs.get("href"):
            self.urls.append(attrs["href"])


def fetches(page: str) -> list[str]:
    parser = Fetches()
    parser.feed(page)
    return parser.urls + re.findall(r"@import|url\((?!data:)[^)]*\)", page)


# --- one run ---------------------------------------------------------------------------------

def test_run_report_has_the_header_stages_timeline_diff_and_probe(tmp_path):
    folder = report.write(run_folder(tmp_path))
    page = html(folder)
    for shown in ("deb1", "SHA256:abc", "debian 12", "f" * 64, "c0ffee", "tester",
                  "intact, 13 records"):
        assert shown in page, shown
    assert re.search(r'<tr data-stage="30-configure">.*?changed', page, re.S)
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="timeline"' in page
    assert page.count('class="bar ') == 5
    assert '<span class="add">+mydomain = deb1.test</span>' in page
    assert '<span class="del">-mydomain = old.test</span>' in page
    assert "S: 220 mail.deb1.test ESMTP" in page and "nothing failed" in page
    assert fetches(page) == []


def test_report_json_holds_the_same_facts(tmp_path):
    data = facts(report.write(run_folder(tmp_path)))
    assert data["header"]["host_key"] == "SHA256:abc"
    assert data["header"]["status"] == "ok" and data["audit"]["intact"] is True
    assert [s["name"] for s in data["stages"]] == ["30-configure", "50-validate"]
    assert data["stages"][0]["changed"] == 1 and data["stages"][0]["steps"] == "G9-G12"
    assert data["changed_files"][0]["diff"] == MAIN_CF_DIFF
    assert data["probes"][0]["transcript"][-1] == "S: 221 Bye"
    results = {c["command"]: c["result"] for c in data["commands"]}
    assert results == {DETECT: "ok", "postconf -n": "ok", "write main.cf": "changed",
                       "postfix reload": "changed", "true": "ok"}


def test_failed_run_shows_the_failed_command_its_output_and_a_red_bar(tmp_path):
    folder = report.write(run_folder(tmp_path, fail=True))
    page = html(folder)
    failure = page.split('id="failures"')[1].split('id="files"')[0]
    assert "G14 · postfix check" in failure and "$ postfix check" in failure
    assert "postfix: fatal: unknown mail_owner: nosuchuser" in failure
    assert "MANIFEST" not in failure  # the undo's reading of the backups is not the culprit
    bars = re.findall(r'<rect class="bar (\w+)".*?<title>(.*?)</title>', page, re.S)
    assert [title.split("\n")[0] for kind, title in bars if kind == "failed"] == [
        "postfix check"]
    data = facts(folder)
    assert data["header"]["status"] == "failed"
    assert data["failures"][0]["commands"][0]["stderr"].startswith("postfix: fatal")


def test_one_changed_byte_is_reported_with_its_line(tmp_path):
    folder = run_folder(tmp_path)
    path = folder / "audit.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"postconf -n", b"postconf -N")  # line 3: one byte
    path.write_bytes(b"".join(lines))
    page = html(report.write(folder))
    audit = page.split('class="audit">')[1].split("</dd>")[0]
    assert "NOT intact at line 3" in audit and "audit.jsonl line 3" in audit
    assert facts(folder)["audit"] | {"problem": None} == {
        "intact": False, "records": None, "signed": None, "problem": None, "line": 3}


def test_a_cut_off_line_is_named_and_the_rest_still_reported(tmp_path):
    folder = run_folder(tmp_path)
    path = folder / "audit.jsonl"
    path.write_bytes(path.read_bytes()[:-20])
    data = facts(report.write(folder))
    assert data["audit"]["line"] == 13 and "cut off" in data["audit"]["problem"]
    assert data["changed_files"] and len(data["stages"]) == 2


def test_old_run_json_without_new_fields_says_unknown(tmp_path):
    folder = run_folder(tmp_path)
    run = json.loads((folder / "run.json").read_text())
    for key in ("operator", "state", "host_key", "platform", "params_sha256", "git_commit"):
        run.pop(key, None)
    for stage in run["stages"].values():
        del stage["duration"], stage["skipped"]
    (folder / "run.json").write_text(json.dumps(run))
    data = facts(report.write(folder))
    header = data["header"]
    assert header["operator"] == header["git_commit"] == "unknown"
    assert header["status"] == "ok"  # from the stages, the run having ended
    assert header["host_key"] == "SHA256:abc" and header["platform"] == "debian 12"
    assert data["stages"][0]["skipped"] == 0  # the stage's own end record still says
    assert "operator</dt><dd>unknown" in html(folder)


def test_a_papermill_run_without_run_json_is_reported_from_its_audit(tmp_path):
    folder = run_folder(tmp_path, run_json=False)
    (folder / "run.json").unlink()
    data = facts(report.write(folder))
    assert [(s["name"], s["status"], s["duration"]) for s in data["stages"]] == [
        ("30-configure", "ok", 0.5), ("50-validate", "ok", 0.2)]
    assert data["header"]["status"] == "unknown" and data["audit"]["intact"] is False
    assert "no audit.last_hash" in data["audit"]["problem"]


def test_an_empty_folder_gives_a_report_of_unknowns(tmp_path):
    data = facts(report.write(tmp_path))
    assert data["header"]["host"] == "unknown" and data["stages"] == []
    assert "no audit record" in data["audit"]["problem"]
    assert "no remote commands recorded" in html(tmp_path)


def test_a_stage_error_outside_any_operation_names_the_notebooks_error(tmp_path):
    folder = tmp_path / "run"
    audit = Audit(folder, stage="40-start", display=False)
    audit.record("stage", event="start", host="deb1", mode="batch", dry_run=False)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("boom()", outputs=[
        nbformat.v4.new_output("error", ename="NameError", evalue="boom", traceback=[])])])
    nbformat.write(nb, folder / "40-start.ipynb")
    (folder / "run.json").write_text(json.dumps({"stages": {"40-start": {
        "status": "failed", "notebook": "40-start.ipynb"}}}))
    data = facts(report.write(folder, notebooks=False))
    assert data["failures"] == [{"stage": "40-start", "operation": None,
                                 "detail": "NameError: boom", "restore": "", "commands": []}]


def test_stage_notebooks_are_rendered_beside_the_report_without_network(tmp_path):
    folder = run_folder(tmp_path)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("## G9 · Who the server is"),
        nbformat.v4.new_code_cell("await pf.ensure_identity(stage)", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="[changed] G9\n")])])
    nbformat.write(nb, folder / "30-configure.ipynb")
    report.write(folder)
    page = (folder / "30-configure.html").read_text()
    assert "[changed] G9" in page and "ensure_identity" in page
    assert fetches(page) == [] and "cdnjs" not in page and "<script" not in page
    assert '<a href="30-configure.html">' in html(folder)
    assert '<a href="report.html">' in page



def test_report_page_only_links_the_notebook_until_its_page_is_made(tmp_path):
    """What `runbook run` writes: no stage page rendered; a page made later is linked, one
    older than its notebook is not."""
    folder = run_folder(tmp_path)
    nbformat.write(nbformat.v4.new_notebook(), folder / "30-configure.ipynb")
    report.write(folder, notebooks=False)
    assert not (folder / "30-configure.html").exists()
    assert '<a href="30-configure.ipynb">30-configure.ipynb</a>' in html(folder)
    report.write(folder)  # runbook report: the pages made
    report.write(folder, notebooks=False)
    assert '<a href="30-configure.html">' in html(folder)
    os.utime(folder / "30-configure.html", (1, 1))
    report.write(folder, notebooks=False)
    assert '<a href="30-configure.html">' not in html(folder)

# --- fleets ----------------------------------------------------------------------------------

def fleet_json(fleet: Path, runs: list[Path]) -> None:
    hosts = [{"name": f"mx{i}", "status": "failed" if "fail" in run.name else "ok",
              "reason": "", "stages": {}, "duration": 3.0, "run_dir": str(run),
              "audit_head": "x"} for i, run in enumerate(runs, 1)]
    hosts.append({"name": "mx9", "status": "unreachable", "reason": "no route to host",
                  "stages": {}, "duration": 0.0, "run_dir": None, "audit_head": None})
    fleet.mkdir()
    (fleet / "fleet.json").write_text(json.dumps({
        "hosts": hosts, "succeeded": ["mx1"], "failed": ["mx2"], "unreachable": ["mx9"]}))


def test_fleet_folder_gives_the_hosts_by_stages_matrix(tmp_path):
    runs = [run_folder(tmp_path, "r-ok"), run_folder(tmp_path, "r-fail", fail=True)]
    fleet = tmp_path / "20261128T140000Z-fleet"
    fleet_json(fleet, runs)
    out = report.write(fleet, notebooks=False)
    assert out == fleet
    data = facts(fleet)
    assert data["stages"] == ["30-configure", "40-start", "50-validate"]
    cells = {h["name"]: {s: c["status"] for s, c in h["cells"].items()} for h in data["hosts"]}
    assert cells == {
        "mx1": {"30-configure": "changed", "40-start": "not run", "50-validate": "ok"},
        "mx2": {"30-configure": "changed", "40-start": "failed", "50-validate": "not run"},
        "mx9": {s: "unreachable" for s in data["stages"]}}
    assert data["unreachable"] == ["mx9"] and data["failed"] == ["mx2"]
    page = html(fleet)
    assert '<a href="../r-ok/report.html">mx1</a>' in page and "no route to host" in page
    assert (runs[1] / "report.html").exists()  # each host's detail, one click away
    assert page.count('class="lane"') == 3 and "mx9 (unreachable)" in page


def test_a_cluster_runs_copies_in_the_fleet_folder_are_found(tmp_path):
    fleet = tmp_path / "fleet"
    fleet_json(fleet, [Path("/nonexistent/run")])
    run_folder(fleet / "hosts", "mx1")
    data = facts(report.write(fleet, notebooks=False))
    assert data["hosts"][0]["cells"]["50-validate"]["status"] == "ok"


def test_several_runs_given_together_make_the_matrix(tmp_path, capsys):
    a = run_folder(tmp_path, "20261128T140501Z-deb1")
    b = run_folder(tmp_path, "20261128T140502Z-deb1", fail=True)
    assert cli.main(["report", str(a), str(b), "--out", str(tmp_path / "both")]) == 0
    assert f"report: {tmp_path / 'both' / 'report.html'}" in capsys.readouterr().out
    data = facts(tmp_path / "both")
    assert [h["name"] for h in data["hosts"]] == ["deb1", "deb1 (20261128T140502Z-deb1)"]
    assert [h["status"] for h in data["hosts"]] == ["ok", "failed"]
    assert data["hosts"][1]["reason"] == "40-start: G14 · postfix check"


def test_report_of_a_missing_folder_is_refused_by_name(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 1
    assert "nope: no such folder" in capsys.readouterr().err


def test_broken_fleet_json_is_named(tmp_path):
    (tmp_path / "fleet.json").write_text("{")
    with pytest.raises(RunbookError, match=r"fleet\.json is not valid JSON"):
        report.write(tmp_path)


# --- the pieces ------------------------------------------------------------------------------

def test_a_failed_operations_culprit_is_the_last_command_that_exited_non_zero(tmp_path):
    audit = Audit(tmp_path, stage="40-start", display=False)
    command(audit, "test -e /x", "2026-11-28T14:05:01.000Z", exit_status=1)
    command(audit, "postconf -n", "2026-11-28T14:05:01.100Z", stderr="unused parameter")
    command(audit, "cat /var/backups/mail-runbook/r/MANIFEST", "2026-11-28T14:05:01.200Z")
    audit.record("operation", name="G15", status="failed", detail="unused parameter")
    command(audit, "postconf -n", "2026-11-28T14:05:02.000Z")
    audit.record("operation", name="G16", status="failed", detail="no output check")
    records = collect.read_records(tmp_path)
    results = [(c["command"], c["result"]) for c in collect.attribute(records)]
    assert results == [("test -e /x", "failed"), ("postconf -n", "ok"),
                       ("cat /var/backups/mail-runbook/r/MANIFEST", "ok"),
                       ("postconf -n", "failed")]


def test_timeline_of_twenty_hosts_stays_readable():
    lanes = [(f"mx{i:02}.example.org", [
        {"command": f"cmd <{j}> & more", "start": f"2026-11-28T14:05:{j:02}.000Z",
         "duration": 0.5, "result": ("ok", "changed", "failed")[j % 3], "seq": j}
        for j in range(30)]) for i in range(20)]
    svg = timeline.draw(lanes)
    height = int(re.search(r'viewBox="0 0 \d+ (\d+)"', svg).group(1))
    assert 20 * timeline.LANE < height < 20 * timeline.LANE + 60
    assert svg.count("<rect class=\"bar") == 600
    assert "cmd &lt;7&gt; &amp; more" in svg and "<7>" not in svg
    assert svg.count('data-result="failed"') == 200


@pytest.mark.parametrize(("span", "step"), [(0.05, 0.005), (1.0, 0.1), (7, 1), (19, 2),
                                             (45, 5), (600, 100)])
def test_timeline_ticks_are_round(span, step):
    assert timeline.tick_step(span) == pytest.approx(step)


def test_guide_steps_are_all_listed_and_ranges_expand():
    assert list(steps.STEPS) == [f"G{n}" for n in range(1, 25)]
    assert steps.ids_in("guide steps G3–G8 and G10") == ["G3", "G4", "G5", "G6", "G7", "G8",
                                                         "G10"]
    assert steps.ids_in("before G1") == ["G1"] and steps.ids_in("G99, GG1") == []


@pytest.mark.parametrize("stage", manifest.MANIFEST, ids=lambda s: s.name)
def test_every_step_a_notebook_names_is_in_the_list(stage):
    text = (stage.notebook.with_suffix(".md")).read_text()
    named = set(re.findall(r"\bG\d+\b", text))
    assert named <= set(steps.STEPS), named - set(steps.STEPS)


def test_step_ids_become_links_and_headings_anchors():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 40 · Check (guide steps G13–G16)"),
        nbformat.v4.new_markdown_cell("## G14 · `postfix check G14`\n\nas in G13"),
        nbformat.v4.new_code_cell("G14 = 1")])
    carried = {s: [] for s in steps.STEPS}
    site.link_steps(nb, "40-start", carried)
    title, section, code = (c.source for c in nb.cells)
    assert title.startswith('<a id="step-G13"></a><a id="step-G15"></a><a id="step-G16"></a>')
    assert "[G13](steps.html#G13)–[G16](steps.html#G16)" in title
    assert section.startswith('<a id="step-G14"></a>\n\n## [G14](steps.html#G14) · ')
    assert "`postfix check G14`" in section and code == "G14 = 1"
    assert carried["G14"] == [{"stage": "40-start", "heading": "G14 · postfix check G14",
                               "href": "40-start.html#step-G14"}]


def test_docs_site_without_a_run_links_every_stage_and_step(tmp_path, capsys):
    assert cli.main(["docs", "--out", str(tmp_path)]) == 0
    assert f"site: {tmp_path / 'index.html'}" in capsys.readouterr().out
    index = (tmp_path / "index.html").read_text()
    for stage in manifest.MANIFEST:
        page = (tmp_path / f"{stage.name}.html").read_text()
        assert f'href="{stage.name}.html"' in index
        for step in steps.ids_in(stage.steps) if stage.steps != "before G1" else []:
            assert f'href="steps.html#{step}"' in page, (stage.name, step)
        assert fetches(page) == []
    listed = (tmp_path / "steps.html").read_text()
    assert all(f'<tr id="{s}">' in listed for s in steps.STEPS)
    assert 'href="40-start.html#step-G14"' in listed
    assert 'id="step-G14"' in (tmp_path / "40-start.html").read_text()


def test_old_run_json_platform_from_the_detect_command(tmp_path):
    audit = Audit(tmp_path, stage="00-preflight", display=False)
    command(audit, DETECT, "2026-11-28T14:05:01.000Z",
            stdout="OpenBSD 7.6\n@@os-release\n")
    assert collect.read_run(tmp_path)["header"]["platform"] == "openbsd 7.6"


def test_a_signed_runs_changed_notebook_is_named(tmp_path):
    from runbook import signing

    folder = run_folder(tmp_path)
    nbformat.write(nbformat.v4.new_notebook(), folder / "30-configure.ipynb")
    (folder / signing.HEAD_FILE).write_text(json.dumps(signing.head(folder)))
    (folder / signing.SIGNATURE_FILE).write_text("-----BEGIN SSH SIGNATURE-----\n")
    assert "signed: the head and the notebook digests match" in html(
        report.write(folder, notebooks=False))
    nbformat.write(nbformat.v4.new_notebook(metadata={"x": 1}), folder / "30-configure.ipynb")
    data = facts(report.write(folder, notebooks=False))
    assert data["audit"]["intact"] is False
    assert data["audit"]["problem"] == ("30-configure.ipynb: changed since it was signed (its "
                                        "SHA-256 is not the signed one)")


def test_runner_never_lets_a_report_error_hide_the_run(tmp_path, monkeypatch):
    said = []

    def broken(folder, **options):
        raise ValueError("no room")

    monkeypatch.setattr(report, "write", broken)
    runner.write_report(tmp_path, echo=lambda *a, **k: said.append(a[0]))
    assert said == ["the run report was not written: ValueError: no room"]
