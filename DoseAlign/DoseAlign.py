"""DoseAlign, the Slicer module: panel, logic and self-test.

Every case is made by the engine's one path, ``DoseAlignLib.api.run_case``: it reads the case's DICOM
files itself (exact geometry, DoseGridScaling, units, sums, structures rasterized from the planar
contours, audit, meta.json). The three backends differ only in the *resampler* handed to it: the
Resample Scalar/Vector/DWI Volume CLI, in-process VTK (``DoseAlignMRML.resamplers``) or the engine's
own. Slicer's DICOM database and SlicerRT are used to find, load and show studies; which file each
loaded node came from is recorded when DoseAlign loads it (``DoseAlign.SourceFiles`` attribute), never
inferred from the subject hierarchy's instance UIDs.
"""

import contextlib
import enum
import json
import logging
import os
import pathlib
import shutil
import tempfile
import time
from typing import Annotated, Optional

import numpy as np
import slicer
import vtk
from DoseAlignLib import api
from DoseAlignLib.api import AlignOptions, Cancelled, DoseAlignError
from DoseAlignMRML import resamplers
from DoseAlignMRML import volumes as mrml
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

#
# DoseAlign
#


class DoseAlign(ScriptedLoadableModule):
    """Module metadata. Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DoseAlign")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Radiotherapy")]
        self.parent.dependencies = ["DicomRtImportExport"]
        self.parent.contributors = ["DoseAlign developers"]
        self.parent.helpText = _("""
