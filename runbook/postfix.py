"""The guide's Postfix steps as named operations: what the stage notebooks call.

Each function is one step of the guide (its id in the operation's name, see
../shared/guide/STEPS.md): `await ensure_identity(stage)` in a cell is guide step G9.
The platform profile (`stage.platform`) supplies what differs between systems; everything
here is the same on every platform. Every operation is recorded, reported ok / changed /
failed / skipped, and undone with its stage if the stage fails (see operations.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import ipaddress
import secrets
from datetime import UTC, datetime
from email.utils import format_datetime
from shlex import quote as q

from . import dovecot, facts, files, probes
from .facts import Fact
from .operations import (
    OperationFailed,
    Outcome,
    Plan,
    Run,
    Write,
    active_lines,
    after_restore,
    comment_out,
    operation,
    same_value,
    set_aliases,
    set_main_cf,
)
from .probes import SMTP, ProbeFailed

LIST_SETTINGS = frozenset({"mydestination", "mynetworks", "inet_interfaces", "alias_maps",
                           "alias_database", "parent_domain_matches_subdomains"})
# main.cf settings by guide step, in the guide's order.
IDENTITY = ("mydomain", "myhostname", "myorigin", "mydestination")  # G9
LISTEN = ("inet_interfaces",)
TRUST = ("mynetworks", "mynetworks_style")  # G10
ALIASES = ("alias_maps", "alias_database")  # G11
PARENT = ("parent_domain_matches_subdomains",)  # G12
DB_SUFFIX = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb", "dbm": ".pag"}
LOG_WAIT = 30.0  # seconds the log may take to show the test message delivered
BASELINE = f"{files.BACKUP_ROOT}/{files.BASELINE}"  # each edited file before its first edit
CRONTAB_LISTING = "crontab-l.root"  # in BASELINE: `crontab -l` before G7's first edit


# --- what is wanted (pure) -------------------------------------------------------------------

def wanted_settings(params, profile) -> dict[str, str]:
    """Every main.cf value the runbook sets, in the guide's order."""
    p = params.postfix
    alias_maps = p.alias_maps or profile.aliases_table
    return {
        "mydomain": p.mydomain,
        "myhostname": p.myhostname,
        "myorigin": p.myorigin,
        "mydestination": ", ".join(p.mydestination),
        "inet_interfaces": ", ".join(p.inet_interfaces),
        "mynetworks": " ".join(p.mynetworks),
        "mynetworks_style": p.mynetworks_style,
        "alias_maps": alias_maps,
        "alias_database": p.alias_database or alias_maps,
        "parent_domain_matches_subdomains": " ".join(p.parent_domain_matches_subdomains),
        **dovecot.postfix_settings(params),  # Maildir delivery when Dovecot reads Maildir
        **p.extra_settings,
    }


def differing(current: dict[str, str], wanted: dict[str, str]) -> dict[str, str]:
    """The wanted settings whose current value means something else."""
    return {k: v for k, v in wanted.items()
            if not same_value(current.get(k), v, as_list=k in LIST_SETTINGS)}


def alias_source(table: str) -> tuple[str, str, str | None]:
    """(type, source file, database file or None) of an alias table like hash:/etc/aliases."""
    kind, _, path = table.partition(":")
    suffix = DB_SUFFIX.get(kind)
    return kind, path, (path + suffix) if suffix else None


def expand(value: str, params) -> str:
    """$myhostname / $mydomain references replaced by the parameters' values."""
    p = params.postfix
    for name, real in (("myhostname", p.myhostname), ("mydomain", p.mydomain)):
        value = value.replace("${" + name + "}", real).replace("$" + name, real)
    return value


def test_address(params) -> str:
    """The test recipient at a domain this server delivers locally (G17)."""
    domains = [expand(d, params) for d in params.postfix.mydestination]
    domain = params.postfix.myhostname if params.postfix.myhostname in domains else (
        domains[0] if domains else "localhost")
    return f"{params.postfix.test_recipient}@{domain}"


def smtp_address(interfaces: list[str]) -> str:
    """Where a client on the server itself reaches Postfix (the guide: telnet localhost)."""
    for item in interfaces:
        if item not in ("all", "loopback-only", "localhost"):
            return item
    return "127.0.0.1"


def expected_listeners(interfaces: list[str], protocols: list[str]) -> tuple[set, set]:
    """(addresses that must listen, addresses that may) for inet_interfaces/inet_protocols;
    a host name can only be checked by the port."""
    v4 = any(p in ("all", "ipv4") for p in protocols)
    v6 = any(p in ("all", "ipv6") for p in protocols)
    must, may = set(), set()
    for item in interfaces:
        if item == "all":
            must |= {"0.0.0.0", "*"} & ({"0.0.0.0", "*"} if v4 else set())
            may |= {"0.0.0.0", "*", "::"}
        elif item in ("loopback-only", "localhost"):
            must.add("127.0.0.1")
            may |= {"127.0.0.1", "::1"} if v6 else {"127.0.0.1"}
        else:
            must.add(item)
            may.add(item)
    return must, may


# --- state shared by a stage's cells -----------------------------------------------------------

def _state(stage) -> dict:
    return facts.scratch(stage).setdefault("postfix", {})


def _profile(stage):
    return stage.platform


