"""Platform profiles: detection, the Debian profile's facts parsers and plans."""

from __future__ import annotations

import asyncio

import pytest
from stagefakes import Stage, install_files

from runbook import platforms
from runbook.ops import facts
from runbook.ops.operations import OperationFailed
from runbook.platforms import UnsupportedPlatform
from runbook.platforms.debian import apt as debian_apt
from runbook.services import postfix

NO_HOLD = facts.file(debian_apt.POLICY_RC_D).name  # no policy-rc.d left behind

DEBIAN_OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


def run(coro):
    return asyncio.run(coro)


def test_identify():
    assert platforms.identify("Linux 6.1.0-28-amd64", DEBIAN_OS_RELEASE) == ("debian", "12")
    assert platforms.identify("OpenBSD 7.6", "") == ("openbsd", "7.6")
    assert platforms.identify("Linux 6.8", 'ID=ubuntu\nVERSION_ID="24.04"\n') == (
        "ubuntu", "24.04")


def test_choose_debian_12_or_13_and_refuse_the_rest_with_a_reason():
    profile = platforms.choose("debian", "12")
    assert isinstance(profile, platforms.Debian) and profile.postconf == "/usr/sbin/postconf"
    assert platforms.choose("debian", "13").label == "Debian 13"
    with pytest.raises(UnsupportedPlatform, match=r"Debian 14 is not supported"):
        platforms.choose("debian", "14")
    with pytest.raises(UnsupportedPlatform, match=r"ubuntu 24\.04 is not a platform"):
        platforms.choose("ubuntu", "24.04")
    with pytest.raises(UnsupportedPlatform, match=r"OpenBSD 4\.9 is not supported"):
        platforms.choose("openbsd", "4.9")


def test_parameters_name_the_platform_when_not_auto():
    assert platforms.choose("debian", "12", "debian", "12").release == "12"
    with pytest.raises(UnsupportedPlatform, match=r"give platform\.release"):
        platforms.choose("debian", "12", "openbsd", None)


def test_detect_reads_uname_and_os_release_in_one_command():
    stage = Stage(replies={"uname -sr": "Linux 6.1.0\n@@os-release\n" + DEBIAN_OS_RELEASE})
    profile = run(platforms.detect(stage))
    assert profile.label == "Debian 12" and len(stage.commands) == 1
    stage = Stage(replies={"uname -sr": "Linux 6.1.0\n@@os-release\nID=debian\nVERSION_ID=11\n"},
                  platform={"name": "auto", "release": None})
    with pytest.raises(UnsupportedPlatform, match=r"127\.0\.0\.11: Debian 11"):
        run(platforms.detect(stage))


def test_parse_dpkg_status_and_services():
    assert platforms.parse_dpkg_status("postfix ii \nrsyslog un \nbsd-mailx\n") == {
        "postfix": True, "rsyslog": False, "bsd-mailx": False}
    assert platforms.parse_pairs("postfix enabled\nexim4 absent\n") == {
        "postfix": "enabled", "exim4": "absent"}


def test_debian_install_plan_holds_services_and_always_removes_the_policy(monkeypatch):
    install_files(monkeypatch)
    stage = Stage({"dpkg packages": {}, NO_HOLD: None})
    plan = run(stage.platform.install(stage))
    wait, policy, debconf, apt = plan.steps
    assert "pgrep -x apt-get" in wait.command and "pgrep -x dpkg" in wait.command
    assert "exit 101" in policy.command and "policy-rc.d" in policy.command
    assert debconf.command == "debconf-set-selections"
    assert "postfix/mailname string mail.deb1.test" in debconf.input
    assert apt.command.endswith("postfix rsyslog bsd-mailx")
    assert "DEBIAN_FRONTEND=noninteractive" in apt.command
    assert "rm -f /usr/sbin/policy-rc.d" in plan.cleanup[0].command


def test_debian_install_needs_nothing_when_each_role_is_filled(monkeypatch):
    filled = {"postfix": True, "syslog-ng-core": True, "s-nail": True}
    stage = Stage({"dpkg packages": filled, NO_HOLD: None})
    assert run(stage.platform.install(stage)).empty


def test_a_policy_left_by_a_cut_install_is_removed_when_nothing_is_installed():
    left = "#!/bin/sh\n# mail-runbook: no service starts while it installs\nexit 101\n"
    stage = Stage({"dpkg packages": {"postfix": True, "rsyslog": True, "bsd-mailx": True},
                   NO_HOLD: left})
    plan = run(stage.platform.install(stage))
    assert [step.command for step in plan.steps] == [debian_apt.release_services().command]
    assert "cut short" in plan.found
    operator_s = Stage({"dpkg packages": {"postfix": True, "rsyslog": True, "bsd-mailx": True},
                        NO_HOLD: "#!/bin/sh\nexit 0\n"})  # an operator's own policy stays
    assert run(operator_s.platform.install(operator_s)).empty


