"""Stage 70-dovecot, setting up (G22): the password at hand, delivery checked, Dovecot
installed, its one file written and checked, started and listening where it should; and
the way back before 95-rollback restores the files (G23)."""

from __future__ import annotations

import asyncio
import contextlib
from shlex import quote as q

from runbook.ops import facts
from runbook.ops.facts import Fact
from runbook.ops.operations import OperationFailed, Outcome, Plan, Run, Write, operation
from runbook.services.dovecot.common import (
    conf_fact,
    config_files,
    delivery_fact,
    delivery_values,
    described,
    doveconf,
    master_fact,
    pending,
    read_back,
    scratch,
    settings_for,
    stamp_path,
    when_wanted,
)
from runbook.services.dovecot.login import keep_secret, test_password
from runbook.services.dovecot.tls import certificate_fact
from runbook.services.dovecot.wanted import (
    DELIVERY_SETTINGS,
    PORTS,
    checked,
    delivery_problems,
    doveconf_complaints,
    expected_sockets,
    is_ip,
    listen_addresses,
    parse_settings,
    protocols,
    render_config,
    settings_problems,
)

LISTEN_WAIT = 3.0  # seconds Dovecot may take to (re)bind its listeners
LOGIN_PROCESSES = {"imap": "imap-login", "pop3": "pop3-login"}
@described
def _describe_password(stage) -> list[str]:
    d = stage.params.dovecot
    where = (f"the environment variable {d.test_password_env}" if d.test_password_env
             else f"the file {d.test_password_file}" if d.test_password_file
             else "nowhere yet: set dovecot.test_password_env or dovecot.test_password_file")
    return [f"# the test recipient's password is read on this machine from {where}; never "
            "shown, masked in every record"]


@described
def _describe_delivery(stage) -> list[str]:
    fmt = stage.params.dovecot.mailbox_format
    want = ("home_mailbox = Maildir/" if fmt == "maildir" else
            "no home_mailbox, an mbox spool directory")
    return [f"$ {stage.platform.postconf} {' '.join(DELIVERY_SETTINGS)}",
            f"# {fmt}: {want}, and no mailbox_command or mailbox_transport"]


@described
def _describe_check_config(stage) -> list[str]:
    doveconf = stage.platform.dovecot_tool("doveconf")
    wanted = settings_for(stage, None).values()
    return [f"$ {doveconf} -n    # shown; no warning or error",
            f"$ {doveconf} {' '.join(checked(stage.platform.dovecot_syntax))}    # each as "
            "written:",
            *(f"#   {k} = {v}" for k, v in wanted.items())]


@described
def _describe_listening(stage) -> list[str]:
    expected = expected_sockets(listen_addresses(stage.params), protocols(stage.params))
    return [f"$ {stage.platform.listeners().command}",
            f"# Dovecot's master listens on exactly {_pairs(expected)}"]


@operation("G22 the test recipient's password is at hand (read here, never shown)",
           offline=_describe_password)
@when_wanted
async def check_password(stage) -> Outcome:
    """Read before anything changes, so a missing password stops the stage while the host
    is still as it was."""
    d = stage.params.dovecot
    keep_secret(stage, test_password(stage.params))
    where = (f"environment variable {d.test_password_env}" if d.test_password_env
             else f"file {d.test_password_file} on this machine")
    return Outcome("", "ok", f"read from the {where}; masked in every record")


@operation("G22 Postfix delivers where Dovecot will read", offline=_describe_delivery)
@when_wanted
async def check_delivery(stage) -> Outcome:
    """Postfix's delivery settings must match dovecot.mailbox_format: mbox files in the
    spool (the default), or ~/Maildir/ (home_mailbox = Maildir/)."""
    values = await delivery_values(stage)
    if values is None:
        return Outcome("", "skipped", "dry run: Postfix is not installed yet")
    fmt = stage.params.dovecot.mailbox_format
    problems = delivery_problems(fmt, values)
    shown = "\n".join(f"{k} = {values.get(k, '')}" for k in DELIVERY_SETTINGS)
    if problems and not stage.dry_run:
        raise OperationFailed("Postfix does not deliver where Dovecot would read:\n  "
                              + "\n  ".join(problems))
    location = settings_for(stage, values).location
    detail = (f"dry run: would differ: {'; '.join(problems)}" if problems
              else f"{fmt}: Dovecot reads {location}")
    return Outcome("", "ok", detail, evidence=shown, value=location)


