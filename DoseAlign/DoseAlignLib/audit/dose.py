"""Dose-level audit of one case: Dmax, mean and integral dose on the native and the output grid.

See :mod:`.thresholds` for what the findings are compared with.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..geometry.grid import Grid, Volume
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


#: Names of the patient directions along +x, +y, +z (LPS) and their opposites.
_DIRECTIONS = (("left", "right"), ("posterior", "anterior"), ("superior", "inferior"))


def edge_faces(volume: Volume, dmax: Optional[float] = None) -> list:
    """The largest dose on each of the six outer faces of a dose grid.

    Returns
    -------
    list of dict
        One per face, highest first: ``face`` (the patient direction its outward normal points to
        most: "posterior", "inferior", ...), ``axis`` ("x", "y" or "z"), ``at_mm`` (that coordinate
        of the face's voxel centres, their mean on an oblique grid), ``max_gy`` and ``pct`` of Dmax.
    """
    d = volume.array
    dmax = float(d.max()) if dmax is None else float(dmax)
    grid = volume.grid
    k_n, j_n, i_n = d.shape
    faces = []
    # (array axis, index, outward direction in ijk)
    for axis, index, sign in ((0, 0, -1), (0, k_n - 1, 1), (1, 0, -1), (1, j_n - 1, 1), (2, 0, -1), (2, i_n - 1, 1)):
        plane = np.take(d, index, axis=axis)
        centre = np.array([(i_n - 1) / 2, (j_n - 1) / 2, (k_n - 1) / 2], dtype=np.float64)
        step = np.zeros(3)
        step[2 - axis] = 1.0
        centre[2 - axis] = index
        outward = (grid.index_to_lps(centre + sign * step) - grid.index_to_lps(centre)) * 1.0
        lps = int(np.argmax(np.abs(outward)))
        name = _DIRECTIONS[lps][0 if outward[lps] > 0 else 1]
        peak = float(plane.max()) if plane.size else 0.0
        faces.append(
            {
                "face": name,
                "axis": "xyz"[lps],
                "at_mm": round(float(grid.index_to_lps(centre)[lps]), 1),
                "max_gy": peak,
                "pct": 100.0 * peak / dmax if dmax > 0 else 0.0,
            }
        )
    return sorted(faces, key=lambda f: -f["pct"])


def edge_dose_pct(volume: Volume, dmax: Optional[float] = None) -> float:
    """Largest dose on the six outer faces of a dose grid, in % of its Dmax (0 for a zero dose)."""
    return max(f["pct"] for f in edge_faces(volume, dmax))


def _hat_weights(nodes: np.ndarray, step: float, low: float, high: float) -> np.ndarray:
    """Integral over ``[low, high]`` of each node's weight in the piecewise linear interpolation between
    ``nodes`` (evenly ``step`` apart), the end values extended beyond the end nodes."""
    n = nodes.size
    w = np.zeros(n)
    if high <= low or n == 0:
        return w
    if n == 1:
        w[0] = high - low
        return w
    w[0] += max(0.0, min(high, nodes[0]) - low)  # below the first node: its value
    w[-1] += max(0.0, high - max(low, nodes[-1]))  # above the last node: its value
    a = np.clip(nodes[:-1], low, high)
    b = np.clip(nodes[1:], low, high)
    # on [a, b] within [x_n, x_n+1]: integral of (x_n+1 - x) / step and of (x - x_n) / step
    x0, x1 = nodes[:-1], nodes[1:]
    w[:-1] += ((x1 - a) ** 2 - (x1 - b) ** 2) / (2 * step)
    w[1:] += ((b - x0) ** 2 - (a - x0) ** 2) / (2 * step)
    return w


def interpolant_integral(native: Volume, output_grid) -> Optional[float]:
    """The integral (Gy.L) of the native dose's trilinear interpolant (edge value in the half-voxel rim)
    over the cells of the output voxels whose centres the resampler gives a dose, i.e. what a linear
    resampling's voxel sum approximates; None unless both grids have the same axes and even slices."""
    grid = native.grid
    if grid.slice_offsets is not None or output_grid.slice_offsets is not None:
        return None
    if not np.allclose(grid.direction, output_grid.direction, atol=1e-6):
        return None
    weights = []
    # per axis (i, j, k): positions along the shared direction
    native_start = grid.direction.T @ grid.affine[:3, 3]
    output_start = output_grid.direction.T @ output_grid.affine[:3, 3]
    for axis, n_native, n_output in zip(range(3), grid.shape[::-1], output_grid.shape[::-1]):
        s, t = float(grid.spacing[axis]), float(output_grid.spacing[axis])
        nodes = native_start[axis] + s * np.arange(n_native)
        centres = output_start[axis] + t * np.arange(n_output)
        tolerance = 1e-6 * s
        fed = np.flatnonzero((centres >= nodes[0] - s / 2 - tolerance) & (centres <= nodes[-1] + s / 2 + tolerance))
        if fed.size == 0:
            return 0.0
        weights.append(_hat_weights(nodes, s, centres[fed[0]] - t / 2, centres[fed[-1]] + t / 2))
    wi, wj, wk = weights
    dose = native.array
    per_slice = np.array([float(wj @ dose[k].astype(np.float64) @ wi) for k in range(dose.shape[0])])
    return float(per_slice @ wk) / 1e6


# ---- DVHs ------------------------------------------------------------------------------------


# ---- beam sum and geometry -------------------------------------------------------------------


# ---- the audit of one case -------------------------------------------------------------------


def _integral_inside(native_dose: Volume, grid: Grid, outside: Optional[Grid] = None) -> float:
    """The integral dose (Gy·L) of the native voxels whose centres lie inside ``grid``'s extent (and, given
    ``outside``, outside that grid's extent)."""
    slice_cc = per_voxel_cc(native_dose.grid, native_dose.array.shape)
    if outside is not None:
        inside = inside_extent(native_dose.grid, grid) & ~inside_extent(native_dose.grid, outside)
        inside_dose = np.where(inside, native_dose.array, 0).reshape(inside.shape[0], -1).sum(axis=1, dtype=np.float64)
        return float(inside_dose @ slice_cc) / 1000.0
    box = inside_box(native_dose.grid, grid)
    if box is not None:
        inside_dose = np.zeros(native_dose.array.shape[0], dtype=np.float64)
        part = native_dose.array[box]
        if part.size:
            inside_dose[box[0]] = part.sum(axis=(1, 2), dtype=np.float64)
    else:
        inside = inside_extent(native_dose.grid, grid)
        inside_dose = np.where(inside, native_dose.array, 0).reshape(inside.shape[0], -1).sum(axis=1, dtype=np.float64)
    return float(inside_dose @ slice_cc) / 1000.0


def audit_dose(
    output_dose: Volume,
    native_dose: Optional[Volume],
    *,
    output_body=None,
    native_body=None,
    output_stats: Optional[DoseStats] = None,
    native_stats: Optional[DoseStats] = None,
    ct_grid: Optional[Grid] = None,
) -> dict:
    """Dose-level comparison of the native and output doses (see :func:`dose_summary`).

    ``output_body`` and ``native_body`` are bool arrays or ROI masks (box + binary);
    ``output_stats`` and ``native_stats`` (:func:`dose_stats`) are found here when not given.

    Returns
    -------
    dict
        ``output``, ``native`` (None without a single native grid), ``dmax_diff_gy``,
        ``dmax_diff_pct``, ``dmax_distance_mm``, ``integral_native_inside_gy_l`` (native voxels whose
        centres lie in the output grid), ``integral_expected_gy_l`` (:func:`interpolant_integral`),
        ``integral_diff_pct`` (output against the expected integral, else the inside one),
        ``outside_integral_pct``, ``edge_faces`` (:func:`edge_faces`), ``edge_dose_pct``; with ``ct_grid`` (the CT's
        own grid) ``beyond_ct_integral_pct``: the native integral dose whose voxel centres lie outside the CT.
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
    inside_integral = _integral_inside(native_dose, output_dose.grid)
    out["integral_native_inside_gy_l"] = inside_integral
    total = native["integral_gy_l"]
    out["outside_integral_pct"] = 100.0 * (total - inside_integral) / total if total > 0 else 0.0
    if ct_grid is not None:  # dose the output grid holds where the CT has no image: it lies on the CT's fill value, a
        # pair that teaches dose in air (--reference dose beyond a short CT: eighty-fourth hostile trial CF4; a cube
        # partly beyond it, whose grid loses dose inside the CT too: eighty-sixth CH1)
        kept_beyond = _integral_inside(native_dose, output_dose.grid, outside=ct_grid)
        out["beyond_ct_integral_pct"] = 100.0 * kept_beyond / total if total > 0 else 0.0
    # what the output's voxels should add up to: the native dose's trilinear interpolant over their cells
    # (exactly, for grids of equal axes); else the native voxels inside the output grid
    expected = interpolant_integral(native_dose, output_dose.grid)
    out["integral_expected_gy_l"] = expected
    compared = expected if expected is not None else inside_integral
    out["integral_diff_pct"] = 100.0 * (out["output"]["integral_gy_l"] - compared) / compared if compared > 0 else 0.0
    out["edge_faces"] = edge_faces(native_dose, native_stats.dmax)
    out["edge_dose_pct"] = out["edge_faces"][0]["pct"]
    if native["dmean_body_gy"] is not None and out["output"]["dmean_body_gy"] is not None:
        out["dmean_body_diff_gy"] = out["output"]["dmean_body_gy"] - native["dmean_body_gy"]
    return out
