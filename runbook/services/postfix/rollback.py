"""Stage 95-rollback (G23): back to the mail server the host had before the first run."""

from __future__ import annotations

from shlex import quote as q

from runbook.ops import facts
from runbook.ops.facts import Fact
from runbook.ops.operations import OperationFailed, Outcome, Plan, Run, operation, platform_step
from runbook.remote import files
from runbook.services.postfix.common import master_pid, prefetch
from runbook.services.postfix.configure import rebuild_aliases
from runbook.services.postfix.wanted import BASELINE, CRONTAB_LISTING


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
    pid = await facts.read_one(stage, master_pid(stage))
    plan = Plan("G23 Postfix stopped",
                found=f"master {pid} runs" if pid else "Postfix is not running")
    if pid:
        stop = stage.platform.stop_postfix()
        plan.steps = [Run(stop.command, why=stop.why,
                          effect=lambda host: host.running.discard("postfix"))]
    return plan


postfix_off_at_boot = platform_step("G23 Postfix off at boot", "postfix_off_at_boot")

restore_system_mailer = platform_step(
    "G23 the system mailer as before (postfix-disable)", "restore_system_mailer")


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
    plan.steps += rebuild_aliases(stage, differ)
    return plan


previous_mta_back = platform_step("G23 the previous mail server runs again", "previous_mta_back")


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


prefetch("95-rollback", lambda stage: [master_pid(stage), _baseline(stage)])
