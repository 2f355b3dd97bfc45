"""What the Slicer *application* adds to PyPI ``slicer-core``, for tests of ``DoseAlign.py``.

``slicer-core`` ships MRML, VTK, the subject-hierarchy and segmentation logic and ``slicer.util``; the
module also imports three Qt-side Python modules and uses the DICOM database and the DICOM plugins.
This file provides, for tests only:

* :func:`import_module`: ``DoseAlign.py`` imported against slicer-core, with minimal stand-ins for
  ``slicer.i18n`` (identity translation), ``slicer.ScriptedLoadableModule`` (plain base classes) and
  ``slicer.parameterNodeWrapper`` (the decorator returns the class), and a fresh scene as
  ``slicer.mrmlScene``. Everything else the module runs is slicer-core's real code.
* :class:`FileDatabase`: the ``ctkDICOMDatabase`` calls the module makes, answered from the files' own
  tags (read with pydicom) - what a database that indexed them in place answers.
* :class:`RtLoading`: ``DICOMUtils.getLoadablesFromFileLists`` / ``selectHighestConfidenceLoadables`` /
  ``loadLoadables`` with the two plugins the module uses, loading as the real ones do where the module
  depends on it: one loadable per CT series (scalar volume plugin, confidence 0.5) and one per RT file
  (SlicerRT, confidence 1.0, ``ExamineForLoad`` RTlogic 169eed7b:2248-2330); a dose node built as GDCM
  and SlicerRT build it (frames at even steps from GridFrameOffsetVector[1] - [0], DoseGridScaling
  applied) whose subject-hierarchy item gets only the series UID, the instance UID then written on the
  item ``vtkSlicerSubjectHierarchyModuleLogic.InsertDicomSeriesInHierarchy`` returns (RTlogic
  169eed7b:586-606, :2874-2996: the real slicer-core function runs); an RTSTRUCT segmentation of planar
  contours whose own item carries its series UID, as SlicerRT's LoadRtStructureSet sets it (RTlogic
  169eed7b:1561-1566), then the same instance-UID step; a CT node whose own item gets its
  series UID (DICOMPlugin.py:257 at v5.8.1) and Modality; ``loadLoadables`` returns the IDs of every
  non-storage, non-display node added while loading (DICOMUtils.py:782-841 at v5.6.2).
"""

from __future__ import annotations

import sys
import types
import unittest
from pathlib import Path

import numpy as np

DOSE_ATTRIBUTE = "DicomRtImport.DoseVolume"  # SlicerRT vtkSlicerRtCommon.cxx:64-65


def stub_modules() -> dict:
    """Stand-ins for the three Qt-side Python modules DoseAlign.py imports."""
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):  # noqa: N802 - Slicer's name
            pass

    names = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic"]
    names.append("ScriptedLoadableModuleTest")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic):
        setattr(scripted, cls.__name__, cls)
    scripted.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    scripted.__all__ = names

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.WithinRange = lambda low, high: ("WithinRange", low, high)
    return {"slicer.i18n": i18n, "slicer.ScriptedLoadableModule": scripted, "slicer.parameterNodeWrapper": wrapper}


def import_module(monkeypatch, temporary_path: Path, process_events=None):
    """``DoseAlign`` imported against slicer-core with a fresh ``slicer.mrmlScene``; ``slicer.app``
    carries what the module reads of it."""
    import slicer

    for name, stub in stub_modules().items():
        monkeypatch.setitem(sys.modules, name, stub)
        monkeypatch.setattr(slicer, name.split(".", 1)[1], stub, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    app = types.SimpleNamespace(
        applicationVersion="",  # slicer-core is not an application: no version in the backend name
        revision="0",
        layoutManager=lambda: None,
        processEvents=process_events or (lambda: None),
        temporaryPath=str(temporary_path),
    )
    monkeypatch.setattr(slicer, "app", app, raising=False)
    if not hasattr(slicer, "modules"):
        monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(), raising=False)
    monkeypatch.delitem(sys.modules, "DoseAlign", raising=False)
    monkeypatch.delitem(sys.modules, "DoseAlignBatch", raising=False)
    import DoseAlign

    return DoseAlign


