"""The MRML bridge: engine :class:`~DoseAlignLib.api.Volume` objects <-> Slicer volume nodes.

This is the one place where the engine's geometry (arrays ``[k, j, i]``, affine index -> LPS)
meets Slicer's (``vtkImageData`` plus an ``IJKToRAS`` matrix, world space RAS). It needs only
MRML and VTK, so it runs inside Slicer and, for tests, with PyPI ``slicer-core`` (MRML without
the application). ``slicer`` and ``vtk`` are imported inside the functions: importing this module
never needs them.

Conventions
-----------
* ``slicer.util.arrayFromVolume(node)`` has shape ``(K, J, I)``, the engine's order.
* ``IJKToRAS = diag(-1, -1, 1, 1) @ IJKToLPS``; the diagonal is its own inverse, so the same
  matrix converts back (:data:`LPS_TO_RAS` / :data:`RAS_TO_LPS`).
* A node only has a uniform grid. Engine grids with non-uniform slice positions (RTDOSE with an
  uneven GridFrameOffsetVector) are refused, never silently squeezed into a uniform one.
* Parent transforms are not part of a node's grid. Nodes under a transform are refused until
  the transform is hardened (``node.HardenTransform()``), as Slicer's CLIs ignore them too.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from DoseAlignLib.api import GRID_ATOL_MM, GeometryError, Grid, InputError, Volume

#: LPS <-> RAS: negate x and y. The matrix is its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
RAS_TO_LPS = LPS_TO_RAS

#: Node classes this bridge creates and reads.
SCALAR_VOLUME_CLASS = "vtkMRMLScalarVolumeNode"
LABELMAP_VOLUME_CLASS = "vtkMRMLLabelMapVolumeNode"

_HARDEN_HINT = "harden the transform first (node.HardenTransform() or Transforms module > Harden)"


# ---- RAS <-> LPS --------------------------------------------------------------------------------


def lps_to_ras_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel -> LPS affine ``(4, 4)`` to the voxel -> RAS affine (Slicer's IJKToRAS)."""
    return LPS_TO_RAS @ _as_affine(affine)


