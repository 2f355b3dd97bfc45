"""The MRML bridge (DoseAlignMRML.volumes) against real MRML from PyPI ``slicer-core``.

The oracle for node geometry is written here independently of the engine: it builds IJKToRAS
the way a Slicer/SlicerRT RTDOSE load does (vtkITK over ITK GDCMImageIO: direction columns =
IOP row, IOP column, row x column; spacing = PixelSpacing[1], PixelSpacing[0],
GridFrameOffsetVector[1] - [0]; origin = ImagePositionPatient; then LPS -> RAS).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
pytest.importorskip("slicer.util")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no MRML (install slicer-core)", allow_module_level=True)

from DoseAlignLib.errors import GeometryError, InputError  # noqa: E402
from DoseAlignLib.geometry.grid import Grid, Volume  # noqa: E402
from DoseAlignMRML import volumes as mrml  # noqa: E402

pytestmark = pytest.mark.slicer_core

# ImageOrientationPatient per patient position (row direction, column direction), LPS.
_C, _S = np.cos(np.deg2rad(20.0)), np.sin(np.deg2rad(20.0))
ORIENTATIONS = {
    "HFS": [1, 0, 0, 0, 1, 0],
    "FFS": [-1, 0, 0, 0, 1, 0],
    "HFP": [-1, 0, 0, 0, -1, 0],
    "FFP": [1, 0, 0, 0, -1, 0],
    # rotated 20 degrees about the patient's S axis, then tilted: a non-axial, non-trivial frame
    "oblique": [_C, _S, 0.0, -_S * 0.9, _C * 0.9, float(np.sqrt(1 - 0.81))],
}


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def slicer_rt_ijk_to_ras(ipp, iop, pixel_spacing, offsets) -> np.ndarray:
    """IJKToRAS as vtkITK builds it for a multi-frame RTDOSE read through GDCM (independent oracle)."""
    row = np.asarray(iop[:3], dtype=float)
    col = np.asarray(iop[3:], dtype=float)
    row /= np.linalg.norm(row)
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    spacing = [float(pixel_spacing[1]), float(pixel_spacing[0]), float(offsets[1] - offsets[0])]
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.column_stack([row, col, normal]) * spacing
    ijk_to_lps[:3, 3] = ipp
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps


def dose_like_grid(orientation: str, shape=(6, 7, 9)) -> tuple:
    ipp = [-101.5, 37.25, -412.0]
    iop = ORIENTATIONS[orientation]
    pixel_spacing = [2.5, 3.0]  # rows apart, columns apart
    offsets = np.arange(shape[0]) * 2.0
    grid = Grid.from_dicom(
        image_position=ipp,
        image_orientation=iop,
        pixel_spacing=pixel_spacing,
        slice_offsets=offsets,
        rows=shape[1],
        columns=shape[2],
        frame_of_reference_uid="1.2.3.4",
    )
    return grid, slicer_rt_ijk_to_ras(ipp, iop, pixel_spacing, offsets)


def index_volume(grid: Grid) -> Volume:
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    return Volume((100.0 * k + 10.0 * j + i).astype(np.float32), grid, "GY")


# ---- geometry --------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_node_ijk_to_ras_matches_slicer_rt_construction(scene, orientation):
    grid, expected = dose_like_grid(orientation)
    np.testing.assert_allclose(grid.ras_affine(), expected, atol=1e-9)
    node = mrml.volume_node_from_volume(index_volume(grid), scene, "dose")
    np.testing.assert_allclose(mrml.node_ijk_to_ras(node), expected, atol=1e-9)
    np.testing.assert_allclose(np.array(node.GetSpacing()), [3.0, 2.5, 2.0], atol=1e-12)
    np.testing.assert_allclose(mrml.lps_to_ras_points(grid.origin), node.GetOrigin(), atol=1e-9)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_array_from_volume_is_kji(scene, orientation):
    from slicer.util import arrayFromVolume

    grid, _ = dose_like_grid(orientation)
    volume = index_volume(grid)
    node = mrml.volume_node_from_volume(volume, scene, "dose")
    view = arrayFromVolume(node)
    assert view.shape == grid.shape
    np.testing.assert_array_equal(view, volume.array)
    image = node.GetImageData()
    assert image.GetDimensions() == (grid.shape[2], grid.shape[1], grid.shape[0])
    for i, j, k in [(0, 0, 0), (8, 0, 0), (0, 6, 0), (0, 0, 5), (8, 6, 5), (3, 2, 1)]:
        assert image.GetScalarComponentAsDouble(i, j, k, 0) == volume.array[k, j, i]


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_voxel_positions_agree_between_node_and_grid(scene, orientation):
    grid, _ = dose_like_grid(orientation)
    node = mrml.volume_node_from_volume(index_volume(grid), scene, "dose")
    ijk_to_ras = mrml.node_ijk_to_ras(node)
    rng = np.random.default_rng(7)
    ijk = rng.uniform(-1, 8, size=(20, 3))
    ras = (np.c_[ijk, np.ones(len(ijk))] @ ijk_to_ras.T)[:, :3]
    np.testing.assert_allclose(mrml.ras_to_lps_points(ras), grid.index_to_lps(ijk), atol=1e-9)


def test_ras_lps_helpers_round_trip():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(5, 3)) * 100
    np.testing.assert_allclose(mrml.ras_to_lps_points(mrml.lps_to_ras_points(points)), points)
    affine = np.eye(4)
    affine[:3, :3] = rng.normal(size=(3, 3))
    affine[:3, 3] = rng.normal(size=3)
    np.testing.assert_allclose(mrml.ras_to_lps_affine(mrml.lps_to_ras_affine(affine)), affine)
    assert mrml.lps_to_ras_points([1.0, 2.0, 3.0]).tolist() == [-1.0, -2.0, 3.0]


# ---- round trip ------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_round_trip_volume_node_volume_node(scene, orientation):
    grid, _ = dose_like_grid(orientation)
    volume = index_volume(grid)
    node = mrml.volume_node_from_volume(volume, scene, "dose")
    back = mrml.volume_from_node(node, units="GY", frame_of_reference_uid=grid.frame_of_reference_uid)
    assert back.grid.equal(grid)
    assert back.units == "GY"
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, volume.array)
    # the copy is independent of VTK's memory
    back.array[0, 0, 0] = -1.0
    assert mrml.volume_from_node(node).array[0, 0, 0] == 0.0
    again = mrml.volume_node_from_volume(back, scene, "again")
    np.testing.assert_allclose(mrml.node_ijk_to_ras(again), mrml.node_ijk_to_ras(node), atol=1e-12)
    assert mrml.geometry_difference(again, grid) is None


def test_labelmap_nodes_and_integer_types(scene):
    grid, _ = dose_like_grid("HFS")
    mask = np.zeros(grid.shape, dtype=bool)
    mask[1:3, 2:5, 3:7] = True
    node = mrml.volume_node_from_volume(Volume(mask, grid), scene, "PTV", node_class=mrml.LABELMAP_VOLUME_CLASS)
    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    back = mrml.volume_from_node(node)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array.astype(bool), mask)
    wide = Volume(np.full(grid.shape, 7, dtype=np.int64), grid)
    assert mrml.volume_from_node(mrml.volume_node_from_volume(wide, scene, "wide")).array.dtype == np.int32
    with pytest.raises(InputError):
        mrml.volume_node_from_volume(Volume(np.full(grid.shape, 2**40, dtype=np.int64), grid), scene, "huge")


def test_update_node_replaces_voxels_and_geometry(scene):
    grid_a, _ = dose_like_grid("HFS")
    grid_b, expected_b = dose_like_grid("oblique", shape=(4, 5, 6))
    node = mrml.volume_node_from_volume(index_volume(grid_a), scene, "dose")
    assert mrml.geometry_difference(node, grid_b) is not None
    mrml.update_node(node, index_volume(grid_b))
    np.testing.assert_allclose(mrml.node_ijk_to_ras(node), expected_b, atol=1e-9)
    assert mrml.geometry_difference(node, grid_b) is None


# ---- refusals --------------------------------------------------------------------------------------


def test_non_uniform_grid_is_refused(scene):
    grid = Grid.from_dicom(
        image_position=[0, 0, 0],
        image_orientation=[1, 0, 0, 0, 1, 0],
        pixel_spacing=[2, 2],
        slice_offsets=[0, 2, 4, 8, 10],
        rows=3,
        columns=4,
    )
    assert not grid.is_uniform
    with pytest.raises(GeometryError, match="not evenly spaced"):
        mrml.volume_node_from_volume(Volume(np.zeros(grid.shape, np.float32), grid), scene, "dose")
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


def test_geometry_difference_reports_first_two_offsets_trap(scene):
    """GDCM takes the k step from the first two frame offsets; the engine keeps every offset."""
    offsets = [0.0, 2.0, 4.0, 8.0, 10.0]
    ipp, iop, spacing = [10.0, -20.0, 30.0], ORIENTATIONS["HFS"], [2.0, 2.0]
    exact = Grid.from_dicom(
        image_position=ipp, image_orientation=iop, pixel_spacing=spacing, slice_offsets=offsets, rows=3, columns=4
    )
    gdcm = Grid(exact.shape, mrml.ras_to_lps_affine(slicer_rt_ijk_to_ras(ipp, iop, spacing, offsets)))
    node = mrml.volume_node_from_volume(Volume(np.zeros(exact.shape, np.float32), gdcm), scene, "dose")
    reason = mrml.geometry_difference(node, exact)
    assert reason is not None and "mm" in reason


def test_parent_transform_is_refused_until_hardened(scene):
    grid, _ = dose_like_grid("HFS")
    node = mrml.volume_node_from_volume(index_volume(grid), scene, "dose")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = np.eye(4)
    matrix[:3, 3] = [5.0, 0.0, 0.0]
    transform.SetMatrixTransformToParent(mrml.array_to_vtk_matrix(matrix))
    node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(GeometryError, match="transform"):
        mrml.volume_from_node(node)
    node.HardenTransform()
    hardened = mrml.volume_from_node(node)
    np.testing.assert_allclose(hardened.grid.origin, grid.origin + [-5.0, 0.0, 0.0], atol=1e-9)  # +5 R = -5 L


def test_node_without_image_data_is_refused(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no image data"):
        mrml.volume_from_node(node)
    with pytest.raises(InputError):
        mrml.volume_from_node(None)


# ---- in-process resampling -----------------------------------------------------------------------------

LINEAR_COEFFS = np.array([0.31, -0.17, 0.23])
LINEAR_OFFSET = 150.0


def linear_field(points_lps: np.ndarray) -> np.ndarray:
    return points_lps @ LINEAR_COEFFS + LINEAR_OFFSET


def field_volume(grid: Grid) -> Volume:
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).astype(np.float64)
    return Volume(linear_field(grid.index_to_lps(ijk)).astype(np.float32), grid, "GY")


@pytest.mark.parametrize("orientation", ["HFS", "FFS", "HFP", "oblique"])
def test_resample_in_process_is_exact_for_linear_fields(scene, orientation):
    """Trilinear interpolation reproduces a linear field: compare with the analytic values inside."""
    dose_grid, _ = dose_like_grid(orientation, shape=(14, 16, 18))
    # a CT-like reference: HFS, finer, larger than the dose grid (so part of it lies outside) and
    # shifted so that its voxel centres fall between dose voxels
    ct_shape, ct_spacing = (36, 44, 52), np.array([1.37, 1.21, 1.13])
    centre = dose_grid.corner_points().mean(axis=0) + [0.31, -0.27, 0.19]
    ct_grid = Grid.from_spacing(ct_shape, ct_spacing, centre - ct_spacing * (np.array(ct_shape[::-1]) - 1) / 2)
    dose_node = mrml.volume_node_from_volume(field_volume(dose_grid), scene, "dose")
    ct_node = mrml.volume_node_from_volume(Volume(np.zeros(ct_grid.shape, np.int16), ct_grid), scene, "ct")
    out = mrml.resample_in_process(dose_node, ct_node, name="dose on CT")
    assert out.GetName() == "dose on CT"
    result = mrml.volume_from_node(out)
    assert result.grid.equal(ct_grid)

    k, j, i = np.meshgrid(*(np.arange(n) for n in ct_grid.shape), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).astype(np.float64)
    points = ct_grid.index_to_lps(ijk)
    in_dose = dose_grid.lps_to_index(points)
    upper = np.array([dose_grid.shape[2], dose_grid.shape[1], dose_grid.shape[0]]) - 1
    inside = np.all((in_dose >= 0.01) & (in_dose <= upper - 0.01), axis=-1)
    outside = np.any((in_dose < -1.0) | (in_dose > upper + 1.0), axis=-1)
    assert inside.sum() > 500, "the test grids must overlap"
    expected = linear_field(points)
    error = np.abs(result.array.astype(np.float64) - expected)[inside]
    assert error.max() <= 1e-4 * np.abs(expected[inside]).max()
    assert outside.sum() > 500, "part of the reference must lie outside the dose grid"
    assert np.all(result.array[outside] == 0)  # background 0 outside the dose grid


def test_resample_in_process_refuses_transformed_reference(scene):
    grid, _ = dose_like_grid("HFS")
    a = mrml.volume_node_from_volume(index_volume(grid), scene, "a")
    b = mrml.volume_node_from_volume(index_volume(grid), scene, "b")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "t")
    b.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(GeometryError, match="transform"):
        mrml.resample_in_process(a, b)


# ---- DoseAlignLogic on real MRML ------------------------------------------------------------------
#
# DoseAlign.py needs the Slicer application for its GUI and DICOM parts, but its geometry and export
# logic runs on MRML alone. The Qt-only modules it imports (slicer.ScriptedLoadableModule, slicer.i18n,
# slicer.parameterNodeWrapper) are replaced by minimal stand-ins; everything else is slicer-core.


def _stub_modules() -> dict:
    import types
    import unittest

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

    for cls in (
        ScriptedLoadableModule,
        ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    ):
        setattr(scripted, cls.__name__, cls)
    scripted.__all__ = [
        "ScriptedLoadableModule",
        "ScriptedLoadableModuleWidget",
        "ScriptedLoadableModuleLogic",
        "ScriptedLoadableModuleTest",
    ]

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.WithinRange = lambda low, high: ("WithinRange", low, high)
    return {"slicer.i18n": i18n, "slicer.ScriptedLoadableModule": scripted, "slicer.parameterNodeWrapper": wrapper}


@pytest.fixture()
def module(monkeypatch, tmp_path_factory):
    """``DoseAlign.py`` imported against slicer-core, with a fresh scene as ``slicer.mrmlScene``."""
    import sys
    import types

    for name, stub in _stub_modules().items():
        monkeypatch.setitem(sys.modules, name, stub)
        monkeypatch.setattr(slicer, name.split(".", 1)[1], stub, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    app = types.SimpleNamespace(
        applicationVersion="slicer-core",
        revision="0",
        layoutManager=lambda: None,
        processEvents=lambda: None,
        temporaryPath=str(tmp_path_factory.mktemp("slicer-temp")),
    )
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.delitem(sys.modules, "DoseAlign", raising=False)
    monkeypatch.delitem(sys.modules, "DoseAlignBatch", raising=False)
    import DoseAlign

    return DoseAlign


def _phantom(tmp_path, **spec):
    phantom = pytest.importorskip("DoseAlignLib.phantom")
    return phantom.write_phantom(tmp_path / "dicom", phantom.PhantomSpec(**spec))


def gdcm_like_dose_node(path, scene, scaling=None):
    """The dose node a Slicer/SlicerRT load gives: frames in file order, k step = GFOV[1] - GFOV[0]."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    pixel_spacing = [float(v) for v in ds.PixelSpacing]
    gfov = [float(v) for v in ds.GridFrameOffsetVector]
    affine = np.eye(4)
    affine[:3, 0] = row * pixel_spacing[1]
    affine[:3, 1] = col * pixel_spacing[0]
    affine[:3, 2] = np.cross(row, col) * (gfov[1] - gfov[0])
    affine[:3, 3] = [float(v) for v in ds.ImagePositionPatient]
    values = ds.pixel_array.astype(np.float32) * np.float32(float(ds.DoseGridScaling) if scaling is None else scaling)
    return mrml.volume_node_from_volume(Volume(values, Grid(values.shape, affine)), scene, "RTDOSE")


