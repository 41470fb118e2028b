"""A fleet on a Dask cluster: one task a host, run by a worker with the local code path.

`runbook run INVENTORY --cluster tcp://SCHEDULER:8786` submits `host_task` once a host.
On the worker it writes the host's merged params and drives the host's process exactly as
a local fleet does (`job.HostProcess`: its own kernel, its own run folder in the worker's
`runs/`), sends the host's events back through the scheduler (`log_event` on the fleet's
topic) and waits for its gate answers in Dask Variables. It returns the result with the
host's run.json and audit.jsonl; the controller keeps those copies in the fleet folder
(`hosts/NAME/`) and checks each chain there.

A worker that dies mid-host takes the host's process with it (the record up to then stays
on the worker's machine). The scheduler hands the task to another worker, which does not
run the host again, half-configured as it may be: it reports the host failed, naming the
worker that died. If the scheduler gives up instead (KilledWorker), that error is the reason.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml

from runbook.errors import RunbookError
from runbook.fleet.job import HostProcess
from runbook.remote import slots

GATE_TIMEOUT = 3600.0  # s a worker waits for a gate answer before giving the host up
CONNECT_TIMEOUT = "20s"


class Cluster:
    """The controller's side: submit, relay events, answer gates, gather records."""

    def __init__(self, address: str, fleet_dir: Path, options, jobs: dict):
        from distributed import Client

        try:
            self.client = Client(address, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as e:
            raise RunbookError(f"cannot reach the Dask scheduler at {address}: {e} — start "
                               "one with `dask scheduler` (docs/fleet.md)") from None
        self.fleet_dir, self.options = fleet_dir, options
        self.key = f"runbook-{fleet_dir.name}-{uuid.uuid4().hex[:8]}"
        self.hosts: dict[str, dict] = {}  # name -> on_event, gate, last run_dir and stage
        self.client.subscribe_topic(self.key, self._event)

    def run(self, name: str, job: dict, on_event, gate) -> tuple[dict, Path | None]:
        self.hosts[name] = {"on_event": on_event, "gate": gate, "began": time.monotonic()}
        params = yaml.safe_load(Path(job["params_file"]).read_text())
        work = {**job, "params": params, "fleet": self.fleet_dir.name}
        future = self.client.submit(host_task, work, self.key, self.options.ssh_slots,
                                    key=f"{self.key}-{name}", pure=False, retries=0)
        try:
            result = future.result()
        except Exception as e:  # KilledWorker, a lost scheduler: the host's failure, reported
            seen = self.hosts[name]
            result = {"status": "failed", "run_dir": seen.get("run_dir"),
                      "reason": f"its Dask task failed: {type(e).__name__}: {e}", "lost": True}
        finally:
            future.release()
        if result.pop("lost", False):  # the worker died: say where the host was
            seen = self.hosts[name]
            result["reason"] += _where(seen)
            result["duration"] = round(time.monotonic() - seen["began"], 3)
        return result, self._gather(name, result)

    def _event(self, event) -> None:
        _, message = event
        name = message.pop("name", None)
        seen = self.hosts.get(name)
        if seen is None:
            return
        if message.get("event") == "run_dir":
            seen["run_dir"] = message["run_dir"]
        elif message.get("event") == "stage":
            seen["stage"] = message["stage"]
        seen["on_event"](message)
        if message.get("event") == "gate":  # answered in a thread: a linear gate waits
            threading.Thread(target=self._answer, args=(name, message["stage"]),
                             daemon=True).start()

    def _answer(self, name: str, stage: str) -> None:
        from distributed import Variable

        answer = self.hosts[name]["gate"](stage) or "go"
        Variable(_gate_name(self.key, name, stage), client=self.client).set(answer)

    def _gather(self, name: str, result: dict) -> Path | None:
        files = result.pop("record", None)
        if not files:
            return None
        folder = self.fleet_dir / "hosts" / name
        folder.mkdir(parents=True, exist_ok=True)
        for file_name, text in files.items():
            (folder / file_name).write_text(text)
        return folder

    def terminate(self) -> None:
        pass  # the gates answer stop; a worker's running stage ends as it would locally

    def close(self) -> None:
        self.client.close()


def host_task(work: dict, key: str, ssh_slots: int) -> dict:
    """On a worker: run one host with the local code path; the result and its record."""
    from distributed import Variable, get_worker

    worker = get_worker()
    name = work["name"]
    claim = Variable(f"{key}-{name}-worker")
    earlier = _value(claim)
    if earlier:
        return {"status": "failed", "run_dir": _value(Variable(f"{key}-{name}-run-dir")),
                "duration": 0.0, "lost": True,
                "reason": f"the Dask worker {earlier} died while running this host; not run "
                          "again (it may be half-configured)"}
    claim.set(worker.address)
    fleet = Path(work["runs_root"]) / work["fleet"]
    params_file = fleet / "params" / f"{name}.yaml"
    params_file.parent.mkdir(parents=True, exist_ok=True)
    params_file.write_text(yaml.safe_dump(work["params"], sort_keys=False))
    job = {k: v for k, v in work.items() if k not in ("params", "fleet")}
    job["params_file"] = str(params_file)
    slot_dir = Path(tempfile.gettempdir()) / f"runbook-ssh-slots-{work['fleet']}"
    process = HostProcess(job, fleet / "logs" / f"{name}.log",
                          {slots.ENV: slots.spec(slot_dir, ssh_slots)})

    def on_event(event: dict) -> None:
        if event.get("event") == "run_dir":
            Variable(f"{key}-{name}-run-dir").set(event["run_dir"])
        worker.log_event(key, {"name": name, **event})

    def gate(stage: str) -> str | None:
        answer = _value(Variable(_gate_name(key, name, stage)), GATE_TIMEOUT)
        return None if answer == "go" else answer or "no answer from the fleet's controller"

    result = process.run(on_event, gate)
    result["record"] = _record(result.get("run_dir"))
    result["worker"] = worker.address
    return result


def _record(run_dir: str | None) -> dict | None:
    if not run_dir or not (Path(run_dir) / "run.json").exists():
        return None
    return {name: (Path(run_dir) / name).read_text() for name in ("run.json", "audit.jsonl")
            if (Path(run_dir) / name).exists()}


def _value(variable, timeout: float = 0.1):
    """A Dask Variable's value, or None when it is not set within `timeout`."""
    try:
        return variable.get(timeout=timeout)
    except TimeoutError:
        return None


def _gate_name(key: str, name: str, stage: str) -> str:
    return f"{key}-{name}-gate-{stage}"


def _where(seen: dict) -> str:
    where = f" (it was in {seen['stage']})" if seen.get("stage") else " (before its first stage)"
    if seen.get("run_dir"):
        where += f"; its record up to then: {seen['run_dir']} on that worker's machine"
    return where
