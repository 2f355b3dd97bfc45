"""Structures and the audit of one case: what :func:`~DoseAlignLib.pipeline.run_case` adds after resampling.

With ``options.structures`` the case's RTSTRUCT ROIs become masks on the output grid (stored in
pair.npz, described in ``meta["structures"]``) and on the native dose grid (for the native DVHs);
the dose audit runs for every case and goes to ``meta["audit"]``, its summary columns to
``meta["manifest_extra"]`` and its DVH curves to pair.npz.
"""

from __future__ import annotations

from typing import Optional

from ..dicom.rtdose import read_rtdose
from ..link.beams import beam_doses_to_sum
from ..structures.case import case_masks
from ..structures.reference_dvh import CROSSING, CROSSING_WARNING
from .beams import beam_sum_check
from .dose import audit_dose
from .flags import flags_for, geometry_summary, manifest_columns
from .reference import curves, errors, meta_curves, reference_dvhs_for, worst_error
from .rois import roi_dvhs
from .stats import dose_stats
from .thresholds import thresholds_with


def add_structures_and_audit(result, case, options, ct_geometry, contours=None) -> None:
    """Fill ``result`` (a :class:`~DoseAlignLib.pipeline.CaseResult`) with masks, DVHs and the audit, in place.

    Parameters
    ----------
    result : CaseResult
        The resampled case (``ct`` and ``dose`` on the output grid, ``native_dose`` when one grid
        holds the dose).
    case : Case
        Its inputs (structure sets, plan, related BEAM doses).
    options : AlignOptions
        ``structures``, ``roi_map``, ``fractional_masks`` and ``audit_thresholds`` are used.
    ct_geometry : CtGeometry
        The CT's own geometry: the contour-plane normal and the slab thickness come from it.
    contours : CaseContours, optional
        The case's contours when already read (:func:`~DoseAlignLib.structures.case.read_case_contours`).
    """
    thresholds = thresholds_with(getattr(options, "audit_thresholds", None))
    # one plan's prescription, for the dose of that plan only: a MULTI_PLAN dose (or a sum) of plans prescribing
    # 60 and 10 Gy has none of them (the first plan's 10 Gy flagged a 63 Gy sum as a unit error: fourteenth trial N6)
    plans_referenced = {uid for dose in case.doses for uid in (dose.info.get("plan_uids") or [])}
    prescription = None
    if case.plan is not None and len(plans_referenced) <= 1:
        prescription = case.plan.info.get("prescription_gy")
        ignored = case.plan.info.get("prescriptions_ignored")
        if ignored:
            result.meta.setdefault("warnings", []).append(
                f"the RTPLAN's (300A,0026) TargetPrescriptionDose {', '.join(ignored)} is not one dose in Gy: left out"
            )
    out_masks = native_masks = None
    if options.structures:
        out_masks, native_masks = case_masks(result, case, options, ct_geometry, contours)
        result.meta["structures"] = out_masks.to_meta()
        result.extra_arrays.update(out_masks.arrays())
    else:
        result.meta["structures"] = {"enabled": False, "names": []}

    # per-slice maxima and sums and the non-zero box of each dose, found once for every step below
    output_stats = dose_stats(result.dose.array)
    native_stats = dose_stats(result.native_dose.array) if result.native_dose is not None else None
    entries: list = []
    if out_masks is not None:  # first: the body's mean dose reuses its ROI's dose sum
        entries, arrays = roi_dvhs(
            result.dose,
            out_masks,
            result.native_dose,
            native_masks,
            prescription,
            output_stats=output_stats,
            native_stats=native_stats,
        )
        result.extra_arrays.update(arrays)
    reference_note = _add_references(result, out_masks, entries)
    dose_audit = audit_dose(
        result.dose,
        result.native_dose,
        output_body=out_masks.body_region if out_masks is not None else None,
        native_body=native_masks.body_region if native_masks is not None else None,
        output_stats=output_stats,
        native_stats=native_stats,
        ct_grid=getattr(result, "ct_grid", None),
    )
    beam_sum = _beam_sum(case, result.native_dose, options)
    geometry = geometry_summary(result.meta)
    reference = prescription or (dose_audit["native"] or dose_audit["output"])["dmax_gy"] or None
    brachytherapy = bool(case.plan is not None and case.plan.info.get("brachytherapy"))
    ct_lowest = getattr(result, "ct_lowest_hu", None)
    flags = flags_for(
        dose_audit,
        entries,
        result.meta.get("structures"),
        beam_sum,
        geometry,
        thresholds,
        reference,
        prescription,
        brachytherapy=brachytherapy,
        ct_lowest_hu=ct_lowest,
    )
    report = {
        "thresholds": thresholds,
        "prescription_gy": prescription,
        "ct_lowest_hu": ct_lowest,
        "reference_dose_gy": reference,
        "dose": dose_audit,
        "rois": entries,
        # the training pair's DVH against the reference DVH: over the ROIs the flag judges, and over all
        "worst_dvh_delta": worst_error(entries, thresholds),
        "worst_dvh_delta_all_rois": worst_error(entries),
        "reference_dvh": reference_note,
        "dvh_arrays": (
            "pair.npz: dvh_dose_gy (B,) Gy; dvh_output, dvh_native and dvh_reference (N, B) cm^3 receiving "
            ">= each dose, ROIs in structures.names order"
        )
        if entries
        else None,
        "beam_sum": beam_sum,
        "geometry": geometry,
        "flags": flags,
    }
    result.meta["audit"] = report
    result.meta.setdefault("manifest_extra", {}).update(manifest_columns(report))


