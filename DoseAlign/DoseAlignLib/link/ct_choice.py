"""Which CT a case's dose belongs to, and which structure sets were drawn on that CT.

The order of the rules (the first that decides wins):

1. The user's choice (``--ct``: a CT folder or SeriesInstanceUID for the whole input, or a CSV of
   dose -> CT pairings; :func:`read_ct_request`).
2. The references: RTDOSE -> RTPLAN -> RTSTRUCT -> CT images. The series holding the most of the
   images the structure set names wins (or, when it names no images, the series it names); a rescan
   with a larger field of view or a slice step closer to the dose's never outranks it.
3. Frame of reference and study, when no reference decides. Several CTs may qualify: the one that
   covers the dose best wins (then the one whose slice step is closest to the dose's, then the finer,
   then the folder name); the case's notes say that no reference decided and how to choose (``--ct``), and
   a case warning says so when only the folder name told them apart.

Only series whose Modality is CT are candidates at any step (an MR stored as CT images is not a
planning CT); a series that says it is a cone-beam CT (SeriesDescription, ProtocolName or ImageType)
is used only when no other CT qualifies.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np

from ..dicom import headers
from ..dicom.ct import ct_geometry
from ..dicom.rtdose import dose_geometry
from ..dicom.scan import CtSeries, DicomObject, ScanResult
from ..errors import DoseAlignError, InputError, LinkError
from ..limits import read_option_text
from .case import Case

#: Words that mark a series as a cone-beam CT (matched in SeriesDescription, ProtocolName, ImageType).
CONE_BEAM = re.compile(r"\bCBCT\b|CONE[\s_-]*BEAM", re.IGNORECASE)


@dataclass
class CtRequest:
    """The user's CT choice (``--ct``): one CT for every dose, or one per dose file."""

    source: str  # the option's value, for messages
    default: Optional[CtSeries] = None
    by_dose: dict = field(default_factory=dict)  # dose rel_path or SOPInstanceUID -> CtSeries

    def for_case(self, case: Case) -> Optional[CtSeries]:
        """The CT asked for ``case``. Its doses (BEAM doses summed) paired with different CTs are refused: the first
        dose's pairing won, and the other line was not used, without a word (seventy-fourth hostile trial BV7)."""
        named = []
        for dose in case.doses:
            for key in (dose.rel_path, dose.sop_instance_uid):
                if key in self.by_dose:
                    if not any(series is self.by_dose[key] for _dose, series in named):
                        named.append((dose, self.by_dose[key]))
                    break
        if len(named) > 1:
            pairs = "; ".join(f"RTDOSE {dose.rel_path} with CT {describe_series(series)}" for dose, series in named)
            raise LinkError(
                f"the --ct CSV pairs the doses of this case, which are summed, with {len(named)} CTs: {pairs}",
                path=case.doses[0].path,
                hint="pair every dose of the case with the same CT",
            )
        return named[0][1] if named else self.default


def series_modality(series: CtSeries) -> str:
    return str(series.slices[0].info.get("modality") or "").upper() if series.slices else ""


def not_a_planning_ct(series: CtSeries) -> Optional[str]:
    """Why a series of CT images cannot be a dose's planning CT (None when it can)."""
    modality = series_modality(series)
    if modality and modality != "CT":
        return f"its Modality is {modality}, not CT"
    return None


def is_cone_beam(series: CtSeries) -> bool:
    """Whether the series says it is a cone-beam CT (its first slice's header is read once, when asked)."""
    if not series.slices:
        return False
    info = series.slices[0].info
    if "cone_beam" not in info:
        try:
            ds = headers.read_header(series.slices[0].path)
        except DoseAlignError:
            info["cone_beam"] = False
        else:
            said = " ".join(headers.text(ds, k) for k in ("SeriesDescription", "ProtocolName", "ImageType"))
            info["cone_beam"] = bool(CONE_BEAM.search(said))
    return bool(info["cone_beam"])


def read_ct_request(value, scan: ScanResult) -> CtRequest:
    """The ``--ct`` choice: a CSV of dose -> CT pairings (``dose,ct`` columns), or one CT for the input.

    A dose is named by its path relative to the input folder (or an absolute path inside it) or by its
    SOPInstanceUID; a CT by its folder (relative or absolute) or its SeriesInstanceUID. Raises
    :class:`~DoseAlignLib.errors.InputError` naming what does not match.
    """
    text = str(value).strip()
    path = Path(text)
    # a CSV by its name, or any entry that is no folder (a pipe such as <(printf ...), refused as what it is: it was
    # looked up as a CT folder, "no CT series with folder '/dev/fd/63'", fourteenth hostile trial N10)
    if text.lower().endswith(".csv") or (os.path.exists(path) and not os.path.isdir(path)):
        if not os.path.exists(path):
            raise InputError("no such CSV file of dose -> CT pairings (--ct)", path=path)
        return _read_pairs(path, scan)
    request = CtRequest(source=text, default=_find_series(text, scan, where="--ct"))
    studies = sorted({d.study_uid for d in scan.of_kind("RTDOSE")})
    if len(studies) > 1:
        raise InputError(
            f"--ct {text!r} names one CT for the whole input, but its doses belong to {len(studies)} studies: "
            "give a CSV of dose,ct pairings instead"
        )
    return request


