"""What the Dovecot steps share: the stage's scratch state, the switch `dovecot.enabled`,
and the facts several steps read (Postfix's delivery settings, the configuration file,
the running master, doveconf). The profile is `stage.platform`."""

from __future__ import annotations

import dataclasses
import functools
import re
from shlex import quote as q

from runbook.ops import facts
from runbook.ops.facts import Fact
from runbook.ops.operations import OperationFailed, Outcome, Plan
from runbook.services.dovecot.wanted import (
    DELIVERY_SETTINGS,
    Settings,
    certificate,
    checked,
    listen_addresses,
    mail_location,
    protocols,
)

STAMP = "dovecot-loaded"  # in profile.state_dir: what the running Dovecot was started with

def scratch(stage) -> dict:
    return facts.scratch(stage).setdefault("dovecot", {})


def disabled(stage) -> str:
    return "" if stage.params.dovecot.enabled else "dovecot.enabled is false"


def when_wanted(operation_fn):
    """Under @operation: the step is skipped, saying why, when dovecot.enabled is false."""
    @functools.wraps(operation_fn)
    async def wrapper(stage, *args, **kwargs):
        if disabled(stage):
            return Outcome("", "skipped", disabled(stage))
        return await operation_fn(stage, *args, **kwargs)
    return wrapper


def pending(stage, plan: Plan) -> Plan:
    """Note a dry run's would-be change: the checks after it cannot show the result."""
    if stage.dry_run and not plan.empty and not plan.skip:
        scratch(stage)["pending"] = True
    return plan


def delivery_fact(stage) -> Fact:
    profile = stage.platform

    def fresh(host) -> dict[str, str] | None:  # a plan made without connecting
        settings = host.postconf_n()
        if settings is None:
            return None
        defaults = dict.fromkeys(DELIVERY_SETTINGS, "") | {
            "mail_spool_directory": profile.mailbox_dir}
        return {k: settings.get(k, defaults[k]) for k in DELIVERY_SETTINGS}
    return dataclasses.replace(facts.postconf_values(profile.postconf, DELIVERY_SETTINGS),
                               fresh=fresh)


def conf_fact(stage) -> Fact:
    return facts.file(stage.platform.dovecot_conf)


def config_files(stage) -> str:
    """Shell words: the files Dovecot reads its configuration and TLS keys from."""
    profile = stage.platform
    c = certificate(stage.params, profile)
    d = q(profile.dovecot_config_dir)
    return (f"{d}/dovecot.conf {d}/conf.d/*.conf $(ls {d}/local.conf 2>/dev/null) "
            f"{q(c.cert)} {q(c.key)}")


def pid_script(stage) -> str:
    """Shell: sets $pidf to Dovecot's master.pid and $pid when the master runs."""
    doveconf = q(stage.platform.dovecot_tool("doveconf"))
    return (f"pid=; pidf=$({doveconf} -h base_dir 2>/dev/null)/master.pid; "
            "[ -r \"$pidf\" ] && read pid < \"$pidf\" && kill -0 \"$pid\" 2>/dev/null || pid=")


def stamp_path(stage) -> str:
    profile = stage.platform
    return f"{profile.state_dir}/{STAMP}"


def master_fact(stage) -> Fact:
    """{"pid": the running master's pid or None, "stale": whether the configuration files
    changed since it read them}. Like Postfix's: the stamp holds the files' checksums when
    the runbook last (re)loaded Dovecot; after a start by something else (a boot), the
    files must not be newer than its pid file."""
    stamp = q(stamp_path(stage))
    command = (f"{pid_script(stage)}; [ -n \"$pid\" ] || exit 0; echo \"pid $pid\"; "
               f"if [ -f {stamp} ] && [ ! \"$pidf\" -nt {stamp} ]; then "
               f"[ \"$(cksum {config_files(stage)} 2>&1)\" = \"$(cat {stamp})\" ] || echo stale; "
               f"else for f in {config_files(stage)}; do "
               "[ \"$f\" -nt \"$pidf\" ] && { echo stale; break; }; done; fi")

    def parse(out: str, _status: int) -> dict:
        pid = re.search(r"^pid (\d+)$", out, re.M)
        return {"pid": int(pid.group(1)) if pid else None, "stale": "stale" in out.split()}
    return Fact("dovecot master", command, parse, fresh=lambda host: {
        "pid": 1 if "dovecot" in host.running else None, "stale": False})


# The settings the check reads back (a fixed list, so the stage's first read fetches them).

def doveconf(stage, names: tuple[str, ...] = ()) -> Fact:
    doveconf = q(stage.platform.dovecot_tool("doveconf"))
    args = " ".join(q(n) for n in names) if names else "-n"
    return facts.command_output(f"doveconf {args}", f"{doveconf} {args} 2>&1")


def read_back(stage) -> Fact:
    """`doveconf` of the settings the check compares, in the syntax of the host's Dovecot."""
    return doveconf(stage, checked(stage.platform.dovecot_syntax))


def settings_for(stage, values: dict[str, str] | None) -> Settings:
    """The wanted settings, from Postfix's effective delivery values (or, in a dry run on a
    host without Postfix yet, the platform's defaults)."""
    params, profile = stage.params, stage.platform
    values = values or {"mail_spool_directory": profile.mailbox_dir}
    c = certificate(params, profile)
    return Settings(
        protocols=tuple(protocols(params)),
        listen=tuple(listen_addresses(params)),
        mail_location=mail_location(params.dovecot.mailbox_format, values),
        privileged_group=(profile.dovecot_privileged_group
                          if params.dovecot.mailbox_format == "mbox" else ""),
        ssl_cert=c.cert, ssl_key=c.key, syntax=profile.dovecot_syntax)


async def delivery_values(stage) -> dict[str, str] | None:
    values = await facts.read_one(stage, delivery_fact(stage))
    if values is None and not stage.dry_run:
        raise OperationFailed("Postfix is not installed on this host: Dovecot serves the "
                              "mailboxes Postfix delivers to — run the Postfix stages first")
    return values


def described(describe):
    """A describer that says "skipped" when Dovecot is not wanted."""
    @functools.wraps(describe)
    def wrapper(stage) -> list[str]:
        return [f"# skipped: {disabled(stage)}"] if disabled(stage) else describe(stage)
    return wrapper