# ---- the DICOM database ---------------------------------------------------------------------------

TAGS = {
    "0008,0060": "Modality",
    "0008,0018": "SOPInstanceUID",
    "0020,000D": "StudyInstanceUID",
    "0020,000E": "SeriesInstanceUID",
    "0020,0052": "FrameOfReferenceUID",
    "0010,0020": "PatientID",
}


def indexer_files(folder) -> list:
    """The files ``ctkDICOMIndexer::addDirectory`` indexes, by the paths it stores: a ``QDirIterator`` over
    ``QDir::Files`` (hidden ones too: ``includeHidden`` defaults to true) with ``Subdirectories`` and, by
    default, ``FollowSymlinks`` (CTK 82cae578 Libs/DICOM/Core/ctkDICOMIndexer.cpp:160-176, :295, :466-489).
    The iterator goes depth first and enters each real folder once (Qt 5 QDirIteratorPrivate keeps the
    canonical paths it has entered in ``visitedLinks``), so a folder reached by two routes is indexed by the
    first route only, and a link loop ends."""
    import os

    found: list = []
    entered = {os.path.realpath(folder)}

    def walk(path: str) -> None:
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if entry.is_dir():
                real = os.path.realpath(entry.path)
                if real not in entered:
                    entered.add(real)
                    walk(entry.path)
            elif entry.is_file():
                found.append(entry.path)

    walk(os.fspath(folder))
    return found


class FileDatabase:
    """The ``ctkDICOMDatabase`` calls of the module, for files indexed in place (no copies)."""

    def __init__(self, files=()) -> None:
        self.isOpen = True
        self.databaseFilename = ""
        self._headers: dict = {}
        self.add(files)

    def add(self, files) -> None:
        import pydicom

        for path in files:
            path = Path(path).as_posix()
            self._headers[path] = pydicom.dcmread(path, stop_before_pixels=True)

    def add_folder(self, folder) -> None:
        """Index a folder's files as ``DICOMUtils.importDicom`` does (see :func:`indexer_files`)."""
        self.add(indexer_files(folder))

    def _where(self, key: str, value: str) -> list:
        return sorted(p for p, ds in self._headers.items() if str(getattr(ds, key, "")) == value)

    def patients(self) -> list:
        return sorted({str(ds.PatientID) for ds in self._headers.values()})

    def nameForPatient(self, patient: str) -> str:  # noqa: N802 - ctkDICOMDatabase's names
        for ds in self._headers.values():
            if str(ds.PatientID) == patient:
                return str(getattr(ds, "PatientName", ""))
        return ""

    def patientForStudy(self, study: str) -> str:  # noqa: N802
        found = self._where("StudyInstanceUID", study)
        return str(self._headers[found[0]].PatientID) if found else ""

    def studiesForPatient(self, patient: str) -> list:  # noqa: N802
        return sorted({str(self._headers[p].StudyInstanceUID) for p in self._where("PatientID", patient)})

    def seriesForStudy(self, study: str) -> list:  # noqa: N802
        return sorted({str(self._headers[p].SeriesInstanceUID) for p in self._where("StudyInstanceUID", study)})

    def filesForSeries(self, series: str) -> list:  # noqa: N802
        return self._where("SeriesInstanceUID", series)

    def fileForInstance(self, sop: str) -> str:  # noqa: N802
        found = self._where("SOPInstanceUID", sop)
        return found[0] if found else ""

    def seriesForFile(self, path: str) -> str:  # noqa: N802
        ds = self._headers.get(Path(path).as_posix())
        return str(ds.SeriesInstanceUID) if ds is not None else ""

    def studyForSeries(self, series: str) -> str:  # noqa: N802
        found = self.filesForSeries(series)
        return str(self._headers[found[0]].StudyInstanceUID) if found else ""

    def fileValue(self, path: str, tag: str) -> str:  # noqa: N802
        ds = self._headers.get(Path(path).as_posix())
        return str(getattr(ds, TAGS[tag], "")) if ds is not None else ""

    def fieldForStudy(self, field: str, study: str) -> str:  # noqa: N802
        found = self._where("StudyInstanceUID", study)
        return str(getattr(self._headers[found[0]], field, "")) if found else ""

    def descriptionForStudy(self, study: str) -> str:  # noqa: N802
        return self.fieldForStudy("StudyDescription", study)


