"""The dosimetric audit of one case: did putting the dose on the output grid change what it means?

Compares the dose on its native grid with the dose on the output grid: Dmax and its location,
mean dose in the body, integral dose, the part of the integral dose lying outside the output
grid, the dose on the native grid's outer faces, per-ROI DVH points on both grids, the beam sum
against the PLAN dose when both exist, and the geometry checks already made. Findings over the
thresholds become flags (short codes) in ``meta["audit"]["flags"]`` and in manifest.csv.

Default thresholds (:data:`DEFAULT_THRESHOLDS`; override any of them through
``AlignOptions.audit_thresholds`` or ``dosealign export --audit-thresholds FILE.json``):

``dmax_diff_pct`` 3
    |Dmax output - Dmax native| in % of Dmax native. 3 % is the dose tolerance of routine
    patient-specific QA (3 %/3 mm); linear interpolation of a 2-3 mm dose grid blunts a clinical
    peak by well under that, so more means a sharp peak lost or a peak outside the output grid.
``integral_diff_pct`` 2
    Integral dose on the output grid against the native integral inside the output grid's extent.
    Resampling a smooth dose conserves the integral to about 1 %; more means dose was misplaced.
``outside_integral_pct`` 1
    Share of the native integral dose whose voxels lie outside the output grid (lost to the
    training pair, e.g. a CT shorter than the irradiated volume).
``edge_dose_pct`` 10
    Largest dose on the native grid's outer faces, % of Dmax: a clinical dose grid covers the
    patient and falls to a few % at its edges; above 10 % it cuts through dose.
``dvh_delta_pct`` 2, ``dvh_min_volume_cc`` 1
    Largest |output - native| of an ROI's Dmean, D99, D95, D50, D5, D1 or D0.03cc, in % of the
    reference dose (the prescription when the RTPLAN gives one, else Dmax native). 2 % is about
    the agreement of independent DVH calculators on clinical structures; ROIs under 1 cm^3 are
    reported but not flagged (a few voxels decide their points on either grid).
``roi_outside_dose_grid_pct`` 1
    Share of an ROI's output voxels outside the native dose grid. Such an ROI gets its own flag
    and is left out of the DVH-delta flag: its output DVH counts 0 Gy there by definition.
``roi_volume_diff_pct`` 5, ``roi_volume_min_cc`` 5
    Mask volume against the contours' volume on the output grid for ROIs of at least 5 cm^3
    (published mask validations accept 3-4 %).
``beam_sum_diff_pct`` 1
    max |sum of BEAM doses - PLAN dose| in % of the PLAN Dmax: the two differ only by the
    storage rounding of each file; 1 % means a beam missing, doubled or computed differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import dvh
from .grid import Grid, Volume
from .options import Interpolator
from .resample import resample
from .structures import StructureMasks, voxel_volumes_cc

DEFAULT_THRESHOLDS = {
    "dmax_diff_pct": 3.0,
    "integral_diff_pct": 2.0,
    "outside_integral_pct": 1.0,
    "edge_dose_pct": 10.0,
    "dvh_delta_pct": 2.0,
    "dvh_min_volume_cc": 1.0,
    "roi_outside_dose_grid_pct": 1.0,
    "roi_volume_diff_pct": 5.0,
    "roi_volume_min_cc": 5.0,
    "beam_sum_diff_pct": 1.0,
}
#: Doses within this fraction of Dmax count as "at Dmax" (to say how unique its location is).
AT_MAX_FRACTION = 1e-3


def thresholds_with(overrides: Optional[dict]) -> dict:
    """The default thresholds updated by ``overrides``; unknown names raise ``ValueError``."""
    merged = dict(DEFAULT_THRESHOLDS)
    for name, value in (overrides or {}).items():
        if name not in DEFAULT_THRESHOLDS:
            raise ValueError(f"unknown audit threshold {name!r}; known: {', '.join(sorted(DEFAULT_THRESHOLDS))}")
        merged[name] = float(value)
    return merged


# ---- dose-level statistics -------------------------------------------------------------------


def _per_voxel(grid: Grid, shape: tuple) -> np.ndarray:
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


def _slice_max(dose: np.ndarray) -> np.ndarray:
    return dose.max(axis=(1, 2))


def _dmax_location(dose: np.ndarray, slice_max: Optional[np.ndarray] = None) -> tuple:
    """(:func:`dmax_index`, number of voxels within 0.1 % of Dmax); reads only the slices that hold them."""
    if slice_max is None:
        slice_max = _slice_max(dose)
    dmax = float(slice_max.max())
    if dmax <= 0:
        return tuple(int(n // 2) for n in dose.shape), int(dose.size)
    threshold = dmax * (1 - AT_MAX_FRACTION)
    ks = np.flatnonzero(slice_max >= threshold)  # the same float32 comparison as on the voxels
    k0 = int(ks[0])
    at_max = dose[k0 : int(ks[-1]) + 1] >= threshold
    count = int(np.count_nonzero(at_max))
    if count > 1_000_000:  # a huge plateau: its centre if tied, else the first maximum
        sums = [at_max.sum(axis=tuple(a for a in range(3) if a != axis)) for axis in range(3)]
        starts = (k0, 0, 0)
        centre = tuple(
            int(round(float(np.arange(starts[axis], starts[axis] + sums[axis].size) @ sums[axis]) / count))
            for axis in range(3)
        )
        inside = 0 <= centre[0] - k0 < at_max.shape[0] and at_max[(centre[0] - k0, centre[1], centre[2])]
        if inside:
            return centre, count
        return tuple(int(v) for v in np.unravel_index(int(np.argmax(dose)), dose.shape)), count
    tied = np.argwhere(at_max)
    tied[:, 0] += k0
    if tied.shape[0] == 1:
        return tuple(int(v) for v in tied[0]), count
    centre = tied.mean(axis=0)
    return tuple(int(v) for v in tied[int(np.argmin(((tied - centre) ** 2).sum(axis=1)))]), count


def dmax_index(dose: np.ndarray, slice_max: Optional[np.ndarray] = None) -> tuple:
    """Index ``(k, j, i)`` of the dose maximum; with ties, the one nearest the tied voxels' centroid.

    Doses within 0.1 % of Dmax count as tied, so a flat maximum (a plateau, or a whole face of a
    linear field) is located at its middle rather than at its first voxel in memory order.
    ``slice_max`` (each slice's maximum, e.g. :attr:`DoseStats.slice_max`) saves a pass.
    """
    return _dmax_location(dose, slice_max)[0]


def _region(mask) -> tuple:
    """``(box, binary)`` of a mask given as a full bool array or as an ROI mask (box + binary)."""
    if isinstance(mask, np.ndarray):
        return tuple(slice(0, n) for n in mask.shape), mask
    return mask.box, mask.binary


def _intersect(box: tuple, other: Optional[tuple]) -> Optional[tuple]:
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


def _masked_slice_sums(dose: np.ndarray, box: tuple, binary: np.ndarray, support: Optional[tuple]) -> np.ndarray:
    """Per slice of ``box``: the sum (float64) of the doses under ``binary``; only ``support`` is read."""
    sums = np.zeros(binary.shape[0], dtype=np.float64)
    rel = _intersect(box, support)
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


def dose_summary(volume: Volume, body=None, stats: Optional[DoseStats] = None) -> dict:
    """Dmax (value, LPS location, index), integral dose and mean dose in the body of one dose.

    Parameters
    ----------
    volume : Volume
        Dose (Gy) on its grid, ``(K, J, I)``.
    body : (K, J, I) bool array or RoiMask, optional
        Body mask on the same grid (a whole array, or a mask held as its bounding box); gives
        ``dmean_body_gy``.
    stats : DoseStats, optional
        :func:`dose_stats` of the dose, when already known.

    Returns
    -------
    dict
        ``dmax_gy``, ``dmax_lps`` [x, y, z] mm and ``dmax_index`` [k, j, i] (see :func:`dmax_index`),
        ``voxels_at_dmax`` (within 0.1 % of Dmax), ``integral_gy_l`` (sum of dose x
        voxel volume, Gy.L), ``dmean_body_gy`` and ``body_volume_cc``.
    """
    dose = volume.array
    stats = stats if stats is not None else dose_stats(dose)
    slice_cc = _per_voxel(volume.grid, dose.shape)
    index, at_max = _dmax_location(dose, stats.slice_max)
    dmax = stats.dmax
    lps = volume.grid.index_to_lps(np.array([index[2], index[1], index[0]], dtype=np.float64))
    out = {
        "dmax_gy": dmax,
        "dmax_lps": [round(float(v), 3) for v in lps],
        "dmax_index": [int(v) for v in index],
        "voxels_at_dmax": at_max,
        "integral_gy_l": float(stats.slice_sum @ slice_cc) / 1000.0,
        "dmean_body_gy": None,
        "body_volume_cc": None,
    }
    known = stats.roi_sums.get(id(body))
    if known is not None and known[0] is body and known[1] > 0:  # the body's ROI, summed with its DVH
        cc = float(slice_cc[0])  # equal voxels
        body_cc = known[1] * cc
        out["dmean_body_gy"] = float(known[2] * cc / body_cc)
        out["body_volume_cc"] = float(body_cc)
    elif body is not None:
        box, binary = _region(body)
        counts = np.count_nonzero(binary, axis=(1, 2)) if binary.size else np.zeros(0)
        if counts.any():
            body_cc = counts @ slice_cc[box[0]]
            body_dose = _masked_slice_sums(dose, box, binary, stats.support) @ slice_cc[box[0]]
            out["dmean_body_gy"] = float(body_dose / body_cc)
            out["body_volume_cc"] = float(body_cc)
    return out


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


def edge_dose_pct(volume: Volume, dmax: Optional[float] = None) -> float:
    """Largest dose on the six outer faces of a dose grid, in % of its Dmax (0 for a zero dose)."""
    d = volume.array
    dmax = float(d.max()) if dmax is None else float(dmax)
    if dmax <= 0:
        return 0.0
    faces = [d[0], d[-1], d[:, 0], d[:, -1], d[:, :, 0], d[:, :, -1]]
    return 100.0 * max(float(f.max()) for f in faces) / dmax


# ---- DVHs ------------------------------------------------------------------------------------


def _roi_doses(dose: np.ndarray, grid: Grid, masks: StructureMasks, name: str) -> tuple:
    """(doses, voxel volumes) of the voxels of ROI ``name``; volumes scalar on uniform grids."""
    mask = masks.mask(name)
    if mask.binary.size == 0:
        return np.zeros(0), 0.0
    values = dose[mask.box][mask.binary]
    cc = voxel_volumes_cc(grid)
    if np.ndim(cc) == 0:
        return values, float(cc)
    per_slice = np.asarray(cc)[mask.box[0]]
    weights = np.broadcast_to(per_slice[:, None, None], mask.binary.shape)[mask.binary]
    return values, weights


def _region_chunks(dose: np.ndarray, box: tuple, binary: np.ndarray, rel: Optional[tuple]):
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


def roi_dvh(
    volume: Volume,
    mask,
    bins: np.ndarray,
    prescription_gy: Optional[float] = None,
    support: Optional[tuple] = ...,
    stats: Optional[DoseStats] = None,
) -> tuple:
    """DVH points (:func:`.dvh.dvh_points`) and cumulative DVH (:func:`.dvh.cumulative_dvh`) of one ROI mask.

    On grids of equal voxels the doses are streamed from the mask's box (:func:`.dvh.uniform_dvh`),
    reading only the part of it where the dose is non-zero (``support``, from :func:`dose_stats`;
    found here when not given; ``stats`` gives it and keeps the ROI's dose sum for the body's
    mean dose); grids with uneven slices gather the doses and their voxel volumes.
    """
    if stats is not None:
        support = stats.support
    cc = voxel_volumes_cc(volume.grid)
    if mask.binary.size == 0:
        return dvh.dvh_points(np.zeros(0), 0.0, prescription_gy), np.zeros(np.shape(bins), dtype=np.float32)
    if np.ndim(cc) != 0:
        values = volume.array[mask.box][mask.binary]
        per_slice = np.asarray(cc)[mask.box[0]]
        weights = np.broadcast_to(per_slice[:, None, None], mask.binary.shape)[mask.binary]
        return dvh.dvh_points(values, weights, prescription_gy), dvh.cumulative_dvh(values, weights, bins)
    if support is ...:
        support = dose_stats(volume.array).support
    chunks = _region_chunks(volume.array, mask.box, mask.binary, _intersect(mask.box, support))
    totals: dict = {}
    points, curve = dvh.uniform_dvh(chunks, float(cc), bins, prescription_gy, count=mask.voxel_count, totals=totals)
    if stats is not None:
        stats.roi_sums[id(mask)] = (mask, totals["count"], totals["sum"])
    return points, curve


def outside_pct(mask, grid: Grid, other: Grid, box: Optional[tuple] = ...) -> float:
    """Share (% of voxels) of an ROI mask on ``grid`` whose centres lie outside ``other``'s extent.

    ``box`` is :func:`inside_box` ``(grid, other)`` when already known.
    """
    if mask.binary.size == 0 or not mask.voxel_count:
        return 0.0
    if box is ...:
        box = inside_box(grid, other)
    if box is not None:
        rel = _intersect(mask.box, box)
        inside = 0 if rel is None else int(np.count_nonzero(mask.binary[rel]))
        return 100.0 * (mask.voxel_count - inside) / mask.voxel_count
    kb, jb, ib = mask.box
    limits = np.array([other.shape[2], other.shape[1], other.shape[0]], dtype=np.float64) - 0.5
    outside = 0
    for kk in range(mask.binary.shape[0]):
        jj, ii = np.nonzero(mask.binary[kk])
        if jj.size == 0:
            continue
        ijk = np.stack([ii + ib.start, jj + jb.start, np.full(jj.shape, kb.start + kk)], axis=-1).astype(np.float64)
        index = other.lps_to_index(grid.index_to_lps(ijk))
        inside = np.all((index >= -0.5 - INSIDE_TOLERANCE) & (index <= limits + INSIDE_TOLERANCE), axis=-1)
        outside += int(np.count_nonzero(~inside))
    return 100.0 * outside / mask.voxel_count


def roi_dvhs(
    output_dose: Volume,
    output_masks: StructureMasks,
    native_dose: Optional[Volume],
    native_masks: Optional[StructureMasks],
    prescription_gy: Optional[float] = None,
    *,
    output_stats: Optional[DoseStats] = None,
    native_stats: Optional[DoseStats] = None,
) -> tuple:
    """Per-ROI DVH points on both grids, their differences and the cumulative DVH arrays.

    ``output_stats`` and ``native_stats`` (:func:`dose_stats` of the two doses) are found here
    when not given.

    Returns
    -------
    (list of dict, dict of arrays)
        One entry per ROI (``name``, ``output``, ``native``, ``diff``) and the arrays
        ``dvh_dose_gy`` (B,), ``dvh_output`` (N, B) and, with a native grid, ``dvh_native`` (N, B),
        in cm^3 receiving at least each dose.
    """
    compare = native_masks is not None and native_dose is not None
    output_stats = output_stats if output_stats is not None else dose_stats(output_dose.array)
    top = output_stats.dmax
    if native_dose is not None:
        native_stats = native_stats if native_stats is not None else dose_stats(native_dose.array)
        top = max(top, native_stats.dmax)
    bins = dvh.dose_bins(top)
    names = output_masks.names
    curves_out = np.zeros((len(names), bins.size), dtype=np.float32)
    curves_native = np.zeros((len(names), bins.size), dtype=np.float32) if native_masks is not None else None
    box = inside_box(output_dose.grid, native_dose.grid) if compare else None
    entries = []
    for n, name in enumerate(names):
        mask = output_masks.mask(name)
        points, curves_out[n] = roi_dvh(output_dose, mask, bins, prescription_gy, stats=output_stats)
        entry = {"name": name, "output": points, "native": None, "diff": None}
        if compare:
            entry["outside_native_grid_pct"] = outside_pct(mask, output_dose.grid, native_dose.grid, box)
            native_mask = native_masks.mask(name)
            entry["native"], curves_native[n] = roi_dvh(
                native_dose, native_mask, bins, prescription_gy, stats=native_stats
            )
            entry["diff"] = dvh.compare_points(entry["native"], entry["output"])
        entries.append(entry)
    arrays = {"dvh_dose_gy": bins, "dvh_output": curves_out}
    if curves_native is not None:
        arrays["dvh_native"] = curves_native
    return entries, arrays


def worst_dvh_delta(
    entries: list, min_volume_cc: float = 0.0, max_outside_pct: Optional[float] = None
) -> Optional[dict]:
    """The largest |output - native| DVH point over the ROIs compared on both grids.

    Only ROIs of at least ``min_volume_cc`` (native) count and, with ``max_outside_pct``, only
    those with at most that share of their output voxels outside the native dose grid (there the
    output dose is 0 by definition, so the delta says "truncated", not "resampled").
    """
    worst = None
    for entry in entries:
        if not entry["diff"] or (entry["native"]["volume_cc"] or 0.0) < min_volume_cc:
            continue
        if max_outside_pct is not None and entry.get("outside_native_grid_pct", 0.0) > max_outside_pct:
            continue
        for key in dvh.COMPARED_POINTS:
            value = entry["diff"].get(key)
            if value is not None and (worst is None or abs(value) > abs(worst["delta_gy"])):
                worst = {"roi": entry["name"], "point": key, "delta_gy": value}
    return worst


# ---- beam sum and geometry -------------------------------------------------------------------


def beam_sum_check(plan_dose: Volume, beam_doses: list, left_out: Optional[list] = None) -> dict:
    """Compare the sum of BEAM doses with the PLAN dose, on the PLAN dose's grid.

    Parameters
    ----------
    plan_dose : Volume
        The PLAN dose (Gy) on its native grid.
    beam_doses : list of (Volume, str)
        Each BEAM dose and its file name; doses on another grid are resampled (linear, 0 outside).
    left_out : list of (str, str), optional
        BEAM doses not summed and why (copies, beams counted twice).

    Returns
    -------
    dict
        ``files``, ``left_out``, ``max_abs_diff_gy``, ``max_abs_diff_pct`` (of the PLAN Dmax),
        ``at_lps``, ``plan_dmax_gy``, ``beam_sum_dmax_gy``, ``resampled`` (files not on the grid).
    """
    total = np.zeros(plan_dose.grid.shape, dtype=np.float64)
    resampled = []
    for volume, name in beam_doses:
        if volume.grid.equal(plan_dose.grid):
            total += volume.array
        else:
            total += resample(volume, plan_dose.grid, Interpolator.LINEAR, fill=0.0)
            resampled.append(name)
    diff = np.abs(total - plan_dose.array)
    index = np.unravel_index(int(np.argmax(diff)), diff.shape)
    plan_max = float(plan_dose.array.max())
    worst = float(diff[index])
    lps = plan_dose.grid.index_to_lps(np.array([index[2], index[1], index[0]], dtype=np.float64))
    return {
        "files": [name for _v, name in beam_doses],
        "left_out": [{"file": f, "reason": r} for f, r in (left_out or [])],
        "resampled": resampled,
        "plan_dmax_gy": plan_max,
        "beam_sum_dmax_gy": float(total.max()),
        "max_abs_diff_gy": worst,
        "max_abs_diff_pct": 100.0 * worst / plan_max if plan_max > 0 else None,
        "at_lps": [round(float(v), 3) for v in lps],
    }


def geometry_summary(meta: dict) -> dict:
    """The geometry checks the engine made (from ``meta["geometry"]`` and the dose grids), one list."""
    checks = []
    ct = (meta.get("geometry") or {}).get("ct") or {}
    for check in ct.get("checks", []):
        checks.append({"object": "CT", **check})
    dose = meta.get("dose") or {}
    files = (meta.get("source") or {}).get("rtdose_files") or []
    for n, grid in enumerate(dose.get("native_grids") or []):
        name = files[n] if n < len(files) else f"dose {n + 1}"
        detail = (
            f"GridFrameOffsetVector {grid.get('gfov_mode')}, frames {grid.get('frame_order')}, "
            f"{'uniform' if grid.get('uniform_frames') else 'non-uniform (exact positions used)'}"
        )
        checks.append({"object": name, "check": "dose frames", "result": "ok", "detail": detail})
        for warning in grid.get("warnings") or []:
            checks.append({"object": name, "check": "dose grid", "result": "warning", "detail": warning})
    problems = [c for c in checks if c.get("result") not in ("ok",)]
    return {
        "performed": checks,
        "problems": problems,
        "ct_regularized": bool(ct.get("regularized")),
        "ct_regularization": ct.get("regularization"),
    }


# ---- the audit of one case -------------------------------------------------------------------


def audit_dose(
    output_dose: Volume,
    native_dose: Optional[Volume],
    *,
    output_body=None,
    native_body=None,
    output_stats: Optional[DoseStats] = None,
    native_stats: Optional[DoseStats] = None,
) -> dict:
    """Dose-level comparison of the native and output doses (see :func:`dose_summary`).

    ``output_body`` and ``native_body`` are bool arrays or ROI masks (box + binary);
    ``output_stats`` and ``native_stats`` (:func:`dose_stats`) are found here when not given.

    Returns
    -------
    dict
        ``output``, ``native`` (None without a single native grid), ``dmax_diff_gy``,
        ``dmax_diff_pct``, ``dmax_distance_mm``, ``integral_native_inside_gy_l``,
        ``integral_diff_pct``, ``outside_integral_pct``, ``edge_dose_pct``.
    """
    out = {"output": dose_summary(output_dose, output_body, output_stats), "native": None}
    if native_dose is None:
        out["note"] = "the doses are on different grids: no single native grid to compare with"
        return out
    native_stats = native_stats if native_stats is not None else dose_stats(native_dose.array)
    native = dose_summary(native_dose, native_body, native_stats)
    out["native"] = native
    out["dmax_diff_gy"] = out["output"]["dmax_gy"] - native["dmax_gy"]
    out["dmax_diff_pct"] = 100.0 * out["dmax_diff_gy"] / native["dmax_gy"] if native["dmax_gy"] > 0 else 0.0
    out["dmax_distance_mm"] = float(np.linalg.norm(np.subtract(out["output"]["dmax_lps"], native["dmax_lps"])))
    slice_cc = _per_voxel(native_dose.grid, native_dose.array.shape)
    box = inside_box(native_dose.grid, output_dose.grid)
    if box is not None:
        inside_dose = np.zeros(native_dose.array.shape[0], dtype=np.float64)
        part = native_dose.array[box]
        if part.size:
            inside_dose[box[0]] = part.sum(axis=(1, 2), dtype=np.float64)
    else:
        inside = inside_extent(native_dose.grid, output_dose.grid)
        inside_dose = np.where(inside, native_dose.array, 0).reshape(inside.shape[0], -1).sum(axis=1, dtype=np.float64)
    inside_integral = float(inside_dose @ slice_cc) / 1000.0
    out["integral_native_inside_gy_l"] = inside_integral
    total = native["integral_gy_l"]
    out["outside_integral_pct"] = 100.0 * (total - inside_integral) / total if total > 0 else 0.0
    out["integral_diff_pct"] = (
        100.0 * (out["output"]["integral_gy_l"] - inside_integral) / inside_integral if inside_integral > 0 else 0.0
    )
    out["edge_dose_pct"] = edge_dose_pct(native_dose, native_stats.dmax)
    if native["dmean_body_gy"] is not None and out["output"]["dmean_body_gy"] is not None:
        out["dmean_body_diff_gy"] = out["output"]["dmean_body_gy"] - native["dmean_body_gy"]
    return out


def flags_for(
    dose_audit: dict,
    roi_entries: list,
    structures: Optional[dict],
    beam_sum: Optional[dict],
    geometry: dict,
    thresholds: dict,
    reference_dose_gy: Optional[float],
) -> list:
    """The findings over the thresholds: ``[{"flag": code, "detail": text}]``."""
    flags = []

    def add(code: str, detail: str) -> None:
        flags.append({"flag": code, "detail": detail})

    t = thresholds
    if dose_audit.get("native") is not None:
        if abs(dose_audit["dmax_diff_pct"]) > t["dmax_diff_pct"]:
            add(
                "dmax_changed",
                f"Dmax {dose_audit['native']['dmax_gy']:.4g} Gy native -> {dose_audit['output']['dmax_gy']:.4g} Gy "
                f"({dose_audit['dmax_diff_pct']:+.2f} %, limit {t['dmax_diff_pct']:g} %)",
            )
        if dose_audit["outside_integral_pct"] > t["outside_integral_pct"]:
            add(
                "dose_outside_grid",
                f"{dose_audit['outside_integral_pct']:.2f} % of the integral dose lies outside the output grid "
                f"(limit {t['outside_integral_pct']:g} %)",
            )
        if abs(dose_audit["integral_diff_pct"]) > t["integral_diff_pct"]:
            add(
                "integral_changed",
                f"integral dose inside the output grid changed by {dose_audit['integral_diff_pct']:+.2f} % "
                f"(limit {t['integral_diff_pct']:g} %)",
            )
        if dose_audit["edge_dose_pct"] > t["edge_dose_pct"]:
            add(
                "dose_grid_edge",
                f"the native dose grid's faces reach {dose_audit['edge_dose_pct']:.1f} % of Dmax "
                f"(limit {t['edge_dose_pct']:g} %): the dose grid cuts through dose",
            )
    cut = [
        f"{e['name']} ({e['outside_native_grid_pct']:.1f} %)"
        for e in roi_entries
        if e.get("outside_native_grid_pct", 0.0) > t["roi_outside_dose_grid_pct"]
    ]
    if cut:
        add(
            "roi_outside_dose_grid",
            f"ROIs partly outside the native dose grid (0 Gy there on the output grid; limit "
            f"{t['roi_outside_dose_grid_pct']:g} %): {', '.join(cut)}",
        )
    if reference_dose_gy:
        limit_gy = t["dvh_delta_pct"] / 100.0 * reference_dose_gy
        worst = worst_dvh_delta(roi_entries, t["dvh_min_volume_cc"], t["roi_outside_dose_grid_pct"])
        if worst is not None and abs(worst["delta_gy"]) > limit_gy:
            add(
                "dvh_changed",
                f"{worst['roi']} {worst['point']} changed by {worst['delta_gy']:+.3g} Gy "
                f"(limit {limit_gy:.3g} Gy = {t['dvh_delta_pct']:g} % of {reference_dose_gy:.4g} Gy)",
            )
    for roi in (structures or {}).get("rois", []):
        diff = roi.get("volume_diff_pct")
        if (
            diff is not None
            and roi["contour_volume_cc"] >= t["roi_volume_min_cc"]
            and abs(diff) > t["roi_volume_diff_pct"]
        ):
            add(
                "roi_volume_mismatch",
                f"{roi['name']}: mask {roi['volume_cc']:.4g} cc vs contours {roi['contour_volume_cc']:.4g} cc "
                f"({diff:+.1f} %, limit {t['roi_volume_diff_pct']:g} %)",
            )
    beam_pct = (beam_sum or {}).get("max_abs_diff_pct")
    if beam_pct is not None and beam_pct > t["beam_sum_diff_pct"]:
        add(
            "beam_sum_mismatch",
            f"sum of {len(beam_sum['files'])} BEAM doses differs from the PLAN dose by up to "
            f"{beam_sum['max_abs_diff_gy']:.4g} Gy ({beam_sum['max_abs_diff_pct']:.2f} %, limit {t['beam_sum_diff_pct']:g} %)",
        )
    if geometry.get("ct_regularized"):
        add("ct_regularized", str(geometry.get("ct_regularization") or "CT resampled onto a regular grid"))
    for problem in geometry.get("problems", []):
        if problem.get("object") != "CT":
            add("dose_grid_warning", f"{problem['object']}: {problem['detail']}")
    return flags


def manifest_columns(audit: dict) -> dict:
    """The audit's summary columns for manifest.csv (strings, empty when not applicable)."""
    dose = audit["dose"]
    native = dose.get("native") or {}
    worst = audit.get("worst_dvh_delta") or {}

    def fmt(value, digits: int = 6) -> str:
        return "" if value is None else f"{value:.{digits}g}"

    return {
        "audit_flags": ";".join(f["flag"] for f in audit["flags"]),
        "dmax_native_gy": fmt(native.get("dmax_gy")),
        "dmax_output_gy": fmt(dose["output"]["dmax_gy"]),
        "dmax_diff_pct": fmt(dose.get("dmax_diff_pct"), 4),
        "outside_integral_pct": fmt(dose.get("outside_integral_pct"), 4),
        "worst_dvh_delta_gy": fmt(worst.get("delta_gy"), 4),
        "worst_dvh_roi": f"{worst['roi']} {worst['point']}" if worst else "",
        "n_rois": str(len(audit.get("rois") or [])),
        "beam_sum_max_diff_gy": fmt((audit.get("beam_sum") or {}).get("max_abs_diff_gy"), 4),
    }