def _read_pairs(path: Path, scan: ScanResult) -> CtRequest:
    try:
        rows = list(csv.DictReader(io.StringIO(read_option_text(path, "--ct"), newline="")))
    except (ValueError, csv.Error) as error:
        raise InputError(f"cannot be read as a CSV of dose -> CT pairings: {error}", path=path) from None
    if not rows or not {"dose", "ct"} <= {(k or "").strip().lower() for k in rows[0]}:
        raise InputError("needs a header with the columns dose and ct, and one row per dose", path=path)
    doses = scan.of_kind("RTDOSE")
    request = CtRequest(source=str(path))
    paired_on: dict = {}  # dose rel_path -> the line that paired it
    for n, row in enumerate(rows, start=2):
        cells = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        dose_text, ct_text = cells.get("dose", ""), cells.get("ct", "")
        if not dose_text or not ct_text:
            raise InputError(f"line {n}: both dose and ct are needed", path=path)
        where = f"{path.name} line {n}"
        rel = _relative(dose_text, scan)
        matches = [d for d in doses if dose_text == d.sop_instance_uid or d.rel_path in (dose_text, rel)]
        if not matches:
            raise InputError(
                f"line {n}: no RTDOSE {dose_text!r} in the input (give its path or SOPInstanceUID)", path=path
            )
        series = _find_series(ct_text, scan, where=where)
        for dose in matches:
            earlier = request.by_dose.get(dose.rel_path)
            if earlier is not None and earlier is not series:  # the last row won without a word (M12)
                raise InputError(
                    f"line {n} pairs RTDOSE {dose.rel_path} with CT {describe_series(series)}, line "
                    f"{paired_on[dose.rel_path]} with CT {describe_series(earlier)}: one CT per dose",
                    path=path,
                )
            request.by_dose[dose.rel_path] = series
            paired_on.setdefault(dose.rel_path, n)
    return request


def _relative(text: str, scan: ScanResult) -> str:
    """``text`` as a path relative to the input folder (POSIX; "." for the folder itself), or "" when it
    is not inside it: an absolute path must lie inside the input folder; a relative one is taken from
    the input folder, else from the working folder when it exists there."""
    root = Path(scan.root).resolve()
    path = Path(text)
    tries = [path] if path.is_absolute() else [root / path, path]
    for candidate in tries:
        if candidate.exists():
            try:
                return candidate.resolve().relative_to(root).as_posix()
            except (ValueError, OSError):
                continue
    if path.is_absolute():
        return ""
    return PurePosixPath(text.replace("\\", "/")).as_posix().strip("/") or "."


def _find_series(text: str, scan: ScanResult, where: str) -> CtSeries:
    folder = _relative(text, scan)
    by_folder = [s for s in scan.ct_series if folder and ((s.folder or ".") == folder or folder in s.folders)]
    by_uid = [s for s in scan.ct_series if s.series_uid == text]
    found = by_folder or by_uid
    if not found:
        known = ", ".join(sorted(f"'{s.folder or '.'}'" for s in scan.ct_series)) or "none"
        raise InputError(f"{where}: no CT series with folder or SeriesInstanceUID {text!r} (CT folders: {known})")
    if len(found) > 1:
        folders = ", ".join(f"'{s.folder or '.'}'" for s in found)
        raise InputError(f"{where}: {text!r} names {len(found)} CT series (in {folders}): give the folder")
    reason = not_a_planning_ct(found[0])
    if reason:
        raise InputError(f"{where}: CT series {describe_series(found[0])} is not a planning CT: {reason}")
    return found[0]


