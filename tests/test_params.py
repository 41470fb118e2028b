"""The parameter model: bad input refused naming the field, good input round-trips."""

import string
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from runbook import params
from runbook.errors import ParamsError

EXAMPLES = sorted(Path(__file__).parent.parent.joinpath("params").glob("example-*.yaml"))
BASE = {
    "target": {"host": "mail.example.org"},
    "postfix": {"mydomain": "example.org", "myhostname": "mail.example.org",
                "test_recipient": "samt"},
}


def with_value(section: str, key: str, value) -> dict:
    data = {name: dict(body) for name, body in BASE.items()}
    data.setdefault(section, {})[key] = value
    return data


def refused_fields(data: dict) -> list[str]:
    with pytest.raises(ParamsError) as caught:
        params.validate(**data)
    return [field for field, _ in caught.value.problems]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path):
    loaded = params.load(path)
    assert loaded.postfix.test_recipient == "samt"


def test_issue_example_shell_injection_is_refused_naming_mydomain(tmp_path):
    data = with_value("postfix", "mydomain", "example.com; touch /tmp/x")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError) as caught:
        params.load(path)
    assert [field for field, _ in caught.value.problems] == ["postfix.mydomain"]
    assert "postfix.mydomain" in str(caught.value) and str(path) in str(caught.value)


def test_guide_values_are_accepted():
    data = with_value("postfix", "myorigin", "$mydomain")
    data["postfix"]["mynetworks"] = "192.0.2.0/23 [::1]/128"
    data["postfix"]["mydestination"] = "$myhostname, localhost.$mydomain, localhost"
    p = params.validate(**data)
    assert p.postfix.mynetworks == ["192.0.2.0/23", "[::1]/128"]
    assert p.postfix.mydestination == ["$myhostname", "localhost.$mydomain", "localhost"]
    assert p.postfix.myorigin == "$mydomain"


@pytest.mark.parametrize("value", ["$mydomain", "${mydomain}", "$myhostname", "mail.$mydomain"])
def test_references_allowed_in_myorigin(value):
    assert params.validate(**with_value("postfix", "myorigin", value)).postfix.myorigin == value


@pytest.mark.parametrize("key", ["mydomain", "myhostname"])
def test_references_refused_where_postfix_would_loop(key):
    assert refused_fields(with_value("postfix", key, "$mydomain")) == [f"postfix.{key}"]


@pytest.mark.parametrize("value", ["$home", "$(id)", "${IFS}x", "a.$mydomain$x"])
def test_unknown_references_refused(value):
    assert refused_fields(with_value("postfix", "myorigin", value)) == ["postfix.myorigin"]


@pytest.mark.parametrize("network,ok", [
    ("127.0.0.0/8", True), ("[::1]/128", True), ("[2001:db8::]/32", True), ("192.0.2.1", True),
    ("::1/128", False), ("[127.0.0.1]/32", False), ("10.0.0.1/8", False), ("0.0.0.0/0", False),
    ("[::]/0", False), ("192.0.2.0/33", False), ("bogus", False), ("10.0.0.0/x", False),
])
def test_networks_in_postfix_notation(network, ok):
    data = with_value("postfix", "mynetworks", [network])
    if ok:
        assert params.validate(**data).postfix.mynetworks == [network]
    else:
        assert refused_fields(data) == ["postfix.mynetworks.0"]


def test_unknown_keys_refused_at_every_level():
    data = with_value("postfix", "mydomian", "example.org")
    data["surprise"] = 1
    data["target"]["passwd"] = "x"
    assert sorted(refused_fields(data)) == ["postfix.mydomian", "surprise", "target.passwd"]


def test_release_must_be_text():
    assert refused_fields(with_value("platform", "release", 7.10)) == ["platform.release"]
    assert params.validate(**with_value("platform", "release", 12)).platform.release == "12"


def test_a_papermill_guessed_integer_host_is_refused():
    assert refused_fields(with_value("target", "host", 123)) == ["target.host"]


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="does not exist"):
        params.load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("target: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        params.load(tmp_path / "bad.yaml")


def test_parameters_round_trip():
    p = params.load(EXAMPLES[0])
    assert params.validate(**params.as_parameters(p)) == p


# Property tests: whatever reaches a shell must be plain.
SHELL_BAD = st.sampled_from([*";|&$`\\\"'<>(){}*?[]!#~ \t\n\r", "\x00", "\x7f"])
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
DOMAIN = st.lists(LABEL, min_size=1, max_size=4).map(".".join)


@settings(max_examples=200)
@given(DOMAIN, SHELL_BAD, st.integers(0, 30))
def test_shell_metacharacters_refused_in_names(domain, bad, at):
    value = domain[:at] + bad + domain[at:]
    for key in ("mydomain", "myhostname"):
        assert refused_fields(with_value("postfix", key, value)) == [f"postfix.{key}"]


@settings(max_examples=100)
@given(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8), SHELL_BAD)
def test_shell_metacharacters_refused_in_users_and_values(name, bad):
    assert refused_fields(with_value("postfix", "test_recipient", name + bad))
    data = with_value("postfix", "extra_settings", {"default_transport": name + bad})
    if bad in "\t\n\r\x00\x7f":  # other characters are quoted when they reach a shell
        assert refused_fields(data) == ["postfix.extra_settings.default_transport"]


