"""Facts: what is true on the target now, each a shell command plus a pure parser.

A `Fact` never changes anything. `read()` gathers any number of facts in ONE remote
command (each command's output is fenced by a random marker, so the parsers see exactly
what their command printed), and keeps them for the rest of the stage: the operations of a
stage that all look at main.cf read it once. Whatever changes the host forgets them.

The parsers below are plain functions of text, tested without SSH.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from shlex import quote as q
from typing import Any

from runbook.errors import RunbookError


class FactError(RunbookError):
    """A fact's command failed in a way its parser cannot explain."""


@dataclass(frozen=True)
class Fact:
    """A read-only command and the parser of its output.

    `parse(stdout, exit_status)` turns the output into a value. `fresh` is what the fact
    shows on a fresh host, for plans made without connecting (`runbook plan`): either the
    value itself or a function of the `FreshHost` the plan imagines, which the plan's
    earlier steps have already changed (a file written, a package installed).
    """

    name: str
    command: str
    parse: Callable[[str, int], Any]
    fresh: Any = None

    def __hash__(self) -> int:  # facts are keyed by name: one command answers one name
        return hash(self.name)


# --- gathering -----------------------------------------------------------------------------

def script(facts: list[Fact], token: str) -> str:
    """One shell script running every fact's command, each output ended by a marker line."""
    parts = []
    for fact in facts:
        # The subshell keeps one fact's `cd` or `exit` from touching the next.
        parts.append(f"( {fact.command}\n) </dev/null; printf '\\n{token} %s\\n' $?")
    return "\n".join(parts)


def split(output: str, token: str, count: int) -> list[tuple[str, int]]:
    """The (stdout, exit status) of each of `count` commands run by `script()`."""
    results = []
    rest = output
    marker = re.compile(rf"\n{re.escape(token)} (\d+)\n")
    for _ in range(count):
        match = marker.search(rest)
        if not match:
            raise FactError("the facts command was cut off (a marker is missing)")
        results.append((rest[: match.start()], int(match.group(1))))
        rest = rest[match.end():]
    return results


def cache(stage) -> dict[str, Any]:
    """The facts read so far in this stage (by name)."""
    return scratch(stage).setdefault("facts", {})


def forget(stage) -> None:
    """Forget every fact read in this stage: something on the host has changed."""
    cache(stage).clear()


# The facts each stage's operations are going to read, by stage name (filled in by the
# module defining the operations): the stage's first read fetches them all in the same
# round trip, so a stage with nothing to change usually costs one command.
PREFETCH: dict[str, Callable[[Any], list[Fact]]] = {}


class _Unreadable:
    """A prefetched fact whose parser failed: raised when an operation asks for it."""

    def __init__(self, error: FactError):
        self.error = error


async def read(stage, *facts: Fact) -> list[Any]:
    """The values of `facts`, reading the missing ones in one remote command."""
    known = cache(stage)
    wanted = list(facts)
    state = scratch(stage)
    if not state.get("prefetched") and not getattr(stage, "offline", False):
        state["prefetched"] = True
        wanted += PREFETCH.get(getattr(stage, "name", ""), lambda _stage: [])(stage)
    missing = list({f.name: f for f in wanted if f.name not in known}.values())
    if missing and getattr(stage, "offline", False):  # a plan made without connecting
        host = getattr(stage, "fresh", None) or FreshHost()
        known.update((f.name, fresh_value(f, host)) for f in missing)
    elif missing:
        token = "@@fact-" + secrets.token_hex(8)
        result = await stage.run(script(missing, token), check=False, stream=False, quiet=True)
        outputs = split(result.stdout, token, len(missing))
        for fact, (stdout, status) in zip(missing, outputs, strict=True):
            try:
                known[fact.name] = fact.parse(stdout, status)
            except FactError as e:
                detail = result.stderr.strip()
                known[fact.name] = _Unreadable(FactError(f"{e}{': ' + detail if detail else ''}"))
    values = [known[f.name] for f in facts]
    for value in values:
        if isinstance(value, _Unreadable):
            raise value.error
    return values


async def read_one(stage, fact: Fact) -> Any:
    (value,) = await read(stage, fact)
    return value


def fresh_value(fact: Fact, host: FreshHost) -> Any:
    """What `fact` shows on the imagined fresh host."""
    return fact.fresh(host) if callable(fact.fresh) else fact.fresh


