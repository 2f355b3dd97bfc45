"""Static checks of the Slicer extension; no Slicer, no slicer-core needed.

* every Python file under DoseAlign/ parses as Python 3.9 (Slicer 5.6 and 5.8 bundle 3.9), and the
  files Slicer imports avoid what 3.9 can parse but not run (``X | Y`` annotations, evaluated by
  parameterNodeWrapper);
* DoseAlign.ui is well-formed and defines every ``self.ui.<name>`` the module uses, with
  parameter bindings that name real parameters;
* every Slicer/SlicerRT/CTK name the module uses (DoseAlign.py, DoseAlignBatch.py, DoseAlignMRML/, the .ui)
  is listed in fixtures/slicer_api.json with the file and line that define it at Slicer v5.6.2, v5.8.1,
  v5.10.0 and main (Qt and VTK names with how they were checked);
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
RESAMPLERS_PY = MODULE_DIR / "DoseAlignMRML" / "resamplers.py"
BRIDGE_PY = MODULE_DIR / "DoseAlignMRML" / "volumes.py"
SLICER_FILES = (MODULE_PY, BATCH_PY, RESAMPLERS_PY, BRIDGE_PY)

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
            and not node.attr.startswith("__")
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
    assert len(bound) >= 10
    # the folder fields are connected by the widget (DoseAlignWidget.FOLDER_FIELDS): bound through the wrapper,
    # an unset Path parameter showed as "." instead of the field's most recent folder (second reading N4)
    assert not {"inputFolderPathLineEdit", "outputFolderPathLineEdit"} & set(bound)
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


def test_ui_ct_selector_may_be_empty_and_the_dose_selector_not():
    """The CT is optional (the engine picks the dose's CT): its selector offers None, so that a dose whose CT is
    not loaded clears it instead of showing whatever volume came first. The dose selector lists SlicerRT doses
    only (attribute filter set in DoseAlign.py) and takes the first one."""
    widgets = ui_widgets()

    def none_enabled(name):
        return next(p.findtext("bool") for p in widgets[name].findall("property") if p.get("name") == "noneEnabled")

    assert none_enabled("ctVolumeSelector") == "true" and none_enabled("doseVolumeSelector") == "false"
    assert 'doseVolumeSelector.addAttribute("vtkMRMLScalarVolumeNode", DoseAlignLogic.DOSE_VOLUME_ATTRIBUTE)' in (
        MODULE_PY.read_text(encoding="utf-8")
    )


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


# ---- Slicer names and where they were verified ------------------------------------------------------

#: Modules the Slicer files import from the standard library, numpy or the project: their names are not Slicer's.
LOCAL_ROOTS = {
    "np",
    "os",
    "json",
    "pathlib",
    "time",
    "logging",
    "tempfile",
    "shutil",
    "contextlib",
    "sys",
    "traceback",
    "argparse",
    "api",
    "mrml",
    "resamplers",
    "enum",
    "typing",
    "unittest",
    "args",
}
#: Attribute names of Python's own types (str, list, dict, Path, ndarray, argparse, unittest) the files use.
PYTHON_ATTRIBUTES = {
    "add",
    "append",
    "extend",
    "join",
    "split",
    "strip",
    "replace",
    "format",
    "get",
    "items",
    "values",
    "keys",
    "max",
    "min",
    "sum",
    "astype",
    "startswith",
    "mkdir",
    "read_text",
    "is_dir",
    "is_file",
    "iterdir",
    "write",
    "flush",
    "parse_args",
    "add_argument",
    "assertEqual",
    "assertGreater",
    "assertIn",
    "assertIsNone",
    "assertLessEqual",
    "assertTrue",
    "assertRaises",
    "any",
    "all",
    "shape",
    "dtype",
    "ndim",
    "size",
    "T",
    "copy",
    "reshape",
    "name",
    "value",
    "label",
    "code",
    "__dict__",
    "__name__",
    "lower",
    "upper",
    "stream",
    "messageDelay",
}
#: Variables that hold Slicer, SlicerRT, CTK or VTK objects (their attributes are those objects', even where the
#: engine has an attribute of the same name, e.g. a DICOM loadable's ``files``).
SLICER_RECEIVERS = {
    "loadable",
    "node",
    "cli_node",
    "database",
    "shNode",
    "segmentationNode",
    "display",
    "doseNode",
    "ctNode",
    "output_node",
    "input_node",
    "reference_node",
    "image",
    "matrix",
    "table",
    "item",
    "parent",
    "scene",
    "helper",
    "uiWidget",
    "module",
    "cli",
    "volumes_logic",
    "output",
    "aligned",
    "twin",
    "widget",
}
#: Slicer's scripted-module base classes (the module star-imports them).
SLICER_BASES = (
    "ScriptedLoadableModule",
    "ScriptedLoadableModuleWidget",
    "ScriptedLoadableModuleLogic",
    "ScriptedLoadableModuleTest",
)
STRING_NAME = re.compile(r"^(DICOM(\.[A-Za-z]+)?|DicomRtImport\.[A-Za-z]+|SlicerParameterName|[a-z]+dwivolume)$")


def _engine_attributes() -> set:
    """Names the engine defines (functions, classes, dataclass fields, attributes): not Slicer's."""
    names = set()
    for path in (MODULE_DIR / "DoseAlignLib").rglob("*.py"):
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return names


def _own_names() -> set:
    """What the Slicer files define themselves (functions, classes, ``self.x`` attributes, module constants)."""
    names = set()
    for path in SLICER_FILES:
        tree = _tree(path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                names.add(node.attr)
        for node in tree.body:
            if isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.Assign, ast.AnnAssign)):
                        targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def foreign_names(paths=SLICER_FILES) -> dict:
    """Every name the Slicer files take from Slicer, SlicerRT, CTK, Qt or VTK -> the files using it:
    attributes (method calls included) on anything but the project's, Python's and the engine's objects,
    names imported from ``slicer.*``/``DICOMLib``, and strings that name Slicer classes, plugins,
    attributes and modules; plus the .ui's widget classes."""
    own = _own_names()  # a ``self.x`` the files do not set comes from Slicer's base classes
    excluded = own | _engine_attributes() | PYTHON_ATTRIBUTES
    found: dict = {}

    def note(name, path):
        found.setdefault(name, set()).add(path.name)

    for path in paths:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Attribute):
                root = node
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in LOCAL_ROOTS:
                    continue
                receiver = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
                slicers = (
                    (isinstance(root, ast.Name) and root.id in ("slicer", "vtk", "qt") + SLICER_BASES)
                    or (isinstance(root, ast.Call) and ast.unparse(root.func) == "super")
                    or receiver in SLICER_RECEIVERS
                    or (
                        isinstance(node.value, ast.Name)
                        and node.value.id == "self"
                        and node.attr not in own | PYTHON_ATTRIBUTES
                    )
                )
                if ast.unparse(node.value) == "self.ui" or (node.attr in excluded and not slicers):
                    continue
                note(node.attr, path)
            elif isinstance(node, ast.Name) and node.id in SLICER_BASES:
                note(node.id, path)
            elif (
                isinstance(node, ast.Call)
                and ast.unparse(node.func) == "getattr"
                and "slicer" in ast.unparse(node.args[0])
                and isinstance(node.args[1], ast.Constant)
            ):
                note(node.args[1].value, path)
            elif (
                isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("slicer", "DICOMLib")
            ):
                for alias in node.names:
                    if alias.name != "*":
                        note(alias.name, path)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if CLASS_NAME.match(text) or PLUGIN_NAME.match(text) or STRING_NAME.match(text):
                    note(text, path)
            elif isinstance(node, ast.Assign) and ast.unparse(node.targets[0]).endswith("parent.dependencies"):
                for name in ast.literal_eval(node.value):
                    if name != "DoseAlign":  # the module itself
                        note(name, path)
    ui = ET.parse(UI_FILE).getroot()
    for widget in ui.iter("widget"):
        if CLASS_NAME.match(widget.get("class", "")):
            note(widget.get("class"), UI_FILE)
    return found