Puts the planning CT, the RT dose and the structures of a DICOM-RT study on one voxel grid and
exports them as paired arrays (<code>pair.npz</code> + <code>meta.json</code>, the same files as
<code>dosealign export</code>).<br><br>
Every export is computed from the DICOM files themselves by the DoseAlign engine (exact frame
offsets, DoseGridScaling, dose units, beam sums, structures rasterized from their contours); the
backend chooses only what resamples: the Resample Scalar/Vector/DWI Volume module, Slicer's
in-process VTK resampling, or the engine. Slicer's own display of a dose can be misplaced (GDCM
takes the frame step from the first two GridFrameOffsetVector values; SlicerRT assumes a
DoseGridScaling of 0.0001 when the tag is empty): DoseAlign says so in its log and never changes
the loaded node. See the
<a href="https://github.com/DoseAlign/SlicerDoseAlign">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer, SlicerRT (DICOM-RT import) and the Resample Scalar/Vector/DWI Volume module.
""")


#
# DoseAlignParameterNode
#


class ReferenceGridChoice(enum.Enum):
    CT = "ct"
    DOSE = "dose"
    CUSTOM = "custom"

    def label(self):
        return {
            ReferenceGridChoice.CT: _("CT grid (dose onto CT)"),
            ReferenceGridChoice.DOSE: _("Dose grid (CT onto dose)"),
            ReferenceGridChoice.CUSTOM: _("Custom spacing"),
        }[self]


class CustomBoxChoice(enum.Enum):
    DOSE = "dose"
    CT = "ct"
    CUBE = "cube"

    def label(self):
        return {
            CustomBoxChoice.DOSE: _("Dose extent"),
            CustomBoxChoice.CT: _("CT extent"),
            CustomBoxChoice.CUBE: _("Cube around the dose"),
        }[self]


class InterpolatorChoice(enum.Enum):
    LINEAR = "linear"
    NEAREST = "nn"
    BSPLINE = "bs"
    WINDOWED_SINC = "ws"

    def label(self):
        return {
            InterpolatorChoice.LINEAR: _("Linear"),
            InterpolatorChoice.NEAREST: _("Nearest neighbor"),
            InterpolatorChoice.BSPLINE: _("B-spline"),
            InterpolatorChoice.WINDOWED_SINC: _("Windowed sinc"),
        }[self]


class BackendChoice(enum.Enum):
    CLI = "cli"
    IN_PROCESS = "inprocess"
    ENGINE = "engine"

    def label(self):
        return {
            BackendChoice.CLI: _("Resample Scalar/Vector/DWI Volume (CLI)"),
            BackendChoice.IN_PROCESS: _("In-process VTK (linear only)"),
            BackendChoice.ENGINE: _("DoseAlign engine"),
        }[self]


class OutputFormatChoice(enum.Enum):
    NPZ = "npz"
    NPZ_AND_NRRD = "npz+nrrd"

    def label(self):
        return {
            OutputFormatChoice.NPZ: _("pair.npz + meta.json"),
            OutputFormatChoice.NPZ_AND_NRRD: _("pair.npz + meta.json + NRRD volumes"),
        }[self]


@parameterNodeWrapper
class DoseAlignParameterNode:
    """
    The parameters needed by the module.

    inputFolder - DICOM folder to import into the DICOM database (files stay in place).
    ctVolume - Planning CT (loaded through the DICOM module); optional: none, the engine picks the dose's CT.
    doseVolume - RT dose loaded by SlicerRT (the engine reads its file).
    segmentation - RTSTRUCT segmentation whose ROIs to export (optional; none: the structure set the engine
        pairs with the dose, as dosealign export does). One that maps to no RTSTRUCT file is refused.
    referenceGrid - api.Grid the outputs share: the CT's, the dose's, or a custom one.
    customSpacing - Spacing of a custom grid in mm: one value or i,j,k.
    customBox - Extent of a custom grid.
    interpolator - Interpolator, named as the Resample CLI names them.
    backend - What resamples: the Resample CLI, in-process VTK, or the DoseAlign engine.
    structures - Rasterize the RTSTRUCT ROIs (from their contours) on the reference grid.
    outputFolder - Where <case>/pair.npz, <case>/meta.json and manifest.csv go.
    outputFormat - pair.npz + meta.json, optionally with NRRD copies of the volumes.
    ctFillValue - HU written where the CT has no data.
    allowRelativeDose - Accept DoseUnits RELATIVE (values are then not Gy).
    """

    inputFolder: pathlib.Path
    ctVolume: vtkMRMLScalarVolumeNode
    doseVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    referenceGrid: ReferenceGridChoice = ReferenceGridChoice.CT
    customSpacing: str = ""
    customBox: CustomBoxChoice = CustomBoxChoice.DOSE
    interpolator: InterpolatorChoice = InterpolatorChoice.LINEAR
    backend: BackendChoice = BackendChoice.CLI
    structures: bool = True
    outputFolder: pathlib.Path
    outputFormat: OutputFormatChoice = OutputFormatChoice.NPZ
    ctFillValue: Annotated[float, WithinRange(-3024.0, 3071.0)] = -1000.0
    allowRelativeDose: bool = False


#
# DoseAlignWidget
#

#: The dynamic property naming a widget's parameter (slicer/parameterNodeWrapper/wrapper.py:28 at v5.6.2..main).
SLICER_PARAMETER_NAME = "SlicerParameterName"


def isEmptyPath(path) -> bool:
    """True for an unset path: None, "" or ``Path('.')``, which is what an empty path parameter holds
    (``PathSerializer.default()`` is ``pathlib.Path()``: serializers.py:328-329 at v5.6.2/v5.8.1, :331 at
    v5.10.0/main; the ctkPathLineEdit connector reads ``Path(currentPath)``). A Path is always truthy."""
    return path is None or str(path).strip() in ("", ".")


class DoseAlignWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the panel to the parameter node and the logic; no computation here."""

    #: Folder parameters and their ctkPathLineEdit, connected here rather than through SlicerParameterName: the
    #: wrapper's connector writes ``str(value)`` into the field on connection and on every change of the parameter
    #: node (wrapper.py:181-190 and :209 at v5.6.2..v5.10.0, :182-191 and :210 on main; guiConnectors.py:590 at
    #: v5.6.2, :637 at v5.8.1, :705 at v5.10.0/main), and an empty Path parameter is ``Path()``, shown as "."
    #: (PathSerializer.default, serializers.py:329 at v5.6.2/v5.8.1, :332 at v5.10.0/main). That "." replaced the
    #: most recent folder, which the field's settingKey shows when it is empty (ctkPathLineEdit::retrieveHistory,
    #: CTK 82cae578 Libs/Widgets/ctkPathLineEdit.cpp:694-727, called by setSettingKey :857-862).
    FOLDER_FIELDS = {"inputFolder": "inputFolderPathLineEdit", "outputFolder": "outputFolderPathLineEdit"}

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._busy = False
        self._followedDoseID = None
        self._folderTexts = {}  # parameter -> the text its field last showed or sent

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DoseAlign.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # The .ui connects the root qMRMLWidget's mrmlSceneChanged(vtkMRMLScene*) to each node selector.
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self._filterSelectors()

        self.logic = DoseAlignLogic()
        self.logic.logCallback = self.addLog
        self.logic.progressCallback = self.onProgress
        self.logic.processEvents = slicer.app.processEvents  # the CLI runs asynchronously; Cancel stays live

        self._observeScene()

        # Buttons
        self.ui.importFolderButton.connect("clicked(bool)", self.onImportFolderButton)
        self.ui.refreshStudiesButton.connect("clicked(bool)", self.onRefreshStudiesButton)
        self.ui.loadStudyButton.connect("clicked(bool)", self.onLoadStudyButton)
        self.ui.alignButton.connect("clicked(bool)", self.onAlignButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.exportAllButton.connect("clicked(bool)", self.onExportAllButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self._connectFolderFields()

        self.ui.resultsTable.setHorizontalHeaderLabels([_("Case"), _("Status"), _("Reason"), _("QA flags")])
        self.ui.progressBar.setRange(0, 100)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()
        self.refreshStudies()

    def _filterSelectors(self) -> None:
        # Only SlicerRT's dose volumes in the dose selector: a selector without "None" takes the first node that
        # enters its list, which is the CT when the DICOM browser loads a study. An attribute given without a
        # value matches any node that has it (qMRMLNodeComboBox.h:140-146 at v5.6.2/v5.8.1/main, :139-145 at
        # v5.10.0; qMRMLSortFilterProxyModel.cxx:311-323 at v5.8.1); SlicerRT's LoadRtDose sets it to "1".
        self.ui.doseVolumeSelector.addAttribute("vtkMRMLScalarVolumeNode", DoseAlignLogic.DOSE_VOLUME_ATTRIBUTE)

    def _observeScene(self) -> None:
        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        # vtkMRMLScene::Import runs in ImportState (StartState/EndState at vtkMRMLScene.cxx:816/915 at v5.6.2,
        # :835/934 at v5.8.1, :847/954 at v5.10.0; EndImportEvent: vtkMRMLScene.h:703, :701, :719)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()
        self.refreshStudies()  # the DICOM database may have opened since (it does after a home module's setup)

    def exit(self) -> None:
        """Called each time the user opens a different module.

        The GUI stays connected to the parameter node: on Slicer 5.6 and 5.8 ``connectGui`` returns no
        tag, and every reconnection on re-entry added connectors whose enum combo boxes wrote their first
        value back (issue 15 #3). One connection per parameter node, made with ``connectParametersToGui``
        (which returns its tag on every version), is released only when the node changes.
        """

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event) -> None:
        """Called just after a scene was imported: the CT and structures the imported parameter node holds are the
        choice saved with its dose, so they are kept (the dose-follow skipped the import, see _followDose)."""
        dose = self._parameterNode.doseVolume if self._parameterNode is not None else None
        self._followedDoseID = dose.GetID() if dose is not None else None

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())
        self._followDose()  # a dose chosen while the module was hidden (e.g. by a DICOM-browser load)
        if self._parameterNode.doseVolume and not self.logic.isDoseVolumeNode(self._parameterNode.doseVolume):
            self._parameterNode.doseVolume = None  # e.g. a CT an unfiltered selector took for the dose
        # Pick the first dose and its CT to save a few clicks
        if not self._parameterNode.doseVolume:
            doseNodes = self.logic.doseVolumeNodes()
            if doseNodes:
                self._parameterNode.doseVolume = doseNodes[0]
        if self._parameterNode.doseVolume and not self._parameterNode.ctVolume:
            with contextlib.suppress(DoseAlignError, ValueError, RuntimeError, OSError):  # else the user picks it
                self._parameterNode.ctVolume = self.logic.findCtForDose(self._parameterNode.doseVolume)

    def _parameterWidgets(self) -> dict:
        """Parameter name -> widget, for every widget of the .ui with a SlicerParameterName property."""
        mapping = {}
        for widget in self.ui.__dict__.values():
            name = widget.property(SLICER_PARAMETER_NAME) if hasattr(widget, "property") else None
            if name:
                mapping[str(name)] = widget
        return mapping

    def setParameterNode(self, inputParameterNode: Optional[DoseAlignParameterNode]) -> None:
        """Set and observe the parameter node; connect it to the GUI once (see :meth:`exit`)."""
        if (
            inputParameterNode is not None
            and self._parameterNode is not None
            and self._parameterNodeGuiTag is not None
            and inputParameterNode.parameterNode is self._parameterNode.parameterNode
        ):
            return  # already connected to this node
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._parameterNodeGuiTag = None
        if self._parameterNode:
            # connectParametersToGui returns its tag on 5.6, 5.8, 5.10 and main (wrapper.py:194-213);
            # connectGui returns None before 5.10.0 (Slicer commit b5a65a49a0)
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(self._parameterWidgets())
            dose = self._parameterNode.doseVolume
            self._followedDoseID = dose.GetID() if dose is not None else None  # keep the CT saved with this dose
            self._folderTexts = {}
            self._showFolders(adoptShown=True)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._checkCanApply()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._showFolders()
        self._followDose()
        self._checkCanApply()

    def _showFolders(self, adoptShown: bool = False) -> None:
        """Show each folder parameter in its field: a set folder as it is, an unset one as an empty field, never
        as ".". With ``adoptShown`` (on connection), an unset parameter takes the folder the field shows, which is
        the most recent one of its history. A field is rewritten only when its parameter changed since it was
        last shown, so that a path being typed is not overwritten by an unrelated change."""
        p = self._parameterNode
        if p is None:
            return
        for name, widgetName in self.FOLDER_FIELDS.items():
            widget = getattr(self.ui, widgetName)
            value = getattr(p, name)
            text = "" if isEmptyPath(value) else str(value)
            shown = str(widget.currentPath or "").strip()
            if adoptShown and not text and shown:
                self._folderTexts[name] = shown
                setattr(p, name, pathlib.Path(shown))
                continue
            if self._folderTexts.get(name) != text:
                self._folderTexts[name] = text
                if shown != text:
                    widget.currentPath = text

    def _onFolderEdited(self, name: str, path) -> None:
        text = str(path or "").strip()
        value = pathlib.Path(text) if text else pathlib.Path()
        self._folderTexts[name] = str(value) if text else ""  # as _showFolders sees it: the field is not rewritten
        if self._parameterNode is not None:
            setattr(self._parameterNode, name, value)

    def _connectFolderFields(self) -> None:
        """A folder field sends currentPathChanged(QString) only for text its validator accepts, which without
        nameFilters is ".+" (ctkPathLineEdit::updateHasValidInput, CTK 82cae578 Libs/Widgets/ctkPathLineEdit.cpp:
        819-839, the same at f53820a4, :825-845 at dd4caeae, :730-750 at 5056664a; ctk::nameFiltersToRegExp,
        Libs/Core/ctkUtils.cpp:177-180): emptying the field sends nothing. It then sends validInputChanged(false)
        (ctkPathLineEdit.h:248 at f53820a4/82cae578, :247 at dd4caeae, :253 at 5056664a), which clears the
        parameter."""
        self.ui.inputFolderPathLineEdit.connect("currentPathChanged(QString)", self.onInputFolderEdited)
        self.ui.outputFolderPathLineEdit.connect("currentPathChanged(QString)", self.onOutputFolderEdited)
        self.ui.inputFolderPathLineEdit.connect("validInputChanged(bool)", self.onInputFolderValidInputChanged)
        self.ui.outputFolderPathLineEdit.connect("validInputChanged(bool)", self.onOutputFolderValidInputChanged)

    def _onFolderValidInputChanged(self, name: str, valid: bool) -> None:
        if not valid and not str(getattr(self.ui, self.FOLDER_FIELDS[name]).currentPath or "").strip():
            self._onFolderEdited(name, "")

    def onInputFolderEdited(self, path) -> None:
        self._onFolderEdited("inputFolder", path)

    def onOutputFolderEdited(self, path) -> None:
        self._onFolderEdited("outputFolder", path)

    def onInputFolderValidInputChanged(self, valid) -> None:
        self._onFolderValidInputChanged("inputFolder", valid)

    def onOutputFolderValidInputChanged(self, valid) -> None:
        self._onFolderValidInputChanged("outputFolder", valid)

    def _followDose(self) -> None:
        """When the dose changes, select its CT and structure set (None where they are not loaded, and the
        engine then picks the CT; None also when the case has several structure sets: the engine pairs them): a CT or RTSTRUCT chosen for the previous dose must not go with this one.

        Only while the module is shown and no scene is being imported: the parameter-node observer stays connected
        after exit(), and the dose selector takes the first dose a DICOM-browser load adds, which ran the case scan
        on every load. A dose chosen meanwhile is followed by enter(). isEntered is set before the Python enter()
        runs and cleared before exit() (qSlicerAbstractModuleWidget.cxx:54-66 at v5.6.2/v5.8.1/v5.10.0, called by
        qSlicerScriptedLoadableModuleWidget.cxx:207-219 at v5.6.2/v5.8.1, :216-228 at v5.10.0); IsImporting:
        vtkMRMLScene.h:616 at v5.6.2, :614 at v5.8.1, :632 at v5.10.0."""
        if not self.parent.isEntered or slicer.mrmlScene.IsImporting():
            return
        p = self._parameterNode
        dose = p.doseVolume if p is not None else None
        doseID = dose.GetID() if dose is not None else None
        if doseID == self._followedDoseID:
            return
        self._followedDoseID = doseID
        if dose is None or self._busy:  # nothing is reselected while an operation runs
            return
        ctNode, segmentationNode = self.logic.nodesForDose(dose)
        p.ctVolume = ctNode
        p.segmentation = segmentationNode

    def _checkCanApply(self, caller=None, event=None) -> None:
        """Set the buttons' enabled state and the tooltips that say why."""
        p = self._parameterNode
        reason = ""
        if self._busy:
            reason = _("Working... (Cancel stops after the current step)")
        elif p is None:
            reason = _("No parameter node")
        else:
            try:
                self.logic.optionsFromParameterNode(p)
            except ValueError as error:
                reason = str(error)
        haveDose = bool(p and p.doseVolume)
        haveOutput = bool(p and not isEmptyPath(p.outputFolder))
        haveInput = bool(p and not isEmptyPath(p.inputFolder))
        canAlign = not reason and haveDose
        canExport = canAlign and haveOutput
        canExportAll = not reason and haveOutput and self.logic.databaseHasPatients()
        self.ui.alignButton.enabled = canAlign
        self.ui.alignButton.toolTip = reason or (
            _("Resample the dose (and structures) onto the reference grid and show them")
            if haveDose
            else _("Select a dose volume (load a study first)")
        )
        self.ui.exportButton.enabled = canExport
        self.ui.exportButton.toolTip = reason or (
            _("Align and write this case to the output folder")
            if canExport
            else _("Select a dose and an output folder")
        )
        self.ui.exportAllButton.enabled = canExportAll
        self.ui.exportAllButton.toolTip = reason or (
            _("Export every dose of every patient in the DICOM database (nothing is loaded into the scene)")
            if canExportAll
            else _("Needs patients in the DICOM database and an output folder")
        )
        self.ui.importFolderButton.enabled = not self._busy and haveInput
        self.ui.importFolderButton.toolTip = (
            _("Add the folder's files to the DICOM database (files stay where they are) and list its studies")
            if haveInput
            else _("Choose a DICOM folder first")
        )
        self.ui.cancelButton.enabled = self._busy
        for widget in (self.ui.loadStudyButton, self.ui.refreshStudiesButton):
            widget.enabled = not self._busy

    # ---- feedback -------------------------------------------------------------------------------

    def addLog(self, text: str) -> None:
        """Append a line to the log box and keep the GUI responsive."""
        self.ui.logTextEdit.appendPlainText(text)
        slicer.app.processEvents()

    def onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * max(0.0, min(1.0, fraction))))
        self.ui.progressBar.setFormat(f"%p% {message}")
        slicer.app.processEvents()  # lets Cancel be clicked

    def setBusy(self, busy: bool) -> None:
        self._busy = busy
        if busy:
            self.logic.resetCancel()
        if not busy:
            self.ui.progressBar.setFormat("%p%")
        self._checkCanApply()
        slicer.app.processEvents()

    def addResultRow(self, caseId: str, status: str, reason: str = "", flags: str = "") -> None:
        import qt

        table = self.ui.resultsTable
        row = table.rowCount
        table.insertRow(row)
        for column, text in enumerate((caseId, status, reason, flags)):
            item = qt.QTableWidgetItem(text)
            item.setToolTip(text)
            table.setItem(row, column, item)
        table.scrollToBottom()

    def refreshStudies(self) -> None:
        current = self.ui.studyComboBox.currentData
        self.ui.studyComboBox.clear()
        for studyUID, label in self.logic.listStudies():
            self.ui.studyComboBox.addItem(label, studyUID)
        if current:
            index = self.ui.studyComboBox.findData(current)
            if index >= 0:
                self.ui.studyComboBox.currentIndex = index
        self._checkCanApply()

    # ---- actions --------------------------------------------------------------------------------

    def onImportFolderButton(self) -> None:
        folder = self._parameterNode.inputFolder
        with slicer.util.tryWithErrorDisplay(_("Failed to import the DICOM folder."), waitCursor=True):
            self.setBusy(True)
            try:
                studyUIDs = self.logic.importFolderToDatabase(folder)
            finally:
                self.setBusy(False)
            self.ui.inputFolderPathLineEdit.addCurrentPathToHistory()  # settingKey only reads the history
            self.refreshStudies()
            if studyUIDs:
                index = self.ui.studyComboBox.findData(studyUIDs[0])
                if index >= 0:
                    self.ui.studyComboBox.currentIndex = index

    def onRefreshStudiesButton(self) -> None:
        self.refreshStudies()

    def onLoadStudyButton(self) -> None:
        studyUID = self.ui.studyComboBox.currentData
        if not studyUID:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to load the study."), waitCursor=True):
            self.setBusy(True)
            try:
                nodeIDs = self.logic.loadStudy(studyUID)
            finally:
                self.setBusy(False)
            doseNodes = self.logic.doseVolumeNodes(nodeIDs)
            if not doseNodes:
                self.addLog(_("The study holds no RT dose."))
                return
            p = self._parameterNode
            self._followedDoseID = doseNodes[0].GetID()  # its CT and structures are set below, from one scan
            p.doseVolume = doseNodes[0]
            case = self.logic.caseForDose(doseNodes[0])
            p.ctVolume = self.logic.ctNodeForCase(case)
            p.segmentation = self.logic.segmentationNodeForCase(case)

    def _align(self):
        p = self._parameterNode
        options = self.logic.optionsFromParameterNode(p)
        result = self.logic.alignNodes(
            p.ctVolume,
            p.doseVolume,
            options,
            p.backend.value,
            segmentationNode=p.segmentation if p.structures else None,
        )
        self.logic.showResult(result, p.doseVolume)
        return result

    def _flags(self, result) -> str:
        return "; ".join(f["flag"] for f in result.meta.get("audit", {}).get("flags", []))

    def onAlignButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to align the dose."), waitCursor=True):
            self.setBusy(True)
            try:
                result = self._align()
                self.addResultRow(result.case_id, _("aligned"), "", self._flags(result))
            except Cancelled:
                self.addLog(_("Cancelled."))
            finally:
                self.setBusy(False)

    def onExportButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to export the case."), waitCursor=True):
            self.setBusy(True)
            try:
                result = self._align()
                folder = self.logic.exportResult(result, p.outputFolder, p.outputFormat.value)
                self.ui.outputFolderPathLineEdit.addCurrentPathToHistory()
                self.addResultRow(result.case_id, _("ok"), str(folder), self._flags(result))
            except Cancelled:
                self.addLog(_("Cancelled."))
            finally:
                self.setBusy(False)

    def onExportAllButton(self) -> None:
        p = self._parameterNode
        if not slicer.util.confirmOkCancelDisplay(
            _("Every dose of every patient in the DICOM database is exported to {folder}. Continue?").format(
                folder=p.outputFolder
            )
        ):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to export the database."), waitCursor=False):
            self.setBusy(True)
            try:
                options = self.logic.optionsFromParameterNode(p)
                rows = self.logic.exportDatabase(
                    p.outputFolder, options, p.backend.value, p.outputFormat.value, rowCallback=self.addResultRow
                )
                self.ui.outputFolderPathLineEdit.addCurrentPathToHistory()
                failed = [r for r in rows if r["status"] != "ok"]
                self.addLog(
                    _("{n} cases exported, {failed} failed.").format(n=len(rows) - len(failed), failed=len(failed))
                )
            except Cancelled:
                self.addLog(_("Cancelled."))
            finally:
                self.setBusy(False)

    def onCancelButton(self) -> None:
        self.logic.requestCancel()
        self.addLog(_("Cancelling after the current step..."))


