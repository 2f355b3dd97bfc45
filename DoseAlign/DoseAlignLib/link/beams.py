"""Which doses make one case: PLAN doses alone, the BEAM doses of a plan summed, each beam once.

A sum of BEAM doses stands for the plan only when it counts every treated beam exactly once: copies
(also a second dose of a beam holding the same dose) and multi-beam doses already covered by single-beam
doses are left out (with the reason); a sum that would miss or double a beam, or whose beam has two
different doses, or whose multi-beam doses share a beam, is refused. A beam is a beam of its fraction group
when the doses name different groups ((300C,0022); a boost phase may treat the same beams again).
"""

from __future__ import annotations

from typing import Optional

from ..dicom.scan import DicomObject, same_dose

#: The summation type of a case made of several BEAM doses of one plan.
SUMMED_BEAMS = "BEAM_SUM"


def by_fraction_group(doses: list) -> bool:
    """Whether the doses' beams are told apart by fraction group: each dose names its one (300C,0022)
    ReferencedFractionGroupNumber, and they name more than one (a boost phase may treat the same beams
    again: beam 6 of group 1 and beam 6 of group 2 are two doses, both in the plan's dose)."""
    groups = [d.info.get("fraction_group") for d in doses]
    return None not in groups and len(set(groups)) > 1


def _keys(dose: DicomObject, grouped: bool) -> tuple:
    """The dose's beams as (fraction group, beam number); the group is None unless ``grouped``."""
    group = dose.info.get("fraction_group") if grouped else None
    return tuple((group, beam) for beam in dose.info.get("beam_numbers") or [])


def _said(keys) -> str:
    """Beams for a message: ``[1, 2]`` as before fraction groups mattered, else each with its group."""
    keys = sorted(keys, key=lambda k: (k[0] or 0, k[1]))
    if all(group is None for group, _beam in keys):
        return str([beam for _group, beam in keys])
    return "[" + ", ".join(f"{beam} (fraction group {group})" for group, beam in keys) + "]"


def _one(keys) -> str:
    """A single beam for a message: ``beam 6``, or ``beam 6 of fraction group 2``."""
    group, beam = keys[0]
    return f"beam {beam}" if group is None else f"beam {beam} of fraction group {group}"


def dose_groups(doses: list) -> list:
    """PLAN doses alone; BEAM doses of one plan together (unless a PLAN dose exists); others alone."""
    by_plan: dict = {}
    for dose in doses:
        plan_uid = dose.info["plan_uids"][0] if dose.info.get("plan_uids") else ""
        by_plan.setdefault(plan_uid, []).append(dose)
    groups = []
    for plan_uid, members in sorted(by_plan.items()):
        plan_doses = [d for d in members if d.info["summation_type"] == "PLAN"]
        beam_doses = [d for d in members if d.info["summation_type"] == "BEAM"]
        others = [d for d in members if d.info["summation_type"] not in ("PLAN", "BEAM")]
        for dose in plan_doses:
            groups.append(("PLAN", [dose], beam_doses if plan_uid else []))
        if beam_doses and (not plan_doses or not plan_uid):
            if plan_uid:
                groups.append((SUMMED_BEAMS, beam_doses, []))
            else:
                groups.extend(("BEAM", [d], []) for d in beam_doses)  # no plan to tie them together
        groups.extend((d.info["summation_type"] or "UNKNOWN", [d], []) for d in others)
    return groups


def overlapping_beams(doses: list) -> Optional[str]:
    """Why the doses' beams overlap so that no sum counts each beam once, or None.

    A multi-beam dose that shares some, not all, of its beams with single-beam doses: summed, it would count
    the shared beams twice; left out, it would drop the others (typically a single-beam dose is missing or
    damaged). Or two multi-beam doses that share a beam (beams [1, 2] and [2, 3]).
    """
    grouped = by_fraction_group(doses)
    singles = {_keys(d, grouped)[0] for d in doses if len(_keys(d, grouped)) == 1}
    for dose in sorted(doses, key=lambda d: d.rel_path):
        beams = set(_keys(dose, grouped))
        if len(beams) > 1 and beams & singles and not beams <= singles:
            return (
                f"RTDOSE {dose.rel_path}: references beams {_said(beams)}; beams {_said(beams & singles)} also have a "
                f"dose of their own, beams {_said(beams - singles)} do not: no sum counts every beam once "
                "((300C,0006) ReferencedBeamNumber; a single-beam dose is missing or damaged: add it or export a PLAN dose)"
            )
    keep, _left_out = beam_doses_to_sum(sorted(doses, key=lambda d: d.rel_path))
    owner: dict = {}
    for dose in keep:
        for beam in _keys(dose, grouped):
            first = owner.setdefault(beam, dose)
            if first is not dose:
                return (
                    f"RTDOSE {first.rel_path} and {dose.rel_path}: both hold {_one([beam])} (beams "
                    f"{_said(_keys(first, grouped))} and {_said(_keys(dose, grouped))}): their sum would count it "
                    "twice, and which of them to leave out cannot be told ((300C,0006) ReferencedBeamNumber; export a "
                    "PLAN dose, or give each beam one dose)"
                )
    return None