# ---- loading with the scalar volume and SlicerRT plugins --------------------------------------------


class Loadable:
    """``qSlicerDICOMLoadable``'s properties the module reads (qSlicerDICOMLoadable.h:51 at v5.6.2..main)."""

    def __init__(self, name: str, files: list, confidence: float) -> None:
        self.name = name
        self.files = list(files)
        self.confidence = confidence
        self.selected = True


class Plugin:
    def __init__(self, name: str, load) -> None:
        self.name = name
        self.loadType = name
        self._load = load

    def load(self, loadable) -> bool:
        return self._load(loadable)


class RtLoading:
    """``DICOMUtils`` for the module's loading code, with scalar-volume and SlicerRT-like plugins."""

    def __init__(self, database: FileDatabase) -> None:
        self.database = database
        self.scalar = Plugin("DICOMScalarVolumePlugin", self._load_ct)
        self.rt = Plugin("DicomRtImportExportPlugin", self._load_rt)
        self.calls: list = []  # the loadables each loadLoadables call loaded

    def plugins(self) -> dict:
        return {"DICOMScalarVolumePlugin": self.scalar, "DicomRtImportExportPlugin": self.rt}

    # DICOMUtils
    def getLoadablesFromFileLists(self, fileLists, pluginClassNames=None):  # noqa: N802, N803
        scalar, rt = [], []
        for files in fileLists:
            modality = self.database.fileValue(files[0], "0008,0060")
            if modality in ("RTDOSE", "RTSTRUCT", "RTPLAN"):
                rt += [Loadable(f"{modality} {Path(f).name}", [f], 1.0) for f in files]
                if modality == "RTDOSE":
                    scalar.append(Loadable("RTDOSE as scalar volume", files, 0.5))
            elif modality:
                scalar.append(Loadable(f"{modality} series", files, 0.5))
        return {self.scalar: scalar, self.rt: rt}, bool(scalar or rt)

    def selectHighestConfidenceLoadables(self, loadablesByPlugin):  # noqa: N802, N803
        """DICOMUtils.py:223-258 at v5.8.1: per series, every loadable of the highest confidence."""
        by_series: dict = {}
        for loadables in loadablesByPlugin.values():
            for loadable in loadables:
                series = self.database.fileValue(loadable.files[0], "0020,000E")
                by_series.setdefault(series, []).append(loadable)
        for loadables in by_series.values():
            best = max(loadable.confidence for loadable in loadables)
            for loadable in loadables:
                loadable.selected = loadable.confidence == best

    def loadLoadables(self, loadablesByPlugin, messages=None, progressCallback=None):  # noqa: N802, N803
        import slicer

        selected = [(lo, plugin) for plugin, los in loadablesByPlugin.items() for lo in los if lo.selected]
        self.calls.append([lo.name for lo, _plugin in selected])
        added = []
        scene = slicer.mrmlScene
        before = {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}
        for loadable, plugin in selected:
            plugin.load(loadable)
        for n in range(scene.GetNumberOfNodes()):
            node = scene.GetNthNode(n)
            if node.GetID() in before:
                continue
            if node.IsA("vtkMRMLStorageNode") or node.IsA("vtkMRMLDisplayNode"):
                continue
            added.append(node.GetID())
        return added

    # the plugins' load()
    def _load_ct(self, loadable) -> bool:
        import pydicom
        import slicer
        from DoseAlignLib.api import read_ct, scan_files
        from DoseAlignMRML import volumes as mrml

        (series,) = scan_files(loadable.files).ct_series
        node = mrml.volume_node_from_volume(read_ct(series), slicer.mrmlScene, loadable.name)
        ds = pydicom.dcmread(loadable.files[0], stop_before_pixels=True)
        # DICOMPlugin.addSeriesInSubjectHierarchy (DICOMPlugin.py:253-305 at v5.8.1): the node's own item
        # gets the series UID, Modality and instance UIDs, then goes under its patient and study
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        item = sh.CreateItem(sh.GetSceneItemID(), node)
        sh.SetItemUID(item, "DICOM", str(ds.SeriesInstanceUID))
        sh.SetItemAttribute(item, "DICOM.Modality", str(ds.Modality))
        slicer.vtkSlicerSubjectHierarchyModuleLogic.InsertDicomSeriesInHierarchy(
            sh, str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        )
        return True

    def _load_rt(self, loadable) -> bool:
        import pydicom
        import slicer

        path = loadable.files[0]
        ds = pydicom.dcmread(path)
        scene = slicer.mrmlScene
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if ds.Modality == "RTDOSE":
            node = gdcm_like_dose_node(path, scene, f"{ds.SeriesNumber}: RTDOSE [{ds.InstanceNumber}]")
            node.SetAttribute(DOSE_ATTRIBUTE, "1")
        elif ds.Modality == "RTSTRUCT":
            node = rtstruct_segmentation_node(ds, scene, f"{ds.SeriesNumber}: RTSTRUCT")
        else:
            return True  # RTPLAN: the module leaves plans out unless asked; nothing it reads
        # the node's own item: the series UID only (LoadRtDose RTlogic 169eed7b:586-593; LoadRtStructureSet
        # :1561-1566, with the ROIs' referenced series and the referenced instance UIDs)
        item = sh.CreateItem(sh.GetSceneItemID(), node)
        sh.SetItemUID(item, "DICOM", str(ds.SeriesInstanceUID))
        if ds.Modality == "RTSTRUCT":
            sh.SetItemAttribute(item, RT_PREFIX + "RoiReferencedSeriesUid", _referenced_series(ds))
            sh.SetItemAttribute(item, "DICOM.ReferencedInstanceUIDs", " ".join(_referenced_instances(ds)))
        # InsertSeriesInSubjectHierarchy (RTlogic 169eed7b:2874-2996): Modality, SeriesNumber and the instance
        # UID go on the *first* item of the series that InsertDicomSeriesInHierarchy returns (the real function)
        series_item = slicer.vtkSlicerSubjectHierarchyModuleLogic.InsertDicomSeriesInHierarchy(
            sh, str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        )
        if series_item:
            sh.SetItemAttribute(series_item, "DICOM.Modality", str(ds.Modality))
            sh.SetItemAttribute(series_item, "DICOM.SeriesNumber", str(getattr(ds, "SeriesNumber", "")))
            sh.SetItemUID(series_item, "DICOMInstanceUID", str(ds.SOPInstanceUID))
        return True


