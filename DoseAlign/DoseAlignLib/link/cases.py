"""Form cases: group the doses of a scan (:mod:`.beams`), pair each with its CT (:mod:`.ct_choice`).

Every dose ends in exactly one case or in a case's ``left_out`` list; every other object that
no case uses is listed as an orphan with the reason.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath
from typing import Optional

from ..dicom import headers
from ..dicom.scan import ScanResult, compare_structure_sets, dose_belongs_to, dose_key, same_bytes
from ..errors import DoseAlignError, shortened
from .beams import (
    SUMMED_BEAMS,
    beam_doses_to_sum,
    conflicting_beam_doses,
    conflicting_copies,
    dose_groups,
    groups_without_dose,
    missing_beams,
    overlapping_beams,
    treated_beam_count,
    unnamed_beams,
)
from .case import Case, LinkResult
from .ct_choice import choose_ct, describe_series, no_ct_reason, read_ct_request, structs_for
from .plans import WHOLE_PLAN, sum_plan_cases


def form_cases(scan: ScanResult, sum_plans: bool = False, ct: Optional[str] = None) -> LinkResult:
    """Group the doses of a scan into cases and pair each case with a CT series.

    ``sum_plans`` merges the cases of several plans on one CT into one (:mod:`.plans`). ``ct`` is the
    user's CT choice (``--ct``: a CT folder or SeriesInstanceUID, or a CSV of dose,ct pairings; see
    :func:`~.ct_choice.read_ct_request`); a choice that names nothing in the input raises ``InputError``.
    """
    request = read_ct_request(ct, scan) if ct else None
    result = LinkResult()
    plan_files: dict = {}
    for plan in sorted(scan.of_kind("RTPLAN"), key=lambda p: p.rel_path):
        plan_files.setdefault(plan.sop_instance_uid, []).append(plan)
    plans = {uid: files[0] for uid, files in plan_files.items()}  # the first by path, as of structure sets
    structs = scan.of_kind("RTSTRUCT")
    structs_by_uid = {s.sop_instance_uid: s for s in structs}
    used_plans, used_structs, used_series = set(), set(), set()

    doses, copies = _dose_copies(scan.of_kind("RTDOSE"))
    for copy, kept in copies:  # (sixteenth hostile trial P12: a copy was a second case of one dose)
        result.orphans.append(
            (copy.rel_path, "RTDOSE", f"a copy of {kept.rel_path} (the same SOPInstanceUID and dose): used once")
        )
    for group in dose_groups(doses):
        case = _make_case(group, plans)
        try:
            choose_ct(case, scan, structs_by_uid, structs, request)
        except DoseAlignError as error:  # the error names its file; else the dose it came from
            case.error = str(error) if error.path else f"RTDOSE {case.doses[0].rel_path}: {error}"
        except Exception as error:  # an engine bug must not stop the batch: the case says what happened
            case.error = (
                f"RTDOSE {case.doses[0].rel_path}: internal error ({type(error).__name__}: {error}); please report it"
            )
        if case.ct is None and case.error is None:
            case.error = no_ct_reason(case.doses[0], scan)
        if case.ct is not None:
            used_series.add(case.ct.key)
            case.structs = structs_for(case, structs, scan.ct_series)
            used_structs.update(s.rel_path for s in case.structs)  # copies left out below are used too
            _warn_of_damaged_structure_sets(case, getattr(scan, "damaged", []))
            case.error = (
                case.error
                or (conflicting_copies(group[1]) if group[0] == SUMMED_BEAMS else None)
                or (conflicting_beam_doses(group[1]) if group[0] == SUMMED_BEAMS else None)
                or _conflicting_slices(case)
                or _structure_set_copies(case)
                or _plan_copies(case, plan_files)
                or _overlong_patient_id(case)
                or _identity_mismatch(case)
            )
        if group[0] == "PLAN" and case.related_beam_doses and case.error is None:
            conflict = conflicting_beam_doses(case.related_beam_doses, beside_plan_dose=True)
            if conflict:  # the exported dose is the PLAN dose; only the beam-sum check of the audit meets them
                case.warnings.append(conflict)
        if case.plan is not None:
            used_plans.add(case.plan.sop_instance_uid)
        used_structs.update(s.rel_path for s in case.structs)
        result.cases.append(case)

    result.cases = _beam_doses_without_plan(result.cases)
    if sum_plans:
        result.cases = sum_plan_cases(result.cases, _case_id, getattr(scan, "damaged_doses", []))
    for plan in plans.values():
        if plan.sop_instance_uid not in used_plans:
            result.orphans.append((plan.rel_path, "RTPLAN", "no RTDOSE references this plan"))
    case_cts = {case.ct.series_uid: case for case in result.cases if case.ct is not None}
    for struct in structs:
        if struct.rel_path not in used_structs:
            result.orphans.append((struct.rel_path, "RTSTRUCT", _why_struct_unused(struct, case_cts)))
    for series in scan.ct_series:
        if series.key not in used_series:
            result.orphans.append(
                (
                    series.folder or ".",
                    "CT",
                    f"CT series {series.series_uid} ({len(series.slices)} slices): no dose uses it",
                )
            )
    for obj in scan.objects:
        if obj.kind in ("RTIMAGE", "OTHER"):
            result.orphans.append((obj.rel_path, obj.kind, "not part of a CT/dose pair"))
    _warn_of_unread(result.cases, scan)
    _warn_of_plans_dosed_twice(result.cases)
    _warn_of_interleaved(result.cases)
    _warn_of_missing_images(result.cases, scan)
    if request is not None and request.by_dose:
        _warn_of_unused_pairings(result.cases, request)
    for case in result.cases:  # cut as reasons are: scan printed one quoting an 8 MB FrameOfReferenceUID whole (BX7)
        case.error = shortened(case.error) if case.error else case.error
        case.warnings = [shortened(w) for w in case.warnings]
    result.cases.sort(key=lambda c: c.case_id)
    return result


#: How many other cases a warning names (then their number).
NAMED_OTHERS = 3


def _warn_of_plans_dosed_twice(cases: list) -> None:
    """Two PLAN doses of one RTPLAN that are not copies (a dose recalculated or renormalized and exported again) are
    two cases of one plan: each says which other case holds the plan's other dose. They were two ok cases without a
    word (the eighty-fourth hostile trial's note); a training set would hold the plan twice, with two doses."""
    by_plan: dict = {}
    for case in cases:
        first = case.doses[0] if case.doses else None
        if case.summation_type == "PLAN" and first is not None and first.info.get("plan_uids"):
            by_plan.setdefault(first.info["plan_uids"][0], []).append(case)
    for uid, members in by_plan.items():
        if len(members) < 2:
            continue
        for case in members:
            # (a file of the same SOPInstanceUID is a copy, a damaged one failing on its own: no other dose, CH7; a
            # few named, and how many: every other named made each warning as long as the list, 7000 doses of one
            # plan took 3 GB before any case, eighty-sixth hostile trial CH5)
            uid_of = case.doses[0].sop_instance_uid
            different = [o for o in members if o is not case and o.doses[0].sop_instance_uid != uid_of]
            if not different:
                continue
            others = different[:NAMED_OTHERS]
            named = ", ".join(f"{o.case_id} (RTDOSE {o.doses[0].rel_path})" for o in others)
            more = len(different) - len(others)
            case.warnings.append(
                f"RTPLAN {uid} has {len(different)} other PLAN dose(s), not copies of this one: case {named}"
                + (f" and {more} more" if more else "")
                + "; keep the one that was delivered (a recalculated or renormalized dose exported again is a second "
                "case of the same plan)"
            )


def _warn_of_unused_pairings(cases: list, request) -> None:
    """A --ct CSV line whose dose is not exported (a BEAM dose beside its plan's PLAN dose, one left out of a sum):
    its pairing was not used, without a word (seventy-fourth hostile trial BV7's neighbour). The case that holds the
    dose says so."""
    for case in cases:
        beside = [(d.rel_path, d.sop_instance_uid) for d in case.related_beam_doses]
        beside += [(rel_path, None) for rel_path, _why in case.left_out]
        for rel_path, uid in beside:
            series = request.by_dose.get(rel_path) or (request.by_dose.get(uid) if uid else None)
            if series is not None:
                case.warnings.append(
                    f"the --ct CSV pairs RTDOSE {rel_path} with CT {describe_series(series)}, but that dose is not "
                    "exported (it is left out beside the doses of this case): its line is not used"
                )


def _dose_copies(doses: list) -> tuple:
    """``(doses, [(copy, kept)])``: RTDOSE files that share a SOPInstanceUID and hold the same dose (the same bytes,
    or the same pixels, grid and scaling stored otherwise: :func:`~DoseAlignLib.dicom.scan.dose_key`) and say the
    same of what they belong to are one dose, the first by path kept. Files of one UID that hold other doses (the Nelms phantom's AntPost and SupInf
    fields) stay, each its own."""
    by_uid: dict = {}
    for dose in sorted(doses, key=lambda d: d.rel_path):
        by_uid.setdefault(dose.sop_instance_uid or dose.rel_path, []).append(dose)
    kept, copies = [], []
    for group in by_uid.values():
        if len(group) == 1:
            kept.extend(group)
            continue
        distinct: list = []
        by_content: dict = {}  # each file read once: files of other contents are never compared (Q5)
        for dose in group:
            key = dose_key(dose.path)
            same = next((d for d in by_content.get(key, []) if _same_references(d, dose)), None) if key else None
            if same is None:
                distinct.append(dose)
                if key is not None:
                    by_content.setdefault(key, []).append(dose)
            else:
                copies.append((dose, same))
        kept.extend(distinct)
    return kept, copies


def _same_references(first, other) -> bool:
    """Whether two RTDOSE files say the same of what they belong to (:func:`~DoseAlignLib.dicom.scan.dose_belongs_to`,
    as ``--append``'s digest records it): the same dose values under another plan are no copy (seventeenth hostile
    trial Q3: the plan, the prescription and the case id followed the file names)."""
    return dose_belongs_to(first) == dose_belongs_to(other)


def _differing_facts(first, other) -> list:
    """What two scanned objects of one SOPInstanceUID record differently (the scan's values of the file's contents,
    and patient, study and frame of reference), leaving out what the scan records of the file itself."""
    differing = sorted(
        key
        for key in set(first.info) | set(other.info)
        if key not in _FILE_FACTS and not _same_fact(first.info, other.info, key)
    )
    return differing + [
        name
        for name in ("patient_id", "study_uid", "frame_of_reference_uid")
        if _folded_id(getattr(first, name)) != _folded_id(getattr(other, name))
    ]


def _folded_id(value) -> str:
    """An identifier as copies compare it: PatientID as the pairing does (case and surrounding blanks left out: a
    PACS that changes its case sent one dose as two patients' cases, nineteenth hostile trial S8's addendum)."""
    return str(value or "").strip().casefold()


def _make_case(group: tuple, plans: dict) -> Case:
    summation, doses, related = group
    doses = sorted(doses, key=lambda d: d.rel_path)
    first = doses[0]
    plan_uid = first.info["plan_uids"][0] if first.info.get("plan_uids") else ""
    plan = plans.get(plan_uid)
    notes, left_out = [], []
    if summation == SUMMED_BEAMS:
        doses, left_out = beam_doses_to_sum(doses)
        # a dose of all the summed beams together, left out: the audit compares it with the sum (twice the sum was
        # left out unread, ok: eighty-fourth hostile trial CF2)
        summed = {b for d in doses for b in d.info.get("beam_numbers") or []}
        related = [
            d
            for d in group[1]
            if d not in doses and len(d.info.get("beam_numbers") or []) > 1 and set(d.info["beam_numbers"]) == summed
        ]
        if len(doses) > 1:
            notes.append(f"{len(doses)} BEAM doses of plan {plan_uid} summed (no PLAN dose in the set)")
        else:
            summation = "BEAM"
    if plan_uid and plan is None:
        notes.append(f"referenced RTPLAN {plan_uid} is not in the input")
    error = None
    warnings = []
    if group[0] == SUMMED_BEAMS:
        error = (
            unnamed_beams(group[1], plan)
            or overlapping_beams(group[1])
            or (missing_beams(summation, doses, plan) if len(doses) > 1 else None)
        )
        missing_groups = groups_without_dose(doses, plan) if error is None else []
        if missing_groups:
            warnings.append(
                f"plan {plan.rel_path} treats in fraction groups {missing_groups} too, and no BEAM dose here is of "
                f"{'that group' if len(missing_groups) == 1 else 'those groups'}: the sum is not the plan's whole dose "
                "((300C,0022) ReferencedFractionGroupNumber; add those doses, or export the PLAN dose)"
            )
        if error is None and plan is None:  # its beams are unknown: a dose missing from the sum cannot be seen
            warnings.append(
                f"the BEAM doses are summed without their plan{f' {plan_uid}' if plan_uid else ''} (not in the "
                "input): whether they hold every beam of it cannot be checked (add the RTPLAN, or export the PLAN dose)"
            )
        if error is None and len(doses) == 1 and plan is not None:  # one beam of a plan is no treatment's dose
            treated = sorted(set(plan.info.get("treated_beams") or []))
            beams = sorted(set(first.info.get("beam_numbers") or []))
            if beams and set(treated) - set(beams):
                warnings.append(
                    f"RTDOSE {doses[0].rel_path} holds beam(s) {beams} of plan {plan.rel_path}, which treats beams "
                    f"{treated}: one part of the treatment's dose, the other beams' doses are not in the input "
                    "((300C,0006) ReferencedBeamNumber; export the plan's PLAN dose, or all its BEAM doses)"
                )
            elif not beams and treated_beam_count(plan) > 1:  # (BB4: the lone dose names no beam)
                warnings.append(
                    f"RTDOSE {doses[0].rel_path} is one beam's dose (DoseSummationType BEAM) of plan {plan.rel_path}, "
                    f"which treats beams {treated}, and names none of them: one part of the treatment's dose, the "
                    "other beams' doses are not in the input ((300C,0020) ReferencedFractionGroupSequence is missing; "
                    "export the plan's PLAN dose, or all its BEAM doses)"
                )
        if error is None and len(doses) > 1 and plan is not None and not any(d.info.get("beam_numbers") for d in doses):
            warnings.append(
                f"the {len(doses)} BEAM doses of plan {plan.rel_path} name no beam: that the sum holds each treated "
                "beam once is taken from their number alone ((300C,0020) ReferencedFractionGroupSequence is missing)"
            )
    label = plan.info.get("plan_label", "") if plan is not None else ""
    if summation == SUMMED_BEAMS:
        name = f"beamsum-{label or 'plan'}"
    elif summation == "BEAM" and len(group[1]) > 1:
        name = f"beam-{label or 'plan'}"
    elif summation == "PLAN" and label:
        name = f"plan-{label}"
    else:
        name = PurePosixPath(first.rel_path).stem
    return Case(
        case_id=_case_id(first.patient_id, name, [d.rel_path for d in group[1]]),
        patient_id=first.patient_id,
        summation_type=summation,
        doses=doses,
        plan=plan,
        notes=notes,
        left_out=left_out,
        related_beam_doses=sorted(related, key=lambda d: d.rel_path),
        error=error,
        warnings=warnings,
    )


#: Why a BEAM dose without a plan reference is no case of its own, or what its case must say.
_NO_PLAN_REFERENCE = "(300C,0002) ReferencedRTPlanSequence is missing or names no plan"


def _beam_doses_without_plan(cases: list) -> list:
    """``cases`` without those of a single BEAM dose that no plan reference ties to a plan, when a case standing
    for a whole plan (a PLAN dose, or a BEAM sum) of the same patient lies in its frame of reference or on its CT:
    such a dose is one beam of a treatment whose dose is already a case, and is left out of that case (its
    ``left_out`` names it and why). Where no such case exists, the BEAM dose stays a case of its own with a warning:
    it is one beam's dose, not the treatment's (which beams it holds cannot be told without the reference).
    """
    whole = sorted(
        (c for c in cases if c.summation_type in WHOLE_PLAN),
        key=lambda c: (c.summation_type != "PLAN", c.doses[0].rel_path),
    )
    kept = []
    for case in sorted(cases, key=lambda c: c.doses[0].rel_path):
        dose = case.doses[0]
        if case.summation_type != "BEAM" or len(case.doses) != 1 or dose.info.get("plan_uids"):
            kept.append(case)
            continue
        beside = next((c for c in whole if _same_patient_and_frame(case, c)), None)
        if beside is None:
            case.warnings.append(
                f"RTDOSE {dose.rel_path} is one beam's dose (DoseSummationType BEAM), not the treatment's, and "
                f"no plan ties it to the other beams ({_NO_PLAN_REFERENCE}; export the plan's PLAN dose, or its "
                "BEAM doses with their plan reference)"
            )
            kept.append(case)
            continue
        what = "PLAN dose" if beside.summation_type == "PLAN" else "sum of the BEAM doses"
        beside.left_out.append(
            (
                dose.rel_path,
                f"one beam's dose (DoseSummationType BEAM) that no plan ties to a treatment ({_NO_PLAN_REFERENCE}), "
                f"beside the {what} {', '.join(beside.dose_files)} of the same patient and frame of reference: "
                "not a case of its own",
            )
        )
    return kept


def _same_patient_and_frame(beam: Case, other: Case) -> bool:
    """The doses of both cases belong to one patient (an empty PatientID says nothing) and lie in one frame of
    reference (or, where a dose names none, were paired with the same CT series)."""
    first, second = beam.doses[0], other.doses[0]
    patients = {d.patient_id.strip().casefold() for d in (first, second) if d.patient_id and d.patient_id.strip()}
    if len(patients) > 1:
        return False
    if first.frame_of_reference_uid and second.frame_of_reference_uid:
        return first.frame_of_reference_uid == second.frame_of_reference_uid
    return beam.ct is not None and other.ct is not None and beam.ct.key == other.ct.key


def _case_id(patient_id: str, name: str, dose_paths: list) -> str:
    """``<patient>_<name>_<hash of the dose files' paths>``: the same input gives the same id."""
    digest = hashlib.sha1("\n".join(sorted(dose_paths)).encode()).hexdigest()[:8]
    return f"{safe_name(patient_id or 'anonymous')}_{safe_name(name)}_{digest}"


def _why_struct_unused(struct, case_cts: dict) -> str:
    """Why no case uses a structure set: its CT is none of theirs, or it is, and that case takes another structure set
    (the one its RTPLAN references): every unused one was said to lie on no case's CT (forty-third hostile trial
    AQ3)."""
    on = [case_cts[uid] for uid in struct.info.get("ct_series_uids") or [] if uid in case_cts]
    if not on:
        return "its CT is not part of any case"
    if any(case.plan is not None for case in on):
        return "its CT is a case's CT, and that case uses the structure set its RTPLAN references"
    return "its CT is a case's CT, but that case does not use it"


def _warn_of_missing_images(cases: list, scan: ScanResult) -> None:
    """A structure set of the case drawn on its CT series that references CT images its CT does not hold: the CT may
    lack slices (missing, or in a folder that could not be read, or in one the CT was not joined with): the case
    says so, once (a case made from half its CT was ok with audit flags only: thirty-eighth hostile trial AL13)."""
    held = None  # every CT image of the input, once a case needs them
    for case in cases:
        if case.ct is None or not case.structs:
            continue
        present = {s.sop_instance_uid for s in case.ct.slices}
        short, elsewhere, lacking = [], set(), set()
        for struct in case.structs:
            if set(struct.info.get("ct_series_uids") or []) != {case.ct.series_uid}:
                continue  # (images of other series, or none named: nothing to compare)
            referenced = set(struct.info.get("ct_image_uids") or [])
            missing = referenced - present
            if missing:
                if held is None:
                    held = {s.sop_instance_uid for series in scan.ct_series for s in series.slices}
                elsewhere |= missing & held  # (an image once, however many structure sets reference it: AQ4)
                lacking |= missing - held
                short.append(f"{struct.rel_path} ({len(missing)} of {len(referenced)})")
        if short:
            # (the input may hold them in a folder not joined with this CT: another frame of reference, say; the
            # warning said the input did not hold them: forty-first hostile trial)
            where = []
            if elsewhere:
                where.append(f"the input holds {len(elsewhere)} of them outside this CT (not joined with it)")
            if lacking:
                where.append(
                    (
                        f"the other {len(lacking)} are missing, or in a folder that could not be read"
                        if len(lacking) > 1
                        else "the other is missing, or in a folder that could not be read"
                    )
                    if elsewhere
                    else "the CT may lack slices (missing, or in a folder that could not be read)"
                )
            case.warnings.append(
                f"the structure set(s) {', '.join(short[:3])}{f' and {len(short) - 3} more' if len(short) > 3 else ''} "
                f"reference CT images of this case's series that its CT does not hold: {'; '.join(where)}"
            )


def _warn_of_interleaved(cases: list) -> None:
    """A CT joined from folders whose slices interleave (one folder every other slice) is one series split so, or two
    reconstructions of one extent shifted by half a step under one SeriesInstanceUID: the case says so (joined without
    a word, every other slice was the other reconstruction's: thirty-sixth hostile trial AJ14)."""
    for case in cases:
        if case.ct is not None and getattr(case.ct, "interleaved", False):
            # (each folder quoted: a path, which --pseudonymize writes as its token; bare, it stood in clear: AL11)
            folders = " and ".join("'" + folder + "'" for folder in case.ct.folders)
            case.warnings.append(
                f"its CT joins the slices of {folders}, which interleave (slices "
                "of one folder between those of another): one series so split, or two reconstructions under one "
                "SeriesInstanceUID; if two, choose one with --ct FOLDER"
            )


def _warn_of_unread(cases: list, scan: ScanResult) -> None:
    """A folder or file the scan could not read beside (or inside) a case's CT folder may hold its slices:
    the case says so (its outputs may lack them; the unreadable entry has a failed row of its own)."""
    for rel, _reason in getattr(scan, "unreadable", []):
        entry = PurePosixPath(rel.rstrip("/"))
        near = {entry.parent.as_posix()}
        for case in cases:
            if case.ct is None:
                continue
            folders = [PurePosixPath(f or ".") for f in (case.ct.folders or [case.ct.folder])]
            if any(f.parent.as_posix() in near or f.as_posix() in near or f in entry.parents for f in folders):
                case.warnings.append(
                    f"{rel} could not be read (it lies beside this case's CT folder): its files may be missing from "
                    "this case"
                )


def _warn_of_damaged_structure_sets(case: Case, damaged: list) -> None:
    """A damaged RTSTRUCT that is the case's (its plan references it; or, when no structure set of the plan
    is used, it is drawn on the case's CT): the case says so. It exported ok with no masks from it and nothing
    in its own row, as if it had no structure set (the damaged file has a failed row of its own)."""
    if not damaged:
        return
    planned = set(case.plan.info.get("struct_uids", [])) if case.plan is not None else set()
    found = [d for d in damaged if d.sop_instance_uid in planned]
    if not any(s.sop_instance_uid in planned for s in case.structs):
        found += [d for d in structs_for(case, damaged) if d not in found]
    used = {s.sop_instance_uid: s.rel_path for s in case.structs}
    for struct in sorted(found, key=lambda d: d.rel_path):
        if struct.sop_instance_uid in used:  # a damaged copy beside the whole file, which is used: said, no warning
            # (its ROIs are all in the masks: eighty-second hostile trial CD3)
            case.notes.append(
                f"RTSTRUCT {struct.rel_path} is a damaged copy of {used[struct.sop_instance_uid]} (the same "
                "SOPInstanceUID), which is used"
            )
            continue
        whose = "the plan's structure set" if struct.sop_instance_uid in planned else "drawn on this case's CT"
        case.warnings.append(
            f"RTSTRUCT {struct.rel_path} ({whose}) is present but damaged: {struct.info.get('damage', 'unreadable')}: "
            "none of its ROIs is in this case's masks (export it again and re-run)"
        )


def _conflicting_slices(case: Case) -> Optional[str]:
    """Slices of the case's CT that share a SOPInstanceUID but hold different images: which is right cannot be told."""
    if not case.ct.conflicts:
        return None
    uid, files = case.ct.conflicts[0]
    more = f" (and {len(case.ct.conflicts) - 1} more)" if len(case.ct.conflicts) > 1 else ""
    return (
        f"CT '{case.ct.folder or '.'}': {files[0]} and {files[1]} share SOPInstanceUID {uid} but hold different "
        f"images{more}: which one belongs to the CT cannot be told ((0008,0018) SOPInstanceUID; remove the wrong file)"
    )


#: What the scan records of a file itself, not of its contents.
_FILE_FACTS = ("size", "mtime_ns", "inode", "ctime_ns")


def _same_fact(first: dict, other: dict, key: str) -> bool:
    if key == "patient_name" and first.get(key) is not None and other.get(key) is not None:
        return headers.same_person_name(first[key], other[key])
    return _fact(first, key) == _fact(other, key)


def _fact(info: dict, key: str):
    """A scanned value as copies are compared: a patient's name folded (:func:`.headers.folded_person_name`)."""
    value = info.get(key)
    if key == "patient_name" and value is not None:
        return headers.folded_person_name(value)
    if key == "other_names" and isinstance(value, (list, tuple)):
        return sorted(headers.folded_person_name(name) for name in value)
    return value


def _plan_copies(case: Case, plan_files: dict) -> Optional[str]:
    """RTPLAN files that share the case plan's SOPInstanceUID: a copy (the same bytes, or the same values of all the
    export reads of a plan: prescription, beams, references, label) is used once, the first by path, with a note.
    Files that differ there fail the case naming both: the last by path was used without a word, so the prescription
    and its audit flags, the beam checks and the CT choice followed the file names (fifteenth hostile trial O4)."""
    if case.plan is None:
        return None
    group = plan_files.get(case.plan.sop_instance_uid, [])
    first = group[0] if group else case.plan
    for other in group[1:]:
        if same_bytes(first.path, other.path):
            case.notes.append(f"RTPLAN {other.rel_path} is a copy of {first.rel_path} (the same bytes): used once")
            continue
        differing = _differing_facts(first, other)
        if differing:
            return (
                f"RTPLAN {first.rel_path} and {other.rel_path} share SOPInstanceUID {case.plan.sop_instance_uid} but "
                f"differ in what the export reads ({', '.join(differing[:6])}): which plan belongs to the case cannot "
                "be told ((0008,0018) SOPInstanceUID; remove the wrong file)"
            )
        case.notes.append(
            f"RTPLAN {other.rel_path} is a copy of {first.rel_path} (the same SOPInstanceUID and the same values the "
            f"export reads): {first.rel_path} is used (the first by path)"
        )
    return None


def _structure_set_copies(case: Case) -> Optional[str]:
    """Structure sets of the case that share a SOPInstanceUID: copies are used once (the first by path; a note
    names the others and how they differ). Copies are the same bytes, or files whose decoded contents agree on
    everything the export reads (:func:`~DoseAlignLib.dicom.scan.compare_structure_sets`: a re-encoding, another
    StructureSetDescription). Files that differ in what the export reads fail the case, naming both and the
    element, since which contours are right cannot be told. Used together they gave every ROI twice (``PTV``,
    ``PTV_2``), the second from the other file."""
    by_uid: dict = {}
    for struct in case.structs:
        by_uid.setdefault(struct.sop_instance_uid or struct.rel_path, []).append(struct)
    kept = []
    for uid, group in by_uid.items():
        group = sorted(group, key=lambda s: s.rel_path)
        first = group[0]
        for other in group[1:]:
            if same_bytes(first.path, other.path):
                case.notes.append(
                    f"RTSTRUCT {other.rel_path} is a copy of {first.rel_path} (the same bytes): used once"
                )
                continue
            found = compare_structure_sets(first.path, other.path)
            if found.used:
                return (
                    f"RTSTRUCT {first.rel_path} and {other.rel_path} share SOPInstanceUID {uid} but differ in "
                    f"{found.used}: which contours belong to the case cannot be told ((0008,0018) SOPInstanceUID; "
                    "remove the wrong file)"
                )
            how = []
            if found.encodings[0] != found.encodings[1]:
                how.append(f"encoded otherwise ({found.encodings[1]}, {first.rel_path} {found.encodings[0]})")
            if found.others:
                how.append(f"differs only in {', '.join(found.others[:5])}, which the export does not read")
            case.notes.append(
                f"RTSTRUCT {other.rel_path} is a copy of {first.rel_path} (the same SOPInstanceUID, the same contents "
                f"the export reads{'; ' + '; '.join(how) if how else ''}): {first.rel_path} is used (the first by path)"
            )
        kept.append(first)
    case.structs = kept
    return None


#: (0010,0020) PatientID is LO: at most 64 characters. An ID far longer is no ID (and its manifest row,
#: 150 000 characters, was more than merge reads back): the case fails, naming the file and the tag.
MAX_PATIENT_ID = 1024


def _overlong_patient_id(case: Case) -> Optional[str]:
    """A PatientID far beyond what its VR holds, on any object of the case."""
    objects = [("RTDOSE", d) for d in case.doses] + [("CT slice", s) for s in case.ct.file_objects]
    if case.plan is not None:
        objects.append(("RTPLAN", case.plan))
    objects.extend(("RTSTRUCT", s) for s in case.structs)
    for what, obj in objects:
        if len(obj.patient_id or "") > MAX_PATIENT_ID:
            return (
                f"{what} {obj.rel_path}: (0010,0020) PatientID is {len(obj.patient_id)} characters long (its VR LO "
                f"holds 64; more than {MAX_PATIENT_ID} are refused): the header is damaged or was written wrongly "
                "(give the files a PatientID of at most 64 characters, then export again)"
            )
    return None


def _identity_mismatch(case: Case) -> Optional[str]:
    """Paired objects of different patients (PatientID) or frames of reference: they are never paired silently.

    An empty PatientID says nothing and is not compared; IDs that differ only in case or surrounding blanks are
    one patient (a warning says so), and the case's patient is then the CT's PatientID, so that every case on
    one CT is one patient in the split and under one pseudonym. The dose's frame of reference against the
    CT's is checked when the dose is read (pipeline).
    """
    first = case.doses[0]
    others = [(f"RTDOSE {d.rel_path}", d.patient_id) for d in case.doses[1:]]
    others.append((f"the CT '{case.ct.folder or '.'}'", case.ct.patient_id))  # quoted: a path to pseudonymize
    others.extend(
        (f"CT slice {s.rel_path}", s.patient_id) for s in case.ct.file_objects if s.patient_id != case.ct.patient_id
    )
    if case.plan is not None:
        others.append((f"RTPLAN {case.plan.rel_path}", case.plan.patient_id))
    others.extend((f"RTSTRUCT {s.rel_path}", s.patient_id) for s in case.structs)
    seen: set = set()
    for what, patient in others:
        if first.patient_id and patient and patient != first.patient_id:
            if patient.strip().casefold() == first.patient_id.strip().casefold():  # the same ID, written otherwise
                if patient not in seen:
                    seen.add(patient)
                    case.warnings.append(
                        f"RTDOSE {first.rel_path} has PatientID {first.patient_id!r}, {what} {patient!r} "
                        "(taken as one patient)"
                    )
                continue
            return (
                f"RTDOSE {first.rel_path} belongs to PatientID {first.patient_id!r}, {what} to {patient!r}: objects "
                "of different patients are not paired ((0010,0020) PatientID; if one patient's files were anonymized "
                "separately, give them one PatientID)"
            )
    if case.ct.patient_id and case.ct.patient_id != case.patient_id:
        case.patient_id = case.ct.patient_id  # one patient: named as its CT names it (split, pseudonym, manifest)
    # a CT that names no frame (an anonymizer dropped it) is in its dose's: a structure set of another frame was
    # paired without a word (sixty-seventh hostile trial BO3)
    frame = case.ct.frame_of_reference_uid or first.frame_of_reference_uid
    where = (
        f"its CT '{case.ct.folder or '.'}' is in {frame}"
        if case.ct.frame_of_reference_uid
        else f"its CT '{case.ct.folder or '.'}' names no frame and its RTDOSE {first.rel_path} is in {frame}"
    )
    for struct in case.structs:
        frames = structure_set_frames(struct)
        if frames and frame and frame not in frames:
            return (
                f"RTSTRUCT {struct.rel_path} is drawn in frame of reference {', '.join(frames)}, {where}: the contours "
                "would be misplaced ((3006,0024) ReferencedFrameOfReferenceUID; DoseAlign does not register)"
            )
    return None


def structure_set_frames(struct) -> list:
    """The frames of reference the ROIs of a scanned RTSTRUCT are drawn in (sorted; empty when it names none).

    Each ROI's own (3006,0024) ReferencedFrameOfReferenceUID decides (when the set lists it); an ROI without it
    counts as in any frame the set lists ((3006,0010) items, else a top-level FrameOfReferenceUID), as does a set
    no ROI of which names a listed frame. A set whose ROIs lie partly in the CT's frame is paired: the ROIs of
    other frames are left out when it is read.
    """
    listed = sorted({f for f in struct.info.get("frame_uids", []) or [] if f})
    if not listed and struct.frame_of_reference_uid:
        listed = [struct.frame_of_reference_uid]
    per_roi = struct.info.get("roi_frame_uids") or []
    frames = {f for f in per_roi if f and (not listed or f in listed)}  # one the set does not list: left out
    if not frames or any(not f for f in per_roi):
        frames.update(listed)  # with several listed, an ROI without its own is left out when read
    return sorted(frames)


def safe_name(text: str, limit: int = 48) -> str:
    """A filesystem-safe, deterministic rendering of ``text``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return (cleaned or "x")[:limit]
