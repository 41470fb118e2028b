"""`make demo`: run the default stages against the first Debian lab host and show the record."""

from __future__ import annotations

import sys

import nbformat

from runbook import audit, lab
from runbook.errors import RunbookError
from runbook.run import runner


def main() -> int:
    try:
        host = next(h for h in lab.status() if h["flavor"] == "debian" and h["running"])
    except StopIteration:
        print("demo: no Debian lab host is running; run `runbook lab up` first", file=sys.stderr)
        return 1
    print(f"demo: running the runbook against lab host {host['name']} ({host['address']})")
    runner.quiet_papermill_logging()
    try:
        run_dir = runner.run(host["params_file"])
    except RunbookError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    count = audit.verify(run_dir)
    show_delivered_message(run_dir)
    print(f"\nThe record of this run: {run_dir}")
    for notebook in sorted(run_dir.glob("*.ipynb")):
        print(f"  {notebook.name}")
    print(f"  audit.jsonl ({count} records, chain verified), run.json")
    print(f"Verify it yourself:  .venv/bin/runbook audit verify {run_dir}")
    print("The lab keeps running: .venv/bin/runbook lab status | .venv/bin/runbook lab down")
    return 0


def show_delivered_message(run_dir) -> None:
    """What the validation stage read from the recipient's mailbox, as its notebook shows it."""
    path = run_dir / "50-validate.ipynb"
    if not path.exists():
        return
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code" and "read_mailbox" in cell.source:
            text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            print("\nThe test message, delivered (from 50-validate.ipynb):\n" + text.strip())


if __name__ == "__main__":
    sys.exit(main())
