"""Bad input, widely: hostile and odd values for every string field of the params model.

For each string field (found by walking the model, so a new field is covered without
editing this file) hypothesis draws shell metacharacters, newlines, NUL and other control
characters, over-long labels and names, Unicode look-alikes and separators, and path
traversal, alone and glued to valid values. Each value must either be

- refused by the model naming that field (and `runbook run` with it refuses before any
  connection: the SSH layer is never reached), or
- accepted, and then carry no control, format or line-separator character (it ends up in
  config files and commands), and wherever it appears in a command of the plan for a host
  it is quoted: every occurrence lies inside its `shlex.quote`d form, and that word, run
  through a real `sh -c` locally, echoes back the exact bytes.

The lab part (test_accepted_values_arrive_byte_for_byte) sends a sample of accepted
values through a real stage to a real host. The number of cases is printed at the end.
"""

from __future__ import annotations

import copy
import functools
import random
import shlex
import subprocess
import tempfile
import types
import typing
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runbook import params as model
from runbook.errors import ParamsError
from runbook.run import plan

PROJECT = Path(__file__).resolve().parent.parent
BASES = {name: yaml.safe_load((PROJECT / "params" / f"example-{name}.yaml").read_text())
         for name in ("debian", "openbsd")}
OPENBSD_ONLY = {"platform.postfix_package", "platform.pkg_path", "postfix.html_docs_dir"}
# Fields whose values never leave this machine (local files, names of local things).
LOCAL = {"target.key_file", "target.known_hosts", "target.ssh_config", "target.sudo_password_file",
         "target.sudo_password_env",
         "dovecot.test_password_file", "dovecot.test_password_env"}
TOGETHER = {"dovecot.ssl_cert_file": "dovecot.ssl_key_file",
            "dovecot.ssl_key_file": "dovecot.ssl_cert_file"}
CASES: Counter = Counter()


# --- the fields ------------------------------------------------------------------------------

