"""The run's audit record: hash-chained `audit.jsonl`, `run.json` helpers, verify, display.

Each line of `audit.jsonl` is one compact JSON record whose `prev` is the SHA-256 of the
previous line's exact bytes; `run.json` keeps the count and the last line's hash, so a cut
or edited last record is caught too. Lines are hashed as written, never re-serialised.
"""

import contextlib
import fcntl
import hashlib
import html
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from runbook.errors import AuditError

AUDIT_FILE = "audit.jsonl"
RUN_FILE = "run.json"
MIME = "application/vnd.mail-runbook.audit+json"
MASK = "********"
GENESIS = "0" * 64
RESERVED = {"seq", "time", "type", "prev"}


def now() -> str:
    """UTC time in ISO 8601 with milliseconds, as every record writes it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """Serialise writers of one run folder (the runner and a kernel may both write).

    The lock is taken on the folder itself, so no lock file is left in the run.
    """
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_run_json(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _write_run_json(run_dir: Path, data: dict, durable: bool = True) -> None:
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{RUN_FILE}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)
            json.dump(data, f, indent=2, ensure_ascii=False, default=str)
            f.write("\n")
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, Path(run_dir) / RUN_FILE)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def update_run_json(run_dir: Path, **fields) -> dict:
    """Set top-level keys of `run.json` (others kept), atomically; returns the new content."""
    run_dir = Path(run_dir)
    with _locked(run_dir):
        data = read_run_json(run_dir) | fields
        _write_run_json(run_dir, data)
    return data


def _last_line(f) -> bytes:
    """The file's last line (with its newline), read backwards from the end."""
    pos = f.seek(0, os.SEEK_END)
    tail = b""
    while pos > 0:
        step = min(pos, 1 << 16)
        pos -= step
        f.seek(pos)
        tail = f.read(step) + tail
        cut = tail.rfind(b"\n", 0, len(tail) - 1)
        if cut >= 0:
            return tail[cut + 1 :]
    return tail


def _encode(record: dict) -> bytes:
    # Lone surrogates (undecodable remote output) become JSON \udcXX escapes.
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
    return (text + "\n").encode("utf-8", "backslashreplace")