def test_module_options_from_parameter_values(module):
    import types

    logic = module.DoseAlignLogic()
    params = types.SimpleNamespace(
        referenceGrid=module.ReferenceGridChoice.CUSTOM,
        interpolator=module.InterpolatorChoice.BSPLINE,
        customSpacing="1, 1, 2.5",
        customBox=module.CustomBoxChoice.CUBE,
        ctFillValue=-1024.0,
        allowRelativeDose=False,
        structures=False,
    )
    options = logic.optionsFromParameterNode(params)
    assert options.reference.value == "custom" and options.interpolator.value == "bs"
    assert options.custom_spacing == (1.0, 1.0, 2.5) and options.custom_box.value == "cube"
    assert options.ct_fill_hu == -1024.0 and options.structures is False
    params.customSpacing = "two"
    with pytest.raises(ValueError):
        logic.optionsFromParameterNode(params)
    # every choice has a label, and its value is a value the engine accepts
    for choice in module.InterpolatorChoice:
        assert choice.label() and module.AlignOptions(interpolator=choice.value)
    for choice in module.ReferenceGridChoice:
        assert choice.label()


def test_verify_dose_geometry_rebuilds_decreasing_frames(module, tmp_path):
    truth = _phantom(tmp_path, frame_order="decreasing")
    from DoseAlignLib.dicom.rtdose import read_rtdose

    expected, _geometry, _info = read_rtdose(truth.dose_files[0])
    node = gdcm_like_dose_node(truth.dose_files[0], slicer.mrmlScene)
    assert mrml.geometry_difference(node, expected.grid) is not None  # Slicer's k runs the other way
    logic = module.DoseAlignLogic()
    with pytest.raises(GeometryError):
        logic.verifyDoseGeometry(node, str(truth.dose_files[0]), fix=False)
    check = logic.verifyDoseGeometry(node, str(truth.dose_files[0]))
    assert check["status"] == "fixed" and "grid" in check["note"]
    assert mrml.geometry_difference(node, expected.grid) is None
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), expected.array)
    assert logic.verifyDoseGeometry(node, str(truth.dose_files[0]))["status"] == "ok"