def _main_cf(stage) -> Fact:
    return facts.file(f"{_profile(stage).config_dir}/main.cf")


def _postconf_n(stage) -> Fact:
    return facts.postconf_n(_profile(stage).postconf)


NOT_INSTALLED = "dry run: Postfix is not installed yet (the install stage would install it)"


async def _postfix_values(stage) -> dict[str, str] | None:
    """The effective values of `_effective`; None only in a dry run on a host without
    Postfix (the operation then says it would follow the install)."""
    values = await facts.read_one(stage, _effective(stage))
    if values is None and not stage.dry_run:
        raise OperationFailed("Postfix is not installed on this host: run the install stage "
                              "(10-install) first")
    return values


def _pid(stage) -> Fact:
    return facts.master_pid(_profile(stage).queue_dir)


def _effective(stage) -> Fact:
    """The values Postfix uses (defaults included) for where it listens and whom it trusts."""
    return facts.postconf_values(_profile(stage).postconf,
                                 ("inet_interfaces", "inet_protocols", "mynetworks"))


def _alias_facts(stage) -> list[Fact]:
    table = wanted_settings(stage.params, _profile(stage))["alias_database"]
    _kind, source, database = alias_source(table)
    return [facts.file(source)] + ([facts.newer(database, source)] if database else [])


def _prefetch(stage_name: str, generic) -> None:
    facts.PREFETCH[stage_name] = lambda stage: (
        _profile(stage).prefetch(stage_name) + generic(stage))


@after_restore
def _rebuild_aliases(stage, restored: list[str]) -> list[Run]:
    """After a restore the alias database must match the restored aliases file again."""
    table = wanted_settings(stage.params, _profile(stage))["alias_database"]
    _kind, source, database = alias_source(table)
    if database and source in restored:
        return [Run(f"{q(_profile(stage).tool('postalias'))} {q(table)}",
                    why="the alias database follows the restored aliases file")]
    return []


# --- 10-install ------------------------------------------------------------------------------

@operation("G1 install Postfix (services held until configured)")
async def install(stage) -> Plan:
    """G1: Postfix, a syslog daemon writing the mail log, and a mail reader, installed
    without any service starting."""
    return await _profile(stage).install(stage)


@operation("G2 Postfix documentation in a local web root (optional)")
async def publish_docs(stage) -> Plan:
    return await _profile(stage).publish_docs(stage, _docs_dir(stage))


def _docs_dir(stage) -> str | None:
    directory = stage.params.postfix.html_docs_dir
    return str(directory) if directory else None


# --- 20-enable -------------------------------------------------------------------------------

@operation("G3 Postfix is the system mailer")
async def ensure_system_mailer(stage) -> Plan:
    return await _profile(stage).system_mailer(stage)


@operation("G4 previous mail server off at boot")
async def ensure_previous_mta_off_at_boot(stage) -> Plan:
    return await _profile(stage).previous_mta_off_at_boot(stage)


@operation("G5 log socket inside Postfix's chroot")
async def ensure_chroot_log_socket(stage) -> Plan:
    return await _profile(stage).chroot_log_socket(stage)


@operation("G6 Postfix starts at boot")
async def ensure_postfix_at_boot(stage) -> Plan:
    return await _profile(stage).postfix_on_at_boot(stage)


@operation("G7 previous mail server's queue runner commented out in root's crontab")
async def ensure_queue_runner_commented(stage) -> Plan:
    profile = _profile(stage)
    text = await facts.read_one(stage, profile.queue_runner_crontab())
    plan = Plan("G7 queue runner in root's crontab")
    if text is None:
        plan.found = "root has no crontab"
        return plan
    lines = active_lines(text, profile.queue_runner)
    if not lines:
        commented = [line for line in text.splitlines() if line.lstrip().startswith("#")
                     and active_lines(line.lstrip("# \t"), profile.queue_runner)]
        plan.found = ("already commented out: " + "; ".join(commented) if commented
                      else "no queue runner of another mail server in root's crontab")
        return plan
    plan.found = "active: " + "; ".join(lines)
    plan.steps = [
        Run(f"B={q(BASELINE)}; [ -e \"$B/{CRONTAB_LISTING}\" ] || {{ umask 077; mkdir -p \"$B\" "
            f"&& crontab -u root -l > \"$B/{CRONTAB_LISTING}\"; }}",
            why="root's crontab as `crontab -l` prints it before the first edit, to compare "
                "with after going back"),
        Write(profile.crontab_file, text, comment_out(text, profile.queue_runner),
              why="commented, not deleted: going back stays a one-character edit")]
    return plan


@operation("G8 system logger re-reads its configuration")
async def ensure_syslog_reloaded(stage) -> Plan:
    return await _profile(stage).syslog_reload(stage)


# --- 30-configure ----------------------------------------------------------------------------

@operation("postconf -n before the changes",
           offline=lambda stage: [f"$ {_profile(stage).postconf} -n    # shown, to compare "
                                  "with the end of the stage"])
async def current_settings(stage) -> Outcome:
    """What main.cf sets now (kept to show the difference at the end of the stage)."""
    settings = await facts.read_one(stage, _postconf_n(stage))
    if settings is None:
        return Outcome("", "skipped", "Postfix is not installed yet (the install stage "
                       "installs it)")
    _state(stage)["before"] = settings
    return Outcome("", "ok", f"{len(settings)} settings", evidence=_postconf_text(settings))


