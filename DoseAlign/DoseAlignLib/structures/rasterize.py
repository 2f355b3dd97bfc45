"""ROI masks on any voxel grid: contour planes to voxels.

The rule (the same on every grid: the CT, the dose grid, a custom one, in any orientation)
------------------------------------------------------------------------------------------
* Each contour plane stands for a slab of thickness ``t`` centred on it (``t`` = the CT's slice
  step, which the contours were drawn on; else the typical distance between contour planes).
  The slab of a plane at position ``p`` along the contour normal is ``[p - t/2, p + t/2)``.
* A voxel centre takes the **nearest contour plane whose slab holds it**; a centre exactly half
  way between two planes takes the one further along the normal. Centres in no slab (beyond the
  first and last contour by more than ``t/2``, or in a gap larger than ``t`` between contour
  planes) are outside: no plane is invented or interpolated.
* On a CT of uneven or missing slices (regularized onto an even grid by the pipeline) a contour
  plane on one of the CT's own slices stands for that slice's slab instead: half way to the
  neighbouring native slices (:class:`~DoseAlignLib.dicom.rtstruct.NativeSlabs`), so the slices the
  regularization inserts take the contour of the native slice whose slab holds their centre. A
  native slice without a contour stays empty (no plane is invented there either).
* Within the plane, the centre (projected along the normal) is inside when the plane's polygons
  hold it under the even-odd rule (holes and islands, any winding; see :mod:`.polygons`).

So the mask volume estimates the contour volume ``sum(plane area) x t``; both are reported.
Grids whose slices are parallel to the contour planes are filled slice by slice with a scanline
fill; other grids (oblique, sagittal) test each voxel centre, with the same result.

Fractional masks supersample each voxel ``F x F x F`` times (sub-points at the centres of a
regular sub-grid) with the same rule, and give the fraction of sub-points inside.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..dicom.rtstruct import RoiContours, plane_basis
from ..geometry.grid import Grid, Volume
from ..limits import check_case_time
from .body import BODY_THRESHOLD_HU, body_from_ct
from .masks import RoiMask, StructureMasks, voxel_volumes_cc
from .polygons import fill_lattice, fill_lattices, points_in_polygons

#: Shifts slice positions by this (mm) before the slab test, so that a centre exactly half way
#: between two planes goes to the one further along the normal despite round-off.
TIE_NUDGE_MM = 1e-4
#: |cos| below which a grid axis counts as lying in the contour plane (scanline path).
IN_PLANE_TOL = 1e-6


# ---- plane assignment ------------------------------------------------------------------------


def assign_planes(
    positions: np.ndarray, planes: np.ndarray, thickness_mm: float, slabs: Optional[np.ndarray] = None
) -> np.ndarray:
    """Index of the contour plane each position takes under the slab rule, -1 for none.

    Parameters
    ----------
    positions : (...,) array
        Positions along the contour normal (mm).
    planes : (M,) array
        Contour plane positions, increasing (mm).
    thickness_mm : float
        Slab thickness ``t``.
    slabs : (M, 2) array, optional
        Each plane's own slab ``[start, end)`` (mm) instead of ``[p - t/2, p + t/2)``
        (:meth:`~DoseAlignLib.dicom.rtstruct.RoiContours.plane_slabs`): the nearer of the two planes
        around a position takes it when its slab holds it, else the other one when its slab does.

    Returns
    -------
    (...,) int array
    """
    s = np.asarray(positions, dtype=np.float64) + TIE_NUDGE_MM
    planes = np.asarray(planes, dtype=np.float64)
    if planes.size == 0:
        return np.full(s.shape, -1, dtype=np.int64)
    upper = np.minimum(np.searchsorted(planes, s), planes.size - 1)  # (np.clip's overhead, per slice)
    lower = np.maximum(upper - 1, 0)
    choose_upper = np.abs(planes[upper] - s) <= np.abs(s - planes[lower])
    index = np.where(choose_upper, upper, lower)
    if slabs is not None:
        bounds = np.asarray(slabs, dtype=np.float64)
        other = np.where(choose_upper, lower, upper)
        held = (s >= bounds[index, 0]) & (s < bounds[index, 1])
        other_held = (s >= bounds[other, 0]) & (s < bounds[other, 1])
        return np.where(held, index, np.where(other_held, other, -1))
    d = s - planes[index]
    inside = (d >= -thickness_mm / 2) & (d < thickness_mm / 2)
    return np.where(inside, index, -1)


# ---- rasterization ---------------------------------------------------------------------------


def _slices_parallel(grid: Grid, normal: np.ndarray) -> bool:
    d = grid.direction
    return abs(float(d[:, 0] @ normal)) < IN_PLANE_TOL and abs(float(d[:, 1] @ normal)) < IN_PLANE_TOL


def _sub_offsets(supersampling: int) -> np.ndarray:
    f = max(int(supersampling), 1)
    return (np.arange(f) + 0.5) / f - 0.5


def _roi_box(roi: RoiContours, grid: Grid, thickness_mm: float, slabs: Optional[np.ndarray] = None) -> Optional[tuple]:
    """Index bounding box ``(k, j, i)`` slices of the ROI's slabs in ``grid``, None when outside."""
    points = np.concatenate([poly for plane in roi.planes for poly in plane.polygons])
    reach = thickness_mm / 2
    if slabs is not None:  # the planes' own slabs: as far as the furthest reaches from its plane
        p = roi.positions
        reach = max(reach, float(np.max(np.maximum(p - slabs[:, 0], slabs[:, 1] - p))))
    half = reach * roi.normal
    corners = np.concatenate([points - half, points + half])
    ijk = grid.lps_to_index(corners)
    lo = np.floor(ijk.min(axis=0)) - 1
    hi = np.ceil(ijk.max(axis=0)) + 2
    sizes = (grid.shape[2], grid.shape[1], grid.shape[0])
    box = []
    for axis in (2, 1, 0):
        a, b = int(max(lo[axis], 0)), int(min(hi[axis], sizes[axis]))
        if b <= a:
            return None
        box.append(slice(a, b))
    return tuple(box)