class Audit:
    """Appends records to `run_dir/audit.jsonl` as things happen, and shows them in the cell."""

    def __init__(self, run_dir: Path, stage: str | None = None, display: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / AUDIT_FILE
        self.stage = stage
        self.display = display
        self.secrets: list[str] = []
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def add_secret(self, value: str) -> None:
        if value and value not in self.secrets:
            self.secrets.append(value)
            # Longest first, so a secret containing another is masked whole.
            self.secrets.sort(key=len, reverse=True)

    def mask(self, value):
        """`value` with every secret replaced, in strings nested in dicts and lists too."""
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, MASK)
            return value
        if isinstance(value, dict):
            return {k: self.mask(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.mask(v) for v in value]
        return value

    def record(self, type: str, /, *, show: bool = True, **fields) -> dict:
        """Append one record now (flushed and fsynced) and return it.

        `stage` may be given to override the Audit's stage; `show=False` keeps it out of
        the cell (it is still written).
        """
        if RESERVED & fields.keys():
            raise ValueError(f"reserved audit field(s): {sorted(RESERVED & fields.keys())}")
        stage = fields.pop("stage", self.stage)
        with _locked(self.run_dir), open(self.path, "a+b") as f:
            last = _last_line(f)
            seq = _field(last, "seq") if last else 0
            if not _is_int(seq) or (last and not last.endswith(b"\n")):
                raise AuditError(
                    f"{self.path}: the last record is damaged, nothing appended — "
                    f"run `runbook audit verify {self.run_dir}`"
                )
            record = {
                "seq": seq + 1,
                "time": now(),
                "type": type,
                "stage": stage,
                **self.mask(fields),
                "prev": sha256(last) if last else GENESIS,
            }
            line = _encode(record)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
            run = read_run_json(self.run_dir)
            run["audit"] = {"records": record["seq"], "last_hash": sha256(line)}
            # audit.jsonl itself was fsynced; the anchor's rename is atomic, and a crash
            # that loses it only makes verify report the gap, never hide one.
            _write_run_json(self.run_dir, run, durable=False)
        if show and self.display:
            show_record(record)
        return record


def _command_summary(r: dict) -> str:
    if r.get("timed_out") is not None:
        end = f"timed out after {r['timed_out']} s"
    else:
        end = f"exit {r.get('exit_status')}, {r.get('duration', 0):.2f} s"
    return f"$ {r.get('command')}  ({end})"


_SUMMARIES = {  # record type -> its one readable line
    "command": _command_summary,
    "operation": lambda r: f"[{r.get('status')}] {r.get('name')}"
                           + (f" — {r['detail']}" if r.get("detail") else ""),
    "file_write": lambda r: f"wrote {r.get('path')} "
                            f"(backup: {r.get('backup') or 'none, file was new'})",
    "restore": lambda r: f"restored {r.get('path')} from {r.get('backup') or 'absent (removed)'}",
    "probe": lambda r: f"probe {r.get('protocol')} on {r.get('host')}",
    "approval": lambda r: f"approval {r.get('name')}: {r.get('decision')}",
    "stage": lambda r: f"stage {r.get('stage')} {r.get('event')}"
                       + (f" ({r['status']})" if r.get("status") else ""),
    "note": lambda r: f"note: {r.get('text', '')}",
    "recovery": lambda r: "recovery: " + ", ".join(
        ([f"run {r['unfinished']} was cut short ({r.get('ended') or 'no end'})"]
         if r.get("unfinished") else [])
        + ([f"{len(r['removed'])} stray temp file(s) removed"] if r.get("removed") else [])),
}


def summary(record: dict) -> str:
    """One readable line for a record."""
    kind = record.get("type")
    if kind in _SUMMARIES:
        return _SUMMARIES[kind](record)
    return f"{kind}: " + ", ".join(f"{k}={v}" for k, v in record.items() if k not in RESERVED)


def _in_kernel() -> bool:
    ipython = sys.modules.get("IPython")  # never import it just to find out
    shell = ipython.get_ipython() if ipython else None
    return getattr(shell, "kernel", None) is not None


def show_record(record: dict) -> None:
    """Display a record in the running cell; nothing outside a kernel."""
    if not _in_kernel():
        return
    from IPython.display import display

    text = summary(record)
    body = f"<code>{html.escape(text)}</code>"
    if record.get("type") == "file_write" and record.get("diff"):
        body += (
            f"<details><summary>diff</summary><pre>{html.escape(record['diff'])}</pre></details>"
        )
    bundle = {
        "text/plain": text,
        "text/html": f'<div class="mail-runbook-audit">{body}</div>',
        MIME: record,
    }
    display(bundle, raw=True)


def split_lines(data: bytes) -> list[bytes]:
    """Lines as the writer wrote them: ended by b"\n" only, the last one maybe cut off."""
    parts = data.split(b"\n")
    return [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _field(line: bytes, name: str):
    try:
        return json.loads(line)[name]
    except (ValueError, TypeError, KeyError):
        return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def verify(run_dir: Path) -> int:
    """Check the chain and `run.json`; return the number of records.

    Raises AuditError naming the first record that does not fit. The chain says what each
    line must hash to: the next line's `prev`, or run.json's `last_hash` for the last one;
    so a changed line is told apart from a changed `prev` in the line after it.
    """
    run_dir = Path(run_dir)
    path = run_dir / AUDIT_FILE
    try:
        lines = split_lines(path.read_bytes())
    except FileNotFoundError:
        raise AuditError(f"{path}: no audit record in this run folder") from None
    anchor = read_run_json(run_dir).get("audit") or {}
    if "last_hash" not in anchor:
        raise AuditError(f"{run_dir / RUN_FILE}: no audit.last_hash, the records cannot be checked")
    if not lines and anchor.get("records"):
        raise AuditError(f"{path}: empty, but run.json says {anchor['records']} record(s)")
    hashes = [sha256(line) for line in lines]
    expected = [_field(line, "prev") for line in lines[1:]] + [anchor["last_hash"]]
    for i, line in enumerate(lines, 1):
        _check_line(path, i, line, hashes, expected, anchor)
    if anchor.get("records") != len(lines):
        raise AuditError(
            f"{path}: {len(lines)} record(s) but run.json says {anchor.get('records')}"
        )
    return len(lines)


def _check_line(path: Path, i: int, line: bytes, hashes, expected, anchor) -> None:
    if not line.endswith(b"\n"):
        raise AuditError(f"{path} line {i} (expected seq {i}): incomplete — the file was cut off")
    seq, prev = _field(line, "seq"), _field(line, "prev")
    if not _is_int(seq) or not isinstance(prev, str):
        raise AuditError(f"{path} line {i} (expected seq {i}): not a valid record")
    where = f"{path} line {i} (seq {seq})"
    if seq != i:
        raise AuditError(f"{where}: expected seq {i} — a record was removed or inserted before it")
    intact = hashes[i - 1] == expected[i - 1]
    if prev != (hashes[i - 2] if i > 1 else GENESIS):
        if not intact or i == 1:
            raise AuditError(f"{where}: its prev does not match the line before — it was changed")
        # The next line vouches for this one, so the line before it was changed.
        raise AuditError(
            f"{path} line {i - 1} (seq {i - 1}): changed — its SHA-256 is not the prev of line {i}"
        )
    if i == len(hashes) and not intact:
        records = anchor.get("records")
        if isinstance(records, int) and records > i:
            raise AuditError(
                f"{where}: run.json says {records} records — the ones after it were removed"
            )
        raise AuditError(f"{where}: changed — its SHA-256 is not run.json's audit.last_hash")
