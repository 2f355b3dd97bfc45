import contextlib
import enum
import hashlib
import logging
import os
import pathlib
import time
from typing import Annotated, Optional

import numpy as np
import slicer
import vtk
from DoseAlignLib import api
from DoseAlignLib.api import AlignOptions, Cancelled, DoseAlignError, GeometryError, Volume
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
Before the dose is used, its geometry is checked against the raw DICOM tags. Slicer reads RTDOSE
through GDCM, which takes the slice spacing from the first two values of GridFrameOffsetVector
only: with uneven frame offsets the dose lands in the wrong place, and decreasing offsets flip it.
SlicerRT also assumes a DoseGridScaling of 0.0001 when the tag is empty. DoseAlign re-reads the
file and either rebuilds the dose volume from the tags or refuses with the reason.<br><br>
Resampling uses the Resample Scalar/Vector/DWI Volume module, Slicer's in-process volume
resampling, or the DoseAlign engine. See the
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
    ctVolume - Planning CT (loaded through the DICOM module).
    doseVolume - RT dose loaded by SlicerRT.
    segmentation - RTSTRUCT segmentation (optional).
    referenceGrid - api.Grid the outputs share: the CT's, the dose's, or a custom one.
    customSpacing - Spacing of a custom grid in mm: one value or i,j,k.
    customBox - Extent of a custom grid.
    interpolator - Interpolator, named as the Resample CLI names them.
    backend - What resamples: the Resample CLI, in-process VTK, or the DoseAlign engine.
    structures - Rasterize the structures on the reference grid.
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


class DoseAlignWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the panel to the parameter node and the logic; no computation here."""

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._busy = False
        self._lastAligned = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DoseAlign.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # The .ui connects the root qMRMLWidget's mrmlSceneChanged(vtkMRMLScene*) to each node selector.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = DoseAlignLogic()
        self.logic.logCallback = self.addLog
        self.logic.progressCallback = self.onProgress

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Buttons
        self.ui.importFolderButton.connect("clicked(bool)", self.onImportFolderButton)
        self.ui.refreshStudiesButton.connect("clicked(bool)", self.onRefreshStudiesButton)
        self.ui.loadStudyButton.connect("clicked(bool)", self.onLoadStudyButton)
        self.ui.alignButton.connect("clicked(bool)", self.onAlignButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.exportAllButton.connect("clicked(bool)", self.onExportAllButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)

        self.ui.resultsTable.setHorizontalHeaderLabels([_("Case"), _("Status"), _("Reason"), _("QA flags")])
        self.ui.progressBar.setRange(0, 100)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()
        self.refreshStudies()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        self.setParameterNode(None)
        self._lastAligned = None

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())
        # Pick the first dose and its CT to save a few clicks
        if not self._parameterNode.doseVolume:
            doseNodes = self.logic.doseVolumeNodes()
            if doseNodes:
                self._parameterNode.doseVolume = doseNodes[0]
        if self._parameterNode.doseVolume and not self._parameterNode.ctVolume:
            with contextlib.suppress(ValueError, RuntimeError, OSError):  # else the user picks the CT
                self._parameterNode.ctVolume = self.logic.findCtForDose(self._parameterNode.doseVolume)

    def setParameterNode(self, inputParameterNode: Optional[DoseAlignParameterNode]) -> None:
        """Set and observe the parameter node; connect it to the GUI."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # ui element that needs connection to the parameter node must have a SlicerParameterName property
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

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
        haveNodes = bool(p and p.ctVolume and p.doseVolume)
        haveOutput = bool(p and str(p.outputFolder) not in ("", "."))
        canAlign = not reason and haveNodes
        canExport = canAlign and haveOutput
        canExportAll = not reason and haveOutput and self.logic.databaseHasPatients()
        self.ui.alignButton.enabled = canAlign
        self.ui.alignButton.toolTip = reason or (
            _("Resample the dose (and structures) onto the reference grid and show them")
            if haveNodes
            else _("Select a CT and a dose volume (load a study first)")
        )
        self.ui.exportButton.enabled = canExport
        self.ui.exportButton.toolTip = reason or (
            _("Align and write this case to the output folder")
            if canExport
            else _("Select CT, dose and an output folder")
        )
        self.ui.exportAllButton.enabled = canExportAll
        self.ui.exportAllButton.toolTip = reason or (
            _("Align and export every dose of every study in the DICOM database")
            if canExportAll
            else _("Needs studies in the DICOM database and an output folder")
        )
        self.ui.cancelButton.enabled = self._busy
        for widget in (self.ui.importFolderButton, self.ui.loadStudyButton, self.ui.refreshStudiesButton):
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
        self.ui.studyComboBox.clear()
        for studyUID, label in self.logic.listStudies():
            self.ui.studyComboBox.addItem(label, studyUID)
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
            self._parameterNode.doseVolume = doseNodes[0]
            self._parameterNode.ctVolume = self.logic.findCtForDose(doseNodes[0])
            self._parameterNode.segmentation = self.logic.findSegmentationForCt(self._parameterNode.ctVolume)

    def _align(self):
        p = self._parameterNode
        options = self.logic.optionsFromParameterNode(p)
        aligned = self.logic.alignNodes(
            p.ctVolume,
            [p.doseVolume],
            options,
            p.backend.value,
            segmentationNode=p.segmentation if p.structures else None,
        )
        self.logic.showResult(aligned)
        self._lastAligned = aligned
        return aligned, options

    def onAlignButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to align the dose."), waitCursor=True):
            self.setBusy(True)
            try:
                aligned, _options = self._align()
                self.addResultRow(aligned.caseId, _("aligned"), "", "; ".join(aligned.flags))
            except Cancelled:
                self.addLog(_("Cancelled."))
            finally:
                self.setBusy(False)

    def onExportButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to export the case."), waitCursor=True):
            self.setBusy(True)
            try:
                aligned, options = self._align()
                folder = self.logic.exportAligned(aligned, p.outputFolder, options, p.outputFormat.value)
                self.addResultRow(aligned.caseId, _("ok"), str(folder), "; ".join(aligned.flags))
            except Cancelled:
                self.addLog(_("Cancelled."))
            finally:
                self.setBusy(False)

    def onExportAllButton(self) -> None:
        p = self._parameterNode
        if not slicer.util.confirmOkCancelDisplay(
            _("Every study in the DICOM database is loaded, aligned and exported to {folder}. Continue?").format(
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


class DoseAlignCase:
    """One aligned case: engine Volumes on the reference grid, masks, notes, and the output nodes."""

    def __init__(self, caseId, ctVolume, doseVolume, masks=None, flags=None, meta=None, source=None):
        self.caseId = caseId
        self.ctVolume = ctVolume
        self.doseVolume = doseVolume
        self.masks = masks or {}
        self.flags = flags or []
        self.meta = meta
        self.source = source or {}
        self.extraArrays = {}  # further pair.npz arrays (packed masks, body, DVHs) when the engine made them
        self.ctNode = None
        self.doseNode = None
        self.referenceDescription = ""
        self.backend = ""
        self.originalDoseNode = None


class DoseAlignLogic(ScriptedLoadableModuleLogic):
    """All computation of the module, usable without the GUI (batch scripts, notebooks, tests):

    >>> import DoseAlign
    >>> logic = DoseAlign.DoseAlignLogic()

    Progress goes to ``progressCallback(fraction, message)`` and text to ``logCallback(text)``;
    after :meth:`requestCancel` the next progress report raises ``DoseAlignLib.api.Cancelled``.
    """

    #: DICOM plugins used for loading, in loading order (the CT loads before the RTSTRUCT).
    DICOM_PLUGINS = ["DICOMScalarVolumePlugin", "DicomRtImportExportPlugin"]
    #: Attribute SlicerRT puts on dose volumes (vtkSlicerRtCommon::DICOMRTIMPORT_DOSE_VOLUME_IDENTIFIER_ATTRIBUTE_NAME).
    DOSE_VOLUME_ATTRIBUTE = "DicomRtImport.DoseVolume"
    #: Relative dose difference (of Dmax) above which Slicer's dose values count as wrong.
    DOSE_VALUE_RTOL = 1e-4

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.logCallback = None
        self.progressCallback = None
        self._cancelRequested = False

    def getParameterNode(self):
        return DoseAlignParameterNode(super().getParameterNode())

    # ---- feedback -------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        logging.info(text)
        if self.logCallback:
            self.logCallback(text)

    def requestCancel(self) -> None:
        """Ask the running operation to stop at its next progress report."""
        self._cancelRequested = True

    def resetCancel(self) -> None:
        """Forget an earlier cancel request (call before starting an operation)."""
        self._cancelRequested = False

    def progress(self, fraction: float, message: str) -> None:
        """Report progress; raise Cancelled when a cancel was requested (the engine's convention)."""
        if self.progressCallback:
            self.progressCallback(fraction, message)
        if self._cancelRequested:
            self._cancelRequested = False
            raise Cancelled(_("Cancelled by the user"))

    def _subProgress(self, start: float, stop: float, prefix: str = ""):
        def report(fraction: float, message: str) -> None:
            self.progress(start + (stop - start) * fraction, f"{prefix}{message}")

        return report

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

    # ---- DICOM database -------------------------------------------------------------------------

    @staticmethod
    def _database(database=None):
        database = database if database is not None else slicer.dicomDatabase
        if database is None or not database.isOpen:
            raise RuntimeError(
                _("The DICOM database is not open. Open the DICOM module once, or use a temporary database.")
            )
        return database

    def databaseHasPatients(self) -> bool:
        database = slicer.dicomDatabase
        return bool(database is not None and database.isOpen and database.patients())

    def listStudies(self, database=None) -> list:
        """(studyUID, label) of every study in the database; [] when it is not open."""
        database = database if database is not None else slicer.dicomDatabase
        if database is None or not database.isOpen:
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
        """Index the DICOM files below ``folder`` (files stay in place); return the UIDs of their studies."""
        from DICOMLib import DICOMUtils

        database = self._database(database)
        folder = os.path.abspath(os.fspath(folder)) if folder else ""
        if not folder or not os.path.isdir(folder):
            raise ValueError(_("Not a folder: {folder}").format(folder=folder))
        self.log(_("Importing {folder} into the DICOM database...").format(folder=folder))
        if not DICOMUtils.importDicom(folder, database):
            raise RuntimeError(_("DICOM import of {folder} failed (see the error log)").format(folder=folder))
        seriesUIDs = set()
        for root, _dirs, files in os.walk(folder):
            for name in files:
                seriesUID = database.seriesForFile(os.path.join(root, name).replace("\\", "/"))
                if seriesUID:
                    seriesUIDs.add(seriesUID)
        studyUIDs = sorted({database.studyForSeries(uid) for uid in seriesUIDs} - {""})
        self.log(_("{series} series in {studies} studies.").format(series=len(seriesUIDs), studies=len(studyUIDs)))
        return studyUIDs

    def loadFileLists(self, fileLists: list, loadPlans: bool = False) -> list:
        """Load per-series file lists with the scalar volume and SlicerRT plugins; return the new node IDs.

        RTPLAN loadables are left out unless ``loadPlans`` (beam models are slow and not needed).
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
        if not loadPlans:
            for loadables in loadablesByPlugin.values():
                for loadable in loadables:
                    if loadable.selected and database.fileValue(loadable.files[0], "0008,0060") == "RTPLAN":
                        loadable.selected = False
        return DICOMUtils.loadLoadables(loadablesByPlugin)

    def loadStudy(self, studyUID: str, database=None, loadPlans: bool = False) -> list:
        """Load every series of a study (CT, RTDOSE, RTSTRUCT); return the new node IDs."""
        database = self._database(database)
        fileLists = [database.filesForSeries(seriesUID) for seriesUID in database.seriesForStudy(studyUID)]
        self.log(_("Loading study {uid} ({n} series)...").format(uid=studyUID, n=len(fileLists)))
        return self.loadFileLists(fileLists, loadPlans)

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

    def _instanceFile(self, node) -> str:
        """The DICOM file of the node's (first) SOP instance, from the subject hierarchy and the database."""
        shNode = self._subjectHierarchy()
        item = shNode.GetItemByDataNode(node)
        uids = shNode.GetItemUID(item, "DICOMInstanceUID") if item else ""
        if not uids:
            raise ValueError(_("{name} was not loaded from the DICOM database").format(name=node.GetName()))
        path = self._database().fileForInstance(uids.split()[0])
        if not path:
            raise ValueError(_("The DICOM file of {name} is not in the database").format(name=node.GetName()))
        return path

    def doseFileForNode(self, doseNode) -> str:
        return self._instanceFile(doseNode)

    def _frameOfReference(self, node) -> str:
        shNode = self._subjectHierarchy()
        item = shNode.GetItemByDataNode(node)
        frame = shNode.GetItemAttribute(item, "DICOM.FrameOfReferenceUID") if item else ""
        if not frame:
            try:
                frame = self._database().fileValue(self._instanceFile(node), "0020,0052")
            except ValueError:
                frame = ""
        return frame

    def findCtForDose(self, doseNode):
        """The CT a dose belongs to: same study, then same frame of reference, then the
        RTDOSE -> RTPLAN -> RTSTRUCT -> CT series references. Raises ValueError when none or several fit."""
        database = self._database()
        shNode = self._subjectHierarchy()
        doseFile = self.doseFileForNode(doseNode)
        doseFrame = database.fileValue(doseFile, "0020,0052")
        studyItem = shNode.GetItemParent(shNode.GetItemByDataNode(doseNode))
        candidates = []
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if node.GetID() == doseNode.GetID() or self.isDoseVolumeNode(node) or node.IsA("vtkMRMLLabelMapVolumeNode"):
                continue
            item = shNode.GetItemByDataNode(node)
            if item and shNode.GetItemUID(item, "DICOM"):
                candidates.append(node)
        sameStudy = [n for n in candidates if shNode.GetItemParent(shNode.GetItemByDataNode(n)) == studyItem]
        pool = sameStudy or candidates
        sameFrame = [n for n in pool if doseFrame and self._frameOfReference(n) == doseFrame]
        if len(sameFrame) == 1:
            return sameFrame[0]
        if len(sameFrame) > 1:
            seriesUID = self.ctSeriesReferencedByDose(doseFile)
            byReference = [n for n in sameFrame if shNode.GetItemUID(shNode.GetItemByDataNode(n), "DICOM") == seriesUID]
            if len(byReference) == 1:
                return byReference[0]
            raise ValueError(
                _("Several CTs share the dose's frame of reference ({names}); select the CT by hand").format(
                    names=", ".join(n.GetName() for n in sameFrame)
                )
            )
        raise ValueError(
            _("No loaded CT has the frame of reference {frame} of dose {name}").format(
                frame=doseFrame or _("(none)"), name=doseNode.GetName()
            )
        )

    def ctSeriesReferencedByDose(self, doseFile: str) -> str:
        """The CT SeriesInstanceUID at the end of RTDOSE -> RTPLAN -> RTSTRUCT references ('' if broken)."""
        import pydicom

        database = self._database()

        def referenced(path, sequence):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                return str(getattr(ds, sequence)[0].ReferencedSOPInstanceUID)
            except Exception:  # missing file, sequence or attribute: the chain is broken here
                return ""

        planUID = referenced(doseFile, "ReferencedRTPlanSequence")
        planFile = database.fileForInstance(planUID) if planUID else ""
        structUID = referenced(planFile, "ReferencedStructureSetSequence") if planFile else ""
        structFile = database.fileForInstance(structUID) if structUID else ""
        if not structFile:
            return ""
        ds = pydicom.dcmread(structFile, stop_before_pixels=True)
        for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
            for study in frame.get("RTReferencedStudySequence", []):
                for series in study.get("RTReferencedSeriesSequence", []):
                    return str(series.get("SeriesInstanceUID", ""))
        return ""

    def findSegmentationForCt(self, ctNode):
        """The RTSTRUCT segmentation SlicerRT links to ``ctNode`` (None if there is none)."""
        if ctNode is None:
            return None
        for segmentationNode in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
            referenced = slicer.vtkSlicerDicomRtImportExportModuleLogic.GetReferencedVolumeByDicomForSegmentation(
                segmentationNode
            )
            if referenced is not None and referenced.GetID() == ctNode.GetID():
                return segmentationNode
        return None

    # ---- dose geometry --------------------------------------------------------------------------

    def verifyDoseGeometry(
        self, doseNode, doseFile: Optional[str] = None, allowRelative: bool = False, fix: bool = True
    ) -> dict:
        """Check the dose node against the engine's reading of its RTDOSE file.

        api.Grid (shape, voxel positions) and values (DoseGridScaling) must match. A mismatch on an evenly
        spaced grid is fixed by rebuilding the node from the engine (unless ``fix`` is False, then it
        raises); uneven frame offsets cannot be held by a volume node and always raise GeometryError.
        Returns ``{"status": "ok" or "fixed", "note": text}``.
        """

        doseFile = doseFile or self.doseFileForNode(doseNode)
        volume, geometry, info = api.read_rtdose(doseFile, allow_relative=allowRelative)
        if not volume.grid.is_uniform:
            steps = np.diff(volume.grid.k_offsets)
            raise GeometryError(
                _(
                    "the dose frames are unevenly spaced ({low:g} to {high:g} mm); Slicer's reader took the spacing "
                    "from the first two offsets, so the loaded dose is misplaced and a volume node cannot hold the "
                    "correct grid"
                ).format(low=steps.min(), high=steps.max()),
                path=doseFile,
                tag="(3004,000C) GridFrameOffsetVector",
                hint=_("choose the 'DoseAlign engine' backend, which reads every frame offset"),
            )
        problem = mrml.geometry_difference(doseNode, volume.grid)
        if problem:
            problem = _("grid: {reason}").format(reason=problem)
        else:
            loaded = slicer.util.arrayFromVolume(doseNode)
            dmax = float(np.abs(volume.array).max()) or 1.0
            error = float(np.abs(loaded.astype(np.float64) - volume.array).max())
            if error > self.DOSE_VALUE_RTOL * dmax:
                problem = _("values differ by up to {error:.4g} Gy (DoseGridScaling {scaling:g})").format(
                    error=error, scaling=info.scaling
                )
        if not problem:
            return {"status": "ok", "note": _("dose grid and values match the DICOM tags")}
        if not fix:
            raise GeometryError(
                _("Slicer's dose volume differs from the DICOM tags: {problem}").format(problem=problem), path=doseFile
            )
        mrml.update_node(doseNode, volume)
        note = _("dose rebuilt from its DICOM tags ({problem})").format(problem=problem)
        self.log(f"{doseNode.GetName()}: {note}")
        return {"status": "fixed", "note": note}

    # ---- resampling -----------------------------------------------------------------------------

    def hardenTransform(self, node) -> None:
        """Harden a parent transform (e.g. the CT's acquisition-geometry regularization); CLIs ignore it."""
        if node is not None and node.GetParentTransformNode() is not None:
            self.log(_("Hardening the transform of {name}").format(name=node.GetName()))
            node.HardenTransform()

    def resampleWithCli(
        self,
        inputNode,
        referenceNode,
        interpolator: str = "linear",
        defaultPixelValue: float = 0.0,
        outputName: Optional[str] = None,
    ):
        """Resample with 'Resample Scalar/Vector/DWI Volume' onto ``referenceNode``'s grid; return the new node."""
        self.hardenTransform(inputNode)
        self.hardenTransform(referenceNode)
        cliModule = getattr(slicer.modules, "resamplescalarvectordwivolume", None)
        if cliModule is None:
            raise RuntimeError(
                _("The Resample Scalar/Vector/DWI Volume module is not available (CLI modules disabled?)")
            )
        outputNode = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLScalarVolumeNode", outputName or inputNode.GetName() + "_resampled"
        )
        parameters = {
            "inputVolume": inputNode.GetID(),
            "outputVolume": outputNode.GetID(),
            "referenceVolume": referenceNode.GetID(),
            "interpolationType": interpolator,
            "defaultPixelValue": float(defaultPixelValue),
        }
        startTime = time.time()
        cliNode = slicer.cli.runSync(cliModule, None, parameters, update_display=False)
        try:
            if cliNode.GetStatus() & cliNode.ErrorsMask:
                errorText = cliNode.GetErrorText()
                slicer.mrmlScene.RemoveNode(outputNode)
                raise RuntimeError(_("Resample Scalar/Vector/DWI Volume failed: {error}").format(error=errorText))
        finally:
            slicer.mrmlScene.RemoveNode(cliNode)
        logging.info(f"Resampled {inputNode.GetName()} in {time.time() - startTime:.2f} s")
        return outputNode

    def resampleInProcess(
        self, inputNode, referenceNode, interpolator: str = "linear", outputName: Optional[str] = None
    ):
        """Resample with vtkSlicerVolumesLogic::ResampleVolumeToReferenceVolume (trilinear, background 0)."""
        if interpolator != "linear" and not inputNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError(
                _("In-process resampling is linear only; choose the CLI or engine backend for '{name}'").format(
                    name=interpolator
                )
            )
        self.hardenTransform(inputNode)
        self.hardenTransform(referenceNode)
        return mrml.resample_in_process(inputNode, referenceNode, name=outputName)

    def _resample(self, backend, inputNode, referenceNode, interpolator, fill, outputName):
        if backend == BackendChoice.CLI.value:
            return self.resampleWithCli(inputNode, referenceNode, interpolator, fill, outputName)
        outputNode = self.resampleInProcess(inputNode, referenceNode, interpolator, outputName)
        if fill != 0.0:  # VTK's background is 0: write the fill value where the input has no data
            source = mrml.grid_from_node(inputNode)
            target = mrml.grid_from_node(outputNode)
            k, j, i = np.meshgrid(*(np.arange(n) for n in target.shape), indexing="ij")
            index = source.lps_to_index(target.index_to_lps(np.stack([i, j, k], axis=-1).astype(np.float64)))
            upper = np.array(source.shape[::-1]) - 0.5
            outside = np.any((index < -0.5) | (index > upper), axis=-1)
            array = slicer.util.arrayFromVolume(outputNode)
            array[outside] = fill
            slicer.util.arrayFromVolumeModified(outputNode)
        return outputNode

    def _referenceNode(self, ctNode, doseNode, options):
        """The node whose grid the outputs share, and how it was made (a new hidden node for custom grids)."""

        ctGrid = mrml.grid_from_node(ctNode)
        doseGrid = mrml.grid_from_node(doseNode)
        target, how = api.reference_grid(ctGrid, doseGrid, options)
        if target.equal(ctGrid):
            return ctNode, how, False
        if target.equal(doseGrid):
            return doseNode, how, False
        referenceNode = mrml.volume_node_from_volume(
            Volume(np.zeros(target.shape, np.uint8), target),
            slicer.mrmlScene,
            "DoseAlign reference grid",
            create_display_nodes=False,
        )
        referenceNode.SetHideFromEditors(True)
        return referenceNode, how, True

    def segmentationToMasks(self, segmentationNode, referenceNode) -> dict:
        """One uint8 mask ``(K, J, I)`` per segment, rasterized on ``referenceNode``'s grid."""
        masks = {}
        if segmentationNode is None:
            return masks
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceNode)
        segmentationNode.CreateBinaryLabelmapRepresentation()
        segmentation = segmentationNode.GetSegmentation()
        shape = mrml.grid_from_node(referenceNode).shape
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            name = segmentation.GetSegment(segmentId).GetName()
            array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceNode)
            masks[name] = np.zeros(shape, np.uint8) if array is None else (array > 0).astype(np.uint8)
        return masks

    # ---- alignment ------------------------------------------------------------------------------

    def alignNodes(
        self,
        ctNode,
        doseNodes: list,
        options: AlignOptions,
        backend: str = "cli",
        segmentationNode=None,
        caseId: Optional[str] = None,
    ) -> DoseAlignCase:
        """Put the CT, the dose(s) (summed) and the structures on the reference grid.

        ``backend``: "cli" (Resample Scalar/Vector/DWI Volume), "inprocess" (VTK, linear) or "engine"
        (the DoseAlign engine reads the DICOM files itself). Raises ValueError/DoseAlignError.
        """
        if ctNode is None or not doseNodes or any(n is None for n in doseNodes):
            raise ValueError(_("Select a CT and a dose volume"))
        caseId = caseId or self.caseIdForDose(doseNodes[0])
        if backend == BackendChoice.ENGINE.value:
            return self._alignWithEngine(ctNode, doseNodes, options, segmentationNode, caseId)

        flags = []
        doseFiles = []
        for n, doseNode in enumerate(doseNodes):
            self.progress(0.05 + 0.1 * n / len(doseNodes), _("checking dose geometry"))
            doseFile = self.doseFileForNode(doseNode)
            doseFiles.append(doseFile)
            check = self.verifyDoseGeometry(doseNode, doseFile, allowRelative=options.allow_relative)
            if check["status"] != "ok":
                flags.append(check["note"])
        self.hardenTransform(ctNode)
        referenceNode, how, temporary = self._referenceNode(ctNode, doseNodes[0], options)
        interpolator = options.interpolator.value
        created = []
        try:
            self.progress(0.2, _("resampling the CT"))
            if referenceNode is ctNode:
                ctOut = ctNode
            else:
                ctOut = self._resample(
                    backend, ctNode, referenceNode, interpolator, options.ct_fill_hu, ctNode.GetName() + " (DoseAlign)"
                )
                created.append(ctOut)
            doseSum = None
            for n, doseNode in enumerate(doseNodes):
                self.progress(0.4 + 0.4 * n / len(doseNodes), _("resampling the dose"))
                if referenceNode is doseNode:
                    values = slicer.util.arrayFromVolume(doseNode).astype(np.float32)
                else:
                    out = self._resample(
                        backend, doseNode, referenceNode, interpolator, 0.0, doseNode.GetName() + " (DoseAlign)"
                    )
                    values = slicer.util.arrayFromVolume(out).astype(np.float32)
                    slicer.mrmlScene.RemoveNode(out)
                if options.interpolator.value in ("bs", "ws"):
                    np.maximum(values, 0.0, out=values)  # these overshoot; dose is never negative
                doseSum = values if doseSum is None else doseSum + values
            self.progress(0.85, _("rasterizing structures"))
            masks = self.segmentationToMasks(segmentationNode, referenceNode) if options.structures else {}

            ctVolume = mrml.volume_from_node(ctOut, units="HU", description="CT")
            ctArray = ctVolume.array
            if options.ct_dtype == "int16":
                ctArray = np.clip(np.rint(ctArray), -32768, 32767).astype(np.int16)
            else:
                ctArray = ctArray.astype(np.float32)
            grid = ctVolume.grid
            aligned = DoseAlignCase(
                caseId,
                Volume(ctArray, grid, "HU", "CT"),
                Volume(doseSum, grid, "GY", "dose"),
                masks=masks,
                flags=flags,
                source={"rtdose_files": doseFiles, "ct_node": ctNode.GetName()},
            )
            aligned.referenceDescription = how
            aligned.backend = backend
            aligned.originalDoseNode = doseNodes[0]
            self.progress(1.0, _("aligned"))
            return aligned
        finally:
            for node in created:
                slicer.mrmlScene.RemoveNode(node)
            if temporary:
                slicer.mrmlScene.RemoveNode(referenceNode)

    def _alignWithEngine(self, ctNode, doseNodes, options, segmentationNode, caseId):
        """Engine backend: find the engine's case for the dose file(s) and run it (it rasterizes the ROIs too)."""

        doseFiles = [self.doseFileForNode(n) for n in doseNodes]
        case = self.engineCaseForDoseFiles(doseFiles, ctFiles=self._seriesFiles(ctNode))
        self.progress(0.1, _("running the DoseAlign engine"))
        aligned = self._fromEngineResult(caseId, api.run_case(case, options, progress=self._subProgress(0.1, 0.95)))
        aligned.originalDoseNode = doseNodes[0]
        self.progress(1.0, _("aligned"))
        return aligned

    @staticmethod
    def _fromEngineResult(caseId, result) -> DoseAlignCase:

        aligned = DoseAlignCase(caseId, result.ct, result.dose, meta=result.meta, source=result.meta.get("source", {}))
        aligned.extraArrays = dict(result.extra_arrays)
        masks, _types, _body = api.masks_from_arrays(result.extra_arrays, result.meta, result.ct.grid.shape)
        aligned.masks = {name: mask.astype(np.uint8) for name, mask in masks}
        aligned.flags = [f["flag"] for f in result.meta.get("audit", {}).get("flags", [])]
        aligned.referenceDescription = result.meta.get("resampling", {}).get("reference_grid", "")
        aligned.backend = BackendChoice.ENGINE.value
        return aligned

    def _seriesFiles(self, node) -> list:
        shNode = self._subjectHierarchy()
        seriesUID = shNode.GetItemUID(shNode.GetItemByDataNode(node), "DICOM")
        return list(self._database().filesForSeries(seriesUID)) if seriesUID else []

    def engineCaseForDoseFiles(self, doseFiles: list, ctFiles: Optional[list] = None):
        """The engine's Case holding ``doseFiles``: scan the folder that contains them (and the CT)."""

        folders = [os.path.dirname(os.path.abspath(f)) for f in list(doseFiles) + list(ctFiles or [])]
        root = os.path.commonpath(folders)
        self.log(_("Engine: scanning {folder}").format(folder=root))
        wanted = {os.path.normcase(os.path.abspath(f)) for f in doseFiles}
        for case in api.form_cases(api.scan_folder(pathlib.Path(root))).cases:
            if wanted & {os.path.normcase(os.path.abspath(str(d.path))) for d in case.doses}:
                return case
        raise ValueError(_("The engine found no case for {files}").format(files=", ".join(doseFiles)))

    def alignCase(self, case, options: AlignOptions, backend: str = "cli") -> DoseAlignCase:
        """Align one engine Case (from ``DoseAlignLib.api.form_cases``).

        With the Slicer backends the CT and dose files are loaded through the DICOM database and
        SlicerRT (dose geometry checked against the tags) and resampled in Slicer; the engine then adds
        the ROI masks and the dose audit exactly as ``dosealign export`` does, comparing Slicer's
        resampled dose with the dose on its own grid. With the engine backend the engine does it all.
        The loaded nodes are removed afterwards; the result holds arrays only.
        """

        if case.error:
            raise api.LinkError(case.error)
        if backend == BackendChoice.ENGINE.value:
            return self._fromEngineResult(
                case.case_id, api.run_case(case, options, progress=self._subProgress(0.0, 0.95))
            )
        before = {n.GetID() for n in slicer.util.getNodesByClass("vtkMRMLNode")}
        try:
            fileLists = [[str(p) for p in case.ct.files]] + [[str(d.path)] for d in case.doses]
            nodes = [slicer.mrmlScene.GetNodeByID(i) for i in self.loadFileLists(fileLists)]
            doseNodes = [n for n in nodes if self.isDoseVolumeNode(n)]
            ctNodes = [
                n
                for n in nodes
                if n.IsA("vtkMRMLScalarVolumeNode")
                and not self.isDoseVolumeNode(n)
                and not n.IsA("vtkMRMLLabelMapVolumeNode")
            ]
            if not ctNodes or len(doseNodes) != len(case.doses):
                raise ValueError(
                    _("Slicer loaded {ct} CT and {dose} dose volumes for the case; expected 1 and {expected}").format(
                        ct=len(ctNodes), dose=len(doseNodes), expected=len(case.doses)
                    )
                )
            aligned = self.alignNodes(ctNodes[0], doseNodes, options, backend, None, case.case_id)
        finally:
            self._removeNodesAddedSince(before)
        aligned.source = {
            "ct_files": [s.rel_path for s in case.ct.slices],
            "rtdose_files": case.dose_files,
            "rtplan_file": case.plan.rel_path if case.plan is not None else None,
            "rtstruct_files": [s.rel_path for s in case.structs],
            "ct_series_uid": case.ct.series_uid,
            "frame_of_reference_uid": case.ct.frame_of_reference_uid,
            "study_uid": case.ct.study_uid,
        }
        self.progress(0.9, _("structures and audit"))
        meta = self.caseMeta(aligned, options)
        meta["patient_id"] = case.patient_id
        result = api.CaseResult(
            case.case_id, aligned.ctVolume, aligned.doseVolume, meta, self._nativeDose(case, options)
        )
        api.add_structures_and_audit(result, case, options, api.ct_geometry(case.ct))
        aligned.meta = result.meta
        aligned.extraArrays = dict(result.extra_arrays)
        aligned.flags = list(aligned.flags) + [f["flag"] for f in result.meta.get("audit", {}).get("flags", [])]
        return aligned

    @staticmethod
    def _nativeDose(case, options):
        """The case's dose (sum) on its own grid, read by the engine, when one grid holds every dose."""

        volumes = [api.read_rtdose(d.path, allow_relative=options.allow_relative)[0] for d in case.doses]
        if any(not v.grid.equal(volumes[0].grid) for v in volumes[1:]):
            return None
        total = volumes[0].array.astype(np.float32)
        for volume in volumes[1:]:
            total = total + volume.array
        return volumes[0].with_array(total)

    @staticmethod
    def _removeNodesAddedSince(before: set) -> None:
        """Remove the data, display and storage nodes a step added (colour tables and singletons stay)."""
        for node in slicer.util.getNodesByClass("vtkMRMLNode"):
            if node.GetID() in before or node.GetScene() is None or node.GetSingletonTag():
                continue
            if node.IsA("vtkMRMLSubjectHierarchyNode") or node.IsA("vtkMRMLColorNode"):
                continue
            slicer.mrmlScene.RemoveNode(node)

    def caseIdForDose(self, doseNode) -> str:
        """patient_name-of-dose-file_hash, made filesystem-safe (the engine's style, not its exact ids)."""

        try:
            doseFile = self.doseFileForNode(doseNode)
            patient = self._database().fileValue(doseFile, "0010,0020") or "anonymous"
            key = self._database().fileValue(doseFile, "0008,0018") or doseFile
            stem = pathlib.Path(doseFile).stem
        except (ValueError, RuntimeError):
            patient, key, stem = "slicer", doseNode.GetID(), doseNode.GetName()
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        return f"{api.safe_name(patient)}_{api.safe_name(stem)}_{digest}"

    # ---- display --------------------------------------------------------------------------------

    def showResult(self, aligned: DoseAlignCase) -> None:
        """Show the aligned CT with the dose as a thresholded colour wash (isodose-like) in the slice views."""
        ctNode = mrml.volume_node_from_volume(aligned.ctVolume, slicer.mrmlScene, f"{aligned.caseId} CT")
        doseNode = mrml.volume_node_from_volume(aligned.doseVolume, slicer.mrmlScene, f"{aligned.caseId} dose")
        aligned.ctNode, aligned.doseNode = ctNode, doseNode
        for name, mask in aligned.masks.items():
            labelmap = mrml.volume_node_from_volume(
                Volume(mask, aligned.ctVolume.grid),
                slicer.mrmlScene,
                f"{aligned.caseId} {name}",
                mrml.LABELMAP_VOLUME_CLASS,
            )
            labelmap.SetHideFromEditors(False)
        dmax = float(aligned.doseVolume.array.max()) or 1.0
        display = doseNode.GetDisplayNode()
        colorNodeID = "vtkMRMLColorTableNodeRainbow"
        original = aligned.originalDoseNode
        if original is not None and original.GetScene() is not None and original.GetDisplayNode():
            colorNodeID = original.GetDisplayNode().GetColorNodeID() or colorNodeID  # SlicerRT's Dose_ColorTable
        display.SetAndObserveColorNodeID(colorNodeID)
        display.SetAutoWindowLevel(0)
        display.SetWindowLevelMinMax(0.0, dmax)
        display.SetApplyThreshold(1)
        display.SetLowerThreshold(0.05 * dmax)
        # Outputs go under the dose's study in the subject hierarchy
        if original is not None and original.GetScene() is not None:
            shNode = self._subjectHierarchy()
            studyItem = shNode.GetItemParent(shNode.GetItemByDataNode(original))
            if studyItem:
                for node in (ctNode, doseNode):
                    shNode.SetItemParent(shNode.GetItemByDataNode(node), studyItem)
        if slicer.app.layoutManager() is not None:
            slicer.util.setSliceViewerLayers(background=ctNode, foreground=doseNode, foregroundOpacity=0.5, fit=True)

    # ---- export ---------------------------------------------------------------------------------

    def caseMeta(self, aligned: DoseAlignCase, options: AlignOptions) -> dict:
        """meta.json of a case aligned in Slicer: the engine's keys, plus a 'slicer' section."""
        grid = aligned.ctVolume.grid
        dose = aligned.doseVolume.array
        return {
            "dosealign_version": api.__version__,
            "producer": f"DoseAlign Slicer module ({aligned.backend})",
            "case_id": aligned.caseId,
            "shape": list(grid.shape),
            "axes": ["k (slice)", "j (row)", "i (column)"],
            "spacing": grid.spacing.tolist(),
            "ijk_to_lps": grid.affine.tolist(),
            "ijk_to_ras": grid.ras_affine().tolist(),
            "frame_of_reference_uid": aligned.source.get("frame_of_reference_uid"),
            "arrays": {
                "ct": {"dtype": str(aligned.ctVolume.array.dtype), "units": "HU", "outside_value": options.ct_fill_hu},
                "dose": {"dtype": str(dose.dtype), "units": aligned.doseVolume.units, "outside_value": 0.0},
            },
            "source": aligned.source,
            "dose": {"units": aligned.doseVolume.units, "max_gy_output": float(dose.max()) if dose.size else 0.0},
            "resampling": {
                "reference": options.reference.value,
                "reference_grid": aligned.referenceDescription,
                "interpolator": options.interpolator.value,
            },
            "structures": self._structuresMeta(aligned),
            "warnings": list(aligned.flags),
            "options": options.to_dict(),
            "slicer": {
                "backend": aligned.backend,
                "version": slicer.app.applicationVersion,
                "revision": slicer.app.revision,
            },
        }

    @staticmethod
    def _structuresMeta(aligned: DoseAlignCase) -> dict:
        """meta["structures"] for masks Slicer rasterized (same keys as the engine's, fewer per-ROI facts)."""

        if not aligned.masks:
            return {"enabled": False, "names": []}
        voxelCc = api.voxel_volumes_cc(aligned.ctVolume.grid)
        rois = []
        for index, (name, mask) in enumerate(aligned.masks.items()):
            count = int(np.count_nonzero(mask))
            if np.ndim(voxelCc) == 0:
                volume = count * float(voxelCc)
            else:  # per-slice voxel volumes
                volume = float(np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1) @ np.asarray(voxelCc))
            rois.append({"index": index, "name": name, "voxel_count": count, "volume_cc": round(volume, 6)})
        return {
            "enabled": True,
            "names": list(aligned.masks),
            "rois": rois,
            "skipped": [],
            "rule": "SlicerRT/Segmentations: planar contours -> closed surface -> binary labelmap on the reference grid",
            "storage": api.STORAGE_NOTE,
            "body": {"source": None, "voxel_count": None, "volume_cc": None},
            "notes": ["masks rasterized by Slicer, not by the DoseAlign engine"],
        }

    def exportAligned(
        self, aligned: DoseAlignCase, outputFolder, options: AlignOptions, outputFormat: str = "npz"
    ) -> pathlib.Path:
        """Write ``<outputFolder>/<case>/pair.npz`` and ``meta.json`` with the engine's writer."""

        if not outputFolder or str(outputFolder) in ("", "."):
            raise ValueError(_("Choose an output folder"))
        meta = aligned.meta if aligned.meta is not None else self.caseMeta(aligned, options)
        extra = dict(aligned.extraArrays)
        if not extra and aligned.masks:  # Slicer-rasterized masks, stored the engine's way
            stack = np.stack([mask > 0 for mask in aligned.masks.values()])
            extra["masks"] = np.packbits(stack, axis=-1)
        result = api.CaseResult(aligned.caseId, aligned.ctVolume, aligned.doseVolume, meta, extra_arrays=extra)
        folder = api.write_case_output(result, pathlib.Path(outputFolder), self._qaPictureWriters(result))
        if outputFormat == OutputFormatChoice.NPZ_AND_NRRD.value:
            for suffix, volume in (("ct", aligned.ctVolume), ("dose", aligned.doseVolume)):
                node = mrml.volume_node_from_volume(
                    volume, slicer.mrmlScene, f"{aligned.caseId} {suffix}", create_display_nodes=False
                )
                try:
                    if not slicer.util.exportNode(node, str(folder / f"{suffix}.nrrd"), {"useCompression": 1}):
                        raise RuntimeError(_("Could not write {file}").format(file=folder / f"{suffix}.nrrd"))
                finally:
                    slicer.mrmlScene.RemoveNode(node)
        self.log(_("Exported {case} to {folder}").format(case=aligned.caseId, folder=folder))
        return folder

    @staticmethod
    def _qaPictureWriters(result) -> list:
        """The engine's qa.png writer when matplotlib is there (Slicer does not bundle it), else nothing."""
        return [api.qa_png_writer(result)] if api.matplotlib_available() else []

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
        """Export every case the engine finds below ``inputFolder`` through Slicer; return manifest rows.

        Cases are formed by the engine (same case ids as ``dosealign export``); each is loaded with SlicerRT
        from the DICOM database, aligned with ``backend`` and written with the engine's writer. A failing
        case gets a 'failed' row and the loop goes on; Cancelled stops it.
        """

        inputFolder, outputFolder = pathlib.Path(inputFolder), pathlib.Path(outputFolder)
        if backend == BackendChoice.ENGINE.value and outputFormat == OutputFormatChoice.NPZ.value:
            report = api.export_folder(inputFolder, outputFolder, options, resume=resume, progress=self.progress)
            for row in report.rows:
                if rowCallback:
                    rowCallback(row["case_id"], row["status"], row["reason"], row.get("warnings", ""))
            return report.rows
        outputFolder.mkdir(parents=True, exist_ok=True)
        api.clean_temp(outputFolder)
        self.progress(0.0, _("scanning {folder}").format(folder=inputFolder))
        cases = api.form_cases(api.scan_folder(inputFolder)).cases
        self.importFolderToDatabase(inputFolder)
        rows = []
        for n, case in enumerate(cases):
            self.progress(
                n / max(len(cases), 1),
                _("case {n}/{total}: {case}").format(n=n + 1, total=len(cases), case=case.case_id),
            )
            row = self._exportCase(case, outputFolder, options, backend, outputFormat, resume)
            rows.append(row)
            api.write_manifest(outputFolder, rows)
            if rowCallback:
                rowCallback(row["case_id"], row["status"], row["reason"], row.get("warnings", ""))
        self.progress(1.0, _("{n} cases").format(n=len(cases)))
        api.write_report(outputFolder, rows, source=f"input: {inputFolder} (3D Slicer, {backend})")
        return rows

    def _exportCase(self, case, outputFolder, options, backend, outputFormat, resume) -> dict:
        import json

        if resume and api.is_complete(outputFolder, case.case_id):
            meta = json.loads((api.case_dir(outputFolder, case.case_id) / "meta.json").read_text(encoding="utf-8"))
            return api.manifest_row(case, "ok", "", meta)
        try:
            aligned = self.alignCase(case, options, backend)
            self.exportAligned(aligned, outputFolder, options, outputFormat)
            meta = aligned.meta if aligned.meta is not None else self.caseMeta(aligned, options)
            return api.manifest_row(case, "ok", "", meta)
        except Cancelled:
            raise
        except (DoseAlignError, ValueError, RuntimeError, OSError) as error:
            self.log(_("Case {case} failed: {error}").format(case=case.case_id, error=error))
            return api.manifest_row(case, "failed", str(error))
        except Exception as error:  # a bug must not stop the batch; the row says what happened
            logging.exception("DoseAlign: case %s", case.case_id)
            return api.manifest_row(case, "failed", f"internal error ({type(error).__name__}: {error})")

    def exportDatabase(
        self, outputFolder, options: AlignOptions, backend: str = "cli", outputFormat: str = "npz", rowCallback=None
    ) -> list:
        """Load each study of the DICOM database, align and export each of its doses; return result rows."""

        database = self._database()
        outputFolder = pathlib.Path(outputFolder)
        outputFolder.mkdir(parents=True, exist_ok=True)
        studies = [uid for uid, _label in self.listStudies(database)]
        rows = []
        for s, studyUID in enumerate(studies):
            self.progress(s / max(len(studies), 1), _("study {n}/{total}").format(n=s + 1, total=len(studies)))
            before = {n.GetID() for n in slicer.util.getNodesByClass("vtkMRMLNode")}
            try:
                try:
                    nodeIDs = self.loadStudy(studyUID, database)
                except (ValueError, RuntimeError) as error:
                    self.log(_("Study {uid} skipped: {error}").format(uid=studyUID, error=error))
                    continue
                for doseNode in self.doseVolumeNodes(nodeIDs):
                    caseId = self.caseIdForDose(doseNode)
                    row = {"case_id": caseId, "status": "ok", "reason": "", "warnings": ""}
                    try:
                        ctNode = self.findCtForDose(doseNode)
                        segmentationNode = self.findSegmentationForCt(ctNode)
                        aligned = self.alignNodes(ctNode, [doseNode], options, backend, segmentationNode, caseId)
                        self.exportAligned(aligned, outputFolder, options, outputFormat)
                        meta = aligned.meta if aligned.meta is not None else self.caseMeta(aligned, options)
                        row.update(
                            shape="x".join(str(v) for v in meta["shape"]),
                            dmax_gy=f"{meta['dose']['max_gy_output']:.6g}",
                            warnings=" | ".join(meta.get("warnings", [])),
                        )
                    except Cancelled:
                        raise
                    except Exception as error:  # one bad dose never stops the export
                        row.update(status="failed", reason=str(error))
                        self.log(_("Case {case} failed: {error}").format(case=caseId, error=error))
                    rows.append(row)
                    api.write_manifest(outputFolder, rows)
                    if rowCallback:
                        rowCallback(row["case_id"], row["status"], row["reason"], row["warnings"])
            finally:
                self._removeNodesAddedSince(before)
        self.progress(1.0, _("{n} cases").format(n=len(rows)))
        return rows


