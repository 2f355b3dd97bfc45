"""The regions of a case a grid is centred on (``--centre``) or cut to (``--crop``), found before resampling.

ROI regions come from the contours themselves (no rasterization): the box of every contour
vertex along the CT's axes, reaching half a slab beyond the first and last contour planes as the
masks do (see :data:`~DoseAlignLib.structures.masks.RULE_NOTE`). Dose regions come from the
native dose (:mod:`~DoseAlignLib.geometry.reference`). What each region is goes to meta.json.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import LinkError
from ..geometry.grid import Volume
from ..geometry.reference import DOSE_BOX_FRACTION, Region, auto_region, box_of, dmax_region, dose_region
from .body import BODY_THRESHOLD_HU, body_from_ct
from .names import is_target, selection_names


def roi_points(rois: Sequence, thickness_mm: float) -> np.ndarray:
    """Every contour vertex of ``rois`` (LPS), also moved half a slab along the normal both ways."""
    points = []
    for roi in rois:
        normal = np.asarray(roi.normal, dtype=np.float64)
        half = roi.thickness(thickness_mm) / 2.0  # its own (3006,0044) ContourSlabThickness when thicker
        slabs = roi.plane_slabs()  # a CT of uneven or missing slices: each plane its native slice's slab
        for m, plane in enumerate(roi.planes):
            below, above = (
                (half, half) if slabs is None else (plane.position_mm - slabs[m, 0], slabs[m, 1] - plane.position_mm)
            )
            for polygon in plane.polygons:
                vertices = np.asarray(polygon, dtype=np.float64).reshape(-1, 3)
                points.append(vertices - normal * below)
                points.append(vertices + normal * above)
    return np.concatenate(points) if points else np.zeros((0, 3))


def _masking(rois: Sequence) -> list:
    return [r for r in rois if r.skipped is None and r.planes]


def ptv_region(rois: Sequence, axes: np.ndarray, thickness_mm: float) -> Optional[Region]:
    """The box of every PTV (RTROIInterpretedType PTV, or a name starting with PTV when untyped); None without."""
    targets = [r for r in _masking(rois) if is_target(selection_names(r)[0], r.interpreted_type)]
    if not targets:
        return None
    about = {"on": "ptv", "rois": [r.name for r in targets], "from": "contours"}
    return Region.around(roi_points(targets, thickness_mm), axes, about)


def named_roi_region(rois: Sequence, name: str, axes: np.ndarray, thickness_mm: float, where) -> Region:
    """The box of the ROI called ``name`` (any case, after ``--roi-map``); a :class:`LinkError` without it."""
    found = [r for r in _masking(rois) if selection_names(r)[0].lower() == name.lower()]  # before pseudonymization
    if not found:
        names = sorted({r.name for r in _masking(rois)}, key=str.lower)
        raise LinkError(
            f"--centre roi:{name}: no ROI {name!r} with contours in the case's structure sets "
            f"(they have: {', '.join(names) or 'none'})",
            path=where,
            hint="name one of them, or map yours with --roi-map",
        )
    return Region.around(roi_points(found, thickness_mm), axes, {"on": "roi", "roi": found[0].name})


def body_region(rois: Sequence, axes: np.ndarray, thickness_mm: float, ct: Callable[[], Volume]) -> Optional[Region]:
    """The body: the largest EXTERNAL ROI's box, else the CT's body outline (``ct()`` gives the CT)."""
    externals = [r for r in _masking(rois) if r.interpreted_type == "EXTERNAL"]
    if externals:
        chosen = max(externals, key=lambda r: len(r.planes))
        points = roi_points([chosen], thickness_mm)
        return Region.around(points, axes, {"on": "body", "source": f"ROI {chosen.name!r} (EXTERNAL)"})
    volume = ct()
    box = box_of(body_from_ct(volume.array))
    if box is None:
        return None
    source = f"CT > {BODY_THRESHOLD_HU:g} HU, largest connected component (no EXTERNAL ROI)"
    return Region.of_box(volume.grid, box, {"on": "body", "source": source})


def grid_region(
    kind: str,
    rois: Sequence,
    doses: Sequence[Volume],
    ct: Callable[[], Volume],
    axes: np.ndarray,
    thickness_mm: float,
    where,
    dose_fraction: float = DOSE_BOX_FRACTION,
    whole: Optional[Region] = None,
) -> Optional[Region]:
    """The region ``kind`` names: "auto", "ptv", "dose", "dmax", "body" or "roi:NAME".

    "auto" is the PTVs, else the dose above ``dose_fraction`` of its maximum, else ``whole``.
    "ptv" without a PTV, and "roi:NAME" without that ROI, raise a :class:`LinkError`.
    """
    if kind == "auto":
        return auto_region(ptv_region(rois, axes, thickness_mm), doses, whole) if whole is not None else None
    if kind == "ptv":
        region = ptv_region(rois, axes, thickness_mm)
        if region is None:
            raise LinkError(
                "--centre ptv: the case has no PTV (RTROIInterpretedType PTV, or a name starting with PTV)",
                path=where,
                hint="use --centre dose, body or roi:NAME, or leave --centre out (PTVs, else the dose)",
            )
        return region
    if kind == "dose":
        return dose_region(doses, dose_fraction, axes)
    if kind == "dmax":
        return dmax_region(doses)
    if kind == "body":
        return body_region(rois, axes, thickness_mm, ct)
    if kind.startswith("roi:"):
        return named_roi_region(rois, kind[4:], axes, thickness_mm, where)
    raise ValueError(f"unknown region {kind!r}")
