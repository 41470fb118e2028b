"""Remote files over the in-process server (as root, under a tmp dir): read, atomic write with
run backup, manifest and baseline, restore byte for byte."""

import asyncio
import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sshserver import ssh_server

from runbook.audit import Audit
from runbook.errors import CommandFailed, TargetError
from runbook.remote import files
from runbook.remote.files import (
    backed_up_paths,
    backup_name,
    file_stat,
    read_file,
    restore_baseline,
    restore_file,
    restore_run,
    write_file,
)
from runbook.remote.target import Target

OLD = b"myhostname = old.example\n# caf\xe9 in latin-1\ntail without newline"
BLOB = bytes(range(256)) + OLD
NEW = b"myhostname = mail.example.com\n"


@pytest.fixture
def backups(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "backups"
    monkeypatch.setattr(files, "BACKUP_ROOT", str(root))
    return root


@pytest.fixture
def etc(tmp_path) -> Path:
    d = tmp_path / "etc" / "postfix"
    d.mkdir(parents=True)
    return d


@contextlib.asynccontextmanager
async def session(tmp: Path, audit: Audit | None = None):
    async with ssh_server(tmp) as srv, await Target.connect(srv.params(), audit) as t:
        yield srv, t


def go(tmp: Path, steps, audit: Audit | None = None):
    """Run `await steps(t)` on a fresh session; returns (its result, commands sent)."""

    async def body():
        async with session(tmp, audit) as (srv, t):
            return await steps(t), srv.commands

    return asyncio.run(body())


def manifest(folder: Path) -> list[list[str]]:
    return [line.split("\t") for line in (folder / "MANIFEST").read_text().splitlines()]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make(path: Path, data: bytes, mode: int = 0o640, uid: int = 1234, gid: int = 5678) -> None:
    path.write_bytes(data)
    os.chown(path, uid, gid)
    path.chmod(mode)


# --- read --------------------------------------------------------------------------------


def test_read_file_is_binary_safe_and_none_when_missing(tmp_path, etc):
    make(etc / "main.cf", BLOB, mode=0o4751)

    async def steps(t):
        return (
            await read_file(t, str(etc / "main.cf")),
            await read_file(t, str(etc / "absent")),
            await file_stat(t, str(etc / "main.cf")),
            await file_stat(t, str(etc / "absent")),
        )

    (data, missing, st_, st_missing), sent = go(tmp_path, steps)
    assert data == BLOB and missing is None
    assert st_ == (0o4751, "1234", "5678") and st_missing is None
    assert len(sent) == 4  # one round trip each


def test_reading_a_directory_fails_naming_it(tmp_path, etc):
    with pytest.raises(CommandFailed, match=f"cannot read {etc}"):
        go(tmp_path, lambda t: read_file(t, str(etc)))


@given(st.integers(0, 0o7777))
def test_mode_is_parsed_from_any_ls_permission_string(mode):
    assert files._mode(stat.filemode(stat.S_IFREG | mode)) == mode


@given(st.lists(st.text("ab_/", min_size=1, max_size=12).map(lambda s: "/" + s), unique=True))
def test_backup_names_are_one_to_one(paths):
    names = [backup_name(p) for p in paths]
    assert len(set(names)) == len(names)
    assert all("/" not in n and n not in ("", "MANIFEST") for n in names)


# --- write -------------------------------------------------------------------------------


def test_write_keeps_mode_and_owner_and_backs_up_elsewhere(tmp_path, etc, backups):
    path = etc / "main.cf"
    make(path, OLD)
    run_dir = tmp_path / "run"

    change, sent = go(
        tmp_path,
        lambda t: write_file(t, str(path), NEW, run_id="r1"),
        Audit(run_dir, display=False),
    )
    assert path.read_bytes() == NEW
    st_ = path.stat()
    assert (stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid) == (0o640, 1234, 5678)
    assert sorted(p.name for p in etc.iterdir()) == ["main.cf"]  # no backup or temp file beside it
    name = backup_name(str(path))
    assert name.endswith("etc__postfix__main.cf")
    for folder in (backups / "r1", backups / "baseline"):
        assert (folder / name).read_bytes() == OLD
        assert manifest(folder) == [[str(path), sha(OLD), name, "0640", "1234:5678"]]
    assert stat.S_IMODE((backups / "r1").stat().st_mode) == 0o700
    assert change.backup == f"{backups}/r1/{name}"
    assert (change.sha256_before, change.sha256_after) == (sha(OLD), sha(NEW))
    assert "-myhostname = old.example" in change.diff and "+myhostname = mail" in change.diff
    assert "-tail without newline\n\\ No newline at end of file\n" in change.diff
    assert len(sent) == 2  # read, then one script
    [record] = [json.loads(x) for x in (run_dir / "audit.jsonl").read_text().splitlines()][-1:]
    assert record["type"] == "file_write"
    assert record["path"] == str(path) and record["backup"] == change.backup
    assert record["sha256_after"] == sha(NEW) and record["diff"] == change.diff


def test_a_symlink_is_followed_for_reading_and_never_replaced(tmp_path, etc, backups):
    make(etc / "aliases.real", OLD, mode=0o600)
    (etc / "aliases").symlink_to("aliases.real")

    async def steps(t):
        data = await read_file(t, str(etc / "aliases"))
        mode = await file_stat(t, str(etc / "aliases"))
        with pytest.raises(TargetError, match="not a regular file"):
            await write_file(t, str(etc / "aliases"), NEW, run_id="r1")
        return data, mode

    (data, mode), _ = go(tmp_path, steps)
    assert data == OLD and mode == (0o600, "1234", "5678")
    assert (etc / "aliases").is_symlink() and not backups.exists()


def test_identical_content_is_a_no_op(tmp_path, etc, backups):
    path = etc / "main.cf"
    make(path, NEW)
    before = path.stat()
    change, sent = go(tmp_path, lambda t: write_file(t, str(path), NEW, run_id="r1"))
    assert change is None and len(sent) == 1
    assert path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_ino == before.st_ino
    assert not backups.exists()


def test_a_new_file_gets_the_given_mode_and_absent_is_recorded(tmp_path, etc, backups):
    path = etc / "aliases"

    async def steps(t):
        return await write_file(t, str(path), NEW, run_id="r1", mode=0o600, owner="1234:5678")

    change, _ = go(tmp_path, steps)
    st_ = path.stat()
    assert (stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid) == (0o600, 1234, 5678)
    assert change.backup is None and change.sha256_before is None
    assert change.diff.startswith("--- /dev/null")
    for folder in (backups / "r1", backups / "baseline"):
        assert manifest(folder) == [[str(path), "absent", "-", "-", "-"]]


def test_the_run_backup_and_the_baseline_keep_the_first_content(tmp_path, etc, backups):
    path = str(etc / "main.cf")
    make(etc / "main.cf", OLD)

    async def steps(t):
        await write_file(t, path, b"one\n", run_id="r1")
        await write_file(t, path, b"two\n", run_id="r1")  # same run: its backup stays OLD
        await write_file(t, path, b"three\n", run_id="r2")
        return await backed_up_paths(t, "r1"), await backed_up_paths(t, "r3")

    (paths, none), _ = go(tmp_path, steps)
    name = backup_name(path)
    assert (backups / "r1" / name).read_bytes() == OLD and len(manifest(backups / "r1")) == 1
    assert (backups / "r2" / name).read_bytes() == b"two\n"
    assert (backups / "baseline" / name).read_bytes() == OLD
    assert len(manifest(backups / "baseline")) == 1
    assert paths == [path] and none == []


# --- restore -----------------------------------------------------------------------------


def test_restore_puts_back_byte_for_byte_or_removes_a_new_file(tmp_path, etc, backups):
    main, new = etc / "main.cf", etc / "new.cf"
    make(main, OLD, mode=0o604)
    run_dir = tmp_path / "run"

    async def steps(t):
        await write_file(t, str(main), NEW, run_id="r1")
        await write_file(t, str(new), NEW, run_id="r1")
        await restore_file(t, str(main), run_id="r1")
        assert main.read_bytes() == OLD and new.exists()
        await write_file(t, str(main), NEW, run_id="r1")
        return await restore_run(t, "r1")

    restored, _ = go(tmp_path, steps, Audit(run_dir, display=False))
    assert restored == [str(main), str(new)]
    assert main.read_bytes() == OLD and not new.exists()
    st_ = main.stat()
    assert (stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid) == (0o604, 1234, 5678)
    assert sorted(p.name for p in etc.iterdir()) == ["main.cf"]
    records = [json.loads(x) for x in (run_dir / "audit.jsonl").read_text().splitlines()]
    restores = [(r["path"], r["backup"]) for r in records if r["type"] == "restore"]
    backup = f"{backups}/r1/{backup_name(str(main))}"
    assert restores == [(str(main), backup), (str(main), backup), (str(new), None)]


def test_binary_content_is_written_and_restored_exactly(tmp_path, etc, backups):
    path = etc / "blob"
    make(path, BLOB)

    async def steps(t):
        change = await write_file(t, str(path), BLOB[::-1], run_id="r1")
        assert path.read_bytes() == BLOB[::-1]
        await restore_file(t, str(path), run_id="r1")
        return change

    change, _ = go(tmp_path, steps)
    assert change.diff == f"binary content: {len(BLOB)} -> {len(BLOB)} bytes"
    assert path.read_bytes() == BLOB


def test_restore_leaves_a_file_already_equal_to_its_copy_alone(tmp_path, etc, backups):
    """A write cut before its rename changed nothing: the restore copies nothing (on a full
    disk it could not) and leaves no temp file."""
    main = etc / "main.cf"
    make(main, OLD)

    async def steps(t):
        await write_file(t, str(main), NEW, run_id="r1")
        make(main, OLD)  # as if the rename had never happened
        inode = main.stat().st_ino
        await restore_file(t, str(main), run_id="r1")
        return inode

    inode, _ = go(tmp_path, steps)
    assert main.read_bytes() == OLD and main.stat().st_ino == inode
    assert sorted(p.name for p in etc.iterdir()) == ["main.cf"]


def test_restore_baseline_goes_back_to_before_the_first_run(tmp_path, etc, backups):
    main, new = etc / "main.cf", etc / "new.cf"
    make(main, OLD)

    async def steps(t):
        await write_file(t, str(main), b"one\n", run_id="r1")
        await write_file(t, str(main), b"two\n", run_id="r2")
        await write_file(t, str(new), b"new\n", run_id="r2")
        return await restore_baseline(t)

    restored, _ = go(tmp_path, steps)
    assert sorted(restored) == sorted([str(main), str(new)])
    assert main.read_bytes() == OLD and not new.exists()


def test_restoring_an_untouched_path_says_so(tmp_path, etc, backups):
    with pytest.raises(TargetError, match="has no backup of"):
        go(tmp_path, lambda t: restore_file(t, str(etc / "main.cf"), run_id="r1"))


@pytest.mark.parametrize("path", ["relative/path", "/etc/with\ttab", "/etc/new\nline"])
def test_unusable_paths_are_refused_before_any_command(tmp_path, path):
    with pytest.raises(ValueError):
        go(tmp_path, lambda t: write_file(t, path, b"x", run_id="r1"))


@pytest.mark.parametrize("run_id", ["", "baseline", "../x", ".."])
def test_unusable_run_ids_are_refused(tmp_path, run_id):
    with pytest.raises(ValueError):
        go(tmp_path, lambda t: write_file(t, "/etc/x", b"x", run_id=run_id))
