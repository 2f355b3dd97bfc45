"""Facts of a dose array shared by the audit's steps: per-slice maxima and sums, the non-zero box,
Dmax and its location, and index boxes of one grid inside another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..geometry.grid import Grid
from ..structures import dvh
from ..structures.masks import voxel_volumes_cc

#: Doses within this fraction of Dmax count as "at Dmax" (to say how unique its location is).
AT_MAX_FRACTION = 1e-3


def per_voxel_cc(grid: Grid, shape: tuple) -> np.ndarray:
    cc = voxel_volumes_cc(grid)
    if np.ndim(cc) == 0:
        return np.full(shape[0], float(cc))
    return np.asarray(cc, dtype=np.float64)


#: Index tolerance of "inside a grid's extent" (round-off in the affines).
INSIDE_TOLERANCE = 1e-6


#: Largest change (index units) of one grid's index along an axis across another grid's extent
#: for which the two grids still count as axis-parallel (the inside tests become boxes).
PARALLEL_TOLERANCE = 1e-7


@dataclass
class DoseStats:
    """Per-slice facts of a dose array, found in a few passes and shared by the audit's steps.

    Attributes
    ----------
    slice_max : (K,) array
        Largest dose of each slice (the dose's dtype).
    support : tuple of 3 slices or None
        ``(k, j, i)`` bounding box of the non-zero doses (None when the dose is 0 everywhere):
        outside it the dose is exactly 0, so ROI doses there need no reading.
    slice_sum : (K,) float64 array
        Sum of each slice's doses.
    roi_sums : dict
        ``id(mask) -> (mask, voxels, float64 sum of their doses)`` of the ROI masks whose DVH was
        streamed from this dose (on grids of equal voxels): the body's mean dose reuses them.
    """

    slice_max: np.ndarray
    support: Optional[tuple]
    slice_sum: np.ndarray
    roi_sums: dict = field(default_factory=dict)

    @property
    def dmax(self) -> float:
        return float(self.slice_max.max())


def dose_stats(dose: np.ndarray) -> DoseStats:
    """:class:`DoseStats` of a ``(K, J, I)`` dose: one pass slice by slice (maximum, minimum, sum),
    then the rows and columns of the non-zero box from the slices that have doses."""
    k_n = dose.shape[0]
    slice_max = np.empty(k_n, dtype=dose.dtype)
    slice_min = np.empty(k_n, dtype=dose.dtype)
    slice_sum = np.zeros(k_n, dtype=np.float64)
    for k in range(k_n):  # slice by slice: the later reductions read the slice from the cache
        plane = dose[k]
        slice_max[k] = plane.max()
        slice_min[k] = plane.min()
        if slice_max[k] != 0 or slice_min[k] != 0:
            slice_sum[k] = plane.sum(dtype=np.float64)
    ks = np.flatnonzero((slice_max != 0) | (slice_min != 0))
    if ks.size == 0:
        return DoseStats(slice_max, None, slice_sum)
    kb = slice(int(ks[0]), int(ks[-1]) + 1)
    sub = dose[kb]
    nonzero = sub.max(axis=0) != 0
    if float(slice_min[kb].min()) < 0:
        nonzero |= sub.min(axis=0) != 0
    rows = np.flatnonzero(nonzero.any(axis=1))
    cols = np.flatnonzero(nonzero.any(axis=0))
    support = (kb, slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    return DoseStats(slice_max, support, slice_sum)


def slice_maxima(dose: np.ndarray) -> np.ndarray:
    return dose.max(axis=(1, 2))


#: Doses within this fraction of Dmax tie with it (float32 rounding of one value, not a clinical tolerance).
TIE_FRACTION = 1e-6
#: A plateau of more tied voxels than this is not traced voxel by voxel (its first voxel is used).
MAX_PLATEAU_VOXELS = 1 << 20


def dmax_location(dose: np.ndarray, slice_max: Optional[np.ndarray] = None) -> tuple:
    """(:func:`dmax_index`, number of voxels within :data:`AT_MAX_FRACTION` of Dmax); reads only the slices that hold them."""
    if slice_max is None:
        slice_max = slice_maxima(dose)
    dmax = float(slice_max.max())
    if dmax <= 0:
        return tuple(int(n // 2) for n in dose.shape), int(dose.size)
    near = dmax * (1 - AT_MAX_FRACTION)
    ks = np.flatnonzero(slice_max >= near)  # the same float32 comparison as on the voxels
    k0 = int(ks[0])
    part = dose[k0 : int(ks[-1]) + 1]
    count = int(np.count_nonzero(part >= near))
    tie = dmax - abs(dmax) * TIE_FRACTION
    tied = np.argwhere(part >= tie)
    tied[:, 0] += k0
    return _plateau_centre(tied), count


def _plateau_centre(tied: np.ndarray) -> tuple:
    """The voxel nearest the centroid of the connected plateau (26-neighbours) holding the first of
    ``tied`` (``(N, 3)`` indices in memory order); other plateaus, however high, are not mixed in."""
    first = tuple(int(v) for v in tied[0])
    if tied.shape[0] == 1 or tied.shape[0] > MAX_PLATEAU_VOXELS:
        return first
    lo = tied.min(axis=0)
    shape = tuple(int(v) for v in tied.max(axis=0) - lo + 1)
    flat = np.ravel_multi_index(tuple((tied - lo).T), shape)  # increasing: tied is in memory order
    seen = np.zeros(flat.size, dtype=bool)
    seen[0] = True
    frontier = tied[:1] - lo
    steps = np.array([d for d in np.ndindex(3, 3, 3) if d != (1, 1, 1)]) - 1
    plateau = [frontier]
    limits = np.array(shape)
    while frontier.size:
        near = (frontier[:, None, :] + steps[None]).reshape(-1, 3)
        near = near[np.all((near >= 0) & (near < limits), axis=1)]
        index = np.unique(np.ravel_multi_index(tuple(near.T), shape))
        at = np.minimum(np.searchsorted(flat, index), flat.size - 1)
        at = at[(flat[at] == index) & ~seen[at]]
        seen[at] = True
        frontier = tied[at] - lo
        plateau.append(frontier)
    voxels = np.concatenate(plateau) + lo
    centre = voxels.mean(axis=0)
    best = voxels[np.lexsort((*(voxels.T[::-1]), ((voxels - centre) ** 2).sum(axis=1)))[0]]
    return tuple(int(v) for v in best)


def dmax_index(dose: np.ndarray, slice_max: Optional[np.ndarray] = None) -> tuple:
    """Index ``(k, j, i)`` of the dose maximum: the argmax.

    Voxels equal to Dmax (within :data:`TIE_FRACTION`, float32 rounding) tie; among them only
    those connected (26-neighbours) to the first one in memory order count, and the one nearest
    that plateau's centroid is returned: a flat top (or the whole face of a linear field) is
    located at its middle, while two separate hot spots of equal height are never averaged into
    a point between them. ``slice_max`` (each slice's maximum, e.g. :attr:`DoseStats.slice_max`)
    saves a pass.
    """
    return dmax_location(dose, slice_max)[0]


def region_of(mask) -> tuple:
    """``(box, binary)`` of a mask given as a full bool array or as an ROI mask (box + binary)."""
    if isinstance(mask, np.ndarray):
        return tuple(slice(0, n) for n in mask.shape), mask
    return mask.box, mask.binary


def intersect_boxes(box: tuple, other: Optional[tuple]) -> Optional[tuple]:
    """The part of ``box`` inside ``other`` (both (k, j, i) slices), relative to ``box``; None if empty."""
    if other is None:
        return None
    rel = []
    for a, b in zip(box, other):
        lo, hi = max(a.start, b.start), min(a.stop, b.stop)
        if hi <= lo:
            return None
        rel.append(slice(lo - a.start, hi - a.start))
    return tuple(rel)


def masked_slice_sums(dose: np.ndarray, box: tuple, binary: np.ndarray, support: Optional[tuple]) -> np.ndarray:
    """Per slice of ``box``: the sum (float64) of the doses under ``binary``; only ``support`` is read."""
    sums = np.zeros(binary.shape[0], dtype=np.float64)
    rel = intersect_boxes(box, support)
    if rel is None:
        return sums
    kb, jb, ib = box
    for kk in range(rel[0].start, rel[0].stop):
        b = binary[kk, rel[1], rel[2]]
        region = dose[
            kb.start + kk,
            jb.start + rel[1].start : jb.start + rel[1].stop,
            ib.start + rel[2].start : ib.start + rel[2].stop,
        ]
        sums[kk] = np.add.reduce(region[b], dtype=np.float64)
    return sums


def inside_box(source: Grid, target: Grid) -> Optional[tuple]:
    """The voxel centres of ``source`` inside ``target``'s extent as a box, when the grids' axes are parallel.

    Returns
    -------
    tuple of 3 slices ``(k, j, i)`` on ``source`` (empty slices when none is inside), or None
    when the axes are not parallel (then the centres inside do not form a box).
    """
    try:
        jacobian = np.linalg.inv(target.affine[:3, :3]) @ source.affine[:3, :3]  # target ijk per source ijk
    except np.linalg.LinAlgError:
        return None
    sizes = (source.shape[2], source.shape[1], source.shape[0])
    partner = []
    for a in range(3):
        row = np.abs(jacobian[a])
        t = int(np.argmax(row))
        if sum(row[u] * (sizes[u] - 1) for u in range(3) if u != t) > PARALLEL_TOLERANCE:
            return None
        partner.append(t)
    if sorted(partner) != [0, 1, 2]:
        return None
    limits = (target.shape[2], target.shape[1], target.shape[0])
    box: list = [None, None, None]
    for a, t in enumerate(partner):
        line = np.zeros((sizes[t], 3))
        line[:, t] = np.arange(sizes[t])
        index = target.lps_to_index(source.index_to_lps(line))[:, a]
        hit = np.flatnonzero((index >= -0.5 - INSIDE_TOLERANCE) & (index <= limits[a] - 0.5 + INSIDE_TOLERANCE))
        if hit.size == 0:
            return (slice(0, 0),) * 3
        if hit[-1] - hit[0] + 1 != hit.size:  # not an interval: leave it to the voxel by voxel test
            return None
        box[2 - t] = slice(int(hit[0]), int(hit[-1]) + 1)
    return tuple(box)


def inside_extent(source: Grid, target: Grid) -> np.ndarray:
    """Which voxel centres of ``source`` lie inside ``target``'s extent (its voxels' outer faces).

    Returns
    -------
    (K, J, I) bool array on ``source``
    """
    box = inside_box(source, target)
    if box is not None:
        out = np.zeros(source.shape, dtype=bool)
        out[box] = True
        return out
    k_n, j_n, i_n = source.shape
    out = np.zeros(source.shape, dtype=bool)
    jj, ii = np.meshgrid(np.arange(j_n, dtype=np.float64), np.arange(i_n, dtype=np.float64), indexing="ij")
    limits = np.array([target.shape[2], target.shape[1], target.shape[0]], dtype=np.float64) - 0.5
    for k in range(k_n):
        ijk = np.stack([ii, jj, np.full(ii.shape, float(k))], axis=-1)
        index = target.lps_to_index(source.index_to_lps(ijk))
        out[k] = np.all((index >= -0.5 - INSIDE_TOLERANCE) & (index <= limits + INSIDE_TOLERANCE), axis=-1)
    return out


def region_chunks(dose: np.ndarray, box: tuple, binary: np.ndarray, rel: Optional[tuple]):
    """A callable giving the doses under ``binary`` (on ``box``) inside ``rel`` (relative to ``box``), slab by slab.

    ``rel`` None: none (the voxels left out have 0 Gy).
    """
    if rel is None:
        return lambda: ()
    kb, jb, ib = box
    rows = slice(jb.start + rel[1].start, jb.start + rel[1].stop)
    cols = slice(ib.start + rel[2].start, ib.start + rel[2].stop)
    per_slice = max((rows.stop - rows.start) * (cols.stop - cols.start), 1)
    step = max(1, dvh.CHUNK_VALUES // per_slice)

    def chunks():
        for k in range(rel[0].start, rel[0].stop, step):
            stop = min(k + step, rel[0].stop)
            yield dose[kb.start + k : kb.start + stop, rows, cols][binary[k:stop, rel[1], rel[2]]]

    return chunks
