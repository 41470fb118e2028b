"""Fleets against real lab hosts: deb11 … deb16 from one inventory, locally and on Dask.

The module makes the six hosts fresh once; the first test configures them all (Postfix and
Dovecot from scratch, three at a time) and the others reuse that configured fleet, each
putting back what it changes (a host key, a stopped host). The hosts are left stopped.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import labrun
import pytest
import yaml

from runbook import audit, inventory, lab
from runbook.fleet import controller, record

pytestmark = pytest.mark.lab

NAMES = [f"deb{i}" for i in range(11, 17)]
CHECKOUT = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).with_name("dask")


@dataclass
class Fleet:
    tmp: Path
    hosts: dict[str, dict]
    inventory: Path

    @property
    def runs(self) -> Path:
        return self.tmp / "runs"

    def run(self, names=None, path=None, out=None, **options) -> dict:
        """A fleet run of these hosts (all by default); its fleet.json."""
        hosts = inventory.select(inventory.load(path or self.inventory), names)
        fleet_dir = controller.run(hosts, controller.Options(**options), runs_root=self.runs,
                                   out=out or Tee())
        return record.read(fleet_dir) | {"dir": fleet_dir}


class Tee(io.StringIO):
    """The fleet's output, kept for the test and shown in pytest's log."""

    def write(self, text):
        sys.__stdout__.write(text)
        return super().write(text)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("fleet lab tests need root: they boot real target hosts")
    tmp = tmp_path_factory.mktemp("fleet")
    leak = open(tmp / "inherited", "w")  # noqa: SIM115 -- must stay open across the boots
    os.set_inheritable(leak.fileno(), True)
    try:
        hosts = {name: lab.up_host(name, checkout=tmp, fresh=True) for name in NAMES}
        path = lab.write_inventory(NAMES, tmp / "params" / "fleet.yaml")
    except Exception as e:
        pytest.fail(f"the lab could not start {', '.join(NAMES)}: {e}")
    leaked = [h["name"] for h in hosts.values() if any(
        os.path.realpath(f"/proc/{h['pid']}/fd/{fd}") == str(tmp / "inherited")
        for fd in os.listdir(f"/proc/{h['pid']}/fd"))]
    leak.close()
    assert not leaked, f"lab hosts inherited a descriptor of the process that booted them: {leaked}"
    yield Fleet(tmp, hosts, path)
    lab.down(NAMES)


def records(data: dict) -> dict[str, dict]:
    return {h["name"]: h for h in data["hosts"]}


def stage_times(run_dir: str, stage: str) -> tuple[datetime, datetime]:
    """When the stage started and ended, from the host's audit record."""
    marks = {r["event"]: datetime.fromisoformat(r["time"].replace("Z", "+00:00"))
             for r in labrun.audit(Path(run_dir)) if r["type"] == "stage" and r["stage"] == stage}
    return marks["start"], marks["end"]


def changed(entry: dict) -> int:
    return sum(s["changed"] for s in entry["stages"].values())


def test_the_lab_inventory_holds_each_hosts_own_params(fleet):
    hosts = inventory.load(fleet.inventory)
    assert [h.name for h in hosts] == NAMES
    raw = yaml.safe_load(fleet.inventory.read_text())
    assert "host" not in raw["shared"]["target"] and raw["shared"]["target"]["key_file"]
    for host in hosts:
        own = lab_params(fleet.hosts[host.name])
        assert host.params == own


def lab_params(entry: dict):
    from runbook import params

    return params.load(entry["params_file"])


def test_six_hosts_three_at_a_time_then_a_rerun_changes_nothing(fleet):
    data = fleet.run(forks=3)
    assert data["succeeded"] == NAMES, data["hosts"]
    assert data["failed"] == data["unreachable"] == []
    for name, entry in records(data).items():
        run_dir = Path(entry["run_dir"])
        assert audit.verify(run_dir) > 0
        assert entry["audit_head"] == audit.read_run_json(run_dir)["audit"]["last_hash"]
        assert set(entry["stages"]) == {s.name for s in controller.manifest.select(None)}
        mailbox = labrun.ssh(fleet.hosts[name], "cat /var/mail/mailtest")
        assert f"test of run {run_dir.name}" in mailbox, f"{name}: no test message of its run"
    # --forks 3: a fourth host began only once one of the first three had finished
    spans = sorted((stage_times(e["run_dir"], "00-preflight")[0],
                    stage_times(e["run_dir"], "70-dovecot")[1]) for e in data["hosts"])
    assert spans[3][0] >= min(end for _, end in spans[:3])
    again = fleet.run(forks=3)
    assert again["succeeded"] == NAMES
    assert {name: changed(e) for name, e in records(again).items()} == dict.fromkeys(NAMES, 0)


