"""Plan sums (``--sum-plans``): the doses of several plans on one CT (initial + boost) as one case.

Cases are formed as usual first (a PLAN dose alone; the BEAM doses of a plan without one summed,
see :mod:`.beams`). Then the cases of one patient that each stand for a whole plan (summation type
PLAN, or BEAM_SUM) and were paired with the same CT series are merged into one case of summation
type :data:`PLAN_SUM`, whose doses the pipeline adds up as it adds beam doses: on the doses' own
grid when they share one, else each resampled onto the output grid first.

They are merged only when the sum means something: each plan once (two doses of one plan would
count it twice), one frame of reference (the CT's), the same DoseUnits and DoseType. Otherwise the
plans stay cases of their own and their notes say why. The default (no ``--sum-plans``) is one case
per plan.
"""

from __future__ import annotations

from typing import Optional

from .case import Case

#: The summation type of a case made of several plans' doses.
PLAN_SUM = "PLAN_SUM"
#: Case summation types that stand for a whole plan.
WHOLE_PLAN = ("PLAN", "BEAM_SUM")


def sum_plan_cases(cases: list, name_for) -> list:
    """``cases`` with those of several plans on one CT merged (see the module text); ``name_for`` makes ids."""
    groups: dict = {}
    out = []
    for case in cases:
        if case.error or case.ct is None or case.summation_type not in WHOLE_PLAN:
            out.append(case)
            continue
        groups.setdefault((case.patient_id, case.ct.key), []).append(case)
    for members in groups.values():
        if len(members) == 1:
            out.append(members[0])
            continue
        problem = why_not_summed(members)
        if problem is not None:  # asked for the sum, each case holds one plan's dose: said where users look
            for case in members:
                case.notes.append(f"not summed with the other plans on its CT (--sum-plans): {problem}")
                case.warnings.append(f"not summed with the other plans on its CT (--sum-plans): {problem}")
            out.extend(members)
            continue
        out.append(merge_plans(members, name_for))
    return sorted(out, key=lambda c: c.case_id)


def _plan_uid(case: Case) -> str:
    first = case.doses[0]
    return first.info["plan_uids"][0] if first.info.get("plan_uids") else ""


def why_not_summed(cases: list) -> Optional[str]:
    """Why the doses of ``cases`` (plans on one CT) cannot be added up, or None when they can."""
    plans: dict = {}
    for case in cases:
        uid = _plan_uid(case)
        if not uid:
            return f"RTDOSE {case.doses[0].rel_path} references no RTPLAN, so it cannot be told apart from the others"
        if uid in plans:
            return (
                f"RTDOSE {case.doses[0].rel_path} and {plans[uid]} are doses of the same plan {uid}: "
                "their sum would count it twice"
            )
        plans[uid] = case.doses[0].rel_path
    doses = [d for case in cases for d in case.doses]
    ct_frame = cases[0].ct.frame_of_reference_uid
    for dose in doses:
        if ct_frame and dose.frame_of_reference_uid and dose.frame_of_reference_uid != ct_frame:
            return (
                f"RTDOSE {dose.rel_path}: frame of reference {dose.frame_of_reference_uid} is not the CT's "
                f"{ct_frame} ((0020,0052) FrameOfReferenceUID)"
            )
    for key, tag in (("dose_units", "(3004,0002) DoseUnits"), ("dose_type", "(3004,0004) DoseType")):
        values = sorted({str(d.info.get(key) or "") for d in doses})
        if len(values) > 1:
            return f"the doses differ in {tag}: {', '.join(values)}"
    return None


def merge_plans(cases: list, name_for) -> Case:
    """One :data:`PLAN_SUM` case of the doses of ``cases``; ``name_for(patient, name, dose paths)`` gives its id."""
    cases = sorted(cases, key=lambda c: c.doses[0].rel_path)
    doses = [d for case in cases for d in case.doses]
    labels = [(c.plan.info.get("plan_label") if c.plan is not None else "") or "plan" for c in cases]
    structs, seen = [], set()
    for case in cases:
        for struct in case.structs:
            if struct.rel_path not in seen:
                seen.add(struct.rel_path)
                structs.append(struct)
    parts = [
        {
            "summation_type": case.summation_type,
            "rtplan_file": case.plan.rel_path if case.plan is not None else None,
            "rtplan_uid": _plan_uid(case),
            "plan_label": labels[n],
            "prescription_gy": case.plan.info.get("prescription_gy") if case.plan is not None else None,
            "rtdose_files": case.dose_files,
        }
        for n, case in enumerate(cases)
    ]
    notes = [note for case in cases for note in case.notes]
    notes.append(f"{len(cases)} plans on one CT summed (--sum-plans): {', '.join(labels)}")
    return Case(
        case_id=name_for(cases[0].patient_id, f"plansum-{'+'.join(labels)}", [d.rel_path for d in doses]),
        patient_id=cases[0].patient_id,
        summation_type=PLAN_SUM,
        doses=doses,
        ct=cases[0].ct,
        plan=None,  # several plans: no one prescription (the audit then refers to Dmax)
        structs=structs,
        notes=notes,
        left_out=[item for case in cases for item in case.left_out],
        related_beam_doses=[d for case in cases for d in case.related_beam_doses],
        plans=parts,
    )