async def _main_cf_plan(stage, name: str, keys: tuple[str, ...] | None = None,
                        settings: dict[str, str] | None = None) -> Plan:
    wanted = wanted_settings(stage.params, _profile(stage))
    settings = settings if settings is not None else {k: wanted[k] for k in keys}
    path = f"{_profile(stage).config_dir}/main.cf"
    text = await facts.read_one(stage, _main_cf(stage))
    plan = Plan(name)
    if text is None and not stage.dry_run:
        raise OperationFailed(f"{path} does not exist: Postfix is not installed or was "
                              "installed without a configuration — run the install stage")
    current = facts.parse_main_cf(text or "")
    change = differing(current, settings)
    plan.found = "; ".join(f"{k} = {current.get(k, '(default)')}" for k in settings)
    if change:
        plan.steps = [Write(path, text, set_main_cf(text or "", change),
                            why="set " + ", ".join(change)), _profile(stage).settle(path)]
    return plan


@operation("G9 main.cf: myhostname, mydomain, myorigin, mydestination")
async def ensure_identity(stage) -> Plan:
    return await _main_cf_plan(stage, "G9 identity", IDENTITY)


@operation("main.cf: inet_interfaces (where Postfix listens)")
async def ensure_listen_addresses(stage) -> Plan:
    return await _main_cf_plan(stage, "inet_interfaces", LISTEN)


@operation("G10 main.cf: mynetworks, mynetworks_style (who may relay)")
async def ensure_trusted_networks(stage) -> Plan:
    return await _main_cf_plan(stage, "G10 trusted networks", TRUST)


@operation("G11 alias database: alias_maps, alias_database, entries, postalias")
async def ensure_aliases(stage) -> Plan:
    """main.cf names the alias table, the aliases file holds the entries, and the database
    is rebuilt only when the file changed or the database is missing or older."""
    profile = _profile(stage)
    table = wanted_settings(stage.params, profile)["alias_database"]
    _kind, source, database = alias_source(table)
    plan = await _main_cf_plan(stage, "G11 aliases", ALIASES)
    text, *fresh_db = await facts.read(stage, *_alias_facts(stage))
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


@operation("G12 main.cf: parent_domain_matches_subdomains set explicitly")
async def ensure_parent_domain_matching(stage) -> Plan:
    return await _main_cf_plan(stage, "G12 parent domain matching", PARENT)


@operation("main.cf: further settings (postfix.extra_settings; Maildir delivery for Dovecot)")
async def ensure_extra_settings(stage) -> Plan:
    extra = dovecot.postfix_settings(stage.params) | stage.params.postfix.extra_settings
    plan = await _main_cf_plan(stage, "extra settings", settings=extra)
    if not extra:
        plan.found = "none given"
    return plan


@operation("postconf -n after the changes, as a diff",
           offline=lambda stage: [f"$ {_profile(stage).postconf} -n    # shown as a diff "
                                  "against the start of the stage"])
async def settings_diff(stage) -> Outcome:
    """`postconf -n` now, as a diff against the start of the stage."""
    after = await facts.read_one(stage, _postconf_n(stage))
    before = _state(stage).get("before")
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


# --- 40-start --------------------------------------------------------------------------------

@operation("G14 postfix check: no complaints", undo_run_on_failure=True,
           offline=lambda stage: [
               f"$ {_profile(stage).postfix_check()}",
               "# must print nothing and exit 0; otherwise every file this run edited is put "
               "back and the stage stops, before anything is stopped or started"])
async def check_postfix(stage) -> Outcome:
    """`postfix check` must print nothing and succeed; otherwise every file this run edited
    is restored and the stage stops, before anything is stopped or started."""
    profile = _profile(stage)
    if not await _installed(stage):
        return Outcome("", "skipped", "Postfix is not installed yet")
    result = await stage.run(profile.postfix_check(), check=False)
    said = (result.stdout + result.stderr).replace("\r", "").strip()
    if result.exit_status != 0 or said:
        raise OperationFailed(
            f"postfix check complained (exit {result.exit_status}):\n{said}\n"
            "Fix what it names; the files this run edited were put back as they were")
    return Outcome("", "ok", "no complaints")


@operation("G15 postconf -n: every setting as intended", undo_run_on_failure=True,
           offline=lambda stage: [
               f"$ {_profile(stage).postconf} -n    # must show each of these, and no "
               "'unused parameter' warning:",
               *(f"#   {k} = {v}" for k, v in
                 wanted_settings(stage.params, _profile(stage)).items())])
async def review_settings(stage) -> Outcome:
    """The settings Postfix actually reads, compared with the wanted ones; an unknown
    parameter name in main.cf (a typo) fails here too."""
    profile = _profile(stage)
    if not await _installed(stage):
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
    return Outcome("", "ok", detail, evidence="\n".join(lines))


@operation("G13 previous mail server stopped", undo_run_on_failure=True)
async def stop_previous_mta(stage) -> Plan:
    return await _profile(stage).stop_previous_mta(stage)


@operation("G16 Postfix started (or reloaded onto a changed configuration)",
           undo_run_on_failure=True)
