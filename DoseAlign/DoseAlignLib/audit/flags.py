"""Findings over their thresholds become flags; the audit's summary columns for manifest.csv."""

from __future__ import annotations

from typing import Optional

from .reference import misses


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


def _listed(items: list, most: int = 8) -> str:
    """``a, b, c`` (the first ``most``, then how many more)."""
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def flags_for(
    dose_audit: dict,
    roi_entries: list,
    structures: Optional[dict],
    beam_sum: Optional[dict],
    geometry: dict,
    thresholds: dict,
    reference_dose_gy: Optional[float],
    prescription_gy: Optional[float] = None,
    brachytherapy: bool = False,
    ct_lowest_hu: Optional[float] = None,
) -> list:
    """The findings over the thresholds: ``[{"flag": code, "detail": text}]``, one entry per kind of
    finding (its detail lists every ROI, face or file it concerns)."""
    flags = []

    def add(code: str, detail: str) -> None:
        flags.append({"flag": code, "detail": detail})

    t = thresholds
    dmax = (dose_audit.get("native") or dose_audit.get("output") or {}).get("dmax_gy")
    if dmax is not None and dmax <= 0:
        add("dose_zero", "the dose is 0 Gy everywhere (a dose exported before it was computed, or invalidated)")
    elif dmax is not None and prescription_gy and 100.0 * dmax / prescription_gy < t["dmax_prescription_min_pct"]:
        add(
            "dose_below_prescription",
            f"Dmax {dmax:.4g} Gy is {100.0 * dmax / prescription_gy:.1f} % of the plan's prescription "
            f"{prescription_gy:.4g} Gy (limit {t['dmax_prescription_min_pct']:g} %): no whole treatment's dose (one "
            "fraction's, one beam's, or not computed)",
        )
    elif (
        dmax is not None
        and prescription_gy
        and not brachytherapy
        and 100.0 * dmax / prescription_gy > t["dmax_prescription_max_pct"]
    ):
        add(
            "dose_above_prescription",
            f"Dmax {dmax:.4g} Gy is {100.0 * dmax / prescription_gy:.1f} % of the plan's prescription "
            f"{prescription_gy:.4g} Gy (limit {t['dmax_prescription_max_pct']:g} %): no treatment's dose of this plan "
            "(a dose in cGy read as Gy, a wrong DoseGridScaling, or a prescription of one fraction)",
        )
    if ct_lowest_hu is not None and ct_lowest_hu >= t["ct_lowest_hu"]:
        add(
            "ct_without_air",
            f"the CT's lowest value is {ct_lowest_hu:g} HU (limit {t['ct_lowest_hu']:g} HU): no air, lung or fat, as if "
            "its stored values were read without their RescaleIntercept (a phantom of water and denser inserts only "
            "would look so too)",
        )
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
        beyond = dose_audit.get("beyond_ct_integral_pct")
        if beyond is not None and beyond > t["outside_integral_pct"]:
            add(  # (the part the output grid keeps, as dose_outside_grid tells the part it loses)
                "dose_beyond_ct",
                f"{beyond:.2f} % of the integral dose lies on the output grid where the CT has no image (on the CT's "
                f"fill value; limit {t['outside_integral_pct']:g} %)",
            )
        if abs(dose_audit["integral_diff_pct"]) > t["integral_diff_pct"]:
            add(
                "integral_changed",
                f"integral dose inside the output grid changed by {dose_audit['integral_diff_pct']:+.2f} % "
                f"(limit {t['integral_diff_pct']:g} %)",
            )
        if dose_audit["edge_dose_pct"] > t["edge_dose_pct"]:
            faces = [f for f in dose_audit.get("edge_faces") or [] if f["pct"] > t["edge_dose_pct"]]
            where = _listed([f"{f['face']} face ({f['axis']} = {f['at_mm']:g} mm) {f['pct']:.1f} %" for f in faces])
            add(
                "dose_grid_edge",
                f"the native dose grid cuts through dose: its {where} of Dmax (limit {t['edge_dose_pct']:g} %)"
                if faces
                else f"the native dose grid's faces reach {dose_audit['edge_dose_pct']:.1f} % of Dmax "
                f"(limit {t['edge_dose_pct']:g} %)",
            )
    cut = []
    for e in roi_entries:
        reference = (e.get("reference") or {}).get("points") or {}
        share = reference.get("outside_dose_grid_pct", e.get("outside_native_grid_pct", 0.0)) or 0.0
        if share > t["roi_outside_dose_grid_pct"]:
            cut.append(f"{e['name']} ({share:.1f} %)")
    if cut:
        add(
            "roi_outside_dose_grid",
            f"ROIs partly beyond the native dose grid (0 Gy there in the training pair; limit "
            f"{t['roi_outside_dose_grid_pct']:g} % of the volume): {_listed(cut)}",
        )
    beyond = []
    for e in roi_entries:
        share = ((e.get("reference") or {}).get("points") or {}).get("outside_grid_pct") or 0.0
        if share > t["roi_outside_output_grid_pct"]:
            beyond.append(f"{e['name']} ({share:.1f} %)")
    if beyond:
        add(
            "roi_outside_output_grid",
            f"ROIs partly beyond the output grid (that part is not in the training pair; limit "
            f"{t['roi_outside_output_grid_pct']:g} % of the volume): {_listed(beyond)}",
        )
    if reference_dose_gy:
        missed = []
        for e in roi_entries:
            found = misses(e, t, reference_dose_gy)
            if found:
                key, error, limit = max(found, key=lambda m: abs(m[1]) / m[2])
                more = f" (+{len(found) - 1} more points)" if len(found) > 1 else ""
                missed.append(f"{e['name']} {key[:-3]} {error:+.3g} Gy (tolerance {limit:.3g} Gy){more}")
        if missed:
            add(
                "dvh_mismatch",
                f"the training pair's DVH misses the reference DVH (contours + native dose) by more than "
                f"{t['dvh_delta_pct']:g} % of {reference_dose_gy:.4g} Gy and the dose change {t['dvh_distance_mm']:g} mm "
                f"away in plane and one contour spacing (at most {t['dvh_normal_distance_mm']:g} mm) across: "
                f"{_listed(missed)}",
            )
    mismatched = []
    outside_output = {
        e["name"]
        for e in roi_entries
        if (((e.get("reference") or {}).get("points") or {}).get("outside_grid_pct") or 0.0)
        > t["roi_outside_output_grid_pct"]
    }
    for roi in (structures or {}).get("rois", []):
        diff = roi.get("volume_diff_pct")
        if (
            diff is not None
            and roi["name"] not in outside_output
            and roi["contour_volume_cc"] >= t["roi_volume_min_cc"]
            and abs(diff) > t["roi_volume_diff_pct"]
        ):
            mismatched.append(
                f"{roi['name']} mask {roi['volume_cc']:.4g} cc vs contours {roi['contour_volume_cc']:.4g} cc ({diff:+.1f} %)"
            )
    if mismatched:
        add("roi_volume_mismatch", f"limit {t['roi_volume_diff_pct']:g} %: {_listed(mismatched)}")
    beam_pct = (beam_sum or {}).get("max_abs_diff_pct")
    if beam_pct is not None and beam_pct > t["beam_sum_diff_pct"]:
        add(
            "beam_sum_mismatch",
            f"sum of {len(beam_sum['files'])} BEAM doses differs from {beam_sum.get('compared_with', 'the PLAN dose')} "
            "by up to "
            f"{beam_sum['max_abs_diff_gy']:.4g} Gy ({beam_sum['max_abs_diff_pct']:.2f} %, limit {t['beam_sum_diff_pct']:g} %)",
        )
    if geometry.get("ct_regularized"):
        add("ct_regularized", str(geometry.get("ct_regularization") or "CT resampled onto a regular grid"))
    warnings = [f"{p['object']}: {p['detail']}" for p in geometry.get("problems", []) if p.get("object") != "CT"]
    if warnings:
        add("dose_grid_warning", "; ".join(warnings))
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
