"""Plan sums (``--sum-plans``): the doses of several plans on one CT (initial + boost) as one case.

Cases are formed as usual first (a PLAN dose alone; the BEAM doses of a plan without one summed,
see :mod:`.beams`). Then the cases of one patient that each stand for a whole plan (summation type
PLAN, or BEAM_SUM) and were paired with the same CT series are merged into one case of summation
type :data:`PLAN_SUM`, whose doses the pipeline adds up as it adds beam doses: on the doses' own
grid when they share one, else each resampled onto the output grid first.

They are merged only when the sum means something: each plan once (two doses of one plan would
count it twice) and in the input (else that cannot be checked), one frame of reference (the CT's), the same DoseUnits and DoseType, no plan an
alternative to another or a verification plan (PS3.3 C.8.8.9: (300A,0055) RTPlanRelationship
ALTERNATIVE or VERIFIED_PLAN, (300A,000A) PlanIntent VERIFICATION). Otherwise the plans stay cases of
their own and their warnings say why. A plan derived from another of the sum (PREDECESSOR) is summed
with a case warning: a re-plan that replaced the other for the remaining fractions sums right only
when each plan's dose is for the fractions it delivered. The default (no ``--sum-plans``) is one case
per plan.
"""

from __future__ import annotations

from typing import Optional, Sequence

from .case import Case

#: The summation type of a case made of several plans' doses.
PLAN_SUM = "PLAN_SUM"
#: Case summation types that stand for a whole plan.
WHOLE_PLAN = ("PLAN", "BEAM_SUM")
#: (300A,0055) RTPlanRelationship values that say two plans are not both given to the patient.
NOT_BOTH_GIVEN = {
    "ALTERNATIVE": "an alternative to",  # prepared for the same treatment; one of them is delivered
    "VERIFIED_PLAN": "a verification plan of",  # delivered to a phantom or a detector, not the patient
}


def sum_plan_cases(cases: list, name_for, damaged_doses: Sequence = ()) -> list:
    """``cases`` with those of several plans on one CT merged (see the module text); ``name_for`` makes ids.

    ``damaged_doses``: the scan's damaged RTDOSE files (:func:`~..dicom.scan.damaged_object`), which may be another
    plan's dose on a CT: the cases of their patient say so."""
    groups: dict = {}
    failed: dict = {}
    unplaced: list = []  # doses that may be of a plan on any CT of their patient: failed before a CT was found,
    # or damaged files (the boost was exported alone, ok, without a word: seventy-eighth hostile trial BZ2)
    unplaced += [(dose.patient_id, dose.frame_of_reference_uid, _damaged_dose_note(dose)) for dose in damaged_doses]
    beside: dict = {}  # the cases on a CT that are not whole plans (UNKNOWN, MULTI_PLAN, FRACTION...): in no sum
    out = []
    for case in cases:
        if case.error and case.ct is not None:  # (by its CT alone: a dose of another PatientID failed its case, and
            # the boost on the CT was alone again without a word, seventy-sixth hostile trial BX5)
            failed.setdefault(case.ct.key, []).append(case)
        elif case.error:
            first = case.doses[0]
            unplaced.append((case.patient_id, first.frame_of_reference_uid, _unplaced_case_note(case)))
        if case.error or case.ct is None or case.summation_type not in WHOLE_PLAN:
            if not case.error and case.ct is not None:  # (a dose whose DoseSummationType was cut off is a case of its
                # own, which fails later: BZ2 again)
                beside.setdefault((case.patient_id, case.ct.key), []).append(_not_a_plan_note(case))
            out.append(case)
            continue
        groups.setdefault((case.patient_id, case.ct.key), []).append(case)
    for key, members in groups.items():
        # a plan on the same CT whose case failed (its BEAM doses miss a beam) is in no sum: said, not left out
        # without a word (the boost alone, ok: seventy-fourth hostile trial BV3)
        missing = [_failed_plan_note(case) for case in failed.get(key[1], [])] + beside.get(key, [])
        frame = members[0].ct.frame_of_reference_uid
        missing += [
            note
            for patient_id, dose_frame, note in unplaced
            if patient_id in (key[0], "")
            and dose_frame in (frame, "", None)
            and (patient_id or dose_frame)  # (neither readable: a file cut in its first bytes, said by its own row)
        ]
        if len(members) == 1:
            members[0].warnings.extend(missing)
            out.append(members[0])
            continue
        problem = why_not_summed(members)
        if problem is not None:  # asked for the sum, each case holds one plan's dose: said where users look
            for case in members:
                case.notes.append(f"not summed with the other plans on its CT (--sum-plans): {problem}")
                case.warnings.append(f"not summed with the other plans on its CT (--sum-plans): {problem}")
                case.warnings.extend(missing)
            out.extend(members)
            continue
        merged = merge_plans(members, name_for)
        merged.warnings.extend(derived_plans(members))
        merged.warnings.extend(missing)
        out.append(merged)
    return sorted(out, key=lambda c: c.case_id)