def ras_to_lps_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel -> RAS affine ``(4, 4)`` (Slicer's IJKToRAS) to the voxel -> LPS affine."""
    return RAS_TO_LPS @ _as_affine(affine)


def lps_to_ras_points(points: np.ndarray) -> np.ndarray:
    """LPS points ``(..., 3)`` to RAS points ``(..., 3)`` (x and y negated)."""
    points = np.array(points, dtype=np.float64)
    points[..., :2] *= -1.0
    return points


def ras_to_lps_points(points: np.ndarray) -> np.ndarray:
    """RAS points ``(..., 3)`` to LPS points ``(..., 3)`` (x and y negated)."""
    return lps_to_ras_points(points)


def _as_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise GeometryError(f"an affine must be 4x4, got shape {affine.shape}")
    return affine


# ---- VTK matrices ---------------------------------------------------------------------------------


def vtk_matrix_to_array(matrix) -> np.ndarray:
    """A ``vtkMatrix4x4`` as a float64 ``(4, 4)`` array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def array_to_vtk_matrix(array: np.ndarray):
    """A ``(4, 4)`` array as a new ``vtkMatrix4x4``."""
    import vtk

    array = _as_affine(array)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def node_ijk_to_ras(node) -> np.ndarray:
    """The node's IJKToRAS matrix ``(4, 4)``."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return vtk_matrix_to_array(matrix)


# ---- Grid <-> IJKToRAS --------------------------------------------------------------------------------


def grid_ijk_to_ras(grid: Grid) -> np.ndarray:
    """The IJKToRAS matrix ``(4, 4)`` a node needs to show ``grid``.

    Raises
    ------
    GeometryError
        When the grid has non-uniform slice positions: one matrix cannot place its slices.
    """
    if not grid.is_uniform:
        steps = np.diff(grid.k_offsets)
        raise GeometryError(
            f"the grid's slices are not evenly spaced (steps {steps.min():.4g} to {steps.max():.4g} mm); "
            "a Slicer volume node cannot hold it",
            hint="resample it onto a uniform grid with the engine first (the 'engine' backend does this exactly)",
        )
    return grid.ras_affine()


def grid_from_ijk_to_ras(ijk_to_ras: np.ndarray, shape: tuple, frame_of_reference_uid: Optional[str] = None) -> Grid:
    """The engine grid of a node: ``shape`` (K, J, I) and its IJKToRAS matrix ``(4, 4)``."""
    return Grid(tuple(int(n) for n in shape), ras_to_lps_affine(ijk_to_ras), frame_of_reference_uid)


def grid_from_node(node, frame_of_reference_uid: Optional[str] = None) -> Grid:
    """The engine grid of a volume node (its own IJKToRAS; any parent transform is not applied).

    Raises
    ------
    InputError
        When the node has no image data.
    """
    image = node.GetImageData() if node is not None else None
    if image is None:
        raise InputError(f"volume node {_node_name(node)} has no image data")
    dims = image.GetDimensions()  # (I, J, K)
    return grid_from_ijk_to_ras(node_ijk_to_ras(node), (dims[2], dims[1], dims[0]), frame_of_reference_uid)


def set_node_geometry(node, grid: Grid) -> None:
    """Give ``node`` the geometry of ``grid`` (IJKToRAS only; the voxels are left as they are)."""
    node.SetIJKToRASMatrix(array_to_vtk_matrix(grid_ijk_to_ras(grid)))


def geometry_difference(node, grid: Grid, atol: float = GRID_ATOL_MM) -> Optional[str]:
    """Why the node's grid differs from ``grid`` (shape, then voxel positions), or None if it does not.

    Positions are compared at the 8 corner voxel centres, so a flipped or shifted axis shows up as a
    distance in mm.
    """
    node_grid = grid_from_node(node)
    if node_grid.shape != grid.shape:
        return f"shape (K, J, I) {node_grid.shape} in Slicer, {grid.shape} from the DICOM tags"
    corners = np.array(
        [[i, j, k] for i in (0, grid.shape[2] - 1) for j in (0, grid.shape[1] - 1) for k in (0, grid.shape[0] - 1)],
        dtype=np.float64,
    )
    distance = np.linalg.norm(node_grid.index_to_lps(corners) - grid.index_to_lps(corners), axis=1).max()
    if distance > atol:
        spacing_node = ", ".join(f"{s:.4g}" for s in node_grid.spacing)
        spacing_tags = ", ".join(f"{s:.4g}" for s in grid.spacing)
        return (
            f"voxel positions differ by up to {distance:.3g} mm (spacing {spacing_node} mm in Slicer, "
            f"{spacing_tags} mm from the DICOM tags)"
        )
    return None


# ---- nodes <-> volumes ------------------------------------------------------------------------------


def volume_node_from_volume(
    volume: Volume,
    scene=None,
    name: str = "Volume",
    node_class: str = SCALAR_VOLUME_CLASS,
    create_display_nodes: bool = True,
):
    """A new volume node in ``scene`` holding a copy of ``volume``'s voxels on its grid.

    Parameters
    ----------
    volume : Volume
        ``array`` ``(K, J, I)``; bool is stored as uint8, int64 as int32 (VTK cannot show int64).
    scene : vtkMRMLScene, optional
        Defaults to ``slicer.mrmlScene`` (in the application).
    name : str
        Node name (made unique by the scene).
    node_class : str
        ``vtkMRMLScalarVolumeNode`` or ``vtkMRMLLabelMapVolumeNode``.
    create_display_nodes : bool
        Add the default display node so the volume can be shown.

    Raises
    ------
    GeometryError
        For grids with non-uniform slice positions.
    """
    ijk_to_ras = grid_ijk_to_ras(volume.grid)
    array = _vtk_compatible(np.asarray(volume.array))
    if scene is None:
        import slicer

        scene = slicer.mrmlScene
    node = scene.AddNewNodeByClass(node_class, name)
    _set_voxels(node, array)
    node.SetIJKToRASMatrix(array_to_vtk_matrix(ijk_to_ras))
    if create_display_nodes:
        node.CreateDefaultDisplayNodes()
    if volume.description:
        node.SetDescription(volume.description)
    return node


def update_node(node, volume: Volume) -> None:
    """Replace the voxels and the geometry of an existing volume node with ``volume``'s."""
    ijk_to_ras = grid_ijk_to_ras(volume.grid)
    _set_voxels(node, _vtk_compatible(np.asarray(volume.array)))
    node.SetIJKToRASMatrix(array_to_vtk_matrix(ijk_to_ras))


def volume_from_node(
    node,
    units: str = "",
    frame_of_reference_uid: Optional[str] = None,
    description: Optional[str] = None,
) -> Volume:
    """An engine Volume holding a copy of the node's voxels ``(K, J, I)`` and its grid (LPS).

    Raises
    ------
    GeometryError
        When the node sits under a parent transform (harden it first).
    InputError
        When the node has no image data or more than one component per voxel.
    """
    if node is None:
        raise InputError("no volume node given")
    if node.GetParentTransformNode() is not None:
        raise GeometryError(
            f"volume node {_node_name(node)} is under the transform "
            f"{_node_name(node.GetParentTransformNode())}, which its grid does not include",
            hint=_HARDEN_HINT,
        )
    grid = grid_from_node(node, frame_of_reference_uid)
    image = node.GetImageData()
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"volume node {_node_name(node)} has {image.GetNumberOfScalarComponents()} components per voxel; "
            "only scalar volumes can be exported"
        )
    from slicer.util import arrayFromVolume

    array = np.array(arrayFromVolume(node), copy=True)
    if description is None:
        description = node.GetName() or ""
    return Volume(array, grid, units, description)