def conflicting_copies(doses: list) -> Optional[str]:
    """Two doses of a sum that share a SOPInstanceUID but hold different doses: which is the beam's cannot be told.

    Copies (the same image) are left out of the sum by :func:`beam_doses_to_sum`; these are not copies.
    """
    first: dict = {}
    for dose in sorted(doses, key=lambda d: d.rel_path):
        if not dose.sop_instance_uid:
            continue
        seen = first.setdefault(dose.sop_instance_uid, dose)
        if seen is not dose and not same_dose(seen.path, dose.path):
            return (
                f"RTDOSE {seen.rel_path} and {dose.rel_path} share SOPInstanceUID {dose.sop_instance_uid} but hold "
                "different doses: which one belongs to the sum cannot be told ((0008,0018) SOPInstanceUID; "
                "remove the wrong file)"
            )
    return None


def conflicting_beam_doses(doses: list, beside_plan_dose: bool = False) -> Optional[str]:
    """Two doses of one beam (or set of beams) under different SOPInstanceUIDs that hold different doses.

    :func:`beam_doses_to_sum` keeps the first by file name; a second dose that is the same image (the same
    pixel data, geometry and scaling, as :func:`~DoseAlignLib.dicom.scan.same_dose` compares them) is
    a copy and harmless; a different one is a recalculated (or wrong) beam beside the old one, and which
    of the two the treatment used cannot be told: renaming the files would decide the case's dose.
    ``beside_plan_dose``: the doses are a PLAN dose's related BEAM doses (only the audit's beam-sum check
    meets them; the message says which one it uses).
    """
    ordered = sorted(doses, key=lambda d: d.rel_path)
    grouped = by_fraction_group(ordered)
    keep, _left_out = beam_doses_to_sum(ordered)
    kept_uids = {d.sop_instance_uid for d in keep if d.sop_instance_uid}
    first: dict = {}
    for dose in keep:
        first.setdefault(_keys(dose, grouped), dose)
    for dose in ordered:
        if dose in keep or (dose.sop_instance_uid and dose.sop_instance_uid in kept_uids):
            continue  # kept, or a copy under a kept UID (conflicting_copies compares those)
        beams = _keys(dose, grouped)
        seen = first.get(beams)
        if seen is not None and not same_dose(seen.path, dose.path):
            which = _one(beams) if len(beams) == 1 else f"beams {_said(beams)}"
            told = (
                f"RTDOSE {seen.rel_path} and {dose.rel_path} are two different doses of {which} (SOPInstanceUIDs "
                f"{seen.sop_instance_uid} and {dose.sop_instance_uid}): which one the treatment used cannot be told "
                "((300C,0006) ReferencedBeamNumber, (0008,0018) SOPInstanceUID; remove the dose that is not the "
                "treated one"
            )
            if beside_plan_dose:
                return f"{told}); the check of the PLAN dose against its BEAM doses uses {seen.rel_path}"
            return f"{told}, or add the plan's PLAN dose)"
    return None


def unnamed_beams(doses: list, plan: Optional[DicomObject]) -> Optional[str]:
    """Why a sum of BEAM doses cannot be checked to count each beam once: a dose that names no beam ((300C,0020)
    ReferencedFractionGroupSequence absent) beside doses that do, or a dose that names a beam or a fraction group its
    plan does not have. Either was summed unchecked (twelfth hostile trial L6, L1: a copy of a beam's dose added in, dmax
    +17 % or x2, status ok)."""
    named = [d for d in doses if d.info.get("beam_numbers")]
    unnamed = sorted((d for d in doses if not d.info.get("beam_numbers")), key=lambda d: d.rel_path)
    if named and unnamed:
        return (
            f"RTDOSE {unnamed[0].rel_path} names no beam, beside BEAM doses of the same plan that do: which beam it "
            "holds, and whether the sum would count it twice, cannot be told ((300C,0020) ReferencedFractionGroupSequence, "
            "(300C,0006) ReferencedBeamNumber; remove the dose that is not a beam's, or export the PLAN dose)"
        )
    planned = set(plan.info.get("beam_numbers") or []) if plan is not None else set()
    if planned:
        strays = sorted((d for d in named if set(d.info["beam_numbers"]) - planned), key=lambda d: d.rel_path)
        if strays:
            beams = sorted(set(strays[0].info["beam_numbers"]) - planned)
            return (
                f"RTDOSE {strays[0].rel_path} names beam(s) {beams}, which plan {plan.rel_path} does not have (its "
                f"beams are {sorted(planned)}): which beam's dose it holds cannot be told ((300C,0006) "
                "ReferencedBeamNumber; remove the dose, or export the PLAN dose)"
            )
    groups = {g for g, _beams in (plan.info.get("treated_by_group") or [])} if plan is not None else set()
    if groups and by_fraction_group(doses):
        strays = sorted((d for d in doses if d.info.get("fraction_group") not in groups), key=lambda d: d.rel_path)
        if strays:
            return (
                f"RTDOSE {strays[0].rel_path} names fraction group {strays[0].info.get('fraction_group')}, which plan "
                f"{plan.rel_path} does not have (it has {sorted(groups)}): the sum would count its beams again "
                "((300C,0022) ReferencedFractionGroupNumber; remove the dose, or export the PLAN dose)"
            )
    return None


