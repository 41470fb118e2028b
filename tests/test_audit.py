"""The audit chain: records as written, run.json, verify naming the record that does not fit."""

import hashlib
import json
import re
import sys
import tempfile
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runbook import audit as audit_mod
from runbook.audit import Audit, read_run_json, update_run_json, verify
from runbook.errors import AuditError


def write_records(run_dir: Path, n: int = 5) -> Audit:
    a = Audit(run_dir, stage="10-postfix", display=False)
    for i in range(n):
        a.record("note", text=f"record {i} — ünïcode")
    return a


def lines_of(run_dir: Path) -> list[bytes]:
    return (run_dir / "audit.jsonl").read_bytes().splitlines(keepends=True)


def named_line(exc: pytest.ExceptionInfo) -> int:
    return int(re.search(r"line (\d+) \(", str(exc.value)).group(1))


def test_records_are_chained_lines_and_run_json_holds_the_last_hash(tmp_path):
    update_run_json(tmp_path, host="h1", stages=["10-postfix"])
    a = write_records(tmp_path, 3)
    rec = a.record("operation", name="set mydomain", status="changed", detail="example.com")
    raw = lines_of(tmp_path)
    assert len(raw) == 4
    records = [json.loads(line) for line in raw]
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert list(records[3]) == ["seq", "time", "type", "stage", "name", "status", "detail", "prev"]
    assert records[0]["prev"] == "0" * 64
    for before, after in zip(raw, records[1:], strict=False):
        assert after["prev"] == hashlib.sha256(before).hexdigest()
    assert rec == records[3] and rec["stage"] == "10-postfix"
    assert all(b"\n" not in line[:-1] for line in raw)
    assert "ünïcode".encode() in raw[0]  # ensure_ascii=False
    run = read_run_json(tmp_path)
    assert run["host"] == "h1" and run["stages"] == ["10-postfix"]  # other keys kept
    assert run["audit"] == {"records": 4, "last_hash": hashlib.sha256(raw[-1]).hexdigest()}
    assert verify(tmp_path) == 4


def test_a_new_audit_continues_an_existing_chain(tmp_path):
    write_records(tmp_path, 2)
    b = Audit(tmp_path, stage="20-aliases", display=False)
    rec = b.record("stage", event="start")
    assert rec["seq"] == 3 and rec["stage"] == "20-aliases"
    assert rec["prev"] == hashlib.sha256(lines_of(tmp_path)[1]).hexdigest()
    assert verify(tmp_path) == 3


def test_stage_can_be_given_per_record(tmp_path):
    a = Audit(tmp_path, stage="s1", display=False)
    assert a.record("note", text="x", stage="s2")["stage"] == "s2"
    with pytest.raises(ValueError, match="seq"):
        a.record("note", seq=7)


def test_secrets_are_masked_everywhere(tmp_path):
    a = Audit(tmp_path, display=False)
    a.add_secret("hunter2")
    a.add_secret("hunter2-long")
    a.add_secret("")  # an empty secret must not mask everything
    rec = a.record(
        "command",
        command="doveadm pw -p hunter2-long",
        stdout="hunter2\nok",
        transcript=[{"sent": "AUTH PLAIN hunter2"}],
    )
    text = (tmp_path / "audit.jsonl").read_text()
    assert "hunter2" not in text
    assert rec["command"] == "doveadm pw -p ********"
    assert rec["stdout"] == "********\nok"
    assert rec["transcript"] == [{"sent": "AUTH PLAIN ********"}]


def test_undecodable_output_survives_the_chain(tmp_path):
    a = Audit(tmp_path, display=False)
    out = b"caf\xe9 \xff\n".decode("utf-8", "surrogateescape")
    a.record("command", stdout=out)
    line = lines_of(tmp_path)[0]
    assert json.loads(line)["stdout"] == out
    assert verify(tmp_path) == 1


def test_a_damaged_last_record_refuses_appending(tmp_path):
    write_records(tmp_path, 2)
    path = tmp_path / "audit.jsonl"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(AuditError, match="damaged"):
        Audit(tmp_path, display=False).record("note", text="after a crash")


def test_update_run_json_is_atomic_and_merges(tmp_path):
    assert read_run_json(tmp_path) == {}
    update_run_json(tmp_path, status="running")
    update_run_json(tmp_path, finished="now")
    assert read_run_json(tmp_path) == {"status": "running", "finished": "now"}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left


# --- verify: every way of tampering names the record -------------------------------------