@operation("G22 install Dovecot's IMAP server (nothing started until configured)")
@when_wanted
async def install(stage) -> Plan:
    return pending(stage, await stage.platform.dovecot_install(stage, stage.params.dovecot.pop3))


def _platform_step(name: str, method: str):
    """A step wholly the platform's (`stage.platform.<method>`), skipped when Dovecot is not
    wanted, its would-be change noted in a dry run."""

    async def step(stage) -> Plan:
        return pending(stage, await getattr(stage.platform, method)(stage))

    step.__name__ = step.__qualname__ = method
    return operation(name)(when_wanted(step))


ensure_login_class = _platform_step("G22 Dovecot's login class (OpenBSD package README)",
                                    "dovecot_login_class")


@operation("G22 Dovecot configuration: one runbook-managed file")
@when_wanted
async def ensure_config(stage) -> Plan:
    profile = stage.platform
    values = await delivery_values(stage)
    settings = settings_for(stage, values)
    text = await facts.read_one(stage, conf_fact(stage))
    new = render_config(settings)
    plan = Plan("Dovecot configuration", found=(
        f"listen {', '.join(settings.listen)}; {settings.location}; "
        f"protocols {' '.join(settings.protocols)}; TLS {settings.ssl_cert}"))
    scratch(stage)["settings"] = settings
    if text != new:
        plan.steps = [Write(profile.dovecot_conf, text, new, mode=0o644,
                            why="the runbook's settings, read after the package's files")]
    return pending(stage, plan)


@operation("G22 doveconf -n: no errors, settings as intended",
           offline=_describe_check_config)
@when_wanted
async def check_config(stage) -> Outcome:
    """`doveconf -n` (the settings that differ from the defaults) shown; it must exit 0
    without warnings, and the settings the runbook wrote must be what Dovecot reads (no
    later file, such as local.conf, overriding them)."""
    installed = await facts.read_one(stage, stage.platform.dovecot_packages())
    if not installed.get("imap"):
        if stage.dry_run:
            return Outcome("", "skipped", "dry run: Dovecot is not installed yet")
        raise OperationFailed("Dovecot's IMAP server is not installed (the install step "
                              "above should have installed it)")
    settings = scratch(stage).get("settings") or settings_for(stage, await delivery_values(stage))
    wanted = settings.values()
    (shown, status), (values, _) = await facts.read(stage, doveconf(stage),
                                                    read_back(stage))
    complaints = doveconf_complaints(shown) + doveconf_complaints(values)
    current = parse_settings(values)
    scratch(stage)["trusted"] = current.get("login_trusted_networks", "")
    problems = complaints + settings_problems(wanted, current)
    if status != 0:
        problems.insert(0, f"doveconf -n exited {status}")
    if problems and not stage.dry_run:
        raise OperationFailed("Dovecot's configuration is not as intended:\n  "
                              + "\n  ".join(problems)
                              + "\nthe files this stage edited were put back as they were")
    detail = (f"dry run: differs now: {'; '.join(problems)}" if problems
              else f"no complaints; {len(wanted)} settings as intended")
    return Outcome("", "ok", detail, evidence=shown.rstrip())


ensure_at_boot = _platform_step("G22 Dovecot starts at boot", "dovecot_at_boot")


@operation("G22 Dovecot started (or reloaded onto a changed configuration)")
@when_wanted
async def start(stage) -> Plan:
    profile = stage.platform
    master = await facts.read_one(stage, master_fact(stage))
    stamp = (f"mkdir -p {q(profile.state_dir)} && cksum {config_files(stage)} > "
             f"{q(stamp_path(stage))} 2>&1")
    plan = Plan("start Dovecot")
    if master["pid"] is None:
        run = profile.dovecot_service("start")
        plan.found = "Dovecot is not running"
        plan.steps = [Run(f"{run.command} && {stamp}", why=run.why)]
        plan.undo = [profile.dovecot_service("stop")]
    elif master["stale"]:
        run = profile.dovecot_service("reload")
        plan.found = (f"master {master['pid']} runs, but its configuration or certificate "
                      "changed since it read them")
        plan.steps = [Run(f"{run.command} && {stamp}", why="Dovecot re-reads its files")]
        plan.undo = [Run(run.command, why="back onto the restored files")]
    else:
        plan.found = f"master {master['pid']} runs the current configuration"
    return pending(stage, plan)


