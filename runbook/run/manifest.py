"""The manifest of stage notebooks: which exist, in what order, and which run by default."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runbook.errors import RunbookError

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@dataclass(frozen=True)
class StageInfo:
    name: str  # "00-preflight": the notebook's file name without .ipynb
    title: str
    steps: str  # guide step ids it carries out (../shared/guide/STEPS.md)
    default: bool = True  # part of a plain `runbook run`

    @property
    def short(self) -> str:
        return self.name.split("-", 1)[1]

    @property
    def notebook(self) -> Path:
        return NOTEBOOKS / f"{self.name}.ipynb"

    @property
    def step_count(self) -> int:
        """How many steps the notebook takes: one step a cell, each awaiting one operation."""
        cells = json.loads(self.notebook.read_text())["cells"]
        return sum(1 for c in cells if c["cell_type"] == "code"
                   and "".join(c["source"]).startswith("await "))


# Order matters: a run executes the default stages top to bottom.
MANIFEST: tuple[StageInfo, ...] = (
    StageInfo("00-preflight", "Preflight: what is on the host", "before G1"),
    StageInfo("10-install", "Install Postfix", "G1, G2"),
    StageInfo("20-enable", "Postfix becomes the system mailer", "G3-G8"),
    StageInfo("30-configure", "Minimal configuration", "G9-G12"),
    StageInfo("40-start", "Check and start", "G13-G16"),
    StageInfo("50-validate", "A test message, end to end", "G17-G19"),
    StageInfo("60-harden", "Chroot files and relay review", "G20, G21, G10"),
    StageInfo("70-dovecot", "Mailbox access with Dovecot", "G22"),
    StageInfo("90-troubleshoot", "Troubleshooting", "G24", default=False),
    StageInfo("95-rollback", "Going back to the previous mail server", "G23", default=False),
)


def find(name: str) -> StageInfo:
    """A stage by its notebook name (`00-preflight`) or short name (`preflight`)."""
    for stage in MANIFEST:
        if name in (stage.name, stage.short):
            return stage
    known = ", ".join(stage.name for stage in MANIFEST)
    raise RunbookError(f"unknown stage {name!r}; stages are: {known}")


def select(stages: list[str] | None = None, start: str | None = None) -> list[StageInfo]:
    """The stages a run executes: the named ones, or the default run, from `start` on."""
    chosen = [find(name) for name in stages] if stages else [s for s in MANIFEST if s.default]
    chosen.sort(key=MANIFEST.index)
    if start:
        first = find(start)
        if first not in chosen:
            chosen = [s for s in MANIFEST if s.default or s == first]
        chosen = chosen[chosen.index(first):]
    return chosen
