"""A test double of ``slicer.cli`` that runs the real Resample Scalar/Vector/DWI Volume executable.

Slicer runs a command-line module (CLI) in ``vtkSlicerCLIModuleLogic::ApplyTask``. That class
ships with PyPI ``slicer-core`` but cannot be driven from Python there: the module description
(``ModuleDescription``) can only be registered from C++. This double re-implements, for executable
CLIs, what ApplyTask does, step by step, and runs the real executable (the bundle in
``../shared/slicer-cli``, built from Slicer v5.8.1's own source; ``./dev test`` unpacks it into
``.slicer-cli/``). References are to Slicer v5.8.1 unless stated; "logic" is
``Base/QTCLI/vtkSlicerCLIModuleLogic.cxx``, "cli.py" is ``Base/Python/slicer/cli.py``:

* ``runSync``/``run``/``createNode``/``setNodeParameters``: cli.py:4-95. Values become strings as
  ``vtkMRMLCommandLineModuleNode::SetParameterAs*`` write them (``Libs/MRML/CLI/
  vtkMRMLCommandLineModuleNode.cxx:415-535``: a double through ``std::ostream`` with its default
  precision of 6 significant digits, booleans as ``true``/``false``, nodes as their ID). A name that
  is not in the XML is dropped silently, as in a release build (the error is ``#ifndef NDEBUG``).
  Numpy scalars other than ``float64`` are not ``float``/``int`` and are dropped with cli.py's
  "unsupported type" print.
* The XML is read as SlicerExecutionModel's ``ModuleDescriptionParser`` (commit 91b921bd, which
  v5.8.1 pins) reads it: leading ``-`` stripped from ``flag``/``longflag`` (:1830-1927), ``default``
  is the initial value (:2047-2052), a missing ``name`` is the longflag.
* Node parameters: logic:910-965 (the node must exist in the scene; ``None`` is skipped), temporary
  file names logic:490-565 (``<temp>/<pid>_<node ID>.nrrd``, digits mapped to letters), inputs
  written by the node's default storage node after ``ConfigureForDataExchange()`` (logic:1010-1123;
  ``vtkMRMLVolumeArchetypeStorageNode``: no compression).
* Command line: logic:1238-1594 (every parameter with a flag in XML order: ``--longflag`` else
  ``-flag``; simple types always with their value, even the default; booleans only when ``true``;
  vectors, strings and files only when not empty; node parameters only when written), then the
  ``index`` parameters in index order (logic:1600-1731; a missing node input gives
  ``No input data assigned to "<label>"`` and ``CompletedWithErrors``).
* Run: ``ITK_AUTOLOAD_PATH`` set empty, stdout/stderr to ``SetOutputText``/``SetErrorText``
  (progress tags removed), a non-zero exit or a signal gives ``CompletedWithErrors`` (logic:1760-2030).
* Outputs: ``vtkSlicerApplicationLogic::RequestReadFile`` then ``ReadDataRequestFile::Execute``
  (``Base/Logic/vtkSlicerApplicationLogicRequests.h:60-235``): a default storage node is added when
  the file exists, ``ReadData(node, temporary=True)``, its file name cleared, the file deleted,
  default display nodes created. A missing output file leaves the node empty and the status still
  becomes ``Completed`` (logic:2545-2556) - callers must check the output node. An output with
  ``reference=`` is moved next to its reference in the subject hierarchy (logic:2238-2318,
  ``ReadDataRequestUpdateSubjectHierarchyLocation``, Requests.h:543-571).

The returned node is a real ``vtkMRMLCommandLineModuleNode`` in the scene (status constants, error
text, ``RemoveNode`` all genuine); its parameter values live in the double (``values_of(node)``).
``run(..., wait_for_completion=False)`` (``Apply``, logic:699-731) starts the process and returns with
the node Running; :func:`process_events` stands for ``slicer.app.processEvents()``: it polls the
process, kills it once ``Cancel()`` has set the node to Cancelling (logic:1837-1846, :1953-1956) and
otherwise reads the outputs back and sets Completed, as the main thread does in Slicer.
Not reproduced (``NotImplementedError``): shared-object CLIs, return parameters, hidden parameters,
markups/ROI/miniscene parameters.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
import types
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
BUNDLE_NAME = "ResampleScalarVectorDWIVolume-minimalIO-bookworm-x86_64"
SHARED_CLI_DIR = ROOT.parent / "shared" / "slicer-cli"
SHARED_XML = SHARED_CLI_DIR / "ResampleScalarVectorDWIVolume.xml"
#: Point this at an executable to use another build than ``.slicer-cli/``.
EXECUTABLE_ENV = "DOSEALIGN_SLICER_CLI"
#: The module attribute name Slicer gives the CLI (``slicer.modules.<lowercase name>``).
MODULE_ATTRIBUTE = "resamplescalarvectordwivolume"

_NODE_TAGS = ("image", "geometry", "transform", "table", "measurement", "pointfile")
_VALUE_FLAG_EXCLUDED = (
    "boolean",
    "file",
    "directory",
    "string",
    "integer-vector",
    "float-vector",
    "double-vector",
    "string-vector",
    "image",
    "point",
    "pointfile",
    "region",
    "transform",
    "geometry",
    "table",
    "measurement",
)
_OPTIONAL_VALUE_TAGS = (
    "file",
    "directory",
    "string",
    "integer-vector",
    "float-vector",
    "double-vector",
    "string-vector",
)
_PROGRESS_TAGS = (
    "filter-progress",
    "filter-stage-progress",
    "filter-name",
    "filter-comment",
    "filter-time",
    "filter-start",
    "filter-end",
)

log = logging.getLogger(__name__)

#: Logics of the CliModule objects made so far (setNodeParameters finds a node's logic here).
_LOGICS: list = []
#: (logic, task) of asynchronous runs (``run(..., wait_for_completion=False)``) not yet finished.
_PENDING: list = []


def _node_class():
    import slicer

    return slicer.vtkMRMLCommandLineModuleNode


@dataclass
class _Task:
    """One ApplyTask between its command line and its end."""

    node: object
    command: List[str]
    to_reload: Dict[str, str]
    files_to_delete: set
    process: Optional[subprocess.Popen] = None
    started: float = 0.0


def process_events() -> None:
    """What ``slicer.app.processEvents()`` does for asynchronous CLI runs: the worker thread's progress
    (here: the child process is polled, and killed once ``Cancel()`` set the node to Cancelling) and, in
    the main thread, the read-back of the outputs (``qSlicerCoreApplication::processAppLogicReadData``,
    v5.8.1 qSlicerCoreApplication.cxx:2042, :2061-2065) that ends in ``Completed``."""
    for entry in list(_PENDING):
        logic, task = entry
        if logic._poll(task):
            _PENDING.remove(entry)


# ---- finding the executable ---------------------------------------------------------------------


def find_executable() -> Optional[Path]:
    """The Resample CLI executable: ``$DOSEALIGN_SLICER_CLI``, else ``<repo>/.slicer-cli/<bundle>/bin/...``."""
    candidates = []
    if os.environ.get(EXECUTABLE_ENV):
        candidates.append(Path(os.environ[EXECUTABLE_ENV]))
    candidates.append(ROOT / ".slicer-cli" / BUNDLE_NAME / "bin" / "ResampleScalarVectorDWIVolume")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def unavailable_reason() -> Optional[str]:
    """Why the real CLI cannot run here (for ``pytest.skip``), or None when it can."""
    executable = find_executable()
    if executable is None:
        if SHARED_CLI_DIR.is_dir():
            return f"the Resample CLI bundle is not unpacked: run ./dev test (it unpacks {SHARED_CLI_DIR.name}/ once)"
        return f"no Resample CLI: {SHARED_CLI_DIR} is absent and ${EXECUTABLE_ENV} is not set"
    try:
        result = subprocess.run([str(executable), "--xml"], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{executable} does not run here: {error}"
    if result.returncode != 0 or b"<executable>" not in result.stdout:
        return f"{executable} --xml failed (exit {result.returncode}): {result.stderr.decode(errors='replace')[:300]}"
    return None


# ---- the module description --------------------------------------------------------------------


@dataclass
class CliParameter:
    """One parameter of the module XML, as ModuleDescriptionParser stores it."""

    tag: str
    name: str
    label: str = ""
    flag: str = ""
    longflag: str = ""
    index: str = ""
    channel: str = ""
    default: str = ""
    type: str = ""
    reference: str = ""
    hidden: str = ""
    multiple: str = ""
    coordinate_system: str = ""
    file_extensions: List[str] = field(default_factory=list)
    elements: List[str] = field(default_factory=list)

    @property
    def is_return_parameter(self) -> bool:
        # ModuleParameter::IsReturnParameter (SlicerExecutionModel ModuleParameter.h:115-124)
        return self.channel == "output" and not (self.flag or self.longflag) and not self.index


@dataclass
class CliDescription:
    """Title and parameters (in XML order) of a CLI module."""

    title: str
    parameters: List[CliParameter]

    def parameter(self, name: str) -> Optional[CliParameter]:
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        return None

    def defaults(self) -> Dict[str, str]:
        return {p.name: p.default for p in self.parameters}


def _text(element, child: str) -> str:
    found = element.find(child)
    return (found.text or "").strip() if found is not None else ""


def parse_description(xml_text: str) -> CliDescription:
    """Parse a CLI module XML (``<executable>``) the way Slicer's ModuleDescriptionParser does for these fields."""
    root = ET.fromstring(xml_text)
    if root.tag != "executable":
        raise ValueError(f"not a CLI module description: root element <{root.tag}>")
    parameters = []
    for group in root.findall("parameters"):
        for element in group:
            if element.tag in ("label", "description"):
                continue
            flag = _text(element, "flag").lstrip("-")
            longflag = _text(element, "longflag").lstrip("-")
            name = _text(element, "name") or longflag
            extensions = element.get("fileExtensions", "")
            parameters.append(
                CliParameter(
                    tag=element.tag,
                    name=name,
                    label=_text(element, "label"),
                    flag=flag,
                    longflag=longflag,
                    index=_text(element, "index"),
                    channel=_text(element, "channel"),
                    default=_text(element, "default"),
                    type=element.get("type", ""),
                    reference=element.get("reference", ""),
                    hidden=element.get("hidden", ""),
                    multiple=element.get("multiple", ""),
                    coordinate_system=element.get("coordinateSystem", ""),
                    file_extensions=[e for e in extensions.split(",") if e],
                    elements=[(e.text or "").strip() for e in element.findall("element")],
                )
            )
    return CliDescription(_text(root, "title"), parameters)