def _shape(tp):
    """'str' for a string (or Path, or Literal of strings), ('list', s), ('dict', k, v), or
    None for a field holding no string."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _shape(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        shapes = [_shape(a) for a in get_args(tp) if a is not type(None)]
        return next((s for s in shapes if s), None)
    if origin is list:
        item = _shape(get_args(tp)[0])
        return ("list", item) if item else None
    if origin is dict:
        key, value = (_shape(a) for a in get_args(tp))
        return ("dict", key, value) if key or value else None
    if origin is Literal:
        return "str" if all(isinstance(a, str) for a in get_args(tp)) else None
    return "str" if tp in (str, Path) else None


def _targets() -> list[tuple[str, str]]:
    """(dotted field, position): position 'value', 'item', 'key' or 'dict-value'."""
    found = []
    for section, info in model.Params.model_fields.items():
        klass = typing.get_args(info.annotation)[0] if get_origin(info.annotation) else \
            info.annotation
        for name, field in klass.model_fields.items():
            shape = _shape(field.annotation)
            dotted = f"{section}.{name}"
            if shape == "str":
                found.append((dotted, "value"))
            elif isinstance(shape, tuple) and shape[0] == "list":
                found.append((dotted, "item"))
            elif isinstance(shape, tuple) and shape[0] == "dict":
                found += [(dotted, "key"), (dotted, "dict-value")]
    return found


TARGETS = _targets()
DICT_FILLERS = {"postfix.aliases": ("postmaster", ["root"]),
                "postfix.extra_settings": ("smtpd_banner", "$myhostname ESMTP")}


# --- hostile values --------------------------------------------------------------------------

META = ";|&$()<>`'\"\\*?[]{}!#~ \t\n\r\0\x0b\x0c\x1b\x7f\x85"
LOOKALIKES = ("\u0430\u0435\u043e\u0456"  # Cyrillic а е о і
              "\uff0e\uff0f\uff1a"  # fullwidth . / :
              "\u0131\u212a\u0661\u0662"  # dotless ı, Kelvin K, Arabic-Indic digits
              "\u2028\u2029\u202e\u200b\u00a0\u00ad\u0301\U0001f4e7")
ALPHABET = "abcxyzAZ0129.-_/@:%+=," + META + LOOKALIKES
SEEDS = ["example.org", "mail.example.org", "127.0.0.1", "192.0.2.0/24", "[::1]/128",
         "fe80::1", "root", "samt", "hash:/etc/aliases", "/etc/ssl/mail.pem", "postfix",
         "postfix-2.8.7-mysql", "7.6", "12", "loopback-only", "all", "$mydomain",
         "localhost.$mydomain", "MAIL_PASSWORD", "smtpd_banner", "mynetworks", "debian",
         "strict", "sudo", "mbox", "host", "ftp://ftp.example.org/pub/OpenBSD/5.0/packages/",
         "/var/www/htdocs/manual"]
INJECTIONS = ["; reboot", "$(id)", "`id`", "\n", "\r\n", "\0", " && true", "|", "'", '"',
              "../", "/../../etc/shadow", "%eth0;id", "%0a", "\u2028", "\u202e", "\u0430",
              "\uff0e", "#", " ", "\\", "*", "~", "\t", "\x85", "\u200b", "--", "-rf /"]

hostile = st.one_of(
    st.text(alphabet=ALPHABET, max_size=40),
    st.builds(lambda a, cut, b: a + cut + b, st.sampled_from(SEEDS),
              st.sampled_from(INJECTIONS), st.sampled_from([*SEEDS, ""])),
    st.builds(lambda cut, b: cut + b, st.sampled_from(INJECTIONS), st.sampled_from(SEEDS)),
    st.builds(lambda n, tail: "a" * n + tail, st.integers(60, 70),
              st.sampled_from([".example.org", "", ".org."])),  # labels around 63
    st.builds(lambda n: ".".join(["abcdefghi"] * n) + ".org", st.integers(24, 30)),  # ~253
    st.builds(lambda n, seed: seed * n, st.integers(100, 600), st.sampled_from(SEEDS)),
    st.sampled_from(["../../etc/passwd", "/etc/postfix/../../etc/shadow", "/var/./x",
                     "hash:/etc/../etc/aliases", "/", "", " ", "-", "--help", "~root/x",
                     "\u0435xample.org", "exam\u200bple.org", "127.0.0.1\n", "[::1]/0",
                     "0.0.0.0/0", "fe80::1%eth0", "fe80::1%;reboot", "[fe80::%x]/64",
                     "\u0661\u0662", "7.\u0661"]),
)


def _with(data: dict, dotted: str, position: str, value: str) -> dict:
    data = copy.deepcopy(data)
    section, name = dotted.split(".")
    part = data.setdefault(section, {})
    if position == "value":
        part[name] = value
        if dotted in TOGETHER:
            part[TOGETHER[dotted].split(".")[1]] = value
    elif position == "item":
        part[name] = [value]
    elif position == "key":
        part[name] = {value: DICT_FILLERS[dotted][1]}
    else:
        key, filler = DICT_FILLERS[dotted]
        part[name] = {key: [value] if isinstance(filler, list) else value}
    return data


def _accepted(params: model.Params, dotted: str, position: str) -> list[str]:
    """The value(s) the model kept for the field, as strings."""
    section, name = dotted.split(".")
    kept = getattr(getattr(params, section), name)
    if position == "key":
        return [str(k) for k in kept]
    if position == "dict-value":
        return [str(x) for v in kept.values() for x in (v if isinstance(v, list) else [v])]
    if isinstance(kept, list):
        return [str(x) for x in kept]
    return [] if kept is None else [str(kept)]


def _echo(word: str) -> bytes:
    """What a real shell makes of one word of a command: the bytes printf gets."""
    return subprocess.run(["sh", "-c", f"printf '%s' {word}"], capture_output=True,
                          check=True).stdout


def _commands(params: model.Params) -> list[str]:
    commands = []
    for stage_plan in plan.make(params, None):
        for entry in stage_plan.entries:
            if entry.plan:
                commands += entry.plan.commands
            commands += [line[2:] for line in entry.check if line.startswith("$ ")]
    return commands


@functools.cache
def _base_commands(name: str) -> frozenset[str]:
    return frozenset(_commands(model.validate(name, **BASES[name])))


def _refused_before_connecting(data: dict, monkeypatch_connect) -> ParamsError:
    from runbook.run import runner

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hostile.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=False))
        with pytest.raises(ParamsError) as caught:
            runner.run(path, stages=["preflight"], runs_root=Path(tmp) / "runs")
        assert not (Path(tmp) / "runs").exists(), "a refused run created a run folder"
    return caught.value


@pytest.fixture
def no_connection(monkeypatch):
    from runbook.remote import ssh

    async def refuse(*_args, **_kwargs):
        raise AssertionError("a connection was attempted with refused parameters")

    monkeypatch.setattr(ssh, "open_session", refuse)
    monkeypatch.setattr("asyncssh.connect", refuse)


@pytest.mark.parametrize(("dotted", "position"), TARGETS, ids=[f"{d}[{p}]" for d, p in TARGETS])
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=hostile)
def test_each_hostile_value_is_refused_naming_its_field_or_quoted(dotted, position, value,
                                                                   no_connection):
    base = BASES["openbsd" if dotted in OPENBSD_ONLY else "debian"]
    data = _with(base, dotted, position, value)
    try:
        params = model.validate("hostile", **data)
    except ParamsError as e:
        CASES[dotted, "refused"] += 1
        section = dotted.split(".")[0]  # a check of the section as a whole names only it
        named = (dotted, TOGETHER.get(dotted, dotted))
        assert e.problems and all(field.startswith(named) or field == section
                                  for field, _ in e.problems), e.problems
        assert all(reason for _, reason in e.problems)
        again = _refused_before_connecting(data, no_connection)
        assert any(field.startswith(dotted) for field, _ in again.problems) or \
            again.problems == e.problems
        return
    CASES[dotted, "accepted"] += 1
    kept = _accepted(params, dotted, position)
    for text in kept:
        banned = [c for c in text if unicodedata.category(c) == "Cc"
                  or (dotted not in LOCAL and unicodedata.category(c) in ("Cf", "Zl", "Zp"))]
        assert not banned, f"{dotted} accepted {text!r} with {banned!r}"
    if dotted in LOCAL:
        return
    # the commands the value changed: those it flows into (the rest are the base's own)
    usual = _base_commands("openbsd" if dotted in OPENBSD_ONLY else "debian")
    for command in set(_commands(params)) - usual:
        for text in kept:
            word = shlex.quote(text)
            if word != text:  # it needs quoting: never present outside its quoted form
                assert text not in command.replace(word, "\0"), (
                    f"{dotted}={text!r} reaches a command unquoted: {command}")
            if word in command:
                assert _echo(word) == text.encode(), f"{word} does not echo back as {text!r}"


def _sample_accepted(count: int, seed: int = 13) -> list[str]:
    """Accepted extra_settings values drawn like the hostile ones (a fixed seed): text a
    setting's value may hold that a shell would mangle if it were not quoted."""
    rng = random.Random(seed)
    chars = [c for c in ALPHABET if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp")]
    found = ["$(touch /tmp/pwned)", "`id` ; reboot", "a'b\"c\\d", "*?[]{}!#~", "\u0435xample"]
    while len(found) < count:
        text = "".join(rng.choice(chars) for _ in range(rng.randint(1, 30))).strip()
        if text and not text.startswith("#"):
            found.append(text)
    return found


@pytest.mark.lab
def test_accepted_values_arrive_byte_for_byte(configured_host, tmp_path):
    """A sample of accepted hostile values through 30-configure to a real host: main.cf
    holds each byte for byte, no shell ran any of it, then main.cf is restored."""
    from labrun import run, ssh

    from runbook.ops import facts

    host = configured_host
    data = yaml.safe_load(Path(host["params_file"]).read_text())
    names = [f"mail_runbook_probe_{i}" for i in range(12)]
    values = dict(zip(names, _sample_accepted(len(names)), strict=True))
    for value in values.values():
        assert model.validate("sample", **_with(data, "postfix.extra_settings", "dict-value",
                                                 value))
    data["postfix"]["extra_settings"] = data["postfix"]["extra_settings"] | values
    before = ssh(host, "sha256sum /etc/postfix/main.cf")
    run_dir = run(tmp_path, data, ["30-configure"])
    try:
        main_cf = ssh(host, "cat /etc/postfix/main.cf")
        found = facts.parse_main_cf(main_cf)
        for name, value in values.items():
            assert found[name] == value, f"{name}: {found.get(name)!r} != {value!r}"
        assert ssh(host, "[ ! -e /tmp/pwned ] && echo clean").strip() == "clean"
    finally:
        ssh(host, f"cp -p /var/backups/mail-runbook/{run_dir.name}/etc__postfix__main.cf "
                  "/etc/postfix/main.cf")
    assert ssh(host, "sha256sum /etc/postfix/main.cf") == before
    CASES["lab sample", "accepted"] += len(values)


def test_report_how_many_cases_ran(capsys):
    """Runs last in this module: the numbers behind the property above."""
    total = sum(CASES.values())
    lines = [f"hostile params: {total} cases over {len(TARGETS)} field positions "
             f"({sum(n for (_, kind), n in CASES.items() if kind == 'refused')} refused, "
             f"{sum(n for (_, kind), n in CASES.items() if kind == 'accepted')} accepted)"]
    for field in sorted({f for f, _ in CASES}):
        lines.append(f"  {field}: {CASES[field, 'refused']} refused, "
                     f"{CASES[field, 'accepted']} accepted")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert total >= 20 * len(TARGETS), "the property ran too few cases to mean anything"
