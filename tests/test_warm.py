"""`runbook warm` (run/warm.py): `runbook run` started from a process that has everything
loaded, with the caller's terminal, arguments, exit status and Ctrl-C.

The first tests need no lab; the last run against the lab host deb10 (root)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from labrun import booted

from runbook.audit import verify
from runbook.run import warm
from runbook.run.runner import latest_run

PROJECT = Path(__file__).resolve().parent.parent
HOST = "deb10"


class Warm:
    """A `runbook warm` of its own: its private folder under a TMPDIR of the test's."""

    def __init__(self, tmp: Path, name: str = "warm"):
        self.env = os.environ | {"TMPDIR": str(tmp / "warmtmp")}
        (tmp / "warmtmp").mkdir(exist_ok=True)
        self.folder = tmp / "warmtmp" / f"mail-runbook-warm-{os.getuid()}"
        self.log = tmp / f"{name}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "runbook.cli", "warm", "--idle", "300"], cwd=PROJECT,
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while "serving runs" not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "runbook warm did not start"
            time.sleep(0.05)

    def served(self) -> int:
        return self.log.read_text().count(" started")

    def runbook(self, *args, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runbook.cli", *args], cwd=PROJECT,
                              env=self.env | (env or {}), capture_output=True, text=True,
                              timeout=300, **kw)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def warmed(tmp_path):
    started = Warm(tmp_path)
    yield started
    started.stop()


