"""The emulated OpenBSD lab hosts (5.0 and 7.6) against real hosts: these need root.

They fail (never skip) when the lab cannot start. The hosts `lab up` hands out are left to
other users of the lab: these tests have two of their own, obsd28 (5.0) and obsd29 (7.6),
made afresh at the start of the module and shared between its tests.
What a host should look like comes from ../shared/openbsd-facts.md (OpenBSD's own files and
tools); docs/openbsd-emulation.md says how each piece is imitated.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
from pathlib import Path

import asyncssh
import pytest
import yaml

from runbook import lab, params
from runbook.errors import LabError

CHECKOUT = Path(__file__).resolve().parents[1]
MINE = {"5.0": "obsd28", "7.6": "obsd29"}  # the test module's own hosts
RELEASES = tuple(MINE)
SPOOL_LOG = "/var/spool/postfix/dev/log"

MAILER_CONF_50 = [
    "sendmail\t/usr/libexec/sendmail/sendmail",
    "send-mail\t/usr/libexec/sendmail/sendmail",
    "mailq\t\t/usr/libexec/sendmail/sendmail",
    "makemap\t\t/usr/libexec/sendmail/makemap",
    "newaliases\t/usr/libexec/sendmail/sendmail",
    "hoststat\t/usr/libexec/sendmail/sendmail",
    "purgestat\t/usr/libexec/sendmail/sendmail",
]
MAILER_CONF_76 = [
    "sendmail\t/usr/sbin/smtpctl",
    "send-mail\t/usr/sbin/smtpctl",
    "mailq\t\t/usr/sbin/smtpctl",
    "makemap\t\t/usr/sbin/smtpctl",
    "newaliases\t/usr/sbin/smtpctl",
]
MAILER_CONF_POSTFIX = (
    "sendmail\t/usr/local/sbin/sendmail\nsend-mail\t/usr/local/sbin/sendmail\n"
    "mailq\t\t/usr/local/sbin/sendmail\nnewaliases\t/usr/local/sbin/sendmail\n")
ENABLE_NOTES_50 = """\
old /etc/mailer.conf saved as /etc/mailer.conf.pre-postfix
postfix /etc/mailer.conf enabled

NOTE: do not forget to add sendmail_flags=NO to
      /etc/rc.conf.local to disable sendmail.

NOTE: do not forget to add "-a /var/spool/postfix/dev/log" to
      syslogd_flags in /etc/rc.conf.local and restart syslogd.

NOTE: do not forget to add postfix to pkg_scripts in
      /etc/rc.conf.local to start postfix automatically.

NOTE: do not forget to remove the "sendmail clientmqueue runner"
      from root's crontab.
"""


# --- talking to the hosts --------------------------------------------------------------------

async def _ssh(entry: dict, command: str, check: bool) -> asyncssh.SSHCompletedProcess:
    async with asyncssh.connect(
        entry["address"], port=entry["port"], username=entry["user"],
        client_keys=[entry["key_file"]], known_hosts=entry["known_hosts"],
        agent_path=None, config=[],
    ) as conn:
        return await conn.run(command, check=check)


def run(entry: dict, command: str, check: bool = True) -> asyncssh.SSHCompletedProcess:
    """Run `command` as the host's login user (root on 5.0, admin on 7.6), host key checked."""
    return asyncio.run(_ssh(entry, command, check))


def sh(entry: dict, command: str) -> str:
    return run(entry, command).stdout.strip()


def as_root(entry: dict, command: str, check: bool = True) -> asyncssh.SSHCompletedProcess:
    """Run `command` as root the way the params file says: doas -n on 7.6."""
    if entry["privilege"] == "doas":
        command = f"doas -n sh -c {shlex.quote(command)}"
    return run(entry, command, check)


def root(entry: dict, command: str) -> str:
    return as_root(entry, command).stdout.strip()


# --- the hosts -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hosts() -> dict[str, dict]:
    """release -> the test's own fresh host of that release."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root: they boot real target hosts (run `make test` as root)")
    return {release: lab.up_host(name, release, CHECKOUT, fresh=True)
            for release, name in MINE.items()}


@pytest.fixture(scope="module")
def installed(hosts) -> dict[str, dict]:
    """release -> what `pkg_add` of the params file's package printed, and the host just after."""
    after = {}
    for release, entry in hosts.items():
        package = params.load(entry["params_file"]).platform.postfix_package
        done = as_root(entry, f"pkg_add {package}", check=False)
        after[release] = {
            "package": package, "status": done.exit_status, "stdout": done.stdout,
            "stderr": done.stderr,
            "master": as_root(entry, "pgrep -x master || echo none").stdout,
            "listening": as_root(entry, f"ss -Hltnp 'src {entry['address']}:25'").stdout,
        }
    return after