def choose_ct(
    case: Case, scan: ScanResult, structs_by_uid: dict, structs: list, request: Optional[CtRequest] = None
) -> None:
    """Pair ``case`` with its CT series (``case.ct``) by the rules of the module text; the reason goes to its notes."""
    first = case.doses[0]
    series_list = [s for s in scan.ct_series if not_a_planning_ct(s) is None]
    excluded = [s for s in scan.ct_series if not_a_planning_ct(s) is not None]
    damaged = {d.sop_instance_uid: d for d in getattr(scan, "damaged", [])}
    by_reference, reference_note = _by_reference(case, series_list, structs_by_uid, damaged)
    chosen = request.for_case(case) if request is not None else None
    if chosen is not None:
        case.ct = chosen
        other = ""
        if by_reference and chosen not in by_reference:
            other = f"; the references name {', '.join(describe_series(s) for s in by_reference)}"
        # the series is named (its folder); the option's value is in meta.json's options, which the
        # pseudonymization tokenizes as a path: a folder or CSV named after the patient must not stand here
        how = "by --ct (a CSV of dose, CT pairings)" if request.by_dose else "by --ct"
        case.notes.append(f"CT {describe_series(chosen)} chosen {how}{other}")
        return
    candidates, how = by_reference, reference_note
    # frame of reference and study
    if not candidates and first.frame_of_reference_uid:
        same_frame = [s for s in series_list if s.frame_of_reference_uid == first.frame_of_reference_uid]
        same_study = [s for s in same_frame if s.study_uid == first.study_uid]
        candidates = same_study or same_frame
        if candidates:
            how = "via frame of reference" + (" and study" if same_study else " (different study)")
            if reference_note:
                how += f" ({reference_note})"
    if not candidates:
        return
    skipped = ""
    if len(candidates) > 1 and not all(is_cone_beam(s) for s in candidates):
        cone = [s for s in candidates if is_cone_beam(s)]
        candidates = [s for s in candidates if not is_cone_beam(s)]
        if cone:
            skipped += f"; cone-beam CT {', '.join(describe_series(s) for s in cone)} left out"
    if excluded:
        skipped += f"; not candidates: {', '.join(f'{describe_series(s)} ({not_a_planning_ct(s)})' for s in excluded)}"
    if len(candidates) == 1:
        case.ct = candidates[0]
        case.notes.append(f"CT {describe_series(case.ct)} chosen {how}{skipped}")
        return
    geometry = dose_geometry(headers.read_header(first.path), first.path)
    scored = []
    for series in candidates:
        try:
            ct_grid = ct_geometry(series)
        except DoseAlignError as error:
            case.notes.append(f"CT {describe_series(series)} not usable: {error}")
            continue
        coverage = dose_coverage(geometry.grid, ct_grid.grid)
        spacing_gap = abs(ct_grid.typical_step_mm - geometry.grid.spacing[2])
        scored.append((0, round(spacing_gap, 4), ct_grid.typical_step_mm, series.folder, series, coverage))
    if not scored:
        raise DoseAlignError(f"none of the {len(candidates)} candidate CTs has a usable geometry", path=first.path)
    # coverages within one percentage point of the best count as equal: the matching slice step decides
    top = max(s[5] for s in scored)
    scored = sorted((s for s in scored if s[5] >= top - 0.01), key=lambda s: s[1:4])
    best = scored[0]
    case.ct = best[4]
    decided = "the references name several" if by_reference else "no reference decides between them"
    tied = [s[4] for s in scored[1:] if s[1:3] == best[1:3]]
    if tied:  # nothing in the files tells them apart: the folder name decided, which is no reason
        case.warnings.append(
            f"CT {describe_series(case.ct)} chosen by its folder name: {len(tied)} other CT series "
            f"({', '.join(describe_series(s) for s in tied)}) cover the dose as well with the same slice step and "
            f"{decided}; check that it is the planning CT, or choose with --ct"
        )
    case.notes.append(
        f"CT {describe_series(case.ct)} chosen {how} among {len(candidates)} candidates ({decided}; --ct chooses "
        f"another): covers {best[5]:.1%} of the dose grid, slice step {best[2]:g} mm "
        f"(dose frames {geometry.grid.spacing[2]:g} mm){skipped}"
    )


def _by_reference(case: Case, series_list: list, structs_by_uid: dict, damaged: Optional[dict] = None) -> tuple:
    """(the CT series the RTPLAN -> RTSTRUCT -> CT references name, how), or ([], why not).

    ``damaged``: SOPInstanceUID -> the damaged RTSTRUCTs of the scan (said as such, not as missing).
    """
    if case.plan is None:
        return [], ""
    notes = []
    for struct_uid in case.plan.info.get("struct_uids", []):
        struct = structs_by_uid.get(struct_uid)
        if struct is None:
            broken = (damaged or {}).get(struct_uid)
            if broken is not None:
                notes.append(f"RTSTRUCT {struct_uid} is present but damaged ({broken.rel_path})")
            else:
                notes.append(f"RTSTRUCT {struct_uid} is not in the input")
            continue
        found = series_of_struct(struct, series_list)
        if found:
            return found, f"via RTPLAN -> RTSTRUCT {struct.rel_path} -> CT"
        notes.append(f"RTSTRUCT {struct.rel_path} names no CT series of the input")
    return [], "; ".join(f"the plan's {n}" for n in notes)