def rasterize_roi(roi: RoiContours, grid: Grid, thickness_mm: float, supersampling: int = 0) -> RoiMask:
    """Rasterize one ROI on ``grid`` by the slab and even-odd rules (see the module docstring).

    Parameters
    ----------
    roi : RoiContours
        An ROI with contour planes (``roi.skipped`` is None).
    grid : Grid
        The target grid (any orientation; uneven slices allowed).
    thickness_mm : float
        Slab thickness ``t`` of each contour plane (mm); on a CT of uneven or missing slices the planes on its
        own slices take their native slabs (:meth:`~DoseAlignLib.dicom.rtstruct.RoiContours.plane_slabs`).
    supersampling : int
        0 or 1: binary mask only; ``F >= 2``: also a fractional mask from ``F^3`` sub-points.

    Returns
    -------
    RoiMask
    """
    if roi.skipped is not None or not roi.planes:
        raise ValueError(f"ROI {roi.name!r} has no contour planes to rasterize ({roi.skipped})")
    volume_cc = voxel_volumes_cc(grid)
    slabs = roi.plane_slabs()  # a CT of uneven or missing slices: each plane its native slice's slab
    box = _roi_box(roi, grid, thickness_mm, slabs)
    if box is None:
        empty = np.zeros((0, 0, 0), dtype=bool)
        return RoiMask(roi, (slice(0, 0),) * 3, empty, None if supersampling < 2 else empty.astype(np.float32), 0.0)
    binary = _rasterize_box(roi, grid, box, thickness_mm, 1, slabs)
    fraction = None
    if supersampling >= 2:
        fraction = _rasterize_box(roi, grid, box, thickness_mm, int(supersampling), slabs)
    box, binary, fraction = _shrink(box, binary, fraction)
    if np.ndim(volume_cc) == 1:
        volume_cc = np.asarray(volume_cc)[box[0]]
    return RoiMask(roi, box, binary, fraction, volume_cc)


def _shrink(box: tuple, binary: np.ndarray, fraction: Optional[np.ndarray]) -> tuple:
    """Crop a box to the voxels that are set (in either mask)."""
    occupied = binary if fraction is None else (binary | (fraction > 0))
    if not occupied.any():
        return (
            (slice(0, 0),) * 3,
            np.zeros((0, 0, 0), bool),
            None if fraction is None else np.zeros((0, 0, 0), np.float32),
        )
    sub = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(occupied.any(axis=other))
        sub.append(slice(int(hit[0]), int(hit[-1]) + 1))
    sub = tuple(sub)
    new_box = tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, sub))
    return new_box, binary[sub], None if fraction is None else fraction[sub]