def test_the_name_finder_sees_slicer_names():  # the check below could never fail if this found nothing
    found = foreign_names()
    for name in ("GetItemUID", "runSync", "filesForSeries", "files", "selected", "BusyMask", "addCurrentPathToHistory"):
        assert name in found, name
    for name in ("case_id", "append", "loadFileLists", "resamplerFor", "with_array"):
        assert name not in found, name
    assert {"DicomRtImportExportPlugin", "resamplescalarvectordwivolume", "DicomRtImportExport"} <= set(found)
    assert {"qMRMLNodeComboBox", "ctkPathLineEdit"} <= set(found)


def test_every_slicer_name_the_module_uses_is_verified(api):
    missing = {name: sorted(files) for name, files in foreign_names().items() if name not in api["names"]}
    assert not missing, f"verify these in Slicer/SlicerRT/CTK and add them (verify_slicer_api.py): {missing}"


def test_fixture_entries_give_release_file_and_line(api):
    releases = {"v5.6.2", "v5.8.1", "v5.10.0", "main"}
    for repository, refs in api["refs"].items():
        assert set(refs) == releases and all(len(commit) == 40 for commit in refs.values()), repository
    for name, entry in api["names"].items():
        if entry["repository"] in ("Qt", "VTK"):
            assert entry.get("verified_by"), name
            continue
        assert entry["repository"] in api["refs"], name
        seen = {v["release"]: v for v in entry["verified"]}
        assert set(seen) == releases, name
        for release, where in seen.items():
            assert where["path"] and isinstance(where["line"], int) and where["line"] > 0, (name, release)
            assert api["refs"][entry["repository"]][release].startswith(where["commit"]), (name, release)


def test_unused_fixture_names_are_few(api):
    """The fixture lists what the module uses, not a catalogue: a stale name means a stale verification."""
    unused = set(api["names"]) - set(foreign_names()) - {"ctkDICOMDatabase.openDatabase"}
    assert not unused, f"no longer used, remove from verify_slicer_api.py: {sorted(unused)}"


