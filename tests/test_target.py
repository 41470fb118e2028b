"""The SSH session against the in-process server: streaming, exit status, timeout and kill,
host keys, refusals, privilege, audit records, TCP through the target."""

import asyncio
import contextlib
import itertools
import json
import os
import re
import sys
import time
import types
from pathlib import Path

import asyncssh
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sshserver import HOST, known_hosts_line, ssh_server

from runbook.audit import Audit
from runbook.errors import (
    AuthenticationRefused,
    CommandFailed,
    CommandTimeout,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
    PrivilegeRefused,
)
from runbook.remote import channel
from runbook.remote import target as target_mod
from runbook.remote.target import Target, q


@contextlib.asynccontextmanager
async def session(tmp: Path, audit: Audit | None = None, **params):
    async with ssh_server(tmp) as srv, await Target.connect(srv.params(**params), audit) as t:
        yield srv, t


def records(run_dir: Path, kind: str = "command") -> list[dict]:
    lines = (run_dir / "audit.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["type"] == kind]


class Clock:
    """A stand-in for sys.stdout/stderr that notes when each line arrived."""

    def __init__(self):
        self.lines: list[tuple[float, str]] = []

    def write(self, text: str) -> None:
        if text.strip():
            self.lines.append((time.monotonic(), text))

    def flush(self) -> None:
        pass


def live_in_groups(groups: set[int], argv: bytes) -> list[int]:
    """Live (not zombie) processes with this exact argv in one of these process groups."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state, _ppid, pgrp = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:3]
            if cmdline == argv and int(pgrp) in groups and state != "Z":
                found.append(int(pid))
    return found


SLEEP = b"sleep\x001000\x00"


def sleepers(srv) -> list[int]:
    return live_in_groups({p.pid for p in srv.procs}, SLEEP)


# --- output streams ----------------------------------------------------------------------


def feed_in_chunks(lines, data: bytes, cuts: list[int]) -> None:
    edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for a, b in itertools.pairwise(edges):
        lines.feed(data[a:b])
    lines.feed(b"", final=True)


@given(st.binary(), st.lists(st.integers(0, 1 << 16), max_size=8))
def test_output_keeps_every_byte_and_finds_the_pid_however_it_is_cut(data, cuts):
    lines = channel.Lines(None, str, find_pid=True)
    feed_in_chunks(lines, b"__mail_runbook_pid__ 4242\n" + data, cuts)
    assert lines.pid == 4242
    assert lines.text.encode("utf-8", "surrogateescape") == data


@given(st.text(), st.lists(st.integers(0, 1 << 16), max_size=8))
def test_printed_lines_are_the_output_lines(text, cuts):
    sink = Clock()
    lines = channel.Lines(sink, str.upper)
    feed_in_chunks(lines, text.encode(), cuts)
    assert lines.text == text
    shown = [line for _, line in sink.lines]
    assert shown == [line.upper() for line in text.split("\n") if line.strip()]


# --- run ---------------------------------------------------------------------------------


def test_output_streams_line_by_line_before_the_command_ends(tmp_path, monkeypatch):
    out, err = Clock(), Clock()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)

    async def body():
        async with session(tmp_path) as (_, t):
            r = await t.run("echo one; echo warn >&2; sleep 0.6; echo two")
            return r, time.monotonic()

    r, ended = asyncio.run(body())
    assert [text for _, text in out.lines] == ["one", "two"]
    assert [text for _, text in err.lines] == ["warn"]
    assert ended - out.lines[0][0] > 0.4  # "one" was shown while the command still ran
    assert ended - err.lines[0][0] > 0.4
    assert (r.stdout, r.stderr, r.exit_status) == ("one\ntwo\n", "warn\n", 0)


def test_quiet_and_stream_false_print_nothing(tmp_path, capsys):
    async def body():
        async with session(tmp_path) as (_, t):
            a = await t.run("echo a; echo b >&2", stream=False)
            b = await t.run("echo c", quiet=True)
            return a, b

    a, b = asyncio.run(body())
    assert capsys.readouterr().out == "" and a.stdout == "a\n" and b.stdout == "c\n"


def test_a_long_command_shows_its_elapsed_time(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(target_mod, "LONG", 0.2)

    async def body():
        async with session(tmp_path) as (_, t):
            await t.run("sleep 0.3")
            await t.run("true")

    asyncio.run(body())
    lines = capsys.readouterr().out.splitlines()  # one line, for the long command only
    assert len(lines) == 1 and re.fullmatch(r"\((\d+\.\d) s\)", lines[0]), lines
    assert float(lines[0][1:-3]) >= 0.3  # a loaded machine may take longer, never less


def test_exit_status_and_command_failed(tmp_path):
    async def body():
        async with session(tmp_path) as (_, t):
            r = await t.run("echo out; echo 'no such key' >&2; exit 3", check=False)
            assert (r.exit_status, r.stdout, r.stderr) == (3, "out\n", "no such key\n")
            with pytest.raises(CommandFailed) as exc:
                await t.run("echo out; echo 'no such key' >&2; exit 3")
            signalled = await t.run("kill -TERM $$", check=False)
            return exc.value, signalled

    exc, signalled = asyncio.run(body())
    assert "echo out" in str(exc) and "exited 3" in str(exc) and "no such key" in str(exc)
    assert "root@127.0.0.1:" in str(exc)
    assert exc.result.exit_status == 3
    assert signalled.exit_status == 128 + 15  # reported as a shell does


def test_stdin_and_binary_output_round_trip(tmp_path):
    blob = bytes(range(256)) * 4 + b"\xe2\x82"  # every byte, ending in a cut UTF-8 sequence

    async def body():
        async with session(tmp_path) as (_, t):
            text = await t.run("cat", input="héllo\n", stream=False)
            raw = await t.run("cat", input=blob, stream=False)
            return text, raw

    text, raw = asyncio.run(body())
    assert text.stdout == "héllo\n"
    assert raw.stdout.encode("utf-8", "surrogateescape") == blob


def test_each_command_has_a_channel_and_a_shell_of_its_own(tmp_path):
    # The first opens its channel for itself; each later one is given the shell started
    # while the one before ran, and another is started for the next.
    async def body():
        async with session(tmp_path) as (srv, t):
            results = [await t.run("echo $0 $$ $#") for _ in range(3)]
            return srv.commands, sorted(srv.channels), results

    ran, channels, results = asyncio.run(body())
    first = "echo __mail_runbook_pid__ $$; exec sh -c 'echo $0 $$ $#'"
    assert channels == [first, *["exec sh"] * 3]  # the last waits for a command to come
    assert ran == [first, *["echo __mail_runbook_pid__ $$; eval 'echo $0 $$ $#'\n"] * 2]
    words = [r.stdout.split() for r in results]
    assert [(w[0], w[2]) for w in words] == [("sh", "0")] * 3  # as `sh -c` runs it
    assert len({w[1] for w in words}) == 3  # a process each
    assert all("__mail_runbook_pid__" not in r.stdout for r in results)  # the library's line


class OwnChannels(Target):
    """Every command on a channel opened for it: the way a command goes without a shell
    started ahead, to compare with."""

    async def _take_spare(self):
        return None


TRICKY = [
    "echo \"$0\" $# \"$*\"",  # sh -c's $0 and no positional parameters
    "exit 7",
    "echo a\necho b >&2\nexit 3",  # several lines
    "cat <<'EOF'\nx $HOME\nEOF",  # a here-document
    "printf 'no newline'",
    "echo 'unclosed",  # a syntax error
    "set -- x y; echo $#; exec printf '%s|' \"$@\"",
    "read line; echo \"[$line]\" $?",  # input: at its end at once
    "echo $(( 6 * 7 )) \"$(printf '%s' 'it''s')\"",
]


@pytest.mark.parametrize("command", TRICKY)
def test_a_started_shell_runs_a_command_as_a_channel_of_its_own_does(tmp_path, command):
    async def body():
        async with ssh_server(tmp_path) as srv:
            async with await Target.connect(srv.params(), None) as t:
                await t.run("true")
                started = await t.run(command, check=False, stream=False)
                spare_given = srv.commands[-1]
            async with await OwnChannels.connect(srv.params(), None) as own:
                alone = await own.run(command, check=False, stream=False)
            return started, alone, spare_given

    started, alone, given = asyncio.run(body())
    assert "eval" in given and "exec sh -c" not in given  # it did go to a started shell
    assert (started.exit_status, started.stdout) == (alone.exit_status, alone.stdout)
    assert started.stderr.replace("eval: ", "") == alone.stderr.replace("eval: ", "")


def test_what_a_login_shell_prints_first_is_kept_either_way(tmp_path):
    async def body():
        async with ssh_server(tmp_path) as srv:
            srv.login = "echo welcome; "  # as a chatty ~/.bashrc
            async with await Target.connect(srv.params(), None) as t:
                return [await t.run("echo hi", stream=False) for _ in range(2)]

    assert [r.stdout for r in asyncio.run(body())] == ["welcome\nhi\n"] * 2


def test_commands_at_once_each_get_a_shell(tmp_path):
    async def body():
        async with session(tmp_path) as (_, t):
            await t.run("true")
            return await asyncio.gather(*(t.run(f"sleep 0.2; echo {i} $$") for i in range(4)))

    results = asyncio.run(body())
    assert [r.stdout.split()[0] for r in results] == ["0", "1", "2", "3"]
    assert len({r.stdout.split()[1] for r in results}) == 4


def test_a_started_shell_that_ended_while_it_waited_is_passed_over(tmp_path):
    async def body():
        async with session(tmp_path) as (srv, t):
            await t.run("true")
            spare = await t._spare
            os.kill(srv.procs[-1].pid, 9)  # the waiting `exec sh`
            await asyncio.wait_for(spare.chan.wait_closed(), 5)
            r = await t.run("echo still $0")
            return spare.dead, r, srv.commands

    dead, r, ran = asyncio.run(body())
    assert dead and r.stdout == "still sh\n" and r.exit_status == 0
    assert ran[-1].endswith("exec sh -c 'echo still $0'")  # on a channel of its own


def test_a_command_given_input_opens_its_own_channel(tmp_path):
    async def body():
        async with session(tmp_path) as (srv, t):
            await t.run("true")
            await t.run("cat", input="x")
            return srv.commands

    assert asyncio.run(body())[-1].endswith("exec sh -c cat")


# --- timeout -----------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["its own channel", "started before it"])
def test_timeout_kills_the_remote_process(tmp_path, shell):
    run_dir = tmp_path / "run"

    async def body():
        async with session(tmp_path, Audit(run_dir, display=False)) as (srv, t):
            if shell == "started before it":
                await t.run("true", quiet=True)
            task = asyncio.ensure_future(t.run("sleep 1000; echo never", timeout=0.5))
            await asyncio.sleep(0.3)
            assert len(sleepers(srv)) == 1  # the check below can see it
            with pytest.raises(CommandTimeout) as exc:
                await task
            return sleepers(srv), exc.value

    left, exc = asyncio.run(body())
    assert left == []
    assert "timed out after 0.5 s" in str(exc) and "killed" in str(exc)
    kill, cmd = records(run_dir)[-2:]
    assert "kill -TERM" in kill["command"] and kill["exit_status"] == 0
    assert cmd["command"] == "sleep 1000; echo never"
    assert cmd["timed_out"] == 0.5 and cmd["killed"] is True and cmd["stdout"] == ""


def test_timeout_kills_a_process_that_ignores_term(tmp_path, monkeypatch):
    monkeypatch.setattr(target_mod, "KILL_GRACE", 0.5)

    async def body():
        async with session(tmp_path) as (srv, t):
            with pytest.raises(CommandTimeout):
                await t.run("trap '' TERM; sleep 1000 & sleep 1000; wait", timeout=0.3)
            return sleepers(srv)

    assert asyncio.run(body()) == []


def test_closing_the_channel_alone_leaves_the_process_running(tmp_path, monkeypatch):
    # Why the kill is needed: with it skipped, the remote command survives the timeout.
    async def no_kill(self, job, via):
        job.chan.close()
        return False

    monkeypatch.setattr(Target, "_kill", no_kill)

    async def body():
        async with session(tmp_path) as (srv, t):
            with pytest.raises(CommandTimeout, match="could NOT be confirmed killed"):
                await t.run("sleep 1000; true", timeout=0.3)
            await asyncio.sleep(0.2)
            return sleepers(srv)

    assert len(asyncio.run(body())) == 1


# --- audit -------------------------------------------------------------------------------


def test_each_command_is_recorded_with_secrets_masked(tmp_path, capsys):
    run_dir = tmp_path / "run"
    audit = Audit(run_dir, stage="10-postfix", display=False)
    audit.add_secret("s3cret")

    async def body():
        async with ssh_server(tmp_path) as srv:
            t = await Target.connect(srv.params(), audit, stage="20-aliases")
            await t.run(f"echo {q('pw=s3cret')}")
            with pytest.raises(CommandFailed) as exc:
                await t.run("echo s3cret >&2; exit 1")
            await t.close()
            return t.fingerprint, srv.host_key.get_fingerprint("sha256"), exc.value

    fingerprint, server_fp, exc = asyncio.run(body())
    assert fingerprint == server_fp and fingerprint.startswith("SHA256:")
    ok, failed = records(run_dir)
    assert ok["type"] == "command" and ok["stage"] == "20-aliases"
    assert {"host", "fingerprint", "command", "start", "duration", "exit_status"} <= ok.keys()
    assert (ok["host"], ok["fingerprint"]) == (HOST, fingerprint)
    assert ok["command"] == "echo pw=********" and ok["stdout"] == "pw=********\n"
    assert failed["exit_status"] == 1 and failed["stderr"] == "********\n"
    assert "s3cret" not in str(exc)
    streamed = capsys.readouterr()
    assert "s3cret" not in streamed.out + streamed.err and "pw=********" in streamed.out


# --- privilege ---------------------------------------------------------------------------


def fake(tmp: Path, name: str, script: str, env: dict) -> None:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text("#!/bin/sh\n" + script)
    (bin_dir / name).chmod(0o755)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"


def test_privileged_commands_go_through_sudo_n(tmp_path):
    run_dir = tmp_path / "run"

    async def body():
        async with ssh_server(tmp_path) as srv:
            fake(tmp_path, "sudo", '[ "$1" = -n ] || exit 99; shift; exec "$@"\n', srv.env)
            params = srv.params(user="alice", privilege="sudo")
            async with await Target.connect(params, Audit(run_dir, display=False)) as t:
                as_root = await t.run("echo '$HOME' \"$0\"", quiet=True)
                plain = await t.run("echo plain", privileged=False, quiet=True)
            return srv.commands, as_root, plain

    commands, as_root, plain = asyncio.run(body())
    assert commands[0].startswith("exec sudo -n sh -c ") and "sudo" not in commands[1]
    assert as_root.stdout == "$HOME sh\n" and plain.stdout == "plain\n"
    first, second = records(run_dir)
    assert first["privilege"] == "sudo" and "privilege" not in second


@pytest.mark.parametrize(
    ("via", "says", "advice"),
    [
        ("sudo", "sudo: a password is required", "alice ALL=(ALL) NOPASSWD: ALL"),
        ("doas", "doas: Authorization required", "permit nopass alice"),
    ],
)
def test_a_password_prompt_is_refused_with_what_to_configure(tmp_path, via, says, advice):
    async def body():
        async with ssh_server(tmp_path) as srv:
            fake(tmp_path, via, f"echo '{says}' >&2; exit 1\n", srv.env)
            async with await Target.connect(srv.params(user="alice", privilege=via), None) as t:
                with pytest.raises(PrivilegeRefused) as exc:
                    await t.run("true", check=False)
                return exc.value

    message = str(asyncio.run(body()))
    assert says in message and advice in message and f"alice@{HOST}" in message


def test_root_needs_no_sudo(tmp_path):
    async def body():
        async with session(tmp_path, privilege="sudo") as (srv, t):
            await t.run("true")
            return srv.commands

    assert "sudo" not in asyncio.run(body())[0]


# --- connecting --------------------------------------------------------------------------


def connect_error(tmp_path, error, edit=None, **params) -> str:
    async def body():
        async with ssh_server(tmp_path) as srv:
            if edit:
                edit(srv)
            with pytest.raises(error) as exc:
                await Target.connect(srv.params(**params), None)
            return srv, exc.value

    srv, exc = asyncio.run(body())
    return str(exc).replace(str(srv.port), "PORT")


def test_an_unknown_host_key_is_refused_in_strict_mode(tmp_path):
    message = connect_error(tmp_path, HostKeyUnknown, lambda srv: srv.known_hosts.write_text(""))
    assert f"root@{HOST}:PORT" in message and "SHA256:" in message
    assert "ssh-keyscan" in message and "accept-new" in message


def test_a_missing_known_hosts_file_means_unknown(tmp_path):
    message = connect_error(tmp_path, HostKeyUnknown, known_hosts=tmp_path / "none")
    assert str(tmp_path / "none") in message
    assert not (tmp_path / "none").exists()


def other_key(srv) -> None:
    srv.known_hosts.write_text(
        known_hosts_line(srv.port, asyncssh.generate_private_key("ssh-ed25519"))
    )


@pytest.mark.parametrize("policy", ["strict", "accept-new"])
def test_a_changed_host_key_is_refused(tmp_path, policy):
    before = None

    def edit(srv):
        nonlocal before
        other_key(srv)
        before = srv.known_hosts.read_text()

    message = connect_error(tmp_path, HostKeyChanged, edit, host_key_policy=policy)
    assert "differs from the one in" in message and "otherwise do not connect" in message
    assert f"ssh-keygen -R '[{HOST}]:PORT' -f {tmp_path / 'known_hosts'}" in message
    assert (tmp_path / "known_hosts").read_text() == before  # never rewritten


def test_accept_new_adds_an_unknown_key_then_it_is_known(tmp_path):
    known = tmp_path / "fresh" / "known_hosts"

    async def body():
        async with ssh_server(tmp_path) as srv:
            t = await Target.connect(
                srv.params(known_hosts=known, host_key_policy="accept-new"), None
            )
            await t.close()
            t = await Target.connect(srv.params(known_hosts=known), None)  # strict now passes
            await t.close()
            return srv

    srv = asyncio.run(body())
    assert known.read_text() == known_hosts_line(srv.port, srv.host_key)


def test_refused_authentication_names_the_host(tmp_path):
    stranger = tmp_path / "id_other"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(stranger))
    message = connect_error(tmp_path, AuthenticationRefused, key_file=stranger, user="bob")
    assert f"bob@{HOST}:PORT refused authentication" in message and "authorized_keys" in message


def test_a_missing_key_file_is_named(tmp_path):
    message = connect_error(tmp_path, AuthenticationRefused, key_file=tmp_path / "nope")
    assert str(tmp_path / "nope") in message


def test_unreachable_hosts(tmp_path):
    async def body():
        messages, accepted = [], []
        silent = await asyncio.start_server(lambda r, w: accepted.append(w), HOST, 0)  # mute
        async with silent, ssh_server(tmp_path) as srv:
            closed = srv.params(port=1)
            mute = srv.params(port=silent.sockets[0].getsockname()[1], connect_timeout=0.3)
            unknown = srv.params(host="no-such-host.invalid")
            for params in (closed, mute, unknown):
                with pytest.raises(HostUnreachable) as exc:
                    await Target.connect(params, None)
                messages.append(str(exc.value))
        for writer in accepted:
            writer.close()
        return messages

    closed, mute, unknown = asyncio.run(body())
    assert closed.startswith(f"cannot reach root@{HOST}:1:") and "sshd" in closed
    assert "no SSH answer within 0.3 s" in mute
    assert "root@no-such-host.invalid:" in unknown


# --- TCP through the target --------------------------------------------------------------


def test_open_connection_and_forward_local_port(tmp_path):
    async def echo(reader, writer):
        writer.write(b"220 " + await reader.readline())
        await writer.drain()
        writer.close()

    async def body():
        server = await asyncio.start_server(echo, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        async with server, session(tmp_path) as (_, t):
            reader, writer = await t.open_connection(HOST, port)
            writer.write(b"direct\n")
            direct = await reader.readline()
            writer.close()
            listener, local = await t.forward_local_port(HOST, port)
            reader, writer = await asyncio.open_connection(HOST, local)
            writer.write(b"forwarded\n")
            forwarded = await reader.readline()
            writer.close()
            listener.close()
            return direct, forwarded

    assert asyncio.run(body()) == (b"220 direct\n", b"220 forwarded\n")


# --- jump hosts ----------------------------------------------------------------------------


def test_a_jump_host_carries_the_session_and_each_hops_key_is_recorded(tmp_path):
    """The server as its own jump host: the target's connection is tunnelled through the
    first (a direct-tcpip request to it), and the audit names both hops with their keys."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    from sshserver import forwards

    async def body():
        async with ssh_server(tmp_path) as srv:
            before = len(forwards())
            params = srv.params(jump=[f"root@{HOST}:{srv.port}"])
            async with await Target.connect(params, Audit(run_dir, display=False)) as t:
                out = (await t.run("echo through")).stdout
                tunnels = forwards()[before:]
            return srv, out, tunnels

    srv, out, tunnels = asyncio.run(body())
    assert out == "through\n" and tunnels == [(HOST, srv.port)]
    (connection,) = records(run_dir, "connection")
    fingerprint = srv.host_key.get_fingerprint("sha256")
    assert connection["destination"] == f"root@{HOST}:{srv.port}"
    assert connection["jumps"] == [f"root@{HOST}:{srv.port}"]
    assert [h["fingerprint"] for h in connection["hops"]] == [fingerprint, fingerprint]


def test_a_changed_key_on_the_jump_host_refuses_the_run(tmp_path):
    async def body():
        async with ssh_server(tmp_path) as srv:
            other = asyncssh.generate_private_key("ssh-ed25519")
            srv.known_hosts.write_text(known_hosts_line(srv.port, other))
            with pytest.raises(HostKeyChanged) as exc:
                await Target.connect(srv.params(jump=[f"root@{HOST}:{srv.port}"]), None)
            return srv, str(exc.value)

    srv, message = asyncio.run(body())
    # refused at the first hop (the target's own message would say "through …")
    assert message.startswith(f"root@{HOST}:{srv.port}: the key of {HOST}")
    assert "(through" not in message


# --- sudo with a password -----------------------------------------------------------------

# A stand-in for `sudo -S -p PROMPT sh -c CMD` (the real one is in the lab test): asks with the
# prompt on stderr, reads one line, and (as sudo) asks again after a wrong one; with
# SUDO_CACHED set it asks nothing, as a sudo with a fresh timestamp or NOPASSWD.
FAKE_SUDO = """\
[ "$1" = -S ] && [ "$2" = -p ] || { echo "sudo: unexpected $*" >&2; exit 2; }
prompt=$3; shift 3; tries=0
while [ -z "$SUDO_CACHED" ]; do
  printf '%s' "$prompt" >&2
  IFS= read -r got || { echo "sudo: no password was provided" >&2; exit 1; }
  [ "$got" = "$SUDO_WANT" ] && break
  sleep 0.2; echo "Sorry, try again." >&2; tries=$((tries + 1))
  [ $tries -lt 3 ] || { echo "sudo: 3 incorrect password attempts" >&2; exit 1; }
done
exec "$@"
"""


def sudo_session(tmp_path, monkeypatch, password="s3cret pass", cached=False):
    monkeypatch.setenv("TEST_SUDO_PASSWORD", password)

    @contextlib.asynccontextmanager
    async def opened(audit=None):
        async with ssh_server(tmp_path) as srv:
            fake(tmp_path, "sudo", FAKE_SUDO, srv.env)
            srv.env["SUDO_WANT"] = "s3cret pass"
            if cached:
                srv.env["SUDO_CACHED"] = "1"
            params = srv.params(user="alice", privilege="sudo",
                                sudo_password_env="TEST_SUDO_PASSWORD")
            async with await Target.connect(params, audit) as t:
                yield srv, t
    return opened


def test_sudo_gets_the_password_on_stdin_when_it_asks_and_never_on_a_command_line(
        tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    opened = sudo_session(tmp_path, monkeypatch)

    async def body():
        async with opened(Audit(run_dir, display=False)) as (srv, t):
            result = await t.run("cat; id -u >/dev/null", input="the command's own input\n")
            return srv.commands, result

    commands, result = asyncio.run(body())
    assert result.stdout == "the command's own input\n"  # the password was sudo's alone
    assert "[mail-runbook: sudo password]" not in result.stderr
    assert commands[0].startswith("exec sudo -S -p ")
    assert not any("s3cret" in c for c in commands)
    text = (run_dir / "audit.jsonl").read_text()
    assert "s3cret" not in text


def test_a_sudo_that_does_not_ask_never_gets_the_password(tmp_path, monkeypatch):
    opened = sudo_session(tmp_path, monkeypatch, cached=True)

    async def body():
        async with opened() as (_, t):
            return (await t.run("cat", input="only this\n")).stdout

    assert asyncio.run(body()) == "only this\n"


def test_a_wrong_sudo_password_fails_at_once_naming_the_field(tmp_path, monkeypatch):
    opened = sudo_session(tmp_path, monkeypatch, password="wrong")

    async def body():
        async with opened() as (_, t):
            started = time.monotonic()
            with pytest.raises(PrivilegeRefused) as exc:
                await t.run("touch ran")
            return str(exc.value), time.monotonic() - started

    message, took = asyncio.run(body())
    assert "target.sudo_password_env (TEST_SUDO_PASSWORD)" in message
    assert "alice" in message and "wrong" not in message.split("—")[0]
    assert took < 2.0  # one try (sudo's own delay), not three
    assert not (tmp_path / "ran").exists()


def test_a_missing_sudo_password_stops_before_connecting(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_SUDO_PASSWORD", raising=False)

    async def body():
        async with ssh_server(tmp_path) as srv:
            params = srv.params(user="alice", privilege="sudo",
                                sudo_password_env="NO_SUCH_SUDO_PASSWORD")
            with pytest.raises(PrivilegeRefused, match=r"NO_SUCH_SUDO_PASSWORD.*not set"):
                await Target.connect(params, None)
            return srv.commands

    assert asyncio.run(body()) == []


def test_a_sudo_password_file_is_read_and_its_problems_named(tmp_path):
    from runbook.remote import sudo

    secret = tmp_path / "sudo_pw"
    secret.write_text("s3cret pass\n")  # one trailing newline, as an editor leaves it
    params = types.SimpleNamespace(sudo_password_env=None, sudo_password_file=secret)
    assert sudo.read_password(params) == "s3cret pass"
    secret.write_text("")
    with pytest.raises(PrivilegeRefused, match=r"target\.sudo_password_file .* is empty"):
        sudo.read_password(params)
    params.sudo_password_file = tmp_path / "missing"
    with pytest.raises(PrivilegeRefused, match=r"cannot read target\.sudo_password_file"):
        sudo.read_password(params)

    async def body():
        async with ssh_server(tmp_path) as srv:
            fake(tmp_path, "sudo", FAKE_SUDO, srv.env)
            srv.env["SUDO_WANT"] = "s3cret pass"
            secret.write_text("s3cret pass\n")
            params = srv.params(user="alice", privilege="sudo", sudo_password_file=secret)
            async with await Target.connect(params, None) as t:
                return (await t.run("echo ran as asked")).stdout

    assert asyncio.run(body()) == "ran as asked\n"


def test_a_host_key_alias_from_ssh_config_names_the_key_to_check(tmp_path):
    """HostKeyAlias: the key is looked up under the alias, not the address; a changed key
    under the alias is refused naming it."""
    config = tmp_path / "ssh_config"
    config.write_text(f"Host {HOST}\n    HostKeyAlias mail-key-alias\n")

    async def body():
        async with ssh_server(tmp_path) as srv:
            key = srv.host_key.export_public_key().decode().strip()
            srv.known_hosts.write_text(f"[mail-key-alias]:{srv.port} {key}\n")
            params = srv.params(ssh_config=str(config))
            async with await Target.connect(params, None) as t:
                out = (await t.run("echo under the alias")).stdout
            other = asyncssh.generate_private_key("ssh-ed25519").export_public_key()
            srv.known_hosts.write_text(f"[mail-key-alias]:{srv.port} {other.decode().strip()}\n")
            with pytest.raises(HostKeyChanged) as changed:
                await Target.connect(params, None)
            return out, str(changed.value)

    out, message = asyncio.run(body())
    assert out == "under the alias\n"
    assert "the key of mail-key-alias" in message and "ssh-keygen -R" in message