@dataclass
class FreshHost:
    """A fresh host as `runbook plan` imagines it: the platform's stock files, then what the
    plan's own steps did to it (each Write, and each command's declared `effect`).

    Only what the facts ask about is modelled: file contents (`files`, None = absent),
    other paths that exist (`paths`: directories, sockets, pid files), installed packages,
    running and boot-enabled services. Modification order is a counter, for `newer`.
    """

    files: dict[str, str | None] = field(default_factory=dict)
    paths: set[str] = field(default_factory=set)
    packages: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)
    enabled: set[str] = field(default_factory=set)
    config_dir: str = "/etc/postfix"
    clock: int = 0
    mtimes: dict[str, int] = field(default_factory=dict)

    def read(self, path: str) -> str | None:
        return self.files.get(path)

    def exists(self, path: str) -> bool:
        return self.files.get(path) is not None or path in self.paths

    def write(self, path: str, text: str) -> None:
        self.files[path] = text
        self.touch(path)

    def add(self, path: str) -> None:
        """A path that exists (a directory, socket, pid file) whose content does not matter."""
        self.paths.add(path)
        self.touch(path)

    def remove(self, path: str) -> None:
        self.files.pop(path, None)
        self.paths.discard(path)
        self.mtimes.pop(path, None)

    def move(self, source: str, destination: str) -> None:
        if source in self.files:
            self.files[destination] = self.files.pop(source)
        self.touch(destination)
        self.remove(source)

    def touch(self, path: str) -> None:
        self.clock += 1
        self.mtimes[path] = self.clock

    def newer(self, path: str, than: str) -> bool:
        return self.exists(path) and self.mtimes.get(path, 0) > self.mtimes.get(than, 0)

    def postconf_n(self) -> dict[str, str] | None:
        """`postconf -n`: the settings main.cf makes (None while Postfix is not installed)."""
        text = self.read(f"{self.config_dir}/main.cf")
        return None if text is None or "postfix" not in self.packages else parse_main_cf(text)


def scratch(stage) -> dict:
    # Per-stage working state kept on the Stage object (a fresh Stage per notebook).
    return stage.scratch


# --- generic facts -------------------------------------------------------------------------

def _must_succeed(name: str, parse: Callable[[str], Any]) -> Callable[[str, int], Any]:
    def parser(stdout: str, status: int) -> Any:
        if status != 0:
            raise FactError(f"reading {name} failed (exit {status})")
        return parse(stdout)
    return parser


def file(path: str) -> Fact:
    """A file's text, or None when it does not exist (an unreadable file is an error)."""
    def parse(stdout: str, status: int) -> str | None:
        if status == 3:
            return None
        if status != 0:
            raise FactError(f"cannot read {path} (exit {status})")
        return stdout
    return Fact(f"file {path}", f"[ -e {q(path)} ] || exit 3; cat {q(path)}", parse,
                fresh=lambda host: host.read(path))


def exists(path: str, test: str = "-e") -> Fact:
    """Whether `test path` holds (-e exists, -S socket, -f file, -x executable)."""
    return Fact(f"test {test} {path}", f"test {test} {q(path)}", lambda _out, status: status == 0,
                fresh=lambda host: host.exists(path))


def command_output(name: str, command: str) -> Fact:
    """Any read-only command's output and exit status, as a pair."""
    return Fact(name, command, lambda out, status: (out, status))


def newer(path: str, than: str) -> Fact:
    """Whether `path` exists and is newer than `than` (missing `path`: False)."""
    return Fact(f"{path} newer than {than}", f"test {q(path)} -nt {q(than)}",
                lambda _out, status: status == 0, fresh=lambda host: host.newer(path, than))


def postconf_n(postconf: str) -> Fact:
    """`postconf -n`: the settings main.cf sets; None when Postfix is not installed."""
    def parse(stdout: str, status: int) -> dict[str, str] | None:
        if status == 127 or (status != 0 and not stdout):
            return None
        if status != 0:
            raise FactError(f"postconf -n failed (exit {status})")
        return parse_main_cf(stdout)
    return Fact("postconf -n", f"{q(postconf)} -n", parse, fresh=lambda host: host.postconf_n())


def postconf_values(postconf: str, names: tuple[str, ...]) -> Fact:
    """Effective values (defaults included) of some parameters; None when Postfix is not
    installed."""
    def parse(stdout: str, status: int) -> dict[str, str] | None:
        if status == 127:
            return None
        if status != 0:
            raise FactError(f"postconf {' '.join(names)} failed (exit {status})")
        return parse_main_cf(stdout)
    command = f"{q(postconf)} " + " ".join(q(n) for n in names)
    return Fact(f"postconf {' '.join(names)}", command, parse)