def no_ct_reason(dose: DicomObject, scan: ScanResult) -> str:
    """Why a dose has no CT, and what to add to the input so that it gets one."""
    tag = "(0020,0052) FrameOfReferenceUID"
    not_ct = [s for s in scan.ct_series if not_a_planning_ct(s) is not None]
    also = ""
    if not_ct:
        also = "; not paired: " + ", ".join(f"{describe_series(s)} ({not_a_planning_ct(s)})" for s in not_ct)
    if not dose.frame_of_reference_uid:
        return (
            f"RTDOSE {dose.rel_path}: no CT with frame of reference (none): {tag} is missing and no "
            "RTPLAN -> RTSTRUCT -> CT chain leads to a CT (the header is damaged, or add the plan and structure set "
            f"it was computed with){also}"
        )
    same_study = [s for s in scan.ct_series if dose.study_uid and s.study_uid == dose.study_uid]
    if same_study:
        frames = sorted({s.frame_of_reference_uid or "(none)" for s in same_study})
        return (
            f"RTDOSE {dose.rel_path}: no CT with frame of reference {dose.frame_of_reference_uid} ({tag}); the CTs "
            f"of its study have {', '.join(frames)} (the dose belongs to another CT or registration: add that CT){also}"
        )
    return (
        f"RTDOSE {dose.rel_path}: no CT with frame of reference {dose.frame_of_reference_uid} in study "
        f"{dose.study_uid or '(none)'} ({tag}; add the planning CT series to the input folder){also}"
    )


def series_of_struct(struct: DicomObject, series_list: list) -> list:
    """The series a structure set was drawn on: those holding the most of the images it names (all
    with that count), else those whose SeriesInstanceUID it names."""
    image_uids = set(struct.info.get("ct_image_uids", []))
    if image_uids:
        counts = [len(image_uids & s.sop_instance_uids) for s in series_list]
        best = max(counts, default=0)
        if best > 0:
            return [s for s, n in zip(series_list, counts) if n == best]
    series_uids = set(struct.info.get("ct_series_uids", []))
    return [s for s in series_list if s.series_uid in series_uids]


def structs_for(case: Case, structs: list, series_list: Optional[list] = None) -> list:
    """The structure sets drawn on the case's CT: the plan's one, else every one referencing the CT.

    The plan's own structure set whose CT images are none of the input's (``series_list``: every CT series; a PACS
    or an anonymizer that gave the images new UIDs) is taken when it lies in the CT's frame of reference: its
    contours are in those patient coordinates. A case warning says so (its image references were not checked). So
    is one drawn on another CT series of the input in the CT's frame (``--ct`` chose that CT), with a warning."""
    if case.plan is not None:
        named = [s for s in structs if s.sop_instance_uid in case.plan.info.get("struct_uids", [])]
        planned = [s for s in named if case.ct in series_of_struct(s, [case.ct])]
        if planned:
            return planned
        frame = case.ct.frame_of_reference_uid
        elsewhere = [
            s
            for s in named
            if frame
            and s.frame_of_reference_uid == frame
            and series_list is not None
            and not series_of_struct(s, series_list)
        ]
        if elsewhere:
            for struct in elsewhere:
                if not struct.info.get("ct_image_uids") and not struct.info.get("ct_series_uids"):
                    continue  # it names no image (both Type 3): paired by its frame, as without the plan (L4)
                case.warnings.append(
                    f"the plan's RTSTRUCT {struct.rel_path} names CT images that are not in the input (other UIDs?): "
                    f"its contours are used on CT {describe_series(case.ct)}, of its frame of reference {frame}"
                )
            return sorted(elsewhere, key=lambda s: s.rel_path)
        # drawn on another CT series of the input in the CT's frame (--ct chose a re-scan, a 4D phase): its contours
        # are in those coordinates; it was left out without a word, 0 ROIs, ok (seventieth hostile trial BR3). Not
        # where a structure set of the chosen CT's own is there: that one is drawn on it (seventy-second BT6)
        beside = [s for s in named if frame and s.frame_of_reference_uid == frame and series_list is not None]
        if beside and _referencing(case, structs):
            beside = []
        for struct in beside:
            drawn_on = ", ".join(describe_series(other) for other in series_of_struct(struct, series_list))
            case.warnings.append(
                f"the plan's RTSTRUCT {struct.rel_path} was drawn on CT {drawn_on}: its contours are used on CT "
                f"{describe_series(case.ct)}, of the same frame of reference {frame}"
            )
        if beside:
            return sorted(beside, key=lambda s: s.rel_path)
    return _referencing(case, structs)


def _referencing(case: Case, structs: list) -> list:
    """The structure sets that name the case's CT (its images, else its series; one naming neither, by its frame)."""
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
