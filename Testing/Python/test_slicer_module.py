"""The Slicer module's logic (``DoseAlign.py`` and ``DoseAlignMRML.resamplers``) run with PyPI slicer-core.

Every case goes through ``api.run_case``; the backends differ only in the resampler. The CLI backend
runs the real Resample Scalar/Vector/DWI Volume executable through the ``slicer.cli`` double
(``slicer_cli_double.py``); those tests skip without the bundle (``./dev test`` unpacks it).
What slicer-core lacks of the application (DICOM database, DICOM plugins, Qt-side Python modules)
comes from ``slicer_app.py``; each use says which.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
pytest.importorskip("slicer.util")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no MRML (install slicer-core)", allow_module_level=True)

import pydicom  # noqa: E402
import slicer_app  # noqa: E402
import slicer_cli_double as cli_double  # noqa: E402
from conftest import interior_mask, voxel_points  # noqa: E402
from DoseAlignLib import api  # noqa: E402
from DoseAlignLib.api import AlignOptions, PhantomSpec, write_phantom  # noqa: E402
from DoseAlignMRML import resamplers  # noqa: E402
from DoseAlignMRML import volumes as mrml  # noqa: E402
from test_geometry_matrix import outside_rim_mask  # noqa: E402

pytestmark = pytest.mark.slicer_core

CLI_UNAVAILABLE = cli_double.unavailable_reason()
needs_cli = pytest.mark.skipif(CLI_UNAVAILABLE is not None, reason=str(CLI_UNAVAILABLE))
UNEVEN = [0, 3, 6, 9, 15, 18, 21, 24, 27, 30, 36, 39, 42, 45, 48, 51, 54, 57, 60, 63]


@pytest.fixture()
def module(monkeypatch, tmp_path_factory):
    """``DoseAlign`` against slicer-core; ``slicer.app.processEvents`` drives the CLI double's async runs."""
    return slicer_app.import_module(monkeypatch, tmp_path_factory.mktemp("app"), cli_double.process_events)


@pytest.fixture()
def cli(module, monkeypatch, tmp_path_factory):
    """The real Resample CLI behind ``slicer.cli`` and ``slicer.modules.resamplescalarvectordwivolume``."""
    if CLI_UNAVAILABLE:
        pytest.skip(CLI_UNAVAILABLE)
    return cli_double.install(monkeypatch, slicer.mrmlScene, tmp_path_factory.mktemp("cli"))


@pytest.fixture()
def database(monkeypatch):
    """``slicer.dicomDatabase`` (slicer_app.FileDatabase) and DICOMLib with the SlicerRT-like loading."""
    import types

    db = slicer_app.FileDatabase()
    loading = slicer_app.RtLoading(db)
    monkeypatch.setattr(slicer, "dicomDatabase", db, raising=False)
    dicom_lib = types.ModuleType("DICOMLib")
    dicom_lib.DICOMUtils = types.SimpleNamespace(
        getLoadablesFromFileLists=loading.getLoadablesFromFileLists,
        selectHighestConfidenceLoadables=loading.selectHighestConfidenceLoadables,
        loadLoadables=loading.loadLoadables,
        importDicom=lambda folder, database=None: db.add_folder(folder) or True,
    )
    monkeypatch.setitem(sys.modules, "DICOMLib", dicom_lib)
    monkeypatch.setattr(slicer.modules, "dicomPlugins", loading.plugins(), raising=False)
    return db, loading


def _phantom(tmp_path, name="dicom", **spec):
    return write_phantom(tmp_path / name, PhantomSpec(**spec))


