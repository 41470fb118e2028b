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
    twin = path.with_suffix(".md")
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


# --- the layout: layers, what each may import, sizes a person can hold ----------------------

PACKAGE = PROJECT / "runbook"
# Each part of the package and the parts it may import at module level (docs/architecture.md).
# Imports inside functions are allowed upwards only where a comment says why (widgets are
# loaded in interactive mode only; the stage asks the platforms which profile it has; the
# runner writes the report when a run ends).
MAY_IMPORT = {
    "errors": set(),
    "grammar": set(),
    "params": {"errors", "grammar"},
    "inventory": {"errors", "params"},
    "audit": {"errors"},
    "signing": {"errors", "audit"},
    "remote": {"errors", "audit"},
    "ops": {"errors", "audit", "remote"},
    "platforms": {"errors", "grammar", "ops"},
    "services": {"errors", "params", "audit", "remote", "ops"},
    "run": {"errors", "params", "inventory", "audit", "signing", "remote", "ops", "platforms"},
    "interactive": {"errors", "params", "audit", "run"},
    "fleet": {"errors", "params", "inventory", "audit", "remote", "run"},
    "lab": {"errors"},
    "report": {"errors", "params", "inventory", "audit", "signing", "remote", "ops", "platforms",
               "run"},
}
MAY_IMPORT["cli"] = MAY_IMPORT["demo"] = set(MAY_IMPORT)  # the entry points: anything


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "runbook"


def _module_imports(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("runbook"):
            found |= ({f"runbook.{a.name}" for a in node.names} if node.module == "runbook"
                      else {node.module})
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("runbook")}
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_layer_imports_only_the_layers_below(path):
    part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if part == "__init__":
        return
    allowed = MAY_IMPORT[part] | {part}
    wrong = sorted(m for m in _module_imports(path) if _part(m) not in allowed)
    assert not wrong, f"{path.relative_to(PROJECT)} imports {wrong}: {part} may import {allowed}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_classes_stay_a_size_a_person_can_hold(path):
    import ast

    lines = path.read_text().splitlines()
    assert len(lines) <= 500, f"{path.relative_to(PROJECT)} has {len(lines)} lines (at most 500)"
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno >= 150:
            above = lines[node.lineno - 2 - len(node.decorator_list)]
            assert "on purpose" in lines[node.lineno - 3] + above, (
                f"{path.relative_to(PROJECT)}: class {node.name} is "
                f"{node.end_lineno - node.lineno + 1} lines; split it, or say why above it")