def changed_key_inventory(fleet: Fleet, name: str) -> Path:
    """The fleet's inventory, but `name`'s known_hosts holds another key for its address."""
    other = fleet.tmp / "other_key"
    if not other.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                       check=True)
    known = fleet.tmp / f"known_hosts-{name}-changed"
    known.write_text(f"{fleet.hosts[name]['address']} "
                     f"{' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n")
    data = yaml.safe_load(fleet.inventory.read_text())
    for entry in data["hosts"]:
        if entry["name"] == name:
            entry["target"]["known_hosts"] = str(known)
    path = fleet.tmp / "params" / f"fleet-{name}-changed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_changed_key_and_a_stopped_host_fail_alone_then_failed_reruns_just_them(fleet):
    changed_key = changed_key_inventory(fleet, "deb12")
    lab.down(["deb13"])
    try:
        data = fleet.run(path=changed_key, forks=6)
    finally:
        lab.up_host("deb13", checkout=fleet.tmp)
    hosts = records(data)
    assert data["failed"] == ["deb12"] and data["unreachable"] == ["deb13"]
    assert data["succeeded"] == ["deb11", "deb14", "deb15", "deb16"]
    assert "differs from the one in" in hosts["deb12"]["reason"]
    assert "cannot reach root@127.0.0.23" in hosts["deb13"]["reason"]
    assert hosts["deb12"]["run_dir"] is None and hosts["deb13"]["run_dir"] is None
    for name in data["succeeded"]:
        assert audit.verify(Path(hosts[name]["run_dir"])) > 0
    # the key is put right, the host is back: --failed runs just those two
    options = controller.Options(forks=6)
    again_hosts = controller.from_fleet(data["dir"], inventory.load(fleet.inventory), options,
                                        failed=True)
    assert [h.name for h in again_hosts] == ["deb12", "deb13"]
    again = record.read(controller.run(again_hosts, options, runs_root=fleet.runs, out=Tee()))
    assert [h["name"] for h in again["hosts"]] == ["deb12", "deb13"]
    assert again["succeeded"] == ["deb12", "deb13"]


def test_failed_resumes_a_host_from_the_stage_it_failed_in(fleet):
    data = fleet.run(names=["deb14"], stages=["preflight", "configure", "start"])
    run_dir = Path(data["hosts"][0]["run_dir"])
    # as if 30-configure had failed there: --failed picks the host up in that folder
    run = audit.read_run_json(run_dir)
    run["stages"]["30-configure"]["status"] = "failed"
    (run_dir / "run.json").write_text(json.dumps(run))
    fleet_json = data["dir"] / "fleet.json"
    saved = json.loads(fleet_json.read_text())
    saved["hosts"][0]["status"], saved["succeeded"], saved["failed"] = "failed", [], ["deb14"]
    fleet_json.write_text(json.dumps(saved))
    options = controller.Options()
    hosts = controller.from_fleet(data["dir"], inventory.load(fleet.inventory), options,
                                  failed=True)
    assert options.resume == {"deb14": (str(run_dir), "30-configure")}
    again = record.read(controller.run(hosts, options, runs_root=fleet.runs, out=Tee()))
    assert again["succeeded"] == ["deb14"] and again["hosts"][0]["run_dir"] == str(run_dir)
    starts = [r["stage"] for r in labrun.audit(run_dir)
              if r["type"] == "stage" and r["event"] == "start"]
    assert starts == ["00-preflight", "30-configure", "40-start", "30-configure", "40-start"]
    assert audit.verify(run_dir) > 0


def test_linear_finishes_a_stage_everywhere_before_the_next(fleet):
    names = ["deb11", "deb12", "deb14"]
    data = fleet.run(names=names, forks=2, strategy="linear", stages=["preflight", "install"])
    assert data["succeeded"] == names
    runs = [e["run_dir"] for e in data["hosts"]]
    first_done = max(stage_times(r, "00-preflight")[1] for r in runs)
    assert first_done <= min(stage_times(r, "10-install")[0] for r in runs)


def test_serial_batches_stop_after_a_failed_batch(fleet):
    ok = fleet.run(names=["deb11", "deb14", "deb15", "deb16"], serial="50%",
                   stages=["preflight"])
    assert ok["succeeded"] == ["deb11", "deb14", "deb15", "deb16"]
    spans = {e["name"]: stage_times(e["run_dir"], "00-preflight") for e in ok["hosts"]}
    batch_one_done = max(spans["deb11"][1], spans["deb14"][1])
    assert min(spans["deb15"][0], spans["deb16"][0]) >= batch_one_done
    lab.down(["deb13"])
    try:
        data = fleet.run(names=["deb11", "deb13", "deb14", "deb15"], serial="2",
                         stages=["preflight"])
    finally:
        lab.up_host("deb13", checkout=fleet.tmp)
    hosts = records(data)
    assert hosts["deb11"]["status"] == "ok" and hosts["deb13"]["status"] == "unreachable"
    for name in ("deb14", "deb15"):
        assert hosts[name]["reason"] == "not started: batch 1 of 2 had failures (--serial)"
        assert hosts[name]["run_dir"] is None


