"""The MRML bridge (DoseAlignMRML.volumes) against real MRML from PyPI ``slicer-core``.

The oracle for node geometry is written here independently of the engine: it builds IJKToRAS
the way a Slicer/SlicerRT RTDOSE load does (vtkITK over ITK GDCMImageIO: direction columns =
IOP row, IOP column, row x column; spacing = PixelSpacing[1], PixelSpacing[0],
GridFrameOffsetVector[1] - [0]; origin = ImagePositionPatient; then LPS -> RAS).
"""

from __future__ import annotations

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
