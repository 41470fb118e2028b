"""Benchmark: the cost of our SSH layer over a bare asyncssh connection, and lab boot time.

    .venv/bin/python -m bench.transport [--host deb1] [--commands 300] [--lab]

Measures on a running lab host (root): connection set-up (Target.connect vs asyncssh.connect),
per-command cost of Target.run on an open connection vs a bare `conn.run`, and, with --lab,
`runbook lab` reset and up to SSH-ready. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import asyncssh

from runbook import lab, params
from runbook.audit import Audit
from runbook.remote.target import Target


def ms(samples: list[float]) -> str:
    p90 = sorted(samples)[int(len(samples) * 0.9)]
    return f"{statistics.median(samples) * 1000:.2f} ms (p90 {p90 * 1000:.2f})"


async def timed(coroutine_factory, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await coroutine_factory()
        samples.append(time.perf_counter() - t0)
    return samples


async def in_blocks(factories: dict, n: int, block: int = 20) -> dict[str, list[float]]:
    """Each `block` times in a row, in turn, n times in all: back to back as a stage runs its
    commands (a shell started for the next command overlaps the one running), while drift in
    the machine's load still hits them all alike."""
    samples: dict[str, list[float]] = {name: [] for name in factories}
    for _ in range(max(1, n // block)):
        for name, factory in factories.items():
            for _ in range(block):
                t0 = time.perf_counter()
                await factory()
                samples[name].append(time.perf_counter() - t0)
    return samples


class OwnChannels(Target):
    """Target.run with no shell started ahead: every command opens its channel itself."""

    async def _take_spare(self):
        return None


async def transport(target_params, commands: int) -> dict[str, list[float]]:
    bare_options = {"port": target_params.port, "username": target_params.user,
                    "known_hosts": str(target_params.known_hosts),
                    "client_keys": [str(target_params.key_file)]}

    async def bare_connect():
        conn = await asyncssh.connect(target_params.host, **bare_options)
        conn.close()
        await conn.wait_closed()

    async def our_connect():
        t = await Target.connect(target_params, None)
        await t.close()

    results = {"connect, bare asyncssh": await timed(bare_connect, 20),
               "connect, Target.connect": await timed(our_connect, 20)}
    conn = await asyncssh.connect(target_params.host, **bare_options)
    with tempfile.TemporaryDirectory() as tmp:
        target = await Target.connect(target_params, Audit(Path(tmp), display=False))
        for _ in range(10):  # warm up both paths
            await conn.run("true")
            await target.run("true", stream=False)
        unaudited = Target(target.session, target_params, None, None)
        own = OwnChannels(target.session, target_params, target.audit, None)
        results |= await in_blocks({
            "`true`, bare conn.run": lambda: conn.run("true"),
            "`true`, Target.run (audited)": lambda: target.run("true", stream=False),
            "`true`, Target.run without its audit record":
                lambda: unaudited.run("true", stream=False),
            "`true`, Target.run, each command opening its own channel (audited)":
                lambda: own.run("true", stream=False),
        }, commands)
        results |= await in_blocks({
            "`postconf -n`-sized output, bare": lambda: conn.run("seq 1 60"),
            "`postconf -n`-sized output, Target.run":
                lambda: target.run("seq 1 60", stream=False),
        }, commands // 3)
        await target.close()
    conn.close()
    return results


def lab_times(name: str) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"lab reset NAME (fresh host to SSH-ready)": [],
                                       "lab up, host stopped → SSH-ready": []}
    for _ in range(3):
        t0 = time.perf_counter()
        lab.reset(name)
        results["lab reset NAME (fresh host to SSH-ready)"].append(time.perf_counter() - t0)
    for _ in range(3):
        lab.down()
        t0 = time.perf_counter()
        lab.up(1)
        results["lab up, host stopped → SSH-ready"].append(time.perf_counter() - t0)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="deb1")
    parser.add_argument("--commands", type=int, default=300)
    parser.add_argument("--lab", action="store_true", help="also time lab reset/up (disruptive)")
    args = parser.parse_args()
    host = next(h for h in lab.status() if h["name"] == args.host and h["running"])
    target_params = params.load(host["params_file"]).target
    results = asyncio.run(transport(target_params, args.commands))
    if args.lab:
        results |= lab_times(args.host)
    print("| measurement | median |\n|---|---|")
    for name, samples in results.items():
        if name.startswith("lab"):
            print(f"| {name} | {statistics.median(samples):.2f} s |")
        else:
            print(f"| {name} | {ms(samples)} |")
    bare = statistics.median(results["`true`, bare conn.run"])
    ours = statistics.median(results["`true`, Target.run (audited)"])
    print(f"\nTarget.run / bare conn.run: {ours / bare:.2f}x (goal ≤ 1.3x)")


if __name__ == "__main__":
    main()