def postfix_configured(entry: dict) -> None:
    """The least main.cf that lets this host's Postfix start and deliver to its mailbox."""
    address, name = entry["address"], entry["name"]
    root(entry, "postconf -e "
         f"myhostname=mail.{name}.test mydomain={name}.test inet_interfaces={address} "
         f"'mynetworks=127.0.0.1/32 {address}/32' "
         "'default_transport=error:lab hosts never send mail off this machine' "
         "'relay_transport=error:lab hosts never send mail off this machine' && "
         "grep -q '^root:' /etc/mail/aliases || echo 'root: mailtest' >> /etc/mail/aliases; "
         "/usr/local/sbin/postalias /etc/mail/aliases")


# --- without hosts ---------------------------------------------------------------------------

def test_an_openbsd_host_needs_a_release_the_lab_imitates():
    for release in (None, "6.9"):
        with pytest.raises(LabError, match=r"imitates release 5.0 or 7.6.*--release 5.0"):
            lab.up(1, CHECKOUT, flavor="openbsd", release=release)


def test_openbsd_hosts_share_one_name_range_and_keep_their_release(tmp_path, monkeypatch):
    monkeypatch.setattr(lab.config, "HOSTS", tmp_path)
    for name, release in (("obsd1", "5.0"), ("obsd3", "5.0"), ("obsd4", "7.6")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "host.json").write_text(f'{{"release": "{release}"}}')
    (tmp_path / "obsd2").mkdir()  # a host dir left half-made: its name is free again
    assert lab._host("obsd3").flavor == lab.config.OPENBSD_50
    assert lab._host("obsd4").flavor == lab.config.OPENBSD_76
    assert lab._host("obsd4").address == "127.0.0.44"
    names = {r: [h.name for h in lab._wanted(lab._flavor("openbsd", r), 3)] for r in RELEASES}
    assert names == {"5.0": ["obsd1", "obsd3", "obsd2"], "7.6": ["obsd4", "obsd2", "obsd5"]}
    assert [h.name for h in lab._wanted(lab.DEBIAN, 2)] == ["deb1", "deb2"]
    with pytest.raises(LabError, match="obsd1 … obsd29"):
        lab._host("obsd30")


def test_every_shim_says_it_is_an_emulation():
    files = [p for p in (lab.LABFILES / "openbsd").rglob("*") if p.is_file()]
    assert len(files) > 20
    unlabelled = [str(p.relative_to(lab.LABFILES)) for p in files
                  if "mail-runbook lab: OpenBSD emulation" not in p.read_text()
                  and p.name != "MESSAGE"]  # the package's own words, printed by pkg_add
    assert unlabelled == []
    scripts = [p for p in files if p.read_text().startswith("#!") and p.name != "rc.conf"]
    assert [str(p) for p in scripts if not os.access(p, os.X_OK)] == []


# --- booted hosts ----------------------------------------------------------------------------

@pytest.mark.lab
def test_both_releases_boot_and_accept_ssh_with_strict_host_keys(hosts):
    for release, entry in hosts.items():
        index = lab._host(entry["name"]).index
        assert entry["name"] == f"obsd{index}"
        assert entry["address"] == f"127.0.0.{40 + index}"
        assert (entry["flavor"], entry["release"], entry["emulated"]) == ("openbsd", release, True)
        assert entry["running"] and entry["mail_user"] == "mailtest"
        assert Path(entry["mail_password_file"]).stat().st_mode & 0o777 == 0o600
        assert sh(entry, "uname -sr; uname; uname -r") == f"OpenBSD {release}\nOpenBSD\n{release}"
        assert sh(entry, "test -e /etc/os-release || echo none") == "none"
        marker = sh(entry, "cat /etc/mail-runbook-emulation")
        assert "OpenBSD emulation" in marker and f"OPENBSD_RELEASE={release}" in marker
        assert sh(entry, "hostname") == entry["name"]
        assert sh(entry, "id -nG mailtest").split().count("mail") == 1
        assert root(entry, "stat -c '%U %G' /var/mail/mailtest") == "mailtest mail"
    old, new = hosts["5.0"], hosts["7.6"]
    assert (old["user"], old["privilege"]) == ("root", "none")
    assert (new["user"], new["privilege"]) == ("admin", "doas")
    assert sh(new, "doas -n id -u; doas -n uname -s") == "0\nOpenBSD"
    with pytest.raises(asyncssh.PermissionDenied):
        run({**new, "user": "root"}, "true")  # 7.x: root logs in only through doas


