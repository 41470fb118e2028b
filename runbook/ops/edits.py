"""Pure text transforms of the files the runbook edits: a key in main.cf, an alias entry, a
variable in a shell-style file (rc.conf.local), a crontab line commented out, what rcctl(8)
does to rc.conf.local, and the diff a plan shows. Plain functions of text, tested without
SSH; the operations that use them decide what to write.
"""

from __future__ import annotations

import difflib
import re
import shlex

from runbook.ops import facts


def unified_diff(old: str | None, new: str, path: str) -> str:
    lines = difflib.unified_diff(
        (old or "").splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"{path} (now)" if old is not None else "/dev/null",
        tofile=f"{path} (after)")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in lines)


def same_value(a: str | None, b: str | None, *, as_list: bool = True) -> bool:
    """Whether two Postfix values mean the same: list items compared in order, blanks and
    commas alike; a scalar compared with its blanks squeezed."""
    if a is None or b is None:
        return a is b
    if as_list:
        return facts.split_words(a) == facts.split_words(b)
    return " ".join(a.split()) == " ".join(b.split())


def set_main_cf(text: str, settings: dict[str, str]) -> str:
    """main.cf with each `key = value` set much as `postconf -e` does it: the key's first
    definition is replaced in place (its continuation lines dropped, and any later
    definition of the same key removed), a key not yet there is appended."""
    lines = text.splitlines(keepends=True)
    found = [(key, start, end) for key, _, start, end in facts._definitions(lines)]
    return _rewrite(lines, found, {k: _setting_line(k, v) for k, v in settings.items()})


def _setting_line(key: str, value: str) -> str:
    return f"{key} = {value}\n" if value else f"{key} =\n"


def _rewrite(lines: list[str], found: list[tuple[str, int, int]], new: dict[str, str]) -> str:
    """`lines` with the entries `found` (key, first index, end index) whose key is in `new`
    replaced by new[key] (once: later entries of the key dropped), missing keys appended."""
    replace = {start: (key, end) for key, start, end in found if key in new}
    out, seen, i = [], set(), 0
    while i < len(lines):
        if i not in replace:
            out.append(lines[i])
            i += 1
            continue
        key, i = replace[i]
        if key not in seen:
            out.append(new[key])
            seen.add(key)
    missing = [key for key in new if key not in seen]
    if missing and out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    return "".join(out + [new[key] for key in missing])


_ALIAS = re.compile(r"""("[^"]*"|[^\s:#][^:]*?)\s*:(.*)""")


def _alias_entries(lines: list[str]):
    """(name, targets text, first line index, end index) of each entry in an aliases file."""
    return [(m.group(1).strip('"').lower(), value, i, j)
            for m, value, i, j in facts.entries(lines, _ALIAS)]


def parse_aliases(text: str) -> dict[str, list[str]]:
    """An aliases(5) file: each name with its targets (continuation lines joined)."""
    return {name: facts.split_words(value)
            for name, value, _, _ in _alias_entries(text.splitlines(keepends=True))}


def set_aliases(text: str, aliases: dict[str, list[str]]) -> str:
    """The aliases file with each `name: targets` entry set; entries with the same targets
    (in any spelling) are left exactly as written, others replaced in place or appended."""
    lines = text.splitlines(keepends=True)
    entries = _alias_entries(lines)
    current = {name: facts.split_words(value) for name, value, _, _ in entries}
    wanted = {name.lower(): list(targets) for name, targets in aliases.items()
              if current.get(name.lower()) != list(targets)}
    if not wanted:
        return text
    found = [(name, start, end) for name, _, start, end in entries]
    return _rewrite(lines, found, {n: f"{n}: {', '.join(t)}\n" for n, t in wanted.items()})


_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./:@%+=,-]+")


def shell_value(value: str) -> str:
    """A value as a shell-style config file writes it: bare when safe, double-quoted when
    it has blanks (rc.conf.local's own style), single-quoted when it has shell specials."""
    if _SHELL_SAFE.fullmatch(value):
        return value
    if not re.search(r'["\\$`]', value):
        return f'"{value}"'
    return "'" + value.replace("'", "'\\''") + "'"


def _shell_assignments(lines: list[str], key: str) -> list[int]:
    pattern = re.compile(rf"\s*{re.escape(key)}=")
    return [i for i, line in enumerate(lines) if pattern.match(line)]


