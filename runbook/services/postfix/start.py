"""Stage 40-start (G13-G16): checked first, then the previous MTA stopped, Postfix started."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from shlex import quote as q

from runbook.ops import facts
from runbook.ops.facts import Fact
from runbook.ops.operations import OperationFailed, Outcome, Plan, Run, operation, platform_step
from runbook.services.postfix.common import (
    NOT_INSTALLED,
    effective,
    installed,
    master_pid,
    postconf_n,
    postfix_values,
    prefetch,
)
from runbook.services.postfix.wanted import differing, expected_listeners, wanted_settings


@operation("G14 postfix check: no complaints", undo_run_on_failure=True,
           offline=lambda stage: [
               f"$ {stage.platform.postfix_check()}",
               "# must print nothing and exit 0; otherwise every file this run edited is put "
               "back and the stage stops, before anything is stopped or started"])
async def check_postfix(stage) -> Outcome:
    """`postfix check` must print nothing and succeed; otherwise every file this run edited
    is restored and the stage stops, before anything is stopped or started."""
    profile = stage.platform
    if not await installed(stage):
        return Outcome("", "skipped", "Postfix is not installed yet")
    result = await stage.run(profile.postfix_check(), check=False)
    said = profile.check_complaints((result.stdout + result.stderr).replace("\r", "").strip())
    if result.exit_status != 0 or said:
        raise OperationFailed(
            f"postfix check complained (exit {result.exit_status}):\n{said}\n"
            "Fix what it names; the files this run edited were put back as they were")
    return Outcome("", "ok", "no complaints")


@operation("G15 postconf -n: every setting as intended", undo_run_on_failure=True,
           offline=lambda stage: [
               f"$ {stage.platform.postconf} -n    # must show each of these, and no "
               "'unused parameter' warning:",
               *(f"#   {k} = {v}" for k, v in
                 wanted_settings(stage.params, stage.platform).items())])
async def review_settings(stage) -> Outcome:
    """The settings Postfix actually reads, compared with the wanted ones; an unknown
    parameter name in main.cf (a typo) fails here too."""
    profile = stage.platform
    if not await installed(stage):
        return Outcome("", "skipped", "Postfix is not installed yet")
    result = await stage.run(f"{q(profile.postconf)} -n", stream=False)
    current = facts.parse_main_cf(result.stdout)
    wanted = wanted_settings(stage.params, profile)
    problems = [f"{k} is {current.get(k, '(not set)')!r}, wanted {v!r}"
                for k, v in differing(current, wanted).items()]
    problems += [line.strip() for line in result.stderr.splitlines() if "warning" in line]
    lines = [f"{k} = {v}" + ("" if k in wanted else "    (not managed, left as found)")
             for k, v in current.items()]
    if problems and not stage.dry_run:
        raise OperationFailed("postconf -n does not show what was intended:\n  "
                              + "\n  ".join(problems))
    detail = (f"dry run: would differ: {'; '.join(problems)}" if problems else
              f"{len(wanted)} settings as intended, {len(current) - len(wanted)} others")
    return Outcome("", "ok", detail, evidence="\n".join(lines), would=problems)


stop_previous_mta = platform_step(
    "G13 previous mail server stopped", "stop_previous_mta", undo_run_on_failure=True)


@operation("G16 Postfix started (or reloaded onto a changed configuration)",
           undo_run_on_failure=True)
async def start_postfix(stage) -> Plan:
    profile = stage.platform
    pid, stale = await facts.read(stage, master_pid(stage), _stale(stage))
    paths = [f"{profile.config_dir}/{f}" for f in ("main.cf", "master.cf")]
    files = " ".join(map(q, paths))
    stamp = (f"mkdir -p {q(profile.state_dir)} && cksum {files} > {q(profile.loaded_stamp)}")
    plan = Plan("G16 start Postfix")
    if pid is None:
        start = profile.start_postfix()
        plan.found = "Postfix is not running"
        plan.steps = [Run(f"{start.command} && {stamp}", why=start.why, effect=start.effect)]
        plan.undo = [Run(f"{q(profile.postfix)} stop", why="it was not running before")]
    elif stale or _written_this_run(stage, paths):
        plan.found = (f"master {pid} runs, but main.cf or master.cf changed since it read them"
                      if stale else f"master {pid} runs; this run rewrote main.cf or master.cf")
        plan.steps = [Run(f"{q(profile.postfix)} reload && {stamp}",
                          why="the master re-reads main.cf and master.cf")]
        plan.undo = [Run(f"{q(profile.postfix)} reload", why="back onto the restored files")]
    else:
        plan.found = f"master {pid} runs the current configuration"
    return plan


def _written_this_run(stage, paths: list[str]) -> bool:
    """Whether this run rewrote main.cf or master.cf. The master may have read what the run
    put right — an edit made by hand, then `postfix reload` by hand — though the file now
    matches the stamp again: so a run that rewrote them reloads."""
    record = Path(stage.run_dir) / "audit.jsonl"
    if stage.dry_run or not record.exists():
        return False
    for line in record.read_text().splitlines():
        if '"file_write"' in line and json.loads(line).get("path") in paths:
            return True
    return False


def _stale(stage) -> Fact:
    """Whether main.cf / master.cf differ from what the running master read. When the
    runbook (re)loaded it last, its stamp holds the files' checksums as they were then;
    when something else started it later (a boot), the files must not be newer."""
    profile = stage.platform
    pid = q(f"{profile.queue_dir}/pid/master.pid")
    stamp = q(profile.loaded_stamp)
    main, master = (q(f"{profile.config_dir}/{f}") for f in ("main.cf", "master.cf"))
    command = (f"[ -e {pid} ] || exit 0; "
               f"if [ -f {stamp} ] && [ ! {pid} -nt {stamp} ]; then "
               f"[ \"$(cksum {main} {master})\" = \"$(cat {stamp})\" ] || echo stale; "
               f"elif [ {main} -nt {pid} ] || [ {master} -nt {pid} ]; then echo stale; fi")
    return Fact("configuration changed since the master read it", command,
                lambda out, _s: out.strip() == "stale", fresh=False)


def _describe_listening(stage) -> list[str]:
    profile = stage.platform
    interfaces = stage.params.postfix.inet_interfaces
    must, _may = expected_listeners(interfaces, ["all"])
    where = "every address" if "all" in interfaces else ", ".join(sorted(must))
    return [f"$ {profile.listeners().command}",
            f"# the master (pid in {profile.queue_dir}/pid/master.pid) listens on port 25 at "
            f"{where} (inet_interfaces = {', '.join(interfaces)}), and nowhere else"]


@operation("master runs and port 25 listens on exactly the configured addresses",
           undo_run_on_failure=True, offline=_describe_listening)
async def verify_listening(stage) -> Outcome:
    profile = stage.platform
    values = await postfix_values(stage)
    if values is None:
        return Outcome("", "skipped", NOT_INSTALLED)
    interfaces = facts.split_words(values.get("inet_interfaces", ""))
    protocols = facts.split_words(values.get("inet_protocols", "all"))
    must, may = expected_listeners(interfaces, protocols)
    for attempt in range(20):  # after a reload the master re-binds in the background
        pid, sockets = await facts.read(stage, master_pid(stage),
                                        profile.listeners())
        if stage.dry_run and pid is None:
            return Outcome("", "skipped", "dry run: Postfix is not running")
        ours = {s.address for s in sockets if s.port == 25 and s.pid == pid}
        named = [i for i in interfaces if i not in ("all", "loopback-only", "localhost")]
        hostnames = [i for i in named if not facts.network_of(i)]
        good = pid is not None and ours and (
            hostnames or (must <= ours and ours <= may))
        if good or attempt == 19:
            break
        facts.forget(stage)
        await asyncio.sleep(0.1)
    evidence = "\n".join(f"{s.address}:{s.port} {s.process} pid {s.pid}" for s in sockets
                         if s.port == 25)
    if pid is None:
        raise OperationFailed("the Postfix master process is not running; see the mail log "
                              f"({profile.mail_log_shown}) for why it stopped")
    if not good:
        raise OperationFailed(
            f"port 25 of master {pid} listens on {sorted(ours) or 'nothing'}, but "
            f"inet_interfaces = {', '.join(interfaces)} wants {sorted(must)}"
            + (f"\nport 25 sockets seen:\n{evidence}" if evidence else ""))
    return Outcome("", "ok", f"master {pid} listens on {', '.join(sorted(ours))} port 25",
                   evidence=evidence)


prefetch("40-start", lambda stage: [postconf_n(stage), master_pid(stage), _stale(stage),
                                    effective(stage)])