def test_max_fail_percent_stops_starting_hosts(fleet):
    path = changed_key_inventory(fleet, "deb12")
    lab.down(["deb13"])
    try:
        data = fleet.run(names=["deb11", "deb12", "deb13", "deb14", "deb15"], path=path,
                         forks=1, max_fail_percent=20, stages=["preflight"])
    finally:
        lab.up_host("deb13", checkout=fleet.tmp)
    hosts = records(data)
    assert hosts["deb11"]["status"] == "ok"
    assert hosts["deb12"]["status"] == "failed"  # 1 of 5: 20%, not more
    assert hosts["deb13"]["status"] == "unreachable"  # 2 of 5: 40%, more: stop
    for name in ("deb14", "deb15"):
        assert hosts[name]["reason"].startswith("not started: more than 20% of the fleet failed")
        assert hosts[name]["run_dir"] is None
    assert data["stopped"].startswith("more than 20%")


def test_ctrl_c_stops_new_work_and_leaves_every_record_verifiable(fleet):
    out = Tee()

    def interrupt_once_a_host_is_past_preflight():
        deadline = time.monotonic() + 60
        while "[2/8] 10-install" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    # a shell without job control starts background commands with SIGINT ignored (as CI
    # runners may): give this process the terminal's default, as an operator's shell would
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt_once_a_host_is_past_preflight, daemon=True).start()
    try:
        data = fleet.run(forks=3, out=out)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert data["stopped"] == "interrupted (Ctrl-C)"
    hosts = list(records(data).values())
    stopped = [h for h in hosts if h["reason"].startswith("stopped before")]
    assert stopped, "no host was stopped between stages"
    not_started = [h for h in hosts if h["reason"].startswith("not started: interrupted")]
    assert len(stopped) + len(not_started) == len(NAMES) - len(data["succeeded"])
    for host in hosts:
        if host["run_dir"]:
            run_dir = Path(host["run_dir"])
            assert audit.verify(run_dir) > 0
            run = audit.read_run_json(run_dir)
            assert run["end"] and all(s["status"] == "ok" for s in run["stages"].values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes on loopback."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    started = []

    def start(*args, name):
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 -- the process writes it
        started.append(subprocess.Popen([str(DASK), *args], stdout=log, stderr=log, env=env,
                                        cwd=tmp_path, start_new_session=True))
        return started[-1]

    address = f"tcp://127.0.0.1:{port}"
    start("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
          name="scheduler")
    workers = [start("worker", address, "--host", "127.0.0.1", "--nthreads", "2",
                     "--no-nanny", "--no-dashboard", "--local-directory", str(tmp_path),
                     "--name", f"w{i}", name=f"w{i}") for i in (1, 2)]
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(2, timeout=60)
    yield address, workers
    for process in reversed(started):  # workers first: nothing of theirs is left to keep
        if process in workers:
            process.kill()
        elif process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def test_a_dask_cluster_gives_the_same_records_and_reports_a_worker_that_died(
        fleet, dask_cluster):
    address, workers = dask_cluster
    data = fleet.run(cluster=address, forks=6)
    assert data["succeeded"] == NAMES, data["hosts"]
    for name, entry in records(data).items():
        run_dir = Path(entry["run_dir"])
        assert sorted(p.name for p in run_dir.glob("*.ipynb")) == [
            f"{s.name}.ipynb" for s in controller.manifest.select(None)]
        assert audit.verify(run_dir) > 0
        gathered = data["dir"] / "hosts" / name
        assert (gathered / "audit.jsonl").read_bytes() == (run_dir / "audit.jsonl").read_bytes()
        assert audit.verify(gathered) > 0
        assert entry["audit_head"] == audit.read_run_json(gathered)["audit"]["last_hash"]
        assert changed(entry) == 0
        mailbox = labrun.ssh(fleet.hosts[name], "cat /var/mail/mailtest")
        assert f"test of run {run_dir.name}" in mailbox
    # one worker killed while both run hosts: its hosts are reported, none is lost
    out = Tee()

    def kill_once_four_hosts_are_running():
        deadline = time.monotonic() + 60
        while (len(re.findall(r"\[2/8\] 10-install  \(", out.getvalue())) < 4
               and time.monotonic() < deadline):
            time.sleep(0.05)
        workers[0].kill()

    threading.Thread(target=kill_once_four_hosts_are_running, daemon=True).start()
    data = fleet.run(cluster=address, forks=6, out=out)
    hosts = records(data)
    assert sorted(hosts) == sorted(NAMES)
    died = [h for h in hosts.values() if "died while running this host" in h["reason"]]
    assert died, data["hosts"]
    assert all(h["status"] == "failed" and "(it was in " in h["reason"] for h in died)
    assert sorted(data["succeeded"] + [h["name"] for h in died]) == sorted(NAMES)
    for host in died:  # the record up to the worker's death is closed and verifies
        if host["run_dir"] and (Path(host["run_dir"]) / "audit.jsonl").exists():
            assert audit.verify(Path(host["run_dir"])) > 0
