"""Dose-level audit of one case: Dmax, mean and integral dose on the native and the output grid.

See :mod:`.thresholds` for what the findings are compared with.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..geometry.grid import Volume
from .stats import (
    DoseStats,
    dmax_location,
    dose_stats,
    inside_box,
    inside_extent,
    masked_slice_sums,
    per_voxel_cc,
    region_of,
)

# ---- dose-level statistics -------------------------------------------------------------------


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
    slice_cc = per_voxel_cc(volume.grid, dose.shape)
    index, at_max = dmax_location(dose, stats.slice_max)
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
        box, binary = region_of(body)
        counts = np.count_nonzero(binary, axis=(1, 2)) if binary.size else np.zeros(0)
        if counts.any():
            body_cc = counts @ slice_cc[box[0]]
            body_dose = masked_slice_sums(dose, box, binary, stats.support) @ slice_cc[box[0]]
            out["dmean_body_gy"] = float(body_dose / body_cc)
            out["body_volume_cc"] = float(body_cc)
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


# ---- beam sum and geometry -------------------------------------------------------------------


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
    slice_cc = per_voxel_cc(native_dose.grid, native_dose.array.shape)
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