def groups_without_dose(doses: list, plan: Optional[DicomObject]) -> list:
    """The fraction groups of ``plan`` that treat beams but that none of ``doses`` names (all of them but the first
    when the doses name no group: a sum of one group's doses is not the plan's dose; twelfth hostile trial L2)."""
    treating = [g for g, beams in (plan.info.get("treated_by_group") or []) if beams] if plan is not None else []
    if len(treating) < 2:
        return []
    named = {d.info.get("fraction_group") for d in doses} - {None}
    if not named:  # (read as the first group's, as the plan's treated beams are)
        return treating[1:]
    return [g for g in treating if g not in named]


def missing_beams(summation: str, doses: list, plan: Optional[DicomObject]) -> Optional[str]:
    """Why a sum of BEAM doses is not the plan's dose: a treated beam of the plan has no dose; where the doses name no
    beam, their number is not the number of beams the plan treats (fifty-fourth hostile trial BB4: two of three beams'
    doses, naming none, were summed as the plan's dose, status ok)."""
    if plan is not None and doses and not any(d.info.get("beam_numbers") for d in doses):
        treated = treated_beam_count(plan)
        if treated and len(doses) != treated:
            return (
                f"RTDOSE {doses[0].rel_path}: the {len(doses)} BEAM doses of plan {plan.rel_path} name no beam, and "
                f"the plan treats {treated} beams: their sum would {'miss' if len(doses) < treated else 'double'} a "
                "beam's dose ((300C,0020) ReferencedFractionGroupSequence is missing; add the missing doses, or export "
                "a PLAN dose)"
            )
        return None
    if plan is None or any(not d.info.get("beam_numbers") for d in doses):
        return None
    if by_fraction_group(doses):  # each fraction group the doses name must hold its own treated beams
        named = {d.info["fraction_group"] for d in doses}
        treated = {(g, b) for g, beams in plan.info.get("treated_by_group") or [] if g in named for b in beams}
        covered = {key for d in doses for key in _keys(d, True)}
    else:
        treated = {(None, b) for b in plan.info.get("treated_beams") or []}
        covered = {key for d in doses for key in _keys(d, False)}
    missing = treated - covered
    if not treated or not missing:
        return None
    return (
        f"RTDOSE {doses[0].rel_path}: the BEAM doses of plan {plan.rel_path} cover beams "
        f"{_said(treated - missing)}, not {_said(missing)}: their sum would not be the plan's dose "
        "((300C,0006) ReferencedBeamNumber; a beam's dose file is missing or damaged: add it or export a PLAN dose)"
    )


def treated_beam_count(plan: DicomObject) -> int:
    """How many beams ``plan`` treats, over all its fraction groups (a beam treated in two groups counts twice, as it
    has a dose in each)."""
    by_group = plan.info.get("treated_by_group") or []
    if by_group:
        return sum(len(set(beams)) for _group, beams in by_group)
    return len(set(plan.info.get("treated_beams") or []))


def beam_doses_to_sum(doses: list) -> tuple:
    """The BEAM doses to add up, leaving out those that would count a beam twice.

    Left out: a dose of a SOPInstanceUID already in the sum (copies are used once before; another dose of that UID
    fails the case: :func:`conflicting_copies`), a second dose for a beam (or the
    same set of beams) already in the sum, and a dose whose beams are all covered by single-beam doses.
    """
    grouped = by_fraction_group(doses)
    single_beams = {_keys(d, grouped)[0] for d in doses if len(_keys(d, grouped)) == 1}
    keep, left_out = [], []
    seen_uids: dict = {}
    seen_beams: dict = {}
    seen_sets: dict = {}  # the beams of multi-beam doses in the sum
    for dose in doses:
        beams = _keys(dose, grouped)
        if dose.sop_instance_uid and dose.sop_instance_uid in seen_uids:
            # (copies of one dose were made one before the sum: this is another dose, which conflicting_copies names)
            left_out.append(
                (dose.rel_path, f"same SOPInstanceUID as {seen_uids[dose.sop_instance_uid]}, but another dose")
            )
        elif len(beams) > 1 and set(beams) <= single_beams:
            left_out.append(
                (dose.rel_path, f"references beams {_said(beams)}, each already in the sum as its own BEAM dose")
            )
        elif len(beams) == 1 and beams[0] in seen_beams:
            left_out.append((dose.rel_path, f"{_one(beams)} is already in the sum from {seen_beams[beams[0]]}"))
        elif len(beams) > 1 and beams in seen_sets:
            left_out.append((dose.rel_path, f"beams {_said(beams)} are already in the sum from {seen_sets[beams]}"))
        else:
            keep.append(dose)
            seen_uids[dose.sop_instance_uid] = dose.rel_path
            for beam in beams:
                seen_beams.setdefault(beam, dose.rel_path)
            seen_sets.setdefault(beams, dose.rel_path)
    return keep, left_out
