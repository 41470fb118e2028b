"""Stage 20-enable (G3-G8): Postfix the system mailer, on at boot; the previous MTA off."""

from __future__ import annotations

from shlex import quote as q

from runbook.ops import facts
from runbook.ops.edits import active_lines, comment_out
from runbook.ops.operations import Plan, Run, Write, operation, platform_step
from runbook.services.postfix.common import prefetch
from runbook.services.postfix.wanted import BASELINE, CRONTAB_LISTING

ensure_system_mailer = platform_step("G3 Postfix is the system mailer", "system_mailer")

ensure_previous_mta_off_at_boot = platform_step(
    "G4 previous mail server off at boot", "previous_mta_off_at_boot")


ensure_chroot_log_socket = platform_step(
    "G5 log socket inside Postfix's chroot", "chroot_log_socket")

ensure_postfix_at_boot = platform_step("G6 Postfix starts at boot", "postfix_on_at_boot")


@operation("G7 previous mail server's queue runner commented out in root's crontab")
async def ensure_queue_runner_commented(stage) -> Plan:
    profile = stage.platform
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


ensure_syslog_reloaded = platform_step(
    "G8 system logger re-reads its configuration", "syslog_reload")


prefetch("20-enable", lambda stage: [stage.platform.queue_runner_crontab()])
