"""Stage 90-troubleshoot (G24): the read-only diagnostics, each explained."""

from __future__ import annotations

from shlex import quote as q

from runbook.ops import facts
from runbook.ops.operations import Outcome, operation


async def _show(stage, command: str, what: str) -> Outcome:
    result = await stage.run(command, check=False, stream=False)
    text = (result.stdout + result.stderr).rstrip()
    return Outcome("", "ok", what, evidence=text or "(nothing)")


@operation("G24 the settings Postfix reads (postconf -n)")
async def show_settings(stage) -> Outcome:
    return await _show(stage, f"{q(stage.platform.postconf)} -n", "non-default settings")


@operation("G24 the mail queue")
async def show_queue(stage) -> Outcome:
    return await _show(stage, f"{q(stage.platform.tool('postqueue'))} -p", "queued messages")


@operation("G24 the end of the mail log")
async def show_mail_log(stage, lines: int = 40) -> Outcome:
    profile = stage.platform
    return await _show(stage, profile.mail_log_tail(lines),
                       f"last {lines} lines of {profile.mail_log_shown}")


@operation("G24 DNS as Postfix sees it (the chroot's resolv.conf)")
async def show_dns(stage) -> Outcome:
    profile = stage.platform
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
    sockets = await facts.read_one(stage, stage.platform.listeners())
    mail = [s for s in sockets if s.port in (25, 465, 587, 143, 993)]
    return Outcome("", "ok", f"{len(mail)} mail socket(s)", evidence="\n".join(
        f"{s.address}:{s.port} {s.process} pid {s.pid}" for s in mail) or "(none)")


@operation("G24 postfix check")
async def show_check(stage) -> Outcome:
    return await _show(stage, f"{stage.platform.postfix_check()} && echo '(no complaints)'",
                       "postfix check")


