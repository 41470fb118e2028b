"""Recovery after a crash, over the in-process SSH server (as root, under a tmp dir): the lock's
journal of runs, what an unfinished run left (stray temp files, its backup set), and their
removal. The same against a real host after a real crash is in tests/faults/."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sshserver import ssh_server

from runbook.audit import update_run_json
from runbook.remote import files, lock, recovery
from runbook.remote.lock import TargetLock
from runbook.remote.target import Target
from runbook.run import status


@pytest.fixture
def host(tmp_path, monkeypatch) -> Path:
    """A host's paths under tmp: backups, the lock, /etc/postfix."""
    monkeypatch.setattr(files, "BACKUP_ROOT", str(tmp_path / "backups"))
    monkeypatch.setattr(lock, "LOCK_DIR", str(tmp_path / "run" / "mail-runbook.lock"))
    (tmp_path / "run").mkdir()
    (tmp_path / "etc").mkdir()
    return tmp_path


def journal(host: Path) -> list[list[str]]:
    text = (host / "backups" / "JOURNAL").read_text()
    return [line.split("\t")[1:] for line in text.splitlines()]


def with_lock(host: Path, owner: str, body=None, raising: type | None = None):
    """Hold the lock as a run does (in its own thread and loop), around `body`."""

    async def serve():
        async with ssh_server(host) as srv:
            def held():
                with TargetLock(srv.params(), owner) as held_lock:
                    if body:
                        body(held_lock)
                    if raising:
                        raise raising("stop")

            await asyncio.to_thread(held)

    if raising:
        with pytest.raises(raising):
            asyncio.run(serve())
    else:
        asyncio.run(serve())


def test_the_lock_keeps_a_journal_of_each_run_and_how_it_ended(host):
    with_lock(host, "r1")
    with_lock(host, "r2", raising=RuntimeError)
    with_lock(host, "r3", raising=KeyboardInterrupt)
    with_lock(host, "r4", body=lambda held: held.call(held.target.conn.close() or
                                                      asyncio.sleep(0.3)))
    assert journal(host) == [["r1", "start"], ["r1", "end ok"], ["r2", "start"],
                             ["r2", "end failed"], ["r3", "start"], ["r3", "end interrupted"],
                             ["r4", "start"], ["r4", "end lost"]]
    assert not Path(lock.LOCK_DIR).exists()


def test_a_run_whose_connection_closed_takes_its_lock_again_before_going_on(host):
    """The run's lock is held on the connection its stages use (run/kernel.py): should that
    connection close, the next stage's connect takes the lock anew, or stops on TargetBusy."""
    from runbook.params import Target as TargetParams
    from runbook.run import stage

    async def scenario():
        async with ssh_server(host) as srv:
            params = TargetParams.model_validate(vars(srv.params()))
            await stage.hold_lock(params, "r1")
            first = await stage.connect(params, None, "10-install")
            await first.close()
            again = await stage.connect(params, None, "20-enable")
            assert again is not first and Path(lock.LOCK_DIR, "owner").read_text() == "r1\n"
            await again.close()
            while Path(lock.LOCK_DIR).exists():  # r1's shell lets go of the lock it held
                await asyncio.sleep(0.05)
            async with await Target.connect(params, None) as other:  # another run, meanwhile
                held = await lock.hold(other, "r2")
                with pytest.raises(lock.TargetBusy, match="r2"):
                    await stage.connect(params, None, "30-configure")
                await lock.release(held)
            await stage.release_lock(params, "failed")  # nothing held any more: no-op
            await (await stage.connect(params, None, None)).close()
        stage._connections.clear()

    asyncio.run(scenario())
    assert journal(host) == [["r1", "start"], ["r1", "end lost"], ["r1", "start"],
                             ["r1", "end lost"], ["r2", "start"], ["r2", "end ok"]]


