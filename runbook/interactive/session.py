"""Interactive sessions: fresh notebook copies under runs/, served by JupyterLab on loopback.

The committed notebooks/ are the procedure and never gain outputs: `create()` copies them
into `runs/session-<UTC timestamp>/`, where what the operator runs becomes the record.
Given a params file, the stage copies get its values injected (as papermill injects them)
with mode "interactive" and the session folder as their run folder, so one audit.jsonl
chains every stage run in the session. `Lab` serves JupyterLab on 127.0.0.1 with a token
and the project's kernel, rooted at runs/: the records are in reach, notebooks/ is not.
"""

from __future__ import annotations

import argparse
import html
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import nbformat
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from runbook import params as model
from runbook.audit import update_run_json
from runbook.errors import RunbookError
from runbook.run.stage import unused_folder

PROJECT = Path(__file__).resolve().parents[2]
RUNS = PROJECT / "runs"
NOTEBOOKS = PROJECT / "notebooks"
START = "start.ipynb"


def create(params_file: str | Path | None = None, *, runs: Path = RUNS,
           notebooks: Path = NOTEBOOKS) -> Path:
    """A new session folder with clean copies of every notebook; returns its path.

    With a params file (validated first: a bad one creates nothing) the stage notebooks are
    parameterized for its host, in interactive mode, recording into the session folder.
    """
    params = model.load(params_file) if params_file else None
    folder = unused_folder(runs / f"session-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    folder.mkdir(parents=True)
    for source in sorted(Path(notebooks).glob("*.ipynb")):
        if params is not None and source.name[:2].isdigit():
            # papermill's own loader: it gives every cell the tags list parameterize reads.
            nb = parameterize_notebook(_clean(load_notebook_node(str(source))),
                                       stage_parameters(params, folder))
        else:
            nb = _clean(nbformat.read(source, as_version=4))
        nbformat.write(nb, folder / source.name)
    if params is not None:
        update_run_json(folder, host=params.target.host, params_file=str(params_file),
                        mode="interactive", start=datetime.now(UTC).isoformat(timespec="seconds"))
    return folder


def stage_parameters(params: model.Params, folder: Path) -> dict:
    """What a stage notebook of the session gets: the params' sections, interactive mode."""
    return model.as_parameters(params) | {
        "mode": "interactive", "run_dir": str(folder), "dry_run": False}


def _clean(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def offer(form, runs: Path = RUNS) -> None:
    """A button under the form: a new session prepared for the params file just saved."""
    import ipywidgets as w
    from IPython.display import display

    button = w.Button(description="New session for the saved file", icon="play",
                      layout=w.Layout(width="auto"))
    button.add_class("rb-new-session")
    result = w.HTML()

    def clicked(_):
        if form.saved is None:
            result.value = "<b>Save a params file with the form first.</b>"
            return
        folder = create(form.saved, runs=runs)
        links = " · ".join(
            f'<a href="{html.escape(os.path.relpath(nb, Path.cwd()))}">{nb.stem}</a>'
            for nb in sorted(folder.glob("[0-9]*.ipynb")))
        result.value = (f"<b>{html.escape(folder.name)}</b> is ready for "
                        f"{html.escape(form.saved.name)}: {links or 'no stage notebooks yet'}")

    button.on_click(clicked)
    display(w.VBox([button, result]))


# --- JupyterLab ----------------------------------------------------------------------------

def free_port(preferred: int = 0) -> int:
    """`preferred` if it is free on loopback, else any free port."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RunbookError("no free TCP port on 127.0.0.1")


class Lab:
    """A JupyterLab server on 127.0.0.1 with a token, running this interpreter's kernel."""

    def __init__(self, root_dir: Path = RUNS, *, port: int = 0, token: str | None = None,
                 args: tuple[str, ...] = (), env: dict | None = None, log=None):
        self.root_dir = Path(root_dir)
        self.port = free_port(port)
        self.token = token or secrets.token_hex(24)
        self.args, self.env, self.log = args, env, log
        self.process: subprocess.Popen | None = None

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/lab/tree/{path}?token={self.token}"

    def command(self) -> list[str]:
        command = [
            sys.executable, "-m", "jupyterlab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            # Nothing fetched from the Internet: no news, no update check, no PyPI.
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        return [*command, *self.args]

    def start(self, timeout: float = 60) -> Lab:
        _check_kernel()
        self.root_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ | (self.env or {})
        self.process = subprocess.Popen(self.command(), env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT if self.log else None,
                                        start_new_session=True)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        status = f"http://127.0.0.1:{self.port}/api/status?token={self.token}"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RunbookError(f"JupyterLab exited with status {self.process.returncode}")
            try:
                with urllib.request.urlopen(status, timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RunbookError(f"JupyterLab did not answer on port {self.port} in {timeout:.0f} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _check_kernel() -> None:
    """The notebooks must run in this environment: warn if `python3` names another Python."""
    from jupyter_client.kernelspec import KernelSpecManager

    program = KernelSpecManager().get_kernel_spec("python3").argv[0]
    if program not in ("python", "python3", sys.executable):
        print(f"warning: the python3 kernel runs {program}, not {sys.executable}; "
              "the notebooks need the project's environment", file=sys.stderr)


def serve(params_file: str | Path | None = None, port: int = 8888) -> int:
    """A new session folder served by JupyterLab until Ctrl-C (`make lab`)."""
    folder = create(params_file)
    lab = Lab(folder.parent, port=port)
    try:
        lab.start()
        print(f"session: {folder}\nJupyterLab: {lab.url(f'{folder.name}/{START}')}\n"
              "Ctrl-C stops the server; the session folder stays as the record.", flush=True)
        lab.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        lab.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m runbook.interactive.session`: what `runbook session` does."""
    parser = argparse.ArgumentParser(prog="runbook session", description=serve.__doc__)
    parser.add_argument("--params", type=Path, help="prepare the stage notebooks for this file")
    parser.add_argument("--port", type=int, default=8888, help="port (another if taken)")
    args = parser.parse_args(argv)
    try:
        return serve(args.params, args.port)
    except RunbookError as e:
        print(f"runbook: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