def description_from_executable(executable: Path) -> CliDescription:
    """What Slicer reads at start-up: the executable's ``--xml`` output
    (``Base/QTCLI/qSlicerCLIExecutableModuleFactory.cxx:138-160``, parsed in ``qSlicerCLIModule.cxx:234``)."""
    result = subprocess.run([str(executable), "--xml"], capture_output=True, timeout=60, check=True)
    return parse_description(result.stdout.decode("utf-8"))


# ---- value formatting (vtkMRMLCommandLineModuleNode::SetParameterAs*) -----------------------------


def format_double(value: float) -> str:
    """``std::ostringstream << double`` with default flags: like ``%g`` (6 significant digits)."""
    return f"{value:g}"


def _node_id_letters(text: str) -> str:
    """logic:62-73 ``DigitsToCharacters``: 0-9 become A-J."""
    return text.translate(str.maketrans("0123456789", "ABCDEFGHIJ"))


# ---- the CLI node, logic and module --------------------------------------------------------------


@dataclass
class _NodeValues:
    values: Dict[str, str]
    unknown: List[str] = field(default_factory=list)
    command_line: List[str] = field(default_factory=list)


class CliLogic:
    """What ``slicer.modules.<cli>.logic()`` offers to cli.py, for one executable CLI."""

    def __init__(self, module: CliModule) -> None:
        self._module = module
        self._values: Dict[str, _NodeValues] = {}
        self.delete_temporary_files = True
        self.hide_window = True

    # vtkSlicerCLIModuleLogic API used by cli.py
    def SetDeleteTemporaryFiles(self, value: int) -> None:  # noqa: N802 - Slicer's name
        self.delete_temporary_files = bool(value)

    def GetDeleteTemporaryFiles(self) -> int:  # noqa: N802
        return int(self.delete_temporary_files)

    def SetHideWindow(self, value: int) -> None:  # noqa: N802
        self.hide_window = bool(value)

    def CreateNodeInScene(self):  # noqa: N802
        import slicer

        node = slicer.vtkMRMLCommandLineModuleNode()
        node.SetName(self._module.title)
        self._module.scene.AddNode(node)
        self._values[node.GetID()] = _NodeValues(self._module.description.defaults())
        return node

    def Apply(self, node, updateDisplay: bool = True) -> None:  # noqa: N802, N803
        # logic:699-731: the task is scheduled (status Scheduled) and runs in a worker thread; here the
        # inputs are written now and the process runs until process_events() sees it end
        node.SetAttribute("UpdateDisplay", "true" if updateDisplay else "false")
        node.SetOutputText("", False)
        node.SetErrorText("", False)
        node.SetStatus(_node_class().Scheduled, True)
        task = self._prepare(node)
        if task is not None:
            self._start_process(task)

    def ApplyAndWait(self, node, updateDisplay: bool = True) -> None:  # noqa: N802, N803
        # logic:669-682
        node.SetAttribute("UpdateDisplay", "true" if updateDisplay else "false")
        self._apply_task(node)

    # the double's own API
    def values_of(self, node) -> _NodeValues:
        try:
            return self._values[node.GetID()]
        except KeyError:
            raise ValueError(f"{node.GetID()} was not created by this CLI double") from None

    def set_parameter(self, node, name: str, value: str) -> bool:
        """``vtkMRMLCommandLineModuleNode::SetParameterAsString``: False (and nothing said) for an unknown name."""
        record = self.values_of(node)
        if name not in record.values:
            record.unknown.append(name)
            log.debug("no parameter named %s in %s (ignored, as in a release build)", name, self._module.title)
            return False
        if record.values[name] == value:
            return False
        record.values[name] = value
        return True

    # ---- vtkSlicerCLIModuleLogic::ApplyTask for a CommandLineModule ----------------------------------

    def _temporary_file_name(self, parameter: CliParameter, node_id: str) -> str:
        # logic:490-565 (image: first fileExtension or .nrrd; transform .h5; geometry .vtp; table .tsv)
        default = {"image": ".nrrd", "geometry": ".vtp", "transform": ".h5", "table": ".tsv", "measurement": ".csv"}
        if parameter.tag == "pointfile":
            raise NotImplementedError("point file parameters are not reproduced")
        extension = parameter.file_extensions[0] if parameter.file_extensions else default[parameter.tag]
        if parameter.tag == "table" and parameter.type == "color" and not parameter.file_extensions:
            extension = ".ctbl"
        pid = _node_id_letters(str(os.getpid()))
        return str(Path(self._module.temporary_directory) / f"{pid}_{_node_id_letters(node_id)}{extension}")

    def _prepare(self, node) -> Optional[_Task]:
        """ApplyTask up to the process start (logic:822-1731): write the inputs, build the command line.
        None when the task ends before a process is started (its status is then set)."""
        import slicer

        cls = slicer.vtkMRMLCommandLineModuleNode
        scene = self._module.scene
        record = self.values_of(node)
        values = record.values
        description = self._module.description
        if node.GetStatus() in (cls.Cancelling, cls.Cancelled):
            node.SetOutputText("", False)
            node.SetErrorText("", False)
            node.SetStatus(cls.Cancelled, False)
            return None
        if any(p.is_return_parameter for p in description.parameters):
            raise NotImplementedError("CLIs with return parameters are not reproduced")

        # which nodes to write before and read after the run (logic:910-965)
        to_write: Dict[str, str] = {}
        to_reload: Dict[str, str] = {}
        files_to_delete = set()
        for parameter in description.parameters:
            if parameter.tag not in _NODE_TAGS:
                continue
            if parameter.hidden == "true":
                raise NotImplementedError(f"hidden parameter {parameter.name} is not reproduced")
            node_id = values[parameter.name]
            if not node_id or node_id == "None" or scene.GetNodeByID(node_id) is None:
                continue
            file_name = self._temporary_file_name(parameter, node_id)
            files_to_delete.add(file_name)
            if parameter.channel == "input":
                to_write[node_id] = file_name
            elif parameter.channel == "output":
                to_reload[node_id] = file_name

        # write the inputs with each node's default storage node (logic:1010-1123)
        for node_id, file_name in to_write.items():
            data_node = scene.GetNodeByID(node_id)
            if data_node.IsA("vtkMRMLMarkupsNode"):
                raise NotImplementedError("markups inputs are not reproduced")
            if Path(file_name).suffix.lower() == ".mrml":
                raise NotImplementedError("miniscene transfer is not reproduced")
            if not data_node.IsA("vtkMRMLStorableNode"):
                continue
            storage = data_node.CreateDefaultStorageNode()
            if storage is None:
                continue
            storage.ConfigureForDataExchange()
            storage.SetScene(scene)
            storage.SetFileName(file_name)
            if not storage.WriteData(data_node):
                log.error("ERROR writing file %s", file_name)  # logic:1118-1121: reported, not fatal

        # the command line (logic:1238-1594, then the index parameters logic:1600-1731)
        command = [str(self._module.executable)]
        for parameter in description.parameters:
            if parameter.longflag:
                flag = "--" + parameter.longflag
            elif parameter.flag:
                flag = "-" + parameter.flag
            else:
                continue
            value = values[parameter.name]
            if parameter.tag not in _VALUE_FLAG_EXCLUDED:
                command += [flag, value]
            elif parameter.tag == "boolean":
                if value == "true":
                    command.append(flag)
            elif parameter.tag in _OPTIONAL_VALUE_TAGS:
                if value != "":
                    command += [flag, value]
            elif parameter.tag in _NODE_TAGS:
                file_name = ""
                if parameter.channel == "input" and value in to_write:
                    file_name = to_write[value]
                if parameter.channel == "output" and value in to_reload:
                    file_name = to_reload[value]
                if file_name:
                    command += [flag, file_name]
            elif parameter.tag in ("point", "region"):
                referenced = scene.GetNodeByID(value) if value else None
                if referenced is not None:
                    raise NotImplementedError(f"{parameter.tag} parameter {parameter.name} given a node")
        indexed = sorted((p for p in description.parameters if p.index), key=lambda p: int(p.index))
        for parameter in indexed:
            value = values[parameter.name]
            if parameter.tag in ("point", "region"):
                return self._fail(
                    node, "Fiducials and ROIs are not currently supported as index arguments to modules.", cls.Idle
                )
            if parameter.tag in ("file", "directory", "string") or parameter.tag.endswith("-vector"):
                if value == "":
                    return self._fail(node, f'No value assigned to "{parameter.label}"', cls.Idle)
                command.append(value)
            elif parameter.tag in _NODE_TAGS:
                file_name = ""
                if parameter.channel == "input":
                    file_name = to_write.get(value, "")
                elif parameter.channel == "output":
                    file_name = to_reload.get(value, "")
                if not file_name:  # the inputs already written stay on disk, as in Slicer (logic:1722-1731)
                    return self._fail(
                        node, f'No {parameter.channel} data assigned to "{parameter.label}"', cls.CompletedWithErrors
                    )
                command.append(file_name)
            else:
                command.append(value)
        record.command_line = command
        log.info("%s command line: %s", description.title, " ".join(command))
        return _Task(node, command, to_reload, files_to_delete)

    def _apply_task(self, node) -> None:
        """ApplyTask, synchronously (what ApplyAndWait runs)."""
        task = self._prepare(node)
        if task is None:
            return None
        self._started(task)
        environment = dict(os.environ)
        environment["ITK_AUTOLOAD_PATH"] = ""
        try:
            result = subprocess.run(
                task.command, capture_output=True, env=environment, timeout=self._module.timeout, check=False
            )
            self._finish(task, result.returncode, result.stdout, result.stderr)
        except subprocess.TimeoutExpired as expired:
            self._finish(task, None, expired.stdout or b"", expired.stderr or b"")
        return None

    def _started(self, task: _Task) -> None:
        # logic:1760-1790: the texts are cleared and the node is Running while the process runs
        cls = _node_class()
        task.node.SetOutputText("", False)
        task.node.SetErrorText("", False)
        task.node.SetStatus(cls.Running, False)

    def _start_process(self, task: _Task) -> None:
        """Apply's worker thread, as a child process this double polls from :func:`process_events`."""
        self._started(task)
        environment = dict(os.environ)
        environment["ITK_AUTOLOAD_PATH"] = ""
        task.process = subprocess.Popen(task.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment)
        task.started = time.monotonic()
        _PENDING.append((self, task))

    def _poll(self, task: _Task) -> bool:
        """One look at a running task; True when it is over (logic:1823-1850 abort check, 1953 Cancelled)."""
        cls = _node_class()
        process = task.process
        if task.node.GetStatus() == cls.Cancelling:  # Cancel() set Abort: the loop kills the process
            process.kill()
            stdout, stderr = process.communicate()
            task.node.SetOutputText(_without_progress(stdout.decode("utf-8", errors="replace")), False)
            task.node.SetErrorText(stderr.decode("utf-8", errors="replace"), False)
            task.node.SetStatus(cls.Cancelled, False)
            self._delete(task.files_to_delete)
            task.node.Modified()
            return True
        timeout = self._module.timeout
        if process.poll() is None and (timeout is None or time.monotonic() - task.started < timeout):
            return False
        if process.poll() is None:  # timed out
            process.kill()
            stdout, stderr = process.communicate()
            self._finish(task, None, stdout, stderr)
            return True
        stdout, stderr = process.communicate()
        self._finish(task, process.returncode, stdout, stderr)
        return True

    def _finish(self, task: _Task, returncode: Optional[int], stdout: bytes, stderr: bytes) -> None:
        """logic:1936-2030 (exit status), then the read-back requests and the final status."""
        cls = _node_class()
        node = task.node
        scene = self._module.scene
        values = self.values_of(node).values
        description = self._module.description
        node.SetOutputText(_without_progress(stdout.decode("utf-8", errors="replace")), False)
        node.SetErrorText(stderr.decode("utf-8", errors="replace"), False)
        if returncode is None:
            log.error("%s timed out", description.title)
            node.SetStatus(cls.CompletedWithErrors, False)
        elif returncode < 0:
            log.error("%s terminated by signal %d", description.title, -returncode)
            node.SetStatus(cls.CompletedWithErrors, False)
        elif returncode != 0:
            log.error("%s completed with errors", description.title)
            node.SetStatus(cls.CompletedWithErrors, False)
        else:
            node.SetStatus(cls.Completing, False)

        requests = 0
        files_to_delete = set(task.files_to_delete)
        if node.GetStatus() == cls.Completing:
            for node_id, file_name in task.to_reload.items():
                self._read_output(scene.GetNodeByID(node_id), file_name)
                files_to_delete.discard(file_name)
                requests += 1
            for parameter in description.parameters:
                if parameter.channel == "output" and parameter.reference and parameter.tag in ("image", "geometry"):
                    reference_id = values.get(parameter.reference, "")
                    if reference_id and values[parameter.name] and scene.GetNodeByID(reference_id) is not None:
                        self._place_next_to(values[parameter.name], reference_id)
                        requests += 1
        self._delete(files_to_delete)
        if node.GetStatus() == cls.Completing:
            # logic:2386-2393 (no request) and ProcessMRMLLogicsEvents logic:2534-2557 (after the last one)
            node.SetStatus(cls.Completed, True)
        else:
            node.Modified()

    def _fail(self, node, text: str, status: int) -> None:
        log.error(text)
        node.SetOutputText("", False)
        node.SetErrorText(text, False)
        node.SetStatus(status, False)
        return None

    def _delete(self, files) -> None:
        if not self.delete_temporary_files:
            return
        for file_name in files:
            if os.path.exists(file_name):
                os.remove(file_name)

    def _read_output(self, data_node, file_name: str) -> None:
        """``ReadDataRequestFile::Execute`` (vtkSlicerApplicationLogicRequests.h:60-235)."""
        storage = None
        created = False
        for n in range(data_node.GetNumberOfStorageNodes()):
            candidate = data_node.GetNthStorageNode(n)
            if candidate is not None and candidate.GetFileName() == file_name:
                storage = candidate
                break
        if storage is None and os.path.exists(file_name):
            data_node.AddDefaultStorageNode(file_name)
            storage = data_node.GetStorageNode()
            created = storage is not None
        if storage is not None:
            storage.SetWriteStateIdle()
            storage.SetFileName(file_name)
            if not storage.ReadData(data_node, True):
                log.error("reading %s into %s failed", file_name, data_node.GetID())
            if created:
                storage.SetFileName("")  # Slicer passes nullptr; slicer-core wraps SetFileName(std::string)
        if self.delete_temporary_files and os.path.exists(file_name):
            os.remove(file_name)
        if data_node.IsA("vtkMRMLDisplayableNode"):
            data_node.CreateDefaultDisplayNodes()
        data_node.Modified()

    def _place_next_to(self, updated_id: str, sibling_id: str) -> None:
        """``ReadDataRequestUpdateSubjectHierarchyLocation::Execute`` (Requests.h:554-570)."""
        import slicer

        scene = self._module.scene
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if sh is None:
            return
        sibling_item = sh.GetItemByDataNode(scene.GetNodeByID(sibling_id))
        updated_item = sh.GetItemByDataNode(scene.GetNodeByID(updated_id))
        if updated_item and sibling_item:
            sh.SetItemParent(updated_item, sh.GetItemParent(sibling_item))
            sh.SetItemLevel(updated_item, sh.GetItemLevel(sibling_item))


