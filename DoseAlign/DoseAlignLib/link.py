"""Form cases: pair each dose with its CT (and structures, plan) and decide what is summed.

Links follow the DICOM references where they exist (RTDOSE -> RTPLAN -> RTSTRUCT -> CT images)
and fall back to frame of reference + study. When several CTs qualify, the one that covers the
dose best wins (then the one whose slice spacing is closest to the dose's, then the finer, then
the folder name), and the reason is recorded.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Optional

import numpy as np

from . import dicomio
from .ct import ct_geometry
from .errors import DoseAlignError
from .rtdose import dose_geometry
from .scan import CtSeries, DicomObject, ScanResult

SUMMED_BEAMS = "BEAM_SUM"


@dataclass
class Case:
    """One output pair: a dose (or a sum of beam doses) and the CT it belongs to."""

    case_id: str
    patient_id: str
    summation_type: str
    doses: list
    ct: Optional[CtSeries] = None
    plan: Optional[DicomObject] = None
    structs: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # how links were made and choices taken
    left_out: list = field(default_factory=list)  # (rel_path, reason) doses deliberately not summed
    related_beam_doses: list = field(default_factory=list)  # BEAM doses of a plan that has a PLAN dose
    error: Optional[str] = None  # why this case cannot be exported

    @property
    def dose_files(self) -> list:
        return [d.rel_path for d in self.doses]


@dataclass
class LinkResult:
    cases: list = field(default_factory=list)
    orphans: list = field(default_factory=list)  # (rel_path, kind, reason)


def form_cases(scan: ScanResult) -> LinkResult:
    """Group the doses of a scan into cases and pair each case with a CT series."""
    result = LinkResult()
    plans = {p.sop_instance_uid: p for p in scan.of_kind("RTPLAN")}
    structs = scan.of_kind("RTSTRUCT")
    structs_by_uid = {s.sop_instance_uid: s for s in structs}
    used_plans, used_structs, used_series = set(), set(), set()

    for group in _dose_groups(scan.of_kind("RTDOSE")):
        case = _make_case(group, plans)
        try:
            _choose_ct(case, scan, structs_by_uid, structs)
        except DoseAlignError as error:  # the error names its file; else the dose it came from
            case.error = str(error) if error.path else f"RTDOSE {case.doses[0].rel_path}: {error}"
        except Exception as error:  # an engine bug must not stop the batch: the case says what happened
            case.error = (
                f"RTDOSE {case.doses[0].rel_path}: internal error ({type(error).__name__}: {error}); please report it"
            )
        if case.ct is None and case.error is None:
            case.error = _no_ct_reason(case.doses[0], scan)
        if case.ct is not None:
            used_series.add(case.ct.key)
            case.structs = _structs_for(case, structs)
        if case.plan is not None:
            used_plans.add(case.plan.sop_instance_uid)
        used_structs.update(s.rel_path for s in case.structs)
        result.cases.append(case)

    for plan in plans.values():
        if plan.sop_instance_uid not in used_plans:
            result.orphans.append((plan.rel_path, "RTPLAN", "no RTDOSE references this plan"))
    for struct in structs:
        if struct.rel_path not in used_structs:
            result.orphans.append((struct.rel_path, "RTSTRUCT", "its CT is not part of any case"))
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
    result.cases.sort(key=lambda c: c.case_id)
    return result


def _dose_groups(doses: list) -> list:
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


def _make_case(group: tuple, plans: dict) -> Case:
    summation, doses, related = group
    doses = sorted(doses, key=lambda d: d.rel_path)
    first = doses[0]
    plan_uid = first.info["plan_uids"][0] if first.info.get("plan_uids") else ""
    plan = plans.get(plan_uid)
    notes, left_out = [], []
    if summation == SUMMED_BEAMS:
        doses, left_out = _beam_doses_to_sum(doses)
        if len(doses) > 1:
            notes.append(f"{len(doses)} BEAM doses of plan {plan_uid} summed (no PLAN dose in the set)")
        else:
            summation = "BEAM"
    if plan_uid and plan is None:
        notes.append(f"referenced RTPLAN {plan_uid} is not in the input")
    error = None
    if group[0] == SUMMED_BEAMS:
        error = _overlapping_beams(group[1]) or (_missing_beams(summation, doses, plan) if len(doses) > 1 else None)
    label = plan.info.get("plan_label", "") if plan is not None else ""
    if summation == SUMMED_BEAMS:
        name = f"beamsum-{label or 'plan'}"
    elif summation == "BEAM" and len(group[1]) > 1:
        name = f"beam-{label or 'plan'}"
    elif summation == "PLAN" and label:
        name = f"plan-{label}"
    else:
        name = PurePosixPath(first.rel_path).stem
    digest = hashlib.sha1("\n".join(sorted(d.rel_path for d in group[1])).encode()).hexdigest()[:8]
    case_id = f"{safe_name(first.patient_id or 'anonymous')}_{safe_name(name)}_{digest}"
    return Case(
        case_id=case_id,
        patient_id=first.patient_id,
        summation_type=summation,
        doses=doses,
        plan=plan,
        notes=notes,
        left_out=left_out,
        related_beam_doses=sorted(related, key=lambda d: d.rel_path),
        error=error,
    )


def _overlapping_beams(doses: list) -> Optional[str]:
    """A multi-beam dose that shares some, not all, of its beams with single-beam doses.

    Summed, it would count the shared beams twice; left out, it would drop the others: the sum
    cannot be formed (typically a single-beam dose is missing or damaged).
    """
    singles = {d.info["beam_numbers"][0] for d in doses if len(d.info.get("beam_numbers") or []) == 1}
    for dose in sorted(doses, key=lambda d: d.rel_path):
        beams = set(dose.info.get("beam_numbers") or [])
        if len(beams) > 1 and beams & singles and not beams <= singles:
            return (
                f"RTDOSE {dose.rel_path}: references beams {sorted(beams)}; beams {sorted(beams & singles)} also have a "
                f"dose of their own, beams {sorted(beams - singles)} do not: no sum counts every beam once "
                "((300C,0006) ReferencedBeamNumber; a single-beam dose is missing or damaged: add it or export a PLAN dose)"
            )
    return None


def _missing_beams(summation: str, doses: list, plan: Optional[DicomObject]) -> Optional[str]:
    """Why a sum of BEAM doses is not the plan's dose: a treated beam of the plan has no dose."""
    treated = set(plan.info.get("treated_beams") or []) if plan is not None else set()
    if not treated or any(not d.info.get("beam_numbers") for d in doses):
        return None
    missing = sorted(treated - {b for d in doses for b in d.info["beam_numbers"]})
    if not missing:
        return None
    return (
        f"RTDOSE {doses[0].rel_path}: the BEAM doses of plan {plan.rel_path} cover beams "
        f"{sorted(treated - set(missing))}, not {missing}: their sum would not be the plan's dose "
        "((300C,0006) ReferencedBeamNumber; a beam's dose file is missing or damaged: add it or export a PLAN dose)"
    )