@given(st.integers(64, 100))
def test_over_long_labels_refused(length):
    assert refused_fields(with_value("postfix", "mydomain", "a" * length + ".org"))


@given(st.lists(st.just("a" * 63), min_size=4, max_size=6))
def test_over_long_names_refused(labels):
    assert refused_fields(with_value("postfix", "mydomain", ".".join(labels)))


@given(st.integers(33, 40))
def test_over_long_user_names_refused(length):
    assert refused_fields(with_value("postfix", "test_recipient", "u" * length))


@settings(max_examples=100)
@given(DOMAIN, st.ip_addresses(v=4), st.integers(8, 32))
def test_valid_values_round_trip(domain, address, prefix):
    network = str(__import__("ipaddress").ip_network(f"{address}/{prefix}", strict=False))
    data = with_value("postfix", "mydomain", domain)
    data["postfix"]["mynetworks"] = [network]
    p = params.validate(**data)
    assert p.postfix.mydomain == domain and p.postfix.mynetworks == [network]
    again = params.validate(**yaml.safe_load(yaml.safe_dump(params.as_parameters(p))))
    assert again == p


# Found by tests/test_hostile_params.py, each kept here by name.
@pytest.mark.parametrize(("section", "key", "value", "field"), [
    # pydantic's `pattern` searches: unanchored, a newline in a main.cf key went through
    ("postfix", "extra_settings", {"smtpd_banner = x\nrelayhost": "evil"},
     "postfix.extra_settings.smtpd_banner = x\nrelayhost.[key]"),
    ("platform", "postfix_package", "postfix; reboot", "platform.postfix_package"),
    ("dovecot", "test_password_env", "PASS\n", "dovecot.test_password_env"),
    # Python's splitlines takes U+2028 and NEL for line ends: a second main.cf line
    ("postfix", "extra_settings", {"smtpd_banner": "x\u2028relayhost = evil"},
     "postfix.extra_settings.smtpd_banner"),
    ("postfix", "extra_settings", {"smtpd_banner": "x\x85y"},
     "postfix.extra_settings.smtpd_banner"),
    ("postfix", "extra_settings", {"smtpd_banner": "abc\u202edef"},
     "postfix.extra_settings.smtpd_banner"),
    # ipaddress takes any text after % as an IPv6 zone id
    ("target", "host", "fe80::1%;reboot", "target.host"),
    ("postfix", "probe_source", "fe80::1%$(id)", "postfix.probe_source"),
    ("postfix", "mynetworks", ["[fe80::%x]/64"], "postfix.mynetworks.0"),
    ("dovecot", "listen", ["fe80::1%eth0"], "dovecot.listen.0"),
    # \d takes every script's digits
    ("platform", "release", "\u0661\u0662", "platform.release"),
    # a local path: NUL, or ~ of no user (expanduser raised RuntimeError)
    ("target", "key_file", "/root/.ssh/id\0x", "target.key_file"),
    ("target", "known_hosts", "~no-such-user-here/known_hosts", "target.known_hosts"),
])
def test_values_found_by_the_hostile_property_are_refused(section, key, value, field):
    assert refused_fields(with_value(section, key, value)) == [field]


def sudo_problems(**target) -> list[tuple[str, str]]:
    data = {name: dict(body) for name, body in BASE.items()}
    data["target"] |= target
    with pytest.raises(ParamsError) as caught:
        params.validate(**data)
    return caught.value.problems


def test_a_sudo_password_is_a_reference_for_sudo_only_and_doas_says_why_not():
    ok = params.validate(**{**BASE, "target": {"host": "m.example.org", "user": "op",
                                                "privilege": "sudo",
                                                "sudo_password_env": "SUDO_PASSWORD"}})
    assert ok.target.sudo_password_env == "SUDO_PASSWORD"
    (problem,) = sudo_problems(privilege="doas", sudo_password_env="SUDO_PASSWORD")
    assert "doas takes no password" in problem[1] and "permit nopass" in problem[1]
    (problem,) = sudo_problems(privilege="none", sudo_password_file="~/pw")
    assert "only used with target.privilege: sudo" in problem[1]
    (problem,) = sudo_problems(privilege="sudo", sudo_password_env="X", sudo_password_file="~/pw")
    assert "not both" in problem[1]
    # a reference, never the password itself: an environment variable's name only
    assert [f for f, _ in sudo_problems(privilege="sudo", sudo_password_env="hunter2 x")] == [
        "target.sudo_password_env"]