def _add_references(result, out_masks, entries: list) -> Optional[dict]:
    """Each ROI's reference DVH and the voxel DVHs' errors against it (in ``entries``), its curves
    in pair.npz (``dvh_reference``); returns what meta.json says about them."""
    if out_masks is None or not entries:
        return None
    if result.native_dose is None or getattr(result, "native_resampled", False):
        return {"note": "the doses are on different grids: no single native dose for a reference DVH"}
    bins = result.extra_arrays["dvh_dose_gy"]
    problems: dict = {}
    references = reference_dvhs_for(out_masks, result.native_dose, bins, result.dose.grid, problems)
    for entry in entries:
        reference = references.get(entry["name"])
        if reference is None:
            if entry["name"] in problems:
                entry["reference_note"] = problems[entry["name"]]
                if CROSSING in problems[entry["name"]]:  # the mask itself is then not what was drawn: said
                    result.meta.setdefault("warnings", []).append(f"ROI {entry['name']!r}: {CROSSING_WARNING}")
            continue
        described = reference.to_meta()
        described["sampling"].pop("rule", None)  # once, in audit.reference_dvh
        entry["reference"] = described
        entry["error_output"] = errors(entry["output"], reference.points)
        entry["error_native"] = errors(entry.get("native"), reference.points)
    result.extra_arrays["dvh_reference"] = curves(references, out_masks.names, bins)
    return meta_curves(references, bins)


def _beam_sum(case, native_dose, options) -> Optional[dict]:
    """The PLAN dose against the sum of the plan's BEAM doses, or what the BEAM_SUM case summed."""
    if case.summation_type == "BEAM_SUM":
        summed = {"mode": "this case's dose is the sum of its BEAM doses", "files": list(case.dose_files)}
        whole = case.related_beam_doses[0] if case.related_beam_doses and native_dose is not None else None
        if whole is None:
            return summed
        # a dose of all the summed beams, left out of the sum (link.cases._make_case): compared with it
        volume, _geometry, _info = read_rtdose(whole.path, allow_relative=options.allow_relative)
        if not volume.array.any():  # (an empty dose, as the rtkit phantom's: nothing computed, no disagreement)
            summed["not_compared"] = f"RTDOSE {whole.rel_path}, the dose of all the summed beams, is 0 everywhere"
            return summed
        check = beam_sum_check(volume, [(native_dose, "the sum")])
        check.update(summed, compared_with=f"RTDOSE {whole.rel_path} (beams {sorted(whole.info['beam_numbers'])})")
        check["mode"] = "the sum of the BEAM doses compared with the dose of all their beams, left out of the sum"
        return check
    if case.summation_type != "PLAN" or not case.related_beam_doses or native_dose is None:
        return None
    keep, left_out = beam_doses_to_sum(  # the same rule as the BEAM_SUM cases use
        list(case.related_beam_doses)
    )
    beams = []
    for obj in keep:
        volume, _geometry, _info = read_rtdose(obj.path, allow_relative=options.allow_relative)
        beams.append((volume, obj.rel_path))
    check = beam_sum_check(native_dose, beams, left_out)
    check["mode"] = "PLAN dose compared with the sum of the plan's BEAM doses"
    if case.plan is not None:
        planned = set(case.plan.info.get("beam_numbers") or [])
        covered = {b for obj in keep for b in obj.info.get("beam_numbers", [])}
        check["plan_beams_without_dose"] = sorted(planned - covered)
    return check
