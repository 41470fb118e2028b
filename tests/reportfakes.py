"""Run folders written through the real audit module, for the report's unit tests: the
records a run leaves (stage, command, file_write, operation, probe, restore), no host."""

from __future__ import annotations

from pathlib import Path

from runbook.audit import Audit, update_run_json

DETECT = "uname -sr; echo @@os-release; cat /etc/os-release 2>/dev/null"
OS_RELEASE = ('Linux 6.1.0\n@@os-release\nPRETTY_NAME="Debian GNU/Linux 12"\nID=debian\n'
              'VERSION_ID="12"\n')
MAIN_CF_DIFF = ("--- /etc/postfix/main.cf\n+++ /etc/postfix/main.cf\n@@ -1,2 +1,2 @@\n"
                " myhostname = mail.deb1.test\n-mydomain = old.test\n+mydomain = deb1.test\n")


def command(audit: Audit, text: str, start: str, duration: float = 0.01, exit_status: int = 0,
            stdout: str = "", stderr: str = "", **extra) -> None:
    audit.record("command", host="deb1", fingerprint="SHA256:abc", command=text, start=start,
                 duration=duration, exit_status=exit_status, stdout=stdout, stderr=stderr,
                 **extra)


def configure_stage(audit: Audit) -> None:
    audit.stage = "30-configure"
    audit.record("stage", event="start", host="deb1", mode="batch", dry_run=False)
    command(audit, DETECT, "2026-11-28T14:05:01.000Z", stdout=OS_RELEASE)
    command(audit, "postconf -n", "2026-11-28T14:05:01.100Z", stdout="mydomain = old.test\n")
    command(audit, "write main.cf", "2026-11-28T14:05:01.200Z", duration=0.05)
    audit.record("file_write", host="deb1", path="/etc/postfix/main.cf",
                 backup="/var/backups/mail-runbook/r/main.cf", diff=MAIN_CF_DIFF)
    command(audit, "postfix reload", "2026-11-28T14:05:01.300Z")
    audit.record("operation", name="G9 · who the server is", status="changed", detail="",
                 duration=0.3, commands=["postfix reload"], files=["/etc/postfix/main.cf"])
    audit.record("stage", event="end", status="ok", duration=0.5,
                 counts={"ok": 0, "changed": 1, "failed": 0, "skipped": 0})


def failing_start_stage(audit: Audit) -> None:
    audit.stage = "40-start"
    audit.record("stage", event="start", host="deb1", mode="batch", dry_run=False)
    command(audit, "postfix check", "2026-11-28T14:05:02.000Z", duration=0.2, exit_status=1,
            stderr="postfix: fatal: unknown mail_owner: nosuchuser\n")
    command(audit, "cat /var/backups/mail-runbook/r/MANIFEST", "2026-11-28T14:05:02.300Z")
    audit.record("operation", name="G14 · postfix check", status="failed",
                 detail="postfix check exited 1", duration=0.3,
                 restore="no file had been changed", restored=[])


def validate_stage(audit: Audit) -> None:
    audit.stage = "50-validate"
    audit.record("stage", event="start", host="deb1", mode="batch", dry_run=False)
    command(audit, "true", "2026-11-28T14:05:03.000Z")
    audit.record("probe", host="deb1", protocol="smtp", via="ssh tunnel", address="127.0.0.11",
                 transcript=["S: 220 mail.deb1.test ESMTP", "C: QUIT", "S: 221 Bye"])
    audit.record("operation", name="G17 · an SMTP session", status="ok", detail="", duration=0.1)
    audit.record("stage", event="end", status="ok", duration=0.2,
                 counts={"ok": 1, "changed": 0, "failed": 0, "skipped": 0})


def run_folder(root: Path, name: str = "20261128T140501Z-deb1", *, fail: bool = False,
               run_json: bool = True) -> Path:
    """A run folder as the runner leaves it: 30-configure changed main.cf, then 40-start
    failed (fail=True) or 50-validate sent its probe."""
    folder = root / name
    audit = Audit(folder, display=False)
    configure_stage(audit)
    (failing_start_stage if fail else validate_stage)(audit)
    if run_json:
        stages = {"30-configure": {"status": "ok", "duration": 0.5, "notebook":
                                   "30-configure.ipynb", "ok": 0, "changed": 1, "failed": 0,
                                   "skipped": 0}}
        last = ("40-start", "failed", 0, 1) if fail else ("50-validate", "ok", 1, 0)
        stages[last[0]] = {"status": last[1], "duration": 0.3, "notebook": f"{last[0]}.ipynb",
                           "ok": last[2], "changed": 0, "failed": last[3], "skipped": 0}
        update_run_json(folder, host="deb1", params_sha256="f" * 64, git_commit="c0ffee",
                        operator="tester", start="2026-11-28T14:05:01+00:00",
                        end="2026-11-28T14:05:04+00:00", state="failed" if fail else "ok",
                        dry_run=False, stages=stages)
    return folder
