"""What a run cut short left on a host: found by the next run and by `runbook status`.

The lock's journal (lock.py) says which run came last and how it ended; a start without a
clean end (`ok`, `failed`) means the run was cut short: a reboot, a killed runner, a
dropped connection, Ctrl-C. What it may have left behind:

- stray temp files of its atomic writes (`.mail-runbook.XXXXXX` beside the files it writes,
  see files.py): a write cut between `mktemp` and `mv`. They are never the real file, so
  the next run removes them (and records it);
- its backup set (`<backup root>/<run>/MANIFEST`): the files it had begun to change, each
  now either as before (`unchanged`) or as the run left it (`changed`). The next run
  completes them (every stage is idempotent); the backups stay for `95-rollback`.

One round trip reads the journal, the lock, the strays and the last run's backup set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runbook.remote import files, lock
from runbook.remote.target import Target, q

TEMP_GLOB = ".mail-runbook.*"  # files.WRITE_SCRIPT's and RESTORE_SCRIPT's mktemp names
FINISHED = ("ok", "failed")  # a failed stage restored its own files before it stopped

# The journal's tail, the lock's holder, every stray temp file beside a path any run ever
# backed up (the baseline lists them all), then each MANIFEST line of the run named in $RUN
# as "changed|unchanged<TAB>path", comparing the path with its backup.
INSPECT_SCRIPT = """R={root}; J={journal}; L={lock}; TAB=$(printf '\\t')
echo '== journal'; tail -n 100 "$J" 2>/dev/null
echo '== lock'; cat "$L/owner" 2>/dev/null
echo '== strays'
for m in "$R"/*/MANIFEST; do [ -f "$m" ] && cut -f1 "$m"; done | sed 's|/[^/]*$||' | sort -u |
while read -r d; do
  for f in "${{d:-}}"/{glob}; do [ -f "$f" ] && printf '%s\\n' "$f"; done
done
echo '== runs'
RUN=$(awk -F'\\t' -v me={current} '$2 != me && $3 == "start" {{r = $2}} END {{print r}}' "$J" \\
  2>/dev/null)
[ -n "$RUN" ] && [ -f "$R/$RUN/MANIFEST" ] && while IFS="$TAB" read -r p sum name mode owner; do
  if [ "$name" = - ]; then if [ -e "$p" ]; then s=changed; else s=unchanged; fi
  elif cmp -s "$R/$RUN/$name" "$p"; then s=unchanged; else s=changed; fi
  printf '%s\\t%s\\n' "$s" "$p"
done < "$R/$RUN/MANIFEST"
exit 0
"""


@dataclass
class RunEntry:
    run: str
    started: str
    ended: str | None = None  # the verdict of its last `end` line; None: no end at all
    ended_at: str | None = None

    @property
    def finished(self) -> bool:
        return self.ended in FINISHED

    def describe(self) -> str:
        if self.ended is None:
            how = "no end recorded (cut short: a reboot, a kill, or still running)"
        elif self.ended == "lost":
            how = f"its connection was lost at {self.ended_at} (the runner died or the " \
                  "network dropped)"
        else:
            how = f"ended {self.ended} at {self.ended_at}"
        return f"{self.run}, started {self.started}: {how}"


@dataclass
class HostState:
    runs: list[RunEntry] = field(default_factory=list)  # oldest first, from the journal
    lock_owner: str | None = None
    strays: list[str] = field(default_factory=list)
    pending: list[tuple[str, str]] = field(default_factory=list)  # (changed|unchanged, path)
    current: str = ""  # the run asking, left out of `previous`

    @property
    def previous(self) -> RunEntry | None:
        """The last run on the host before the one asking."""
        earlier = [r for r in self.runs if r.run != self.current]
        return earlier[-1] if earlier else None

    @property
    def unfinished(self) -> RunEntry | None:
        previous = self.previous
        return previous if previous and not previous.finished else None

    @property
    def news(self) -> bool:
        """Anything a new run must say before it starts."""
        return bool(self.strays or self.unfinished)

    def report(self) -> list[str]:
        lines = []
        if self.lock_owner and self.lock_owner != self.current:
            lines.append(f"lock: held by {self.lock_owner} (a run is going on; temp files "
                         "below may be its own)")
        previous = self.previous
        lines.append(f"last run on the host: {previous.describe()}" if previous else
                     "last run on the host: none recorded (no journal)")
        unfinished = self.unfinished
        if unfinished and self.pending:
            changed = [p for s, p in self.pending if s == "changed"]
            lines.append(f"pending backups of unfinished run {unfinished.run}: "
                         f"{len(self.pending)} file(s) in {files.BACKUP_ROOT}/{unfinished.run}/"
                         f", {len(changed)} changed since they were saved")
            lines += [f"  {path} ({state})" for state, path in self.pending]
        elif unfinished:
            lines.append(f"unfinished run {unfinished.run} changed no file (no backup set)")
        if self.strays:
            lines.append(f"stray temp files of interrupted writes: {len(self.strays)}")
            lines += [f"  {path}" for path in self.strays]
        return lines


def parse(output: str, current: str = "") -> HostState:
    state = HostState(current=current)
    part = ""
    by_run: dict[str, RunEntry] = {}
    for line in output.splitlines():
        if line.startswith("== "):
            part = line[3:]
        elif part == "journal":
            when, _, rest = line.partition("\t")
            run, _, event = rest.partition("\t")
            if event == "start":
                by_run.pop(run, None)  # a resumed run starts again: its latest attempt counts
                by_run[run] = RunEntry(run, when)
            elif event.startswith("end ") and run in by_run:
                by_run[run].ended, by_run[run].ended_at = event[4:], when
        elif part == "lock" and line.strip():
            state.lock_owner = line.strip()
        elif part == "strays" and line:
            state.strays.append(line)
        elif part == "runs" and "\t" in line:
            status, _, path = line.partition("\t")
            state.pending.append((status, path))
    state.runs = list(by_run.values())
    return state


async def inspect(t: Target, current: str = "") -> HostState:
    """The host's run journal, lock, stray temp files and the last run's backup set."""
    script = INSPECT_SCRIPT.format(root=q(files.BACKUP_ROOT), journal=q(lock.journal_path()),
                                   lock=q(lock.LOCK_DIR), glob=TEMP_GLOB, current=q(current))
    result = await t.run(script, quiet=True, stream=False)
    return parse(result.stdout, current)


async def remove_strays(t: Target, strays: list[str]) -> None:
    """Remove the temp files an interrupted write left (never a real file: a name made by
    mktemp from TEMP_GLOB, checked again here)."""
    for path in strays:
        name = path.rsplit("/", 1)[-1]
        if not name.startswith(TEMP_GLOB[:-1]) or "\n" in path:
            raise ValueError(f"{path!r} is not a temp file of the runbook's")
    if strays:
        await t.run("rm -f -- " + " ".join(q(p) for p in strays), quiet=True)
