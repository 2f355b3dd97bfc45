"""The ROI masks of one case: its structure sets read, names harmonised, masks on the output grid
and (for the native DVHs) on the native dose grid."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..dicom.rtstruct import plane_spacing, read_structure_set
from ..errors import DoseAlignError
from ..geometry.resample import resample
from ..options import Interpolator
from .body import body_from_ct
from .masks import StructureMasks
from .names import harmonise_names
from .rasterize import rasterize_structures


def case_masks(result, case, options, ct_geometry) -> tuple:
    """Masks on the output grid and (with a single native grid) on the native dose grid."""
    native_grid = ct_geometry.grid
    normal = np.cross(native_grid.direction[:, 0], native_grid.direction[:, 1])
    rois, problems = [], []
    for obj in case.structs:
        try:
            rois.extend(read_structure_set(obj.path, rel_path=obj.rel_path, plane_normal=normal))
        except DoseAlignError as error:
            problems.append({"source": obj.rel_path, "number": None, "name": None, "reason": str(error)})
    notes = harmonise_names(rois, getattr(options, "roi_map", None))
    thickness = float(ct_geometry.typical_step_mm or 0.0) or plane_spacing(rois) or float(result.ct.grid.spacing[2])
    supersampling = int(getattr(options, "fractional_masks", 0) or 0)
    out_masks = rasterize_structures(rois, result.ct.grid, thickness, supersampling=supersampling, ct=result.ct)
    out_masks.skipped.extend(problems)
    out_masks.notes.extend(notes)
    if getattr(options, "roi_map", None):
        out_masks.notes.append("ROI names harmonised with the ROI map in options.roi_map")
    native_masks: Optional[StructureMasks] = None
    if result.native_dose is not None:
        native_grid = result.native_dose.grid
        if native_grid.equal(result.ct.grid):
            native_masks = out_masks
        else:
            native_masks = rasterize_structures(rois, native_grid, thickness)
            if native_masks.body is None:
                ct_native = resample(result.ct, native_grid, Interpolator.NEAREST, fill=options.ct_fill_hu)
                native_masks.body = body_from_ct(ct_native)
                native_masks.body_source = out_masks.body_source
    return out_masks, native_masks
