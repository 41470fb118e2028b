"""Inventories: shared values once, hosts with overrides, validated whole before connecting."""

from pathlib import Path

import pytest
import yaml

from runbook import cli, inventory, params
from runbook.errors import ParamsError
from runbook.lab.inventory import _beyond, _common

SHARED = {
    "target": {"user": "root", "known_hosts": "/etc/ssh/ssh_known_hosts"},
    "platform": {"name": "debian", "release": "12"},
    "postfix": {"mydomain": "example.org", "myhostname": "mail.example.org",
                "test_recipient": "samt", "mynetworks": ["127.0.0.0/8"]},
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def fleet(*hosts: dict) -> dict:
    return {"shared": SHARED, "hosts": list(hosts)}


def host(name: str, address: str, **sections) -> dict:
    return {"name": name, "target": {"host": address}, **sections}


def problems(data: dict) -> dict[str, str]:
    with pytest.raises(ParamsError) as caught:
        inventory.validate(data)
    return dict(caught.value.problems)


def test_each_host_gets_shared_values_with_its_own_laid_over(tmp_path):
    hosts = inventory.load(write(tmp_path, fleet(
        host("mx1", "192.0.2.10", postfix={"myhostname": "mx1.example.org"}),
        host("mx2", "192.0.2.11", target={"host": "192.0.2.11", "port": 2222},
             postfix={"mynetworks": ["192.0.2.0/24"]}),
    )))
    mx1, mx2 = hosts
    assert [h.name for h in hosts] == ["mx1", "mx2"]
    assert mx1.params.postfix.myhostname == "mx1.example.org"
    assert mx1.params.target.user == "root"  # shared, not repeated
    assert mx2.params.postfix.myhostname == "mail.example.org"
    assert mx2.params.target.port == 2222
    assert mx2.params.postfix.mynetworks == ["192.0.2.0/24"]  # a list is replaced whole
    assert mx2.params.postfix.test_recipient == "samt"  # its siblings are kept


def test_every_bad_field_of_every_host_is_named_before_anything_runs():
    found = problems(fleet(
        host("mx1", "192.0.2.10", postfix={"myhostname": "bad;name"}),
        host("mx2", "192.0.2.11", postfix={"mynetworks": ["0.0.0.0/0"]},
             dovecot={"colour": "blue"}),
        host("mx3", "192.0.2.12"),
    ))
    assert set(found) == {"mx1 (hosts[0]): postfix.myhostname",
                          "mx2 (hosts[1]): postfix.mynetworks.0",
                          "mx2 (hosts[1]): dovecot.colour"}
    assert "open relay" in found["mx2 (hosts[1]): postfix.mynetworks.0"]
    assert "unknown key" in found["mx2 (hosts[1]): dovecot.colour"]


def test_names_and_targets_are_unique():
    found = problems(fleet(host("mx1", "192.0.2.10"), host("mx1", "192.0.2.11"),
                           host("mx2", "192.0.2.10")))
    assert "more than one host" in found["mx1: name"]
    assert "mx1's target" in found["mx2: target.host"]


@pytest.mark.parametrize(("data", "field"), [
    ({"shared": SHARED, "hosts": []}, "hosts"),
    ({"shared": SHARED, "hosts": [{"target": {"host": "192.0.2.1"}}]}, "hosts[0].name"),
    ({"shared": SHARED, "hosts": [{"name": "a b"}]}, "hosts[0].name"),
    ({"shared": [], "hosts": [{"name": "mx1"}]}, "shared"),
    ({"shared": SHARED, "groups": {}, "hosts": [host("mx1", "192.0.2.1")]}, "groups"),
])
def test_a_malformed_inventory_is_refused_naming_where(data, field):
    assert field in problems(data)


def test_a_single_params_file_loads_as_one_host():
    path = Path(__file__).parent.parent / "params" / "example-debian.yaml"
    (only,) = inventory.load(path)
    assert only.name == "mail.example.org"
    assert only.params == params.load(path)


def test_a_host_written_out_reads_back_as_the_same_params(tmp_path):
    (mx1,) = inventory.validate(fleet(host("mx1", "192.0.2.10")))
    assert params.load(inventory.dump(mx1, tmp_path / "mx1.yaml")) == mx1.params


def test_select_refuses_a_name_not_in_the_inventory():
    hosts = inventory.validate(fleet(host("mx1", "192.0.2.10"), host("mx2", "192.0.2.11")))
    assert [h.name for h in inventory.select(hosts, ["mx2"])] == ["mx2"]
    with pytest.raises(ParamsError, match="mx9 not in the inventory"):
        inventory.select(hosts, ["mx9"])


def test_validate_and_plan_accept_an_inventory(tmp_path, capsys):
    path = write(tmp_path, fleet(host("mx1", "192.0.2.10"), host("mx2", "192.0.2.11")))
    assert cli.main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid, 2 hosts" in out and "mx2: (root@192.0.2.11" in out
    assert cli.main(["plan", str(path), "--host", "mx2", "--stages", "configure"]) == 0
    out = capsys.readouterr().out
    assert "=== host mx2 ===" in out and "=== host mx1 ===" not in out
    assert "myhostname = mail.example.org" in out


def test_validate_refuses_a_bad_inventory_with_exit_2(tmp_path, capsys):
    path = write(tmp_path, fleet(host("mx1", "192.0.2.10", target={"port": 0})))
    assert cli.main(["validate", str(path)]) == 2
    assert "mx1 (hosts[0]): target.port" in capsys.readouterr().err


def test_the_lab_inventory_keeps_only_what_differs():
    a = {"target": {"host": "127.0.0.21", "user": "root"}, "postfix": {"x": [1], "y": 2}}
    b = {"target": {"host": "127.0.0.22", "user": "root"}, "postfix": {"x": [1], "y": 3}}
    shared = _common([a, b])
    assert shared == {"target": {"user": "root"}, "postfix": {"x": [1]}}
    assert _beyond(b, shared) == {"target": {"host": "127.0.0.22"}, "postfix": {"y": 3}}
    assert inventory.merge(shared, _beyond(b, shared)) == b


def test_the_example_inventory_is_valid():
    path = Path(__file__).parent.parent / "params" / "inventory-example.yaml"
    _, mx2, mx3 = inventory.load(path)
    assert (mx2.params.target.port, mx2.params.postfix.myhostname) == (2222, "mx2.example.org")
    assert mx3.params.platform.name == "openbsd" and mx3.params.target.user == "admin"
