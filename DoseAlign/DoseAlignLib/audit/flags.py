"""Findings over their thresholds become flags; the audit's summary columns for manifest.csv."""

from __future__ import annotations

from typing import Optional

from .rois import worst_dvh_delta


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