async def start_postfix(stage) -> Plan:
    profile = _profile(stage)
    pid, stale = await facts.read(stage, _pid(stage), _stale(stage))
    files = " ".join(q(f"{profile.config_dir}/{f}") for f in ("main.cf", "master.cf"))
    stamp = (f"mkdir -p {q(profile.state_dir)} && cksum {files} > {q(profile.loaded_stamp)}")
    plan = Plan("G16 start Postfix")
    if pid is None:
        start = profile.start_postfix()
        plan.found = "Postfix is not running"
        plan.steps = [Run(f"{start.command} && {stamp}", why=start.why, effect=start.effect)]
        plan.undo = [Run(f"{q(profile.postfix)} stop", why="it was not running before")]
    elif stale:
        plan.found = f"master {pid} runs, but main.cf or master.cf changed since it read them"
        plan.steps = [Run(f"{q(profile.postfix)} reload && {stamp}",
                          why="the master re-reads main.cf and master.cf")]
        plan.undo = [Run(f"{q(profile.postfix)} reload", why="back onto the restored files")]
    else:
        plan.found = f"master {pid} runs the current configuration"
    return plan


def _stale(stage) -> Fact:
    """Whether main.cf / master.cf differ from what the running master read. When the
    runbook (re)loaded it last, its stamp holds the files' checksums as they were then;
    when something else started it later (a boot), the files must not be newer."""
    profile = _profile(stage)
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
    profile = _profile(stage)
    interfaces = stage.params.postfix.inet_interfaces
    must, _may = expected_listeners(interfaces, ["all"])
    where = "every address" if "all" in interfaces else ", ".join(sorted(must))
    return [f"$ {profile.listeners().command}",
            f"# the master (pid in {profile.queue_dir}/pid/master.pid) listens on port 25 at "
            f"{where} (inet_interfaces = {', '.join(interfaces)}), and nowhere else"]


@operation("master runs and port 25 listens on exactly the configured addresses",
           undo_run_on_failure=True, offline=_describe_listening)
async def verify_listening(stage) -> Outcome:
    profile = _profile(stage)
    values = await _postfix_values(stage)
    if values is None:
        return Outcome("", "skipped", NOT_INSTALLED)
    interfaces = facts.split_words(values.get("inet_interfaces", ""))
    protocols = facts.split_words(values.get("inet_protocols", "all"))
    must, may = expected_listeners(interfaces, protocols)
    for attempt in range(20):  # after a reload the master re-binds in the background
        pid, sockets = await facts.read(stage, _pid(stage),
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
                              f"({profile.mail_log}) for why it stopped")
    if not good:
        raise OperationFailed(
            f"port 25 of master {pid} listens on {sorted(ours) or 'nothing'}, but "
            f"inet_interfaces = {', '.join(interfaces)} wants {sorted(must)}"
            + (f"\nport 25 sockets seen:\n{evidence}" if evidence else ""))
    return Outcome("", "ok", f"master {pid} listens on {', '.join(sorted(ours))} port 25",
                   evidence=evidence)


async def _installed(stage) -> bool:
    return await facts.read_one(stage, _postconf_n(stage)) is not None


# --- 50-validate -----------------------------------------------------------------------------

def _describe_smtp_session(stage) -> list[str]:
    p = stage.params.postfix
    address = smtp_address(p.inet_interfaces)
    return [f"# SMTP to {address}:25 from the server itself (a TCP connection through the "
            "SSH session, as the guide's telnet localhost smtp):",
            f"#   220 greeting, EHLO {p.myhostname}, MAIL FROM:<root@{p.myhostname}>, "
            f"RCPT TO:<{test_address(stage.params)}>, DATA 354, a message whose subject is "
            "unique to the run, 250 queued as ID, QUIT 221"]


@operation("G17 SMTP session from the server itself", offline=_describe_smtp_session)
async def send_test_message(stage) -> Outcome:
    """The guide's hand-typed SMTP session, through the SSH connection to the server's own
    SMTP port: greeting, EHLO, MAIL FROM, RCPT TO, DATA, the message, QUIT."""
    params = stage.params
    if stage.dry_run:
        return Outcome("", "skipped", "dry run: no test message is sent")
    values = await _postfix_values(stage)
    if values is None:
        return Outcome("", "skipped", NOT_INSTALLED)
    address = smtp_address(facts.split_words(values["inet_interfaces"]))
    recipient = test_address(params)
    token = secrets.token_hex(4)
    subject = f"mail-runbook {token} test of run {stage.run_id}"
    message_id = f"{stage.run_id}.{token}@{params.postfix.myhostname}"
    sender = f"root@{params.postfix.myhostname}"
    reader, writer = await stage.target.open_connection(address, 25)
    smtp = SMTP(reader, writer)
    try:
        await smtp.greeting()
        ehlo = await smtp.command(f"EHLO {params.postfix.myhostname}", (250,))
        await smtp.command(f"MAIL FROM:<{sender}>", (250,))
        await smtp.command(f"RCPT TO:<{recipient}>", (250,))
        message = probes.test_message(
            sender=sender, recipient=recipient, subject=subject, message_id=message_id,
            date=format_datetime(datetime.now(UTC)), run_id=stage.run_id)
        queued = await smtp.data(message)
        qid = probes.queue_id(queued)
        await smtp.quit()
    finally:
        with contextlib.suppress(Exception):
            writer.close()
        stage.audit.record("probe", host=stage.target.host, protocol="smtp",
                           transcript=smtp.transcript, via="ssh tunnel", address=address)
    extensions = [line[4:] for line in ehlo.lines[1:]]
    sent = {"queue_id": qid, "subject": subject, "recipient": recipient,
            "message_id": message_id}
    _state(stage)["sent"] = sent
    return Outcome("", "ok", f"queued as {qid} for {recipient} "
                   f"(EHLO listed {', '.join(extensions)})", evidence=smtp.shown(), value=sent)