#
# DoseAlignTest
#


class DoseAlignTest(ScriptedLoadableModuleTest):
    """Runs the in-Slicer path (SlicerRT load, Resample CLI, export) on the engine's phantom and
    compares the arrays with the engine's own export of the same files."""

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
        self.test_DoseAlign_UnevenFramesRefused()

    def _writePhantom(self, name, **spec):

        folder = pathlib.Path(slicer.util.tempDirectory(f"DoseAlignTest-{name}"))
        api.write_phantom(folder / "dicom", api.PhantomSpec(**spec))
        return folder

    def _compareWithEngine(self, backend):
        from DICOMLib import DICOMUtils

        folder = self._writePhantom(backend)
        options = AlignOptions()  # structures and audit on
        engineReport = api.export_folder(folder / "dicom", folder / "engine", options)
        self.assertEqual(engineReport.exit_code, 0, engineReport.rows)

        logic = DoseAlignLogic()
        logic.logCallback = logging.info
        with DICOMUtils.TemporaryDICOMDatabase(str(folder / "db")):
            rows = logic.exportFolder(folder / "dicom", folder / "slicer", options, backend)
        self.assertEqual([r["status"] for r in rows], ["ok"] * len(engineReport.rows), rows)

        for row in engineReport.rows:
            caseId = row["case_id"]
            expected = np.load(folder / "engine" / caseId / "pair.npz")
            actual = np.load(folder / "slicer" / caseId / "pair.npz")
            import json

            engineMeta = json.loads((folder / "engine" / caseId / "meta.json").read_text())
            slicerMeta = json.loads((folder / "slicer" / caseId / "meta.json").read_text())
            self.assertEqual(engineMeta["shape"], slicerMeta["shape"])
            np.testing.assert_allclose(slicerMeta["ijk_to_lps"], engineMeta["ijk_to_lps"], atol=1e-3)
            self.assertEqual(sorted(actual.files), sorted(expected.files))
            self.assertLessEqual(int(np.abs(actual["ct"].astype(np.int32) - expected["ct"]).max()), 1)
            if "masks" in expected.files:  # the engine rasterizes the ROIs in both paths, on the same grid
                np.testing.assert_array_equal(actual["masks"], expected["masks"])
            # interior: CT voxels at least one dose voxel inside the dose grid
            doseFile = folder / "dicom" / engineMeta["source"]["rtdose_files"][0]
            dose, _geometry, _info = api.read_rtdose(doseFile)

            grid = api.Grid(tuple(engineMeta["shape"]), np.array(engineMeta["ijk_to_lps"]))
            k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
            index = dose.grid.lps_to_index(grid.index_to_lps(np.stack([i, j, k], axis=-1).astype(np.float64)))
            upper = np.array(dose.grid.shape[::-1]) - 1
            interior = np.all((index >= 1) & (index <= upper - 1), axis=-1)
            self.assertGreater(int(interior.sum()), 100)
            dmax = float(expected["dose"].max())
            error = np.abs(actual["dose"].astype(np.float64) - expected["dose"])[interior].max()
            self.assertLessEqual(error, 1e-4 * dmax, f"{backend}: dose differs by {error} Gy (Dmax {dmax})")

    def test_DoseAlign_CliMatchesEngine(self):
        self.delayDisplay("Phantom through SlicerRT + Resample CLI vs the engine")
        self._compareWithEngine(BackendChoice.CLI.value)
        self.delayDisplay("Test passed")

    def test_DoseAlign_InProcessMatchesEngine(self):
        self.delayDisplay("Phantom through SlicerRT + in-process resampling vs the engine")
        self._compareWithEngine(BackendChoice.IN_PROCESS.value)
        self.delayDisplay("Test passed")

    def test_DoseAlign_UnevenFramesRefused(self):
        from DICOMLib import DICOMUtils

        self.delayDisplay("Uneven GridFrameOffsetVector: Slicer's dose is refused, not used")
        folder = self._writePhantom(
            "uneven", dose_frame_offsets=[0, 3, 6, 9, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48, 51, 54, 57, 60]
        )
        logic = DoseAlignLogic()
        with DICOMUtils.TemporaryDICOMDatabase(str(folder / "db")):
            studies = logic.importFolderToDatabase(folder / "dicom")
            nodeIDs = logic.loadStudy(studies[0])
            doseNode = logic.doseVolumeNodes(nodeIDs)[0]
            with self.assertRaises(GeometryError):
                logic.verifyDoseGeometry(doseNode)
        self.delayDisplay("Test passed")
