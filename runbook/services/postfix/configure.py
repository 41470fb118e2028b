"""Stage 30-configure (G9-G12): the guide's minimal main.cf and the aliases."""

from __future__ import annotations

import difflib
from shlex import quote as q

from runbook.ops import facts
from runbook.ops.edits import set_aliases, set_main_cf
from runbook.ops.operations import (
    OperationFailed,
    Outcome,
    Plan,
    Run,
    Write,
    after_restore,
    operation,
)
from runbook.services.dovecot import wanted as dovecot_wanted
from runbook.services.postfix.common import alias_facts, main_cf, postconf_n, prefetch, scratch
from runbook.services.postfix.wanted import (
    ALIASES,
    IDENTITY,
    LISTEN,
    PARENT,
    TRUST,
    alias_source,
    differing,
    wanted_settings,
)


@after_restore
def rebuild_aliases(stage, restored: list[str]) -> list[Run]:
    """After a restore the alias database must match the restored aliases file again."""
    table = wanted_settings(stage.params, stage.platform)["alias_database"]
    _kind, source, database = alias_source(table)
    if database and source in restored:
        return [Run(f"{q(stage.platform.tool('postalias'))} {q(table)}",
                    why="the alias database follows the restored aliases file")]
    return []


@operation("postconf -n before the changes",
           offline=lambda stage: [f"$ {stage.platform.postconf} -n    # shown, to compare "
                                  "with the end of the stage"])
async def current_settings(stage) -> Outcome:
    """What main.cf sets now (kept to show the difference at the end of the stage)."""
    settings = await facts.read_one(stage, postconf_n(stage))
    if settings is None:
        return Outcome("", "skipped", "Postfix is not installed yet (the install stage "
                       "installs it)")
    scratch(stage)["before"] = settings
    return Outcome("", "ok", f"{len(settings)} settings", evidence=_postconf_text(settings))


async def _main_cf_plan(stage, name: str, keys: tuple[str, ...] | None = None,
                        settings: dict[str, str] | None = None) -> Plan:
    wanted = wanted_settings(stage.params, stage.platform)
    settings = settings if settings is not None else {k: wanted[k] for k in keys}
    path = f"{stage.platform.config_dir}/main.cf"
    text = await facts.read_one(stage, main_cf(stage))
    plan = Plan(name)
    if text is None and not stage.dry_run:
        raise OperationFailed(f"{path} does not exist: Postfix is not installed or was "
                              "installed without a configuration — run the install stage")
    current = facts.parse_main_cf(text or "")
    change = differing(current, settings)
    plan.found = "; ".join(f"{k} = {current.get(k, '(default)')}" for k in settings)
    if change:
        plan.steps = [Write(path, text, set_main_cf(text or "", change),
                            why="set " + ", ".join(change)), stage.platform.settle(path)]
    return plan


def _main_cf_step(name: str, title: str, keys: tuple[str, ...]):
    """An operation setting these main.cf keys to their wanted values (and nothing else)."""

    async def step(stage) -> Plan:
        return await _main_cf_plan(stage, title, keys)

    return operation(name)(step)


ensure_identity = _main_cf_step(
    "G9 main.cf: myhostname, mydomain, myorigin, mydestination", "G9 identity", IDENTITY)
ensure_listen_addresses = _main_cf_step(
    "main.cf: inet_interfaces (where Postfix listens)", "inet_interfaces", LISTEN)
ensure_trusted_networks = _main_cf_step(
    "G10 main.cf: mynetworks, mynetworks_style (who may relay)", "G10 trusted networks", TRUST)


@operation("G11 alias database: alias_maps, alias_database, entries, postalias")
async def ensure_aliases(stage) -> Plan:
    """main.cf names the alias table, the aliases file holds the entries, and the database
    is rebuilt only when the file changed or the database is missing or older."""
    profile = stage.platform
    table = wanted_settings(stage.params, profile)["alias_database"]
    _kind, source, database = alias_source(table)
    plan = await _main_cf_plan(stage, "G11 aliases", ALIASES)
    text, *fresh_db = await facts.read(stage, *alias_facts(stage))
    new = set_aliases(text or "", stage.params.postfix.aliases)
    entries_change = text is None or new != text
    if entries_change:
        plan.steps.append(Write(source, text, new, mode=0o644 if text is None else None,
                                why="alias entries from postfix.aliases"))
    if database and (entries_change or not fresh_db[0]):
        plan.steps.append(Run(f"{q(profile.tool('postalias'))} {q(table)}",
                              why=f"rebuild {database} from {source}",
                              effect=lambda host: host.add(database)))
    entries = ", ".join(f"{k}: {', '.join(v)}" for k, v in stage.params.postfix.aliases.items())
    plan.found = f"{plan.found}; entries {entries or '(none given)'}"
    return plan


ensure_parent_domain_matching = _main_cf_step(
    "G12 main.cf: parent_domain_matches_subdomains set explicitly",
    "G12 parent domain matching", PARENT)


@operation("main.cf: further settings (postfix.extra_settings; Maildir delivery for Dovecot)")
async def ensure_extra_settings(stage) -> Plan:
    extra = dovecot_wanted.postfix_settings(stage.params) | stage.params.postfix.extra_settings
    plan = await _main_cf_plan(stage, "extra settings", settings=extra)
    if not extra:
        plan.found = "none given"
    return plan


@operation("postconf -n after the changes, as a diff",
           offline=lambda stage: [f"$ {stage.platform.postconf} -n    # shown as a diff "
                                  "against the start of the stage"])
async def settings_diff(stage) -> Outcome:
    """`postconf -n` now, as a diff against the start of the stage."""
    after = await facts.read_one(stage, postconf_n(stage))
    before = scratch(stage).get("before")
    if after is None:
        return Outcome("", "skipped", "Postfix is not installed yet")
    if before is None:
        return Outcome("", "ok", "no 'before' in this stage", evidence=_postconf_text(after))
    diff = "".join(difflib.unified_diff(
        _postconf_text(before).splitlines(keepends=True),
        _postconf_text(after).splitlines(keepends=True), "postconf -n (before)",
        "postconf -n (after)"))
    return Outcome("", "ok", "no setting changed" if not diff else "settings changed",
                   evidence=diff or _postconf_text(after))


def _postconf_text(settings: dict[str, str]) -> str:
    return "".join(f"{k} = {v}\n" for k, v in settings.items())


prefetch("30-configure", lambda stage: [postconf_n(stage), main_cf(stage), *alias_facts(stage)])