def test_verify_dose_geometry_fixes_wrong_scaling(module, tmp_path):
    truth = _phantom(tmp_path)
    node = gdcm_like_dose_node(truth.dose_files[0], slicer.mrmlScene, scaling=0.0001)  # SlicerRT's default
    check = module.DoseAlignLogic().verifyDoseGeometry(node, str(truth.dose_files[0]))
    assert check["status"] == "fixed" and "DoseGridScaling" in check["note"]


def test_verify_dose_geometry_refuses_uneven_frames(module, tmp_path):
    offsets = (0, 3, 6, 9, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48, 51, 54, 57, 60)
    truth = _phantom(tmp_path, dose_frame_offsets=offsets)
    node = gdcm_like_dose_node(truth.dose_files[0], slicer.mrmlScene)
    with pytest.raises(GeometryError, match="unevenly spaced") as raised:
        module.DoseAlignLogic().verifyDoseGeometry(node, str(truth.dose_files[0]))
    assert "3004,000C" in str(raised.value) and "engine" in str(raised.value)


def _interior(target_grid, source_grid, margin=1.0):
    k, j, i = np.meshgrid(*(np.arange(n) for n in target_grid.shape), indexing="ij")
    index = source_grid.lps_to_index(target_grid.index_to_lps(np.stack([i, j, k], axis=-1).astype(np.float64)))
    upper = np.array(source_grid.shape[::-1]) - 1
    inside = np.all((index >= margin) & (index <= upper - margin), axis=-1)
    outside = np.any((index < -1.0) | (index > upper + 1.0), axis=-1)
    return inside, outside


