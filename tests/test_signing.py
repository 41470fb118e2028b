"""Signed records: OpenSSH signatures over the chain head and the notebooks, and the anchor.

The run folders here are made by the audit module itself (records, run.json, executed
notebooks as files); the keys are real OpenSSH keys, signing and checking is real
ssh-keygen, and one case signs through a real ssh-agent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runbook import signing
from runbook.audit import Audit, read_run_json, sha256, split_lines, update_run_json
from runbook.errors import AuditError


def keypair(directory: Path, name: str) -> Path:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
                   check=True)
    return key


def allowed(directory: Path, *keys: tuple[str, Path]) -> Path:
    path = directory / "allowed_signers"
    path.write_text("".join(
        f"{who} {' '.join(key.with_suffix('.pub').read_text().split()[:2])}\n"
        for who, key in keys))
    return path


def make_run(runs: Path, name: str = "20261128T140501Z-192.0.2.7", records: int = 6) -> Path:
    run_dir = runs / name
    run_dir.mkdir(parents=True)
    update_run_json(run_dir, id=name, host="192.0.2.7")
    audit = Audit(run_dir, stage="00-preflight", display=False)
    for i in range(records):
        audit.record("command", command=f"echo {i}", exit_status=0, stdout=f"{i}\n")
    for stage in ("00-preflight", "10-install"):
        (run_dir / f"{stage}.ipynb").write_text(json.dumps(
            {"cells": [{"cell_type": "code", "outputs": [{"text": f"{stage} done\n"}]}]}))
    return run_dir


@pytest.fixture
def keys(tmp_path):
    home = tmp_path / "keys"
    home.mkdir()
    operator, stranger = keypair(home, "operator"), keypair(home, "stranger")
    return operator, stranger, allowed(home, ("operator@example.org", operator))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runbook.cli", *map(str, args)],
                          capture_output=True, text=True)


def test_a_signed_run_verifies_naming_its_signer(tmp_path, keys):
    operator, _, signers = keys
    run_dir = make_run(tmp_path / "runs")
    signing.seal(run_dir, operator, tmp_path / "anchor.jsonl")
    verdict = signing.verify_run(run_dir, allowed_signers=signers,
                                 anchor_file=tmp_path / "anchor.jsonl")
    assert (verdict.records, verdict.signed, verdict.signer, verdict.anchored) == (
        6, True, "operator@example.org", 1)
    head = json.loads((run_dir / "head.json").read_text())
    assert head["notebooks"].keys() == {"00-preflight.ipynb", "10-install.ipynb"}
    assert head["head"] == read_run_json(run_dir)["audit"]["last_hash"]
    assert (run_dir / "head.json.sig").read_text().startswith("-----BEGIN SSH SIGNATURE")
    done = cli("audit", "verify", run_dir, "--allowed-signers", signers,
               "--anchor", tmp_path / "anchor.jsonl")
    assert done.returncode == 0, done.stderr
    assert "6 records" in done.stdout and "signed by operator@example.org" in done.stdout


def test_an_edited_notebook_output_is_rejected(tmp_path, keys):
    operator, _, signers = keys
    run_dir = make_run(tmp_path / "runs")
    signing.sign(run_dir, operator)
    notebook = run_dir / "10-install.ipynb"
    notebook.write_text(notebook.read_text().replace("10-install done", "10-install fine"))
    with pytest.raises(AuditError, match=r"10-install\.ipynb: changed since it was signed"):
        signing.verify_run(run_dir, allowed_signers=signers)
    done = cli("audit", "verify", run_dir)  # digests are checked even without the signers
    assert done.returncode == 1 and "10-install.ipynb: changed" in done.stderr


def test_an_added_or_removed_notebook_is_rejected(tmp_path, keys):
    operator, _, signers = keys
    run_dir = make_run(tmp_path / "runs")
    signing.sign(run_dir, operator)
    shutil.copy(run_dir / "10-install.ipynb", run_dir / "20-enable.ipynb")
    with pytest.raises(AuditError, match=r"20-enable\.ipynb: not among the signed"):
        signing.verify_run(run_dir, allowed_signers=signers)
    (run_dir / "20-enable.ipynb").unlink()
    (run_dir / "00-preflight.ipynb").unlink()
    with pytest.raises(AuditError, match=r"00-preflight\.ipynb: signed, but missing"):
        signing.verify_run(run_dir, allowed_signers=signers)


def test_a_signature_by_another_key_is_rejected(tmp_path, keys):
    operator, stranger, signers = keys
    run_dir = make_run(tmp_path / "runs")
    signing.sign(run_dir, operator)
    # the stranger signs the very same head.json: a good signature, by a key not allowed
    forged = signing.signature(stranger, (run_dir / "head.json").read_bytes())
    (run_dir / "head.json.sig").write_bytes(forged)
    with pytest.raises(AuditError, match=r"head\.json\.sig: not made by any key in"):
        signing.verify_run(run_dir, allowed_signers=signers)
    done = cli("audit", "verify", run_dir, "--allowed-signers", signers)
    assert done.returncode == 1 and "not made by any key" in done.stderr


def test_a_head_rewritten_and_signed_again_by_another_key_is_rejected(tmp_path, keys):
    operator, stranger, signers = keys
    run_dir = make_run(tmp_path / "runs")
    signing.sign(run_dir, operator)
    signing.sign(run_dir, stranger)  # whoever rewrote the folder signs it with their key
    with pytest.raises(AuditError, match="not made by any key"):
        signing.verify_run(run_dir, allowed_signers=signers)


def test_a_changed_head_under_the_old_signature_is_rejected(tmp_path, keys):
    operator, _, signers = keys
    run_dir = make_run(tmp_path / "runs")
    signing.sign(run_dir, operator)
    head = (run_dir / "head.json").read_text()
    (run_dir / "head.json").write_text(head.replace('"host": "192.0.2.7"',
                                                    '"host": "192.0.2.7" '))
    with pytest.raises(AuditError, match=r"signature does not match head\.json"):
        signing.verify_run(run_dir, allowed_signers=signers)


def cut_tail(run_dir: Path, keep: int) -> None:
    """Remove the last records and make run.json's head fit: the chain verifies again."""
    lines = split_lines((run_dir / "audit.jsonl").read_bytes())[:keep]
    (run_dir / "audit.jsonl").write_bytes(b"".join(lines))
    update_run_json(run_dir, audit={"records": keep, "last_hash": sha256(lines[-1])})