@operation("G18 the mail log follows the queue id to status=sent",
           offline=lambda stage: [
               f"$ {probes.follow_log_command(q(_profile(stage).mail_log), 'QUEUEID', LOG_WAIT)}",
               "# QUEUEID from G17: its client, from, to, relay=local, status=sent, removed "
               f"(waits up to {LOG_WAIT:.0f} s)"])
async def follow_mail_log(stage) -> Outcome:
    sent = _state(stage).get("sent")
    if sent is None:
        return Outcome("", "skipped", "no test message was sent in this stage")
    log = _profile(stage).mail_log
    qid = sent["queue_id"]
    result = await stage.run(probes.follow_log_command(q(log), qid, LOG_WAIT), check=False,
                             timeout=LOG_WAIT + 15, stream=False)
    delivery = probes.parse_queue_log(result.stdout, qid)
    shown = "\n".join(delivery.lines)
    if delivery.status != "sent":
        why = (f"status={delivery.status} {delivery.status_text}" if delivery.status
               else f"no delivery line within {LOG_WAIT:.0f} s")
        raise OperationFailed(
            f"{log} does not show {qid} delivered ({why}):\n{shown or '(no lines)'}")
    return Outcome("", "ok", f"{qid}: to=<{', '.join(delivery.recipients)}>, relay="
                   f"{delivery.relay}, status=sent" + (", removed" if delivery.removed else ""),
                   evidence=shown, value=delivery)


def _mail_listing(profile, user: str) -> str:
    """The guide's `mail -u USER`, showing the newest header line and leaving with `x`."""
    return f"printf 'f $\\nx\\n' | {profile.mail_reader} -N -u {q(user)}"


def _mailbox(stage) -> str:
    user = stage.params.postfix.test_recipient
    return f"~{user}/Maildir" if dovecot.postfix_settings(stage.params) else (
        f"{_profile(stage).mailbox_dir}/{user}")


def _mailbox_tail(mailbox: str) -> str:
    """The end of an mbox (tail only reads: the mailbox is left as it was)."""
    return f"tail -c 1048576 {q(mailbox)}"


@operation("G19 the recipient's mailbox holds the message (read without changing it)",
           offline=lambda stage: [
               *(f"$ {command}" for command in _mailbox_reads(stage, "<G17's subject>")),
               "# the message with G17's subject is in the mailbox, which is left as it was"])
async def read_mailbox(stage) -> Outcome:
    """The guide's `mail -u USER`, told to show the newest message's header line and leave
    with `x` (no change to the mailbox); then the message itself, read from the end of the
    mailbox file (tail only reads)."""
    sent = _state(stage).get("sent")
    if sent is None:
        return Outcome("", "skipped", "no test message was sent in this stage")
    profile, mailbox = _profile(stage), _mailbox(stage)
    *listing, read = _mailbox_reads(stage, sent["subject"])
    listed = [await stage.run(command, check=False, stream=False) for command in listing]
    result = await stage.run(read, stream=False, quiet=True)
    message = probes.find_message(result.stdout, sent["subject"])
    if message is None:
        raise OperationFailed(f"{mailbox} has no message with subject {sent['subject']!r}, "
                              "though the log says it was delivered")
    token = sent["subject"].split()[1]
    seen = [line for r in listed for line in r.stdout.splitlines() if token in line]
    shown = (f"{profile.mail_reader} -u shows: {seen[0].strip()}" if seen else
             f"({profile.mail_reader} -u did not list it: {listed[0].stdout.strip()[-200:]})"
             if listed else f"found in {mailbox}/{message.get_unixfrom().split(':', 1)[-1]}")
    return Outcome("", "ok", f"{mailbox}: {sent['subject']}",
                   evidence=shown + "\n\n" + probes.show_message(message), value=message)


def _mailbox_reads(stage, subject: str) -> list[str]:
    """The commands that show the message without changing the mailbox: the guide's
    `mail -u` and the mbox's tail; a Maildir (which mail(1) cannot read) by its file."""
    user = stage.params.postfix.test_recipient
    if not dovecot.postfix_settings(stage.params):
        return [_mail_listing(_profile(stage), user), _mailbox_tail(_mailbox(stage))]
    # the user name is validated ([a-z_][a-z0-9_.-]*), so ~user may stay unquoted
    return [f"cd ~{user}/Maildir && f=$(grep -lF -- {q('Subject: ' + subject)} new/* cur/* "
            f"2>/dev/null | tail -n 1) && echo \"From maildir:$f\" && cat \"$f\""]


# --- 60-harden -------------------------------------------------------------------------------

