"""Fleets without the lab: batches, gates, limits, the record and the board.

Hosts here are real child processes that try a real SSH connection to a closed port on
loopback, so they end unreachable at once; the lab tests (test_fleet_lab.py) run real hosts.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time

import pytest
import yaml

from runbook import cli, inventory
from runbook.errors import ParamsError
from runbook.fleet import board, controller, gates, record


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unreachable_fleet(tmp_path, count: int) -> tuple:
    port = closed_port()
    data = {
        "shared": {"target": {"host": "127.0.0.1", "known_hosts": str(tmp_path / "kh"),
                              "connect_timeout": 2},
                   "platform": {"name": "debian"},
                   "postfix": {"mydomain": "example.test", "myhostname": "mail.example.test",
                               "test_recipient": "samt"}},
        "hosts": [{"name": f"h{i}", "target": {"port": port + i}} for i in range(count)],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, inventory.load(path)


def test_batches_by_count_and_by_percentage():
    names = [f"h{i}" for i in range(10)]
    assert gates.batches(names, None) == [names]
    assert [len(b) for b in gates.batches(names, "4")] == [4, 4, 2]
    assert [len(b) for b in gates.batches(names, "25%")] == [2] * 5
    assert [len(b) for b in gates.batches(names[:3], "10%")] == [1, 1, 1]  # at least one
    for bad in ("0", "x", "150%", "-1"):
        with pytest.raises(ParamsError, match="--serial"):
            gates.batches(names, bad)


def test_too_many_failed_is_more_than_the_percentage():
    assert not gates.too_many_failed(1, 4, 25)
    assert gates.too_many_failed(2, 4, 25)
    assert gates.too_many_failed(1, 4, 0)
    assert not gates.too_many_failed(4, 4, None)


def test_linear_gate_holds_each_stage_until_every_running_host_reached_it():
    stop = gates.Stop()
    gate = gates.LinearGate(stop, ["a", "b", "c"], forks=2)
    order, lock = [], threading.Lock()

    def host(name, stages, fail_after=None):
        for i, stage in enumerate(stages):
            if fail_after is not None and i == fail_after:
                break
            assert gate(name, stage) is None
            with lock:
                order.append((stage, name))
            time.sleep(0.05)
        gate.finished(name)

    threads = [threading.Thread(target=host, args=("a", ["s1", "s2", "s3"])),
               threading.Thread(target=host, args=("b", ["s1", "s2", "s3"])),
               threading.Thread(target=host, args=("c", ["s1", "s2", "s3"], 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    stages = [stage for stage, _ in order]
    assert stages == sorted(stages)  # no host began s2 before every s1 had begun
    assert sorted(order[:3]) == [("s1", "a"), ("s1", "b"), ("s1", "c")]
    assert ("s2", "c") not in order  # c stopped after s1; the others went on without it


def test_a_stopped_gate_answers_why():
    stop = gates.Stop()
    assert gates.FreeGate(stop)("a", "s1") is None
    stop.set("interrupted (Ctrl-C)")
    stop.set("a later reason")
    assert gates.FreeGate(stop)("a", "s1") == "interrupted (Ctrl-C)"
    assert gates.LinearGate(stop, ["a"], 1)("a", "s1") == "interrupted (Ctrl-C)"


def test_an_unreachable_fleet_is_recorded_host_by_host(tmp_path):
    _, hosts = unreachable_fleet(tmp_path, 3)
    out = io.StringIO()
    fleet_dir = controller.run(hosts, controller.Options(forks=2), runs_root=tmp_path / "runs",
                               out=out)
    data = json.loads((fleet_dir / "fleet.json").read_text())
    assert fleet_dir.name.endswith("-fleet")
    assert data["unreachable"] == ["h0", "h1", "h2"]
    assert data["succeeded"] == data["failed"] == []
    for entry in data["hosts"]:
        assert set(entry) == {"name", "status", "reason", "stages", "duration", "run_dir",
                              "audit_head"}
        assert entry["status"] == "unreachable" and entry["run_dir"] is None
        assert "cannot reach" in entry["reason"]
    text = out.getvalue()
    assert any(line.split()[:3] == ["h1", "unreachable:", "cannot"]
               for line in text.splitlines())  # a plain log: one line per change
    assert "3 hosts in" in text and "0 ok, 0 failed, 3 unreachable" in text
    assert (fleet_dir / "params" / "h2.yaml").exists() and (fleet_dir / "logs").is_dir()


def test_max_fail_percent_stops_starting_new_hosts(tmp_path):
    _, hosts = unreachable_fleet(tmp_path, 4)
    fleet_dir = controller.run(hosts, controller.Options(forks=1, max_fail_percent=25),
                               runs_root=tmp_path / "runs", out=io.StringIO())
    data = record.read(fleet_dir)
    assert data["unreachable"] == ["h0", "h1"]  # 1 of 4 is 25%: not more; 2 of 4 is
    assert [h["reason"] for h in data["hosts"][2:]] == [
        "not started: more than 25% of the fleet failed (2 of 4; --max-fail-percent)"] * 2
    assert data["failed"] == ["h2", "h3"]


def test_serial_stops_after_a_batch_with_failures(tmp_path):
    _, hosts = unreachable_fleet(tmp_path, 3)
    fleet_dir = controller.run(hosts, controller.Options(serial="2"),
                               runs_root=tmp_path / "runs", out=io.StringIO())
    data = record.read(fleet_dir)
    assert data["unreachable"] == ["h0", "h1"]
    assert data["hosts"][2]["reason"] == "not started: batch 1 of 2 had failures (--serial)"


def test_failed_reruns_only_the_hosts_that_did_not_succeed(tmp_path):
    _, hosts = unreachable_fleet(tmp_path, 3)
    first = controller.run(hosts, controller.Options(), runs_root=tmp_path / "runs",
                           out=io.StringIO())
    data = record.read(first)
    data["hosts"][1].update(status="ok", reason="")  # as if h1 had succeeded
    data["unreachable"].remove("h1")
    (first / "fleet.json").write_text(json.dumps(data))
    options = controller.Options()
    again = controller.from_fleet(first, hosts, options, failed=True)
    assert [h.name for h in again] == ["h0", "h2"]
    assert options.resume == {"h0": (None, None), "h2": (None, None)}  # never started: fresh
    assert [h.name for h in controller.from_fleet(first, hosts, controller.Options())] == [
        "h0", "h1", "h2"]


@pytest.mark.parametrize(("argv", "field"), [
    (["--forks", "0"], "--forks"), (["--max-fail-percent", "120"], "--max-fail-percent"),
    (["--serial", "0"], "--serial"), (["--failed"], "--failed"),
    (["--ssh-slots", "10"], "--ssh-slots"), (["--host", "nope"], "hosts"),
])
def test_bad_fleet_options_are_refused_before_anything_runs(tmp_path, capsys, argv, field):
    path, _ = unreachable_fleet(tmp_path, 2)
    assert cli.main(["run", str(path), *argv]) == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_summary_table_counts_operations_per_host():
    hosts = [
        {"name": "mx1", "status": "ok", "reason": "", "duration": 12.5,
         "stages": {"a": {"ok": 3, "changed": 2, "failed": 0}, "b": {"ok": 1, "changed": 0,
                                                                    "failed": 0}}},
        {"name": "mx2", "status": "failed", "reason": "stage b failed\n  details", "duration": 3.0,
         "stages": {"a": {"ok": 1, "changed": 0, "failed": 1}}},
    ]
    table = board.summary(hosts, 14.0).splitlines()
    assert table[0].split() == ["host", "status", "changed", "ok", "failed", "time", "reason"]
    assert table[1].split()[:5] == ["mx1", "ok", "2", "4", "0"]
    assert table[2].endswith("stage b failed")
    assert table[-1] == "2 hosts in 14.0 s: 1 ok, 1 failed, 0 unreachable"


def test_the_board_prints_a_line_per_change_off_a_terminal():
    out = io.StringIO()
    with board.Board(["mx1", "mx22"], out) as live:
        live.event("mx1", {"event": "started"})
        live.event("mx1", {"event": "stage", "stage": "00-preflight", "index": 1, "total": 2})
        live.event("mx1", {"event": "cell", "stage": "00-preflight", "cell": 3, "cells": 9})
        live.event("mx1", {"event": "stage_done", "stage": "00-preflight", "index": 1,
                           "total": 2, "status": "ok", "seconds": 1.25,
                           "counts": {"ok": 4, "changed": 1}})
        live.event("mx1", {"event": "result", "status": "ok"})
    lines = out.getvalue().splitlines()
    assert [line.split("  (")[0] for line in lines] == [
        "mx1   connecting", "mx1   [1/2] 00-preflight",
        "mx1   [1/2] 00-preflight ok in 1.2 s (4 ok, 1 changed)", "mx1   ok"]
    assert "\x1b" not in out.getvalue()
