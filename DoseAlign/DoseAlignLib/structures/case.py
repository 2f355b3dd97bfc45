"""The ROI masks of one case: its structure sets read, names harmonised, masks on the output grid
and (for the native DVHs) on the native dose grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..dicom.headers import one_line
from ..dicom.rtstruct import NativeSlabs, is_structure_set_defect, plane_spacing, read_structure_set
from ..errors import DoseAlignError, UnreadableError
from ..geometry.resample import resample
from ..limits import LimitError, limit
from ..options import Interpolator
from .body import body_from_ct
from .masks import StructureMasks, voxel_volumes_cc
from .names import harmonise_names, selection_names
from .rasterize import rasterize_structures

#: An ROI whose contours enclose at least this many voxels' volume and whose mask is empty is a case warning
#: (a smaller one may fall between voxel centres: a note of the ROI).
EMPTY_MASK_VOXELS = 10


@dataclass
class CaseContours:
    """The contours of a case's structure sets, names harmonised (``--roi-map``), read once per case.

    ``problems``: structure sets that could not be read (``{"source", "number", "name", "reason"}``);
    ``notes``: renamings.
    """

    rois: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)


#: A case's ROI names together may hold this many times DOSEALIGN_IDENTITY_CHARS.
CASE_NAME_CHARS = 64


def _check_name_lengths(names: list, mapped: bool = False) -> None:
    """Refuse a case whose ROI names are longer than ``DOSEALIGN_IDENTITY_CHARS`` each, or :data:`CASE_NAME_CHARS`
    times that together, before they are written: dvh.csv repeats a name on each of its rows, and three names of
    1.5 MB made a 2.7 GB dvh.csv and an 8 GB peak (thirty-third hostile trial AG6; DICOM's LO holds 64). ``mapped``:
    the names as ``--roi-map`` gives them (the reason names the map, not the input: thirty-fifth trial's note)."""
    most = limit("DOSEALIGN_IDENTITY_CHARS")
    lengths = [len(name) for name in names]
    what, where = ("a channel name --roi-map gives", "the --roi-map file") if mapped else ("an ROI name", "the input")
    if lengths and max(lengths) > most:
        raise LimitError(
            f"{what} of {max(lengths)} characters is longer than the limit of {most:g} (DOSEALIGN_IDENTITY_CHARS); "
            "DICOM's LO holds 64",
            hint=f"shorten the name in {where}, or raise the limit",
        )
    if sum(lengths) > CASE_NAME_CHARS * most:
        raise LimitError(
            f"the case's ROI names{' (as --roi-map gives them)' if mapped else ''} hold {sum(lengths)} characters "
            f"together, more than {CASE_NAME_CHARS} x DOSEALIGN_IDENTITY_CHARS",
            hint=f"shorten the names in {where}, or raise the limit",
        )


def read_case_contours(
    case, options, ct_geometry, rewrite_names: Optional[Callable[[str], str]] = None
) -> CaseContours:
    """Read every structure set of ``case`` and harmonise the ROI names with ``options.roi_map`` (and
    ``rewrite_names``, the pseudonymization of a name, before they are made unique)."""
    native_grid = ct_geometry.grid
    normal = np.cross(native_grid.direction[:, 0], native_grid.direction[:, 1])
    contours = CaseContours()
    for obj in case.structs:
        try:
            contours.rois.extend(
                read_structure_set(
                    obj.path,
                    rel_path=obj.rel_path,
                    plane_normal=normal,
                    # (a CT that names no frame is in its dose's: sixty-ninth hostile trial BQ1)
                    frame_of_reference_uid=case.ct.frame_of_reference_uid
                    or (case.doses[0].frame_of_reference_uid if case.doses else None)
                    or None,
                )
            )
        except (LimitError, UnreadableError):  # the case's time limit, or a file gone or unreadable since the scan
            raise  # (a named pipe put in its place, its permissions taken away): the case stops, named
        except DoseAlignError as error:
            reason = str(error)
            if error.path and reason.startswith(f"{error.path}: "):  # "source" names the file (input-relative)
                reason = reason[len(error.path) + 2 :]
            contours.problems.append({"source": obj.rel_path, "number": None, "name": None, "reason": reason})
        except (OSError, ValueError, EOFError) as error:  # pydicom 2.4 parsing a sequence damaged since the scan
            # ("No tag to read at file position ...": an internal error, "please report it")
            reason = f"its data cannot be parsed ({type(error).__name__}: {one_line(error)})"
            contours.problems.append({"source": obj.rel_path, "number": None, "name": None, "reason": reason})
    _check_name_lengths([roi.original_name for roi in contours.rois])
    contours.notes = harmonise_names(contours.rois, getattr(options, "roi_map", None), rewrite_names)
    # a --roi-map channel name too (thirty-fourth trial AH5), as given, not as --pseudonymize rewrote it ([removed]
    # is longer than a short ID: a name within the bound failed, thirty-fifth AI5)
    _check_name_lengths([roi.mapped_name for roi in contours.rois], mapped=bool(getattr(options, "roi_map", None)))
    native = native_slabs(ct_geometry)
    if native is not None:  # uneven or missing slices: a contour on a native slice stands for that slice's slab
        for roi in contours.rois:
            roi.native_slabs = native.along(roi.normal) if roi.normal is not None else None
    return contours


def native_slabs(ct_geometry) -> Optional[NativeSlabs]:
    """The slabs of the CT's own slices when they are uneven or missing (the CT is regularized and its contours
    lie on its own slices only), else None (an even CT: the slab rule's common thickness)."""
    if ct_geometry.uniform or not ct_geometry.typical_step_mm:
        return None
    grid = ct_geometry.grid
    normal = np.cross(grid.direction[:, 0], grid.direction[:, 1])
    normal = normal / np.linalg.norm(normal)
    k = np.arange(grid.shape[0], dtype=np.float64)
    centres = grid.index_to_lps(np.stack([np.zeros_like(k), np.zeros_like(k), k], axis=1))
    return NativeSlabs.of(centres @ normal, normal, float(ct_geometry.typical_step_mm))


def fixed_channels(rois: list, channels) -> tuple:
    """The ROIs to rasterize for fixed channels and the names left out.

    An ROI whose name matches a channel (in any case) takes the channel's spelling; so does one whose
    name was made unique (``Lungs_2``: a second ROI that ``--roi-map`` maps to ``Lungs``, or a second ROI
    of one name) when its name before that matches: the channel is then the union of those ROIs
    (:meth:`~.masks.StructureMasks.join_channels`). An EXTERNAL ROI is kept for the body mask even when it
    is no channel; ROIs that give no mask stay (they are listed with their reason). Returns
    ``(rois, names of ROIs not in the channels)``.
    """
    wanted = {name.lower(): name for name in channels}
    kept, left_out = [], []
    for roi in rois:  # by the names before pseudonymization (selection_names), as the user knows them
        channel = next((wanted[n.lower()] for n in selection_names(roi) if n.lower() in wanted), None)
        if roi.skipped is None and channel is not None:
            if roi.name != channel:
                roi.notes.append(f"name {roi.name!r} written as {channel!r}, as --rois spells it")
                roi.name = channel
            kept.append(roi)
        elif roi.skipped is not None:
            kept.append(roi)
        else:
            if roi.interpreted_type == "EXTERNAL":
                kept.append(roi)  # the body mask; not a channel
            left_out.append(roi.name)
    return kept, left_out


def case_masks(result, case, options, ct_geometry, contours: Optional[CaseContours] = None) -> tuple:
    """Masks on the output grid and (with a single native grid) on the native dose grid.

    ``contours`` are the case's contours when already read (e.g. to centre the grid on a ROI).
    """
    contours = contours if contours is not None else read_case_contours(case, options, ct_geometry)
    rois = list(contours.rois)
    channels = getattr(options, "rois", None)
    left_out: list = []
    if channels:
        rois, left_out = fixed_channels(rois, channels)
    thickness = float(ct_geometry.typical_step_mm or 0.0) or plane_spacing(rois) or float(result.ct.grid.spacing[2])
    supersampling = int(getattr(options, "fractional_masks", 0) or 0)
    out_masks = rasterize_structures(rois, result.ct.grid, thickness, supersampling=supersampling, ct=result.ct)
    voxel_cc = float(np.max(voxel_volumes_cc(result.ct.grid)))
    for mask in out_masks.masks:  # contours, yet an empty mask: said, not left to pass as an ROI that is present
        if mask.voxel_count == 0 and mask.roi.planes:
            contour_cc = mask.roi.contour_volume_cc(thickness)
            empty = (
                f"has contours in {len(mask.roi.planes)} plane(s) ({contour_cc:.3g} cm3) but its mask is empty: no "
                "voxel centre of the output grid lies inside them"
            )
            if contour_cc >= EMPTY_MASK_VOXELS * voxel_cc:  # too big to miss every voxel centre: said where users look
                result.meta.setdefault("warnings", []).append(f"{mask.roi.source}: ROI {mask.roi.name!r} {empty}")
            else:  # an ROI of a few voxels' volume may fall between voxel centres
                mask.roi.notes.append(f"{empty} (they enclose under {EMPTY_MASK_VOXELS} voxels' volume)")
    for roi in rois:  # contoured on every other slice (or sparser): the slab rule leaves the slices between empty
        note = roi.sparse_planes_note(thickness) if roi.skipped is None else None
        if note:
            result.meta.setdefault("warnings", []).append(f"{roi.source}: ROI {roi.name!r}: {note}")
    if not ct_geometry.uniform:  # a CT of uneven or missing slices: a native slice without a contour stays empty
        gaps = []
        for mask in out_masks.masks:
            filled = mask.binary.reshape(mask.binary.shape[0], -1).any(axis=1) if mask.voxel_count else []
            inside = np.flatnonzero(filled)
            empty = int(np.count_nonzero(~filled[inside[0] : inside[-1] + 1])) if inside.size else 0
            if empty:
                gaps.append(f"{mask.roi.name!r} ({empty})")
        if gaps:
            result.meta.setdefault("warnings", []).append(
                "the CT's slices are uneven or some are missing (each contour stands for the slab of its own CT "
                f"slice): these ROIs' masks are empty on slices inside their extent (count): {', '.join(gaps)}: "
                "there the CT slice whose slab holds them has no contour of the ROI"
            )
    for union in out_masks.join_channels():  # a fixed channel several ROIs map to: their union, said
        parts = ", ".join(f"{j.roi.original_name!r} ({j.roi.source} ROI {j.roi.number})" for j in union.joined)
        result.meta.setdefault("warnings", []).append(
            f"mask channel {union.name!r} (--rois) is the union of {len(union.joined)} ROIs that map to it: {parts}"
        )
    out_masks.skipped.extend(contours.problems)
    out_masks.notes.extend(contours.notes)
    for problem in contours.problems:  # a whole structure set unread: the case's masks lack all of its ROIs
        result.meta.setdefault("warnings", []).append(
            f"RTSTRUCT {problem.get('source')} cannot be read: {problem.get('reason')}: none of its ROIs is in "
            "this case's masks"
        )
    for skipped in out_masks.skipped:  # a wrong structure set is said where users look, not only in the ROI list
        if is_structure_set_defect(skipped.get("reason", "")):
            result.meta.setdefault("warnings", []).append(
                f"{skipped.get('source', 'RTSTRUCT')}: ROI {skipped.get('name')!r} left out: {skipped['reason']}"
            )
    for roi in rois:  # contours left out of an ROI that is rasterized without them
        for defect in roi.defects:
            result.meta.setdefault("warnings", []).append(f"{roi.source}: ROI {roi.name!r}: {defect}")
    if any(roi.plane_slabs() is not None for roi in rois if roi.skipped is None):
        out_masks.notes.append(
            "the CT's slices are uneven or some are missing: each contour plane on one of its own slices stands for "
            "that slice's slab (half way to its neighbouring CT slices), not [p - t/2, p + t/2); the slices the "
            "regularization inserts take the contour of the CT slice whose slab holds them"
        )
    if getattr(options, "roi_map", None):
        out_masks.notes.append("ROI names harmonised with the ROI map in options.roi_map")
    if channels:
        out_masks.select(channels, left_out)
    native_masks: Optional[StructureMasks] = None
    if result.native_dose is not None:
        native_grid = result.native_dose.grid
        if native_grid.equal(result.ct.grid):
            native_masks = out_masks
        else:
            native_masks = rasterize_structures(rois, native_grid, thickness)
            native_masks.join_channels()
            if channels:
                native_masks.select(channels, left_out)
            if native_masks.body is None:
                ct_native = resample(result.ct, native_grid, Interpolator.NEAREST, fill=options.ct_fill_hu)
                native_masks.body = body_from_ct(ct_native)
                native_masks.body_source = out_masks.body_source
    return out_masks, native_masks
