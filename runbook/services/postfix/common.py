"""What the Postfix stage modules share: the stage's scratch state and the facts several
stages read (main.cf, postconf, the master's pid). The profile is `stage.platform`."""

from __future__ import annotations

from runbook.ops import facts
from runbook.ops.facts import Fact
from runbook.ops.operations import OperationFailed
from runbook.services.postfix.wanted import alias_source, wanted_settings


def scratch(stage) -> dict:
    """What one cell leaves for a later one of the same stage (`postconf -n` before, the
    test message sent)."""
    return facts.scratch(stage).setdefault("postfix", {})


def main_cf(stage) -> Fact:
    return facts.file(f"{stage.platform.config_dir}/main.cf")


def postconf_n(stage) -> Fact:
    return facts.postconf_n(stage.platform.postconf)


NOT_INSTALLED = "dry run: Postfix is not installed yet (the install stage would install it)"


async def postfix_values(stage) -> dict[str, str] | None:
    """The values of `effective`; None only in a dry run on a host without
    Postfix (the operation then says it would follow the install)."""
    values = await facts.read_one(stage, effective(stage))
    if values is None and not stage.dry_run:
        raise OperationFailed("Postfix is not installed on this host: run the install stage "
                              "(10-install) first")
    return values


def master_pid(stage) -> Fact:
    return facts.master_pid(stage.platform.queue_dir)


def effective(stage) -> Fact:
    """The values Postfix uses (defaults included) for where it listens and whom it trusts."""
    return facts.postconf_values(stage.platform.postconf,
                                 ("inet_interfaces", "inet_protocols", "mynetworks"))


def alias_facts(stage) -> list[Fact]:
    table = wanted_settings(stage.params, stage.platform)["alias_database"]
    _kind, source, database = alias_source(table)
    return [facts.file(source)] + ([facts.newer(database, source)] if database else [])


def prefetch(stage_name: str, generic) -> None:
    facts.PREFETCH[stage_name] = lambda stage: (
        stage.platform.prefetch(stage_name) + generic(stage))


async def installed(stage) -> bool:
    return await facts.read_one(stage, postconf_n(stage)) is not None


