"""Remote files on top of `Target.run`: read, atomic write with backups, restore.

Backups live in BACKUP_ROOT on the target, never next to the original (include directories
would pick them up): `<run_id>/` holds each path's content from before that run, and
`baseline/` its content from before the runbook first touched it. Each folder has a
`MANIFEST`, one tab-separated line a path: path, sha256 (or `absent`), backup name, mode,
owner. A write costs two round trips (read, then one script fed the content on stdin); an
unchanged file costs one.
"""

import difflib
import hashlib
import posixpath
from dataclasses import dataclass

from runbook.audit import Audit
from runbook.errors import CommandFailed, TargetError
from runbook.remote.target import Target, q

BACKUP_ROOT = "/var/backups/mail-runbook"
BASELINE = "baseline"
NEW_FILE_MODE = 0o644
MISSING = 100  # exit status of the read scripts when the path does not exist


@dataclass
class FileChange:
    path: str
    backup: str | None  # this run's copy of the content from before the run; None: it was new
    sha256_before: str | None  # None: the file did not exist
    sha256_after: str
    diff: str


def _check_path(path: str) -> None:
    # The MANIFEST is tab-separated, one line a path.
    if not path.startswith("/") or any(c in path for c in "\t\n\\"):
        raise ValueError(f"{path!r}: remote paths must be absolute, without tab, newline or \\")


def _check_run(run_id: str) -> None:
    if not run_id or "/" in run_id or run_id in (".", "..", BASELINE):
        raise ValueError(f"{run_id!r} cannot name a backup folder")


def backup_name(path: str) -> str:
    """A flat file name for a path: /etc/postfix/main.cf -> etc__postfix__main.cf."""
    name = path.strip("/").replace("/", "__")
    # Only a name that reads back as its path stays bare: the mapping must be one-to-one.
    if not name or name == "MANIFEST" or "/" + name.replace("__", "/") != path:
        name += "." + hashlib.sha256(path.encode()).hexdigest()[:8]
    return name


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mode(perms: str) -> int:
    """The mode bits of an `ls -l` permission string such as -rwsr-x--T."""
    bits = 0
    for ch, bit in zip(perms[1:10], (0o400, 0o200, 0o100, 0o40, 0o20, 0o10, 4, 2, 1), strict=True):
        bits |= bit if ch not in "-ST" else 0
    bits |= 0o4000 if perms[3] in "sS" else 0
    bits |= 0o2000 if perms[6] in "sS" else 0
    bits |= 0o1000 if perms[9] in "tT" else 0
    return bits


def _parse_ls(line: str) -> tuple[int, str, str]:
    # `ls -ldn`: the same columns on GNU and BSD userlands; numeric owner and group.
    perms, _links, owner, group = line.split()[:4]
    return _mode(perms), owner, group


def _failed(t: Target, what: str, result) -> CommandFailed:
    said = result.stderr.strip().splitlines()[-1:] or [f"exit {result.exit_status}"]
    return CommandFailed(f"{t.dest}: {what}: {said[0]}", result)


async def _read(t: Target, path: str):
    """(content, (mode, owner, group), file type letter of `ls`) or None, in one round trip."""
    _check_path(path)
    p = q(path)
    script = f"[ -e {p} ] || exit {MISSING}; ls -ldn -- {p} && exec cat -- {p}"
    r = await t.run(script, check=False, quiet=True)
    if r.exit_status == MISSING:
        return None
    if r.exit_status != 0:
        raise _failed(t, f"cannot read {path}", r)
    data = r.stdout.encode("utf-8", "surrogateescape")
    ls_line, _, content = data.partition(b"\n")
    ls_line = ls_line.decode("utf-8", "replace")
    return content, _parse_ls(ls_line), ls_line[:1]


async def read_file(t: Target, path: str) -> bytes | None:
    """The file's exact bytes, or None when it does not exist."""
    found = await _read(t, path)
    return found[0] if found else None


async def file_stat(t: Target, path: str) -> tuple[int, str, str] | None:
    """(mode, owner uid, group gid) of the path (or its symlink's target), None if missing."""
    _check_path(path)
    p = q(path)
    r = await t.run(f"[ -e {p} ] || exit {MISSING}; ls -ldnL -- {p}", check=False, quiet=True)
    if r.exit_status == MISSING:
        return None
    if r.exit_status != 0:
        raise _failed(t, f"cannot stat {path}", r)
    return _parse_ls(r.stdout)


