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


def dmax_index(dose: np.ndarray) -> tuple:
    """Index ``(k, j, i)`` of the dose maximum; with ties, the one nearest the tied voxels' centroid.

    Doses within 0.1 % of Dmax count as tied, so a flat maximum (a plateau, or a whole face of a
    linear field) is located at its middle rather than at its first voxel in memory order.
    """
    dmax = float(dose.max())
    if dmax <= 0:
        return tuple(int(n // 2) for n in dose.shape)
    at_max = dose >= dmax * (1 - AT_MAX_FRACTION)
    count = int(np.count_nonzero(at_max))
    if count > 1_000_000:  # a huge plateau: its centre if tied, else the first maximum
        centre = tuple(
            int(round(float(np.arange(n) @ at_max.sum(axis=tuple(a for a in range(3) if a != axis)) / count)))
            for axis, n in enumerate(dose.shape)
        )
        return centre if at_max[centre] else tuple(int(v) for v in np.unravel_index(int(np.argmax(dose)), dose.shape))
    tied = np.argwhere(at_max)
    if tied.shape[0] == 1:
        return tuple(int(v) for v in tied[0])
    centre = tied.mean(axis=0)
    return tuple(int(v) for v in tied[int(np.argmin(((tied - centre) ** 2).sum(axis=1)))])


def dose_summary(volume: Volume, body: Optional[np.ndarray] = None) -> dict:
    """Dmax (value, LPS location, index), integral dose and mean dose in the body of one dose.

    Parameters
    ----------
    volume : Volume
        Dose (Gy) on its grid, ``(K, J, I)``.
    body : (K, J, I) bool array, optional
        Body mask on the same grid; gives ``dmean_body_gy``.

    Returns
    -------
    dict
        ``dmax_gy``, ``dmax_lps`` [x, y, z] mm and ``dmax_index`` [k, j, i] (see :func:`dmax_index`),
        ``voxels_at_dmax`` (within 0.1 % of Dmax), ``integral_gy_l`` (sum of dose x
        voxel volume, Gy.L), ``dmean_body_gy`` and ``body_volume_cc``.
    """
    dose = volume.array
    slice_cc = _per_voxel(volume.grid, dose.shape)
    index = dmax_index(dose)
    dmax = float(dose.max())
    lps = volume.grid.index_to_lps(np.array([index[2], index[1], index[0]], dtype=np.float64))
    per_slice = dose.reshape(dose.shape[0], -1).sum(axis=1, dtype=np.float64)
    out = {
        "dmax_gy": dmax,
        "dmax_lps": [round(float(v), 3) for v in lps],
        "dmax_index": [int(v) for v in index],
        "voxels_at_dmax": int(np.count_nonzero(dose >= dmax * (1 - AT_MAX_FRACTION))) if dmax > 0 else int(dose.size),
        "integral_gy_l": float(per_slice @ slice_cc) / 1000.0,
        "dmean_body_gy": None,
        "body_volume_cc": None,
    }
    if body is not None and body.any():
        body_cc = body.reshape(body.shape[0], -1).sum(axis=1) @ slice_cc
        body_dose = np.where(body, dose, 0).reshape(dose.shape[0], -1).sum(axis=1, dtype=np.float64) @ slice_cc
        out["dmean_body_gy"] = float(body_dose / body_cc)
        out["body_volume_cc"] = float(body_cc)
    return out


def inside_extent(source: Grid, target: Grid) -> np.ndarray:
    """Which voxel centres of ``source`` lie inside ``target``'s extent (its voxels' outer faces).

    Returns
    -------
    (K, J, I) bool array on ``source``
    """
    k_n, j_n, i_n = source.shape
    out = np.zeros(source.shape, dtype=bool)
    jj, ii = np.meshgrid(np.arange(j_n, dtype=np.float64), np.arange(i_n, dtype=np.float64), indexing="ij")
    limits = np.array([target.shape[2], target.shape[1], target.shape[0]], dtype=np.float64) - 0.5
    for k in range(k_n):
        ijk = np.stack([ii, jj, np.full(ii.shape, float(k))], axis=-1)
        index = target.lps_to_index(source.index_to_lps(ijk))
        out[k] = np.all((index >= -0.5 - 1e-6) & (index <= limits + 1e-6), axis=-1)
    return out


def edge_dose_pct(volume: Volume) -> float:
    """Largest dose on the six outer faces of a dose grid, in % of its Dmax (0 for a zero dose)."""
    d = volume.array
    dmax = float(d.max())
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


def outside_pct(mask, grid: Grid, other: Grid) -> float:
    """Share (% of voxels) of an ROI mask on ``grid`` whose centres lie outside ``other``'s extent."""
    if mask.binary.size == 0 or not mask.binary.any():
        return 0.0
    kb, jb, ib = mask.box
    limits = np.array([other.shape[2], other.shape[1], other.shape[0]], dtype=np.float64) - 0.5
    outside = 0
    for kk in range(mask.binary.shape[0]):
        jj, ii = np.nonzero(mask.binary[kk])
        if jj.size == 0:
            continue
        ijk = np.stack([ii + ib.start, jj + jb.start, np.full(jj.shape, kb.start + kk)], axis=-1).astype(np.float64)
        index = other.lps_to_index(grid.index_to_lps(ijk))
        inside = np.all((index >= -0.5 - 1e-6) & (index <= limits + 1e-6), axis=-1)
        outside += int(np.count_nonzero(~inside))
    return 100.0 * outside / mask.voxel_count


def roi_dvhs(
    output_dose: Volume,
    output_masks: StructureMasks,
    native_dose: Optional[Volume],
    native_masks: Optional[StructureMasks],
    prescription_gy: Optional[float] = None,
) -> tuple:
    """Per-ROI DVH points on both grids, their differences and the cumulative DVH arrays.

    Returns
    -------
    (list of dict, dict of arrays)
        One entry per ROI (``name``, ``output``, ``native``, ``diff``) and the arrays
        ``dvh_dose_gy`` (B,), ``dvh_output`` (N, B) and, with a native grid, ``dvh_native`` (N, B),
        in cm^3 receiving at least each dose.
    """
    top = float(output_dose.array.max())
    if native_dose is not None:
        top = max(top, float(native_dose.array.max()))
    bins = dvh.dose_bins(top)
    names = output_masks.names
    curves_out = np.zeros((len(names), bins.size), dtype=np.float32)
    curves_native = np.zeros((len(names), bins.size), dtype=np.float32) if native_masks is not None else None
    entries = []
    for n, name in enumerate(names):
        values, cc = _roi_doses(output_dose.array, output_dose.grid, output_masks, name)
        entry = {"name": name, "output": dvh.dvh_points(values, cc, prescription_gy), "native": None, "diff": None}
        curves_out[n] = dvh.cumulative_dvh(values, cc, bins)
        if native_masks is not None and native_dose is not None:
            entry["outside_native_grid_pct"] = outside_pct(output_masks.mask(name), output_dose.grid, native_dose.grid)
            values_n, cc_n = _roi_doses(native_dose.array, native_dose.grid, native_masks, name)
            entry["native"] = dvh.dvh_points(values_n, cc_n, prescription_gy)
            entry["diff"] = dvh.compare_points(entry["native"], entry["output"])
            curves_native[n] = dvh.cumulative_dvh(values_n, cc_n, bins)
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
    output_body: Optional[np.ndarray] = None,
    native_body: Optional[np.ndarray] = None,
) -> dict:
    """Dose-level comparison of the native and output doses (see :func:`dose_summary`).

    Returns
    -------
    dict
        ``output``, ``native`` (None without a single native grid), ``dmax_diff_gy``,
        ``dmax_diff_pct``, ``dmax_distance_mm``, ``integral_native_inside_gy_l``,
        ``integral_diff_pct``, ``outside_integral_pct``, ``edge_dose_pct``.
    """
    out = {"output": dose_summary(output_dose, output_body), "native": None}
    if native_dose is None:
        out["note"] = "the doses are on different grids: no single native grid to compare with"
        return out
    native = dose_summary(native_dose, native_body)
    out["native"] = native
    out["dmax_diff_gy"] = out["output"]["dmax_gy"] - native["dmax_gy"]
    out["dmax_diff_pct"] = 100.0 * out["dmax_diff_gy"] / native["dmax_gy"] if native["dmax_gy"] > 0 else 0.0
    out["dmax_distance_mm"] = float(np.linalg.norm(np.subtract(out["output"]["dmax_lps"], native["dmax_lps"])))
    inside = inside_extent(native_dose.grid, output_dose.grid)
    slice_cc = _per_voxel(native_dose.grid, native_dose.array.shape)
    inside_dose = np.where(inside, native_dose.array, 0).reshape(inside.shape[0], -1).sum(axis=1, dtype=np.float64)
    inside_integral = float(inside_dose @ slice_cc) / 1000.0
    out["integral_native_inside_gy_l"] = inside_integral
    total = native["integral_gy_l"]
    out["outside_integral_pct"] = 100.0 * (total - inside_integral) / total if total > 0 else 0.0
    out["integral_diff_pct"] = (
        100.0 * (out["output"]["integral_gy_l"] - inside_integral) / inside_integral if inside_integral > 0 else 0.0
    )
    out["edge_dose_pct"] = edge_dose_pct(native_dose)
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