def _beam_doses_to_sum(doses: list) -> tuple:
    """The BEAM doses to add up, leaving out those that would count a beam twice.

    Left out: a copy of a dose already in the sum (same SOPInstanceUID), a second dose for a beam
    already in the sum, and a dose whose beams are all covered by single-beam doses.
    """
    single_beams = {d.info["beam_numbers"][0] for d in doses if len(d.info["beam_numbers"]) == 1}
    keep, left_out = [], []
    seen_uids: dict = {}
    seen_beams: dict = {}
    for dose in doses:
        beams = dose.info["beam_numbers"]
        if dose.sop_instance_uid and dose.sop_instance_uid in seen_uids:
            left_out.append((dose.rel_path, f"same SOPInstanceUID as {seen_uids[dose.sop_instance_uid]} (a copy)"))
        elif len(beams) > 1 and set(beams) <= single_beams:
            left_out.append((dose.rel_path, f"references beams {beams}, each already in the sum as its own BEAM dose"))
        elif len(beams) == 1 and beams[0] in seen_beams:
            left_out.append((dose.rel_path, f"beam {beams[0]} is already in the sum from {seen_beams[beams[0]]}"))
        else:
            keep.append(dose)
            seen_uids[dose.sop_instance_uid] = dose.rel_path
            for beam in beams:
                seen_beams.setdefault(beam, dose.rel_path)
    return keep, left_out