@pytest.mark.lab
def test_params_files_describe_each_era(hosts):
    for release, entry in hosts.items():
        data = yaml.safe_load(Path(entry["params_file"]).read_text())
        params.load(entry["params_file"])  # the params model accepts it
        assert data["target"]["user"] == entry["user"]
        assert data["target"]["privilege"] == entry["privilege"]
        assert data["target"]["host_key_policy"] == "strict"
        assert data["dovecot"] == {"listen": [entry["address"]],
                                   "test_password_file": entry["mail_password_file"]}
        package = "postfix-2.8.7-mysql" if release == "5.0" else "postfix"
        assert data["platform"] == {"name": "openbsd", "release": release,
                                    "postfix_package": package}
    guide = yaml.safe_load(Path(hosts["5.0"]["params_file"]).read_text())["postfix"]
    assert guide["alias_maps"] == guide["alias_database"] == "hash:/etc/postfix/aliases"
    assert guide["html_docs_dir"] == "/var/www/htdocs/manual/postfix"
    today = yaml.safe_load(Path(hosts["7.6"]["params_file"]).read_text())["postfix"]
    assert "alias_maps" not in today and "html_docs_dir" not in today


@pytest.mark.lab
def test_mailer_conf_is_the_eras_and_mailwrapper_reads_it(hosts):
    for release, entry in hosts.items():
        lines = [line for line in sh(entry, "cat /etc/mailer.conf").splitlines()
                 if line and not line.startswith("#")]
        assert lines == (MAILER_CONF_50 if release == "5.0" else MAILER_CONF_76)
        for name in ("/usr/sbin/sendmail", "/usr/bin/mailq", "/usr/bin/newaliases"):
            assert sh(entry, f"readlink {name}") == "/usr/sbin/mailwrapper"
        unmapped = run(entry, "ln -sf /usr/sbin/mailwrapper /tmp/unmapped && /tmp/unmapped",
                       check=False)
        who = "unmapped" if release == "5.0" else "mailwrapper"  # __progname changed in 2015
        assert (unmapped.exit_status, unmapped.stderr) == (
            1, f"{who}: no mapping in /etc/mailer.conf\n")


@pytest.mark.lab
def test_roots_crontab_holds_the_runner_only_in_the_sendmail_era(hosts):
    old = root(hosts["5.0"], "crontab -l").splitlines()
    assert old[-2:] == ["# sendmail clientmqueue runner",
                        "*/30\t*\t*\t*\t*\t/usr/sbin/sendmail -L sm-msp-queue -Ac -q"]
    assert old[:3] == ["SHELL=/bin/sh", "PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/var/log"]
    new = root(hosts["7.6"], "crontab -l")
    assert new.startswith("SHELL=/bin/sh\n")
    assert "# sendmail clientmqueue runner" not in new.splitlines()
    assert [line for line in new.splitlines() if "sendmail" in line and line[0] != "#"] == []
    # OpenBSD's path to it leads to the same file
    assert root(hosts["5.0"], "cat /var/cron/tabs/root").endswith(old[-1])


@pytest.mark.lab
def test_the_base_mta_and_syslogd_run_from_boot(hosts):
    old, new = hosts["5.0"], hosts["7.6"]
    pid, cmdline = root(old, "cat /var/run/sendmail.pid").splitlines()
    assert cmdline == "/usr/sbin/sendmail -L sm-mta -C/etc/mail/localhost.cf -bd -q30m"
    assert sh(old, f"ps -o args= -p {pid}") == "sendmail: accepting connections"
    assert sh(old, "/etc/rc.d/sendmail check") == "sendmail(ok)"
    with socket.create_connection((old["address"], 25), timeout=5) as probe:
        assert probe.recv(200).startswith(b"421 ")  # it holds the port; it takes no mail
    assert sh(new, "rcctl check smtpd; pgrep -xf /usr/sbin/smtpd >/dev/null && echo running") == (
        "smtpd(ok)\nrunning")
    for entry in (old, new):
        pid = root(entry, "cat /var/run/syslog.pid")
        assert sh(entry, f"ps -o args= -p {pid}") == "syslogd: [priv]"
        assert root(entry, "test -S /dev/log && echo socket") == "socket"
    # stopped the guide's way (G13) and today's, they are gone
    root(old, "kill -KILL $(head -1 /var/run/sendmail.pid)")
    assert root(new, "rcctl stop smtpd") == "smtpd(ok)"
    for entry, title in ((old, "^sendmail: accepting"), (new, "^/usr/sbin/smtpd$")):
        assert root(entry, f"sleep 0.2; pgrep -f '{title}' || echo gone") == "gone"