def test_an_unfinished_run_is_found_with_its_backups_and_strays(host):
    main_cf = host / "etc" / "main.cf"
    aliases = host / "etc" / "aliases"
    main_cf.write_bytes(b"myhostname = old.example\n")
    aliases.write_bytes(b"root: samt\n")
    stray = host / "etc" / ".mail-runbook.Ab12Cd"
    stray.write_bytes(b"myhostname = half")
    (host / "backups").mkdir()
    (host / "backups" / "JOURNAL").write_text(
        "2026-12-01T10:00:00Z\tr0\tstart\n2026-12-01T10:00:09Z\tr0\tend ok\n"
        "2026-12-02T10:00:00Z\tr1\tstart\n"  # then the host rebooted
        "2026-12-03T10:00:00Z\tr2\tstart\n")  # the run asking

    async def steps():
        async with ssh_server(host) as srv, await Target.connect(srv.params(), None) as t:
            await files.write_file(t, str(main_cf), b"myhostname = new.example\n", run_id="r1")
            await files.keep_file(t, str(aliases), run_id="r1")
            found = await recovery.inspect(t, current="r2")
            await recovery.remove_strays(t, found.strays)
            return found

    found = asyncio.run(steps())
    assert found.unfinished.run == "r1" and found.unfinished.ended is None
    assert found.pending == [("changed", str(main_cf)), ("unchanged", str(aliases))]
    assert found.strays == [str(stray)] and found.news
    text = "\n".join(found.report())
    assert "r1, started 2026-12-02T10:00:00Z: no end recorded" in text
    assert f"{main_cf} (changed)" in text and str(stray) in text
    assert not stray.exists() and main_cf.read_bytes() == b"myhostname = new.example\n"


def test_a_finished_last_run_is_no_news(host):
    (host / "backups").mkdir()
    (host / "backups" / "JOURNAL").write_text("t\tr1\tstart\nt\tr1\tend failed\nt\tr2\tstart\n")
    state = recovery.parse("== journal\n" + (host / "backups" / "JOURNAL").read_text(), "r2")
    assert state.previous.run == "r1" and state.previous.finished and not state.news
    # a resumed run (the same id started again) counts by its latest attempt
    again = recovery.parse("== journal\nt\tr1\tstart\nt\tr1\tend ok\nt\tr1\tstart\n")
    assert again.previous.ended is None and again.unfinished


def test_only_temp_files_of_the_runbook_are_removed():
    with pytest.raises(ValueError, match="not a temp file"):
        asyncio.run(recovery.remove_strays(None, ["/etc/postfix/main.cf"]))


def test_status_reads_the_last_run_folder_and_says_it_was_cut_short(tmp_path):
    run_dir = tmp_path / "runs" / "20261204T010000Z-192.0.2.7"
    run_dir.mkdir(parents=True)
    update_run_json(run_dir, id=run_dir.name, host="192.0.2.7", state="running", end=None,
                    attempts=[{"stages": ["00-preflight", "10-install", "20-enable"]}],
                    stages={"00-preflight": {"status": "ok"}, "10-install": {"status": "ok"}})
    text = status.report("192.0.2.7", runs_root=tmp_path / "runs")
    assert "cut short: no end recorded" in text
    assert "00-preflight ok, 10-install ok, 20-enable not finished" in text
    assert "no parameters to reach it" in text
    assert json.loads((run_dir / "run.json").read_text())["state"] == "running"


def test_the_lock_takes_sudo_with_a_password_and_the_journal_never_holds_it(host, monkeypatch):
    from test_target import FAKE_SUDO, fake

    monkeypatch.setenv("TEST_SUDO_PASSWORD", "lock s3cret")

    async def serve():
        async with ssh_server(host) as srv:
            fake(host, "sudo", FAKE_SUDO, srv.env)
            srv.env["SUDO_WANT"] = "lock s3cret"
            params = srv.params(user="alice", privilege="sudo",
                                sudo_password_env="TEST_SUDO_PASSWORD")

            def held():
                with TargetLock(params, "r1"):
                    assert Path(lock.LOCK_DIR).exists()

            await asyncio.to_thread(held)

    asyncio.run(serve())
    assert journal(host) == [["r1", "start"], ["r1", "end ok"]]
    assert "s3cret" not in (host / "backups" / "JOURNAL").read_text()