def _choose_ct(case: Case, scan: ScanResult, structs_by_uid: dict, structs: list) -> None:
    first = case.doses[0]
    candidates, how = [], ""
    # 1. the reference chain: dose -> plan -> structure set -> CT images
    if case.plan is not None:
        for struct_uid in case.plan.info.get("struct_uids", []):
            struct = structs_by_uid.get(struct_uid)
            if struct is not None:
                candidates = _series_of_struct(struct, scan.ct_series)
                if candidates:
                    how = f"via RTPLAN -> RTSTRUCT {struct.rel_path} -> CT"
                    break
    # 2. frame of reference and study
    if not candidates and first.frame_of_reference_uid:
        same_frame = [s for s in scan.ct_series if s.frame_of_reference_uid == first.frame_of_reference_uid]
        same_study = [s for s in same_frame if s.study_uid == first.study_uid]
        candidates = same_study or same_frame
        if candidates:
            how = "via frame of reference" + (" and study" if same_study else " (different study)")
    if not candidates:
        return
    geometry = dose_geometry(dicomio.read_header(first.path), first.path)
    if len(candidates) == 1:
        case.ct = candidates[0]
        case.notes.append(f"CT {_describe(case.ct)} chosen {how}")
        return
    scored = []
    for series in candidates:
        try:
            ct_grid = ct_geometry(series)
        except DoseAlignError as error:
            case.notes.append(f"CT {_describe(series)} not usable: {error}")
            continue
        coverage = _coverage(geometry.grid, ct_grid.grid)
        spacing_gap = abs(ct_grid.typical_step_mm - geometry.grid.spacing[2])
        # coverages within one percentage point count as equal: then the matching slice step decides
        scored.append((0, round(spacing_gap, 4), ct_grid.typical_step_mm, series.folder, series, coverage))
    if not scored:
        raise DoseAlignError(f"none of the {len(candidates)} candidate CTs has a usable geometry", path=first.path)
    # coverages within one percentage point of the best count as equal: the matching slice step decides
    top = max(s[5] for s in scored)
    scored = sorted((s for s in scored if s[5] >= top - 0.01), key=lambda s: s[1:4])
    best = scored[0]
    case.ct = best[4]
    case.notes.append(
        f"CT {_describe(case.ct)} chosen {how} among {len(candidates)} candidates: covers {best[5]:.1%} of the dose grid, "
        f"slice step {best[2]:g} mm (dose frames {geometry.grid.spacing[2]:g} mm)"
    )


def _no_ct_reason(dose: DicomObject, scan: ScanResult) -> str:
    """Why a dose has no CT, and what to add to the input so that it gets one."""
    tag = "(0020,0052) FrameOfReferenceUID"
    if not dose.frame_of_reference_uid:
        return (
            f"RTDOSE {dose.rel_path}: no CT with frame of reference (none): {tag} is missing and no "
            "RTPLAN -> RTSTRUCT -> CT chain leads to a CT (the header is damaged, or add the plan and structure set "
            "it was computed with)"
        )
    same_study = [s for s in scan.ct_series if dose.study_uid and s.study_uid == dose.study_uid]
    if same_study:
        frames = sorted({s.frame_of_reference_uid or "(none)" for s in same_study})
        return (
            f"RTDOSE {dose.rel_path}: no CT with frame of reference {dose.frame_of_reference_uid} ({tag}); the CTs "
            f"of its study have {', '.join(frames)} (the dose belongs to another CT or registration: add that CT)"
        )
    return (
        f"RTDOSE {dose.rel_path}: no CT with frame of reference {dose.frame_of_reference_uid} in study "
        f"{dose.study_uid or '(none)'} ({tag}; add the planning CT series to the input folder)"
    )


def _series_of_struct(struct: DicomObject, series_list: list) -> list:
    image_uids = set(struct.info.get("ct_image_uids", []))
    if image_uids:
        matches = [s for s in series_list if image_uids & s.sop_instance_uids]
        if matches:
            return matches
    series_uids = set(struct.info.get("ct_series_uids", []))
    return [s for s in series_list if s.series_uid in series_uids]


def _structs_for(case: Case, structs: list) -> list:
    """The structure sets drawn on the case's CT: the plan's one, else every one referencing the CT."""
    if case.plan is not None:
        planned = [s for s in structs if s.sop_instance_uid in case.plan.info.get("struct_uids", [])]
        planned = [s for s in planned if case.ct in _series_of_struct(s, [case.ct])]
        if planned:
            return planned
    found = []
    for struct in structs:
        image_uids = set(struct.info.get("ct_image_uids", []))
        if image_uids:
            if image_uids & case.ct.sop_instance_uids:
                found.append(struct)
        elif case.ct.series_uid in struct.info.get("ct_series_uids", []) or (
            not struct.info.get("ct_series_uids") and struct.frame_of_reference_uid == case.ct.frame_of_reference_uid
        ):
            found.append(struct)
    return sorted(found, key=lambda s: s.rel_path)


def _coverage(dose_grid, ct_grid) -> float:
    """Fraction of the dose grid's bounding box (in CT index space) that lies inside the CT."""
    extent = dose_grid.extent_in(ct_grid)
    sizes = np.array([ct_grid.shape[2], ct_grid.shape[1], ct_grid.shape[0]], dtype=float)
    lo = np.maximum(extent[:, 0], -0.5)
    hi = np.minimum(extent[:, 1], sizes - 0.5)
    inside = np.prod(np.clip(hi - lo, 0, None))
    total = np.prod(extent[:, 1] - extent[:, 0])
    return float(inside / total) if total > 0 else 0.0


def _describe(series: CtSeries) -> str:
    return f"'{series.folder or '.'}' ({len(series.slices)} slices, series {series.series_uid})"


def safe_name(text: str, limit: int = 48) -> str:
    """A filesystem-safe, deterministic rendering of ``text``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return (cleaned or "x")[:limit]