@pytest.mark.lab
def test_pkg_add_postfix_installs_prints_the_transcript_and_starts_nothing(hosts, installed):
    for release, entry in hosts.items():
        got = installed[release]
        assert got["status"] == 0, got["stderr"]
        name = got["package"] if release == "5.0" else got["stdout"].split(": ok")[0].split()[-1]
        assert name.startswith("postfix-")
        lines = got["stdout"].splitlines()
        assert lines[:7] == [
            "-> Creating /etc/mailer.conf.postfix",
            "-> Creating Postfix spool directory and chroot area under /var/spool/postfix",
            "-> Creating Postfix data directory under /var/postfix",
            "+---------------",
            "| Configuration files have been installed in /etc/postfix.",
            "| Please update these files to meet your needs.",
            "+---------------"]
        assert lines[7:11] == [
            f"{name}: ok",
            "The following new rcscripts were installed: /etc/rc.d/postfix",
            f"See {'rc.d(8)' if release == '5.0' else 'rcctl(8)'} for details.",
            f"--- +{name} -------------------"]
        assert lines[11] == "Postfix can be set up to replace sendmail entirely. Please read the"
        assert "    /usr/local/sbin/postfix-enable" in lines
        assert got["stderr"] == ""
        assert got["master"].strip() == "none"  # nothing started: port 25 is still the
        assert "master" not in got["listening"]  # base MTA's stand-in's
        assert root(entry, "cat /etc/mailer.conf.postfix") + "\n" == MAILER_CONF_POSTFIX
        assert sh(entry, f"pkg_info -e 'postfix-*'; pkg_info -qe {name} && echo yes") == (
            f"inst:{name}\nyes")
        assert sh(entry, "readlink /usr/sbin/sendmail") == "/usr/sbin/mailwrapper"
        assert set(sh(entry, "ls /usr/local/sbin").split()) >= {
            "mailq", "newaliases", "postalias", "postcat", "postconf", "postdrop", "postfix",
            "postfix-disable", "postfix-enable", "postfix-install", "postqueue", "sendmail"}
        assert sh(entry, "postconf -h alias_maps alias_database command_directory "
                         "daemon_directory data_directory mail_owner setgid_group").split() == [
            "hash:/etc/mail/aliases", "hash:/etc/mail/aliases", "/usr/local/sbin",
            "/usr/local/libexec/postfix", "/var/postfix", "_postfix", "_postdrop"]
        assert set(sh(entry, "ls /var/spool/postfix/etc").split()) >= {
            "hosts", "localtime", "resolv.conf", "services"}
        assert root(entry, "stat -c '%U %a' /var/postfix") == "_postfix 700"
        assert sh(entry, "ls /usr/local/share/doc/postfix/html").split()[0].endswith(".html")
        assert root(entry, "test -x /etc/rc.d/postfix && /etc/rc.d/postfix check; echo $?") == (
            "postfix(failed)\n1")
        assert root(entry, "script -qec '/usr/local/sbin/postfix check' /dev/null; echo $?") == "0"


@pytest.mark.lab
def test_postfix_enable_swaps_mailer_conf_once_and_keeps_the_old_one(hosts, installed):
    for release, entry in hosts.items():
        before = root(entry, "cat /etc/mailer.conf")
        first = as_root(entry, "/usr/local/sbin/postfix-enable")
        if release == "5.0":
            assert first.stdout == ENABLE_NOTES_50
        else:
            assert "NOTE: do not forget to add smtpd_flags=NO to" in first.stdout
            assert "clientmqueue" not in first.stdout
        assert root(entry, "cat /etc/mailer.conf.pre-postfix") == before
        assert root(entry, "cat /etc/mailer.conf") + "\n" == MAILER_CONF_POSTFIX
        second = as_root(entry, "/usr/local/sbin/postfix-enable")
        assert (second.exit_status, second.stdout) == (
            0, "can't find /etc/mailer.conf.postfix, postfix not enabled\n")
        # mailwrapper now runs Postfix's sendmail, which knows newaliases by its name
        assert root(entry, "newaliases && echo rebuilt") == "rebuilt"
    back = as_root(hosts["5.0"], "/usr/local/sbin/postfix-disable; "
                   "/usr/local/sbin/postfix-disable; echo $?; /usr/local/sbin/postfix-enable")
    assert back.stdout.splitlines()[:3] == [
        "postfix mailer.conf disabled, old mailer.conf enabled",
        "can't find /etc/mailer.conf.pre-postfix, postfix not disabled", "1"]


