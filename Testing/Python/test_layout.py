"""The engine's layering: stages as sub-packages, one public API, no import circles, nothing private crossing.

Read statically (ast), so that an import hidden in a function or under ``if TYPE_CHECKING:`` counts too.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "DoseAlign" / "DoseAlignLib"
STAGES = ["dicom", "link", "geometry", "structures", "audit", "output"]


def engine_modules() -> dict:
    """Dotted module name -> path, for every engine file."""
    modules = {}
    for path in sorted(ENGINE.rglob("*.py")):
        parts = list(path.relative_to(ENGINE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(path: Path, module: str) -> list:
    """``(target module, imported name, line)`` for every ``from X import name`` into the engine."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target == "DoseAlignLib" or target.startswith("DoseAlignLib."):
            found.extend((target, alias.name, node.lineno) for alias in node.names)
    return found


def import_graph() -> dict:
    modules = engine_modules()
    edges: dict = {name: set() for name in modules}
    for name, path in modules.items():
        for target, imported, _line in imports_of(path, name):
            submodule = f"{target}.{imported}"
            destination = submodule if submodule in modules else target
            if destination in modules and destination != name:
                edges[name].add(destination)
    return edges


def find_cycle(edges: dict):
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    state: dict = {}
    stack: list = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_stages_are_sub_packages_in_a_readable_tree():
    for stage in STAGES:
        package = ENGINE / stage
        assert (package / "__init__.py").is_file(), f"{stage}/ is not a package"
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8")))
        assert doc and doc.startswith("Stage "), f"{stage}/__init__.py should say which stage it is"
    top = {p.stem for p in ENGINE.glob("*.py")}
    assert top == {
        "__init__",
        "__main__",
        "api",
        "arguments",
        "batch",
        "cli",
        "errors",
        "limits",
        "options",
        "parallel",
        "phantom",
        "pipeline",
        "training",
    }, f"modules at the top besides the runners and the shared ones: {sorted(top)}"


def test_every_engine_module_says_what_it_is_for():
    missing = [name for name, path in engine_modules().items() if not ast.get_docstring(ast.parse(path.read_text()))]
    assert not missing, f"modules without a docstring: {missing}"


def top_level_names_bound_twice(source: str) -> list:
    """Names a module binds twice at its top level (an assignment, a function or a class): the later one silently
    replaces the earlier for every use, as a second ``_DECIMAL`` in output/pseudonym.py did."""
    seen, twice = set(), []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names = [node.name]
        else:
            names = []
        twice += [n for n in names if n in seen]
        seen.update(names)
    return twice


def test_no_module_binds_a_top_level_name_twice():
    found = {
        name: twice
        for name, path in engine_modules().items()
        if (twice := top_level_names_bound_twice(path.read_text(encoding="utf-8")))
    }
    assert not found, found
    assert top_level_names_bound_twice("A = 1\ndef f(): pass\nA = 2\n") == ["A"]  # the check can fail


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():  # the check above could never fail if this did not
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_private_names_cross_modules():
    crossing = []
    modules = engine_modules()
    for name, path in modules.items():
        for target, imported, line in imports_of(path, name):
            if imported.startswith("_") and not imported.startswith("__") and f"{target}.{imported}" not in modules:
                crossing.append(f"{path.relative_to(ROOT)}:{line}: {imported} from {target}")
    assert not crossing, crossing


def glue_imports(source: str) -> list:
    """Engine modules a piece of code imports (``from DoseAlignLib.x import`` / ``import DoseAlignLib.x``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("DoseAlignLib"):
            if node.module == "DoseAlignLib":
                found.extend(f"DoseAlignLib.{a.name}" for a in node.names if a.name != "api")
            elif node.module != "DoseAlignLib.api":
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names if a.name.startswith("DoseAlignLib."))
    return found


@pytest.mark.parametrize(
    "relative",
    [
        "DoseAlign/DoseAlign.py",
        "DoseAlign/DoseAlignBatch.py",
        "DoseAlign/DoseAlignMRML/volumes.py",
        "DoseAlign/DoseAlignMRML/resamplers.py",
    ],
)
def test_slicer_glue_and_bridge_use_only_the_public_api(relative):
    assert glue_imports((ROOT / relative).read_text(encoding="utf-8")) == []


def test_the_command_uses_only_the_public_api():
    names = [t for t, _n, _l in imports_of(ENGINE / "cli.py", "DoseAlignLib.cli")]
    assert set(names) <= {"DoseAlignLib", "DoseAlignLib.api"}, names


def test_notebook_and_readme_use_only_the_public_api():
    notebook = json.loads((ROOT / "Resources" / "Notebooks" / "DoseAlign.ipynb").read_text(encoding="utf-8"))
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README has no python examples to check"
    for source in cells + blocks:
        assert glue_imports(source) == [], source[:200]


def test_the_checks_see_a_private_import():  # the glue check could never fail if this did not
    assert glue_imports("from DoseAlignLib.output import writers\nimport DoseAlignLib.pipeline\n") == [
        "DoseAlignLib.output",
        "DoseAlignLib.pipeline",
    ]
    assert glue_imports("from DoseAlignLib import api\nfrom DoseAlignLib.api import Grid\n") == []


def test_every_public_name_resolves():
    from DoseAlignLib import api

    for name in api.__all__:
        assert getattr(api, name) is not None, name
    with pytest.raises(AttributeError):
        api.no_such_name  # noqa: B018


@pytest.mark.parametrize("module", ["DoseAlignLib", "DoseAlignLib.cli"])
def test_python_dash_m_entry_points(module):
    done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("dosealign ")
