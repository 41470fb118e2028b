"""Benchmark: fleet re-runs of 1, 5, 10 … lab hosts, ours against Ansible, and the memory of
a host in flight.

    .venv/bin/python bench/fleet.py [--hosts deb9,deb11-deb29] [--sizes 1,5,10,20] [--forks 10]
                                    [--ansible /path/to/ansible-playbook] [--rounds 2]

Needs root and lab hosts nobody else is using. Boots the hosts (as they are: not reset),
converges them once with `runbook run INVENTORY`, then per round and size times, as whole
processes started as an operator starts them: our re-run of the default run (00 … 70)
of the first N hosts, and Ansible's re-run of the same Postfix job (bench/ansible/
postfix.yml: 10-install … 50-validate) with as many forks as ours. Prints Markdown for
docs/benchmarks.md. Ansible is not a dependency: give an ansible-playbook to compare with.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script

from runbook import lab  # noqa: E402

PLAYBOOK = ROOT / "bench" / "ansible" / "postfix.yml"
ANSIBLE_CFG = """\
[defaults]
host_key_checking = True
forks = {forks}
stdout_callback = default
interpreter_python = /usr/bin/python3
[ssh_connection]
pipelining = True
ssh_args = -o ControlMaster=auto -o ControlPersist=60s
"""


def names(spec: str) -> list[str]:
    """Host names from "deb9,deb11-deb29": names and ranges, comma separated."""
    found = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        prefix = first.rstrip("0123456789")
        last = last or first
        found += [f"{prefix}{i}" for i in range(int(first[len(prefix):]),
                                                int(last[len(prefix):]) + 1)]
    return found


CPUACCT = Path("/sys/fs/cgroup/cpuacct")  # cgroup v1 here: CPU time of a process tree


def timed(command: list[str], env: dict | None = None) -> float:
    """Wall time of the command; its CPU time (the whole process tree, in a cgroup of its
    own) and the rest of the machine's (the lab hosts: sshd, Postfix) go to CPU."""
    group = CPUACCT / f"runbook-bench-{uuid.uuid4().hex[:12]}"  # new: its count starts at 0
    group.mkdir()
    machine = _cpu(CPUACCT)
    start = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})},
                          preexec_fn=lambda: (group / "cgroup.procs").write_text(
                              str(os.getpid())))
    wall = time.monotonic() - start
    ours = _cpu(group)
    CPU.append((command[0], ours, _cpu(CPUACCT) - machine - ours))
    for _ in range(20):  # the fork server may still be on its way out; Ansible's SSH
        try:              # masters persist (ControlPersist): that group is left behind
            group.rmdir()
            break
        except OSError:
            time.sleep(0.1)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}"
                         f"{done.stderr[-3000:]}")
    return wall


CPU: list[tuple[str, float, float]] = []  # (program, its CPU s, the rest of the machine's)


def _cpu(group: Path) -> float:
    return int((group / "cpuacct.usage").read_text()) / 1e9


def ours(inventory: Path, hosts: list[str], forks: int) -> float:
    return timed([sys.executable, "-m", "runbook.cli", "run", str(inventory),
                  "--host", ",".join(hosts), "--forks", str(forks)])


def ansible(playbook_bin: str, workdir: Path, statuses: list[dict], hosts: list[str],
            forks: int) -> float:
    (workdir / "ansible.cfg").write_text(ANSIBLE_CFG.format(forks=forks))
    lines = ["[mail]"]
    for status in statuses:
        if status["name"] in hosts:
            lines.append(
                f"{status['name']} ansible_host={status['address']} ansible_user=root "
                f"ansible_ssh_private_key_file={status['key_file']} "
                f"ansible_ssh_common_args='-o UserKnownHostsFile={status['known_hosts']} "
                f"-o StrictHostKeyChecking=yes'")
    (workdir / "hosts.ini").write_text("\n".join(lines) + "\n")
    return timed([playbook_bin, "-i", str(workdir / "hosts.ini"), str(PLAYBOOK),
                  "-e", f"token={uuid.uuid4().hex[:8]}"],
                 env={"ANSIBLE_CONFIG": str(workdir / "ansible.cfg"),
                      "ANSIBLE_CONTROL_PATH_DIR": str(workdir / "cp")})