@pytest.mark.lab
def test_rcctl_writes_rc_conf_local_as_rcctl_does(hosts, installed):
    entry = hosts["7.6"]
    refused = run(entry, "rcctl enable postfix", check=False)
    assert (refused.exit_status, refused.stderr) == (
        1, 'rcctl: "enable" needs root privileges\n')
    missing = run(entry, "doas -n rcctl enable nosuchd", check=False)
    assert (missing.exit_status, missing.stderr) == (
        2, "rcctl: service nosuchd does not exist\n")
    contradiction = run(entry, "doas -n rcctl set syslogd flags NO", check=False)
    assert contradiction.stderr == 'rcctl: "flags NO" contradicts "set"\n'

    as_root(entry, "rm -f /etc/rc.conf.local; rcctl disable syslogd")
    assert root(entry, "cat /etc/rc.conf.local") == "syslogd_flags=NO"
    not_enabled = as_root(entry, f"rcctl set syslogd flags -a {SPOOL_LOG}", check=False)
    assert (not_enabled.exit_status, not_enabled.stderr) == (1, "rcctl: syslogd is not enabled\n")
    as_root(entry, "rcctl enable syslogd")
    assert root(entry, "test -e /etc/rc.conf.local || echo gone") == "gone"  # empty: deleted

    # a comment of the operator's sorts with the rest, as rcctl's `sort -u` does
    as_root(entry, "echo '# mine' > /etc/rc.conf.local")
    steps = ("rcctl enable postfix", "rcctl disable smtpd",
             f"rcctl set syslogd flags -a {SPOOL_LOG}")
    wanted = f"# mine\npkg_scripts=postfix\nsmtpd_flags=NO\nsyslogd_flags=-a {SPOOL_LOG}"
    for _ in range(2):  # idempotent
        for step in steps:
            as_root(entry, step)
        assert root(entry, "cat /etc/rc.conf.local") == wanted
    assert sh(entry, "rcctl get syslogd flags; rcctl get smtpd flags; rcctl get postfix status; "
                     "echo $?; rcctl ls on") == (
        f"-a {SPOOL_LOG}\nNO\n0\ncheck_quotas\nlibrary_aslr\npf\npostfix\nsyslogd")
    assert sh(entry, "rcctl get postfix").splitlines() == [
        "postfix_class=daemon", "postfix_execdir=", "postfix_flags=", "postfix_logger=",
        "postfix_rtable=0", "postfix_timeout=30", "postfix_user=root"]
    as_root(entry, "sed -i '/^# mine$/d' /etc/rc.conf.local")


@pytest.mark.lab
def test_syslogd_rereads_on_hup_and_makes_the_a_socket_when_started_with_it(hosts, installed):
    entry = hosts["5.0"]
    pid = root(entry, "cat /var/run/syslog.pid")
    # the flag added to rc.conf.local does not reach a running syslogd: a HUP re-reads
    # syslog.conf, never its own flags (OpenBSD's privsep parent re-executes the same argv)
    root(entry, f"echo 'syslogd_flags=\"-a {SPOOL_LOG}\"' > /etc/rc.conf.local; "
                "kill -HUP $(cat /var/run/syslog.pid); sleep 0.3")
    assert root(entry, f"test -S {SPOOL_LOG} || echo none; cat /var/run/syslog.pid") == (
        f"none\n{pid}")
    # started again with the flags, as the NOTE of postfix-enable says: the socket is there
    root(entry, ". /etc/rc.conf; kill $(cat /var/run/syslog.pid); "
                "while [ -e /var/run/syslog.pid ]; do sleep 0.1; done; syslogd ${syslogd_flags}")
    assert root(entry, f"test -S {SPOOL_LOG} && echo socket") == "socket"
    # a changed syslog.conf and a HUP: it starts over with the same flags (same pid)
    pid = root(entry, "cat /var/run/syslog.pid")
    root(entry, f"rm {SPOOL_LOG}; echo '# changed' >> /etc/syslog.conf; "
                "kill -HUP $(cat /var/run/syslog.pid); "
                f"for i in $(seq 50); do test -S {SPOOL_LOG} && break; sleep 0.1; done")
    assert root(entry, f"test -S {SPOOL_LOG} && echo socket; cat /var/run/syslog.pid") == (
        f"socket\n{pid}")
    root(entry, "logger -p mail.info -t lab-test 'a line for the mail log'; sleep 0.3")
    assert "lab-test: a line for the mail log" in root(entry, "tail -3 /var/log/maillog")


