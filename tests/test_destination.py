"""Where a run connects, worked out without connecting: params over ssh_config, as ssh does."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest
import yaml

from runbook import params
from runbook.cli import main as cli_main
from runbook.errors import ParamsError
from runbook.remote import destination

CONFIG = """\
Host mail-alias
    HostName 192.0.2.25
    User operator
    Port 2222
    IdentityFile {keys}/id_mail
    IdentitiesOnly yes
    UserKnownHostsFile {keys}/known_hosts
    ConnectTimeout 7
    ProxyJump jumper@bastion:2200,second

Host bastion
    HostName 192.0.2.1
    IdentityFile {keys}/id_bastion
    StrictHostKeyChecking no

Host *
    User fallback
    StrictHostKeyChecking accept-new
"""


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "ssh_config"
    path.write_text(CONFIG.format(keys=tmp_path))
    return path


def target(**values) -> params.Target:
    return params.Target(**values)


def test_an_alias_takes_every_value_from_its_host_block(config, tmp_path):
    found = destination.resolve(target(host="mail-alias", ssh_config=str(config)))
    hop = found.target
    assert hop.dest == "operator@192.0.2.25:2222" and hop.name == "mail-alias"
    assert hop.keys == (str(tmp_path / "id_mail"),) and hop.identities_only
    assert hop.known_hosts == (str(tmp_path / "known_hosts"),)
    assert hop.connect_timeout == 7.0
    assert hop.policy == "accept-new"  # from Host *: the first value found wins
    for name, option in (("address", "Hostname"), ("user", "User"), ("port", "Port"),
                         ("keys", "IdentityFile"), ("known_hosts", "UserKnownHostsFile")):
        assert hop.sources[name] == f"{config} ({option})", name
    assert found.config_files == (str(config),)


def test_params_win_over_the_config_as_on_the_command_line(config, tmp_path):
    hop = destination.resolve(target(
        host="mail-alias", ssh_config=str(config), user="root", port=22,
        key_file=str(tmp_path / "mine"), known_hosts=str(tmp_path / "kh"),
        host_key_policy="strict", connect_timeout=3, jump=[])).target
    assert hop.dest == "root@192.0.2.25:22"  # the address still comes from the alias
    assert hop.keys == (str(tmp_path / "mine"),) and hop.known_hosts == (str(tmp_path / "kh"),)
    assert (hop.policy, hop.connect_timeout) == ("strict", 3.0)
    assert hop.sources["user"] == "params (target.user)"
    assert hop.sources["policy"] == "params (target.host_key_policy)"


def test_proxy_jump_hops_are_resolved_through_the_config_too(config, tmp_path):
    found = destination.resolve(target(host="mail-alias", ssh_config=str(config)))
    first, second = found.jumps
    assert first.dest == "jumper@192.0.2.1:2200" and first.keys == (str(tmp_path / "id_bastion"),)
    assert first.policy == "accept-new"  # `no` is never weaker than accept-new
    assert "taken as accept-new" in first.sources["policy"]
    assert second.dest == "fallback@second:22"
    assert first.sources["jump"] == f"{config} (ProxyJump)"
    assert found.hops[-1] is found.target


def test_jump_in_the_params_replaces_proxy_jump_and_takes_the_params_known_hosts(config,
                                                                                 tmp_path):
    found = destination.resolve(target(
        host="mail-alias", ssh_config=str(config), known_hosts=str(tmp_path / "kh"),
        jump=["admin@[2001:db8::1]:2022"]))
    (hop,) = found.jumps
    assert hop.dest == "admin@[2001:db8::1]:2022" and hop.known_hosts == (str(tmp_path / "kh"),)
    assert hop.sources["jump"] == "params (target.jump)"


def test_ssh_config_none_reads_nothing_and_ssh_defaults_apply():
    hop = destination.resolve(target(host="mail.example.org", ssh_config="none")).target
    assert hop.dest == f"{getpass.getuser()}@mail.example.org:22"
    assert hop.sources["user"] == "this machine's user (as ssh)"
    assert (hop.policy, hop.connect_timeout, hop.keys) == ("strict", 10.0, ())
    assert hop.known_hosts == (str(Path("~/.ssh/known_hosts").expanduser()),)


def test_a_missing_or_broken_config_file_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ParamsError) as missing:
        destination.resolve(target(host="x.example.org", ssh_config=str(tmp_path / "nope")))
    assert missing.value.problems[0][0] == "target.ssh_config"
    broken = tmp_path / "broken"
    broken.write_text("Host x\n    Port notanumber\n")
    with pytest.raises(ParamsError) as bad:
        destination.resolve(target(host="x", ssh_config=str(broken)))
    assert bad.value.problems[0][0] == "target.ssh_config" and "broken" in str(bad.value)


def test_jump_hosts_are_validated():
    for good in ("bastion", "root@bastion.example.org:22", "a@[::1]:2222", "192.0.2.1"):
        assert params.Target(host="x", jump=[good]).jump == [good]
    for bad in ("x@y:0", "y:port", "a b", "$(id)@x", "x@[::1]y"):
        with pytest.raises(ValueError, match="jump"):
            params.validate("t", target={"host": "x", "jump": [bad]},
                            postfix={"mydomain": "e.org", "myhostname": "m.e.org",
                                     "test_recipient": "samt"})


def test_validate_show_target_prints_each_value_and_its_source(config, tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({
        "target": {"host": "mail-alias", "ssh_config": str(config)},
        "postfix": {"mydomain": "example.org", "myhostname": "mail.example.org",
                    "test_recipient": "samt"}}))
    assert cli_main(["validate", str(path), "--show-target"]) == 0
    out = capsys.readouterr().out
    assert "target mail-alias: operator@192.0.2.25:2222" in out
    assert f"from {config} (Hostname)" in out and f"from {config} (UserKnownHostsFile)" in out
    assert "jump host bastion: jumper@192.0.2.1:2200" in out
    assert "reached through: jumper@192.0.2.1:2200 -> fallback@second:22" in out
    assert "privilege: none" in out


def test_show_target_names_where_the_sudo_password_is_read_never_the_password(
        config, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SUDO_PW", "never-shown-pw")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({
        "target": {"host": "mail-alias", "ssh_config": str(config), "privilege": "sudo",
                   "sudo_password_env": "SUDO_PW"},
        "postfix": {"mydomain": "example.org", "myhostname": "mail.example.org",
                    "test_recipient": "samt"}}))
    assert cli_main(["validate", str(path), "--show-target"]) == 0
    out = capsys.readouterr().out
    assert "privilege: sudo -S, its password read from target.sudo_password_env (SUDO_PW)" in out
    assert "never-shown-pw" not in out


def test_a_proxy_command_is_refused_rather_than_skipped(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("Host via-nc\n    ProxyCommand nc -X connect -x proxy:3128 %h %p\n"
                      "Host plain\n    ProxyCommand none\n")
    with pytest.raises(ParamsError) as refused:
        destination.resolve(target(host="via-nc", ssh_config=str(config)))
    (field, reason), = refused.value.problems
    assert field == "target.ssh_config" and "ProxyCommand" in reason and "ProxyJump" in reason
    assert destination.resolve(target(host="plain", ssh_config=str(config))).jumps == ()
    # a jump list in the params replaces it, as ssh's -J does
    found = destination.resolve(target(host="via-nc", ssh_config=str(config),
                                       jump=["root@192.0.2.1"]))
    assert [hop.dest for hop in found.jumps] == ["root@192.0.2.1:22"]


def test_a_host_key_alias_is_kept_and_shown(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("Host mail-alias\n    HostName 192.0.2.25\n    HostKeyAlias mail-key\n")
    found = destination.resolve(target(host="mail-alias", ssh_config=str(config)))
    assert found.target.host_key_alias == "mail-key"
    assert found.target.sources["host_key_alias"] == f"{config} (HostKeyAlias)"
    assert "host key alias   mail-key" in destination.describe(found)
    plain = destination.resolve(target(host="other", ssh_config=str(config))).target
    assert plain.host_key_alias is None and "host key alias" not in destination.describe(
        destination.resolve(target(host="other", ssh_config=str(config))))
