"""A stage without SSH for unit tests of operations: commands and file writes are recorded,
facts come from a dict (by fact name) put into the stage's fact cache beforehand."""

from __future__ import annotations

import types
from pathlib import Path

from runbook import params, platforms
from runbook.errors import CommandFailed
from runbook.ops import facts

PARAMS = {
    "target": {"host": "127.0.0.11", "user": "root"},
    "platform": {"name": "debian", "release": "12"},
    "postfix": {
        "mydomain": "deb1.test", "myhostname": "mail.deb1.test",
        "mydestination": ["$myhostname", "localhost.$mydomain", "localhost", "$mydomain"],
        "mynetworks": ["127.0.0.1/32", "127.0.0.11/32"], "inet_interfaces": ["127.0.0.11"],
        "aliases": {"postmaster": "root", "root": "mailtest"}, "test_recipient": "mailtest",
        "probe_source": "127.0.0.2",
        "extra_settings": {"default_transport": "error:lab hosts never send mail"},
    },
}


class Result:
    def __init__(self, command, exit_status=0, stdout="", stderr=""):
        self.command, self.exit_status, self.stdout, self.stderr = (
            command, exit_status, stdout, stderr)
        self.duration, self.start = 0.0, ""


class Audit:
    def __init__(self):
        self.records = []

    def record(self, type, /, **fields):
        self.records.append({"type": type, **fields})
        return fields


class Stage:
    """Enough of runbook.stage.Stage for operations: run() records, answers from `replies`.
    `platform={"name": "openbsd", "release": "5.0"}` gives another profile."""

    def __init__(self, known: dict | None = None, *, dry_run=False, mode="batch",
                 replies: dict | None = None, fail: str | None = None, **overrides):
        data = {k: dict(v) for k, v in PARAMS.items()}
        for section, values in overrides.items():
            data[section] = data[section] | values
        self.params = params.validate(**data)
        wanted = self.params.platform
        self.platform = (platforms.debian("12") if wanted.name == "auto" else
                         platforms.choose(wanted.name, wanted.release, wanted.name,
                                          wanted.release))
        self.audit = Audit()
        self.run_dir = Path("/tmp/20250101T000000Z-test")
        self.mode, self.dry_run = mode, dry_run
        self.results = []
        self.scratch = {}
        self.commands: list[str] = []
        self.replies = replies or {}
        self.fail = fail
        self.target = types.SimpleNamespace(host="127.0.0.11", address="127.0.0.11")
        facts.cache(self).update(known or {})

    @property
    def run_id(self):
        return self.run_dir.name

    @property
    def interactive(self):
        return self.mode == "interactive"

    async def run(self, command, *, check=True, **_):
        self.commands.append(command)
        if self.fail and self.fail in command:
            result = Result(command, 1, "", "injected failure")
            if check:
                raise CommandFailed(f"`{command}` exited 1", result)
            return result
        for key, reply in self.replies.items():
            if key in command:
                return Result(command, *reply) if isinstance(reply, tuple) else Result(
                    command, 0, reply)
        return Result(command)


class Files(types.ModuleType):
    """Stands in for runbook.files: remembers writes, restores from them."""

    def __init__(self):
        super().__init__("runbook.files")
        self.writes: list[tuple[str, bytes]] = []
        self.restored: list[str] = []

    async def write_file(self, target, path, content, *, run_id, mode=None, owner=None,
                         audit=None):
        self.writes.append((path, content))
        return object()

    async def backed_up_paths(self, target, run_id):
        return [path for path, _ in self.writes]

    async def restore_file(self, target, path, *, run_id, audit=None):
        self.restored.append(path)

    async def restore_run(self, target, run_id, audit=None):
        self.restored += [path for path, _ in self.writes]


def install_files(monkeypatch) -> Files:
    from runbook.ops import operations

    fake = Files()
    monkeypatch.setattr(operations, "files", fake)
    return fake