def _without_progress(text: str) -> str:
    """``RemoveProgressInfoFromProcessOutput`` (logic:2803-2860): drop the progress XML elements."""
    for tag in _PROGRESS_TAGS:
        text = re.sub(rf"<{tag}>[^<]*</{tag}>[ \t\n\r]*", "", text)
    return text


class CliModule:
    """Stands for ``slicer.modules.resamplescalarvectordwivolume`` (an executable CLI) in one scene."""

    def __init__(
        self,
        scene,
        temporary_directory,
        executable: Optional[Path] = None,
        description: Optional[CliDescription] = None,
        timeout: Optional[float] = 600.0,
    ) -> None:
        executable = Path(executable) if executable is not None else find_executable()
        if executable is None:
            raise FileNotFoundError(unavailable_reason() or "no Resample CLI executable")
        self.scene = scene
        self.executable = executable
        self.temporary_directory = Path(temporary_directory)
        self.temporary_directory.mkdir(parents=True, exist_ok=True)
        self.description = description or description_from_executable(executable)
        self.timeout = timeout
        self.name = "ResampleScalarVectorDWIVolume"
        self.title = self.description.title
        self._logic = CliLogic(self)
        _LOGICS.append(self._logic)

    def logic(self) -> CliLogic:
        return self._logic