def _arrays(folder: Path) -> tuple:
    with np.load(folder / "pair.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return arrays, json.loads((folder / "meta.json").read_text(encoding="utf-8"))


#: meta.json keys present only when the case needs them: what the engine did before a resampler that takes
#: only even, orthogonal grids (the Slicer backends) - uneven dose frames, irregular CTs
OPTIONAL_KEYS = {"resampling.before_backend"}


def _keys(value, prefix=""):
    """Every key path of a meta.json (lists of dicts by their first item): its schema."""
    if isinstance(value, dict):
        out = set()
        for key, item in value.items():
            out.add(prefix + key)
            out |= _keys(item, prefix + key + ".")
        return out
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return _keys(value[0], prefix + "[].")
    return set()


# ==== #1: dose node <-> RTDOSE file =========================================================


@pytest.fixture()
def beam_study(tmp_path, database):
    """A study whose RTDOSE series holds a PLAN dose and two BEAM doses, indexed in the database."""
    truth = _phantom(tmp_path, write_beam_doses=True, n_beams=2, ct_size=(32, 32, 16), dose_size=(14, 12, 8))
    db, _loading = database
    db.add_folder(tmp_path / "dicom")
    assert len({str(pydicom.dcmread(str(f)).SeriesInstanceUID) for f in truth.dose_files}) == 1
    return truth


def test_issue15_1_each_dose_of_a_series_maps_to_its_own_file(module, beam_study, database):
    logic = module.DoseAlignLogic()
    (study,) = database[0].studiesForPatient(database[0].patients()[0])
    nodes = logic.doseVolumeNodes(logic.loadStudy(study))
    assert len(nodes) == 3
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    uids = [sh.GetItemUID(sh.GetItemByDataNode(n), "DICOMInstanceUID") for n in nodes]
    assert sorted(bool(u) for u in uids) == [False, False, True]  # SlicerRT's mapping, as the premise test shows
    files = [logic.doseFileForNode(n) for n in nodes]
    assert sorted(Path(f).name for f in files) == sorted(p.name for p in beam_study.dose_files)
    for node, path in zip(nodes, files):  # each node holds its own file's dose (GDCM-built, so compare values)
        expected = api.read_rtdose(path)[0].array
        np.testing.assert_allclose(slicer.util.arrayFromVolume(node), expected, atol=1e-6 * expected.max())
    # loadables went one at a time, so that each node's file is known
    assert all(len(call) == 1 for call in database[1].calls)


def test_issue15_1_a_dose_loaded_again_maps_to_its_file(module, beam_study, database):
    logic = module.DoseAlignLogic()
    (study,) = database[0].studiesForPatient(database[0].patients()[0])
    first = logic.doseVolumeNodes(logic.loadStudy(study))
    again = logic.doseVolumeNodes(logic.loadStudy(study))  # Load twice, or Load then the notebook's export
    assert [logic.doseFileForNode(n) for n in again] == [logic.doseFileForNode(n) for n in first]
    # and the case of the second copy is the case of the first
    case = logic.caseForDose(again[0])
    assert [str(d.path) for d in case.doses] == [logic.doseFileForNode(again[0])]


def test_issue15_1_a_dose_loaded_elsewhere_is_mapped_only_when_unambiguous(module, beam_study, database):
    logic = module.DoseAlignLogic()
    (study,) = database[0].studiesForPatient(database[0].patients()[0])
    nodes = logic.doseVolumeNodes(logic.loadStudy(study))
    for node in nodes:  # as if loaded by the DICOM module: no record of the file
        node.RemoveAttribute(logic.SOURCE_FILES_ATTRIBUTE)
    with pytest.raises(ValueError, match="cannot tell which file"):
        logic.doseFileForNode(nodes[0])


def test_issue15_1_a_wrong_looking_dose_node_is_reported_never_rewritten(module, tmp_path):
    truth = _phantom(tmp_path, frame_order="decreasing", with_structures=False)
    node = slicer_app.gdcm_like_dose_node(truth.dose_files[0], slicer.mrmlScene)
    before = np.array(slicer.util.arrayFromVolume(node), copy=True)
    matrix_before = mrml.node_ijk_to_ras(node)
    note = module.DoseAlignLogic().checkDoseNode(node, str(truth.dose_files[0]))
    assert note and "grid differs" in note
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
    np.testing.assert_array_equal(mrml.node_ijk_to_ras(node), matrix_before)
    plain = _phantom(tmp_path, "plain", with_structures=False)
    scaled = slicer_app.gdcm_like_dose_node(plain.dose_files[0], slicer.mrmlScene, scaling=0.0001)  # SlicerRT's default
    assert "values differ" in module.DoseAlignLogic().checkDoseNode(scaled, str(plain.dose_files[0]))
    exact = slicer_app.gdcm_like_dose_node(plain.dose_files[0], slicer.mrmlScene)
    assert module.DoseAlignLogic().checkDoseNode(exact, str(plain.dose_files[0])) is None
    uneven = _phantom(tmp_path, "uneven", dose_frame_offsets=UNEVEN, with_structures=False)
    node = slicer_app.gdcm_like_dose_node(uneven.dose_files[0], slicer.mrmlScene)
    assert "unevenly spaced" in module.DoseAlignLogic().checkDoseNode(node, str(uneven.dose_files[0]))


# ==== #2: Export all with the study already loaded ==========================================


@needs_cli
def test_issue15_2_export_all_leaves_loaded_studies_alone(module, cli, tmp_path, database):
    db, _loading = database
    _phantom(tmp_path, patient_id="A")
    _phantom(tmp_path, "second", patient_id="B", patient_position="FFS")
    db.add_folder(tmp_path / "dicom")
    db.add_folder(tmp_path / "second")
    logic = module.DoseAlignLogic()
    for study in db.studiesForPatient("A"):
        logic.loadStudy(study)
    before = slicer_app.scene_counts(slicer.mrmlScene)
    rows = logic.exportDatabase(tmp_path / "out", AlignOptions(), "cli")
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    assert slicer_app.scene_counts(slicer.mrmlScene) == before  # nothing loaded, nothing left behind
    for row in rows:  # the structures of the loaded study are there (SlicerRT's lookup would find the old CT)
        arrays, meta = _arrays(tmp_path / "out" / row["case_id"])
        assert "masks" in arrays and meta["structures"]["names"]
        assert meta["resampling"]["backend"] == "slicer-cli"
    assert (tmp_path / "out" / "manifest.csv").is_file() and (tmp_path / "out" / "report.html").is_file()


# ==== #4: masks from the contours, the user's segmentation untouched ================================


def test_issue15_4_masks_follow_each_grid_and_leave_the_segmentation(module, tmp_path, database):
    truth = _phantom(tmp_path, ct_size=(40, 40, 24))
    db, _loading = database
    db.add_folder(tmp_path / "dicom")
    logic = module.DoseAlignLogic()
    logic.loadStudy(db.studiesForPatient(db.patients()[0])[0])
    (dose,) = logic.doseVolumeNodes()
    (segmentation,) = slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
    state = (segmentation.GetMTime(), segmentation.GetSegmentation().GetNumberOfSegments())
    (case,) = api.form_cases(api.scan_folder(tmp_path / "dicom")).cases
    for spacing in (4.0, 1.5, 4.0):
        options = AlignOptions(reference="custom", custom_spacing=(spacing,), custom_box="dose")
        result = logic.alignNodes(None, dose, options, "engine", segmentation)
        expected = api.run_case(case, options)  # the engine's rasterizer on the contours, on this grid
        assert result.ct.grid.shape == expected.ct.grid.shape
        np.testing.assert_array_equal(result.extra_arrays["masks"], expected.extra_arrays["masks"])
        assert result.meta["structures"]["names"] == expected.meta["structures"]["names"]
        assert len(result.meta["structures"]["names"]) >= 3 and len(truth.rois) >= 3
    assert (segmentation.GetMTime(), segmentation.GetSegmentation().GetNumberOfSegments()) == state


def test_issue15_4_two_rois_with_one_name_give_two_masks(module, tmp_path, database):
    truth = _phantom(tmp_path, ct_size=(40, 40, 24))
    ds = pydicom.dcmread(str(truth.struct_file))
    names = [roi.ROIName for roi in ds.StructureSetROISequence]
    ds.StructureSetROISequence[1].ROIName = names[0]
    ds.save_as(str(truth.struct_file))
    db, _loading = database
    db.add_folder(tmp_path / "dicom")
    logic = module.DoseAlignLogic()
    logic.loadStudy(db.studiesForPatient(db.patients()[0])[0])
    (dose,) = logic.doseVolumeNodes()
    result = logic.alignNodes(None, dose, AlignOptions(), "engine")
    shown = result.meta["structures"]["names"]
    assert names[0] in shown and f"{names[0]}_2" in shown  # both kept, the second under a made-unique name
    masks, _types, _body = api.masks_from_arrays(result.extra_arrays, result.meta, result.ct.grid.shape)
    assert len(masks) == len(shown)
    first, second = masks[shown.index(names[0])][1], masks[shown.index(f"{names[0]}_2")][1]
    assert first.any() and second.any() and not np.array_equal(first, second)


# ==== #5: units, one path ===================================================================


@needs_cli
@pytest.mark.parametrize("backend", ["cli", "inprocess"])
def test_issue15_5_relative_dose_refused_then_labelled(module, cli, tmp_path, backend):
    _phantom(tmp_path, dose_units="RELATIVE", with_structures=False)
    logic = module.DoseAlignLogic()
    rows = logic.exportFolder(tmp_path / "dicom", tmp_path / "out", AlignOptions(structures=False), backend)
    assert rows[0]["status"] == "failed" and "RELATIVE" in rows[0]["reason"]
    rows = logic.exportFolder(
        tmp_path / "dicom", tmp_path / "ok", AlignOptions(structures=False, allow_relative=True), backend
    )
    _arrays_, meta = _arrays(tmp_path / "ok" / rows[0]["case_id"])
    assert meta["arrays"]["dose"]["units"] == meta["dose"]["units"] == "RELATIVE"


# ==== #6, #7, #8, #10 =======================================================================


def test_issue15_6_an_empty_folder_is_refused(module, monkeypatch):
    import pathlib

    logic = module.DoseAlignLogic()
    for empty in (pathlib.Path(), pathlib.Path(""), "", None):  # Path() is what an empty path parameter holds
        with pytest.raises(ValueError, match="Choose a DICOM folder"):
            logic.importFolderToDatabase(empty)
        with pytest.raises(ValueError, match="Choose"):
            logic.exportFolder(empty, "out", AlignOptions())
    assert module.isEmptyPath(pathlib.Path()) and not module.isEmptyPath(pathlib.Path("x"))


def test_issue15_7_the_case_of_a_dose_scans_exactly_its_files(module, tmp_path, database, monkeypatch):
    truth = _phantom(tmp_path)
    other = _phantom(tmp_path, "unrelated", patient_id="OTHER")  # in the database, and beside it on disk
    db, _loading = database
    db.add_folder(tmp_path / "dicom")
    db.add_folder(tmp_path / "unrelated")
    logic = module.DoseAlignLogic()
    logic.loadStudy(db.studiesForPatient("DA-PHANTOM-001")[0])
    (dose,) = logic.doseVolumeNodes()
    scanned = []
    real_scan_files = api.scan_files
    monkeypatch.setattr(api, "scan_files", lambda paths, *a, **k: scanned.append(list(paths)) or real_scan_files(paths))
    monkeypatch.setattr(api, "scan_folder", lambda *a, **k: pytest.fail("no folder is scanned"))
    case = logic.caseForDose(dose)
    (files,) = scanned
    expected = [*truth.ct_files, *truth.dose_files, truth.plan_file, truth.struct_file]
    assert sorted(Path(f).resolve() for f in files) == sorted(Path(f).resolve() for f in expected)
    assert not {Path(f).resolve() for f in files} & {Path(f).resolve() for f in other.ct_files}
    assert case.ct.series_uid == truth.ct_series_uid and len(case.structs) == 1


def test_a_dose_in_a_study_of_its_own_finds_the_patients_ct(module, tmp_path, database):
    truth = _phantom(tmp_path)
    study = pydicom.uid.generate_uid()
    for path in [*truth.dose_files, truth.plan_file]:  # as some planning systems export them
        ds = pydicom.dcmread(str(path))
        ds.StudyInstanceUID = study
        ds.save_as(str(path))
    db, _loading = database
    db.add_folder(tmp_path / "dicom")
    assert len(db.studiesForPatient(db.patients()[0])) == 2
    logic = module.DoseAlignLogic()
    dose = logic.doseVolumeNodes(logic.loadStudy(study))[0]
    case = logic.caseForDose(dose)
    assert case.ct.series_uid == truth.ct_series_uid and case.structs and case.plan is not None


def test_issue15_8_ct_candidates_are_filtered_by_modality(module, tmp_path, database):
    truth = _phantom(tmp_path)
    mr = tmp_path / "dicom" / "mr"
    mr.mkdir()
    series = pydicom.uid.generate_uid()
    for n, path in enumerate(truth.ct_files):  # the CT's twin as MR: same frame of reference and study
        ds = pydicom.dcmread(str(path))
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(str(mr / f"mr{n:03d}.dcm"))
    db, _loading = database
    db.add_folder(tmp_path / "dicom")
    logic = module.DoseAlignLogic()
    logic.loadStudy(db.studiesForPatient(db.patients()[0])[0])
    (dose,) = logic.doseVolumeNodes()
    volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if not logic.isDoseVolumeNode(n)]
    assert len(volumes) == 2  # the MR is loaded too
    (ct,) = logic.ctVolumeNodes()
    assert logic.modalityOfNode(ct) == "CT"
    assert logic.findCtForDose(dose) is ct
    mr_node = next(n for n in volumes if n is not ct)
    with pytest.raises(ValueError, match="not a CT"):
        logic.caseForDose(dose, mr_node)


def test_issue15_10_no_dicom_database_yet(module, monkeypatch):
    monkeypatch.delattr(slicer, "dicomDatabase", raising=False)
    logic = module.DoseAlignLogic()
    assert logic.databaseHasPatients() is False and logic.listStudies() == []
    with pytest.raises(RuntimeError, match="DICOM database is not open"):
        logic.loadStudy("1.2.3")


# ==== #3: one GUI connection per parameter node ===================================================


class _Widget:
    """A widget with a dynamic property (what connectParametersToGui is given), or a combo box."""

    def __init__(self, parameter=None):
        self._parameter = parameter
        self.enabled = True
        self.toolTip = ""
        self.currentData = None
        self.items = []
        self.currentPath = ""

    def clear(self):
        self.items = []

    def addItem(self, text, data=None):  # noqa: N802
        self.items.append((text, data))

    def findData(self, data):  # noqa: N802
        return next((n for n, item in enumerate(self.items) if item[1] == data), -1)

    def property(self, name):
        return self._parameter if name == "SlicerParameterName" else None