def test_a_cut_tail_with_its_head_removed_is_caught_by_the_anchor(tmp_path, keys):
    operator, _, signers = keys
    run_dir = make_run(tmp_path / "runs")
    anchor = tmp_path / "log-host" / "anchor.jsonl"
    signing.seal(run_dir, operator, anchor)
    cut_tail(run_dir, 4)
    with pytest.raises(AuditError, match=r"records were removed or added after signing"):
        signing.verify_run(run_dir, allowed_signers=signers)
    # whoever cut it also removed the signature: the chain holds, the anchor does not
    (run_dir / "head.json").unlink()
    (run_dir / "head.json.sig").unlink()
    verdict = signing.verify_run(run_dir, allowed_signers=signers)
    assert verdict.records == 4 and not verdict.signed
    with pytest.raises(AuditError, match=r"had 6 records .* holds 4 — records were removed"):
        signing.verify_run(run_dir, allowed_signers=signers, anchor_file=anchor)
    done = cli("audit", "verify", run_dir, "--anchor", anchor)
    assert done.returncode == 1 and "records were removed" in done.stderr


def test_a_rewritten_chain_of_the_same_length_is_caught_by_the_anchor(tmp_path):
    run_dir = make_run(tmp_path / "runs")
    anchor = tmp_path / "anchor.jsonl"
    signing.anchor(run_dir, anchor)
    shutil.rmtree(run_dir)
    make_run(tmp_path / "runs")  # the same id, the same number of records: other bytes
    with pytest.raises(AuditError, match="is not in the chain — the record was rewritten"):
        signing.verify_run(run_dir, anchor_file=anchor)


def test_a_run_missing_from_the_anchor_is_rejected(tmp_path):
    anchor = tmp_path / "anchor.jsonl"
    signing.anchor(make_run(tmp_path / "runs", "other-run"), anchor)
    with pytest.raises(AuditError, match=r"holds no head of run 20261128T140501Z-192\.0\.2\.7"):
        signing.verify_run(make_run(tmp_path / "runs"), anchor_file=anchor)


def test_a_resumed_run_appends_a_later_head_and_both_check(tmp_path, keys):
    operator, _, signers = keys
    run_dir = make_run(tmp_path / "runs")
    anchor = tmp_path / "anchor.jsonl"
    signing.seal(run_dir, operator, anchor)
    Audit(run_dir, stage="20-enable", display=False).record("note", text="resumed")
    signing.seal(run_dir, operator, anchor)
    verdict = signing.verify_run(run_dir, allowed_signers=signers, anchor_file=anchor)
    assert verdict.records == 7 and verdict.anchored == 2


def test_an_unsigned_run_verifies_and_says_unsigned(tmp_path, keys):
    _, _, signers = keys
    run_dir = make_run(tmp_path / "runs")
    done = cli("audit", "verify", run_dir, "--allowed-signers", signers)
    assert done.returncode == 0, done.stderr
    assert "audit chain intact, 6 records" in done.stdout and "unsigned" in done.stdout
    done = cli("audit", "verify", run_dir, "--require-signature")
    assert done.returncode == 1 and "unsigned" in done.stderr


def test_the_anchor_must_live_outside_the_run_folder(tmp_path):
    run_dir = make_run(tmp_path / "runs")
    with pytest.raises(signing.SigningError, match="inside the run folder"):
        signing.anchor(run_dir, run_dir / "anchor.jsonl")


def test_a_key_that_cannot_sign_is_named(tmp_path, keys, monkeypatch):
    operator, _, _ = keys
    with pytest.raises(signing.SigningError, match="no such key file"):
        signing.check_key(tmp_path / "nokey")
    # a public key whose private half neither an agent nor the file beside it holds
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    public = tmp_path / "alone.pub"
    shutil.copy(operator.with_suffix(".pub"), public)
    with pytest.raises(signing.SigningError, match=r"alone\.pub cannot sign"):
        signing.check_key(public)


def test_a_public_key_signs_through_the_agent(tmp_path, keys, monkeypatch):
    operator, _, signers = keys
    socket = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if socket.exists():
                break
            subprocess.run(["sleep", "0.02"])
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket))
        subprocess.run(["ssh-add", "-q", str(operator)], check=True,
                       env={**os.environ, "SSH_AUTH_SOCK": str(socket)})
        private = operator.read_bytes()
        operator.unlink()  # only the agent holds the private half now
        run_dir = make_run(tmp_path / "runs")
        signing.sign(run_dir, operator.with_suffix(".pub"))
        verdict = signing.verify_run(run_dir, allowed_signers=signers)
        assert verdict.signer == "operator@example.org"
        operator.write_bytes(private)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=10)
