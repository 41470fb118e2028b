"""Platform profiles: detection, the Debian profile's facts parsers and plans."""

from __future__ import annotations

import asyncio

import pytest
from stagefakes import Stage, install_files

from runbook import facts, platforms, postfix
from runbook.operations import OperationFailed
from runbook.platforms import UnsupportedPlatform

DEBIAN_OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


def run(coro):
    return asyncio.run(coro)


def test_identify():
    assert platforms.identify("Linux 6.1.0-28-amd64", DEBIAN_OS_RELEASE) == ("debian", "12")
    assert platforms.identify("OpenBSD 7.6", "") == ("openbsd", "7.6")
    assert platforms.identify("Linux 6.8", 'ID=ubuntu\nVERSION_ID="24.04"\n') == (
        "ubuntu", "24.04")


def test_choose_debian_12_and_refuse_the_rest_with_a_reason():
    profile = platforms.choose("debian", "12")
    assert isinstance(profile, platforms.Debian) and profile.postconf == "/usr/sbin/postconf"
    with pytest.raises(UnsupportedPlatform, match=r"Debian 13 is not supported"):
        platforms.choose("debian", "13")
    with pytest.raises(UnsupportedPlatform, match=r"ubuntu 24\.04 is not a platform"):
        platforms.choose("ubuntu", "24.04")
    with pytest.raises(UnsupportedPlatform, match="openbsd"):
        platforms.choose("openbsd", "7.6")


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
    stage = Stage({"dpkg packages": {}})
    plan = run(stage.platform.install(stage))
    policy, debconf, apt = plan.steps
    assert "exit 101" in policy.command and "policy-rc.d" in policy.command
    assert debconf.command == "debconf-set-selections"
    assert "postfix/mailname string mail.deb1.test" in debconf.input
    assert apt.command.endswith("postfix rsyslog bsd-mailx")
    assert "DEBIAN_FRONTEND=noninteractive" in apt.command
    assert "rm -f /usr/sbin/policy-rc.d" in plan.cleanup[0].command


def test_debian_install_needs_nothing_when_each_role_is_filled(monkeypatch):
    stage = Stage({"dpkg packages": {"postfix": True, "syslog-ng-core": True, "s-nail": True}})
    assert run(stage.platform.install(stage)).empty


def test_install_failure_still_removes_the_policy(monkeypatch):
    install_files(monkeypatch)
    stage = Stage({"dpkg packages": {}}, fail="apt-get install")
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
    assert [s.command for s in run(stage.platform.previous_mta_off_at_boot(stage)).steps] == [
        "systemctl disable exim4"]
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