class _RecordingParameterNode:
    """The wrapper's GUI calls as Slicer 5.6/5.8 answer them: connectGui returns None
    (wrapper.py:241-253 at v5.6.2/v5.8.1); connectParametersToGui returns a tag (:194-213)."""

    def __init__(self, scene):
        self.parameterNode = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
        self.connections = {}
        self._next = 0
        self.doseVolume = self.ctVolume = self.segmentation = None
        self.outputFolder = self.inputFolder = None

    def connectGui(self, gui):  # noqa: N802
        self.connections[f"untagged-{len(self.connections)}"] = gui
        return None

    def connectParametersToGui(self, mapping):  # noqa: N802
        tag = self._next
        self._next += 1
        self.connections[tag] = dict(mapping)
        return tag

    def disconnectGui(self, tag):  # noqa: N802
        self.connections.pop(tag, None)

    def AddObserver(self, event, callback, priority=0.0):  # noqa: N802
        return self.parameterNode.AddObserver(event, callback, priority)

    def RemoveObserver(self, tag):  # noqa: N802
        self.parameterNode.RemoveObserver(tag)


def test_issue15_3_entering_and_leaving_keeps_one_connection(module, monkeypatch):
    import types

    widget = module.DoseAlignWidget.__new__(module.DoseAlignWidget)
    module.VTKObservationMixin.__init__(widget)
    widget._parameterNode = widget._parameterNodeGuiTag = None
    widget._busy = False
    widget._followedDoseID = None
    widget._folderTexts = {}
    names = ["doseVolumeSelector", "referenceGridComboBox", "backendComboBox", "interpolatorComboBox"]
    parameters = ["doseVolume", "referenceGrid", "backend", "interpolator"]
    buttons = ["alignButton", "exportButton", "exportAllButton", "importFolderButton", "cancelButton"]
    buttons += ["loadStudyButton", "refreshStudiesButton", "studyComboBox"]
    buttons += ["inputFolderPathLineEdit", "outputFolderPathLineEdit"]  # connected by the widget itself (N4)
    widget.ui = types.SimpleNamespace(
        **{n: _Widget(p) for n, p in zip(names, parameters)}, **{b: _Widget() for b in buttons}
    )
    node = _RecordingParameterNode(slicer.mrmlScene)
    logic = module.DoseAlignLogic()
    monkeypatch.setattr(logic, "getParameterNode", lambda: node)
    monkeypatch.setattr(logic, "optionsFromParameterNode", lambda p: AlignOptions())
    widget.logic = logic
    widget.parent = types.SimpleNamespace(isEntered=True)
    for _visit in range(4):
        widget.enter()
        widget.exit()
    assert list(node.connections) == [0]  # one tagged connection, made once
    assert set(node.connections[0]) == set(parameters)
    widget.onSceneStartClose(None, None)  # scene closed: the connection goes with its node
    assert node.connections == {}
    assert widget.ui.importFolderButton.enabled is False  # empty folder: no import (#6)


# ==== the CLI resampler: status, output, None, cancel, clean scene ==============================


@needs_cli
def test_cli_resampler_reports_a_run_that_wrote_nothing(module, tmp_path, monkeypatch):
    fake = tmp_path / "writes-nothing"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    description = cli_double.description_from_executable(cli_double.find_executable())
    cli_double.install(monkeypatch, slicer.mrmlScene, tmp_path / "cli", executable=fake, description=description)
    grid = api.Grid.from_spacing((4, 5, 6), (1.0, 1.0, 1.0), np.zeros(3))
    volume = api.Volume(np.ones(grid.shape, np.float32), grid)
    before = slicer_app.scene_counts(slicer.mrmlScene)
    with pytest.raises(resamplers.ResamplingError, match="wrote no output"):
        resamplers.CliResampler()(volume, grid, api.Interpolator.LINEAR, fill=0.0, dtype=np.float32)
    assert slicer_app.scene_counts(slicer.mrmlScene) == before


def test_cli_resampler_reports_run_sync_returning_none(module, monkeypatch):
    import types

    monkeypatch.setattr(slicer, "cli", types.SimpleNamespace(runSync=lambda *a, **k: None), raising=False)
    monkeypatch.setattr(slicer.modules, "resamplescalarvectordwivolume", object(), raising=False)
    grid = api.Grid.from_spacing((2, 2, 2), (1.0, 1.0, 1.0), np.zeros(3))
    volume = api.Volume(np.ones(grid.shape, np.float32), grid)
    with pytest.raises(resamplers.ResamplingError, match="could not start"):
        resamplers.CliResampler()(volume, grid, api.Interpolator.LINEAR, fill=0.0, dtype=np.float32)
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


@needs_cli
def test_cli_resampler_reports_the_cli_error(module, cli):
    grid = api.Grid.from_spacing((2, 3, 4), (1.0, 1.0, 1.0), np.zeros(3))
    volume = api.Volume(np.ones(grid.shape, np.float32), grid)
    original = cli.logic().set_parameter

    def bad_interpolator(node, name, value):  # the XML allows only linear|nn|ws|bs: the CLI exits non-zero
        return original(node, name, "cubic" if name == "interpolationType" else value)

    cli.logic().set_parameter = bad_interpolator
    with pytest.raises(resamplers.ResamplingError, match="failed"):
        resamplers.CliResampler()(volume, grid, api.Interpolator.LINEAR, fill=0.0, dtype=np.float32)


@needs_cli
def test_cli_backend_in_the_panel_runs_asynchronously_and_cancels(module, cli, tmp_path, monkeypatch):
    _phantom(tmp_path, with_structures=False)
    logic = module.DoseAlignLogic()
    logic.processEvents = slicer.app.processEvents  # as the panel sets it
    calls = []

    def count_then_cancel():
        calls.append(1)
        cli_double.process_events()
        if len(calls) == 1:
            logic.requestCancel()

    logic.processEvents = count_then_cancel
    (case,) = api.form_cases(api.scan_folder(tmp_path / "dicom")).cases
    options = AlignOptions(structures=False, reference="dose")  # the CT goes through the CLI
    with pytest.raises(api.Cancelled):
        logic.runCase(case, options, "cli")
    assert calls and not cli_double._PENDING  # the CLI process was killed and reaped
    assert slicer_app.scene_counts(slicer.mrmlScene) == {}
    logic.processEvents = cli_double.process_events
    result = logic.runCase(case, options, "cli")  # and without a cancel it completes
    engine = api.run_case(case, options)
    assert np.abs(result.ct.array.astype(int) - engine.ct.array).max() <= 1


def test_vtk_fill_outside_needs_no_meshgrid_and_matches_a_direct_computation():
    source = api.Grid.from_spacing((5, 6, 7), (2.0, 1.5, 3.0), np.array([1.0, -2.0, 4.0]))
    target = api.Grid.from_spacing((9, 11, 13), (1.1, 1.3, 1.7), np.array([-4.0, -6.0, -3.0]))
    values = np.zeros(target.shape, np.float32)
    resamplers.fill_outside(values, source, target, -1000.0)
    k, j, i = np.meshgrid(*(np.arange(n) for n in target.shape), indexing="ij")
    index = source.lps_to_index(target.index_to_lps(np.stack([i, j, k], axis=-1).astype(float)))
    outside = np.any((index < -0.5 - 1e-6) | (index > np.array(source.shape[::-1]) - 0.5 + 1e-6), axis=-1)
    assert 0 < outside.sum() < outside.size
    np.testing.assert_array_equal(values == -1000.0, outside)


def test_vtk_resampler_refuses_other_interpolators(module):
    grid = api.Grid.from_spacing((2, 2, 2), (1.0, 1.0, 1.0), np.zeros(3))
    volume = api.Volume(np.ones(grid.shape, np.float32), grid)
    with pytest.raises(api.InputError, match="linear only"):
        resamplers.VtkResampler()(volume, grid, api.Interpolator.BSPLINE, fill=0.0, dtype=np.float32)


# ==== showResult ==================================================================================


def test_show_result_replaces_its_nodes(module, tmp_path, monkeypatch):
    _phantom(tmp_path, ct_size=(32, 32, 16))
    data_logic = slicer.vtkSlicerDataModuleLogic()  # removes a removed node's display nodes, as in Slicer
    data_logic.SetMRMLScene(slicer.mrmlScene)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(slicer.mrmlScene)
    volumes_logic = slicer.vtkSlicerVolumesLogic()
    volumes_logic.SetMRMLScene(slicer.mrmlScene)
    import types

    monkeypatch.setattr(
        slicer.modules, "segmentations", types.SimpleNamespace(logic=lambda: segmentations), raising=False
    )
    monkeypatch.setattr(slicer.modules, "volumes", types.SimpleNamespace(logic=lambda: volumes_logic), raising=False)
    (case,) = api.form_cases(api.scan_folder(tmp_path / "dicom")).cases
    logic = module.DoseAlignLogic()
    result = logic.runCase(case, AlignOptions(), "engine")
    first = logic.showResult(result)
    counts = slicer_app.scene_counts(slicer.mrmlScene)
    segments = first["masks"].GetSegmentation()
    assert segments.GetNumberOfSegments() == len(result.meta["structures"]["names"])
    for n in range(segments.GetNumberOfSegments()):  # every shown mask is the exported one
        segment_id = segments.GetNthSegmentID(n)
        shown = slicer.util.arrayFromSegmentBinaryLabelmap(first["masks"], segment_id, first["ct"])
        masks, _t, _b = api.masks_from_arrays(result.extra_arrays, result.meta, result.ct.grid.shape)
        np.testing.assert_array_equal(shown > 0, masks[n][1])
    for _click in range(3):
        logic.showResult(result)
    assert slicer_app.scene_counts(slicer.mrmlScene) == counts
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")[-1]), result.dose.array
    )