@pytest.mark.parametrize(
    "reference, extra",
    [("ct", {}), ("dose", {}), ("custom", {"custom_spacing": (2.0, 2.0, 2.0), "custom_box": "ct"})],
)
def test_in_process_export_equals_engine_export(module, tmp_path, reference, extra):
    """The bridge route (nodes -> in-process resampling -> engine writer) writes what `dosealign export` writes."""
    import json

    from DoseAlignLib.dicom.ct import read_ct
    from DoseAlignLib.dicom.rtdose import read_rtdose
    from DoseAlignLib.dicom.scan import scan_folder
    from DoseAlignLib.link.cases import form_cases
    from DoseAlignLib.options import AlignOptions
    from DoseAlignLib.output.case_folder import write_case_output
    from DoseAlignLib.output.manifest import manifest_row
    from DoseAlignLib.pipeline import run_case

    truth = _phantom(tmp_path, patient_position="FFS")
    (case,) = form_cases(scan_folder(tmp_path / "dicom")).cases
    options = AlignOptions(reference=reference, structures=False, **extra)
    engine_folder = write_case_output(run_case(case, options), tmp_path / "engine")

    scene = slicer.mrmlScene
    ct_node = mrml.volume_node_from_volume(read_ct(case.ct), scene, "CT")  # stands in for the DICOM scalar plugin
    dose_node = gdcm_like_dose_node(truth.dose_files[0], scene)
    logic = module.DoseAlignLogic()
    logic.doseFileForNode = lambda node: str(truth.dose_files[0])  # normally from the DICOM database
    aligned = logic.alignNodes(ct_node, [dose_node], options, "inprocess", caseId=case.case_id)
    slicer_folder = logic.exportAligned(aligned, tmp_path / "slicer", options)
    assert slicer_folder.name == engine_folder.name == case.case_id

    expected, actual = np.load(engine_folder / "pair.npz"), np.load(slicer_folder / "pair.npz")
    assert sorted(actual.files) == sorted(expected.files) == ["ct", "dose"]
    engine_meta = json.loads((engine_folder / "meta.json").read_text())
    slicer_meta = json.loads((slicer_folder / "meta.json").read_text())
    assert slicer_meta["shape"] == engine_meta["shape"]
    np.testing.assert_allclose(slicer_meta["ijk_to_lps"], engine_meta["ijk_to_lps"], atol=1e-6)
    for key in ("ct", "dose"):
        assert actual[key].dtype == expected[key].dtype
    grid = Grid(tuple(engine_meta["shape"]), np.array(engine_meta["ijk_to_lps"]))
    dose_grid = read_rtdose(truth.dose_files[0])[0].grid
    inside_dose, _ = _interior(grid, dose_grid)
    assert inside_dose.sum() > 100
    dmax = float(expected["dose"].max())
    dose_error = np.abs(actual["dose"].astype(np.float64) - expected["dose"])[inside_dose].max()
    assert dose_error <= 1e-4 * dmax
    inside_ct, outside_ct = _interior(grid, mrml.grid_from_node(ct_node))
    ct_error = np.abs(actual["ct"].astype(np.int32) - expected["ct"])[inside_ct].max()
    assert ct_error <= (0 if reference == "ct" else 1)  # linear CT resampling, rounded to whole HU
    assert np.all(actual["ct"][outside_ct] == options.ct_fill_hu)
    row = manifest_row(case, "ok", "", slicer_meta)
    assert row["shape"] == "x".join(str(n) for n in engine_meta["shape"])