def test_install_failure_still_removes_the_policy(monkeypatch):
    install_files(monkeypatch)
    stage = Stage({"dpkg packages": {}, NO_HOLD: None}, fail="apt-get install")
    with pytest.raises(Exception, match="exited 1"):
        run(postfix.install(stage))
    assert "policy-rc.d" in stage.commands[-1] and "rm -f" in stage.commands[-1]


def test_system_mailer_must_be_postfixs(monkeypatch):
    stage = Stage({"sendmail owner": ("postfix: /usr/sbin/sendmail\n", 0),
                   "dpkg packages": {"postfix": True}})
    assert run(stage.platform.system_mailer(stage)).empty
    exim = {"sendmail owner": ("exim4-daemon-light: /usr/sbin/sendmail\n", 0),
            "dpkg packages": {}}
    with pytest.raises(OperationFailed, match="belongs to exim4-daemon-light"):
        stage = Stage(exim)
        run(stage.platform.system_mailer(stage))
    dry = Stage(exim, dry_run=True)
    assert "would install it" in run(dry.platform.system_mailer(dry)).skip


def test_previous_mta_disabled_and_stopped_only_when_there(monkeypatch):
    stage = Stage({"services at boot": {"exim4": "enabled", "postfix": "enabled"},
                   "services running": {"exim4": "active", "postfix": "inactive"}})
    remember, disable = run(stage.platform.previous_mta_off_at_boot(stage)).steps
    assert disable.command == "systemctl disable exim4"
    assert "exim4" in remember.command and "previous-mta" in remember.command
    stop = run(stage.platform.stop_previous_mta(stage))
    assert [s.command for s in stop.steps] == ["systemctl stop exim4"]
    assert [s.command for s in stop.undo] == ["systemctl start exim4"]
    stage = Stage({"services at boot": {"exim4": "absent"}})
    assert run(stage.platform.previous_mta_off_at_boot(stage)).empty


def test_chroot_log_socket_and_syslog_reload():
    line = "$AddUnixListenSocket /var/spool/postfix/dev/log\n"
    known = {"dpkg packages": {"rsyslog": True}, "file /etc/rsyslog.d/postfix.conf": line,
             "services running": {"rsyslog": "inactive"},
             "test -S /var/spool/postfix/dev/log": False}
    stage = Stage(known)
    assert run(stage.platform.chroot_log_socket(stage)).empty
    assert run(stage.platform.syslog_reload(stage)).commands == ["systemctl enable --now rsyslog"]
    stage = Stage(known | {"file /etc/rsyslog.d/postfix.conf": None})
    (write,) = run(stage.platform.chroot_log_socket(stage)).steps
    assert write.new.endswith("$AddUnixListenSocket /var/spool/postfix/dev/log\n")
    stage = Stage(known | {"services running": {"rsyslog": "active"},
                           "test -S /var/spool/postfix/dev/log": True})
    assert run(stage.platform.syslog_reload(stage)).empty


def test_offline_plan_of_a_fresh_debian_host():
    """What `runbook plan` (a later issue) builds on: the same operations, fresh facts."""
    stage = Stage()
    stage.offline = True
    facts.forget(stage)
    plan = run(stage.platform.install(stage))
    assert "postfix" in plan.steps[-1].command and stage.commands == []


# --- OpenBSD ---------------------------------------------------------------------------------

OBSD50 = {"platform": {"name": "openbsd", "release": "5.0",
                       "postfix_package": "postfix-2.8.7-mysql"}}
OBSD76 = {"platform": {"name": "openbsd", "release": "7.6", "postfix_package": "postfix"}}
RC = "file /etc/rc.conf.local"
MAILER = ["file /etc/mailer.conf", "test -e /etc/mailer.conf.postfix",
          "test -e /etc/mailer.conf.pre-postfix"]
SENDMAIL_MAILER_CONF = ("sendmail\t/usr/libexec/sendmail/sendmail\n"
                        "mailq\t\t/usr/libexec/sendmail/sendmail\n")


def openbsd(known=None, release="5.0", **kwargs):
    return Stage(known or {}, **(OBSD50 if release == "5.0" else OBSD76), **kwargs)


