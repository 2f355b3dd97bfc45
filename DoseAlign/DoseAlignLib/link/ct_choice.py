"""Which CT a case's dose belongs to, and which structure sets were drawn on that CT.

Links follow the DICOM references where they exist (RTDOSE -> RTPLAN -> RTSTRUCT -> CT images)
and fall back to frame of reference + study. When several CTs qualify, the one that covers the
dose best wins (then the one whose slice spacing is closest to the dose's, then the finer, then
the folder name), and the reason is recorded in the case's notes.
"""

from __future__ import annotations

import numpy as np

from ..dicom import headers
from ..dicom.ct import ct_geometry
from ..dicom.rtdose import dose_geometry
from ..dicom.scan import CtSeries, DicomObject, ScanResult
from ..errors import DoseAlignError
from .case import Case


def choose_ct(case: Case, scan: ScanResult, structs_by_uid: dict, structs: list) -> None:
    first = case.doses[0]
    candidates, how = [], ""
    # 1. the reference chain: dose -> plan -> structure set -> CT images
    if case.plan is not None:
        for struct_uid in case.plan.info.get("struct_uids", []):
            struct = structs_by_uid.get(struct_uid)
            if struct is not None:
                candidates = series_of_struct(struct, scan.ct_series)
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
    geometry = dose_geometry(headers.read_header(first.path), first.path)
    if len(candidates) == 1:
        case.ct = candidates[0]
        case.notes.append(f"CT {describe_series(case.ct)} chosen {how}")
        return
    scored = []
    for series in candidates:
        try:
            ct_grid = ct_geometry(series)
        except DoseAlignError as error:
            case.notes.append(f"CT {describe_series(series)} not usable: {error}")
            continue
        coverage = dose_coverage(geometry.grid, ct_grid.grid)
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
        f"CT {describe_series(case.ct)} chosen {how} among {len(candidates)} candidates: covers {best[5]:.1%} of the dose grid, "
        f"slice step {best[2]:g} mm (dose frames {geometry.grid.spacing[2]:g} mm)"
    )


def no_ct_reason(dose: DicomObject, scan: ScanResult) -> str:
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


def series_of_struct(struct: DicomObject, series_list: list) -> list:
    image_uids = set(struct.info.get("ct_image_uids", []))
    if image_uids:
        matches = [s for s in series_list if image_uids & s.sop_instance_uids]
        if matches:
            return matches
    series_uids = set(struct.info.get("ct_series_uids", []))
    return [s for s in series_list if s.series_uid in series_uids]


def structs_for(case: Case, structs: list) -> list:
    """The structure sets drawn on the case's CT: the plan's one, else every one referencing the CT."""
    if case.plan is not None:
        planned = [s for s in structs if s.sop_instance_uid in case.plan.info.get("struct_uids", [])]
        planned = [s for s in planned if case.ct in series_of_struct(s, [case.ct])]
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


def dose_coverage(dose_grid, ct_grid) -> float:
    """Fraction of the dose grid's bounding box (in CT index space) that lies inside the CT."""
    extent = dose_grid.extent_in(ct_grid)
    sizes = np.array([ct_grid.shape[2], ct_grid.shape[1], ct_grid.shape[0]], dtype=float)
    lo = np.maximum(extent[:, 0], -0.5)
    hi = np.minimum(extent[:, 1], sizes - 0.5)
    inside = np.prod(np.clip(hi - lo, 0, None))
    total = np.prod(extent[:, 1] - extent[:, 0])
    return float(inside / total) if total > 0 else 0.0


def describe_series(series: CtSeries) -> str:
    return f"'{series.folder or '.'}' ({len(series.slices)} slices, series {series.series_uid})"
