"""Voxel grids in patient space: the geometry that travels with every array.

A :class:`Grid` maps voxel indices to DICOM patient coordinates (LPS, mm). Arrays are indexed
``[k, j, i]`` (slice, row, column), the order of ``slicer.util.arrayFromVolume`` and SimpleITK's
``GetArrayFromImage``; the affine maps the column vector ``(i, j, k, 1)`` to ``(x, y, z, 1)`` in LPS.

A grid may have non-uniform slice positions (RTDOSE frames with an uneven GridFrameOffsetVector).
They are kept exactly in ``slice_offsets`` (mm along the slice direction, first = 0); the affine then
carries the mean step only and must not be used for k on its own; use :meth:`Grid.index_to_lps`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..errors import GeometryError

#: Tolerance (mm) under which two positions, spacings or grids count as equal.
GRID_ATOL_MM = 1e-3
#: Relative tolerance under which slice steps count as uniform.
UNIFORM_STEP_RTOL = 1e-3
#: Largest |cos| between the direction vectors still taken as orthogonal.
ORTHOGONALITY_TOL = 1e-3

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Grid:
    """A 3-D voxel grid: shape ``(K, J, I)`` and the voxel-centre → LPS affine.

    Parameters
    ----------
    shape : (3,) ints
        Number of voxels along k, j, i (slice, row, column).
    affine : (4, 4) array
        Maps ``(i, j, k, 1)`` to LPS mm. Columns 0-2 are direction × spacing.
    frame_of_reference_uid : str, optional
        The DICOM frame of reference these coordinates belong to.
    slice_offsets : (K,) array, optional
        Exact slice positions along the k direction (mm, first 0) when they are not uniform.
    """

    shape: tuple
    affine: np.ndarray
    frame_of_reference_uid: Optional[str] = None
    slice_offsets: Optional[np.ndarray] = field(default=None)

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise GeometryError(f"grid shape must be three positive sizes, got {self.shape}")
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.allclose(affine[3], [0, 0, 0, 1]):
            raise GeometryError("grid affine must be 4x4 with last row (0, 0, 0, 1)")
        if not np.all(np.isfinite(affine)):
            raise GeometryError("grid affine contains NaN or infinity")
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(spacing <= 0):
            raise GeometryError(f"grid spacing must be positive, got {spacing.tolist()}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine", _readonly(affine))
        offsets = self.slice_offsets
        if offsets is not None:
            offsets = np.array(offsets, dtype=np.float64).ravel()
            if offsets.size != shape[0]:
                raise GeometryError(f"{offsets.size} slice offsets for {shape[0]} slices")
            if offsets.size > 1 and np.any(np.diff(offsets) <= 0):
                raise GeometryError("slice offsets must increase strictly")
            offsets = offsets - offsets[0]
            steps = np.diff(offsets)
            if steps.size == 0 or np.allclose(steps, steps.mean(), rtol=UNIFORM_STEP_RTOL, atol=1e-4):
                offsets = None  # uniform: the affine says it all
            else:
                offsets = _readonly(offsets)
        object.__setattr__(self, "slice_offsets", offsets)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_dicom(
        cls,
        *,
        image_position: Sequence[float],
        image_orientation: Sequence[float],
        pixel_spacing: Sequence[float],
        slice_offsets: Sequence[float],
        rows: int,
        columns: int,
        frame_of_reference_uid: Optional[str] = None,
        single_slice_thickness: Optional[float] = None,
    ) -> Grid:
        """Build a grid from the DICOM attributes of its first slice.

        ``image_position`` is (0020,0032) of the first slice, ``image_orientation`` (0020,0037)
        (row direction, then column direction), ``pixel_spacing`` (0028,0030) as DICOM orders
        it: [spacing between rows, spacing between columns]. ``slice_offsets`` are the slice
        positions along row × column (mm), in increasing order; the first slice is at
        ``image_position``. ``single_slice_thickness`` sets the k step of a one-slice grid.
        """
        row_dir, col_dir = orientation_vectors(image_orientation)
        normal = np.cross(row_dir, col_dir)
        row_spacing, column_spacing = (float(v) for v in pixel_spacing)
        if not (row_spacing > 0 and column_spacing > 0):
            raise GeometryError(
                f"PixelSpacing must be positive, got {list(pixel_spacing)}", tag="(0028,0030) PixelSpacing"
            )
        offsets = np.asarray(slice_offsets, dtype=np.float64).ravel()
        if offsets.size > 1:
            step = float((offsets[-1] - offsets[0]) / (offsets.size - 1))
        else:
            step = float(single_slice_thickness or min(row_spacing, column_spacing))
        if step <= 0:
            raise GeometryError("slice positions must increase along the slice normal")
        affine = np.eye(4)
        affine[:3, 0] = row_dir * column_spacing  # i runs along a row: columns are column_spacing apart
        affine[:3, 1] = col_dir * row_spacing  # j runs down a column: rows are row_spacing apart
        affine[:3, 2] = normal * step
        affine[:3, 3] = np.asarray(image_position, dtype=np.float64) + normal * (offsets[0] if offsets.size else 0.0)
        return cls(
            (offsets.size or 1, int(rows), int(columns)),
            affine,
            frame_of_reference_uid,
            offsets if offsets.size > 1 else None,
        )

    @classmethod
    def from_spacing(
        cls,
        shape: Sequence[int],
        spacing_ijk: Sequence[float],
        origin: Sequence[float],
        direction: Optional[np.ndarray] = None,
        frame_of_reference_uid: Optional[str] = None,
    ) -> Grid:
        """A uniform grid from shape (K, J, I), spacing (i, j, k), origin (LPS) and 3x3 direction columns."""
        direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
        affine = np.eye(4)
        affine[:3, :3] = direction * np.asarray(spacing_ijk, dtype=np.float64)[np.newaxis, :]
        affine[:3, 3] = origin
        return cls(tuple(shape), affine, frame_of_reference_uid)

    # ---- properties ---------------------------------------------------------------------------

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k (mm); k is the mean step when slices are not uniform."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit vectors of i, j and k in LPS."""
        return self.affine[:3, :3] / self.spacing[np.newaxis, :]

    @property
    def origin(self) -> np.ndarray:
        """LPS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def is_uniform(self) -> bool:
        return self.slice_offsets is None

    @property
    def k_offsets(self) -> np.ndarray:
        """Position of every slice along the k direction (mm, first 0)."""
        if self.slice_offsets is not None:
            return np.array(self.slice_offsets)
        return np.arange(self.shape[0]) * self.spacing[2]

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))

    def is_orthogonal(self, tol: float = ORTHOGONALITY_TOL) -> bool:
        d = self.direction
        return bool(np.allclose(d.T @ d, np.eye(3), atol=tol))

    def ras_affine(self) -> np.ndarray:
        """The voxel → RAS affine (Slicer's IJKToRAS, NIfTI's convention)."""
        return LPS_TO_RAS @ self.affine

    # ---- coordinates ---------------------------------------------------------------------------

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Map continuous indices ``(..., 3)`` given as (i, j, k) to LPS points ``(..., 3)``."""
        ijk = np.asarray(ijk, dtype=np.float64)
        out = ijk @ self.affine[:3, :3].T + self.affine[:3, 3]
        if self.slice_offsets is not None:
            k = ijk[..., 2]
            exact = _interp_extrapolate(k, np.arange(self.shape[0], dtype=np.float64), self.slice_offsets)
            out += (exact - k * self.spacing[2])[..., np.newaxis] * self.direction[:, 2]
        return out

    def lps_to_index(self, points: np.ndarray) -> np.ndarray:
        """Map LPS points ``(..., 3)`` to continuous (i, j, k) indices ``(..., 3)``."""
        points = np.asarray(points, dtype=np.float64)
        inverse = np.linalg.inv(self.affine)
        ijk = points @ inverse[:3, :3].T + inverse[:3, 3]
        if self.slice_offsets is not None:
            # k along a non-uniform axis: distance along the k direction, then the exact frame map
            normal_distance = (points - self.affine[:3, 3]) @ self.direction[:, 2]
            if not self.is_orthogonal():
                raise GeometryError("non-uniform slices are supported on orthogonal grids only")
            ijk[..., 2] = self.offsets_to_k(normal_distance)
        return ijk

    def offsets_to_k(self, distance: np.ndarray) -> np.ndarray:
        """Continuous k index of a distance (mm) along the k direction from slice 0."""
        offsets = self.k_offsets
        if self.shape[0] == 1:
            return np.asarray(distance, dtype=np.float64) / self.spacing[2]
        return _interp_extrapolate(
            np.asarray(distance, dtype=np.float64), offsets, np.arange(self.shape[0], dtype=np.float64)
        )

    def axis_coordinates(self) -> tuple:
        """Positions (mm) of the voxel centres along i, j and k from the origin, for orthogonal grids."""
        spacing = self.spacing
        return (
            np.arange(self.shape[2]) * spacing[0],
            np.arange(self.shape[1]) * spacing[1],
            self.k_offsets,
        )

    def corner_points(self, half_voxel: bool = True) -> np.ndarray:
        """The 8 corners (LPS, (8, 3)) of the grid's extent; with ``half_voxel`` its voxels' outer faces."""
        pad = 0.5 if half_voxel else 0.0
        k_lo, k_hi = _edge_positions(self.k_offsets, self.spacing[2], pad)
        i_hi = self.shape[2] - 1 + pad
        j_hi = self.shape[1] - 1 + pad
        corners = []
        for i in (-pad, i_hi):
            for j in (-pad, j_hi):
                for k_mm in (k_lo, k_hi):
                    p = self.affine[:3, 3] + self.affine[:3, 0] * i + self.affine[:3, 1] * j
                    corners.append(p + self.direction[:, 2] * k_mm)
        return np.array(corners)

    def extent_in(self, other: Grid) -> np.ndarray:
        """Bounding box ``[[i0, i1], [j0, j1], [k0, k1]]`` (continuous indices) of this grid's extent in ``other``."""
        ijk = other.lps_to_index(self.corner_points())
        return np.stack([ijk.min(axis=0), ijk.max(axis=0)], axis=1)

    # ---- derived grids ------------------------------------------------------------------------

    def crop(self, k: slice, j: slice, i: slice) -> Grid:
        """The sub-grid ``[k, j, i]`` (unit-step slices), with the affine moved to its first voxel."""
        starts = []
        sizes = []
        for sl, n in zip((i, j, k), (self.shape[2], self.shape[1], self.shape[0])):
            start, stop, step = sl.indices(n)
            if step != 1 or stop <= start:
                raise GeometryError(f"cannot crop with {sl}")
            starts.append(start)
            sizes.append(stop - start)
        offsets = None
        affine = self.affine.copy()
        affine[:3, 3] = self.index_to_lps(np.array(starts, dtype=np.float64))
        if self.slice_offsets is not None:
            offsets = self.slice_offsets[starts[2] : starts[2] + sizes[2]]
            if sizes[2] > 1:
                affine[:3, 2] = self.direction[:, 2] * (offsets[-1] - offsets[0]) / (sizes[2] - 1)
        return Grid((sizes[2], sizes[1], sizes[0]), affine, self.frame_of_reference_uid, offsets)

    def equal(self, other: Grid, atol: float = GRID_ATOL_MM) -> bool:
        """Same shape, same voxel positions (within ``atol`` mm) and same frame of reference."""
        if self.shape != other.shape or self.frame_of_reference_uid != other.frame_of_reference_uid:
            return False
        if np.max(np.abs(self.spacing - other.spacing)) > atol:
            return False
        # every voxel centre, not the affine's entries: a rotation the entries hide (1e-3 per mm of spacing)
        # moves a voxel 500 mm from the origin by 0.5 mm; within a slice the largest move is at a corner
        distance = np.linalg.norm(self._slice_corners() - other._slice_corners(), axis=-1)
        return bool(np.max(distance) <= atol)

    def _slice_corners(self) -> np.ndarray:
        """The LPS centres (K, 4, 3) of each slice's four corner voxels."""
        i_hi, j_hi = self.shape[2] - 1, self.shape[1] - 1
        in_plane = np.array([[0, 0], [i_hi, 0], [0, j_hi], [i_hi, j_hi]], dtype=np.float64) @ self.affine[:3, :2].T
        along = self.k_offsets[:, np.newaxis] * self.direction[:, 2]
        return self.affine[:3, 3] + in_plane[np.newaxis, :, :] + along[:, np.newaxis, :]

    def to_dict(self) -> dict:
        """JSON-ready description: shape, spacing, origin, direction, both affines, slice offsets."""
        return {
            "shape": list(self.shape),
            "spacing": self.spacing.tolist(),
            "origin_lps": self.origin.tolist(),
            "direction": self.direction.tolist(),
            "ijk_to_lps": self.affine.tolist(),
            "ijk_to_ras": self.ras_affine().tolist(),
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "slice_offsets": None if self.slice_offsets is None else self.slice_offsets.tolist(),
        }

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing)
        org = ", ".join(f"{o:.4g}" for o in self.origin)
        uniform = "" if self.is_uniform else ", non-uniform slices"
        return f"Grid(shape={self.shape}, spacing=({sp}), origin=({org}){uniform})"


