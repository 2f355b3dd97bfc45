"""ROI masks on any voxel grid: contour planes to voxels, the body mask, and how masks are stored.

The rule (the same on every grid: the CT, the dose grid, a custom one, in any orientation)
------------------------------------------------------------------------------------------
* Each contour plane stands for a slab of thickness ``t`` centred on it (``t`` = the CT's slice
  step, which the contours were drawn on; else the typical distance between contour planes).
  The slab of a plane at position ``p`` along the contour normal is ``[p - t/2, p + t/2)``.
* A voxel centre takes the **nearest contour plane whose slab holds it**; a centre exactly half
  way between two planes takes the one further along the normal. Centres in no slab (beyond the
  first and last contour by more than ``t/2``, or in a gap larger than ``t`` between contour
  planes) are outside: no plane is invented or interpolated.
* Within the plane, the centre (projected along the normal) is inside when the plane's polygons
  hold it under the even-odd rule (holes and islands, any winding; see :mod:`.polygons`).

So the mask volume estimates the contour volume ``sum(plane area) x t``; both are reported.
Grids whose slices are parallel to the contour planes are filled slice by slice with a scanline
fill; other grids (oblique, sagittal) test each voxel centre, with the same result.

Fractional masks supersample each voxel ``F x F x F`` times (sub-points at the centres of a
regular sub-grid) with the same rule, and give the fraction of sub-points inside.

Storage in pair.npz
-------------------
``masks``: ``(N, K, J, ceil(I / 8))`` uint8, the binary masks bit-packed along i with
``np.packbits(..., axis=-1)`` (big bit order); read with
``np.unpackbits(npz["masks"], axis=-1, count=I).astype(bool)`` -> ``(N, K, J, I)``. The ROI
order is ``meta["structures"]["names"]``. ``body`` is packed the same way, ``(K, J, ceil(I/8))``.
``masks_fraction`` (only with fractional masks): ``(N, K, J, I)`` uint8, ``round(255 x fraction)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .contours import RoiContours, plane_basis
from .grid import Grid, Volume
from .polygons import fill_lattice, fill_lattices, points_in_polygons

#: Shifts slice positions by this (mm) before the slab test, so that a centre exactly half way
#: between two planes goes to the one further along the normal despite round-off.
TIE_NUDGE_MM = 1e-4
#: |cos| below which a grid axis counts as lying in the contour plane (scanline path).
IN_PLANE_TOL = 1e-6
#: CT number above which a voxel may belong to the body when no EXTERNAL ROI exists.
BODY_THRESHOLD_HU = -500.0
STORAGE_NOTE = (
    "masks: (N, K, J, ceil(I/8)) uint8, binary masks bit-packed along i (np.packbits axis=-1, big bit order); "
    "unpack with np.unpackbits(npz['masks'], axis=-1, count=I).astype(bool); N follows structures.names. "
    "body: (K, J, ceil(I/8)) packed the same way. masks_fraction (fractional option): (N, K, J, I) uint8 = "
    "round(255 x fraction)."
)
RULE_NOTE = (
    "each contour plane is a slab [p - t/2, p + t/2) along the contour normal (t = slab_thickness_mm); a voxel "
    "centre takes the nearest plane whose slab holds it (half way: the plane further along the normal); no planes "
    "are invented beyond the first and last contour or in gaps wider than t; in-plane even-odd rule at the voxel "
    "centre (holes and islands)"
)


@dataclass
class RoiMask:
    """One ROI rasterized on a grid, held as its bounding box.

    Attributes
    ----------
    roi : RoiContours
        Where it came from.
    box : tuple of 3 slices
        ``(k, j, i)`` bounding box of the mask in the grid.
    binary : (k, j, i) bool array
        The mask inside ``box``.
    fraction : (k, j, i) float32 array or None
        Fraction of each voxel inside the ROI (fractional masks only).
    voxel_volume_cc : float or (k,) array
        Volume of one voxel (per slice for grids with uneven slices), cm^3.
    """

    roi: RoiContours
    box: tuple
    binary: np.ndarray
    fraction: Optional[np.ndarray] = None
    voxel_volume_cc: object = 0.0
    _count: Optional[int] = field(default=None, init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.roi.name

    @property
    def voxel_count(self) -> int:
        """Voxels of the binary mask (counted once; the mask is not changed after rasterization)."""
        if self._count is None:
            self._count = int(np.count_nonzero(self.binary))
        return self._count

    @property
    def volume_cc(self) -> float:
        """Volume of the binary mask (cm^3)."""
        if np.ndim(self.voxel_volume_cc) == 0:
            return float(self.voxel_count * float(self.voxel_volume_cc))
        return _weighted_volume(self.binary, self.voxel_volume_cc)

    @property
    def fraction_volume_cc(self) -> Optional[float]:
        """Volume of the fractional mask (cm^3), when there is one."""
        return None if self.fraction is None else _weighted_volume(self.fraction, self.voxel_volume_cc)

    def full(self, shape: tuple) -> np.ndarray:
        """The binary mask on the whole grid, ``(K, J, I)`` bool."""
        out = np.zeros(shape, dtype=bool)
        out[self.box] = self.binary
        return out


def _weighted_volume(values: np.ndarray, voxel_cc: object) -> float:
    if values.dtype == bool:  # counts: the same numbers as a float64 sum, without converting every voxel
        if np.ndim(voxel_cc) == 0:
            return float(np.count_nonzero(values) * float(voxel_cc))
        per_slice = np.count_nonzero(values, axis=tuple(range(1, values.ndim))).astype(np.float64)
        return float(per_slice @ np.asarray(voxel_cc, dtype=np.float64))
    if np.ndim(voxel_cc) == 0:
        return float(np.sum(values, dtype=np.float64) * float(voxel_cc))
    per_slice = np.sum(values.reshape(values.shape[0], -1), axis=1, dtype=np.float64)
    return float(per_slice @ np.asarray(voxel_cc, dtype=np.float64))


#: Voxels per slab when bit-packing a boxed mask (a small buffer, reused: no fresh memory per mask).
PACK_SLAB_VOXELS = 1 << 20


def _pack_into(out: np.ndarray, box: tuple, binary: np.ndarray, width: int) -> None:
    """Bit-pack a boxed mask into ``out`` ((K, J, ceil(I/8)) uint8, zeros) as ``np.packbits`` of the full mask would."""
    if binary.size == 0:
        return
    kb, jb, ib = box
    first = ib.start // 8  # the byte holding the box's first column
    stop = min((ib.stop + 7) // 8, (width + 7) // 8)
    lead = ib.start - first * 8
    nk, nj, ni = binary.shape
    step = max(1, PACK_SLAB_VOXELS // max(nj * (stop - first) * 8, 1))
    padded = np.zeros((min(step, nk), nj, (stop - first) * 8), dtype=bool)  # byte-aligned columns
    for k in range(0, nk, step):
        n = min(step, nk - k)
        padded[:n, :, lead : lead + ni] = binary[k : k + n]
        out[kb.start + k : kb.start + k + n, jb, first:stop] = np.packbits(padded[:n], axis=-1)


def voxel_volumes_cc(grid: Grid) -> object:
    """Volume of a voxel (cm^3): one number, or ``(K,)`` per slice when slices are uneven.

    A slice of an uneven grid reaches half way to each neighbour (the end slices as far out as in).
    """
    if grid.is_uniform:
        return float(abs(np.linalg.det(grid.affine[:3, :3]))) / 1000.0
    area = float(np.linalg.norm(np.cross(grid.affine[:3, 0], grid.affine[:3, 1])))
    normal = np.cross(grid.direction[:, 0], grid.direction[:, 1])
    cos = abs(float(grid.direction[:, 2] @ normal)) / float(np.linalg.norm(normal))
    offsets = grid.k_offsets
    mid = (offsets[1:] + offsets[:-1]) / 2
    edges = np.concatenate([[2 * offsets[0] - mid[0]], mid, [2 * offsets[-1] - mid[-1]]])
    return np.diff(edges) * area * cos / 1000.0


# ---- plane assignment ------------------------------------------------------------------------


def assign_planes(positions: np.ndarray, planes: np.ndarray, thickness_mm: float) -> np.ndarray:
    """Index of the contour plane each position takes under the slab rule, -1 for none.

    Parameters
    ----------
    positions : (...,) array
        Positions along the contour normal (mm).
    planes : (M,) array
        Contour plane positions, increasing (mm).
    thickness_mm : float
        Slab thickness ``t``.

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