@pytest.mark.lab
def test_a_reboot_honours_rc_conf_local(hosts, installed):
    old, new = hosts["5.0"], hosts["7.6"]
    # 5.0: rc.conf.local written by hand, as the guide does (sourced by sh at boot)
    root(old, "printf '%s\\n' sendmail_flags=NO "
              f"'syslogd_flags=\"-a {SPOOL_LOG}\"' 'pkg_scripts=\"postfix\"' > /etc/rc.conf.local")
    # 7.6: what rcctl wrote in the test above (parsed at boot): smtpd off, postfix on
    as_root(new, f"rcctl enable postfix && rcctl disable smtpd && "
                 f"rcctl set syslogd flags -a {SPOOL_LOG}")
    for entry in (old, new):
        postfix_configured(entry)
        as_root(entry, "/usr/local/sbin/postfix-enable >/dev/null")  # if no test before did
    after = {release: lab.reboot(entry["name"]) for release, entry in hosts.items()}
    for release, entry in after.items():
        address = entry["address"]
        mta = "sendmail: accepting" if release == "5.0" else "/usr/sbin/smtpd"
        assert root(entry, f"pgrep -f '^{mta}' || echo none") == "none"
        assert root(entry, "/etc/rc.d/postfix check") == "postfix(ok)"
        assert sh(entry, f"ss -Hltn 'src {address}:25' | wc -l") == "1"
        assert root(entry, f"test -S {SPOOL_LOG} && echo socket") == "socket"
        root(entry, "printf 'Subject: lab test\\n\\nhello\\n' | sendmail mailtest; sleep 1")
        log = root(entry, "grep 'to=<mailtest@' /var/log/maillog | tail -1")
        assert "relay=local" in log and "status=sent (delivered to mailbox)" in log
        assert "Subject: lab test" in root(entry, "cat /var/mail/mailtest")


@pytest.mark.lab
def test_pkg_add_dovecot_installs_held_with_its_rc_script_and_leaves_the_rest_to_the_runbook(
        hosts):
    for release, entry in hosts.items():
        done = as_root(entry, "pkg_add dovecot")
        name = done.stdout.split(": ok")[0].split()[-1]
        assert name.startswith("dovecot-") and "+" not in name
        lines = done.stdout.splitlines()
        assert lines[1:3] == ["The following new rcscripts were installed: /etc/rc.d/dovecot",
                              f"See {'rc.d(8)' if release == '5.0' else 'rcctl(8)'} for details."]
        assert root(entry, "pgrep -x dovecot || echo none") == "none"
        assert root(entry, "/etc/rc.d/dovecot check; echo $?") == "dovecot(failed)\n1"
        assert sh(entry, "pkg_info -qe dovecot && echo yes") == "yes"
        assert sh(entry, "grep -E '^ssl_(cert|key) ' /etc/dovecot/conf.d/10-ssl.conf") == (
            "ssl_cert = </etc/ssl/dovecotcert.pem\nssl_key = </etc/ssl/private/dovecot.pem")
        # what the package's readme asks for is the runbook's to do
        assert root(entry, "ls /etc/ssl/dovecotcert.pem /etc/login.conf.d/dovecot "
                           "2>/dev/null | wc -l") == "0"
        if release == "7.6":
            assert lines[3:5] == ["New and changed readme(s):",
                                  "\t/usr/local/share/doc/pkg-readmes/dovecot"]
            assert "login.conf.d/dovecot" in sh(entry, f"cat {lines[4].strip()}")
        else:
            assert len(lines) == 3
            assert sh(entry, "test -d /etc/login.conf.d || echo none") == "none"