def test_batch_script_exit_codes(module, tmp_path, monkeypatch, capsys):
    """DoseAlignBatch.main: usage errors and a full engine-backend run, with a stand-in DICOM database."""
    import contextlib
    import sys
    import types

    dicom_utils = types.SimpleNamespace(TemporaryDICOMDatabase=contextlib.nullcontext, openDatabase=lambda path: False)
    dicom_lib = types.ModuleType("DICOMLib")
    dicom_lib.DICOMUtils = dicom_utils
    monkeypatch.setitem(sys.modules, "DICOMLib", dicom_lib)
    import DoseAlignBatch

    assert DoseAlignBatch.main(["--help"]) == 0
    assert DoseAlignBatch.main([]) == 2
    assert DoseAlignBatch.main(["--input", "x", "--output", "y", "--reference", "custom"]) == 2  # no --spacing
    assert DoseAlignBatch.main(["--input", "x", "--output", "y", "--database", str(tmp_path)]) == 2
    _phantom(tmp_path)
    out = tmp_path / "out"
    code = DoseAlignBatch.main(
        ["--input", str(tmp_path / "dicom"), "--output", str(out), "--backend", "engine", "--no-structures"]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "CASE " in printed and ": ok" in printed and (out / "manifest.csv").is_file()
    (case_dir,) = [p for p in out.iterdir() if p.is_dir()]
    assert (case_dir / "pair.npz").is_file() and (case_dir / "meta.json").is_file()


def test_batch_script_always_exits(module, tmp_path, monkeypatch):
    """Run as a script, every path ends in SystemExit with a code (Slicer would otherwise hang)."""
    import pathlib
    import runpy
    import sys

    script = pathlib.Path(__file__).resolve().parents[2] / "DoseAlign" / "DoseAlignBatch.py"
    for argv, code in ((["--bogus"], 2), (["--input", "a", "--output", "b"], 2)):
        monkeypatch.setattr(sys, "argv", [str(script), *argv])
        monkeypatch.delitem(sys.modules, "DICOMLib", raising=False)  # ImportError path -> usage error
        with pytest.raises(SystemExit) as raised:
            runpy.run_path(str(script), run_name="__main__")
        assert raised.value.code == code


@pytest.mark.parametrize("backend", ["inprocess", "engine"])
def test_align_case_with_structures_equals_engine_export(module, tmp_path, backend):
    """A whole case through DoseAlignLogic.alignCase + exportAligned writes the engine's pair.npz.

    Slicer's DICOM loading is replaced by what it yields: a CT node and SlicerRT-like dose nodes
    (frames in file order, GDCM's k step), flagged with the attribute SlicerRT sets.
    """
    import json

    from DoseAlignLib.dicom.ct import read_ct
    from DoseAlignLib.dicom.scan import scan_folder
    from DoseAlignLib.link.cases import form_cases
    from DoseAlignLib.options import AlignOptions
    from DoseAlignLib.output.case_folder import write_case_output
    from DoseAlignLib.pipeline import run_case

    _phantom(tmp_path, patient_position="HFP", frame_order="decreasing")
    (case,) = form_cases(scan_folder(tmp_path / "dicom")).cases
    options = AlignOptions()  # structures and audit on
    engine_folder = write_case_output(run_case(case, options), tmp_path / "engine")

    logic = module.DoseAlignLogic()
    dose_files = {}

    def load_like_slicer(file_lists, loadPlans=False):  # noqa: N803 - mirrors the logic's signature
        ct = mrml.volume_node_from_volume(read_ct(case.ct), slicer.mrmlScene, "CT")
        ids = [ct.GetID()]
        for files in file_lists[1:]:
            node = gdcm_like_dose_node(files[0], slicer.mrmlScene)
            node.SetAttribute(module.DoseAlignLogic.DOSE_VOLUME_ATTRIBUTE, "1")
            dose_files[node.GetID()] = files[0]
            ids.append(node.GetID())
        return ids

    logic.loadFileLists = load_like_slicer
    logic.doseFileForNode = lambda node: dose_files[node.GetID()]
    aligned = logic.alignCase(case, options, backend)
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0  # loaded nodes removed
    if backend == "inprocess":
        assert any("rebuilt" in flag for flag in aligned.flags)  # decreasing frames: Slicer's dose was wrong
    slicer_folder = logic.exportAligned(aligned, tmp_path / "slicer", options)

    expected, actual = np.load(engine_folder / "pair.npz"), np.load(slicer_folder / "pair.npz")
    assert sorted(actual.files) == sorted(expected.files)
    assert "masks" in actual.files and "body" in actual.files
    np.testing.assert_array_equal(actual["ct"], expected["ct"])
    np.testing.assert_array_equal(actual["masks"], expected["masks"])
    np.testing.assert_array_equal(actual["body"], expected["body"])
    dmax = float(expected["dose"].max())
    assert np.abs(actual["dose"] - expected["dose"]).max() <= 1e-4 * dmax
    engine_meta = json.loads((engine_folder / "meta.json").read_text())
    slicer_meta = json.loads((slicer_folder / "meta.json").read_text())
    assert slicer_meta["structures"]["names"] == engine_meta["structures"]["names"]
    assert slicer_meta["case_id"] == engine_meta["case_id"] == case.case_id
    for key in ("dmax_native_gy", "n_rois"):
        assert slicer_meta["manifest_extra"][key] == engine_meta["manifest_extra"][key]
    if backend == "inprocess":
        assert slicer_meta["slicer"]["backend"] == "inprocess"
        # the audit compares Slicer's resampled dose with the native dose exactly as it does the engine's
        engine_diff = engine_meta["audit"]["dose"]["dmax_diff_pct"]
        assert slicer_meta["audit"]["dose"]["dmax_diff_pct"] == pytest.approx(engine_diff, abs=1e-3)


def test_module_self_test_compares_with_the_engine(module, monkeypatch, tmp_path):
    """DoseAlignTest's comparison code, run with Slicer's DICOM loading replaced by what it yields."""
    import contextlib
    import sys
    import types

    from DoseAlignLib.dicom.ct import read_ct
    from DoseAlignLib.dicom.scan import scan_folder
    from DoseAlignLib.link.cases import form_cases

    dicom_lib = types.ModuleType("DICOMLib")
    dicom_lib.DICOMUtils = types.SimpleNamespace(TemporaryDICOMDatabase=lambda directory=None: contextlib.nullcontext())
    monkeypatch.setitem(sys.modules, "DICOMLib", dicom_lib)
    dose_files = {}

    def load_like_slicer(self, file_lists, loadPlans=False):  # noqa: N803
        (case,) = form_cases(scan_folder(pathlib.Path(file_lists[0][0]).parent)).cases
        ids = [mrml.volume_node_from_volume(read_ct(case.ct), slicer.mrmlScene, "CT").GetID()]
        for files in file_lists[1:]:
            node = gdcm_like_dose_node(files[0], slicer.mrmlScene)
            node.SetAttribute(module.DoseAlignLogic.DOSE_VOLUME_ATTRIBUTE, "1")
            dose_files[node.GetID()] = files[0]
            ids.append(node.GetID())
        return ids

    monkeypatch.setattr(module.DoseAlignLogic, "loadFileLists", load_like_slicer)
    monkeypatch.setattr(module.DoseAlignLogic, "importFolderToDatabase", lambda self, folder, database=None: [])
    monkeypatch.setattr(module.DoseAlignLogic, "doseFileForNode", lambda self, node: dose_files[node.GetID()])
    monkeypatch.setattr(slicer.util, "tempDirectory", lambda key, **kwargs: str(tmp_path / key))  # needs Qt
    tester = module.DoseAlignTest()
    tester._compareWithEngine("inprocess")
    assert (tmp_path / "DoseAlignTest-inprocess" / "slicer" / "manifest.csv").is_file()