# Saves the file's content (or that it is absent) into the run's folder and the baseline,
# the first time only in each, with a MANIFEST line that `restore_*` read.
BACKUP_SCRIPT = """set -e
P={path}; export P; R={run}; B={baseline}; N={name}
umask 077; mkdir -p "$R" "$B"
known() {{
  [ -f "$1/MANIFEST" ] && awk -F'\\t' '$1 == ENVIRON["P"] {{f = 1}} END {{exit !f}}' "$1/MANIFEST"
}}
save() {{
  known "$1" && return 0
  if [ -e "$P" ]; then
    cp -p "$P" "$1/$N"
    printf '%s\\t%s\\t%s\\t%s\\t%s\\n' "$P" {sha} "$N" {mode} {owner} >> "$1/MANIFEST"
  else printf '%s\\tabsent\\t-\\t-\\t-\\n' "$P" >> "$1/MANIFEST"; fi
}}
save "$R"; save "$B"
"""
# The backup first, then stdin into a temp file beside the path, renamed over it; prints
# the name of the run's backup ("-": the file was new before the run).
WRITE_SCRIPT = BACKUP_SCRIPT + """T=$(mktemp {dir}/.mail-runbook.XXXXXX); trap 'rm -f "$T"' EXIT
cat > "$T"
{chown}chmod {mode} "$T"; mv -f "$T" "$P"
awk -F'\\t' '$1 == ENVIRON["P"] {{print $3; exit}}' "$R/MANIFEST"
"""


async def write_file(
    t: Target,
    path: str,
    content: bytes,
    *,
    run_id: str,
    mode: int | None = None,
    owner: str | None = None,
    audit: Audit | None = None,
) -> FileChange | None:
    """Write `content` atomically after backing up the old one; None when already equal.

    An existing file keeps its mode and owner; `mode`/`owner` apply to a new file.
    """
    _check_run(run_id)
    found = await _read(t, path)
    before, stat, kind = found if found else (None, None, "-")
    if kind != "-":  # the rename would replace a symlink (or worse) with a plain file
        raise TargetError(f"{t.dest}: {path} is not a regular file; write the file it points to")
    if before == content:
        return None
    if stat:
        mode, owner = stat[0], f"{stat[1]}:{stat[2]}"
    mode = NEW_FILE_MODE if mode is None else mode
    script = WRITE_SCRIPT.format(
        **_backup_fields(path, run_id, before, f"{mode:04o}", owner or "-"),
        dir=q(posixpath.dirname(path) or "/"),
        chown=f'chown {q(owner)} "$T"; ' if owner else "",
    )
    r = await t.run(script, input=content, check=False, quiet=True)
    if r.exit_status != 0:
        raise _failed(t, f"cannot write {path}", r)
    name = r.stdout.strip()
    change = FileChange(
        path=path,
        backup=f"{BACKUP_ROOT}/{run_id}/{name}" if name not in ("", "-") else None,
        sha256_before=_sha(before) if before is not None else None,
        sha256_after=_sha(content),
        diff=_diff(path, before, content),
    )
    audit = audit if audit is not None else t.audit
    if audit:
        audit.record("file_write", host=t.host, **change.__dict__)
    return change


async def keep_file(t: Target, path: str, *, run_id: str, audit: Audit | None = None) -> None:
    """Back up `path` (or that it is absent) for this run and as the baseline, unchanged:
    for files another program rewrites (rcctl), so `restore_*` can put them back."""
    _check_run(run_id)
    found = await _read(t, path)
    before, stat, _ = found if found else (None, None, "-")
    mode, owner = (f"{stat[0]:04o}", f"{stat[1]}:{stat[2]}") if stat else ("-", "-")
    r = await t.run(BACKUP_SCRIPT.format(**_backup_fields(path, run_id, before, mode, owner)),
                    check=False, quiet=True)
    if r.exit_status != 0:
        raise _failed(t, f"cannot back up {path}", r)
    audit = audit if audit is not None else t.audit
    if audit:
        audit.record("file_keep", host=t.host, path=path, absent=before is None)