def _rasterize_box(
    roi: RoiContours, grid: Grid, box: tuple, thickness_mm: float, f: int, slabs: Optional[np.ndarray] = None
) -> np.ndarray:
    """Binary (``f == 1``, bool) or fractional (``f >= 2``, float32) mask inside ``box``."""
    if _slices_parallel(grid, roi.normal):
        return _scanline(roi, grid, box, thickness_mm, f, slabs)
    return _pointwise(roi, grid, box, thickness_mm, f, slabs)


def _scanline(
    roi: RoiContours, grid: Grid, box: tuple, thickness_mm: float, f: int, slabs: Optional[np.ndarray] = None
) -> np.ndarray:
    """Slices parallel to the contour planes: an even-odd scanline fill per (sub-)slice."""
    kb, jb, ib = box
    nk, nj, ni = kb.stop - kb.start, jb.stop - jb.start, ib.stop - ib.start
    offsets = _sub_offsets(f)
    out = np.zeros((nk, nj, ni), dtype=np.float32 if f > 1 else bool)
    in_plane = np.linalg.pinv(np.stack([grid.affine[:3, 0], grid.affine[:3, 1]], axis=1))  # (2, 3)
    planes = roi.positions
    # fine lattice of the box: point (jj, ii) sits at index (jb.start + (jj + 0.5) / f - 0.5, ...)
    window = (0, nj * f, 0, ni * f)
    if f == 1:
        return _scanline_binary(roi, grid, box, thickness_mm, out, in_plane, window, slabs)
    cache: dict = {}
    for kk in range(nk):
        check_case_time(roi.source)
        k_sub = kb.start + kk + offsets
        origins = grid.index_to_lps(np.stack([np.zeros_like(k_sub), np.zeros_like(k_sub), k_sub], axis=-1))
        chosen = assign_planes(origins @ roi.normal, planes, thickness_mm, slabs)
        for origin, m in zip(origins, chosen):
            if m < 0:
                continue
            key = (int(m), *np.round(origin @ in_plane.T, 9).tolist())
            filled = cache.get(key)
            if filled is None:
                filled = fill_lattice(_lattice_polygons(roi, int(m), origin, in_plane, box, f), window)
                cache[key] = filled
            out[kk] += filled.reshape(nj, f, ni, f).mean(axis=(1, 3), dtype=np.float32) / f
    return out


def _lattice_polygons(roi: RoiContours, m: int, origin: np.ndarray, in_plane: np.ndarray, box: tuple, f: int) -> list:
    """The polygons of contour plane ``m`` in the lattice coordinates of ``box`` seen from a slice at ``origin``."""
    _kb, jb, ib = box
    polys = []
    for poly in roi.planes[m].polygons:
        ij = (poly - origin) @ in_plane.T  # continuous (i, j) of the vertices
        x = (ij[:, 0] - ib.start + 0.5) * f - 0.5
        y = (ij[:, 1] - jb.start + 0.5) * f - 0.5
        polys.append(np.stack([x, y], axis=1))
    return polys


def _scanline_binary(
    roi: RoiContours,
    grid: Grid,
    box: tuple,
    thickness_mm: float,
    out: np.ndarray,
    in_plane: np.ndarray,
    window: tuple,
    slabs: Optional[np.ndarray] = None,
) -> np.ndarray:
    """:func:`_scanline` for binary masks: every distinct (plane, in-plane origin) filled once, all in one batch."""
    kb = box[0]
    planes = roi.positions
    keys: dict = {}  # (plane, in-plane origin) -> index of its fill
    sets = []
    slices_of: list = []
    for kk in range(out.shape[0]):
        origins = grid.index_to_lps(np.array([[0.0, 0.0, float(kb.start + kk)]]))  # as _scanline, f = 1
        m = int(assign_planes(origins @ roi.normal, planes, thickness_mm, slabs)[0])
        origin = origins[0]
        if m < 0:
            continue
        key = (m, *np.round(origin @ in_plane.T, 9).tolist())
        n = keys.get(key)
        if n is None:
            n = keys[key] = len(sets)
            sets.append(_lattice_polygons(roi, m, origin, in_plane, box, 1))
            slices_of.append([])
        slices_of[n].append(kk)
    if not sets:
        return out
    # each fill goes straight into the first slice that takes it; later slices copy it
    fill_lattices(sets, window, out, [kks[0] for kks in slices_of])
    for kks in slices_of:
        for kk in kks[1:]:
            out[kk] = out[kks[0]]
    return out


