"""Signed records: the chain head and the notebooks' digests signed with the operator's SSH
key, and the head appended to an anchor file kept outside the run folder.

The hash chain catches accidents; someone who can rewrite the whole run folder can also
rebuild the chain. So at the end of a run `head.json` (run id, host, record count, the
chain's last hash, the SHA-256 of every executed notebook) is signed with OpenSSH's file
signatures (`ssh-keygen -Y sign -n mail-runbook`, a key file or the agent; no key format
of our own) into `head.json.sig`, and checked with an allowed_signers file. An anchor file
(one JSON line per sealed run, appended, e.g. on a log host) remembers each head, so a run
whose tail was cut and whose signature was removed is still caught.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from runbook.audit import AUDIT_FILE, now, read_run_json, sha256, split_lines, verify
from runbook.errors import AuditError, RunbookError

NAMESPACE = "mail-runbook"
HEAD_FILE = "head.json"
SIGNATURE_FILE = HEAD_FILE + ".sig"
TIMEOUT = 60  # s: ssh-keygen asks the agent, which may ask for a confirmation


class SigningError(RunbookError):
    pass


def _ssh_keygen(*args: str, data: bytes = b"") -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["ssh-keygen", *args], input=data, capture_output=True,
                              timeout=TIMEOUT)
    except FileNotFoundError:
        raise SigningError("ssh-keygen is not installed (OpenSSH's client tools)") from None
    except subprocess.TimeoutExpired:
        raise SigningError(f"ssh-keygen did not answer within {TIMEOUT} s") from None


def _said(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}"


def signature(key_file: Path, data: bytes) -> bytes:
    """An OpenSSH signature of `data`: `key_file` is a private key, or a public key whose
    private half the agent holds."""
    key_file = Path(key_file).expanduser()
    if not key_file.is_file():
        raise SigningError(f"--sign-key {key_file}: no such key file")
    done = _ssh_keygen("-Y", "sign", "-q", "-f", str(key_file), "-n", NAMESPACE, data=data)
    if done.returncode != 0 or not done.stdout.startswith(b"-----BEGIN SSH SIGNATURE"):
        raise SigningError(f"--sign-key {key_file} cannot sign: {_said(done)} "
                           "(a private key file, or a public key whose key is in the agent)")
    return done.stdout


def check_key(key_file: Path) -> None:
    """Prove the key can sign before a run touches the host (a wrong path, an empty agent)."""
    signature(key_file, b"mail-runbook: can this key sign?\n")


def head(run_dir: Path) -> dict:
    """What is signed and anchored: the chain's head and each executed notebook's digest."""
    run_dir = Path(run_dir)
    run = read_run_json(run_dir)
    chain = run.get("audit") or {}
    lines = split_lines((run_dir / AUDIT_FILE).read_bytes()) if (run_dir / AUDIT_FILE).exists() \
        else []
    return {
        "run": run.get("id") or run_dir.name,
        "host": run.get("host"),
        "records": chain.get("records", 0),
        "head": chain.get("last_hash"),
        "first": sha256(lines[0]) if lines else None,
        "notebooks": {p.name: sha256(p.read_bytes()) for p in sorted(run_dir.glob("*.ipynb"))},
    }


def _encode(data: dict) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sign(run_dir: Path, key_file: Path) -> dict:
    """Write `head.json` and its signature `head.json.sig` into the run folder."""
    run_dir = Path(run_dir)
    current = head(run_dir) | {"signed": now()}
    data = _encode(current)
    sig = signature(key_file, data)
    _replace(run_dir / HEAD_FILE, data)
    _replace(run_dir / SIGNATURE_FILE, sig)
    return current


def anchor(run_dir: Path, anchor_file: Path) -> dict:
    """Append the run's head (run id, host, records, head hash, time) to the anchor file."""
    run_dir, anchor_file = Path(run_dir).resolve(), Path(anchor_file).expanduser().resolve()
    if anchor_file.is_relative_to(run_dir):
        raise SigningError(f"--anchor {anchor_file} is inside the run folder: it must be kept "
                           "apart from the record it vouches for")
    current = head(run_dir)
    entry = {k: current[k] for k in ("run", "host", "records", "head", "first")}
    entry["time"] = now()
    anchor_file.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(anchor_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one whole line per run, however many end at once
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry


def seal(run_dir: Path, key_file: Path | None = None, anchor_file: Path | None = None) -> None:
    """The end of a run: sign (with a key), then anchor (with an anchor file)."""
    if key_file:
        sign(run_dir, key_file)
    if anchor_file:
        anchor(run_dir, anchor_file)


# --- verify ----------------------------------------------------------------------------------

@dataclass
class Verdict:
    records: int
    signed: bool = False
    signer: str | None = None  # the allowed_signers principal, when the signature was checked
    anchored: int = 0  # anchor entries that match the chain
    notes: list[str] = field(default_factory=list)

    def report(self, run_dir: Path) -> str:
        lines = [f"{run_dir}: audit chain intact, {self.records} records"]
        if not self.signed:
            lines.append("unsigned: no head.json.sig (run with --sign-key to sign a run)")
        elif self.signer:
            lines.append(f"signature good: signed by {self.signer}; notebook digests match")
        else:
            lines.append("signed, notebook digests match; signature NOT checked "
                         "(give --allowed-signers FILE)")
        if self.anchored:
            many = "entry matches" if self.anchored == 1 else "entries match"
            lines.append(f"anchor: {self.anchored} {many} the chain")
        return "\n".join(lines + self.notes)


def verify_run(run_dir: Path, *, allowed_signers: Path | None = None,
               anchor_file: Path | None = None, require_signature: bool = False) -> Verdict:
    """Check the chain, then the signed head and notebook digests, then the signature
    against allowed_signers, then the anchor; raise AuditError at the first thing wrong."""
    run_dir = Path(run_dir)
    verdict = Verdict(verify(run_dir))
    current = head(run_dir)
    if (run_dir / HEAD_FILE).exists() or (run_dir / SIGNATURE_FILE).exists():
        _check_head(run_dir, current)
        verdict.signed = True
        if allowed_signers:
            verdict.signer = _check_signature(run_dir, Path(allowed_signers))
    elif require_signature:
        raise AuditError(f"{run_dir}: unsigned (no {SIGNATURE_FILE}), and a signature is required")
    if anchor_file:
        verdict.anchored = _check_anchor(run_dir, current, Path(anchor_file))
    return verdict


def _check_head(run_dir: Path, current: dict) -> None:
    try:
        signed = json.loads((run_dir / HEAD_FILE).read_bytes())
    except (FileNotFoundError, ValueError):
        raise AuditError(f"{run_dir / HEAD_FILE}: missing or not JSON, but the run is "
                         "signed") from None
    if not (run_dir / SIGNATURE_FILE).exists():
        raise AuditError(f"{run_dir / SIGNATURE_FILE}: missing — {HEAD_FILE} is unsigned")
    for key in ("run", "host", "first"):
        if signed.get(key) != current[key]:
            raise AuditError(f"{run_dir}: the signed {key} is {signed.get(key)!r}, the record "
                             f"says {current[key]!r}")
    if (signed.get("records"), signed.get("head")) != (current["records"], current["head"]):
        raise AuditError(
            f"{run_dir}: the signed head is record {signed.get('records')} "
            f"({str(signed.get('head'))[:12]}…), the chain ends at record {current['records']} "
            f"({str(current['head'])[:12]}…) — records were removed or added after signing")
    notebooks = signed.get("notebooks") or {}
    for name in sorted(set(notebooks) | set(current["notebooks"])):
        if name not in current["notebooks"]:
            raise AuditError(f"{run_dir / name}: signed, but missing")
        if name not in notebooks:
            raise AuditError(f"{run_dir / name}: not among the signed notebooks")
        if notebooks[name] != current["notebooks"][name]:
            raise AuditError(f"{run_dir / name}: changed since it was signed (its SHA-256 "
                             "is not the signed one)")


def _check_signature(run_dir: Path, allowed: Path) -> str:
    if not allowed.is_file():
        raise AuditError(f"--allowed-signers {allowed}: no such file")
    sig = str(run_dir / SIGNATURE_FILE)
    found = _ssh_keygen("-Y", "find-principals", "-s", sig, "-f", str(allowed))
    principals = found.stdout.decode(errors="replace").split()
    if found.returncode != 0 or not principals:
        raise AuditError(f"{sig}: not made by any key in {allowed} ({_said(found)})")
    data = (run_dir / HEAD_FILE).read_bytes()
    for principal in principals:
        done = _ssh_keygen("-Y", "verify", "-f", str(allowed), "-I", principal,
                           "-n", NAMESPACE, "-s", sig, data=data)
        if done.returncode == 0:
            return principal
    raise AuditError(f"{sig}: the signature does not match {HEAD_FILE} "
                     f"(key of {', '.join(principals)}; {_said(done)})")


def _check_anchor(run_dir: Path, current: dict, anchor_file: Path) -> int:
    try:
        lines = anchor_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise AuditError(f"--anchor {anchor_file}: no such file") from None
    entries = []
    for line in lines:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("run") == current["run"]:
                entries.append(entry)
    if not entries:
        raise AuditError(f"{anchor_file}: holds no head of run {current['run']} — it was "
                         "never anchored there, or run.json's id was changed")
    hashes = [sha256(line) for line in split_lines((run_dir / AUDIT_FILE).read_bytes())]
    for entry in entries:
        count = entry.get("records")
        if not isinstance(count, int) or count < 1 or count > len(hashes):
            raise AuditError(
                f"{anchor_file}: the anchor says run {current['run']} had {count} records at "
                f"{entry.get('time')}; the record holds {len(hashes)} — records were removed")
        if hashes[count - 1] != entry.get("head") or hashes[0] != entry.get("first"):
            raise AuditError(
                f"{anchor_file}: the anchored head of run {current['run']} (record {count}, "
                f"{entry.get('time')}) is not in the chain — the record was rewritten")
    return len(entries)
