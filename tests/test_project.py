"""The project's own promises: dependencies in step, notebooks clean and parameterised."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jupytext
import pytest
import yaml

from runbook import params
from runbook.run import manifest as stages

PROJECT = Path(__file__).resolve().parent.parent

NOTEBOOKS = sorted((PROJECT / "notebooks").glob("*.ipynb"))
RUNNER_PARAMETERS = {"mode": "batch", "run_dir": "", "dry_run": False}


def _names(requirements) -> dict[str, str]:
    parsed = {}
    for requirement in requirements:
        match = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", requirement)
        parsed[match.group(1).lower()] = match.group(2).replace(" ", "")
    return parsed


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"] + project["optional-dependencies"]["dev"])
    conda = yaml.safe_load((PROJECT / "environment.yml").read_text())["dependencies"]
    listed = _names(d for d in conda if isinstance(d, str) and not d.startswith(("python", "pip")))
    assert listed == wanted


def test_ipykernel_is_new_enough_for_approval_clicks():
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    assert "ipykernel>=7.4" in project["dependencies"]


def test_every_manifest_stage_has_its_notebook():
    assert stages.MANIFEST
    for stage in stages.MANIFEST:
        assert stage.notebook.exists(), stage.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_carry_no_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"])
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; store notebooks clean"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_matches_its_text_twin(path):
    twin = path.with_suffix(".py")
    assert twin.exists(), f"{path.name} has no jupytext twin {twin.name}"
    source = [c.source for c in jupytext.read(twin).cells]
    assert [c.source for c in jupytext.read(path).cells] == source, (
        f"{path.name} is out of date: run `make notebooks`")


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem[:2].isdigit()],
                         ids=lambda p: p.name)
def test_stage_parameters_cell_declares_every_section(path):
    nb = jupytext.read(path)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged parameters"
    namespace: dict = {}
    exec(tagged[0].source, namespace)  # a parameters cell is plain assignments
    declared = {k for k in namespace if not k.startswith("__")}
    assert declared == set(params.SECTIONS) | set(RUNNER_PARAMETERS)
    assert {k: namespace[k] for k in RUNNER_PARAMETERS} == RUNNER_PARAMETERS
    after = cells[cells.index(tagged[0]) + 1].source
    assert re.search(r"validate\(" + r",\s*".join(f"{s}={s}" for s in params.SECTIONS), after), (
        "the first cell after the parameters validates every section with the model")
    assert f'begin("{path.stem}"' in after