def _pointwise(
    roi: RoiContours, grid: Grid, box: tuple, thickness_mm: float, f: int, slabs: Optional[np.ndarray] = None
) -> np.ndarray:
    """Any other orientation: each voxel centre (or sub-point) tested against its plane's polygons."""
    kb, jb, ib = box
    nk, nj, ni = kb.stop - kb.start, jb.stop - jb.start, ib.stop - ib.start
    offsets = _sub_offsets(f)
    u, v = plane_basis(roi.normal)
    uv = np.stack([u, v], axis=1)
    planes = roi.positions
    planes_uv = [[poly @ uv for poly in plane.polygons] for plane in roi.planes]
    out = np.zeros((nk, nj, ni), dtype=np.float32 if f > 1 else bool)
    jj, ii = np.meshgrid(np.arange(nj, dtype=np.float64), np.arange(ni, dtype=np.float64), indexing="ij")
    for kk in range(nk):
        check_case_time(roi.source)
        count = np.zeros((nj, ni), dtype=np.float32)
        for dk in offsets:
            for dj in offsets:
                for di in offsets:
                    ijk = np.stack(
                        [ii + ib.start + di, jj + jb.start + dj, np.full(ii.shape, kb.start + kk + dk)], axis=-1
                    )
                    points = grid.index_to_lps(ijk).reshape(-1, 3)
                    chosen = assign_planes(points @ roi.normal, planes, thickness_mm, slabs)
                    inside = np.zeros(points.shape[0], dtype=bool)
                    for m in np.unique(chosen[chosen >= 0]):
                        sel = np.flatnonzero(chosen == m)
                        inside[sel] = points_in_polygons(points[sel] @ uv, planes_uv[int(m)])
                    count += inside.reshape(nj, ni)
        out[kk] = count > 0 if f == 1 else count / f**3
    return out


# ---- the structures of one grid --------------------------------------------------------------


def rasterize_structures(
    rois: Sequence[RoiContours],
    grid: Grid,
    thickness_mm: float,
    *,
    supersampling: int = 0,
    ct: Optional[Volume] = None,
    body_threshold_hu: float = BODY_THRESHOLD_HU,
) -> StructureMasks:
    """Masks of every ROI on ``grid``, the skipped ROIs listed, and a body mask.

    Parameters
    ----------
    rois : sequence of RoiContours
        From :func:`~DoseAlignLib.dicom.rtstruct.read_structure_set` (names already harmonised).
    grid : Grid
        The grid of the masks.
    thickness_mm : float
        Slab thickness of a contour plane (mm).
    supersampling : int
        ``F >= 2`` adds fractional masks from ``F^3`` sub-points per voxel.
    ct : Volume, optional
        The CT on ``grid``; gives the body when no EXTERNAL ROI exists.
    body_threshold_hu : float
        Threshold of the CT body mask (HU).

    Returns
    -------
    StructureMasks
    """
    result = StructureMasks(grid, thickness_mm=float(thickness_mm), supersampling=int(supersampling))
    for roi in rois:
        check_case_time(roi.source)  # the per-case time limit: a hostile structure set cannot hold a batch
        if roi.skipped is not None:
            result.skipped.append(
                {
                    "source": roi.source,
                    "number": roi.number,
                    "name": roi.original_name,
                    "interpreted_type": roi.interpreted_type,
                    "reason": roi.skipped,
                }
            )
            continue
        result.masks.append(rasterize_roi(roi, grid, roi.thickness(thickness_mm), supersampling))
    externals = [m for m in result.masks if m.roi.interpreted_type == "EXTERNAL" and m.voxel_count > 0]
    if externals:
        chosen = max(externals, key=lambda m: m.voxel_count)
        result.body_mask = chosen
        result.body_source = f"ROI {chosen.name!r} (RTROIInterpretedType EXTERNAL)"
    elif ct is not None:
        result.body = body_from_ct(ct.array, body_threshold_hu)
        result.body_source = (
            f"CT > {body_threshold_hu:g} HU, largest connected component, holes filled slice by slice (no EXTERNAL ROI)"
        )
    return result