def _roi_box(roi: RoiContours, grid: Grid, thickness_mm: float) -> Optional[tuple]:
    """Index bounding box ``(k, j, i)`` slices of the ROI's slabs in ``grid``, None when outside."""
    points = np.concatenate([poly for plane in roi.planes for poly in plane.polygons])
    half = thickness_mm / 2 * roi.normal
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
        Slab thickness ``t`` of each contour plane (mm).
    supersampling : int
        0 or 1: binary mask only; ``F >= 2``: also a fractional mask from ``F^3`` sub-points.

    Returns
    -------
    RoiMask
    """
    if roi.skipped is not None or not roi.planes:
        raise ValueError(f"ROI {roi.name!r} has no contour planes to rasterize ({roi.skipped})")
    volume_cc = voxel_volumes_cc(grid)
    box = _roi_box(roi, grid, thickness_mm)
    if box is None:
        empty = np.zeros((0, 0, 0), dtype=bool)
        return RoiMask(roi, (slice(0, 0),) * 3, empty, None if supersampling < 2 else empty.astype(np.float32), 0.0)
    binary = _rasterize_box(roi, grid, box, thickness_mm, 1)
    fraction = None
    if supersampling >= 2:
        fraction = _rasterize_box(roi, grid, box, thickness_mm, int(supersampling))
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


def _rasterize_box(roi: RoiContours, grid: Grid, box: tuple, thickness_mm: float, f: int) -> np.ndarray:
    """Binary (``f == 1``, bool) or fractional (``f >= 2``, float32) mask inside ``box``."""
    if _slices_parallel(grid, roi.normal):
        return _scanline(roi, grid, box, thickness_mm, f)
    return _pointwise(roi, grid, box, thickness_mm, f)


def _scanline(roi: RoiContours, grid: Grid, box: tuple, thickness_mm: float, f: int) -> np.ndarray:
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
        return _scanline_binary(roi, grid, box, thickness_mm, out, in_plane, window)
    cache: dict = {}
    for kk in range(nk):
        k_sub = kb.start + kk + offsets
        origins = grid.index_to_lps(np.stack([np.zeros_like(k_sub), np.zeros_like(k_sub), k_sub], axis=-1))
        chosen = assign_planes(origins @ roi.normal, planes, thickness_mm)
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
    roi: RoiContours, grid: Grid, box: tuple, thickness_mm: float, out: np.ndarray, in_plane: np.ndarray, window: tuple
) -> np.ndarray:
    """:func:`_scanline` for binary masks: every distinct (plane, in-plane origin) filled once, all in one batch."""
    kb = box[0]
    planes = roi.positions
    keys: dict = {}  # (plane, in-plane origin) -> index of its fill
    sets = []
    slices_of: list = []
    for kk in range(out.shape[0]):
        origins = grid.index_to_lps(np.array([[0.0, 0.0, float(kb.start + kk)]]))  # as _scanline, f = 1
        m = int(assign_planes(origins @ roi.normal, planes, thickness_mm)[0])
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


def _pointwise(roi: RoiContours, grid: Grid, box: tuple, thickness_mm: float, f: int) -> np.ndarray:
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
        count = np.zeros((nj, ni), dtype=np.float32)
        for dk in offsets:
            for dj in offsets:
                for di in offsets:
                    ijk = np.stack(
                        [ii + ib.start + di, jj + jb.start + dj, np.full(ii.shape, kb.start + kk + dk)], axis=-1
                    )
                    points = grid.index_to_lps(ijk).reshape(-1, 3)
                    chosen = assign_planes(points @ roi.normal, planes, thickness_mm)
                    inside = np.zeros(points.shape[0], dtype=bool)
                    for m in np.unique(chosen[chosen >= 0]):
                        sel = np.flatnonzero(chosen == m)
                        inside[sel] = points_in_polygons(points[sel] @ uv, planes_uv[int(m)])
                    count += inside.reshape(nj, ni)
        out[kk] = count > 0 if f == 1 else count / f**3
    return out


# ---- the structures of one grid --------------------------------------------------------------


@dataclass
class StructureMasks:
    """All ROI masks of a case on one grid, the ROIs left out, and the body mask.

    Attributes
    ----------
    grid : Grid
    masks : list of RoiMask
        One per ROI that gives a mask (possibly empty on this grid), in output order.
    skipped : list of dict
        ``{"source", "number", "name", "interpreted_type", "reason"}`` per ROI left out.
    thickness_mm : float
        Slab thickness used.
    supersampling : int
        Fractional-mask supersampling factor (0: none).
    body : (K, J, I) bool array or None
    body_source : str
    notes : list of str
    """

    grid: Grid
    masks: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    thickness_mm: float = 0.0
    supersampling: int = 0
    body_source: str = ""
    notes: list = field(default_factory=list)
    #: The body when it is an ROI's mask (kept as its box; :attr:`body` makes the whole array on demand).
    body_mask: Optional[RoiMask] = None
    _body: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def body(self) -> Optional[np.ndarray]:
        """The body mask on the whole grid, ``(K, J, I)`` bool, or None."""
        if self._body is None and self.body_mask is not None:
            self._body = self.body_mask.full(self.grid.shape)
        return self._body

    @body.setter
    def body(self, value: Optional[np.ndarray]) -> None:
        self._body = value
        self.body_mask = None

    @property
    def body_region(self):
        """The body for the audit: its ROI mask (a box) when it is one, else the whole array, or None."""
        return self.body_mask if self.body_mask is not None else self._body

    @property
    def names(self) -> list:
        return [m.name for m in self.masks]

    def mask(self, name: str) -> RoiMask:
        """The mask of the ROI called ``name``."""
        return next(m for m in self.masks if m.name == name)

    def packed(self) -> np.ndarray:
        """The binary masks bit-packed along i: ``(N, K, J, ceil(I/8))`` uint8."""
        k, j, i = self.grid.shape
        out = np.zeros((len(self.masks), k, j, (i + 7) // 8), dtype=np.uint8)
        for n, m in enumerate(self.masks):
            _pack_into(out[n], m.box, m.binary, i)
        return out

    def fraction_stack(self) -> Optional[np.ndarray]:
        """Fractional masks ``(N, K, J, I)`` uint8 (``round(255 x fraction)``), or None."""
        if self.supersampling < 2:
            return None
        out = np.zeros((len(self.masks), *self.grid.shape), dtype=np.uint8)
        for n, m in enumerate(self.masks):
            if m.fraction is not None and m.fraction.size:
                out[n][m.box] = np.rint(np.clip(m.fraction, 0, 1) * 255).astype(np.uint8)
        return out

    def arrays(self) -> dict:
        """The arrays for pair.npz: ``masks``, ``body`` and (fractional) ``masks_fraction``."""
        out = {"masks": self.packed()}
        if self.body_mask is not None:
            owner = next((n for n, m in enumerate(self.masks) if m is self.body_mask), None)
            if owner is not None:  # the body is one of the ROIs: its packed mask, shared
                out["body"] = out["masks"][owner]
            else:
                k, j, i = self.grid.shape
                out["body"] = np.zeros((k, j, (i + 7) // 8), dtype=np.uint8)
                _pack_into(out["body"], self.body_mask.box, self.body_mask.binary, i)
        elif self._body is not None:
            out["body"] = np.packbits(self._body, axis=-1)
        fraction = self.fraction_stack()
        if fraction is not None:
            out["masks_fraction"] = fraction
        return out

    def _body_meta(self) -> dict:
        if self.body_mask is not None:
            m = self.body_mask
            count, volume = m.voxel_count, m.volume_cc
        elif self._body is not None:
            count = int(np.count_nonzero(self._body))
            volume = _weighted_volume(self._body, voxel_volumes_cc(self.grid))
        else:
            return {"source": self.body_source, "voxel_count": None, "volume_cc": None}
        return {"source": self.body_source, "voxel_count": count, "volume_cc": round(volume, 3)}

    def to_meta(self) -> dict:
        """JSON-ready description for meta.json (per-ROI metadata, skipped ROIs, rule, storage)."""
        rois = []
        for n, m in enumerate(self.masks):
            contour_cc = m.roi.contour_volume_cc(self.thickness_mm)
            mask_cc = m.volume_cc
            entry = {
                "index": n,
                "number": m.roi.number,
                "name": m.name,
                "original_name": m.roi.original_name,
                "source": m.roi.source,
                "interpreted_type": m.roi.interpreted_type,
                "color": list(m.roi.color) if m.roi.color else None,
                "voxel_count": m.voxel_count,
                "volume_cc": round(mask_cc, 6),
                "contour_volume_cc": round(contour_cc, 6),
                "volume_diff_pct": None if contour_cc <= 0 else round(100.0 * (mask_cc - contour_cc) / contour_cc, 3),
                "contour_planes": len(m.roi.planes),
                "first_plane_mm": m.roi.planes[0].position_mm,
                "last_plane_mm": m.roi.planes[-1].position_mm,
                "notes": list(m.roi.notes),
            }
            if m.fraction is not None:
                entry["fractional_volume_cc"] = round(m.fraction_volume_cc or 0.0, 6)
            rois.append(entry)
        return {
            "names": self.names,
            "rois": rois,
            "skipped": list(self.skipped),
            "slab_thickness_mm": self.thickness_mm,
            "fractional_supersampling": self.supersampling if self.supersampling >= 2 else None,
            "rule": RULE_NOTE,
            "storage": STORAGE_NOTE,
            "body": self._body_meta(),
            "notes": list(self.notes),
        }


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
        From :func:`.contours.read_structure_set` (names already harmonised).
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
        result.masks.append(rasterize_roi(roi, grid, thickness_mm, supersampling))
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


def body_from_ct(ct: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """Body mask from a CT: voxels above ``threshold_hu``, the largest connected part, holes filled.

    Connected components and their sizes come from SimpleITK (ConnectedComponent, then
    RelabelComponent, which numbers components by decreasing size); enclosed holes (lungs,
    bowel gas) are filled slice by slice with BinaryFillhole.

    Parameters
    ----------
    ct : (K, J, I) array
        CT numbers (HU).
    threshold_hu : float

    Returns
    -------
    (K, J, I) bool array
    """
    import SimpleITK as sitk

    above = np.ascontiguousarray(ct > threshold_hu, dtype=np.uint8)
    if not above.any():
        return above.astype(bool)
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(above)))
    body = sitk.GetArrayFromImage(labels) == 1
    filled = np.empty_like(body)
    for k in range(body.shape[0]):
        image = sitk.GetImageFromArray(body[k].astype(np.uint8))
        filled[k] = sitk.GetArrayFromImage(sitk.BinaryFillhole(image, fullyConnected=False, foregroundValue=1)) > 0
    return filled


def unpack_masks(packed: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse of the ``masks`` / ``body`` packing: ``(..., K, J, ceil(I/8))`` -> ``(..., K, J, I)`` bool."""
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, count=int(shape[-1])).astype(bool)