#
# DoseAlignLogic
#


class DoseAlignLogic(ScriptedLoadableModuleLogic):
    """All computation of the module, usable without the GUI (batch scripts, notebooks, tests):

    >>> import DoseAlign
    >>> logic = DoseAlign.DoseAlignLogic()

    Progress goes to ``progressCallback(fraction, message)`` and text to ``logCallback(text)``;
    after :meth:`requestCancel` the next progress report raises ``DoseAlignLib.api.Cancelled``.
    With ``processEvents`` set (the panel sets ``slicer.app.processEvents``) the Resample CLI runs
    asynchronously and the GUI stays responsive; without it (batch, notebook) it runs with ``runSync``.
    """

    #: DICOM plugins used for loading, in loading order (the CT loads before the RTSTRUCT).
    DICOM_PLUGINS = ["DICOMScalarVolumePlugin", "DicomRtImportExportPlugin"]
    #: Attribute SlicerRT puts on dose volumes (vtkSlicerRtCommon::DICOMRTIMPORT_DOSE_VOLUME_IDENTIFIER_ATTRIBUTE_NAME,
    #: SlicerRtCommon/vtkSlicerRtCommon.cxx:64-65), set to "1" by LoadRtDose (DicomRtImportExport/Logic/
    #: vtkSlicerDicomRtImportExportModuleLogic.cxx:524 at SlicerRT 3fb93b87 (Slicer 5.6.2), :521 at 169eed7b (5.8.1),
    #: :527 at 849f5e76 (5.10.0) and 77326b07, :528 at df6ef69c).
    DOSE_VOLUME_ATTRIBUTE = "DicomRtImport.DoseVolume"
    #: Attribute DoseAlign puts on every node it loads: a JSON list of the DICOM files of its loadable.
    SOURCE_FILES_ATTRIBUTE = "DoseAlign.SourceFiles"
    #: Attribute on the nodes :meth:`showResult` makes (the next call replaces them).
    OUTPUT_ATTRIBUTE = "DoseAlign.Output"
    #: Relative dose difference (of Dmax) above which Slicer's dose node counts as different from its file.
    DOSE_VALUE_RTOL = 1e-4
    MODALITY_TAG = "0008,0060"

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.logCallback = None
        self.progressCallback = None
        self.processEvents = None
        self._cancelRequested = False

    def getParameterNode(self):
        return DoseAlignParameterNode(super().getParameterNode())

    # ---- feedback -------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        """One line to ``logCallback`` (log box, batch output) or, without one, to Python logging; never
        both, so that a batch run's terminal shows each line once."""
        if self.logCallback:
            self.logCallback(text)
            logging.debug(text)
        else:
            logging.info(text)

    def requestCancel(self) -> None:
        """Ask the running operation to stop at its next progress report (or CLI status check)."""
        self._cancelRequested = True

    def resetCancel(self) -> None:
        """Forget an earlier cancel request (call before starting an operation)."""
        self._cancelRequested = False

    def _raiseIfCancelled(self) -> None:
        if self._cancelRequested:
            self._cancelRequested = False
            raise Cancelled(_("Cancelled by the user"))

    def progress(self, fraction: float, message: str) -> None:
        """Report progress; raise Cancelled when a cancel was requested (the engine's convention)."""
        if self.progressCallback:
            self.progressCallback(fraction, message)
        self._raiseIfCancelled()

    def _subProgress(self, start: float, stop: float, prefix: str = ""):
        def report(fraction: float, message: str) -> None:
            self.progress(start + (stop - start) * fraction, f"{prefix}{message}")

        return report

    def _waitForCli(self) -> None:
        """Called while the Resample CLI runs asynchronously: keep the GUI alive, let Cancel through."""
        self.processEvents()
        time.sleep(0.02)
        self._raiseIfCancelled()

    # ---- options --------------------------------------------------------------------------------

    @staticmethod
    def parseSpacing(text: str) -> Optional[tuple]:
        """'2' or '1,1,2.5' -> a tuple of floats; '' -> None. Raises ValueError."""
        text = (text or "").strip()
        if not text:
            return None
        try:
            return tuple(float(v) for v in text.replace(";", ",").split(","))
        except ValueError:
            raise ValueError(_("Custom spacing must be one number or three, like 2 or 1,1,2.5")) from None

    def optionsFromParameterNode(self, parameterNode) -> AlignOptions:
        """The engine's AlignOptions for the parameter node's values. Raises ValueError."""
        custom = parameterNode.referenceGrid is ReferenceGridChoice.CUSTOM
        return AlignOptions(
            reference=parameterNode.referenceGrid.value,
            interpolator=parameterNode.interpolator.value,
            custom_spacing=self.parseSpacing(parameterNode.customSpacing) if custom else None,
            custom_box=parameterNode.customBox.value,
            ct_fill_hu=float(parameterNode.ctFillValue),
            allow_relative=bool(parameterNode.allowRelativeDose),
            structures=bool(parameterNode.structures),
        )

    # ---- the backends: what resamples ---------------------------------------------------------

    def resamplerFor(self, backend: str):
        """The resampler ``api.run_case`` gets for ``backend`` ("cli", "inprocess", "engine": None)."""
        version = getattr(getattr(slicer, "app", None), "applicationVersion", "")
        suffix = f" (Slicer {version})" if version else ""
        if backend == BackendChoice.CLI.value:
            wait = self._waitForCli if self.processEvents is not None else None
            return resamplers.CliResampler(slicer.mrmlScene, wait=wait, name="slicer-cli" + suffix)
        if backend == BackendChoice.IN_PROCESS.value:
            return resamplers.VtkResampler(slicer.mrmlScene, name="slicer-vtk" + suffix)
        if backend == BackendChoice.ENGINE.value:
            return None
        raise ValueError(_("Unknown backend {name!r}: choose cli, inprocess or engine").format(name=backend))

    def runCase(self, case, options: AlignOptions, backend: str = "cli"):
        """``api.run_case`` for one engine Case with the backend's resampler: an ``api.CaseResult``."""
        self.progress(0.0, _("{case}: reading").format(case=case.case_id))
        return api.run_case(
            case,
            options,
            progress=self._subProgress(0.0, 1.0, f"{case.case_id}: "),
            resampler=self.resamplerFor(backend),
        )

    # ---- DICOM database -------------------------------------------------------------------------

    @staticmethod
    def _database(database=None, required: bool = True):
        """``database`` or ``slicer.dicomDatabase``, which exists only once the DICOM module has started
        (DICOM.py:173-175 at v5.8.1, on ``startupCompleted``: after a home module's widget is set up)."""
        if database is None:
            database = getattr(slicer, "dicomDatabase", None)
        if database is None or not database.isOpen:
            if not required:
                return None
            raise RuntimeError(
                _("The DICOM database is not open. Open the DICOM module once, or use a temporary database.")
            )
        return database

    def databaseHasPatients(self) -> bool:
        database = self._database(required=False)
        return bool(database is not None and database.patients())

    def listStudies(self, database=None) -> list:
        """(studyUID, label) of every study in the database; [] when it is not open."""
        database = self._database(database, required=False)
        if database is None:
            return []
        studies = []
        for patientUID in database.patients():
            patientName = database.nameForPatient(patientUID)
            for studyUID in database.studiesForPatient(patientUID):
                date = database.fieldForStudy("StudyDate", studyUID)
                description = database.descriptionForStudy(studyUID)
                label = " - ".join(t for t in (patientName, date, description) if t) or studyUID
                studies.append((studyUID, label))
        return studies

    def importFolderToDatabase(self, folder, database=None) -> list:
        """Index the DICOM files below ``folder`` (files stay in place); return the UIDs of their studies.
        An empty folder field is refused: ``Path('.')`` would index Slicer's working directory."""
        if isEmptyPath(folder):
            raise ValueError(_("Choose a DICOM folder to import"))
        folder = os.path.abspath(os.fspath(folder))
        if not os.path.isdir(folder):
            raise ValueError(_("Not a folder: {folder}").format(folder=folder))
        from DICOMLib import DICOMUtils

        database = self._database(database)
        self.log(_("Importing {folder} into the DICOM database...").format(folder=folder))
        if not DICOMUtils.importDicom(folder, database):
            raise RuntimeError(_("DICOM import of {folder} failed (see the error log)").format(folder=folder))
        seriesUIDs = set()
        for path in self.filesBelow(folder):
            seriesUID = database.seriesForFile(path.replace("\\", "/"))
            if seriesUID:
                seriesUIDs.add(seriesUID)
        studyUIDs = sorted({database.studyForSeries(uid) for uid in seriesUIDs} - {""})
        self.log(_("{series} series in {studies} studies.").format(series=len(seriesUIDs), studies=len(studyUIDs)))
        return studyUIDs

    @staticmethod
    def filesBelow(folder) -> list:
        """Every file below ``folder`` by the paths ``DICOMUtils.importDicom`` indexes them under: its
        ``ctkDICOMIndexer`` follows symbolic links (``FollowSymlinks(true)``, CTK 82cae578
        Libs/DICOM/Core/ctkDICOMIndexer.cpp:295, used at :167-172; the same at f53820a4 and dd4caeae), so
        files under a linked folder are in the database by their path through the link. ``os.walk`` follows
        no links. Here every link is followed except into a folder that is already an ancestor of the path
        (a link loop), so a folder reached by two routes is listed by both: whichever route the indexer took
        (its iterator enters each real folder once), that path is among these."""
        found = []

        def walk(path: str, ancestors: frozenset) -> None:
            try:
                entries = sorted(os.scandir(path), key=lambda entry: entry.name)
            except OSError:
                return  # unreadable: the indexer cannot have read it either
            for entry in entries:
                try:
                    if entry.is_dir():  # follows links
                        real = os.path.realpath(entry.path)
                        if real not in ancestors:
                            walk(entry.path, ancestors | {real})
                    elif entry.is_file():
                        found.append(entry.path)
                except OSError:
                    continue

        folder = os.fspath(folder)
        walk(folder, frozenset({os.path.realpath(folder)}))
        return found

    @contextlib.contextmanager
    def temporaryDatabase(self, folder=None):
        """A fresh DICOM database for the duration of a ``with`` block; the user's database is reopened after.

        Unlike ``DICOMUtils.TemporaryDICOMDatabase``, this never writes the temporary folder into the
        persistent database setting (``openTemporaryDatabase`` does: DICOMUtils.py:334 at v5.6.2, :373 at
        v5.8.1), so a killed run or two runs at once leave the user's Slicer as it was.
        ``DICOMUtils.openDatabase`` opens ``<folder>/ctkDICOM.sql`` and touches no setting (v5.6.2 :275-285).
        """
        from DICOMLib import DICOMUtils

        database = getattr(slicer, "dicomDatabase", None)
        original = database.databaseFilename if database is not None and database.isOpen else ""
        owned = folder is None
        folder = tempfile.mkdtemp(prefix="DoseAlign-db-") if owned else os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        try:
            if not DICOMUtils.openDatabase(folder):
                raise RuntimeError(_("Cannot open a DICOM database in {folder}").format(folder=folder))
            yield slicer.dicomDatabase
        finally:
            database = getattr(slicer, "dicomDatabase", None)
            if database is not None:
                database.closeDatabase()
                if original:
                    database.openDatabase(original)
            if owned:
                shutil.rmtree(folder, ignore_errors=True)

    # ---- loading: which node came from which file -------------------------------------------------

    def loadFileLists(self, fileLists: list, loadPlans: bool = False) -> list:
        """Load per-series file lists with the scalar volume and SlicerRT plugins; return the new node IDs.

        Loadables are loaded one at a time, and every node a loadable adds is tagged with that loadable's
        files (:attr:`SOURCE_FILES_ATTRIBUTE`): SlicerRT writes an RTDOSE's instance UID on the first
        subject-hierarchy item of its *series*, so several doses of one series, or a dose loaded twice,
        cannot be told apart afterwards (issue 15 #1). RTPLAN loadables are left out unless ``loadPlans``.
        """
        from DICOMLib import DICOMUtils

        database = self._database()
        plugins = getattr(slicer.modules, "dicomPlugins", {})
        missing = [name for name in self.DICOM_PLUGINS if name not in plugins]
        if missing:
            raise RuntimeError(
                _("DICOM plugins {names} are not available: install the SlicerRT extension.").format(
                    names=", ".join(missing)
                )
            )
        fileLists = [list(files) for files in fileLists if files]
        if not fileLists:
            raise ValueError(_("No DICOM files to load"))
        loadablesByPlugin, loadEnabled = DICOMUtils.getLoadablesFromFileLists(fileLists, self.DICOM_PLUGINS)
        if not loadEnabled:
            raise ValueError(_("None of the files can be loaded by the scalar volume or SlicerRT plugins"))
        DICOMUtils.selectHighestConfidenceLoadables(loadablesByPlugin)
        loaded = []
        for plugin, loadables in loadablesByPlugin.items():  # plugin order: CT before RTSTRUCT
            for loadable in loadables:
                if not loadable.selected:
                    continue
                files = [str(f) for f in loadable.files]
                if not loadPlans and files and database.fileValue(files[0], self.MODALITY_TAG) == "RTPLAN":
                    continue
                nodeIDs = DICOMUtils.loadLoadables({plugin: [loadable]})
                for nodeID in nodeIDs:
                    node = slicer.mrmlScene.GetNodeByID(nodeID)
                    if node is not None and node.IsA("vtkMRMLDisplayableNode"):
                        node.SetAttribute(self.SOURCE_FILES_ATTRIBUTE, json.dumps(files))
                loaded.extend(nodeIDs)
        return loaded

    def loadStudy(self, studyUID: str, database=None, loadPlans: bool = False) -> list:
        """Load every series of a study (CT, RTDOSE, RTSTRUCT); return the new node IDs."""
        database = self._database(database)
        fileLists = [database.filesForSeries(seriesUID) for seriesUID in database.seriesForStudy(studyUID)]
        self.log(_("Loading study {uid} ({n} series)...").format(uid=studyUID, n=len(fileLists)))
        return self.loadFileLists(fileLists, loadPlans)

    def sourceFiles(self, node) -> list:
        """The DICOM files DoseAlign loaded ``node`` from ([] for a node loaded some other way)."""
        text = node.GetAttribute(self.SOURCE_FILES_ATTRIBUTE) if node is not None else None
        if not text:
            return []
        try:
            files = json.loads(text)
        except ValueError:
            return []
        return [str(f) for f in files] if isinstance(files, list) else []

    # ---- finding nodes --------------------------------------------------------------------------

    def isDoseVolumeNode(self, node) -> bool:
        return bool(node and node.IsA("vtkMRMLScalarVolumeNode") and node.GetAttribute(self.DOSE_VOLUME_ATTRIBUTE))

    def doseVolumeNodes(self, nodeIDs: Optional[list] = None) -> list:
        """RT dose volume nodes, among ``nodeIDs`` or in the whole scene."""
        if nodeIDs is None:
            nodes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        else:
            nodes = [slicer.mrmlScene.GetNodeByID(nodeID) for nodeID in nodeIDs]
        return [node for node in nodes if self.isDoseVolumeNode(node)]

    @staticmethod
    def _subjectHierarchy():
        return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)

    def _seriesUID(self, node) -> str:
        """The series UID on the node's own subject-hierarchy item (set for CTs by DICOMPlugin.py:257 at
        v5.8.1, for doses by SlicerRT's LoadRtDose): correct per node, unlike the instance UIDs."""
        shNode = self._subjectHierarchy()
        item = shNode.GetItemByDataNode(node) if node is not None else 0
        return shNode.GetItemUID(item, "DICOM") if item else ""

    def modalityOfNode(self, node) -> str:
        """The Modality of the files a node came from, else its subject-hierarchy attribute, else ''."""
        files = self.sourceFiles(node)
        database = self._database(required=False)
        if files and database is not None:
            return database.fileValue(files[0], self.MODALITY_TAG)
        shNode = self._subjectHierarchy()
        item = shNode.GetItemByDataNode(node) if node is not None else 0
        return shNode.GetItemAttribute(item, "DICOM.Modality") if item else ""

    def ctVolumeNodes(self) -> list:
        """Scalar volume nodes whose Modality is CT (not PET, MR, CBCT-as-RTIMAGE, doses or labelmaps)."""
        return [
            node
            for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if not node.IsA("vtkMRMLLabelMapVolumeNode")
            and not self.isDoseVolumeNode(node)
            and self.modalityOfNode(node) == "CT"
        ]

    def doseFileForNode(self, doseNode) -> str:
        """The RTDOSE file of a dose node: recorded when DoseAlign loaded it. For a dose loaded some other
        way, only an unambiguous case is accepted: the only dose node of its series in the scene, whose
        series holds one RTDOSE file. Subject-hierarchy instance UIDs are never used (issue 15 #1)."""
        if doseNode is None:
            raise ValueError(_("Select a dose volume"))
        files = self.sourceFiles(doseNode)
        if len(files) == 1:
            return files[0]
        if files:
            raise ValueError(
                _("{name} came from {n} files; a dose volume comes from one RTDOSE file").format(
                    name=doseNode.GetName(), n=len(files)
                )
            )
        seriesUID = self._seriesUID(doseNode)
        if not seriesUID:
            raise ValueError(_("{name} was not loaded from the DICOM database").format(name=doseNode.GetName()))
        database = self._database()
        twins = [n for n in self.doseVolumeNodes() if self._seriesUID(n) == seriesUID]
        doseFiles = [
            f for f in database.filesForSeries(seriesUID) if database.fileValue(f, self.MODALITY_TAG) == "RTDOSE"
        ]
        if len(twins) != 1 or len(doseFiles) != 1:
            raise ValueError(
                _(
                    "{name}: Slicer cannot tell which file this dose came from ({nodes} dose volumes of its series "
                    "are loaded, the series holds {files} RTDOSE files). Load the study with DoseAlign's Load "
                    "button, which records each node's file."
                ).format(name=doseNode.GetName(), nodes=len(twins), files=len(doseFiles))
            )
        return doseFiles[0]

    def ctFilesForNode(self, ctNode) -> list:
        """The DICOM files of a CT node: recorded at load, else its series' files in the database."""
        files = self.sourceFiles(ctNode)
        database = self._database()
        if not files:
            seriesUID = self._seriesUID(ctNode)
            if not seriesUID:
                raise ValueError(_("{name} was not loaded from the DICOM database").format(name=ctNode.GetName()))
            files = list(database.filesForSeries(seriesUID))
        if not files:
            raise ValueError(_("The DICOM files of {name} are not in the database").format(name=ctNode.GetName()))
        modality = database.fileValue(files[0], self.MODALITY_TAG)
        if modality != "CT":
            raise ValueError(
                _("{name} is not a CT (Modality {modality})").format(name=ctNode.GetName(), modality=modality or "?")
            )
        return files

    def structureFilesForNode(self, segmentationNode) -> list:
        """The RTSTRUCT file of a segmentation: recorded when DoseAlign loaded it, else the one RTSTRUCT file of
        the series whose UID SlicerRT puts on the segmentation's own subject-hierarchy item (LoadRtStructureSet,
        SlicerRT 169eed7b DicomRtImportExport/Logic/vtkSlicerDicomRtImportExportModuleLogic.cxx:1561-1562).
        A segmentation that maps to no RTSTRUCT file (drawn in Slicer, an earlier Align's masks), or to one of
        several files of its series, is refused: exporting the study's other structure sets instead would
        silently give masks the user did not choose."""
        files = self.sourceFiles(segmentationNode)
        if files:
            return files
        name = segmentationNode.GetName()
        seriesUID = self._seriesUID(segmentationNode)
        database = self._database(required=False)
        structFiles = []
        if seriesUID and database is not None:
            structFiles = [
                f for f in database.filesForSeries(seriesUID) if database.fileValue(f, self.MODALITY_TAG) == "RTSTRUCT"
            ]
        if not structFiles:
            raise ValueError(
                _(
                    "The segmentation {name} maps to no RTSTRUCT file in the DICOM database (it was not loaded from "
                    "one: drawn in Slicer, or an earlier Align's masks). Select an RTSTRUCT segmentation of the "
                    "study, or none to export the structure set paired with the dose (the plan's RTSTRUCT when a "
                    "plan names one, else every RTSTRUCT drawn on the CT)."
                ).format(name=name)
            )
        if len(structFiles) > 1:
            raise ValueError(
                _(
                    "{name}: its series holds {n} RTSTRUCT files and Slicer cannot tell which one this segmentation "
                    "came from. Load the study with DoseAlign's Load button, which records each node's file, or "
                    "select none to export the structure set paired with the dose (the plan's RTSTRUCT when a plan "
                    "names one, else every RTSTRUCT drawn on the CT)."
                ).format(name=name, n=len(structFiles))
            )
        return structFiles

    def _studiesOfFiles(self, files: list) -> set:
        database = self._database()
        return {database.studyForSeries(database.seriesForFile(f)) for f in files} - {""}

    def _seriesFilesOfStudies(self, studyUIDs, modalities) -> list:
        """Files of every series of the studies whose Modality is one of ``modalities``."""
        database = self._database()
        found = []
        for studyUID in sorted(studyUIDs):
            for seriesUID in database.seriesForStudy(studyUID):
                files = list(database.filesForSeries(seriesUID))
                if files and database.fileValue(files[0], self.MODALITY_TAG) in modalities:
                    found.extend(files)
        return found

    def caseForDose(self, doseNode, ctNode=None, segmentationNode=None, structures: bool = True):
        """The engine's Case of a loaded dose.

        The engine scans exactly these files (``api.scan_files``): the dose's file, the CT's files
        (``ctNode``'s, else every series of Modality CT in the dose's study, or in the patient's studies when
        that study has none), and the RTPLAN and RTSTRUCT
        files the database holds for those studies (only ``segmentationNode``'s RTSTRUCT when one is
        given: :meth:`structureFilesForNode`, which refuses a segmentation of no RTSTRUCT file). ``api.form_cases``
        then pairs them as ``dosealign export`` does (with several RTSTRUCTs: the plan's, else every one drawn on
        the CT). Raises ValueError or a DoseAlignError naming the file.
        """
        doseFile = self.doseFileForNode(doseNode)
        files = [doseFile]
        studies = self._studiesOfFiles([doseFile])
        if ctNode is not None:
            ctFiles = self.ctFilesForNode(ctNode)
            files += ctFiles
            studies |= self._studiesOfFiles(ctFiles[:1])
        else:
            ctFiles = self._seriesFilesOfStudies(studies, ("CT",))
            if not ctFiles:  # some planning systems put the dose in a study of its own: the patient's other studies
                database = self._database()
                studies = {
                    other for study in studies for other in database.studiesForPatient(database.patientForStudy(study))
                }
                ctFiles = self._seriesFilesOfStudies(studies, ("CT",))
            files += ctFiles
        files += self._seriesFilesOfStudies(studies, ("RTPLAN",))
        structFiles = []
        if structures:
            structFiles = self.structureFilesForNode(segmentationNode) if segmentationNode is not None else []
            files += structFiles or self._seriesFilesOfStudies(studies, ("RTSTRUCT",))
        scan = api.scan_files(files)
        wanted = os.path.normcase(os.path.abspath(doseFile))
        for case in api.form_cases(scan).cases:
            if any(os.path.normcase(os.path.abspath(str(d.path))) == wanted for d in case.doses):
                if case.error:
                    raise api.LinkError(case.error)
                used = {os.path.normcase(os.path.abspath(str(s.path))) for s in case.structs}
                if structFiles and not used & {os.path.normcase(os.path.abspath(f)) for f in structFiles}:
                    raise ValueError(
                        _("{file} (the segmentation {name}) is not drawn on this dose's CT: select another").format(
                            file=structFiles[0], name=segmentationNode.GetName()
                        )
                    )
                return case
        raise ValueError(_("The engine formed no case with {file}").format(file=doseFile))

    def _nodesFromFiles(self, nodes, files) -> list:
        wanted = {os.path.normcase(os.path.abspath(str(f))) for f in files}
        return [n for n in nodes if wanted & {os.path.normcase(os.path.abspath(f)) for f in self.sourceFiles(n)}]

    def ctNodeForCase(self, case):
        """A loaded CT node of the case's CT series (None if none is loaded); copies of one series are
        interchangeable since the engine reads the files."""
        candidates = [n for n in self.ctVolumeNodes() if self._seriesUID(n) == case.ct.series_uid]
        tagged = self._nodesFromFiles(candidates, [s.path for s in case.ct.slices])
        return (tagged or candidates or [None])[0]

    def segmentationNodeForCase(self, case):
        """The loaded segmentation node of the case's structure set, only when the case has exactly one: one
        DoseAlign loaded from its file, else one SlicerRT tagged with its series UID that maps to that file alone
        (:meth:`structureFilesForNode`). None otherwise: with several structure sets the engine pairs them all
        (every RTSTRUCT drawn on the CT when no plan names one), and selecting one would narrow the export; a
        segmentation Align would refuse is not selected either."""
        if len(case.structs) != 1:
            return None
        (struct,) = case.structs
        nodes = slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
        found = self._nodesFromFiles(nodes, [struct.path])
        if found:
            return found[0]
        wanted = [os.path.normcase(os.path.abspath(str(struct.path)))]
        for node in nodes:
            if self.sourceFiles(node) or self._seriesUID(node) != struct.series_uid:
                continue
            try:
                files = self.structureFilesForNode(node)
            except ValueError:  # its series holds several RTSTRUCT files
                continue
            if [os.path.normcase(os.path.abspath(f)) for f in files] == wanted:
                return node
        return None

    def nodesForDose(self, doseNode) -> tuple:
        """(CT node, segmentation node) loaded for the dose's case; None for what is not loaded, both None (and
        the reason logged) when the case cannot be formed."""
        try:
            case = self.caseForDose(doseNode)
        except (DoseAlignError, ValueError, RuntimeError, OSError) as error:
            self.log(
                _("{name}: its CT and structures cannot be found: {error}").format(name=doseNode.GetName(), error=error)
            )
            return None, None
        return self.ctNodeForCase(case), self.segmentationNodeForCase(case)

    def findCtForDose(self, doseNode):
        """The loaded CT node the engine pairs with the dose (by frame of reference and references,
        CT series only). Raises ValueError when it is not loaded."""
        case = self.caseForDose(doseNode)
        node = self.ctNodeForCase(case)
        if node is None:
            raise ValueError(_("The dose's CT (series {uid}) is not loaded").format(uid=case.ct.series_uid))
        return node

    # ---- what Slicer shows ----------------------------------------------------------------------

    def checkDoseNode(self, doseNode, doseFile: Optional[str] = None) -> Optional[str]:
        """Say whether Slicer's dose node agrees with its file (grid and values); None when it does.

        Only reports: exports are made from the file, and the node is never changed (a mismatch might
        come from a wrong node-to-file mapping, and then rewriting would overwrite a good dose).
        """
        doseFile = doseFile or self.doseFileForNode(doseNode)
        volume, _geometry, info = api.read_rtdose(doseFile, allow_relative=True)
        if not volume.grid.is_uniform:
            steps = np.diff(volume.grid.k_offsets)
            return _(
                "its frames are unevenly spaced ({low:g} to {high:g} mm): Slicer shows them at even steps, so the "
                "loaded dose is misplaced in the views; the export reads every frame offset"
            ).format(low=steps.min(), high=steps.max())
        problem = mrml.geometry_difference(doseNode, volume.grid)
        if problem:
            return _("Slicer's grid differs from the file's: {problem}").format(problem=problem)
        loaded = slicer.util.arrayFromVolume(doseNode)
        dmax = float(np.abs(volume.array).max()) or 1.0
        error = float(np.abs(loaded.astype(np.float64) - volume.array).max())
        if error > self.DOSE_VALUE_RTOL * dmax:
            return _(
                "Slicer's values differ from the file's by up to {error:.4g} (DoseGridScaling {scaling:g})"
            ).format(error=error, scaling=info.scaling)
        return None

    # ---- alignment ------------------------------------------------------------------------------

    def alignNodes(self, ctNode, doseNode, options: AlignOptions, backend: str = "cli", segmentationNode=None):
        """The case of a loaded dose (see :meth:`caseForDose`), made by ``api.run_case`` with the backend's
        resampler: an ``api.CaseResult`` (CT, dose, masks, meta.json), identical in form to ``dosealign
        export``'s. ``ctNode`` may be None (the engine picks the dose's CT among the study's CT series)."""
        if doseNode is None:
            raise ValueError(_("Select a dose volume"))
        self.progress(0.0, _("finding the case"))
        case = self.caseForDose(doseNode, ctNode, segmentationNode, options.structures)
        note = self.checkDoseNode(doseNode, self.doseFileForNode(doseNode))
        if note:
            self.log(_("{name}: {note}").format(name=doseNode.GetName(), note=note))
        return self.runCase(case, options, backend)

    # ---- export ---------------------------------------------------------------------------------

    @staticmethod
    def exportFormats(outputFormat: str = "npz"):
        """The engine's ExportFormats of an output format choice; raises with what to install."""
        if outputFormat == OutputFormatChoice.NPZ_AND_NRRD.value:
            formats = api.ExportFormats(formats=("nrrd",))
            try:
                formats.check()
            except Exception as error:
                raise RuntimeError(
                    _("{error}. In Slicer's Python console: slicer.util.pip_install('pynrrd')").format(error=error)
                ) from error
            return formats
        if outputFormat != OutputFormatChoice.NPZ.value:
            raise ValueError(_("Unknown output format {name!r}").format(name=outputFormat))
        return api.ExportFormats()

    def exportResult(self, result, outputFolder, outputFormat: str = "npz") -> pathlib.Path:
        """Write ``<outputFolder>/<case>/pair.npz``, ``meta.json`` (and qa.png, NRRD) as ``dosealign export``."""
        if isEmptyPath(outputFolder):
            raise ValueError(_("Choose an output folder"))
        formats = self.exportFormats(outputFormat)
        writers = [api.qa_png_writer(result)]
        if formats.extra:
            writers.append(formats.case_writer(result))
        try:
            folder = api.write_case_output(result, pathlib.Path(outputFolder), writers)
        finally:
            # the engine claims the folder with an owner record it keeps open (output/files.py RunClaim); in a
            # long-lived Slicer that would last until Slicer quits and, on Windows, lock the folder
            api.release_claims(pathlib.Path(outputFolder))
        self.log(_("Exported {case} to {folder}").format(case=result.case_id, folder=folder))
        return folder

    def exportFolder(
        self,
        inputFolder,
        outputFolder,
        options: AlignOptions,
        backend: str = "cli",
        outputFormat: str = "npz",
        resume: bool = False,
        rowCallback=None,
    ) -> list:
        """``dosealign export`` of a folder with the backend's resampler: the same case ids, files,
        manifest.csv and report. Nothing is loaded into the scene and no DICOM database is needed."""
        if isEmptyPath(inputFolder):
            raise ValueError(_("Choose a DICOM folder"))
        if isEmptyPath(outputFolder):
            raise ValueError(_("Choose an output folder"))
        formats = self.exportFormats(outputFormat)
        done = [0.0]

        def progress(fraction: float, message: str) -> None:
            done[0] = fraction
            self.progress(fraction, message)

        try:
            report = api.export_folder(
                pathlib.Path(inputFolder),
                pathlib.Path(outputFolder),
                options,
                resume=resume,
                progress=progress,
                stage=lambda caseId, message: self.progress(done[0], f"{caseId}: {message}"),  # Cancel inside a case
                formats=formats if formats.extra else None,
                resampler=self.resamplerFor(backend),
            )
        finally:
            api.release_claims(pathlib.Path(outputFolder))  # export_folder releases it too; every path does
        for row in report.rows:
            if rowCallback:
                rowCallback(row["case_id"], row["status"], row["reason"], row.get("warnings", ""))
        return report.rows

    def exportDatabase(
        self, outputFolder, options: AlignOptions, backend: str = "cli", outputFormat: str = "npz", rowCallback=None
    ) -> list:
        """Export every case of every patient in the DICOM database; return the manifest rows.

        Per patient, the engine scans the files the database lists (``api.scan_files``) and forms the
        cases as ``dosealign export`` would; nothing is loaded into the scene, so studies already loaded
        are neither duplicated nor disturbed (issue 15 #2), and no series is loaded only to be dropped.
        """
        if isEmptyPath(outputFolder):
            raise ValueError(_("Choose an output folder"))
        database = self._database()
        formats = self.exportFormats(outputFormat)
        outputFolder = pathlib.Path(outputFolder)
        try:
            return self._exportDatabase(database, outputFolder, options, backend, formats, rowCallback)
        finally:
            api.release_claims(outputFolder)  # the owner record goes now, not when Slicer quits (see exportResult)

    def _exportDatabase(self, database, outputFolder, options, backend, formats, rowCallback) -> list:
        outputFolder.mkdir(parents=True, exist_ok=True)
        api.clean_temp(outputFolder)
        resampler = self.resamplerFor(backend)
        patients = list(database.patients())
        rows = []
        for p, patientUID in enumerate(patients):
            start, stop = p / max(len(patients), 1), (p + 1) / max(len(patients), 1)
            files = [
                f
                for studyUID in database.studiesForPatient(patientUID)
                for seriesUID in database.seriesForStudy(studyUID)
                for f in database.filesForSeries(seriesUID)
            ]
            name = database.nameForPatient(patientUID) or patientUID
            self.progress(start, _("patient {n}/{total}: {name}").format(n=p + 1, total=len(patients), name=name))
            if not files:
                continue
            cases = api.form_cases(api.scan_files(files)).cases
            for c, case in enumerate(cases):
                caseStart = start + (stop - start) * c / len(cases)
                row = api.export_case(
                    case,
                    outputFolder,
                    options,
                    formats=formats if formats.extra else None,
                    resampler=resampler,
                    stage=lambda message, at=caseStart, caseId=case.case_id: self.progress(at, f"{caseId}: {message}"),
                )
                rows.append(row)
                api.write_manifest(outputFolder, rows)
                if row["status"] != "ok":
                    self.log(_("Case {case} failed: {reason}").format(case=row["case_id"], reason=row["reason"]))
                if rowCallback:
                    rowCallback(row["case_id"], row["status"], row["reason"], row.get("warnings", ""))
        if formats.extra:
            formats.finish(outputFolder, rows)
        api.write_manifest(outputFolder, rows)
        api.write_report(outputFolder, rows, source="3D Slicer DICOM database")
        self.progress(1.0, _("{n} cases").format(n=len(rows)))
        return rows

    # ---- display --------------------------------------------------------------------------------

    def _removeOutputs(self) -> None:
        for node in slicer.util.getNodesByClass("vtkMRMLNode"):
            if node.GetScene() is not None and node.GetAttribute(self.OUTPUT_ATTRIBUTE):
                resamplers._remove_with_helpers(slicer.mrmlScene, node)

    def showResult(self, result, doseNode=None) -> dict:
        """Show the result's CT with its dose as a thresholded colour wash and its masks as segments.

        The nodes of the previous call are removed first, so repeated Align clicks do not pile up
        full-size volumes. Returns the new nodes by role ("ct", "dose", "masks").
        """
        self._removeOutputs()
        scene = slicer.mrmlScene
        ctNode = mrml.volume_node_from_volume(result.ct, scene, f"{result.case_id} CT")
        aligned = mrml.volume_node_from_volume(result.dose, scene, f"{result.case_id} dose")
        nodes = {"ct": ctNode, "dose": aligned}
        masks, _kinds, _body = api.masks_from_arrays(result.extra_arrays, result.meta, result.ct.grid.shape)
        if masks:
            segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{result.case_id} masks")
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(ctNode)
            for name, mask in masks:
                segmentId = segmentationNode.GetSegmentation().AddEmptySegment("", name)  # IDs unique, names may repeat
                slicer.util.updateSegmentBinaryLabelmapFromArray(
                    mask.astype(np.uint8), segmentationNode, segmentId, ctNode
                )
            segmentationNode.CreateDefaultDisplayNodes()
            nodes["masks"] = segmentationNode
        for node in nodes.values():
            node.SetAttribute(self.OUTPUT_ATTRIBUTE, "1")
        dmax = float(result.dose.array.max()) or 1.0
        display = aligned.GetDisplayNode()
        colorNodeID = "vtkMRMLColorTableNodeRainbow"
        if doseNode is not None and doseNode.GetScene() is not None and doseNode.GetDisplayNode():
            colorNodeID = doseNode.GetDisplayNode().GetColorNodeID() or colorNodeID  # SlicerRT's Dose_ColorTable
        display.SetAndObserveColorNodeID(colorNodeID)
        display.SetAutoWindowLevel(0)
        display.SetWindowLevelMinMax(0.0, dmax)
        display.SetApplyThreshold(1)
        display.SetLowerThreshold(0.05 * dmax)
        # Outputs go under the dose's study in the subject hierarchy
        if doseNode is not None and doseNode.GetScene() is not None:
            shNode = self._subjectHierarchy()
            studyItem = shNode.GetItemParent(shNode.GetItemByDataNode(doseNode))
            if studyItem:
                for node in nodes.values():
                    shNode.SetItemParent(shNode.GetItemByDataNode(node), studyItem)
        layoutManager = slicer.app.layoutManager() if hasattr(slicer.app, "layoutManager") else None
        if layoutManager is not None:
            slicer.util.setSliceViewerLayers(background=ctNode, foreground=aligned, foregroundOpacity=0.5, fit=True)
        return nodes