RT_PREFIX = "DicomRtImport."  # vtkSlicerRtCommon::DICOMRTIMPORT_ATTRIBUTE_PREFIX (vtkSlicerRtCommon.cxx:64)


def _referenced_series(ds) -> str:
    """The CT series the structure set's ROIs are drawn on (RTReferencedSeriesSequence), or ''."""
    for frame in getattr(ds, "ReferencedFrameOfReferenceSequence", []):
        for study in getattr(frame, "RTReferencedStudySequence", []):
            for series in getattr(study, "RTReferencedSeriesSequence", []):
                return str(series.SeriesInstanceUID)
    return ""


def _referenced_instances(ds) -> list:
    return [
        str(image.ReferencedSOPInstanceUID)
        for roi in getattr(ds, "ROIContourSequence", [])
        for contour in getattr(roi, "ContourSequence", [])
        for image in getattr(contour, "ContourImageSequence", [])
    ]


def rtstruct_segmentation_node(ds, scene, name: str):
    """The segmentation SlicerRT's LoadRtStructureSet makes of an RTSTRUCT (RTlogic 169eed7b:1428-1628): one
    node per structure set, its source representation "Planar contour", one segment per contour ROI named
    after it, with the ROI's colour, its contours as closed polylines in RAS and the ROI number as the
    ``DicomRtImport.RoiNumber`` tag (:1537, :1588-1598). Point ROIs (fiducials, :1500) are left out."""
    import slicer
    import vtk

    planar = slicer.vtkSegmentationConverter.GetSegmentationPlanarContourRepresentationName()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    segmentation = node.GetSegmentation()
    if hasattr(segmentation, "SetSourceRepresentationName"):  # renamed from "master" in Slicer 5.4
        segmentation.SetSourceRepresentationName(planar)
    else:
        segmentation.SetMasterRepresentationName(planar)
    rois = {int(r.ROINumber): r for r in getattr(ds, "StructureSetROISequence", [])}
    for roi_contour in getattr(ds, "ROIContourSequence", []):
        number = int(roi_contour.ReferencedROINumber)
        points, lines = vtk.vtkPoints(), vtk.vtkCellArray()
        for contour in getattr(roi_contour, "ContourSequence", []):
            xyz = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3) * (-1.0, -1.0, 1.0)  # LPS->RAS
            if len(xyz) < 2:
                continue
            first = points.GetNumberOfPoints()
            for point in xyz:
                points.InsertNextPoint(*point)
            lines.InsertNextCell(len(xyz) + 1)
            for n in range(len(xyz)):
                lines.InsertCellPoint(first + n)
            lines.InsertCellPoint(first)  # closed
        if points.GetNumberOfPoints() < 2:
            continue
        polydata = vtk.vtkPolyData()
        polydata.SetPoints(points)
        polydata.SetLines(lines)
        segment = slicer.vtkSegment()
        roi = rois.get(number)
        segment.SetName(str(getattr(roi, "ROIName", f"ROI {number}")))
        color = [float(c) / 255.0 for c in getattr(roi_contour, "ROIDisplayColor", [128, 128, 128])]
        segment.SetColor(*color)
        segment.AddRepresentation(planar, polydata)
        segment.SetTag(RT_PREFIX + "RoiNumber", str(number))
        segmentation.AddSegment(segment)
    return node


