"""The operations layer without SSH: text transforms, plans, apply / dry run / undo, and the
Postfix operations' plans from given facts."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stagefakes import Stage, install_files

from runbook.audit import Audit
from runbook.errors import CommandFailed
from runbook.ops import facts, operations
from runbook.ops.edits import (
    comment_out,
    get_shell_var,
    merge_words,
    parse_aliases,
    same_value,
    set_aliases,
    set_main_cf,
    set_shell_var,
)
from runbook.ops.operations import OperationFailed, Plan, Run, Write
from runbook.services import postfix

# --- text transforms -------------------------------------------------------------------------

DEBIAN_MAIN_CF = """\
# See /usr/share/postfix/main.cf.dist for a commented, more complete version
smtpd_banner = $myhostname ESMTP $mail_name (Debian/GNU)
biff = no
myhostname = deb1
alias_maps = hash:/etc/aliases
mydestination = $myhostname, deb1, localhost.localdomain,
    localhost
mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128
inet_interfaces = all
"""

names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
values = st.from_regex(r"[A-Za-z0-9$.:/_\[\]-]+( [A-Za-z0-9$.:/_,-]+){0,3}", fullmatch=True)
settings = st.dictionaries(names, values, max_size=5)
main_cf_text = st.lists(st.one_of(
    st.builds(lambda k, v: f"{k} = {v}\n", names, values),
    st.builds(lambda v: f"    {v}\n", values),
    st.just("# a comment\n"), st.just("\n")), max_size=8).map("".join)


def test_set_main_cf_replaces_in_place_and_drops_continuation_lines():
    new = set_main_cf(DEBIAN_MAIN_CF, {"mydestination": "$myhostname, localhost",
                                       "mydomain": "deb1.test"})
    assert new.splitlines()[5] == "mydestination = $myhostname, localhost"
    assert "    localhost" not in new
    assert new.endswith("inet_interfaces = all\nmydomain = deb1.test\n")
    assert facts.parse_main_cf(new)["mynetworks"] == "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128"


def test_set_main_cf_leaves_one_definition_of_a_key_defined_twice():
    text = "a = 1\nmynetworks = 10.0.0.0/8\nb = 2\nmynetworks = 0.0.0.0/0\n"
    assert set_main_cf(text, {"mynetworks": "127.0.0.1/32"}) == (
        "a = 1\nmynetworks = 127.0.0.1/32\nb = 2\n")


def test_set_main_cf_empty_value_and_missing_final_newline():
    assert set_main_cf("a = b", {"parent_domain_matches_subdomains": ""}) == (
        "a = b\nparent_domain_matches_subdomains =\n")


@given(main_cf_text, settings)
def test_set_main_cf_is_idempotent_and_sets_every_value(text, wanted):
    once = set_main_cf(text, wanted)
    assert set_main_cf(once, wanted) == once
    parsed = facts.parse_main_cf(once)
    for key, value in wanted.items():
        assert parsed[key] == value


def test_same_value_compares_lists_whatever_the_separators():
    assert same_value("$myhostname,localhost", "$myhostname, localhost")
    assert not same_value("localhost, $myhostname", "$myhostname, localhost")
    assert same_value("error:lab  hosts", "error:lab hosts", as_list=False)
    assert not same_value(None, "")


def test_aliases_file_entries_replaced_in_place_appended_or_left_alone():
    text = "# See man 5 aliases for format\npostmaster:    root\nroot: someone,\n  else\n"
    new = set_aliases(text, {"postmaster": ["root"], "root": ["mailtest"], "abuse": ["root"]})
    assert new == ("# See man 5 aliases for format\npostmaster:    root\nroot: mailtest\n"
                   "abuse: root\n")
    assert parse_aliases(text) == {"postmaster": ["root"], "root": ["someone", "else"]}
    assert set_aliases(new, {"postmaster": ["root"]}) is new


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True),
                       st.lists(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True),
                                min_size=1, max_size=3), max_size=4),
       st.sampled_from(["", "postmaster: root\n", "# c\nroot: a, b\n    c\n", "x: y"]))
def test_set_aliases_is_idempotent(aliases, text):
    once = set_aliases(text, aliases)
    assert set_aliases(once, aliases) == once
    parsed = parse_aliases(once)
    for name, targets in aliases.items():
        assert parsed[name] == targets


def test_shell_variables_in_rc_conf_local_style():
    text = "sendmail_flags=NO\n# syslogd_flags=ignored\n"
    text = set_shell_var(text, "syslogd_flags", "-a /var/spool/postfix/dev/log")
    assert text.endswith('syslogd_flags="-a /var/spool/postfix/dev/log"\n')
    assert get_shell_var(text, "syslogd_flags") == "-a /var/spool/postfix/dev/log"
    assert set_shell_var(text, "sendmail_flags", "NO") is text
    assert get_shell_var("pkg_scripts=postfix # boot\n", "pkg_scripts") == "postfix"


@given(st.sampled_from(["", "a=1\n", "x=y", 'k="old value"\n']),
       st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
       st.from_regex(r"[A-Za-z0-9 ./$\"'`\\-]{0,20}", fullmatch=True))
def test_set_shell_var_round_trips_and_is_idempotent(text, key, value):
    once = set_shell_var(text, key, value)
    assert set_shell_var(once, key, value) == once
    assert get_shell_var(once, key) == value


def test_merge_words_adds_a_flag_sequence_once():
    assert merge_words("-u", "-a /var/spool/postfix/dev/log") == "-u -a /var/spool/postfix/dev/log"
    assert merge_words("dbus_daemon postfix", "postfix") == "dbus_daemon postfix"
    assert merge_words(None, "postfix") == "postfix"


@given(st.lists(st.from_regex(r"[a-z/_-]{1,8}", fullmatch=True), max_size=5),
       st.lists(st.from_regex(r"[a-z/_-]{1,8}", fullmatch=True), min_size=1, max_size=2))
def test_merge_words_is_idempotent(have, add):
    once = merge_words(" ".join(have), " ".join(add))
    assert merge_words(once, " ".join(add)) == once


CRONTAB = """\
#minute\thour\tmday\tmonth\twday\tcommand
# sendmail clientmqueue runner
*/30\t*\t*\t*\t*\t/usr/sbin/sendmail -L sm-msp-queue -Ac -q
0\t3\t*\t*\t*\t/bin/sh /etc/daily
"""


def test_comment_out_keeps_the_line_and_is_idempotent():
    once = comment_out(CRONTAB, r"sendmail.*\s-q")
    assert "#*/30\t*\t*\t*\t*\t/usr/sbin/sendmail -L sm-msp-queue -Ac -q\n" in once
    assert "\n0\t3\t*" in once
    assert comment_out(once, r"sendmail.*\s-q") == once


# --- apply, dry run, approval, undo ----------------------------------------------------------

def run(coro):
    return asyncio.run(coro)


@operations.operation("test operation")
async def _planned(stage, plan):
    return plan


def _plan():
    return Plan("p", steps=[Run("first"), Write("/etc/x", "old\n", "new\n"), Run("second")],
                cleanup=[Run("cleanup")], undo=[Run("reverse")])


def test_apply_runs_steps_in_order_then_cleanup(monkeypatch):
    files = install_files(monkeypatch)
    stage = Stage()
    outcome = run(_planned(stage, _plan()))
    assert outcome.status == "changed"
    assert stage.commands == ["first", "second", "cleanup"]
    assert files.writes == [("/etc/x", b"new\n")]
    assert stage.results[0]["status"] == "changed"
    record = stage.audit.records[-1]
    assert record["type"] == "operation" and record["commands"] == ["first", "second", "cleanup"]


def test_dry_run_changes_nothing_and_shows_the_diff(monkeypatch, capsys):
    files = install_files(monkeypatch)
    stage = Stage(dry_run=True)
    outcome = run(_planned(stage, _plan()))
    assert outcome.status == "skipped" and stage.commands == [] and files.writes == []
    shown = capsys.readouterr().out
    assert "-old" in shown and "+new" in shown and "$ first" in shown


def test_empty_plan_is_ok_and_runs_nothing(monkeypatch):
    install_files(monkeypatch)
    stage = Stage()
    assert run(_planned(stage, Plan("p", found="as wanted"))).status == "ok"
    assert stage.commands == []


def test_declined_approval_skips(monkeypatch):
    files = install_files(monkeypatch)
    stage = Stage(mode="interactive")

    async def decline(stage, plan):
        return False

    from runbook.interactive import approval as interactive
    monkeypatch.setattr(interactive, "approve", decline)
    assert run(_planned(stage, _plan())).status == "skipped"
    assert files.writes == [] and stage.commands == []


def test_failure_restores_edited_files_runs_undo_and_cleanup_then_reraises(monkeypatch):
    files = install_files(monkeypatch)
    stage = Stage(fail="second")
    with pytest.raises(CommandFailed):
        run(_planned(stage, _plan()))
    assert files.restored == ["/etc/x"]
    assert stage.commands == ["first", "second", "cleanup", "reverse"]
    assert stage.results[-1]["status"] == "failed"
    failed = stage.audit.records[-1]
    assert failed["status"] == "failed" and failed["restored"] == ["/etc/x"]


def test_failure_in_a_later_operation_restores_earlier_edits_of_the_stage(monkeypatch):
    files = install_files(monkeypatch)
    stage = Stage()
    run(_planned(stage, Plan("a", steps=[Write("/etc/a", None, "a\n")])))

    @operations.operation("breaks")
    async def breaks(stage):
        raise OperationFailed("broken on purpose")

    with pytest.raises(OperationFailed):
        run(breaks(stage))
    assert files.restored == ["/etc/a"]


# --- the Postfix operations' plans from given facts ------------------------------------------

MAIN_CF = "file /etc/postfix/main.cf"
EFFECTIVE = "postconf inet_interfaces inet_protocols mynetworks"


def _configured_main_cf(stage) -> str:
    return set_main_cf(DEBIAN_MAIN_CF, postfix.wanted_settings(stage.params, stage.platform))


def test_wanted_settings_follow_the_parameters_and_the_platform():
    stage = Stage()
    wanted = postfix.wanted_settings(stage.params, stage.platform)
    assert wanted["alias_maps"] == wanted["alias_database"] == "hash:/etc/aliases"
    assert wanted["mydestination"] == "$myhostname, localhost.$mydomain, localhost, $mydomain"
    assert wanted["parent_domain_matches_subdomains"] == ""
    assert wanted["default_transport"] == "error:lab hosts never send mail"


def test_identity_plan_writes_only_the_differing_settings(monkeypatch):
    files = install_files(monkeypatch)
    stage = Stage({MAIN_CF: DEBIAN_MAIN_CF})
    outcome = run(postfix.ensure_identity(stage))
    assert outcome.status == "changed"
    (path, content), = files.writes
    assert stage.commands == ["touch -d '2 seconds ago' /etc/postfix/main.cf"]
    written = facts.parse_main_cf(content.decode())
    assert path == "/etc/postfix/main.cf"
    assert written["myhostname"] == "mail.deb1.test" and written["mydomain"] == "deb1.test"
    assert written["inet_interfaces"] == "all"  # another step's setting is left alone


def test_configured_main_cf_needs_nothing(monkeypatch):
    files = install_files(monkeypatch)
    stage = Stage()
    facts.cache(stage)[MAIN_CF] = _configured_main_cf(stage)
    for op in (postfix.ensure_identity, postfix.ensure_listen_addresses,
               postfix.ensure_trusted_networks, postfix.ensure_parent_domain_matching,
               postfix.ensure_extra_settings):
        assert run(op(stage)).status == "ok", op.operation_name
    assert files.writes == [] and stage.commands == []


def test_aliases_rebuilt_only_when_the_file_changed_or_the_database_is_stale(monkeypatch):
    files = install_files(monkeypatch)
    stage = Stage()
    configured = _configured_main_cf(stage)
    aliases = "postmaster: root\nroot: mailtest\n"
    facts.cache(stage).update({MAIN_CF: configured, "file /etc/aliases": aliases,
                               "/etc/aliases.db newer than /etc/aliases": True})
    assert run(postfix.ensure_aliases(stage)).status == "ok"
    facts.cache(stage).update({MAIN_CF: configured, "file /etc/aliases": "postmaster: root\n",
                               "/etc/aliases.db newer than /etc/aliases": True})
    assert run(postfix.ensure_aliases(stage)).status == "changed"
    assert files.writes == [("/etc/aliases", aliases.encode())]
    assert stage.commands == ["/usr/sbin/postalias hash:/etc/aliases"]


def test_crontab_queue_runner_is_commented_out(monkeypatch):
    files = install_files(monkeypatch)
    stage = Stage()
    facts.cache(stage)["file /var/spool/cron/crontabs/root"] = CRONTAB
    assert run(postfix.ensure_queue_runner_commented(stage)).status == "changed"
    assert files.writes[0][1].decode() == comment_out(CRONTAB, stage.platform.queue_runner)
    stage = Stage({"file /var/spool/cron/crontabs/root": None})
    assert run(postfix.ensure_queue_runner_commented(stage)).detail == "root has no crontab"


def test_start_postfix_starts_reloads_or_leaves_it(monkeypatch):
    install_files(monkeypatch)
    cases = [(None, False, "systemctl start postfix"), (812, True, "postfix reload"),
             (812, False, None)]
    for pid, stale, command in cases:
        stage = Stage({"master pid": pid, "configuration changed since the master read it": stale})
        outcome = run(postfix.start_postfix(stage))
        if command:
            assert outcome.status == "changed" and command in stage.commands[0]
            assert "> /var/lib/mail-runbook/postfix-loaded" in stage.commands[0]
        else:
            assert outcome.status == "ok" and stage.commands == []


def test_start_postfix_reloads_after_this_run_rewrote_main_cf(monkeypatch, tmp_path):
    """Edited by hand and reloaded by hand, main.cf put right again by this run matches the
    stamp; the master still runs the edit, so the run reloads."""
    install_files(monkeypatch)
    stage = Stage({"master pid": 812, "configuration changed since the master read it": False})
    stage.run_dir = tmp_path
    Audit(tmp_path, display=False).record("file_write", stage="30-configure",
                                          path="/etc/postfix/main.cf")
    outcome = run(postfix.start_postfix(stage))
    assert outcome.status == "changed" and "postfix reload" in stage.commands[0]
    other = Stage({"master pid": 812, "configuration changed since the master read it": False})
    other.run_dir = tmp_path / "other"
    Audit(other.run_dir, display=False).record("file_write", path="/etc/aliases")
    assert run(postfix.start_postfix(other)).status == "ok" and other.commands == []


def test_check_failure_restores_the_whole_run(monkeypatch):
    files = install_files(monkeypatch)
    files.writes.append(("/etc/postfix/main.cf", b"from the configure stage"))
    stage = Stage({"postconf -n": {"a": "b"}},
                  replies={"postfix check": (0, "postfix/postfix-script: warning: not owned "
                                             "by root: /etc/postfix/./master.cf\r\n", "")})
    with pytest.raises(OperationFailed, match="postfix check complained"):
        run(postfix.check_postfix(stage))
    assert files.restored == ["/etc/postfix/main.cf"]


def test_expected_listeners():
    assert postfix.expected_listeners(["127.0.0.11"], ["all"]) == ({"127.0.0.11"},
                                                                   {"127.0.0.11"})
    must, may = postfix.expected_listeners(["loopback-only"], ["all"])
    assert must == {"127.0.0.1"} and may == {"127.0.0.1", "::1"}


def test_test_address_and_smtp_address():
    stage = Stage()
    assert postfix.test_address(stage.params) == "mailtest@mail.deb1.test"
    assert postfix.smtp_address(["127.0.0.11"]) == "127.0.0.11"
    assert postfix.smtp_address(["all"]) == "127.0.0.1"


def test_relay_probe_refuses_a_source_inside_mynetworks(monkeypatch):
    install_files(monkeypatch)
    stage = Stage({EFFECTIVE: {"inet_interfaces": "127.0.0.11", "mynetworks": "127.0.0.0/8"},
                   "master pid": 812})
    with pytest.raises(OperationFailed, match="proves nothing"):
        run(postfix.probe_open_relay(stage))


def test_review_mynetworks_fails_when_wider_than_the_parameters(monkeypatch):
    install_files(monkeypatch)
    stage = Stage({EFFECTIVE: {"mynetworks": "127.0.0.0/8 [::1]/128"}})
    with pytest.raises(OperationFailed, match=r"wider than postfix\.mynetworks"):
        run(postfix.review_mynetworks(stage))
    stage = Stage({EFFECTIVE: {"mynetworks": "127.0.0.1/32 127.0.0.11"}})
    assert run(postfix.review_mynetworks(stage)).status == "ok"


# --- rc.conf.local as rcctl writes it; files kept before a command rewrites them -------------

def test_rcctl_edit_follows_rcctl_sh():
    from runbook.ops.edits import rcctl_edit

    text = rcctl_edit(None, "disable", "smtpd", base=True)
    assert text == "smtpd_flags=NO\n"
    text = rcctl_edit(text, "enable", "postfix", base=False)
    assert text == "pkg_scripts=postfix\nsmtpd_flags=NO\n"  # sort -u over the whole file
    assert rcctl_edit(text, "enable", "postfix", base=False) == text
    assert rcctl_edit("pkg_scripts=dbus_daemon\n", "enable", "postfix", base=False) == (
        "pkg_scripts=dbus_daemon postfix\n")
    assert rcctl_edit(text, "disable", "postfix", base=False) == "smtpd_flags=NO\n"
    assert rcctl_edit("smtpd_flags=NO\n", "enable", "smtpd", base=True) is None  # file removed
    assert rcctl_edit(None, "flags", "syslogd", "-a /chroot/dev/log", base=True) == (
        "syslogd_flags=-a /chroot/dev/log\n")
    assert rcctl_edit("syslogd_flags=-u\n", "flags", "syslogd", "", base=True) is None


def test_set_shell_var_quoted_as_the_guide_writes_pkg_scripts():
    assert set_shell_var("", "pkg_scripts", "postfix", quoted=True) == 'pkg_scripts="postfix"\n'
    assert set_shell_var("pkg_scripts=postfix\n", "pkg_scripts", "postfix", quoted=True) == (
        "pkg_scripts=postfix\n")  # already right: left as written


def test_keep_backs_the_file_up_before_a_command_rewrites_it(monkeypatch):
    from runbook.ops.operations import Keep

    files = install_files(monkeypatch)
    kept = []

    async def keep_file(stage, path):
        kept.append(path)

    monkeypatch.setattr(operations, "keep_file", keep_file)
    stage = Stage(fail="rcctl enable")
    plan = Plan("p", steps=[Keep("/etc/rc.conf.local"), Run("rcctl enable postfix")])
    files.writes.append(("/etc/rc.conf.local", b""))  # what backed_up_paths reports
    with pytest.raises(CommandFailed):
        run(_planned(stage, plan))
    assert kept == ["/etc/rc.conf.local"] and files.restored == ["/etc/rc.conf.local"]


def test_offline_operations_record_plans_and_change_the_imagined_host(monkeypatch):
    files = install_files(monkeypatch)
    stage = Stage()
    stage.offline = True
    stage.fresh = facts.FreshHost(files={"/etc/x": "old\n"})
    plan = Plan("p", steps=[Write("/etc/x", "old\n", "new\n"),
                            Run("make-y", effect=lambda host: host.write("/etc/y", "y\n"))])
    outcome = run(_planned(stage, plan))
    assert outcome.status == "changed" and stage.commands == [] and files.writes == []
    assert stage.fresh.read("/etc/x") == "new\n" and stage.fresh.read("/etc/y") == "y\n"
    (entry,) = operations.planned(stage)
    assert entry.changes == [[("/etc/x", "old\n", "new\n")], [("/etc/y", None, "y\n")]]

    @operations.operation("a check", offline=lambda stage: ["$ look"])
    async def check(stage):
        raise AssertionError("a check does not run offline")

    assert run(check(stage)).status == "ok"
    assert operations.planned(stage)[-1].check == ["$ look"]