# ---- cli.py ---------------------------------------------------------------------------------------


def createNode(cliModule, parameters=None):  # noqa: N802, N803 - cli.py's names
    """cli.py:4-16."""
    if not cliModule:
        return None
    cliLogic = cliModule.logic()  # noqa: N806
    if not cliLogic:
        print(f"Could not find logic for module '{cliModule.name}'")
        return None
    node = cliLogic.CreateNodeInScene()
    setNodeParameters(node, parameters, cliLogic)
    return node


def setNodeParameters(node, parameters, cliLogic=None):  # noqa: N802, N803
    """cli.py:19-50, with ``SetParameterAs*``'s string forms (vtkMRMLCommandLineModuleNode.cxx:415-535)."""
    import slicer

    if not node or not parameters:
        return None
    logic = cliLogic or _logic_of(node)
    for key, value in parameters.items():
        if isinstance(value, str):
            text = value
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, float):
            text = format_double(value)
        elif isinstance(value, slicer.vtkMRMLNode):
            text = value.GetID() or ""
        elif isinstance(value, (list, tuple)):
            text = str(value)[1:-1]
        else:
            print("parameter ", key, " has unsupported type ", value.__class__.__name__)
            continue
        logic.set_parameter(node, key, text)
    return None


def runSync(module, node=None, parameters=None, delete_temporary_files=True, update_display=True, hide_window=True):  # noqa: N802
    """cli.py:53-61 (v5.10.0 added ``hide_window``, which runSync does not pass on)."""
    return run(
        module,
        node=node,
        parameters=parameters,
        wait_for_completion=True,
        delete_temporary_files=delete_temporary_files,
        update_display=update_display,
    )