@dataclass(frozen=True, eq=False)
class Volume:
    """An array ``[k, j, i]`` with the grid that places it in patient space.

    ``units`` names what the values are ("HU", "GY"); ``description`` is free text for people. ``fill_value``: the
    value written where the file holds no image (a CT's padding), when some voxel got it; None when none did.
    """

    array: np.ndarray
    grid: Grid
    units: str = ""
    description: str = ""
    fill_value: Optional[float] = None

    def __post_init__(self) -> None:
        if tuple(self.array.shape) != self.grid.shape:
            raise GeometryError(f"array shape {self.array.shape} does not match grid shape {self.grid.shape}")

    def with_array(self, array: np.ndarray, grid: Optional[Grid] = None) -> Volume:
        """The same units and description with new values (on ``grid``, default the same grid)."""
        return Volume(array, self.grid if grid is None else grid, self.units, self.description)


def orientation_vectors(image_orientation: Sequence[float]) -> tuple:
    """Row and column unit vectors from ImageOrientationPatient, checked for length and orthogonality."""
    try:
        values = np.array([float(v) for v in image_orientation], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise GeometryError(
            f"ImageOrientationPatient is not numeric: {error}", tag="(0020,0037) ImageOrientationPatient"
        ) from None
    if values.shape != (6,) or not np.all(np.isfinite(values)):
        raise GeometryError(
            f"ImageOrientationPatient must hold six finite numbers, got {list(image_orientation)}",
            tag="(0020,0037) ImageOrientationPatient",
        )
    row, col = values[:3], values[3:]
    norms = np.linalg.norm(row), np.linalg.norm(col)
    if min(norms) < 1e-6:
        raise GeometryError("ImageOrientationPatient has a zero vector", tag="(0020,0037) ImageOrientationPatient")
    if abs(norms[0] - 1) > 1e-2 or abs(norms[1] - 1) > 1e-2:
        raise GeometryError(
            f"ImageOrientationPatient vectors are not unit length ({norms[0]:.4f}, {norms[1]:.4f})",
            tag="(0020,0037) ImageOrientationPatient",
        )
    row, col = row / norms[0], col / norms[1]
    if abs(float(row @ col)) > 1e-2:
        raise GeometryError(
            f"ImageOrientationPatient row and column directions are not orthogonal (cos = {row @ col:.4f})",
            tag="(0020,0037) ImageOrientationPatient",
        )
    # remove the tiny non-orthogonality that rounding in the header leaves
    col = col - (row @ col) * row
    col /= np.linalg.norm(col)
    return row, col


def _interp_extrapolate(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """np.interp that continues the end segments linearly instead of clamping."""
    x = np.asarray(x, dtype=np.float64)
    y = np.interp(x, xp, fp)
    lo_slope = (fp[1] - fp[0]) / (xp[1] - xp[0])
    hi_slope = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    y = np.where(x < xp[0], fp[0] + (x - xp[0]) * lo_slope, y)
    return np.where(x > xp[-1], fp[-1] + (x - xp[-1]) * hi_slope, y)


def _edge_positions(offsets: np.ndarray, step: float, pad: float) -> tuple:
    """Outer positions (mm along k) of the first and last slice, padded by ``pad`` of the end steps."""
    if offsets.size == 1:
        return -pad * step, pad * step
    return offsets[0] - pad * (offsets[1] - offsets[0]), offsets[-1] + pad * (offsets[-1] - offsets[-2])
