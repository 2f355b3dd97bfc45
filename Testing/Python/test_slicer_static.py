"""Static checks of the Slicer extension; no Slicer, no slicer-core needed.

* every Python file under DoseAlign/ parses as Python 3.9 (Slicer 5.6 and 5.8 bundle 3.9), and the
  files Slicer imports avoid what 3.9 can parse but not run (``X | Y`` annotations, evaluated by
  parameterNodeWrapper);
* DoseAlign.ui is well-formed and defines every ``self.ui.<name>`` the module uses, with
  parameter bindings that name real parameters;
* every Slicer/SlicerRT/CTK class, module, plugin and function the module uses is listed, with the
  source that defines it, in fixtures/slicer_api.json;
* the parameters passed to the Resample CLI exist in its XML (fixtures/resample_cli_parameters.json);
* DoseAlign/CMakeLists.txt lists every Python file, the catalog files agree with each other.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "DoseAlign"
MODULE_PY = MODULE_DIR / "DoseAlign.py"
BATCH_PY = MODULE_DIR / "DoseAlignBatch.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "DoseAlign.ui"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SLICER_FILES = (MODULE_PY, BATCH_PY)

CLASS_NAME = re.compile(r"^(vtkMRML|vtkSlicer|qMRML|qSlicer|ctk)[A-Za-z0-9]+$")
PLUGIN_NAME = re.compile(r"^(DICOM|Dicom)[A-Za-z0-9]*Plugin$")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.fixture(scope="module")
def api() -> dict:
    return json.loads((FIXTURES / "slicer_api.json").read_text(encoding="utf-8"))


# ---- Python 3.9 ------------------------------------------------------------------------------------


def python_files() -> list:
    return sorted(p for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", python_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_parses_as_python39(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


@pytest.mark.parametrize("path", SLICER_FILES, ids=lambda p: p.name)
def test_no_union_operator_in_annotations(path):
    """``X | None`` parses on 3.9 but fails when parameterNodeWrapper evaluates the annotation."""
    bad = []
    for node in ast.walk(_tree(path)):
        annotations = []
        if isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            annotations += [a.annotation for a in args if a.annotation is not None]
            annotations += [node.returns] if node.returns is not None else []
        for annotation in annotations:
            for sub in ast.walk(annotation):
                if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.BitOr):
                    bad.append(f"line {sub.lineno}")
    assert not bad, f"{path.name}: use typing.Optional/Union, not X | Y ({', '.join(bad)})"


def test_module_files_import_no_engine_forbidden_names():
    """The engine never imports slicer, qt or ctk, anywhere (the MRML bridge lives in DoseAlignMRML)."""
    for path in sorted((MODULE_DIR / "DoseAlignLib").rglob("*.py")):
        for node in ast.walk(_tree(path)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            assert not set(names) & {"slicer", "qt", "ctk", "vtk"}, f"{path.name} imports {names} at module level"


# ---- the .ui file ----------------------------------------------------------------------------------


def ui_widgets() -> dict:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def ui_names_used(path: Path = MODULE_PY) -> set:
    """Every ``self.ui.<name>`` in the file."""
    names = set()
    for node in ast.walk(_tree(path)):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            names.add(node.attr)
    return names


def parameter_fields() -> dict:
    """Annotated fields of DoseAlignParameterNode: name -> annotation source."""
    for node in _tree(MODULE_PY).body:
        if isinstance(node, ast.ClassDef) and node.name == "DoseAlignParameterNode":
            return {
                item.target.id: ast.unparse(item.annotation)
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    raise AssertionError("DoseAlignParameterNode not found")


def test_ui_is_well_formed_with_a_qmrmlwidget_root():
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui"
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == "DoseAlign"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"


def test_ui_defines_every_widget_the_module_uses():
    used = ui_names_used()
    assert len(used) >= 10
    missing = used - set(ui_widgets())
    assert not missing, f"DoseAlign.py uses self.ui.{sorted(missing)} that DoseAlign.ui does not define"


def test_ui_has_the_panel_the_issue_asks_for():
    widgets = ui_widgets()
    expected = {
        "ctVolumeSelector": "qMRMLNodeComboBox",
        "doseVolumeSelector": "qMRMLNodeComboBox",
        "inputFolderPathLineEdit": "ctkPathLineEdit",
        "outputFolderPathLineEdit": "ctkPathLineEdit",
        "referenceGridComboBox": "QComboBox",
        "interpolatorComboBox": "QComboBox",
        "structuresCheckBox": "QCheckBox",
        "outputFormatComboBox": "QComboBox",
        "alignButton": "QPushButton",
        "exportButton": "QPushButton",
        "exportAllButton": "QPushButton",
        "cancelButton": "QPushButton",
        "progressBar": "QProgressBar",
        "logTextEdit": "QPlainTextEdit",
        "resultsTable": "QTableWidget",
        "inputsCollapsibleButton": "ctkCollapsibleButton",
    }
    for name, cls in expected.items():
        assert name in widgets and widgets[name].get("class") == cls, name


def test_ui_bindings_name_parameters_of_the_right_type():
    fields = parameter_fields()
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", f"{name}: SlicerParameterName must be a dynamic property"
                bound[name] = (widget.get("class"), prop.findtext("string"))
    assert len(bound) >= 12
    for name, (cls, parameter) in bound.items():
        assert parameter in fields, f"{name} binds unknown parameter {parameter!r}"
        annotation = fields[parameter]
        if cls == "qMRMLNodeComboBox":
            assert annotation.startswith("vtkMRML"), (name, annotation)
        elif cls == "ctkPathLineEdit":
            assert "pathlib.Path" in annotation, (name, annotation)
        elif cls == "QComboBox":
            assert annotation.endswith("Choice"), f"{name}: QComboBox needs an Enum parameter, got {annotation}"
        elif cls == "QCheckBox":
            assert annotation == "bool", (name, annotation)
        elif cls == "QLineEdit":
            assert annotation == "str", (name, annotation)


def test_ui_node_selectors_get_the_scene():
    root = ET.parse(UI_FILE).getroot()
    receivers = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("sender") == "DoseAlign"
        and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    selectors = {n for n, w in ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    assert selectors and selectors <= receivers


def test_ui_custom_widgets_are_declared():
    root = ET.parse(UI_FILE).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget") if not w.get("class", "").startswith("Q")}
    assert used <= declared


# ---- Slicer names and their sources ---------------------------------------------------------------


def _strings_and_identifiers(path: Path) -> set:
    out = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.add(node.value)
        elif isinstance(node, ast.ImportFrom):
            out.update(a.name for a in node.names)
    return out


def _attribute_chains(path: Path) -> set:
    """Dotted names like ``slicer.util.loadUI`` (attribute chains that start at a name)."""
    out = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Attribute):
            parts = []
            current = node
            while isinstance(current, ast.Attribute):
                parts.append(current.attr)
                current = current.value
            if isinstance(current, ast.Name):
                out.add(".".join([current.id, *reversed(parts)]))
    return out


def _getattr_modules(path: Path) -> set:
    """``getattr(slicer.modules, "x")`` -> {"x"}."""
    out = set()
    for node in ast.walk(_tree(path)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) >= 2
            and ast.unparse(node.args[0]) == "slicer.modules"
            and isinstance(node.args[1], ast.Constant)
        ):
            out.add(node.args[1].value)
    return out


def used_class_names() -> set:
    names = set()
    for path in SLICER_FILES:
        names |= {n for n in _strings_and_identifiers(path) if CLASS_NAME.match(n)}
    ui = ET.parse(UI_FILE).getroot()
    names |= {w.get("class") for w in ui.iter("widget") if CLASS_NAME.match(w.get("class", ""))}
    return names


def test_every_slicer_class_is_in_the_fixture(api):
    known = set(api["classes"]) | set(api["strings"])
    missing = used_class_names() - known
    assert not missing, f"add to fixtures/slicer_api.json with their source file: {sorted(missing)}"


def test_every_module_and_plugin_is_in_the_fixture(api):
    modules, plugins, dependencies = set(), set(), set()
    for path in SLICER_FILES:
        modules |= {c.split(".")[2] for c in _attribute_chains(path) if c.startswith("slicer.modules.")}
        modules |= _getattr_modules(path)
        plugins |= {n for n in _strings_and_identifiers(path) if PLUGIN_NAME.match(n)}
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]).endswith("parent.dependencies"):
                dependencies |= set(ast.literal_eval(node.value))
    assert (
        "resamplescalarvectordwivolume" in modules
        and {"DICOMScalarVolumePlugin", "DicomRtImportExportPlugin"} <= plugins
    )
    assert "DicomRtImport" not in plugins
    assert not modules - set(api["modules"]), sorted(modules - set(api["modules"]))
    assert not plugins - set(api["dicom_plugins"]), sorted(plugins - set(api["dicom_plugins"]))
    assert not dependencies - set(api["module_dependencies"]), sorted(dependencies - set(api["module_dependencies"]))


def test_every_slicer_python_function_is_in_the_fixture(api):
    python = api["python"]
    prefixes = {
        "slicer.util.": "slicer.util",
        "slicer.cli.": "slicer.cli",
        "slicer.app.": "slicer.app",
        "DICOMUtils.": "DICOMUtils",
    }
    missing = []
    for path in SLICER_FILES:
        chains = _attribute_chains(path)
        for chain in chains:
            for prefix, group in prefixes.items():
                if chain.startswith(prefix):
                    name = chain[len(prefix) :].split(".")[0]
                    if name not in python[group]["names"]:
                        missing.append(f"{group}.{name}")
            if chain.startswith("slicer.") and chain.count(".") >= 1:
                head = chain.split(".")[1]
                if head not in python["slicer"]["names"] and not CLASS_NAME.match(head):
                    missing.append(f"slicer.{head}")
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("slicer."):
                group = python.get(node.module)
                for alias in node.names:
                    if alias.name != "*" and (group is None or alias.name not in group["names"]):
                        missing.append(f"{node.module}.{alias.name}")
            if isinstance(node, ast.ImportFrom) and node.module == "slicer":
                missing += [f"slicer.{a.name}" for a in node.names if a.name not in python["slicer"]["names"]]
    assert not missing, f"add to fixtures/slicer_api.json with their source: {sorted(set(missing))}"


def test_every_database_and_subject_hierarchy_method_is_in_the_fixture(api):
    receivers = {
        "database": "ctkDICOMDatabase",
        "shNode": "vtkMRMLSubjectHierarchyNode",
        "cliNode": "vtkMRMLCommandLineModuleNode",
    }
    missing = []
    for path in SLICER_FILES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in receivers:
                cls = receivers[node.value.id]
                if node.attr not in api["methods"][cls]["names"]:
                    missing.append(f"{cls}.{node.attr}")
    assert not missing, sorted(set(missing))


def test_fixture_entries_name_their_source(api):
    def check(entry, where):
        assert entry.get("repository") and entry.get("path") and entry.get("verified_by"), where

    for section in ("classes", "modules", "module_dependencies", "dicom_plugins", "strings"):
        for name, entry in api[section].items():
            check(entry, f"{section}.{name}")
    for section in ("methods", "python"):
        for name, group in api[section].items():
            check(group["source"], f"{section}.{name}")
            assert group["names"], f"{section}.{name}"


# ---- the Resample CLI -------------------------------------------------------------------------------


def cli_parameters_passed() -> dict:
    """The dict literal DoseAlignLogic.resampleWithCli hands to slicer.cli.runSync."""
    for node in ast.walk(_tree(MODULE_PY)):
        if isinstance(node, ast.FunctionDef) and node.name == "resampleWithCli":
            for sub in ast.walk(node):
                if isinstance(sub, ast.Assign) and ast.unparse(sub.targets[0]) == "parameters":
                    assert isinstance(sub.value, ast.Dict)
                    return {ast.literal_eval(k): ast.unparse(v) for k, v in zip(sub.value.keys, sub.value.values)}
    raise AssertionError("resampleWithCli does not build a 'parameters' dict")


def test_cli_parameter_names_exist_in_the_resample_xml():
    fixture = json.loads((FIXTURES / "resample_cli_parameters.json").read_text(encoding="utf-8"))
    assert len(fixture["source"]["commit"]) == 40
    known = fixture["parameters"]
    passed = cli_parameters_passed()
    assert {"inputVolume", "outputVolume", "referenceVolume", "interpolationType"} <= set(passed)
    assert not set(passed) - set(known), sorted(set(passed) - set(known))


def test_every_interpolator_is_a_resample_cli_choice():
    fixture = json.loads((FIXTURES / "resample_cli_parameters.json").read_text(encoding="utf-8"))
    elements = set(fixture["parameters"]["interpolationType"]["elements"])
    values = set()
    for node in _tree(MODULE_PY).body:
        if isinstance(node, ast.ClassDef) and node.name == "InterpolatorChoice":
            values = {ast.literal_eval(s.value) for s in node.body if isinstance(s, ast.Assign)}
    assert values == elements


# ---- extension files -------------------------------------------------------------------------------


def cmake_python_scripts() -> set:
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    block = re.search(r"set\(MODULE_PYTHON_SCRIPTS(.*?)\)", text, re.S)
    assert block, "MODULE_PYTHON_SCRIPTS not found"
    return {item.replace("${MODULE_NAME}", "DoseAlign") for item in block.group(1).split()}


def test_cmake_lists_every_python_file():
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in python_files()}
    listed = cmake_python_scripts()
    assert listed == on_disk, f"missing: {sorted(on_disk - listed)}; listed but absent: {sorted(listed - on_disk)}"


def test_cmake_module_shape():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    for resource in re.search(r"set\(MODULE_PYTHON_RESOURCES(.*?)\)", text, re.S).group(1).split():
        assert (MODULE_DIR / resource.replace("${MODULE_NAME}", "DoseAlign")).is_file(), resource
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for needle in (
        "project(DoseAlign)",
        'set(EXTENSION_DEPENDS "SlicerRT")',
        "find_package(Slicer REQUIRED)",
        "add_subdirectory(DoseAlign)",
        "${Slicer_EXTENSION_GENERATE_CONFIG}",
        "${Slicer_EXTENSION_CPACK}",
    ):
        assert needle in top, needle


def test_catalog_entries_agree():
    """DoseAlign.json keys from catalog schema v1.0.2 (additionalProperties false); .s4ext for Slicer <= 5.6."""
    entry = json.loads((ROOT / "DoseAlign.json").read_text(encoding="utf-8"))
    allowed = {
        "$schema",
        "category",
        "scm_url",
        "scm_revision",
        "scm_type",
        "build_dependencies",
        "dicom_support_rule",
        "build_subdirectory",
        "enabled",
        "tier",
    }
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert entry["build_dependencies"] == ["SlicerRT"] and entry["category"] == "Radiotherapy"
    assert isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5
    s4ext = {}
    for line in (ROOT / "DoseAlign.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            s4ext[key] = value.strip()
    assert s4ext["depends"] == "SlicerRT" and s4ext["scm"] == "git"
    assert s4ext["scmurl"] == entry["scm_url"] and s4ext["category"] == entry["category"]


@pytest.mark.parametrize("path", ["Resources/Icons/DoseAlign.png", "DoseAlign/Resources/Icons/DoseAlign.png"])
def test_icons_are_128_png(path):
    data = (ROOT / path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


def test_batch_script_always_exits_and_is_a_hidden_module():
    tree = _tree(BATCH_PY)
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert "DoseAlignBatch" in classes, "Slicer loads every .py of the module folder as a module"
    guard = [n for n in tree.body if isinstance(n, ast.If) and "__name__" in ast.unparse(n.test)]
    assert guard and "sys.exit(" in ast.unparse(guard[0]) and "except BaseException" in ast.unparse(guard[0])
    assert "hidden = True" in BATCH_PY.read_text(encoding="utf-8")


def test_notebook_is_valid_nbformat4():
    notebook = json.loads((ROOT / "Resources" / "Notebooks" / "DoseAlign.ipynb").read_text(encoding="utf-8"))
    assert notebook["nbformat"] == 4 and notebook["cells"]
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code", "raw")
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            ast.parse(source, feature_version=(3, 9))
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.reads(json.dumps(notebook), as_version=4))