@operation("G20 files Postfix's chrooted services need, current")
async def ensure_chroot_files(stage) -> Plan:
    profile = _profile(stage)
    states = await facts.read_one(stage, _chroot_copies(stage))
    differ = [f for f, state in states.items() if state == "differs"]
    plan = Plan("G20 chroot files", found=", ".join(f"{f}: {s}" for f, s in states.items()))
    if differ:
        queue = q(profile.queue_dir)
        copies = "; ".join(f"cp /{q(f)} {queue}/{q(f)}" for f in differ)
        plan.steps = [Run(f"umask 022; mkdir -p {queue}/etc && {copies}",
                          why="the chrooted services see these copies, not /etc",
                          effect=lambda host: [host.add(f"{profile.queue_dir}/{f}")
                                               for f in differ])]
    return plan


def _chroot_copies(stage) -> Fact:
    """For each file the chroot needs: same, differs (from /etc) or nosource."""
    profile = _profile(stage)
    names = " ".join(q(f) for f in profile.chroot_files)
    queue = q(profile.queue_dir)
    command = (f"for f in {names}; do if [ ! -f \"/$f\" ]; then echo \"nosource $f\"; "
               f"elif [ \"$(cksum < \"/$f\")\" = \"$(cksum < {queue}/\"$f\" 2>/dev/null)\" ]; "
               "then echo \"same $f\"; else echo \"differs $f\"; fi; done")

    def fresh(host):
        def state(name):
            source, copy = f"/{name}", f"{profile.queue_dir}/{name}"
            if not host.exists(source):
                return "nosource"
            same = host.exists(copy) and host.read(source) == host.read(copy)
            return "same" if same else "differs"
        return {name: state(name) for name in profile.chroot_files}

    return Fact("chroot copies", command, lambda out, _s: {
        name: state for state, _, name in (line.partition(" ") for line in out.splitlines())},
        fresh)


@operation("G21/G10 mynetworks reviewed: not wider than the parameters",
           offline=lambda stage: [
               f"$ {_effective(stage).command}",
               "# every mynetworks entry lies within postfix.mynetworks ("
               f"{', '.join(stage.params.postfix.mynetworks)}); none is the whole Internet"])
async def review_mynetworks(stage) -> Outcome:
    values = await _postfix_values(stage)
    if values is None:
        return Outcome("", "skipped", NOT_INSTALLED)
    entries = facts.split_words(values["mynetworks"])
    allowed = [facts.network_of(n) for n in stage.params.postfix.mynetworks]
    problems, lines = [], []
    for entry in entries:
        network = facts.network_of(entry)
        if network is None:
            problems.append(f"{entry}: not an address, cannot be judged here — list "
                            "networks in postfix.mynetworks instead")
        elif network.prefixlen == 0:
            problems.append(f"{entry} trusts every address on the Internet: an open relay")
        elif not any(a and a.version == network.version and network.subnet_of(a)
                     for a in allowed):
            problems.append(f"{entry} is wider than postfix.mynetworks "
                            f"({', '.join(stage.params.postfix.mynetworks)}) allows")
        else:
            lines.append(f"{entry}: {network.num_addresses} address(es), as the parameters say")
    if problems:
        raise OperationFailed("mynetworks trusts more than intended:\n  " + "\n  ".join(problems))
    return Outcome("", "ok", f"mynetworks = {' '.join(entries)}", evidence="\n".join(lines),
                   value=entries)


def _describe_relay_probe(stage) -> list[str]:
    p = stage.params.postfix
    named = [i for i in p.inet_interfaces if i not in ("all", "loopback-only", "localhost")]
    if not named and "all" not in p.inet_interfaces:
        return ["# skipped: Postfix listens on loopback only"]
    address = named[0] if named else stage.params.target.host
    source = f"from {p.probe_source}" if p.probe_source else "from an address outside mynetworks"
    return [f"# from this machine straight to {address}:25 ({source}, not through SSH): EHLO, "
            "MAIL FROM:<probe@relay-probe.invalid>, RCPT TO:<relay-test@relay-target.invalid>",
            "#   must be refused (454 or 554); 250 would be an open relay. QUIT after RCPT"]