def _failed_plan_note(case: Case) -> str:
    return (
        f"not summed with the dose of case {case.case_id} on the same CT (--sum-plans): that case failed, so its "
        "dose is not in this one"
    )


def _not_a_plan_note(case: Case) -> str:
    return (
        f"RTDOSE {case.doses[0].rel_path} on this CT is not summed (--sum-plans sums PLAN doses and BEAM sums; its "
        f"(3004,000A) DoseSummationType is {case.doses[0].info.get('summation_type') or 'missing'}): it is a case of "
        f"its own ({case.case_id})"
    )


def _unplaced_case_note(case: Case) -> str:
    return (
        f"RTDOSE {case.doses[0].rel_path} of this patient failed (case {case.case_id}) before a CT was found for it: "
        "if it is the dose of another plan on this CT, it is not in this case (--sum-plans)"
    )


def _damaged_dose_note(dose) -> str:
    whose = "of this patient" if dose.patient_id else "(its PatientID unreadable) in this CT's frame of reference"
    return (
        f"RTDOSE {dose.rel_path} {whose} is damaged ({dose.info.get('damage', 'unreadable')}): if it is the dose of "
        "another plan on this CT, it is not in this case (--sum-plans)"
    )


def _plan_relations(cases: list) -> list:
    """``(case, its RTPLAN file, relationship, the other case)`` for each plan of ``cases`` that names the plan of
    another of ``cases`` in its (300C,0002) ReferencedRTPlanSequence."""
    by_uid = {_plan_uid(case): case for case in cases if _plan_uid(case)}
    found = []
    for case in cases:
        plan = case.plan
        for uid, relationship in (plan.info.get("related_plans") or []) if plan is not None else []:
            other = by_uid.get(uid)
            if other is not None and other is not case:
                found.append((case, plan.rel_path, relationship, other))
    return found


def _plan_name(case: Case) -> str:
    return case.plan.rel_path if case.plan is not None else f"the plan of RTDOSE {case.doses[0].rel_path}"


def derived_plans(cases: list) -> list:
    """Warnings for the plans of a sum that were derived from another of them ((300A,0055) PREDECESSOR)."""
    return [
        f"RTPLAN {path} was derived from {_plan_name(other)} ((300A,0055) RTPlanRelationship PREDECESSOR) and both "
        "are summed (--sum-plans): right when each plan's dose is for the fractions it delivered; if it replaced "
        "the other for all fractions, export without --sum-plans"
        for _case, path, relationship, other in _plan_relations(cases)
        if relationship == "PREDECESSOR"
    ]


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
        if case.plan is None:  # (a PLAN dose of a plan not there was summed with the BEAM doses of the same plan
            # under another reference: 2x, ok, seventieth hostile trial BR6)
            return (
                f"RTDOSE {case.doses[0].rel_path} references RTPLAN {uid}, which is not in the input: whether it is "
                "another plan than the others', given to the patient, cannot be checked"
            )
        plans[uid] = case.doses[0].rel_path
    for case in cases:
        if case.plan is not None and case.plan.info.get("plan_intent") == "VERIFICATION":
            return (
                f"RTPLAN {case.plan.rel_path} is a verification plan ((300A,000A) PlanIntent VERIFICATION): "
                "its dose is not the patient's"
            )
    for _case, path, relationship, other in _plan_relations(cases):
        if relationship in NOT_BOTH_GIVEN:
            return (
                f"RTPLAN {path} is {NOT_BOTH_GIVEN[relationship]} {_plan_name(other)} ((300A,0055) "
                f"RTPlanRelationship {relationship}): the patient is not given both"
            )
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
    # (the labels are the input's, in meta.json's dose.plans, where --pseudonymize reads them as names; in this prose
    # a label that is a surname and one of DoseAlign's words, Lang, stood in clear: forty-second hostile trial AP7)
    notes.append(f"{len(cases)} plans on one CT summed (--sum-plans): their labels are in meta.json's dose.plans")
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