@operation("G22 Dovecot listens on exactly the configured addresses",
           offline=_describe_listening)
@when_wanted
async def verify_listening(stage) -> Outcome:
    if stage.dry_run and scratch(stage).get("pending"):
        return Outcome("", "skipped", "dry run: Dovecot would be set up or changed first")
    profile = stage.platform
    listen = listen_addresses(stage.params)
    protos = protocols(stage.params)
    expected = expected_sockets(listen, protos)
    ports = {p for pair in PORTS.values() for p in pair}
    named = [a for a in listen if a not in ("*", "::") and not is_ip(a)]
    for attempt in range(int(LISTEN_WAIT / 0.1)):
        master, sockets = await facts.read(stage, master_fact(stage), profile.listeners())
        pid = master["pid"]
        ours = {(s.address, s.port) for s in sockets if s.port in ports and s.pid == pid}
        strangers = [s for s in sockets if s.port in ports and s.pid != pid
                     and s.process not in LOGIN_PROCESSES.values()]
        good = pid is not None and not strangers and (
            {p for _, p in ours} == {p for _, p in expected} if named else ours == expected)
        if good or attempt == int(LISTEN_WAIT / 0.1) - 1:
            break
        facts.forget(stage)
        await asyncio.sleep(0.1)
    if pid is None:
        if stage.dry_run:
            return Outcome("", "skipped", "dry run: Dovecot is not running")
        raise OperationFailed("Dovecot's master process is not running; see the mail log "
                              f"({profile.mail_log_shown}) for why it stopped")
    evidence = "\n".join(f"{a}:{p} dovecot pid {pid}" for a, p in sorted(ours))
    if strangers:
        raise OperationFailed("other processes of this host also listen on Dovecot's ports: "
                              + ", ".join(f"{s.process} pid {s.pid} on {s.address}:{s.port}"
                                          for s in strangers)
                              + " (on Debian, is dovecot.socket enabled?)")
    if not good:
        raise OperationFailed(
            f"Dovecot (master {pid}) listens on {_pairs(ours) or 'nothing'}, but the "
            f"parameters want {_pairs(expected)}")
    return Outcome("", "ok", f"master {pid} listens on {_pairs(ours)}", evidence=evidence)


def _pairs(pairs) -> str:
    return ", ".join(f"{a}:{p}" for a, p in sorted(pairs))


@operation("G23 Dovecot stopped and off at boot (before the files go back)")
async def stop_for_rollback(stage) -> Plan:
    """Where the runbook set Dovecot up (its file is there): Dovecot stops, then no longer
    starts at boot, before 95-rollback puts the edited files back (which removes the
    runbook's Dovecot file). Otherwise Dovecot would, at its next start, listen with the
    package's defaults: every address. The package and the certificate stay, as Postfix's
    package does; a later run sets Dovecot up again from here."""
    profile = stage.platform
    text, master = await facts.read(stage, conf_fact(stage), master_fact(stage))
    plan = Plan("Dovecot stopped")
    if text is None:
        plan.found = f"{profile.dovecot_conf} is not there: the runbook did not set Dovecot up"
        return plan
    plan.found = (f"master {master['pid']} runs" if master["pid"] else
                  "Dovecot is not running")
    if master["pid"]:
        plan.steps.append(profile.dovecot_service("stop"))
        plan.undo = [profile.dovecot_service("start")]
    boot = await profile.dovecot_off_at_boot(stage)
    plan.steps += boot.steps
    plan.found += f"; {boot.skip or boot.found}"
    return plan


# --- what the stage reads, fetched in its first round trip --------------------------------------

def _prefetch(stage) -> list[Fact]:
    if not stage.params.dovecot.enabled:
        return []
    profile = stage.platform
    found = [delivery_fact(stage), conf_fact(stage), master_fact(stage), profile.listeners(),
             doveconf(stage), read_back(stage), *profile.prefetch("70-dovecot")]
    with contextlib.suppress(Exception):  # a platform without Dovecot, a half-given
        found += [profile.dovecot_packages(), profile.dovecot_boot()]  # certificate:
    with contextlib.suppress(Exception):  # the operation that needs it says so
        found.append(certificate_fact(stage))
    return found


facts.PREFETCH["70-dovecot"] = _prefetch