@operation("G21 open-relay probe from outside mynetworks", offline=_describe_relay_probe)
async def probe_open_relay(stage) -> Outcome:
    """From this machine straight to the server's port 25 (not through SSH: the server
    trusts its own connections), ask to relay to a .invalid domain; quit after RCPT."""
    params = stage.params
    values, pid = await _postfix_values(stage), await facts.read_one(stage, _pid(stage))
    if values is None:
        return Outcome("", "skipped", NOT_INSTALLED)
    if pid is None and stage.dry_run:
        return Outcome("", "skipped", "dry run: Postfix is not running")
    interfaces = facts.split_words(values["inet_interfaces"])
    networks = [n for n in map(facts.network_of, facts.split_words(values["mynetworks"])) if n]
    named = [i for i in interfaces if i not in ("all", "loopback-only", "localhost")]
    if not named and "all" not in interfaces:
        return Outcome("", "skipped", "Postfix listens on loopback only: no client on "
                       "another host can reach it to relay")
    address = named[0] if named else params.target.host
    source = params.postfix.probe_source
    if source and _inside(source, networks):
        raise OperationFailed(f"postfix.probe_source {source} is inside mynetworks: a probe "
                              "from there proves nothing — name an address outside it")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            address, 25, local_addr=(source, 0) if source else None), probes.TIMEOUT)
    except OSError as e:
        raise OperationFailed(f"cannot reach {address} port 25 from here"
                              f"{' (source ' + source + ')' if source else ''}: {e}") from None
    used = writer.get_extra_info("sockname")[0]
    smtp = SMTP(reader, writer)
    try:
        if _inside(used, networks):
            raise OperationFailed(
                f"this machine reaches {address} from {used}, which is inside mynetworks: "
                "the probe would prove nothing from here — set postfix.probe_source to an "
                "address of this machine outside mynetworks")
        await smtp.greeting()
        await smtp.command("EHLO relay-probe.invalid", (250,))
        await smtp.command("MAIL FROM:<probe@relay-probe.invalid>", (250,))
        reply = await smtp.command("RCPT TO:<relay-test@relay-target.invalid>")
        await smtp.quit()
    finally:
        with contextlib.suppress(Exception):
            writer.close()
        stage.audit.record("probe", host=address, protocol="smtp", transcript=smtp.transcript,
                           via=f"direct from {used}", purpose="open relay")
    if reply.code == 250:
        raise OperationFailed(f"OPEN RELAY: {address} accepted mail for another domain from "
                              f"{used}:\n{smtp.shown()}")
    if reply.code not in probes.RELAY_REFUSED:
        raise ProbeFailed(f"RCPT was answered {reply.code}, not a relay refusal (454/554), so "
                          f"the probe shows nothing about relaying:\n{smtp.shown()}")
    return Outcome("", "ok", f"relay refused from {used}: {reply.lines[-1]}",
                   evidence=smtp.shown(), value=reply.code)


def _inside(address: str, networks) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip.version == n.version and ip in n for n in networks)


# --- 90-troubleshoot (read only) ---------------------------------------------------------------

async def _show(stage, command: str, what: str) -> Outcome:
    result = await stage.run(command, check=False, stream=False)
    text = (result.stdout + result.stderr).rstrip()
    return Outcome("", "ok", what, evidence=text or "(nothing)")


@operation("G24 the settings Postfix reads (postconf -n)")
async def show_settings(stage) -> Outcome:
    return await _show(stage, f"{q(_profile(stage).postconf)} -n", "non-default settings")


@operation("G24 the mail queue")
async def show_queue(stage) -> Outcome:
    return await _show(stage, f"{q(_profile(stage).tool('postqueue'))} -p", "queued messages")


@operation("G24 the end of the mail log")
async def show_mail_log(stage, lines: int = 40) -> Outcome:
    log = _profile(stage).mail_log
    return await _show(stage, f"tail -n {int(lines)} {q(log)}", f"last {lines} lines of {log}")


@operation("G24 DNS as Postfix sees it (the chroot's resolv.conf)")
async def show_dns(stage) -> Outcome:
    profile = _profile(stage)
    chroot = q(f"{profile.queue_dir}/etc/resolv.conf")
    host = q(stage.params.postfix.myhostname)
    return await _show(stage, (
        f"echo '# /etc/resolv.conf'; cat /etc/resolv.conf; echo '# {chroot}'; "
        f"cat {chroot} 2>&1; cmp -s /etc/resolv.conf {chroot} && echo '# the same' || "
        f"echo '# DIFFERENT: chrooted services resolve with the copy'; "
        f"echo '# {host}'; getent hosts {host} || echo '(does not resolve)'"),
        "resolver configuration, host and chroot")


@operation("G24 who listens on the mail ports")
async def show_listeners(stage) -> Outcome:
    sockets = await facts.read_one(stage, _profile(stage).listeners())
    mail = [s for s in sockets if s.port in (25, 465, 587, 143, 993)]
    return Outcome("", "ok", f"{len(mail)} mail socket(s)", evidence="\n".join(
        f"{s.address}:{s.port} {s.process} pid {s.pid}" for s in mail) or "(none)")


@operation("G24 postfix check")
async def show_check(stage) -> Outcome:
    return await _show(stage, f"{_profile(stage).postfix_check()} && echo '(no complaints)'",
                       "postfix check")


# --- what each stage will read, fetched in its first round trip ---------------------------------

_STAGE_FACTS = {
    "10-install": lambda stage: _profile(stage).docs_facts(_docs_dir(stage)),
    "20-enable": lambda stage: [_profile(stage).queue_runner_crontab()],
    "30-configure": lambda stage: [_postconf_n(stage), _main_cf(stage), *_alias_facts(stage)],
    "40-start": lambda stage: [_postconf_n(stage), _pid(stage), _stale(stage), _effective(stage)],
    "50-validate": lambda stage: [_effective(stage)],
    "60-harden": lambda stage: [_chroot_copies(stage), _effective(stage), _pid(stage)],
}
for _name, _generic in _STAGE_FACTS.items():
    _prefetch(_name, _generic)


# --- 95-rollback (G23): going back to the mail server the host had ----------------------------