def _backup_fields(path: str, run_id: str, before: bytes | None, mode: str, owner: str) -> dict:
    return {
        "path": q(path), "run": q(f"{BACKUP_ROOT}/{run_id}"),
        "baseline": q(f"{BACKUP_ROOT}/{BASELINE}"), "name": q(backup_name(path)),
        "sha": q(_sha(before) if before is not None else "absent"),
        "mode": mode, "owner": q(owner),
    }


def _diff(path: str, before: bytes | None, after: bytes) -> str:
    if b"\0" in (before or b"") + after:
        return f"binary content: {len(before or b'')} -> {len(after)} bytes"
    old, new = (before or b"").decode(errors="replace"), after.decode(errors="replace")
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        path if before is not None else "/dev/null",
        path,
    )
    end = "\n\\ No newline at end of file\n"
    return "".join(line if line.endswith("\n") else line + end for line in lines)


# Puts back every MANIFEST entry of a backup folder (or only $ONLY): the saved copy via a
# temp file and rename, or removes a path that was absent; prints "path<TAB>name" for each.
# A path already equal to its copy is left alone (a write cut before its rename changed
# nothing, and on a full disk the copy could not even be made); a failed copy leaves no
# temp file behind.
RESTORE_SCRIPT = """set -e
R={folder}; ONLY={only}; TAB=$(printf '\\t'); T=
trap '[ -z "$T" ] || rm -f -- "$T"' EXIT
[ -f "$R/MANIFEST" ] || exit 0
while IFS="$TAB" read -r p sum name mode owner; do
  [ -z "$ONLY" ] || [ "$p" = "$ONLY" ] || continue
  if [ "$name" = - ]; then rm -f -- "$p"
  elif ! cmp -s "$R/$name" "$p"; then
    T=$(mktemp "$(dirname -- "$p")/.mail-runbook.XXXXXX")
    cp -p "$R/$name" "$T"; mv -f "$T" "$p"; T=
  fi
  printf '%s\\t%s\\n' "$p" "$name"
done < "$R/MANIFEST"
"""


async def _restore(t: Target, folder: str, only: str, audit: Audit | None) -> list[str]:
    r = await t.run(RESTORE_SCRIPT.format(folder=q(folder), only=q(only)), check=False, quiet=True)
    audit = audit if audit is not None else t.audit
    restored = []
    for line in r.stdout.splitlines():  # record what was put back, even if a later one failed
        path, _, name = line.partition("\t")
        restored.append(path)
        if audit:
            backup = f"{folder}/{name}" if name != "-" else None
            audit.record("restore", host=t.host, path=path, backup=backup)
    if r.exit_status != 0:
        raise _failed(t, f"restoring from {folder} stopped", r)
    return restored


async def restore_file(t: Target, path: str, *, run_id: str, audit: Audit | None = None) -> None:
    """Put back the content `path` had before run `run_id` (remove it if it was absent)."""
    _check_path(path)
    _check_run(run_id)
    if not await _restore(t, f"{BACKUP_ROOT}/{run_id}", path, audit):
        raise TargetError(f"{t.dest}: run {run_id} has no backup of {path}; nothing restored")


async def restore_run(t: Target, run_id: str, audit: Audit | None = None) -> list[str]:
    """Put back every path run `run_id` changed, as it was before the run."""
    _check_run(run_id)
    return await _restore(t, f"{BACKUP_ROOT}/{run_id}", "", audit)


async def restore_baseline(t: Target, audit: Audit | None = None) -> list[str]:
    """Put back every path the runbook ever changed on this host, as it was first found."""
    return await _restore(t, f"{BACKUP_ROOT}/{BASELINE}", "", audit)


async def backed_up_paths(t: Target, run_id: str) -> list[str]:
    """The paths run `run_id` saved before changing them, in the order it first wrote them."""
    _check_run(run_id)
    manifest = q(f"{BACKUP_ROOT}/{run_id}/MANIFEST")
    r = await t.run(f"[ ! -e {manifest} ] || cat {manifest}", quiet=True)
    return [line.split("\t", 1)[0] for line in r.stdout.splitlines() if line]