N = 6


@pytest.fixture(scope="module")
def chain() -> tuple[bytes, dict]:
    with tempfile.TemporaryDirectory() as d:
        a = Audit(Path(d), display=False)
        for i in range(N):
            a.record("command", command=f"echo {i}", stdout=f"{i}\n", exit_status=0)
        return (Path(d) / "audit.jsonl").read_bytes(), read_run_json(Path(d))


def check(data: bytes, run: dict) -> pytest.ExceptionInfo:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "audit.jsonl").write_bytes(data)
        (Path(d) / "run.json").write_text(json.dumps(run))
        with pytest.raises(AuditError) as exc:
            verify(Path(d))
        return exc


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_changed_byte_is_detected_naming_its_line(chain, data):
    raw, run = chain
    pos = data.draw(st.integers(0, len(raw) - 1))
    new = (raw[pos] + data.draw(st.integers(1, 255))) % 256
    exc = check(raw[:pos] + bytes([new]) + raw[pos + 1 :], run)
    assert named_line(exc) == raw[:pos].count(b"\n") + 1


@pytest.mark.parametrize("gone", range(N - 1))
def test_a_removed_line_is_detected(chain, gone):
    raw, run = chain
    lines = raw.splitlines(keepends=True)
    exc = check(b"".join(lines[:gone] + lines[gone + 1 :]), run)
    assert named_line(exc) == gone + 1
    assert "removed" in str(exc.value)


def test_a_removed_last_line_is_detected(chain):
    raw, run = chain
    lines = raw.splitlines(keepends=True)
    exc = check(b"".join(lines[:-1]), run)
    assert named_line(exc) == N - 1
    assert "removed" in str(exc.value)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_truncated_file_is_detected(chain, data):
    raw, run = chain
    cut = data.draw(st.integers(0, len(raw) - 1))
    exc = check(raw[:cut], run)
    if cut == 0:
        assert "empty" in str(exc.value)
    else:
        whole = raw[:cut].count(b"\n")
        assert named_line(exc) == (whole if raw[:cut].endswith(b"\n") else whole + 1)


def test_an_edited_run_json_is_detected(chain):
    raw, run = chain
    exc = check(raw, {"audit": {**run["audit"], "records": N + 1}})
    assert "run.json" in str(exc.value)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "audit.jsonl").write_bytes(raw)
        with pytest.raises(AuditError, match="last_hash"):
            verify(Path(d))  # no run.json: the end of the chain is not anchored


def test_an_intact_chain_verifies(chain):
    raw, run = chain
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "audit.jsonl").write_bytes(raw)
        (Path(d) / "run.json").write_text(json.dumps(run))
        assert verify(Path(d)) == N


# --- display -----------------------------------------------------------------------------


def test_summaries_are_one_readable_line():
    cmd = {"type": "command", "command": "postconf -n", "exit_status": 0, "duration": 0.013}
    assert audit_mod.summary(cmd) == "$ postconf -n  (exit 0, 0.01 s)"
    op = {"type": "operation", "name": "set mydomain", "status": "changed"}
    assert audit_mod.summary(op) == "[changed] set mydomain"
    late = {"type": "command", "command": "sleep 9", "timed_out": 1.0}
    assert audit_mod.summary(late) == "$ sleep 9  (timed out after 1.0 s)"


def test_records_are_displayed_only_in_a_kernel(tmp_path, monkeypatch):
    shown = []
    fake = types.ModuleType("IPython.display")
    fake.display = lambda bundle, raw: shown.append((bundle, raw))
    monkeypatch.setitem(sys.modules, "IPython.display", fake)
    a = Audit(tmp_path)
    monkeypatch.setattr(audit_mod, "_in_kernel", lambda: False)
    a.record("note", text="outside")
    assert shown == []
    monkeypatch.setattr(audit_mod, "_in_kernel", lambda: True)
    rec = a.record("command", command="echo <b>", exit_status=0, duration=0.5, stdout="<b>\n")
    a.record("note", text="hidden", show=False)
    [(bundle, raw)] = shown
    assert raw is True
    assert bundle["text/plain"] == "$ echo <b>  (exit 0, 0.50 s)"
    assert "&lt;b&gt;" in bundle["text/html"] and "<b>" not in bundle["text/html"]
    assert bundle["application/vnd.mail-runbook.audit+json"] == rec
    Audit(tmp_path, display=False).record("note", text="never shown")
    assert len(shown) == 1