def _baseline(stage) -> Fact:
    """Each path the runbook ever edited on this host, against the copy kept before its first
    edit: [(path, "same" | "differs", kept)] — kept False: the path did not exist then."""
    command = (f"B={q(BASELINE)}; TAB=$(printf '\\t'); [ -f \"$B/MANIFEST\" ] || exit 0\n"
               "while IFS=\"$TAB\" read -r p sum name mode owner; do\n"
               "  if [ \"$name\" = - ]; then if [ -e \"$p\" ]; then s=differs; else s=same; fi\n"
               "  elif cmp -s \"$B/$name\" \"$p\"; then s=same; else s=differs; fi\n"
               "  printf '%s\\t%s\\t%s\\n' \"$s\" \"$name\" \"$p\"\n"
               "done < \"$B/MANIFEST\"")

    def parse(out: str, status: int) -> list[tuple[str, str, bool]]:
        if status != 0:
            raise facts.FactError(f"reading {BASELINE}/MANIFEST failed (exit {status})")
        rows = [line.split("\t", 2) for line in out.splitlines() if line.count("\t") == 2]
        return [(path, state, name != "-") for state, name, path in rows]
    return Fact("the baseline", command, parse, fresh=[])


def _show_baseline(rows) -> str:
    return "\n".join(f"{state:8} {path}" + ("" if kept else "    (did not exist before)")
                     for path, state, kept in rows) or "(the runbook never edited a file here)"


@operation("G23 what the runbook changed on this host",
           offline=lambda stage: [f"$ {_baseline(stage).command.splitlines()[0]} …",
                                  "# each file the runbook edited, against the copy kept in "
                                  f"{BASELINE} before its first edit"])
async def show_changes(stage) -> Outcome:
    rows = await facts.read_one(stage, _baseline(stage))
    differ = [path for path, state, _ in rows if state == "differs"]
    return Outcome("", "ok", f"{len(rows)} file(s) edited by the runbook, {len(differ)} differ "
                   "from before its first run", evidence=_show_baseline(rows), value=rows)


@operation("G23 Postfix stopped")
async def stop_postfix_for_rollback(stage) -> Plan:
    pid = await facts.read_one(stage, _pid(stage))
    plan = Plan("G23 Postfix stopped",
                found=f"master {pid} runs" if pid else "Postfix is not running")
    if pid:
        stop = _profile(stage).stop_postfix()
        plan.steps = [Run(stop.command, why=stop.why,
                          effect=lambda host: host.running.discard("postfix"))]
    return plan


@operation("G23 Postfix off at boot")
async def postfix_off_at_boot(stage) -> Plan:
    return await _profile(stage).postfix_off_at_boot(stage)


@operation("G23 the system mailer as before (postfix-disable)")
async def restore_system_mailer(stage) -> Plan:
    return await _profile(stage).restore_system_mailer(stage)


@operation("G23 every file the runbook edited, as before its first run")
async def restore_edited_files(stage) -> Plan:
    """Every path in the baseline put back (a path that did not exist is removed), then the
    alias database rebuilt from the restored aliases file."""
    rows = await facts.read_one(stage, _baseline(stage))
    differ = [path for path, state, _ in rows if state == "differs"]
    plan = Plan("G23 edited files restored", found=(
        f"differ from before the first run: {', '.join(differ)}" if differ else
        "every edited file is as before the first run" if rows else
        "the runbook never edited a file here"))
    if not differ:
        return plan
    plan.steps = [Run(files.RESTORE_SCRIPT.format(folder=q(BASELINE), only="''"),
                      why=f"the copies kept in {BASELINE} before each file's first edit")]
    plan.steps += _rebuild_aliases(stage, differ)
    return plan


@operation("G23 the previous mail server runs again")
async def previous_mta_back(stage) -> Plan:
    return await _profile(stage).previous_mta_back(stage)


def _crontab_check(stage) -> str:
    """`crontab -l` now against what it printed before G7's first edit (kept then)."""
    return (f"B={q(BASELINE)}; [ -e \"$B/{CRONTAB_LISTING}\" ] || exit 0; "
            f"if crontab -u root -l 2>/dev/null | cmp -s - \"$B/{CRONTAB_LISTING}\"; "
            "then echo same; else echo differs; fi")


@operation("G23 every edited file byte for byte as before the first run",
           offline=lambda stage: [f"$ {_baseline(stage).command.splitlines()[0]} …",
                                  f"$ {_crontab_check(stage)}",
                                  "# every file the same as its copy from before the first "
                                  "edit; root's crontab also as `crontab -l` prints it"])
async def verify_restored(stage) -> Outcome:
    facts.forget(stage)
    rows = await facts.read_one(stage, _baseline(stage))
    crontab = (await stage.run(_crontab_check(stage), check=False, stream=False,
                               quiet=True)).stdout.strip()
    differ = [path for path, state, _ in rows if state == "differs"]
    evidence = _show_baseline(rows)
    if crontab:
        evidence += f"\n{crontab:8} crontab -l (root), against its copy from before"
    if differ or crontab == "differs":
        raise OperationFailed("not as before the first run: "
                              + ", ".join(differ + (["crontab -l"] if crontab == "differs"
                                                    else []))
                              + f"\n{evidence}")
    return Outcome("", "ok", f"{len(rows)} file(s) byte for byte as before the first run",
                   evidence=evidence)


_prefetch("95-rollback", lambda stage: [_pid(stage), _baseline(stage)])