def test_openbsd_profiles_by_release():
    guide = platforms.choose("openbsd", "5.0")
    assert isinstance(guide, platforms.OpenBSDRcConf) and guide.previous_mta == "sendmail"
    assert guide.postconf == "/usr/local/sbin/postconf" and guide.mail_log == "/var/log/maillog"
    assert guide.aliases_table == "hash:/etc/postfix/aliases" and guide.syslog_socket
    smtpd_era = platforms.choose("openbsd", "5.6")
    assert isinstance(smtpd_era, platforms.OpenBSDRcConf)
    assert smtpd_era.previous_mta == "smtpd" and not smtpd_era.syslog_socket
    today = platforms.choose("openbsd", "7.6")
    assert isinstance(today, platforms.OpenBSDRcctl) and today.previous_mta == "smtpd"
    assert today.aliases_table == "hash:/etc/mail/aliases"
    assert platforms.choose("openbsd", "5.7").label == "OpenBSD 5.7"


def test_detect_reads_the_openbsd_release_from_uname():
    stage = Stage(replies={"uname -sr": "OpenBSD 7.6\n@@os-release\n"},
                  platform={"name": "auto", "release": None})
    assert isinstance(run(platforms.detect(stage)), platforms.OpenBSDRcctl)


def test_pkg_add_takes_the_flavoured_package_from_the_parameters():
    stage = openbsd({"postfix package": []})
    (step,) = run(stage.platform.install(stage)).steps
    assert step.command == "pkg_add postfix-2.8.7-mysql"
    stage = openbsd({"postfix package": ["postfix-2.8.7-mysql"]})
    assert run(stage.platform.install(stage)).empty


def test_postfix_enable_swaps_mailer_conf_once():
    mailer = dict(zip(MAILER, [SENDMAIL_MAILER_CONF, True, False], strict=True))
    stage = openbsd(mailer | {"postfix package": ["postfix-2.8.7-mysql"]})
    plan = run(stage.platform.system_mailer(stage))
    assert plan.steps[0].command == "/usr/local/sbin/postfix-enable"
    assert "/usr/local/sbin/sendmail" in plan.steps[1].command  # postfix-enable exits 0 anyway
    assert plan.undo[0].command == "/usr/local/sbin/postfix-disable"
    done = dict(zip(MAILER, ["sendmail\t/usr/local/sbin/sendmail\n", False, True], strict=True))
    stage = openbsd(done | {"postfix package": ["postfix"]})
    plan = run(stage.platform.system_mailer(stage))
    assert plan.empty and "pre-postfix" in plan.found
    lost = dict(zip(MAILER, [SENDMAIL_MAILER_CONF, False, False], strict=True))
    stage = openbsd(lost | {"postfix package": ["postfix"]})
    with pytest.raises(OperationFailed, match=r"mailer\.conf\.postfix is missing"):
        run(stage.platform.system_mailer(stage))


async def _enable_rc_conf(stage, text):
    """G4, G5, G6 in order against rc.conf.local `text`; the file after each write."""
    for step in (stage.platform.previous_mta_off_at_boot, stage.platform.chroot_log_socket,
                 stage.platform.postfix_on_at_boot):
        facts.cache(stage)[RC] = text
        for write in (await step(stage)).writes:
            text = write.new
    return text


def test_rc_conf_local_gets_the_guides_three_lines_in_its_order_and_only_once():
    stage = openbsd()
    text = run(_enable_rc_conf(stage, None))
    assert text == ('sendmail_flags=NO\nsyslogd_flags="-a /var/spool/postfix/dev/log"\n'
                    'pkg_scripts="postfix"\n')
    assert run(_enable_rc_conf(openbsd(), text)) == text  # a second run changes nothing


def test_rc_conf_local_flags_and_scripts_already_there_are_kept():
    text = 'ntpd_flags=-s\nsyslogd_flags="-u"\npkg_scripts="dbus_daemon cupsd"\n'
    after = run(_enable_rc_conf(openbsd(), text))
    assert after == ('ntpd_flags=-s\nsyslogd_flags="-u -a /var/spool/postfix/dev/log"\n'
                     'pkg_scripts="dbus_daemon cupsd postfix"\nsendmail_flags=NO\n')
    for key in ("sendmail_flags", "syslogd_flags", "pkg_scripts"):
        assert sum(line.startswith(key + "=") for line in after.splitlines()) == 1