# ==== the CLI and in-process backends against the engine =========================================


def _compare_backend(module, tmp_path, backend, spec, options, tolerance=1e-4):
    """Export with ``backend`` through the module and with ``dosealign export``'s engine; compare."""
    truth = write_phantom(tmp_path / "dicom", spec)
    engine = api.export_folder(tmp_path / "dicom", tmp_path / "engine", options)
    logic = module.DoseAlignLogic()
    rows = logic.exportFolder(tmp_path / "dicom", tmp_path / "slicer", options, backend)
    assert [r["case_id"] for r in rows] == [r["case_id"] for r in engine.rows]
    assert [r["status"] for r in rows] == ["ok"] * len(rows), rows
    results = []
    for row in engine.rows:
        expected, engine_meta = _arrays(tmp_path / "engine" / row["case_id"])
        actual, slicer_meta = _arrays(tmp_path / "slicer" / row["case_id"])
        assert sorted(actual) == sorted(expected)  # the same pair.npz members
        assert _keys(slicer_meta) - OPTIONAL_KEYS == _keys(engine_meta) - OPTIONAL_KEYS  # and meta.json schema
        assert slicer_meta["ijk_to_lps"] == engine_meta["ijk_to_lps"] and slicer_meta["shape"] == engine_meta["shape"]
        for name in expected:
            assert actual[name].dtype == expected[name].dtype and actual[name].shape == expected[name].shape, name
        points = voxel_points(engine_meta)
        interior = interior_mask(truth, points)
        assert interior.sum() > 100
        dmax = float(expected["dose"][interior].max())
        error = float(np.abs(actual["dose"] - expected["dose"])[interior].max())
        assert error <= tolerance * dmax, f"{backend}: dose differs by {error:.3g} Gy inside the dose grid"
        results.append((truth, expected, actual, engine_meta, slicer_meta, interior))
    return results


CLI_MATRIX = [
    *[PhantomSpec(patient_position=p, with_structures=False) for p in ("HFS", "HFP", "FFS", "FFP", "HFDL", "FFDR")],
    PhantomSpec(oblique_degrees=(12.0, -7.0, 25.0), with_structures=False),
    PhantomSpec(dose_oblique_degrees=(0.0, 0.0, 15.0), with_structures=False),
    PhantomSpec(gfov_mode="absolute", patient_position="FFS", with_structures=False),
    PhantomSpec(frame_order="decreasing", with_structures=False),
    PhantomSpec(dose_size=(40, 36, 12), dose_frame_offsets=[0, 2, 4, 7, 10, 15, 20, 22, 25, 31, 36, 40]),
    PhantomSpec(dose_size=(40, 36, 8), dose_frame_offsets=[0, -3, -5, -6, -10, -16, -20, -21], with_structures=False),
    PhantomSpec(dose_center_offset_lps=(30.0, -20.0, 45.0), with_structures=False),
    PhantomSpec(write_plan_dose=False, write_beam_doses=True, n_beams=3, with_structures=False),
    PhantomSpec(ct_gantry_tilt_degrees=12.0, ct_field="linear", with_structures=False),
]
CLI_IDS = ["HFS", "HFP", "FFS", "FFP", "HFDL", "FFDR", "oblique", "dose-rotated", "absolute-ffs", "decreasing"]
CLI_IDS += ["uneven", "uneven-decreasing", "dose-beyond-ct", "beam-sum", "ct-tilt"]


@needs_cli
@pytest.mark.slow
@pytest.mark.parametrize("spec", CLI_MATRIX, ids=CLI_IDS)
def test_cli_backend_matches_the_engine_on_the_geometry_matrix(module, cli, tmp_path, spec):
    options = AlignOptions(structures=spec.with_structures)
    for truth, expected, actual, engine_meta, slicer_meta, _interior in _compare_backend(
        module, tmp_path, "cli", spec, options
    ):
        # the CT: the CLI's linear interpolation, rounded as the engine rounds (never truncated)
        assert np.abs(actual["ct"].astype(int) - expected["ct"]).max() <= 1
        if "masks" in expected:
            np.testing.assert_array_equal(actual["masks"], expected["masks"])
        assert slicer_meta["resampling"]["backend"] == "slicer-cli"
        uneven = spec.dose_frame_offsets is not None or spec.ct_gantry_tilt_degrees
        assert bool(slicer_meta["resampling"].get("before_backend")) == bool(uneven)
        # beyond the dose grid's half-voxel rim both write 0 (CLI --default_pixel_value 0)
        outside = outside_rim_mask(truth, voxel_points(engine_meta))
        if spec.dose_frame_offsets is None:
            assert np.all(actual["dose"][outside] == 0.0)


@needs_cli
@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        AlignOptions(reference="dose", structures=False),
        AlignOptions(reference="custom", custom_spacing=(1.7, 2.2, 3.1), custom_box="ct", structures=False),
        AlignOptions(reference="custom", custom_spacing=(2.0,), custom_box="cube", custom_size=(24,), structures=False),
        AlignOptions(interpolator="nn", reference="dose", structures=False),
    ],
    ids=["dose-grid", "custom-ct-box", "custom-cube", "nn-on-dose-grid"],
)
def test_cli_backend_matches_the_engine_on_other_grids(module, cli, tmp_path, options):
    spec = PhantomSpec(patient_position="FFS", ct_field="linear", with_structures=False)
    for _truth, expected, actual, _m, slicer_meta, _i in _compare_backend(module, tmp_path, "cli", spec, options):
        inside_ct = expected["ct"] != options.ct_fill_hu
        assert np.abs(actual["ct"].astype(int) - expected["ct"])[inside_ct].max() <= 1
        assert slicer_meta["resampling"]["interpolator"] == options.interpolator.value


def _voxels_from_dose_edge(truth, points) -> np.ndarray:
    """Distance of each point, in dose voxels, from the nearest outer voxel centre of the dose grid
    (negative outside)."""
    rel = points - truth.dose_origin
    row_spacing, column_spacing = truth.dose_pixel_spacing
    frames, rows, columns = truth.dose_shape
    u = rel @ truth.dose_row_dir / column_spacing
    v = rel @ truth.dose_col_dir / row_spacing
    w = rel @ truth.dose_normal / abs(truth.dose_frame_offsets[1] - truth.dose_frame_offsets[0])
    return np.minimum.reduce([u, columns - 1 - u, v, rows - 1 - v, w, frames - 1 - w])


@needs_cli
@pytest.mark.slow
def test_cli_backend_bspline_and_windowed_sinc(module, cli, tmp_path):
    """B-spline: ITK's in both (SimpleITK in the engine), equal. Windowed sinc: the CLI's cosine window has
    radius 3 and zero padding, SimpleITK's radius 5 (README of ../shared/slicer-cli; README "What ran where"):
    within 2 % of Dmax three dose voxels or more inside the grid, further apart near its edges."""
    truth = write_phantom(tmp_path / "dicom", PhantomSpec(dose_size=(30, 28, 18), with_structures=False))
    (case,) = api.form_cases(api.scan_folder(tmp_path / "dicom")).cases
    logic = module.DoseAlignLogic()
    for interpolator in ("bs", "ws"):
        options = AlignOptions(interpolator=interpolator, structures=False)
        engine = api.run_case(case, options)
        slicer_result = logic.runCase(case, options, "cli")
        assert slicer_result.dose.grid.equal(engine.dose.grid)
        difference = np.abs(slicer_result.dose.array - engine.dose.array) / float(engine.dose.array.max())
        depth = _voxels_from_dose_edge(truth, voxel_points(engine.meta))
        if interpolator == "bs":
            assert difference[depth >= 0].max() <= 1e-4
        else:
            deep = depth >= 3
            assert deep.sum() > 1000
            assert difference[deep].max() <= 0.02
            assert difference[(depth >= 0) & (depth < 2)].max() > difference[deep].max()  # the documented edge effect


@needs_cli
@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    [
        PhantomSpec(patient_position="FFS"),
        PhantomSpec(dose_frame_offsets=UNEVEN, with_structures=False),
        PhantomSpec(ct_missing_slices=(12, 13), ct_field="linear", with_structures=False),
    ],
    ids=["FFS-structures", "uneven", "ct-missing-slices"],
)
def test_in_process_backend_matches_the_engine(module, tmp_path, spec):
    options = AlignOptions(structures=spec.with_structures)
    for _truth, expected, actual, _m, slicer_meta, _i in _compare_backend(module, tmp_path, "inprocess", spec, options):
        assert np.abs(actual["ct"].astype(int) - expected["ct"]).max() <= 1
        assert slicer_meta["resampling"]["backend"] == "slicer-vtk"
        if "masks" in expected:
            np.testing.assert_array_equal(actual["masks"], expected["masks"])