def bad_params(tmp_path: Path) -> Path:
    bad = yaml.safe_load((PROJECT / "params/example-debian.yaml").read_text())
    bad["postfix"]["mynetworks"] = ["0.0.0.0/0"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    return path


def test_a_run_from_the_warm_process_has_the_callers_output_and_exit_status(warmed, tmp_path):
    out = warmed.runbook("run", str(bad_params(tmp_path)))
    assert out.returncode == 2
    assert "postfix.mynetworks" in out.stderr and "nothing was run" in out.stderr
    assert warmed.served() == 1
    time.sleep(1.5)  # reaped within a second
    assert "ended, exit status 2" in warmed.log.read_text()


def test_with_RUNBOOK_WARM_0_or_for_other_commands_the_run_starts_cold(warmed, tmp_path):
    cold = warmed.runbook("run", str(bad_params(tmp_path)), env={"RUNBOOK_WARM": "0"})
    validate = warmed.runbook("validate", str(bad_params(tmp_path)))
    assert cold.returncode == validate.returncode == 2
    assert "postfix.mynetworks" in cold.stderr and "postfix.mynetworks" in validate.stderr
    assert warmed.served() == 0


def test_a_warm_folder_open_to_others_is_never_used(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    assert warm.folder(create=True) == tmp_path / f"mail-runbook-warm-{os.getuid()}"
    (tmp_path / f"mail-runbook-warm-{os.getuid()}").chmod(0o755)
    assert warm.folder() is None and warm.socket_path() is None
    assert warm.delegate(["run", "x.yaml"]) is None  # started here instead
    lines = []
    assert warm.serve(lambda argv: 0, idle=1, echo=lambda *a, **k: lines.append(a)) == 1
    assert "not private" in str(lines)


def test_an_edit_or_an_upgrade_names_another_socket_so_the_run_starts_cold(tmp_path, monkeypatch):
    package, notebooks = tmp_path / "runbook", tmp_path / "notebooks"
    package.mkdir()
    notebooks.mkdir()
    (package / "x.py").write_text("A = 1\n")
    (notebooks / "10.ipynb").write_text("{}")
    monkeypatch.setattr(warm, "PACKAGE", package)
    monkeypatch.setattr(warm, "PROJECT", tmp_path)
    before = warm.digest()
    assert warm.digest() == before
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "x.pyc").write_bytes(b"compiled")
    assert warm.digest() == before, "compiled files are not the code"
    (notebooks / "10.ipynb").write_text("{ }")
    assert warm.digest() != before
    edited = warm.digest()
    site = tmp_path / "site-packages"
    (site / "papermill-2.6.0.dist-info").mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    installed = warm.digest()
    assert installed != edited
    (site / "papermill-2.6.0.dist-info").rename(site / "papermill-2.7.0.dist-info")
    assert warm.digest() != installed, "an upgraded dependency means a cold start"


# --- against a lab host ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def host() -> dict:
    return booted(HOST)


def run_dir_of(out: str) -> Path:
    return Path(out.rsplit("runbook audit verify ", 1)[1].split()[0])


@pytest.mark.lab
def test_runs_and_checks_from_the_warm_process_and_their_records(host, warmed):
    first = warmed.runbook("run", host["params_file"])
    assert first.returncode == 0, first.stdout + first.stderr
    again = warmed.runbook("run", host["params_file"])
    assert again.returncode == 0, again.stdout + again.stderr
    check = warmed.runbook("check", host["params_file"])  # the nightly drift check
    assert check.returncode == 0, check.stdout + check.stderr
    assert warmed.served() == 3
    run_dir = run_dir_of(again.stdout)
    assert verify(run_dir) > 0
    run = json.loads((run_dir / "run.json").read_text())
    assert run["state"] == "ok"
    assert [s["changed"] for s in run["stages"].values()] == [0] * 8, run["stages"]
    assert "[8/8] 70-dovecot: ok" in again.stdout, "the progress lines reach the caller"


@pytest.mark.lab
def test_ctrl_c_to_the_caller_interrupts_the_run_in_the_warm_process(host, warmed):
    caller = subprocess.Popen([sys.executable, "-m", "runbook.cli", "run", host["params_file"]],
                              cwd=PROJECT, env=warmed.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    lines = []
    for line in caller.stdout:
        lines.append(line)
        if line.startswith("[2/8]"):
            caller.send_signal(signal.SIGINT)
            break
    rest, err = caller.communicate(timeout=120)
    out = "".join(lines) + rest
    assert caller.returncode == 130, out + err
    assert warmed.served() == 1
    run_dir = latest_run(PROJECT / "runs", host["address"])
    assert verify(run_dir) > 0
    assert json.loads((run_dir / "run.json").read_text())["state"] == "interrupted"


@pytest.mark.lab
def test_a_caller_killed_outright_takes_its_run_in_the_warm_process_along(host, warmed):
    caller = subprocess.Popen([sys.executable, "-m", "runbook.cli", "run", host["params_file"]],
                              cwd=PROJECT, env=warmed.env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    for line in caller.stdout:
        if line.startswith("[2/8]"):
            caller.kill()
            break
    caller.wait(timeout=10)
    deadline = time.monotonic() + 10
    while "ended, exit status -15" not in warmed.log.read_text():
        assert time.monotonic() < deadline, warmed.log.read_text()
        time.sleep(0.2)
    # as after a cold run killed outright: its kernel gone, and the host's lock with it
    again = warmed.runbook("run", host["params_file"])
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_second_warm_process_of_the_same_code_is_refused_and_status_names_the_first(
        warmed, tmp_path):
    pid = warmed.process.pid
    second = warmed.runbook("warm", "--idle", "5")
    assert second.returncode == 1
    assert f"pid {pid} already serves this code" in second.stderr and "--stop" in second.stderr
    status = warmed.runbook("warm", "--status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"pid {pid} serves this code of {PROJECT}" in status.stdout
    refused = warmed.runbook("run", bad_params(tmp_path))  # the first one still serves
    assert refused.returncode == 2 and warmed.served() == 1


def test_stop_ends_the_warm_process_and_leaves_nothing_behind(warmed):
    pid = warmed.process.pid
    stopped = warmed.runbook("warm", "--stop")
    assert stopped.returncode == 0 and f"pid {pid} ended" in stopped.stdout
    assert warmed.process.wait(timeout=5) == 0
    assert list(warmed.folder.iterdir()) == []  # its socket and its note
    status = warmed.runbook("warm", "--status")
    assert status.returncode == 1 and "runs start cold" in status.stdout
    again = warmed.runbook("warm", "--stop")
    assert again.returncode == 0 and "none serves" in again.stdout


def test_a_warm_process_killed_outright_is_not_counted_and_the_next_one_serves(tmp_path):
    first = Warm(tmp_path, "first")
    first.process.kill()
    first.process.wait()
    assert len(list(first.folder.glob("*.json"))) == 1  # left behind by SIGKILL
    assert first.runbook("warm", "--status").returncode == 1
    second = Warm(tmp_path, "second")
    try:
        status = second.runbook("warm", "--status")
        assert f"pid {second.process.pid} serves this code" in status.stdout
    finally:
        second.stop()


def test_a_socket_left_by_a_warm_process_that_died_means_a_cold_start(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    path = warm.socket_path(create=True)
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with warm._address(path) as address:  # a test's folder is deep: as warm.serve binds
        left.bind(address)
    left.close()  # bound, never listened to again: as after a SIGKILL
    assert path.exists()
    assert warm.delegate(["run", "x.yaml"]) is None