def test_syslogd_socket_hup_then_restart_only_when_missing():
    stage = openbsd({"test -S /var/spool/postfix/dev/log": False,
                     RC: 'syslogd_flags="-u -a /var/spool/postfix/dev/log"\n'})
    hup, restart = run(stage.platform.syslog_reload(stage)).steps
    assert hup.command == "kill -HUP $(cat /var/run/syslog.pid)"
    assert "/etc/rc.d/syslogd restart" in restart.command  # where there is one, else as rc:
    assert "syslogd -u -a /var/spool/postfix/dev/log; fi" in restart.command
    stage = openbsd({"test -S /var/spool/postfix/dev/log": True})
    assert run(stage.platform.syslog_reload(stage)).empty
    today = openbsd(release="7.6")
    assert "sendsyslog(2)" in run(today.platform.syslog_reload(today)).skip
    assert "sendsyslog(2)" in run(today.platform.chroot_log_socket(today)).skip


def test_sendmail_stopped_through_its_pid_file_and_started_again_on_failure():
    stage = openbsd({"sendmail pid": 4242})
    plan = run(stage.platform.stop_previous_mta(stage))
    assert plan.steps[0].command.startswith("pid=$(head -1 /var/run/sendmail.pid) && kill")
    assert plan.undo[0].command == ("/usr/libexec/sendmail/sendmail -L sm-mta "
                                    "-C/etc/mail/localhost.cf -bd -q30m")
    stage = openbsd({"sendmail pid": None})
    assert run(stage.platform.stop_previous_mta(stage)).empty


def test_rcctl_keeps_rc_conf_local_before_it_rewrites_it():
    stage = openbsd({"rcctl ls on": {"smtpd", "sshd"}, "smtpd running": True}, release="7.6")
    keep, disable = run(stage.platform.previous_mta_off_at_boot(stage)).steps
    assert keep.path == "/etc/rc.conf.local" and disable.command == "rcctl disable smtpd"
    keep, enable = run(stage.platform.postfix_on_at_boot(stage)).steps
    assert enable.command == "rcctl enable postfix"
    stop = run(stage.platform.stop_previous_mta(stage))
    assert stop.commands == ["rcctl stop smtpd"] and stop.undo[0].command == "rcctl -f start smtpd"
    assert stage.platform.start_postfix().command == "rcctl start postfix"
    stage = openbsd({"rcctl ls on": {"postfix", "sshd"}}, release="7.6")
    assert run(stage.platform.previous_mta_off_at_boot(stage)).empty
    assert run(stage.platform.postfix_on_at_boot(stage)).empty


def test_queue_runner_commented_as_the_guide_shows(monkeypatch):
    install_files(monkeypatch)
    crontab = (platforms.STOCK / "openbsd-5.0/base/var/cron/tabs/root").read_text()
    stage = openbsd({"file /var/cron/tabs/root": crontab})
    capture, write = run(postfix.ensure_queue_runner_commented.__wrapped__(stage)).steps
    assert "crontab -u root -l >" in capture.command  # as `crontab -l` prints it, kept
    assert "#*/30\t*\t*\t*\t*\t/usr/sbin/sendmail -L sm-msp-queue -Ac -q\n" in write.new
    assert write.new.count("\n") == crontab.count("\n")


def test_mailer_conf_program():
    text = (platforms.STOCK / "openbsd-5.0/base/etc/mailer.conf").read_text()
    assert platforms.mailer_conf_program(text) == "/usr/libexec/sendmail/sendmail"
    assert platforms.mailer_conf_program(text, "makemap") == "/usr/libexec/sendmail/makemap"
    assert platforms.mailer_conf_program("# sendmail x\n") is None


def test_debian_13_reads_its_mail_log_from_the_journal_and_adds_no_syslog_daemon():
    twelve, thirteen = platforms.choose("debian", "12"), platforms.choose("debian", "13")
    assert twelve.mail_log == "/var/log/mail.log" and not twelve.mail_log_reader
    assert twelve.mail_log_tail(5) == "tail -n 5 /var/log/mail.log"
    assert thirteen.mail_log_reader.startswith("journalctl ")
    assert "SYSLOG_FACILITY=2" in thirteen.mail_log_tail(5)
    assert "journal" in thirteen.mail_log_shown
    assert "syslog" in twelve.INSTALLS and "syslog" not in thirteen.INSTALLS


def test_debian_postfix_check_notices_of_the_chroot_copies_are_no_complaints():
    profile = platforms.choose("debian", "13")
    said = ("updating /etc/hosts => /var/spool/postfix//etc/hosts\n"
            "postfix/postfix-script: warning: not owned by postfix: /var/spool/postfix/x")
    assert profile.check_complaints(said) == (
        "postfix/postfix-script: warning: not owned by postfix: /var/spool/postfix/x")
    notice = "updating /etc/services => /var/spool/postfix/etc/services"
    assert profile.check_complaints(notice) == ""