#
# DoseAlignTest
#


class DoseAlignTest(ScriptedLoadableModuleTest):
    """Runs the module on the engine's phantom and compares every backend with ``dosealign export``:
    the Resample CLI and in-process VTK backends (identical grids and pair.npz members, CT within 1 HU,
    identical masks, dose within 1e-4 x Dmax inside the dose grid), uneven frame offsets through the CLI,
    and a study loaded twice through the DICOM database and SlicerRT (each dose node maps to its file)."""

    def setUp(self):
        """Reset the state: a clear scene."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_DoseAlign_CliMatchesEngine()
        self.setUp()
        self.test_DoseAlign_InProcessMatchesEngine()
        self.setUp()
        self.test_DoseAlign_UnevenFramesThroughTheCli()
        self.setUp()
        self.test_DoseAlign_LoadedDosesMapToTheirFiles()

    @contextlib.contextmanager
    def _phantomFolder(self, name, **spec):
        """A temporary folder holding the phantom's DICOM in ``dicom/``; removed afterwards, so that
        running the self-test again and again does not fill the temporary folder."""
        folder = pathlib.Path(tempfile.mkdtemp(prefix=f"DoseAlignTest-{name}-"))
        try:
            api.write_phantom(folder / "dicom", api.PhantomSpec(**spec))
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # a file still open (Windows) is left behind

    def _compareWithEngine(self, backend, options=None, **spec):
        """Export the phantom through the module with ``backend`` and with the engine; compare the cases
        and return the module's meta.json of each."""
        with self._phantomFolder(backend, **spec) as folder:
            return self._compareFolderWithEngine(folder, backend, options)

    def _compareFolderWithEngine(self, folder, backend, options):
        options = options or AlignOptions()  # structures and audit on
        engineReport = api.export_folder(folder / "dicom", folder / "engine", options)
        self.assertEqual(engineReport.exit_code, 0, engineReport.rows)
        logic = DoseAlignLogic()
        rows = logic.exportFolder(folder / "dicom", folder / "slicer", options, backend)
        self.assertEqual([r["case_id"] for r in rows], [r["case_id"] for r in engineReport.rows])
        self.assertEqual([r["status"] for r in rows], ["ok"] * len(rows), rows)
        metas = []
        for row in engineReport.rows:
            metas.append(self._compareCase(folder / "engine" / row["case_id"], folder / "slicer" / row["case_id"]))
        return metas

    def _compareCase(self, engineFolder, slicerFolder):
        expected = dict(np.load(engineFolder / "pair.npz"))
        actual = dict(np.load(slicerFolder / "pair.npz"))
        engineMeta = json.loads((engineFolder / "meta.json").read_text(encoding="utf-8"))
        slicerMeta = json.loads((slicerFolder / "meta.json").read_text(encoding="utf-8"))
        self.assertEqual(sorted(actual), sorted(expected))
        self.assertEqual(sorted(slicerMeta), sorted(engineMeta))
        self.assertEqual(slicerMeta["shape"], engineMeta["shape"])
        self.assertEqual(slicerMeta["ijk_to_lps"], engineMeta["ijk_to_lps"])
        for name, array in expected.items():
            self.assertEqual(actual[name].dtype, array.dtype, name)
            self.assertEqual(actual[name].shape, array.shape, name)
        self.assertLessEqual(int(np.abs(actual["ct"].astype(np.int32) - expected["ct"]).max()), 1)
        if "masks" in expected:  # the engine rasterizes the ROIs in every backend, on the same grid
            np.testing.assert_array_equal(actual["masks"], expected["masks"])
        grid = api.Grid(tuple(engineMeta["shape"]), np.array(engineMeta["ijk_to_lps"]))
        interior = self._doseInterior(grid, engineMeta)
        self.assertGreater(int(interior.sum()), 100)
        dmax = float(expected["dose"].max())
        error = float(np.abs(actual["dose"].astype(np.float64) - expected["dose"])[interior].max())
        self.assertLessEqual(error, 1e-4 * dmax, f"dose differs by {error} Gy (Dmax {dmax})")
        return slicerMeta

    @staticmethod
    def _doseInterior(grid, meta):
        """Output voxels at least one voxel inside every native dose grid (slice by slice, little memory)."""
        inside = np.ones(grid.shape, dtype=bool)
        j, i = np.meshgrid(np.arange(grid.shape[1]), np.arange(grid.shape[2]), indexing="ij")
        for native in meta["dose"]["native_grids"]:
            doseGrid = api.Grid(tuple(native["shape"]), np.array(native["ijk_to_lps"]))
            upper = np.array(doseGrid.shape[::-1], dtype=float) - 1
            for k in range(grid.shape[0]):
                points = np.stack([i, j, np.full(i.shape, k)], axis=-1).astype(np.float64)
                index = np.linalg.solve(
                    doseGrid.affine[:3, :3], (grid.index_to_lps(points) - doseGrid.affine[:3, 3])[..., None]
                )[..., 0]
                inside[k] &= np.all((index >= 1) & (index <= upper - 1), axis=-1)
        return inside

    def test_DoseAlign_CliMatchesEngine(self):
        self.delayDisplay("Phantom through the Resample CLI vs the engine")
        metas = self._compareWithEngine(BackendChoice.CLI.value, patient_position="FFS")
        self.assertTrue(all(m["resampling"]["backend"].startswith("slicer-cli") for m in metas))
        self.delayDisplay("Test passed")

    def test_DoseAlign_InProcessMatchesEngine(self):
        self.delayDisplay("Phantom through in-process VTK resampling vs the engine")
        metas = self._compareWithEngine(BackendChoice.IN_PROCESS.value, patient_position="HFP")
        self.assertTrue(all(m["resampling"]["backend"].startswith("slicer-vtk") for m in metas))
        self.delayDisplay("Test passed")

    def test_DoseAlign_UnevenFramesThroughTheCli(self):
        self.delayDisplay("Uneven GridFrameOffsetVector: evened by the engine, then the Resample CLI")
        offsets = [0, 3, 6, 9, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48, 51, 54, 57, 60]
        metas = self._compareWithEngine(
            BackendChoice.CLI.value, AlignOptions(structures=False), dose_frame_offsets=offsets
        )
        self.assertIn("uneven slices", " ".join(metas[0]["resampling"]["before_backend"]))
        self.delayDisplay("Test passed")

    def test_DoseAlign_LoadedDosesMapToTheirFiles(self):
        """Needs the application: DICOM database, SlicerRT. A PLAN dose and two BEAM doses share a series,
        and the study is loaded twice: every dose node must still map to its own file."""
        self.delayDisplay("Doses of one series, loaded twice through SlicerRT, each mapped to its file")
        with self._phantomFolder("load", write_beam_doses=True, n_beams=2) as folder:
            self._checkLoadedDoses(folder)
        self.delayDisplay("Test passed")

    def _checkLoadedDoses(self, folder):
        logic = DoseAlignLogic()
        options = AlignOptions(structures=False)
        with logic.temporaryDatabase(folder / "db"):
            studies = logic.importFolderToDatabase(folder / "dicom")
            nodeIDs = logic.loadStudy(studies[0]) + logic.loadStudy(studies[0])
            doseNodes = logic.doseVolumeNodes(nodeIDs)
            self.assertEqual(len(doseNodes), 6)
            files = [logic.doseFileForNode(n) for n in doseNodes]
            self.assertEqual(sorted(files[:3]), sorted(files[3:]))
            self.assertEqual(len(set(files)), 3)
            for node, path in zip(doseNodes, files):
                volume = api.read_rtdose(path)[0]
                self.assertIsNone(mrml.geometry_difference(node, volume.grid))
                np.testing.assert_allclose(
                    slicer.util.arrayFromVolume(node), volume.array, atol=1e-4 * volume.array.max()
                )
            result = logic.alignNodes(None, doseNodes[-1], options, BackendChoice.CLI.value)
            engine = api.run_case(logic.caseForDose(doseNodes[-1]), options)
            self.assertEqual(result.case_id, engine.case_id)
            interior = self._doseInterior(engine.dose.grid, engine.meta)
            dmax = float(engine.dose.array.max())
            error = float(np.abs(result.dose.array - engine.dose.array)[interior].max())
            self.assertLessEqual(error, 1e-4 * dmax)