def get_shell_var(text: str, key: str) -> str | None:
    """The value a shell-style file (rc.conf.local, /etc/default/*) gives `key`; last wins."""
    lines = text.splitlines()
    found = _shell_assignments(lines, key)
    if not found:
        return None
    raw = lines[found[-1]].split("=", 1)[1]
    try:
        words = shlex.split(raw, comments=True)
    except ValueError:
        return raw.strip()
    return " ".join(words)


def set_shell_var(text: str, key: str, value: str, *, quoted: bool = False) -> str:
    """`key=value` in a shell-style file: the last assignment replaced (earlier ones left as
    they are: the last one wins), or appended when there is none; unchanged if equal.
    `quoted` writes a plain value in double quotes all the same (`pkg_scripts="postfix"`,
    as the guide writes a list that may grow)."""
    if get_shell_var(text, key) == value:
        return text
    lines = text.splitlines(keepends=True)
    shown = shell_value(value)
    if quoted and not shown.startswith(("'", '"')):
        shown = f'"{value}"'
    line = f"{key}={shown}\n"
    found = _shell_assignments(lines, key)
    if found:
        lines[found[-1]] = line
    else:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(line)
    return "".join(lines)


def merge_words(value: str | None, words: str) -> str:
    """A blank-separated list value with `words` (one word, or a sequence such as a flag and
    its argument) added at the end unless that sequence is already in it."""
    have = (value or "").split()
    add = words.split()
    for i in range(len(have) - len(add) + 1):
        if have[i:i + len(add)] == add:
            return " ".join(have)
    return " ".join(have + add)


def comment_out(text: str, pattern: str) -> str:
    """Every active line matching the regular expression `pattern`, commented out with a
    leading '#' and otherwise kept as it was (so the change can be undone by hand)."""
    regex = re.compile(pattern)
    lines = text.splitlines(keepends=True)
    return "".join(
        "#" + line if line.strip() and not line.lstrip().startswith("#") and regex.search(line)
        else line
        for line in lines)


def active_lines(text: str, pattern: str) -> list[str]:
    """The active (uncommented) lines matching `pattern`."""
    regex = re.compile(pattern)
    return [line for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#") and regex.search(line)]


# --- rcctl(8) on rc.conf.local (OpenBSD >= 5.7), as a pure function --------------------------

RCCTL_VARIABLES = ("execdir", "flags", "logger", "rtable", "timeout", "user")


def rcctl_edit(text: str | None, action: str, daemon: str, value: str = "", *,
               base: bool, default_flags: str = "") -> str | None:
    """rc.conf.local as rcctl leaves it (rcctl.sh: grep/sed into a temp file, then `sort -u`
    over the whole file; an empty result removes the file; values unquoted). For plans made
    without connecting and for tests; on a host rcctl itself does the edit.

    action: "enable" / "disable" (a base daemon's `<daemon>_flags`, a package daemon's place
    in pkg_scripts) or "flags" (`rcctl set <daemon> flags <value>`)."""
    lines = (text or "").splitlines()
    own = re.compile(rf"{re.escape(daemon)}_({'|'.join(RCCTL_VARIABLES)})=")

    def words(key: str) -> list[str]:
        found = [line.split("=", 1)[1] for line in lines if line.startswith(key + "=")]
        return (found[-1] if found else "").split()

    if action == "enable" and not base:
        scripts = words("pkg_scripts")
        lines = [line for line in lines if not line.startswith("pkg_scripts=")]
        lines.append("pkg_scripts=" + " ".join(scripts + ([] if daemon in scripts else [daemon])))
    elif action == "disable" and not base:
        scripts = [w for w in words("pkg_scripts") if w != daemon]
        lines = [line for line in lines if not line.startswith("pkg_scripts=")]
        lines += [f"pkg_scripts={' '.join(scripts)}"] if scripts else []
    elif action == "disable":
        lines = [line for line in lines if not own.match(line)] + [f"{daemon}_flags=NO"]
    elif action == "enable":
        lines = [line for line in lines if not line.startswith(f"{daemon}_flags=")]
    elif action == "flags":
        lines = [line for line in lines if not line.startswith(f"{daemon}_flags=")]
        if value != default_flags:
            lines.append(f"{daemon}_flags={value}")
    else:
        raise ValueError(f"rcctl_edit: unknown action {action!r}")
    result = sorted(set(lines))
    return "".join(line + "\n" for line in result) if result else None
