"""Facts: the batching script run by a real local shell, and the pure parsers."""

from __future__ import annotations

import asyncio
import subprocess

from hypothesis import given
from hypothesis import strategies as st
from stagefakes import Stage

from runbook.ops import facts
from runbook.ops.facts import Fact


def run_locally(fact_list: list[Fact], token="@@fact-test") -> list[tuple[str, int]]:
    script = facts.script(fact_list, token)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout
    return facts.split(out, token, len(fact_list))


def test_one_script_keeps_each_output_exact_and_its_exit_status(tmp_path):
    (tmp_path / "a").write_text("no newline at the end")
    (tmp_path / "b").write_text("two\nlines\n\n")
    found = run_locally([
        facts.file(str(tmp_path / "a")), facts.file(str(tmp_path / "b")),
        facts.file(str(tmp_path / "missing")),
        Fact("exit", "echo partial; exit 7", lambda o, s: (o, s)),
        Fact("after exit", "echo still runs", lambda o, s: o),
    ])
    assert found == [("no newline at the end", 0), ("two\nlines\n\n", 0), ("", 3),
                     ("partial\n", 7), ("still runs\n", 0)]


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                               blacklist_characters="\x00"), max_size=40),
                min_size=1, max_size=4))
def test_split_recovers_any_outputs(outputs):
    token = "@@fact-0123456789abcdef"
    joined = "".join(f"{out}\n{token} {i}\n" for i, out in enumerate(outputs))
    assert facts.split(joined, token, len(outputs)) == [(o, i) for i, o in enumerate(outputs)]


def test_read_gathers_missing_facts_in_one_command_and_caches_them(tmp_path):
    (tmp_path / "f").write_text("content\n")
    stage = Stage()
    calls = []

    async def run(command, **kwargs):
        calls.append(command)
        result = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
        return type("R", (), {"stdout": result.stdout, "stderr": result.stderr,
                              "exit_status": result.returncode})

    stage.run = run
    f = facts.file(str(tmp_path / "f"))
    e = facts.exists(str(tmp_path / "nothing"))
    assert asyncio.run(facts.read(stage, f, e)) == ["content\n", False]
    assert asyncio.run(facts.read(stage, f)) == ["content\n"]
    assert len(calls) == 1
    facts.forget(stage)
    asyncio.run(facts.read(stage, f))
    assert len(calls) == 2


def test_offline_stage_reads_fresh_values():
    stage = Stage()
    stage.offline = True
    fact = Fact("x", "false", lambda o, s: "never", fresh={"fresh": True})
    assert asyncio.run(facts.read_one(stage, fact)) == {"fresh": True}
    assert stage.commands == []


def test_parse_main_cf_follows_postconf_5():
    text = (
        "# comment = not a setting\n"
        "myhostname = mail.example.org\n"
        "mydestination = $myhostname,\n"
        "    localhost.$mydomain\n"
        "\tlocalhost\n"
        "  # an indented comment ends nothing and continues nothing\n"
        "mynetworks=127.0.0.0/8\n"
        "empty =\n"
        "myhostname = later.example.org\n"
    )
    assert facts.parse_main_cf(text) == {
        "myhostname": "later.example.org",
        "mydestination": "$myhostname, localhost.$mydomain localhost",
        "mynetworks": "127.0.0.0/8",
        "empty": "",
    }


def test_postconf_n_is_none_without_postfix():
    fact = facts.postconf_n("/usr/sbin/postconf")
    assert fact.parse("", 127) is None
    assert fact.parse("a = b\n", 0) == {"a": "b"}


def test_parse_ss_listeners():
    text = (
        'LISTEN 0 100 127.0.0.11:25 0.0.0.0:* users:(("master",pid=812,fd=13))\n'
        'LISTEN 0 128 [::1]:25 [::]:* users:(("master",pid=812,fd=14))\n'
        'LISTEN 0 128 127.0.0.12:22 0.0.0.0:* users:(("sshd",pid=99,fd=3),("sshd",pid=98,fd=3))\n'
        "LISTEN 0 4096 *:8080 *:*\n"
    )
    found = facts.parse_ss_listeners(text)
    assert [(s.address, s.port, s.process, s.pid) for s in found] == [
        ("127.0.0.11", 25, "master", 812), ("::1", 25, "master", 812),
        ("127.0.0.12", 22, "sshd", 99), ("127.0.0.12", 22, "sshd", 98)]


def test_parse_os_release():
    assert facts.parse_os_release('ID=debian\nVERSION_ID="12"\n# c\nNAME=\'Debian\'\n') == {
        "ID": "debian", "VERSION_ID": "12", "NAME": "Debian"}


def test_network_of_postfix_notation():
    assert str(facts.network_of("127.0.0.11/32")) == "127.0.0.11/32"
    assert str(facts.network_of("192.0.2.7")) == "192.0.2.7/32"
    assert str(facts.network_of("[::1]/128")) == "::1/128"
    assert facts.network_of("hash:/etc/postfix/network_table") is None
    assert facts.network_of("/etc/postfix/networks") is None


def test_split_words():
    assert facts.split_words("a, b,c  d") == ["a", "b", "c", "d"]
    assert facts.split_words("") == []


def test_parse_fstat_listeners_keeps_unconnected_tcp_sockets():
    text = (
        "USER     CMD          PID   FD MOUNT        INUM MODE         R/W    SZ|DV\n"
        "root     master     81234   12* internet stream tcp 0xd1f7c6a0 *:25\n"
        "root     master     81234   13* internet6 stream tcp 0xd1f7c5a0 [::1]:25\n"
        "_postfix smtpd      1111    7* internet stream tcp 0xd1f7c000 127.0.0.1:25 <-- "
        "127.0.0.1:40000\n"
        "root     syslogd    222     5* internet dgram udp *:514\n"
    )
    assert [(s.address, s.port, s.process, s.pid) for s in facts.parse_listeners(text)] == [
        ("*", 25, "master", 81234), ("::1", 25, "master", 81234)]


def test_fresh_host_reads_what_the_plan_wrote():
    host = facts.FreshHost(files={"/etc/aliases": "a: b\n"})
    host.add("/etc/aliases.db")
    assert facts.fresh_value(facts.newer("/etc/aliases.db", "/etc/aliases"), host)
    host.write("/etc/aliases", "a: c\n")
    assert not facts.fresh_value(facts.newer("/etc/aliases.db", "/etc/aliases"), host)
    assert facts.fresh_value(facts.file("/etc/aliases"), host) == "a: c\n"
    assert facts.fresh_value(facts.postconf_n("/usr/sbin/postconf"), host) is None
    host.packages.add("postfix")
    host.write("/etc/postfix/main.cf", "myhostname = x\n")
    assert facts.fresh_value(facts.postconf_n("/usr/sbin/postconf"), host) == {"myhostname": "x"}
    host.move("/etc/aliases", "/etc/aliases.old")
    assert not host.exists("/etc/aliases") and host.read("/etc/aliases.old") == "a: c\n"