# ==== ../shared/data through the CLI backend ===================================================


@needs_cli
@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["rtkit-phantom", "nelms-dvh-phantom"])
def test_cli_backend_matches_the_engine_on_real_data(module, cli, shared_data, tmp_path, name):
    """Real CT/RTDOSE/RTSTRUCT sets: identical grids, pair.npz members and masks; CT within 1 HU; dose
    within 1e-4 x Dmax one voxel inside every dose grid (the half-voxel edge band excepted: there the
    CLI and the engine both clamp, see README)."""
    options = AlignOptions()
    engine = api.export_folder(shared_data / name, tmp_path / "engine", options)
    rows = module.DoseAlignLogic().exportFolder(shared_data / name, tmp_path / "slicer", options, "cli")
    assert [(r["case_id"], r["status"]) for r in rows] == [(r["case_id"], r["status"]) for r in engine.rows]
    compared = 0
    for row in engine.rows:
        if row["status"] != "ok":
            continue
        expected, engine_meta = _arrays(tmp_path / "engine" / row["case_id"])
        actual, slicer_meta = _arrays(tmp_path / "slicer" / row["case_id"])
        assert sorted(actual) == sorted(expected)
        assert _keys(slicer_meta) - OPTIONAL_KEYS == _keys(engine_meta) - OPTIONAL_KEYS
        assert slicer_meta["shape"] == engine_meta["shape"] and slicer_meta["ijk_to_lps"] == engine_meta["ijk_to_lps"]
        assert np.abs(actual["ct"].astype(int) - expected["ct"]).max() <= 1
        for key in ("masks", "body"):
            if key in expected:
                np.testing.assert_array_equal(actual[key], expected[key])
        grid = api.Grid(tuple(engine_meta["shape"]), np.array(engine_meta["ijk_to_lps"]))
        interior = module.DoseAlignTest._doseInterior(grid, engine_meta)
        dmax = float(expected["dose"].max())
        if interior.sum() and dmax > 0:
            error = float(np.abs(actual["dose"] - expected["dose"])[interior].max())
            assert error <= 1e-4 * dmax, f"{row['case_id']}: {error:.3g} Gy (Dmax {dmax:.3g})"
            compared += 1
    assert compared >= 1


# ==== the module's own self-test, and the batch script ============================================