def test_every_module_and_plugin_is_known():
    found = foreign_names()
    assert {"DICOMScalarVolumePlugin", "DicomRtImportExportPlugin"} <= set(found)
    assert "DicomRtImport" not in found  # SlicerRT's module is DicomRtImportExport


# ---- the Resample CLI -------------------------------------------------------------------------------


def cli_parameters_passed() -> dict:
    """The dict literal CliResampler (DoseAlignMRML/resamplers.py) hands to slicer.cli.run/runSync."""
    for node in ast.walk(_tree(RESAMPLERS_PY)):
        if isinstance(node, ast.FunctionDef) and node.name == "__call__":
            for sub in ast.walk(node):
                if isinstance(sub, ast.Assign) and ast.unparse(sub.targets[0]) == "parameters":
                    assert isinstance(sub.value, ast.Dict)
                    return {ast.literal_eval(k): ast.unparse(v) for k, v in zip(sub.value.keys, sub.value.values)}
    raise AssertionError("CliResampler.__call__ does not build a 'parameters' dict")


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
    build = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S).group(1)
    assert "NAME ${MODULE_NAME}" in build and "WITH_GENERIC_TESTS" not in build  # the module registers it itself
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py SLICER_ARGS ${_dependency_module_paths})" in text
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


def _configure_module_cmake(tmp_path, slicerrt_dir=None) -> list:
    """DoseAlign/CMakeLists.txt configured by the real cmake, with Slicer's macros replaced by ones that record
    their arguments: the slicer_add_python_unittest calls, each as its argument list."""
    import shutil
    import subprocess

    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    calls = tmp_path / "calls.txt"
    lines = [
        "cmake_minimum_required(VERSION 3.16)",
        "project(Probe NONE)",
        "set(BUILD_TESTING ON)",
        "set(Slicer_QTLOADABLEMODULES_LIB_DIR lib/Slicer-5.8/qt-loadable-modules)",
        "set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)",
        "set(Slicer_CLIMODULES_LIB_DIR lib/Slicer-5.8/cli-modules)",
        "macro(slicerMacroBuildScriptedModule)",
        "endmacro()",
        "macro(slicer_add_python_unittest)",
        f'  file(APPEND "{calls.as_posix()}" "${{ARGN}}\n")',
        "endmacro()",
        # what Slicer's does, less the file: configures qSlicer<name>ModuleGenericTest.py and lists its file name
        # (v5.8.1 CMake/SlicerMacroConfigureGenericPythonModuleTests.cmake:6-35)
        "macro(SlicerMacroConfigureGenericPythonModuleTests MODULENAMES TEST_SCRIPTS_OUTPUT_VAR)",
        "  foreach(MODULENAME ${MODULENAMES})",
        "    list(APPEND ${TEST_SCRIPTS_OUTPUT_VAR} qSlicer${MODULENAME}ModuleGenericTest.py)",
        "  endforeach()",
        "endmacro()",
    ]
    if slicerrt_dir:
        lines.append(f'set(SlicerRT_DIR "{slicerrt_dir}")')
    lines.append(f'add_subdirectory("{MODULE_DIR.as_posix()}" module)')
    (tmp_path / "src").mkdir(parents=True)
    (tmp_path / "src" / "CMakeLists.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = subprocess.run(
        [cmake, "-S", str(tmp_path / "src"), "-B", str(tmp_path / "build")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [line.split(";") for line in calls.read_text(encoding="utf-8").splitlines()]


def test_cmake_unittest_sees_slicerrt_modules(tmp_path):
    """Second reading N8: py_DoseAlign gets SlicerRT's module folders when SlicerRT_DIR is known; third reading
    F4: so does the generic test, which the module registers itself with the arguments Slicer's
    WITH_GENERIC_TESTS gives it (v5.8.1 SlicerMacroBuildScriptedModule.cmake:114-119)."""
    inner = "/build/SlicerRT-build/inner-build"
    slicerrt = [
        "--additional-module-paths",
        f"{inner}/lib/Slicer-5.8/qt-loadable-modules",
        f"{inner}/lib/Slicer-5.8/qt-scripted-modules",
        f"{inner}/lib/Slicer-5.8/cli-modules",
    ]
    build = tmp_path / "with" / "build"
    generic = ["SCRIPT", "qSlicerDoseAlignModuleGenericTest.py", "SLICER_ARGS", "--no-main-window"]
    generic += [
        "--disable-cli-modules",
        "--additional-module-path",
        f"{build.as_posix()}/lib/Slicer-5.8/qt-scripted-modules",
    ]
    unit, generic_call = _configure_module_cmake(tmp_path / "with", inner)
    assert unit == ["SCRIPT", "DoseAlign.py", "SLICER_ARGS", *slicerrt]
    assert generic_call == [*generic, *slicerrt, "TESTNAME_PREFIX", "nomainwindow_"]
    unit, generic_call = _configure_module_cmake(tmp_path / "without")
    assert unit == ["SCRIPT", "DoseAlign.py", "SLICER_ARGS"]  # nothing added when SlicerRT's build is unknown
    assert generic_call[:2] == generic[:2] and not set(slicerrt) & set(generic_call)


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