def run(
    module,
    node=None,
    parameters=None,
    wait_for_completion=False,
    delete_temporary_files=True,
    update_display=True,
    hide_window=True,
):
    """cli.py:64-95."""
    if node:
        setNodeParameters(node, parameters, module.logic())
    else:
        node = createNode(module, parameters)
        if not node:
            return None
    logic = module.logic()
    logic.SetDeleteTemporaryFiles(1 if delete_temporary_files else 0)
    logic.SetHideWindow(1 if hide_window else 0)
    if wait_for_completion:
        logic.ApplyAndWait(node, update_display)
    else:
        logic.Apply(node, update_display)
    return node


def _logic_of(node) -> CliLogic:
    for logic in _LOGICS:
        if node.GetID() in logic._values:
            return logic
    raise ValueError(f"{node.GetID()} was not created by a CLI double")


def install(
    monkeypatch,
    scene,
    temporary_directory,
    executable: Optional[Path] = None,
    description: Optional[CliDescription] = None,
) -> CliModule:
    """Make ``slicer.cli.runSync`` and ``slicer.modules.resamplescalarvectordwivolume`` this double, and
    ``slicer.mrmlScene`` the given scene, for one test (undone by ``monkeypatch``)."""
    import slicer

    module = CliModule(scene, temporary_directory, executable, description)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "cli", sys.modules[__name__], raising=False)
    modules = getattr(slicer, "modules", None)
    if modules is None:
        modules = types.SimpleNamespace()
        monkeypatch.setattr(slicer, "modules", modules, raising=False)
    monkeypatch.setattr(modules, MODULE_ATTRIBUTE, module, raising=False)
    return module