def resample_in_process(input_node, reference_node, name: Optional[str] = None):
    """Resample ``input_node`` onto ``reference_node``'s grid, in this process, with VTK.

    Calls ``vtkSlicerVolumesLogic::ResampleVolumeToReferenceVolume`` (Slicer's Volumes module
    logic; also in PyPI ``slicer-core``): trilinear (nearest neighbour for labelmap nodes),
    background 0, a new node in the input's scene. Only the input's parent transform is honoured
    by that function, so a reference under a transform is refused here.

    Raises
    ------
    GeometryError
        When the reference node is under a parent transform.
    RuntimeError
        When the Volumes logic is missing or returns no node.
    """
    import slicer

    volumes_logic = getattr(slicer, "vtkSlicerVolumesLogic", None)
    if volumes_logic is None or not hasattr(volumes_logic, "ResampleVolumeToReferenceVolume"):
        raise RuntimeError(
            "slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume is not available here: "
            "it needs Slicer's Volumes module logic (Slicer >= 4.11, or PyPI slicer-core). "
            "Use the Resample CLI backend or the engine backend instead."
        )
    if reference_node.GetParentTransformNode() is not None:
        raise GeometryError(
            f"reference volume {_node_name(reference_node)} is under a transform, which in-process resampling ignores",
            hint=_HARDEN_HINT,
        )
    output = volumes_logic.ResampleVolumeToReferenceVolume(input_node, reference_node)
    if output is None:
        raise RuntimeError(f"resampling {_node_name(input_node)} onto {_node_name(reference_node)} failed")
    if name:
        output.SetName(name)
    return output


# ---- helpers ----------------------------------------------------------------------------------------


def _vtk_compatible(array: np.ndarray) -> np.ndarray:
    """The array in a dtype VTK volumes hold (bool -> uint8, int64/uint64 -> int32 when the values fit)."""
    if array.ndim != 3:
        raise InputError(f"a volume array must be 3-D (K, J, I), got shape {array.shape}")
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype in (np.int64, np.uint64):
        info = np.iinfo(np.int32)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise InputError("int64 voxel values do not fit in int32, which is the widest integer VTK shows")
        return array.astype(np.int32)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return np.ascontiguousarray(array)


def _set_voxels(node, array: np.ndarray) -> None:
    from slicer.util import updateVolumeFromArray

    updateVolumeFromArray(node, array)


def _node_name(node) -> str:
    if node is None:
        return "(none)"
    return repr(node.GetName())