class InFlight:
    """The largest memory (PSS) of the host processes and their kernels, sampled."""

    def __init__(self):
        self.peak = (0, 0.0, 0.0)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()

    def _sample(self):
        while not self.done.wait(0.3):
            procs = {p: _cmdline(p) for p in os.listdir("/proc") if p.isdigit()}
            forked = {p for p, c in procs.items() if "multiprocessing.forkserver" in c}
            servers = [p for p in forked if _parent(p) not in forked]  # its forks look alike
            # the hosts' processes (forked by the server; a zombie has no memory left)
            children = [p for p in procs if _parent(p) in servers and _pss(p)]
            # their kernels: forked by the host's process (run/seed.py) or started afresh
            kernels = [p for p in procs if _parent(p) in children and _pss(p)]
            child_mb, kernel_mb = (sum(_pss(p) for p in children),
                                   sum(_pss(p) for p in kernels))
            if child_mb + kernel_mb > self.peak[1] + self.peak[2]:
                self.peak = (len(children), child_mb, kernel_mb)


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: str) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    except OSError:
        return None


def _pss(pid: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", default="deb9,deb11-deb29")
    parser.add_argument("--sizes", default="1,5,10,20")
    parser.add_argument("--forks", type=int, default=10)
    parser.add_argument("--ansible", help="an ansible-playbook to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    fleet = names(args.hosts)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        statuses = [lab.up_host(name, checkout=work) for name in fleet]
        inventory = lab.write_inventory(fleet, work / "params" / "fleet.yaml")
        started = time.monotonic()
        ours(inventory, fleet, args.forks)  # converge: the re-runs change nothing
        print(f"converge {len(fleet)} hosts (forks {args.forks}): "
              f"{time.monotonic() - started:.1f} s", file=sys.stderr)
        if args.ansible:
            ansible(args.ansible, work, statuses, fleet, args.forks)
        results: dict[int, dict[str, list]] = {n: {"ours": [], "ansible": [], "cpu": []}
                                                for n in sizes}
        with InFlight() as memory:
            for _ in range(args.rounds):
                for n in sizes:
                    forks = min(n, args.forks)
                    results[n]["ours"].append(ours(inventory, fleet[:n], forks))
                    results[n]["cpu"].append(CPU[-1][1:])
                    if args.ansible:
                        results[n]["ansible"].append(
                            ansible(args.ansible, work, statuses, fleet[:n], forks))
        lab.down(fleet)
    report(results, memory.peak, args)


def report(results, peak, args) -> None:
    one = statistics.median(results[min(results)]["ours"])
    print("| hosts (forks) | ours, re-run | × our 1-host re-run | Ansible, re-run | "
          "Ansible ÷ ours |\n|---|---|---|---|---|")
    for n, times in results.items():
        mine = statistics.median(times["ours"])
        theirs = statistics.median(times["ansible"]) if times["ansible"] else None
        print(f"| {n} ({min(n, args.forks)}) | {mine:.1f} s | {mine / one:.2f}× | "
              + (f"{theirs:.1f} s | {theirs / mine:.1f}× |" if theirs else "– | – |"))
    print("\n| hosts | CPU a host: `runbook run` and its processes | CPU a host: the rest "
          "(lab hosts' sshd, Postfix, Dovecot) |\n|---|---|---|")
    for n, times in results.items():
        controller = statistics.median(c for c, _ in times["cpu"]) / n
        rest = statistics.median(r for _, r in times["cpu"]) / n
        print(f"| {n} | {controller:.2f} s | {rest:.2f} s |")
    count, child, kernel = peak
    if count:
        print(f"\nin flight at the peak: {count} hosts, {child:.0f} MB in their processes and "
              f"{kernel:.0f} MB in their kernels (PSS): {(child + kernel) / count:.0f} MB a host")


if __name__ == "__main__":
    main()