@needs_cli
@pytest.mark.slow
def test_module_self_test_runs_its_backend_comparisons(module, cli, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the self-test makes its folders
    tester = module.DoseAlignTest()
    tester.test_DoseAlign_CliMatchesEngine()
    tester.test_DoseAlign_InProcessMatchesEngine()
    tester.test_DoseAlign_UnevenFramesThroughTheCli()
    assert not list(tmp_path.iterdir()), "the self-test left its temporary folders behind"


@needs_cli
def test_batch_script_with_the_cli_backend(module, cli, tmp_path, capsys):
    import DoseAlignBatch

    _phantom(tmp_path)
    out = tmp_path / "out"
    code = DoseAlignBatch.main(["--input", str(tmp_path / "dicom"), "--output", str(out), "--backend", "cli"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    lines = [line for line in printed.splitlines() if not line.startswith("[")]  # besides progress lines
    assert len(lines) == len(set(lines)), lines  # each line once (issue 15: double log lines)
    assert sum(line.startswith("CASE ") for line in lines) == 1
    (case_dir,) = [p for p in out.iterdir() if p.is_dir()]
    meta = json.loads((case_dir / "meta.json").read_text())
    assert meta["resampling"]["backend"] == "slicer-cli"


def test_batch_script_usage_and_exit_codes(module, tmp_path, capsys):
    import DoseAlignBatch

    assert DoseAlignBatch.main(["--usage"]) == 0
    assert DoseAlignBatch.main([]) == 2
    assert DoseAlignBatch.main(["--input", "x", "--output", "y", "--reference", "custom"]) == 2  # no --spacing
    assert DoseAlignBatch.main(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    _phantom(tmp_path)
    code = DoseAlignBatch.main(
        ["--input", str(tmp_path / "dicom"), "--output", str(tmp_path / "out"), "--backend", "engine"]
    )
    assert code == 0, capsys.readouterr()


def test_batch_script_always_exits(module, tmp_path, monkeypatch):
    """Run as a script, every path ends in SystemExit with a code (Slicer would otherwise hang)."""
    import runpy

    script = Path(__file__).resolve().parents[2] / "DoseAlign" / "DoseAlignBatch.py"
    for argv, code in ((["--bogus"], 2), (["--input", str(tmp_path / "none"), "--output", str(tmp_path / "b")], 2)):
        monkeypatch.setattr(sys, "argv", [str(script), *argv])
        with pytest.raises(SystemExit) as raised:
            runpy.run_path(str(script), run_name="__main__")
        assert raised.value.code == code


def test_batch_module_has_its_self_test(module):
    import DoseAlignBatch

    assert issubclass(DoseAlignBatch.DoseAlignBatchTest, module.ScriptedLoadableModuleTest)
    assert callable(DoseAlignBatch.DoseAlignBatchTest().runTest)


@needs_cli
@pytest.mark.slow
def test_batch_self_test_passes_and_removes_its_folder(module, cli, tmp_path, monkeypatch):
    import DoseAlignBatch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    DoseAlignBatch.DoseAlignBatchTest().runTest()
    assert not list(tmp_path.iterdir()), "the batch self-test left its temporary folder behind"


def test_resume_keeps_a_case_only_when_the_same_backend_made_it(module, tmp_path):
    _phantom(tmp_path, with_structures=False)
    logic = module.DoseAlignLogic()
    options = AlignOptions(structures=False)
    (row,) = logic.exportFolder(tmp_path / "dicom", tmp_path / "out", options, "engine")
    assert row["status"] == "ok"
    (again,) = logic.exportFolder(tmp_path / "dicom", tmp_path / "out", options, "engine", resume=True)
    assert again["status"] == "skipped"
    (other,) = logic.exportFolder(tmp_path / "dicom", tmp_path / "out", options, "inprocess", resume=True)
    assert other["status"] == "ok"  # made by the engine, asked of VTK: exported again
    _arrays_, meta = _arrays(tmp_path / "out" / other["case_id"])
    assert meta["resampling"]["backend"] == "slicer-vtk"


class _Database:
    """ctkDICOMDatabase's open/close calls (databaseFilename, isOpen: ctkDICOMDatabase.h, see slicer_api.json)."""

    def __init__(self, filename=""):
        self.databaseFilename = filename
        self.isOpen = bool(filename)
        self.opened = []

    def openDatabase(self, filename):  # noqa: N802
        self.databaseFilename, self.isOpen = filename, True
        self.opened.append(filename)

    def closeDatabase(self):  # noqa: N802
        self.databaseFilename, self.isOpen = "", False


def test_issue15_9_the_temporary_database_leaves_the_users_database_and_settings(module, monkeypatch, tmp_path):
    import types

    users = _Database(str(tmp_path / "users" / "ctkDICOM.sql"))
    monkeypatch.setattr(slicer, "dicomDatabase", users, raising=False)
    settings_writes = []

    def open_database(folder):  # DICOMUtils.openDatabase: opens <folder>/ctkDICOM.sql, writes no setting
        slicer.dicomDatabase.openDatabase(f"{folder}/ctkDICOM.sql")
        return True

    dicom_lib = types.ModuleType("DICOMLib")
    dicom_lib.DICOMUtils = types.SimpleNamespace(
        openDatabase=open_database,
        openTemporaryDatabase=lambda *a, **k: settings_writes.append(a),  # the call that writes the setting
    )
    monkeypatch.setitem(sys.modules, "DICOMLib", dicom_lib)
    logic = module.DoseAlignLogic()
    original = users.databaseFilename
    with pytest.raises(RuntimeError, match="a step failed"), logic.temporaryDatabase() as database:
        temporary = database.databaseFilename
        assert temporary != original and Path(temporary).parent.is_dir()
        raise RuntimeError("a step failed")  # a failing cell of the notebook
    assert users.opened == [temporary, original]  # the temporary one, then the user's again
    assert users.isOpen and users.databaseFilename == original
    assert not Path(temporary).parent.exists()  # its own folder, removed
    assert settings_writes == []
    with logic.temporaryDatabase(tmp_path / "kept") as database:
        assert database.databaseFilename == f"{tmp_path / 'kept'}/ctkDICOM.sql"
    assert (tmp_path / "kept").is_dir() and users.databaseFilename.endswith("users/ctkDICOM.sql")


# ==== second reading N2: the output folder's owner record goes with every export ========================


def _claims_left(folder: Path) -> list:
    """Owner records (``.tmp-dosealign-<token>.owner``) below ``folder`` and this process's open handles there
    (/proc/self/fd: an unlinked record still held open shows as '<path> (deleted)')."""
    real = os.path.realpath(folder)
    left = [str(p) for p in Path(folder).rglob(".tmp-dosealign-*.owner")]
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target == real or target.startswith(real + os.sep):
                left.append(f"fd {fd} -> {target}")
    return left


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")


@needs_proc
def test_n2_every_export_path_releases_the_output_folder(module, tmp_path, database):
    _phantom(tmp_path, with_structures=False)
    db, _loading = database
    db.add_folder(tmp_path / "dicom")
    logic = module.DoseAlignLogic()
    options = AlignOptions(structures=False)
    (case,) = api.form_cases(api.scan_folder(tmp_path / "dicom")).cases
    result = logic.runCase(case, options, "engine")
    folder = logic.exportResult(result, tmp_path / "export", "npz")  # Export
    assert (folder / "pair.npz").is_file() and _claims_left(tmp_path / "export") == []
    rows = logic.exportDatabase(tmp_path / "all", options, "engine")  # Export all
    assert [r["status"] for r in rows] == ["ok"] and _claims_left(tmp_path / "all") == []
    rows = logic.exportFolder(tmp_path / "dicom", tmp_path / "folder", options, "engine")  # folder export
    assert [r["status"] for r in rows] == ["ok"] and _claims_left(tmp_path / "folder") == []


@needs_proc
def test_n2_a_failing_export_releases_the_output_folder_too(module, tmp_path, database, monkeypatch):
    _phantom(tmp_path, with_structures=False)
    db, _loading = database
    db.add_folder(tmp_path / "dicom")
    logic = module.DoseAlignLogic()
    options = AlignOptions(structures=False)
    (case,) = api.form_cases(api.scan_folder(tmp_path / "dicom")).cases
    result = logic.runCase(case, options, "engine")

    def broken_writer(_result):
        def write(_folder):
            raise OSError("disk full")

        return write

    monkeypatch.setattr(api, "qa_png_writer", broken_writer)
    with pytest.raises((OSError, api.DoseAlignError), match="disk full"):  # the engine names the output folder
        logic.exportResult(result, tmp_path / "export", "npz")
    assert _claims_left(tmp_path / "export") == []
    monkeypatch.setattr(api, "write_report", lambda *a, **k: (_ for _ in ()).throw(OSError("read-only")))
    with pytest.raises(OSError, match="read-only"):
        logic.exportDatabase(tmp_path / "all", options, "engine")
    assert _claims_left(tmp_path / "all") == []


# ==== second reading N1: the selected segmentation is the RTSTRUCT that is exported ========================


def _second_structure_set(truth, prefix: str = "B-") -> tuple:
    """A second RTSTRUCT of the study beside ``truth``'s (own series, ROIs renamed ``prefix + name``)."""
    ds = pydicom.dcmread(str(truth.struct_file))
    first = [str(roi.ROIName) for roi in ds.StructureSetROISequence]
    for roi in ds.StructureSetROISequence:
        roi.ROIName = prefix + str(roi.ROIName)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    path = truth.struct_file.parent / f"{prefix}rtstruct.dcm"
    ds.save_as(str(path))
    return path, first, [prefix + name for name in first]


def _loaded_by_the_dicom_module(module, nodes) -> None:
    """What a study loaded with Slicer's DICOM browser looks like: no DoseAlign record of the files."""
    for node in nodes:
        node.RemoveAttribute(module.DoseAlignLogic.SOURCE_FILES_ATTRIBUTE)


def test_n1_the_selected_rtstruct_of_two_is_the_one_exported(module, tmp_path, database):
    truth = _phantom(tmp_path, ct_size=(40, 40, 24))
    path_b, names_a, names_b = _second_structure_set(truth)
    db, _loading = database
    db.add_folder(tmp_path / "dicom")
    logic = module.DoseAlignLogic()
    (study,) = db.studiesForPatient(db.patients()[0])
    loaded = [slicer.mrmlScene.GetNodeByID(i) for i in logic.loadStudy(study)]
    _loaded_by_the_dicom_module(module, loaded)
    (dose,) = logic.doseVolumeNodes()
    segmentations = slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
    assert len(segmentations) == 2
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    by_series = {sh.GetItemUID(sh.GetItemByDataNode(n), "DICOM"): n for n in segmentations}  # as SlicerRT tags them
    node_b = by_series[str(pydicom.dcmread(str(path_b)).SeriesInstanceUID)]
    node_a = by_series[str(pydicom.dcmread(str(truth.struct_file)).SeriesInstanceUID)]
    for node, names in ((node_b, names_b), (node_a, names_a)):
        result = logic.alignNodes(None, dose, AlignOptions(), "engine", node)
        shown = result.meta["structures"]["names"]
        assert len(shown) >= 3 and set(shown) <= set(names)  # that structure set's ROIs, not both sets'
        assert logic.structureFilesForNode(node) == [
            str(path_b if node is node_b else truth.struct_file).replace("\\", "/")
        ]
    engine = logic.alignNodes(None, dose, AlignOptions(), "engine")  # none selected: the engine pairs them as
    assert set(engine.meta["structures"]["names"]) <= set(names_a)  # dosealign export does (the plan's RTSTRUCT)
    assert logic.segmentationNodeForCase(logic.caseForDose(dose)) is node_a  # the plan's, found by series UID


def test_n1_a_segmentation_of_no_rtstruct_is_refused(module, tmp_path, database):
    _phantom(tmp_path, ct_size=(40, 40, 24))
    db, _loading = database
    db.add_folder(tmp_path / "dicom")
    logic = module.DoseAlignLogic()
    logic.loadStudy(db.studiesForPatient(db.patients()[0])[0])
    (dose,) = logic.doseVolumeNodes()
    drawn = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn in Slicer")
    drawn.GetSegmentation().AddEmptySegment("", "tumour")
    with pytest.raises(ValueError, match="drawn in Slicer.*no RTSTRUCT"):
        logic.alignNodes(None, dose, AlignOptions(), "engine", drawn)
    assert logic.alignNodes(None, dose, AlignOptions(structures=False), "engine", drawn).case_id  # not asked for


def test_n1_an_rtstruct_series_of_two_files_is_refused_without_a_record(module, tmp_path, database):
    truth = _phantom(tmp_path, ct_size=(40, 40, 24))
    ds = pydicom.dcmread(str(truth.struct_file))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()  # a second instance in the same series
    ds.save_as(str(truth.struct_file.parent / "second-rtstruct.dcm"))
    db, _loading = database
    db.add_folder(tmp_path / "dicom")
    logic = module.DoseAlignLogic()
    loaded = [slicer.mrmlScene.GetNodeByID(i) for i in logic.loadStudy(db.studiesForPatient(db.patients()[0])[0])]
    recorded = slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
    assert len(recorded) == 2 and all(len(logic.structureFilesForNode(n)) == 1 for n in recorded)  # DoseAlign's Load
    _loaded_by_the_dicom_module(module, loaded)
    with pytest.raises(ValueError, match="cannot tell which"):
        logic.structureFilesForNode(recorded[0])


# ==== third reading F5: the refusals say what selecting none exports ==========================================

NONE_EXPORTS = r"none to export the structure set paired with the dose \(the plan's RTSTRUCT when a plan names one, "


def test_f5_the_refusals_say_what_none_exports(module, tmp_path, database):
    truth = _phantom(tmp_path, ct_size=(40, 40, 24))  # a plan naming its RTSTRUCT
    _path_b, names_a, _names_b = _second_structure_set(truth)  # another one drawn on the same CT
    copy = pydicom.dcmread(str(truth.struct_file))
    copy.SOPInstanceUID = pydicom.uid.generate_uid()  # and a second file in the plan's RTSTRUCT series
    copy.save_as(str(truth.struct_file.parent / "second-rtstruct.dcm"))
    db, _loading = database
    db.add_folder(tmp_path / "dicom")
    logic = module.DoseAlignLogic()
    loaded = [slicer.mrmlScene.GetNodeByID(i) for i in logic.loadStudy(db.studiesForPatient(db.patients()[0])[0])]
    _loaded_by_the_dicom_module(module, loaded)
    (dose,) = logic.doseVolumeNodes()
    plan_series = str(pydicom.dcmread(str(truth.struct_file)).SeriesInstanceUID)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    (of_two_files, *_same) = [
        n
        for n in slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
        if sh.GetItemUID(sh.GetItemByDataNode(n), "DICOM") == plan_series  # as SlicerRT tags them
    ]
    drawn = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn in Slicer")
    drawn.GetSegmentation().AddEmptySegment("", "tumour")
    for node, reason in ((drawn, "maps to no RTSTRUCT"), (of_two_files, "cannot tell which")):
        with pytest.raises(ValueError, match=reason) as refused:
            logic.alignNodes(None, dose, AlignOptions(), "engine", node)
        assert re.search(NONE_EXPORTS + "else every RTSTRUCT drawn on the CT\\)", str(refused.value))
        assert "every RTSTRUCT of the study" not in str(refused.value)
    exported = logic.alignNodes(None, dose, AlignOptions(), "engine").meta["structures"]["names"]
    assert exported and set(exported) <= set(names_a)  # none: the plan's RTSTRUCT, not the other one of the study


# ==== third reading F2: a dose selects a structure set only when its case has exactly one ======================


def test_f2_a_case_of_several_structure_sets_selects_none(module, tmp_path, database):
    truth = _phantom(tmp_path, ct_size=(40, 40, 24), with_plan=False)  # no plan: the engine pairs both sets
    path_b, names_a, names_b = _second_structure_set(truth)
    db, _loading = database
    db.add_folder(tmp_path / "dicom")
    logic = module.DoseAlignLogic()
    loaded = [slicer.mrmlScene.GetNodeByID(i) for i in logic.loadStudy(db.studiesForPatient(db.patients()[0])[0])]
    (dose,) = logic.doseVolumeNodes()
    assert len(logic.caseForDose(dose).structs) == 2
    assert logic.nodesForDose(dose)[1] is None  # DoseAlign's Load recorded each node's file
    _loaded_by_the_dicom_module(module, loaded)
    ct, segmentation = logic.nodesForDose(dose)  # what choosing the dose selects
    assert ct is not None and segmentation is None
    exported = logic.alignNodes(ct, dose, AlignOptions(), "engine", segmentation).meta["structures"]["names"]
    from_a, from_b = set(exported) & set(names_a), set(exported) & set(names_b)
    assert len(from_a) >= 3 and {"B-" + name for name in from_a} == from_b  # both sets, as dosealign export pairs


def test_f2_a_segmentation_align_would_refuse_is_not_selected(module, tmp_path, database):
    truth = _phantom(tmp_path, ct_size=(40, 40, 24))
    ds = pydicom.dcmread(str(truth.struct_file))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()  # a second RTSTRUCT file in the same series
    ds.save_as(str(truth.struct_file.parent / "second-rtstruct.dcm"))
    db, _loading = database
    db.add_folder(tmp_path / "dicom")
    logic = module.DoseAlignLogic()
    loaded = [slicer.mrmlScene.GetNodeByID(i) for i in logic.loadStudy(db.studiesForPatient(db.patients()[0])[0])]
    (dose,) = logic.doseVolumeNodes()
    assert len(logic.caseForDose(dose).structs) == 1  # the plan names one
    recorded = logic.nodesForDose(dose)[1]
    assert logic.structureFilesForNode(recorded) == [str(truth.struct_file).replace("\\", "/")]  # the plan's file
    _loaded_by_the_dicom_module(module, loaded)
    segmentations = slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
    with pytest.raises(ValueError, match="cannot tell which"):
        logic.alignNodes(None, dose, AlignOptions(), "engine", segmentations[0])
    ct, segmentation = logic.nodesForDose(dose)
    assert ct is not None and segmentation is None
    assert logic.alignNodes(ct, dose, AlignOptions(), "engine", segmentation).meta["structures"]["names"]


# ==== second reading N6: the import count follows symbolic links as the DICOM indexer does ================

needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs POSIX symlinks")


@needs_symlinks
def test_n6_import_counts_the_series_under_linked_folders(module, tmp_path, database):
    _phantom(tmp_path / "elsewhere", with_structures=False)
    expected = {
        str(pydicom.dcmread(str(p), stop_before_pixels=True).SeriesInstanceUID)
        for p in (tmp_path / "elsewhere" / "dicom").iterdir()
    }
    study = {
        str(pydicom.dcmread(str(p), stop_before_pixels=True).StudyInstanceUID)
        for p in (tmp_path / "elsewhere" / "dicom").iterdir()
    }
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / "a-link").symlink_to(tmp_path / "elsewhere" / "dicom", target_is_directory=True)
    (folder / "b-link").symlink_to(tmp_path / "elsewhere" / "dicom", target_is_directory=True)  # a second route
    (tmp_path / "elsewhere" / "dicom" / "loop").symlink_to(folder, target_is_directory=True)  # back up: a loop
    db, _loading = database
    logic = module.DoseAlignLogic()
    lines = []
    logic.logCallback = lines.append
    studies = logic.importFolderToDatabase(folder)
    # the mechanism: the indexer stored the files by their path through the first link, which os.walk never lists
    assert db.patients() and all("/a-link/" in path for path in db._headers)
    assert not any(db.seriesForFile(os.path.join(r, n)) for r, _d, names in os.walk(folder) for n in names)
    assert studies == sorted(study)
    assert lines[-1] == f"{len(expected)} series in 1 studies."
    assert len(expected) >= 2


# ==== second reading N5: the dose selector holds doses only, and the CT and structures follow the dose ======


class _Selector(_Widget):
    """A qMRMLNodeComboBox's attribute filter as qMRMLSortFilterProxyModel applies it (v5.8.1
    qMRMLSortFilterProxyModel.cxx:295-323): a node of a filtered type is listed only when it has the attribute,
    with any value when none was given (qMRMLNodeComboBox.h:140-146)."""

    def __init__(self, parameter=None, node_types=("vtkMRMLScalarVolumeNode",)):
        super().__init__(parameter)
        self.nodeTypes = list(node_types)
        self.attributes = {}

    def addAttribute(self, node_type, name, value=None):  # noqa: N802
        self.attributes[node_type] = (name, value)

    def listed(self, scene) -> list:
        listed = []
        for n in range(scene.GetNumberOfNodes()):
            node = scene.GetNthNode(n)
            types = [t for t in self.nodeTypes if node.IsA(t)]
            if not types or node.GetHideFromEditors():
                continue
            attribute = self.attributes.get(types[0])
            if attribute is not None:
                found = node.GetAttribute(attribute[0])
                if found is None or (attribute[1] is not None and found != attribute[1]):
                    continue
            listed.append(node)
        return listed


class _ModifiedParameterNode(_RecordingParameterNode):
    """Setting a parameter modifies the parameter node, as the wrapper's serializers do (SetParameter,
    SetNodeReferenceID: serializers.py:402-406 at v5.8.1), so the widget's ModifiedEvent observer runs."""

    PARAMETERS = ("doseVolume", "ctVolume", "segmentation", "inputFolder", "outputFolder")

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
        if name in self.PARAMETERS and "parameterNode" in self.__dict__:
            self.parameterNode.Modified()


def _panel(module, monkeypatch, node, **widgets):
    """The module's widget without Qt: ``ui`` holds stand-ins, the logic is the real one."""
    import types

    widget = module.DoseAlignWidget.__new__(module.DoseAlignWidget)
    module.VTKObservationMixin.__init__(widget)
    widget._parameterNode = widget._parameterNodeGuiTag = None
    widget._busy = False
    widget._followedDoseID = None
    widget._folderTexts = {}
    buttons = ["alignButton", "exportButton", "exportAllButton", "importFolderButton", "cancelButton"]
    buttons += ["loadStudyButton", "refreshStudiesButton", "studyComboBox"]
    buttons += ["inputFolderPathLineEdit", "outputFolderPathLineEdit"]
    widget.ui = types.SimpleNamespace(**{**{b: _Widget() for b in buttons}, **widgets})
    logic = module.DoseAlignLogic()
    monkeypatch.setattr(logic, "getParameterNode", lambda: node)
    monkeypatch.setattr(logic, "optionsFromParameterNode", lambda p: AlignOptions())
    widget.logic = logic
    widget.parent = types.SimpleNamespace(isEntered=True)
    return widget


def _two_patients(module, tmp_path, database) -> dict:
    """Two patients' studies, loaded as the DICOM browser loads them (no DoseAlign record of the files):
    patient ID -> {"ct", "dose", "segmentation"}."""
    db, _loading = database
    for name in ("A", "B"):
        _phantom(tmp_path / name, ct_size=(32, 32, 16), patient_id=f"DA-N5-{name}")
        db.add_folder(tmp_path / name / "dicom")
    logic = module.DoseAlignLogic()
    found = {}
    for patient in db.patients():
        (study,) = db.studiesForPatient(patient)
        nodes = [slicer.mrmlScene.GetNodeByID(i) for i in logic.loadStudy(study)]
        _loaded_by_the_dicom_module(module, nodes)
        roles = {}
        for node in nodes:
            if node.IsA("vtkMRMLSegmentationNode"):
                roles["segmentation"] = node
            elif logic.isDoseVolumeNode(node):
                roles["dose"] = node
            elif node.IsA("vtkMRMLScalarVolumeNode"):
                roles["ct"] = node
        assert set(roles) == {"ct", "dose", "segmentation"}
        found[patient] = roles
    return found


def test_n5_the_dose_selector_lists_only_slicerrt_doses(module, tmp_path, database, monkeypatch):
    _phantom(tmp_path, ct_size=(32, 32, 16))
    db, _loading = database
    db.add_folder(tmp_path / "dicom")
    logic = module.DoseAlignLogic()
    loaded = [slicer.mrmlScene.GetNodeByID(i) for i in logic.loadStudy(db.studiesForPatient(db.patients()[0])[0])]
    _loaded_by_the_dicom_module(module, loaded)
    (dose,) = logic.doseVolumeNodes()
    (ct,) = logic.ctVolumeNodes()
    unfiltered = _Selector("doseVolume")
    assert unfiltered.listed(slicer.mrmlScene)[0] is ct  # the first node to enter an empty list: the CT
    selector = _Selector("doseVolume")
    widget = _panel(module, monkeypatch, _ModifiedParameterNode(slicer.mrmlScene), doseVolumeSelector=selector)
    widget._filterSelectors()
    assert selector.attributes == {"vtkMRMLScalarVolumeNode": (slicer_app.DOSE_ATTRIBUTE, None)}
    assert selector.listed(slicer.mrmlScene) == [dose]  # what SlicerRT's LoadRtDose tags, nothing else
    node = _ModifiedParameterNode(slicer.mrmlScene)
    node.doseVolume = ct  # what an unfiltered selector wrote into a saved parameter node
    widget = _panel(module, monkeypatch, node, doseVolumeSelector=selector)
    widget.initializeParameterNode()
    assert node.doseVolume is dose and node.ctVolume is ct


def test_n5_changing_the_dose_selects_its_ct_and_structures(module, tmp_path, database, monkeypatch):
    patients = _two_patients(module, tmp_path, database)
    a, b = (patients[p] for p in sorted(patients))
    node = _ModifiedParameterNode(slicer.mrmlScene)
    widget = _panel(module, monkeypatch, node, doseVolumeSelector=_Selector("doseVolume"))
    lines = []
    widget.logic.logCallback = lines.append
    widget.setParameterNode(node)
    node.doseVolume = a["dose"]
    assert (node.ctVolume, node.segmentation) == (a["ct"], a["segmentation"])
    node.doseVolume = b["dose"]  # another patient's dose: A's CT and structures must not go with it
    assert (node.ctVolume, node.segmentation) == (b["ct"], b["segmentation"])
    node.ctVolume = None  # the user's choice for this dose stays while the dose does
    node.segmentation = None
    assert (node.ctVolume, node.segmentation) == (None, None)
    stray = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "dose from elsewhere")
    stray.SetAttribute(slicer_app.DOSE_ATTRIBUTE, "1")  # no DICOM file to find its case by
    node.doseVolume = a["dose"]
    node.doseVolume = stray
    assert (node.ctVolume, node.segmentation) == (None, None)
    assert "dose from elsewhere: its CT and structures cannot be found" in lines[-1]


# ==== second reading N4: the folder fields show the folder or nothing, never "." =============================


class _PathLineEdit:
    """ctkPathLineEdit as the module uses it (CTK 82cae578 Libs/Widgets/ctkPathLineEdit.cpp): a settingKey with a
    history shows the most recent path while the field is empty (retrieveHistory, :694-727); setting currentPath
    sets the text; each text change runs updateHasValidInput (:819-839), which emits currentPathChanged(text) only
    for text the validator accepts (without nameFilters ".+", ctkUtils.cpp:177-180: never for an empty field) and
    validInputChanged(valid) when that flips (HasValidInput starts false, :312)."""

    SIGNALS = ("currentPathChanged(QString)", "validInputChanged(bool)")

    def __init__(self, history=()):
        self._text = history[0] if history else ""
        self._valid = bool(self._text)  # the history was shown before anything was connected
        self._slots = {signal: [] for signal in self.SIGNALS}
        self.writes = []

    def connect(self, signal, slot):
        self._slots[signal].append(slot)

    @property
    def currentPath(self):  # noqa: N802 - CTK's name
        return self._text

    @currentPath.setter
    def currentPath(self, text):  # noqa: N802
        self.writes.append(text)
        self.type(text)

    def property(self, name):
        return None  # not bound through SlicerParameterName

    def type(self, text):
        """What the user's typing does."""
        self._text = text
        valid, changed = bool(text), bool(text) != self._valid
        self._valid = valid
        if valid:
            for slot in self._slots["currentPathChanged(QString)"]:
                slot(text)
        if changed:
            for slot in self._slots["validInputChanged(bool)"]:
                slot(valid)


def _folder_panel(module, monkeypatch, node, input_history=(), output_history=()):
    fields = {"inputFolderPathLineEdit": _PathLineEdit(input_history)}
    fields["outputFolderPathLineEdit"] = _PathLineEdit(output_history)
    widget = _panel(module, monkeypatch, node, **fields)
    widget._connectFolderFields()  # what setup() connects
    return widget, fields["inputFolderPathLineEdit"], fields["outputFolderPathLineEdit"]


def test_n4_folder_fields_show_the_last_folder_or_nothing(module, monkeypatch, tmp_path):
    import pathlib

    node = _ModifiedParameterNode(slicer.mrmlScene)
    node.inputFolder = node.outputFolder = pathlib.Path()  # PathSerializer.default(): unset, str() is "."
    assert str(node.outputFolder) == "."  # what the wrapper's connector wrote into a bound field
    widget, input_field, output_field = _folder_panel(module, monkeypatch, node, input_history=[str(tmp_path)])
    widget.setParameterNode(node)
    assert input_field.currentPath == str(tmp_path) and node.inputFolder == tmp_path  # the last folder, in use
    assert output_field.currentPath == "" and module.isEmptyPath(node.outputFolder)  # no history: empty
    assert widget.ui.importFolderButton.enabled is True and widget.ui.exportButton.enabled is False
    node.parameterNode.Modified()  # any other change of the parameter node leaves the fields as they are
    node.doseVolume = None
    assert (input_field.currentPath, output_field.currentPath) == (str(tmp_path), "")
    output_field.type(f"{tmp_path}/out/")  # typed: the parameter follows, the text is not rewritten under the user
    assert node.outputFolder == tmp_path / "out" and output_field.currentPath == f"{tmp_path}/out/"
    node.parameterNode.Modified()
    assert output_field.currentPath == f"{tmp_path}/out/"
    node.outputFolder = tmp_path / "elsewhere"  # set by code (a script, a saved scene): shown
    assert output_field.currentPath == str(tmp_path / "elsewhere")
    node.outputFolder = pathlib.Path()  # unset by code: an empty field, not "."
    assert output_field.currentPath == "" and "." not in output_field.writes + input_field.writes


def test_n4_a_saved_folder_wins_over_the_history(module, monkeypatch, tmp_path):
    node = _ModifiedParameterNode(slicer.mrmlScene)
    node.inputFolder, node.outputFolder = tmp_path / "saved", tmp_path / "saved-out"
    widget, input_field, output_field = _folder_panel(
        module, monkeypatch, node, input_history=["/recent/in"], output_history=["/recent/out"]
    )
    widget.setParameterNode(node)
    assert (input_field.currentPath, output_field.currentPath) == (str(tmp_path / "saved"), str(tmp_path / "saved-out"))
    assert (node.inputFolder, node.outputFolder) == (tmp_path / "saved", tmp_path / "saved-out")


def test_f1_emptying_a_folder_field_clears_its_parameter(module, monkeypatch, tmp_path):
    node = _ModifiedParameterNode(slicer.mrmlScene)
    node.inputFolder = node.outputFolder = tmp_path / "saved"
    widget, input_field, output_field = _folder_panel(module, monkeypatch, node, output_history=["/recent/out"])
    widget.setParameterNode(node)
    assert (input_field.currentPath, output_field.currentPath) == (str(tmp_path / "saved"),) * 2
    output_field.type(str(tmp_path / "typed"))
    assert node.outputFolder == tmp_path / "typed"
    output_field.type("")  # the user empties the field: CTK sends validInputChanged(false), no currentPathChanged
    assert module.isEmptyPath(node.outputFolder) and output_field.currentPath == ""
    node.ctVolume = None  # a later change of the parameter node leaves the field empty
    assert output_field.currentPath == "" and module.isEmptyPath(node.outputFolder)
    assert "." not in output_field.writes
    input_field.type("")  # the same for the input folder, which was set on connection
    assert module.isEmptyPath(node.inputFolder) and widget.ui.importFolderButton.enabled is False
    input_field.type(str(tmp_path))  # typing again sets it
    assert node.inputFolder == tmp_path and widget.ui.importFolderButton.enabled is True


# ==== third reading F3: the dose follows only while the module is shown, never during a scene import ==========


def test_f3_the_dose_is_followed_only_while_shown_and_not_during_an_import(module, tmp_path, database, monkeypatch):
    patients = _two_patients(module, tmp_path, database)
    a, b = (patients[p] for p in sorted(patients))
    node = _ModifiedParameterNode(slicer.mrmlScene)
    widget = _panel(module, monkeypatch, node, doseVolumeSelector=_Selector("doseVolume"))
    scans = []
    case_for_dose = widget.logic.caseForDose
    monkeypatch.setattr(widget.logic, "caseForDose", lambda dose: scans.append(dose.GetID()) or case_for_dose(dose))
    widget._observeScene()  # what setup() connects
    try:
        widget.setParameterNode(node)
        widget.parent.isEntered = False  # the panel was closed (exit()); its parameter-node observer stays
        node.doseVolume = a["dose"]  # what the dose selector takes when the DICOM browser loads a study
        assert scans == [] and (node.ctVolume, node.segmentation) == (None, None)
        widget.parent.isEntered = True  # Slicer sets it before calling the module's enter()
        widget.enter()
        assert scans == [a["dose"].GetID()]
        assert (node.ctVolume, node.segmentation) == (a["ct"], a["segmentation"])
        slicer.mrmlScene.StartState(slicer.mrmlScene.ImportState)  # a saved scene's parameter node: B's dose, A's CT
        node.doseVolume = b["dose"]
        node.segmentation = None
        slicer.mrmlScene.EndState(slicer.mrmlScene.ImportState)
        node.outputFolder = tmp_path / "out"  # a later, unrelated change keeps the choice saved with the dose
        assert len(scans) == 1 and (node.doseVolume, node.ctVolume, node.segmentation) == (b["dose"], a["ct"], None)
        node.doseVolume = a["dose"]  # shown, no import: the dose is followed again
        assert len(scans) == 2 and (node.ctVolume, node.segmentation) == (a["ct"], a["segmentation"])
    finally:
        widget.cleanup()  # the scene observers go with the widget, as when Slicer closes
