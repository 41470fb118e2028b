"""The runner and the preflight notebook against a real lab host, over real SSH."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from runbook import audit
from runbook import params as params_model
from runbook.errors import AuditError, HostKeyChanged, HostUnreachable, ParamsError
from runbook.remote.lock import TargetBusy, TargetLock
from runbook.run import runner

pytestmark = pytest.mark.lab


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines()]


def variant(lab_host, tmp_path, **target) -> Path:
    """A copy of the lab host's params file with some target values changed."""
    data = yaml.safe_load(Path(lab_host["params_file"]).read_text())
    data["target"].update(target)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def preflight_run(lab_host, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    return runner.run(lab_host["params_file"], stages=["preflight"], runs_root=runs)


def test_preflight_through_the_runner(preflight_run, lab_host):
    run_dir = preflight_run
    assert run_dir.name.endswith(f"-{lab_host['address']}")
    nb = nbformat.read(run_dir / "00-preflight.ipynb", as_version=4)
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "debian 12" in text
    assert "test recipient: uid=" in text and "mailtest" in text
    assert "Postfix: not installed yet" in text
    kinds = [r["type"] for r in records(run_dir)]
    assert kinds[0] == "stage" and "command" in kinds and kinds[-1] == "stage"
    command = next(r for r in records(run_dir) if r["type"] == "command")
    assert command["host"] == lab_host["address"] and command["fingerprint"].startswith("SHA256:")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["stages"]["00-preflight"]["status"] == "ok"
    assert run["stages"]["00-preflight"]["ok"] >= 4
    assert run["git_commit"] and run["tools"]["papermill"]
    assert audit.verify(run_dir) == len(records(run_dir))


def test_audit_verify_rejects_one_changed_byte(preflight_run, tmp_path):
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(preflight_run), str(copy)], check=True)
    data = bytearray((copy / "audit.jsonl").read_bytes())
    at = data.index(b'"type":"command"') + 9  # one byte of the first command record
    line = data[:at].count(b"\n") + 1
    data[at] ^= 0x01
    (copy / "audit.jsonl").write_bytes(bytes(data))
    with pytest.raises(AuditError, match=rf"line {line} \(seq {line}\): changed"):
        audit.verify(copy)
    cli = subprocess.run([sys.executable, "-m", "runbook.cli", "audit", "verify", str(copy)],
                         capture_output=True, text=True)
    assert cli.returncode != 0 and f"line {line} (seq {line})" in cli.stderr


def test_resume_continues_the_same_chain(preflight_run, lab_host):
    before = len(records(preflight_run))
    runner.run(lab_host["params_file"], stages=["preflight"], start="preflight",
               run_dir=preflight_run)
    after = records(preflight_run)
    assert len(after) > before
    assert audit.verify(preflight_run) == len(after)


def test_changed_host_key_is_refused_with_nothing_run(lab_host, tmp_path):
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    known = tmp_path / "known_hosts"
    key = wrong.with_suffix(".pub").read_text().split()[:2]
    known.write_text(f"{lab_host['address']} {' '.join(key)}\n")
    path = variant(lab_host, tmp_path, known_hosts=str(known))
    runs = tmp_path / "runs"
    with pytest.raises(HostKeyChanged, match=re.escape(lab_host["address"])):
        runner.run(path, stages=["preflight"], runs_root=runs)
    assert not runs.exists() or not any(runs.iterdir()), "nothing recorded, nothing run"


def test_unreachable_host_gives_one_clear_error(lab_host, tmp_path):
    path = variant(lab_host, tmp_path, host="127.0.0.254", connect_timeout=3)
    with pytest.raises(HostUnreachable, match=re.escape("127.0.0.254")) as caught:
        runner.run(path, stages=["preflight"], runs_root=tmp_path / "runs")
    assert len(str(caught.value).splitlines()) == 1


def test_bad_params_create_no_run_folder(lab_host, tmp_path):
    data = yaml.safe_load(Path(lab_host["params_file"]).read_text())
    data["postfix"]["mydomain"] = "example.com; touch /tmp/x"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    runs = tmp_path / "runs"
    with pytest.raises(ParamsError, match=re.escape("postfix.mydomain")):
        runner.run(path, runs_root=runs)
    assert not runs.exists() or not any(runs.iterdir())


def test_a_second_run_waits_for_the_lock(lab_host, tmp_path):
    target = params_model.load(lab_host["params_file"]).target
    with TargetLock(target, "holder"), pytest.raises(TargetBusy, match="holder"):
        runner.run(lab_host["params_file"], stages=["preflight"], runs_root=tmp_path)
    # released: the next run goes through
    runner.run(lab_host["params_file"], stages=["preflight"], runs_root=tmp_path)


def test_cli_run_fails_with_stage_cell_and_notebook(lab_host, tmp_path):
    data = yaml.safe_load(Path(lab_host["params_file"]).read_text())
    data["postfix"]["test_recipient"] = "nosuchuser"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    cli = subprocess.run(
        [sys.executable, "-m", "runbook.cli", "run", str(path), "--stages", "preflight",
         "--run-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert cli.returncode == 1
    assert "stage 00-preflight failed in cell" in cli.stderr
    assert "nosuchuser" in cli.stderr and "00-preflight.ipynb" in cli.stderr
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["stages"]["00-preflight"]["status"] == "failed"
    assert run["stages"]["00-preflight"]["failed"] == 1