def master_pid(queue_dir: str) -> Fact:
    """The running master process's pid, or None when Postfix is not running."""
    pid_file = q(f"{queue_dir}/pid/master.pid")
    command = (f"[ -r {pid_file} ] || exit 0; read pid < {pid_file}; "
               "kill -0 $pid 2>/dev/null && echo $pid")
    return Fact("master pid", command, lambda out, _s: int(out) if out.strip().isdigit() else None,
                fresh=lambda host: 1 if "postfix" in host.running else None)


# --- parsers -------------------------------------------------------------------------------

_DEFINITION = re.compile(r"([A-Za-z0-9_]+)\s*=\s?(.*)")


def parse_main_cf(text: str) -> dict[str, str]:
    """Settings of a main.cf (or `postconf -n` output): continuation lines joined, last wins.

    postconf(5): a logical line starts with non-blank text; a line starting with blanks
    continues it; lines whose first non-blank character is '#' and blank lines are ignored.
    """
    return {key: value for key, value, _, _ in _definitions(text.splitlines(keepends=True))}


def _definitions(lines: list[str]):
    """(key, value, first line index, end index) of each setting in main.cf lines."""
    return [(m.group(1), value, i, j) for m, value, i, j in entries(lines, _DEFINITION)]


def entries(lines: list[str], start: re.Pattern) -> list[tuple[re.Match, str, int, int]]:
    """The logical lines of a Postfix-style file (main.cf, aliases): each starts with a
    non-blank line matching `start` (its group 2 the value's beginning) and takes the
    following lines that start with blanks. Blank lines and '#' lines are skipped.
    Returns (match, value with its lines joined by a space, first index, end index)."""
    found, i = [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#") or line[:1].isspace():
            i += 1
            continue
        match = start.match(line.rstrip("\n"))
        j = i + 1
        parts = [match.group(2).strip()] if match else []
        while j < len(lines) and lines[j][:1].isspace() and lines[j].strip() \
                and not lines[j].lstrip().startswith("#"):
            parts.append(lines[j].strip())
            j += 1
        if match:
            found.append((match, " ".join(p for p in parts if p), i, j))
        i = j
    return found


def parse_os_release(text: str) -> dict[str, str]:
    """/etc/os-release as a dict (quotes removed)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            values[key] = value
    return values


@dataclass(frozen=True)
class Listener:
    address: str  # as the socket table shows it, without brackets: 127.0.0.5, ::1, 0.0.0.0, *
    port: int
    process: str
    pid: int


def parse_ss_listeners(text: str) -> list[Listener]:
    """`ss -Hltnp` lines: the listening TCP sockets with their owning processes."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        local = fields[3]
        address, _, port = local.rpartition(":")
        if not port.isdigit():
            continue
        address = address.strip("[]").split("%", 1)[0]
        for process, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
            found.append(Listener(address, int(port), process, int(pid)))
    return found


def split_words(value: str) -> list[str]:
    """A Postfix list value as its items (commas and blanks both separate)."""
    return [item for item in re.split(r"[\s,]+", value or "") if item]


def network_of(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A mynetworks entry (Postfix notation, IPv6 in brackets) as a network; None if it is a
    host name, a file or a lookup table that only Postfix can expand."""
    address, _, prefix = entry.partition("/")
    address = address[1:-1] if address.startswith("[") and address.endswith("]") else address
    try:
        ip = ipaddress.ip_address(address)
        return ipaddress.ip_network(f"{ip}/{prefix or ip.max_prefixlen}", strict=False)
    except ValueError:
        return None


def parse_fstat_listeners(text: str) -> list[Listener]:
    """OpenBSD `fstat` lines of TCP sockets: the unconnected ones (no `<--`/`-->` peer) are the
    listening sockets, e.g. `root master 81234 12* internet stream tcp 0x0 *:25`."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 9 or fields[4] not in ("internet", "internet6") \
                or fields[5:7] != ["stream", "tcp"] or not fields[2].isdigit():
            continue
        rest = fields[8:]
        if len(rest) != 1:  # "local <-- peer": a connection, not a listener
            continue
        address, _, port = rest[0].rpartition(":")
        if port.isdigit():
            found.append(Listener(address.strip("[]").split("%", 1)[0], int(port), fields[1],
                                  int(fields[2])))
    return found


def parse_listeners(text: str) -> list[Listener]:
    """Listening TCP sockets from `ss -Hltnp` or OpenBSD's `fstat`, whichever printed them."""
    ss_lines = [line for line in text.splitlines() if "users:((" in line]
    others = [line for line in text.splitlines() if "users:((" not in line]
    return parse_ss_listeners("\n".join(ss_lines)) + parse_fstat_listeners("\n".join(others))
