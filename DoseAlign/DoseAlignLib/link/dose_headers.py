"""What the export refuses in a case's RTDOSE headers, found from the headers alone.

``dosealign scan`` uses :func:`header_refusal` so that a case it lists as exportable is not then failed by the export
for a header value (a DoseType ERROR, DoseUnits CGY, a dose of another frame of reference: sixty-seventh hostile trial
BO4). The export reads its doses through the same rules (:func:`~DoseAlignLib.dicom.rtdose.read_rtdose`,
:func:`frame_mismatch`, :func:`sum_mismatch`), so both commands say the same.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

from ..dicom import headers
from ..dicom.rtdose import DoseInfo, dose_geometry, dose_info
from ..errors import DoseAlignError, LinkError
from .case import Case

_TAG_FRAME = "(0020,0052) FrameOfReferenceUID"


def frame_mismatch(ct_frame: Optional[str], doses: Sequence[Tuple[object, Optional[str]]]) -> Optional[LinkError]:
    """The first dose of ``doses`` (``(path, frame of reference)`` pairs) not in the CT's frame, as an error.

    A CT that names no frame (an anonymizer may drop it) is taken to be in its first dose's, so every dose must then
    be in that one (BEAM doses of two frames were summed, ok: sixty-ninth hostile trial BQ3).
    """
    first = doses[0][1] if doses else None
    for path, frame in doses:
        if ct_frame and frame != ct_frame:
            return LinkError(
                f"frame of reference {frame} differs from the CT's {ct_frame}",
                path=path,
                tag=_TAG_FRAME,
                hint="the dose was computed on another CT or registration; DoseAlign does not register",
            )
        if not ct_frame and frame != first:
            return LinkError(
                f"frame of reference {frame} differs from the first dose's {first} (the CT names none)",
                path=path,
                tag=_TAG_FRAME,
                hint="the doses were computed on other CTs or registrations; DoseAlign does not register",
            )
    return None


def sum_mismatch(doses: Sequence[Tuple[object, DoseInfo]]) -> Optional[DoseAlignError]:
    """Doses to be summed (``(path, DoseInfo)`` pairs) whose units or DoseTypes differ, as an error naming the first
    dose that differs from the first one."""
    for key, what, tag, why in (
        ("units", "units", "(3004,0002) DoseUnits", ""),
        ("dose_type", "DoseTypes", "(3004,0004) DoseType", " (physical and effective dose do not add)"),
    ):
        values = sorted({getattr(info, key) for _path, info in doses})
        if len(values) > 1:
            first = getattr(doses[0][1], key)
            path = next(path for path, info in doses if getattr(info, key) != first)
            return DoseAlignError(f"doses to be summed have different {what}: {values}{why}", path=path, tag=tag)
    return None


def header_refusal(case: Case, *, allow_relative: bool = False) -> Optional[str]:
    """Why the export would refuse the doses of a paired ``case`` from their headers (None when it would not).

    Each dose's header is read again (without pixel data) and checked as the export checks it: its grid, units,
    DoseType and scaling, its frame of reference against the CT's, and the units and types of doses summed. What
    only the pixel data show (their size, the maximum dose) is left to the export.
    """
    infos, frames = [], []
    try:
        for obj in case.doses:
            ds = headers.read_header(obj.path)
            geometry = dose_geometry(ds, obj.rel_path)
            infos.append(dose_info(ds, obj.rel_path, allow_relative=allow_relative))
            frames.append((obj.rel_path, geometry.grid.frame_of_reference_uid))
            error = frame_mismatch(case.ct.frame_of_reference_uid if case.ct is not None else None, frames)
            if error is not None:
                return str(error)
        error = sum_mismatch([(obj.rel_path, info) for obj, info in zip(case.doses, infos)])
    except DoseAlignError as error:
        return str(error) if error.path else f"RTDOSE {case.doses[0].rel_path}: {error}"
    except Exception as error:  # an engine bug must not stop the scan: the case says what happened
        return f"RTDOSE {case.doses[0].rel_path}: internal error ({type(error).__name__}: {error}); please report it"
    return None if error is None else str(error)