def gdcm_like_dose_node(path, scene, name: str = "RTDOSE", scaling=None):
    """The dose node a Slicer/SlicerRT load gives: frames in file order, k step = GFOV[1] - GFOV[0],
    pixels times DoseGridScaling (``scaling`` to override, e.g. SlicerRT's 0.0001 for an empty tag)."""
    import pydicom
    from DoseAlignLib.api import Grid, Volume
    from DoseAlignMRML import volumes as mrml

    ds = pydicom.dcmread(str(path))
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    pixel_spacing = [float(v) for v in ds.PixelSpacing]
    gfov = [float(v) for v in ds.GridFrameOffsetVector]
    affine = np.eye(4)
    affine[:3, 0] = row * pixel_spacing[1]
    affine[:3, 1] = col * pixel_spacing[0]
    affine[:3, 2] = np.cross(row, col) * ((gfov[1] - gfov[0]) if len(gfov) > 1 else 1.0)
    affine[:3, 3] = [float(v) for v in ds.ImagePositionPatient]
    values = ds.pixel_array.astype(np.float32) * np.float32(float(ds.DoseGridScaling) if scaling is None else scaling)
    if values.ndim == 2:
        values = values[None]
    return mrml.volume_node_from_volume(Volume(values, Grid(values.shape, affine)), scene, name)


def scene_counts(scene) -> dict:
    """Node count per class (to check that a step leaves the scene as it found it); the subject-hierarchy
    singleton, which the first look-up creates, is left out."""
    counts: dict = {}
    for n in range(scene.GetNumberOfNodes()):
        name = scene.GetNthNode(n).GetClassName()
        if name != "vtkMRMLSubjectHierarchyNode":
            counts[name] = counts.get(name, 0) + 1
    return counts
