"""The training pair's DVHs against the reference DVH of each ROI.

For every ROI with contours, the reference DVH (:mod:`..structures.reference_dvh`: contours and the
native dose, interpolated between contour planes, no voxel grid) is computed on the audit's dose
axis. The voxel DVH on the output grid (what the training pair holds) and the one on the native dose
grid are compared with it point by point (Dmean, D99, D95, D50, D5, D1, D0.03cc). A point of the
output grid *misses* when its error exceeds both ``dvh_delta_pct`` % of the reference dose and what
moving its isodose explains: the reference's dose gradient within the contour planes times
``dvh_distance_mm`` plus its gradient along their normal times the contour spacing (at most
``dvh_normal_distance_mm``). A voxel grid cannot place an isodose closer than about half a voxel,
and between contour planes the masks (slab rule) and the reference (interpolated) may place the end
of a structure up to one spacing apart; on a steep gradient that alone moves a DVH point by more
than any fixed share of the dose.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..geometry.grid import Grid, Volume
from ..structures import dvh
from ..structures.masks import StructureMasks
from ..structures.reference_dvh import BETWEEN_PLANES, METHOD, RULE_NOTES, reference_dvh

#: How the reference DVH models the solid between contour planes.
BETWEEN = BETWEEN_PLANES[0]
#: Points of the reference DVH compared with the voxel DVHs.
COMPARED = dvh.COMPARED_POINTS
#: Most dose values of a curve written to meta.json (pair.npz and dvh.csv hold every bin).
META_CURVE_POINTS = 101


def reference_dvhs_for(
    masks: StructureMasks, native_dose: Volume, bins: np.ndarray, output_grid: Grid, problems: Optional[dict] = None
) -> dict:
    """``{name: ReferenceDvh}`` of every ROI of ``masks`` that has contour planes, on the dose axis ``bins``;
    the share of each beyond ``output_grid`` is in its points (``outside_grid_pct``). An ROI whose reference DVH
    cannot be made is left out, the reason in ``problems`` (the case goes on without it)."""
    out = {}
    for name in masks.names:
        if not masks.has(name):
            continue
        mask = masks.mask(name)
        if mask.joined:  # a union of ROIs (StructureMasks.join_channels): no one ROI's contours are its reference
            if problems is not None:
                problems[name] = (
                    f"no reference DVH: the channel is the union of {len(mask.joined)} ROIs, whose contours may overlap"
                )
            continue
        roi = mask.roi
        if roi is None or roi.skipped is not None or not roi.planes:
            continue
        try:
            out[name] = reference_dvh(
                roi,
                native_dose,
                roi.thickness(masks.thickness_mm),
                dose_axis=bins,
                between_planes=BETWEEN,
                within=output_grid,
            )
        except (ValueError, FloatingPointError, ArithmeticError, IndexError) as error:
            if problems is not None:
                problems[name] = f"no reference DVH: {type(error).__name__}: {error}"
    return out


def errors(points: Optional[dict], reference: dict) -> Optional[dict]:
    """``points - reference`` (Gy) of the compared DVH points, and the volume difference in %."""
    if not points:
        return None
    out = {}
    for key in COMPARED:
        a, b = points.get(key), reference.get(key)
        out[key] = None if a is None or b is None else float(a) - float(b)
    volume, truth = points.get("volume_cc"), reference.get("volume_cc")
    out["volume_pct"] = 100.0 * (volume - truth) / truth if volume is not None and truth else None
    return out


def tolerance_gy(key: str, reference: dict, thresholds: dict, reference_dose_gy: float) -> float:
    """The largest error of DVH point ``key`` that is not a miss (see the module text); ``reference``
    is the ROI's reference DVH as :meth:`~DoseAlignLib.structures.reference_dvh.ReferenceDvh.to_meta` gives it."""
    gradients = reference.get("gradient_gy_per_mm") or {}
    spacing = float((reference.get("sampling") or {}).get("slab_thickness_mm") or 0.0)
    in_plane = float((gradients.get("in_plane") or {}).get(key) or 0.0)
    normal = float((gradients.get("normal") or {}).get(key) or 0.0)
    moved = in_plane * thresholds["dvh_distance_mm"] + normal * min(spacing, thresholds["dvh_normal_distance_mm"])
    return max(thresholds["dvh_delta_pct"] / 100.0 * reference_dose_gy, moved)


def judged(entry: dict, thresholds: dict) -> bool:
    """Whether an ROI's output DVH is judged against its reference: big enough and wholly inside the
    native dose grid and the output grid (those cut have flags of their own)."""
    reference = entry.get("reference")
    if not reference or not entry.get("error_output"):
        return False
    points = reference["points"]
    return (
        (points.get("volume_cc") or 0.0) >= thresholds["dvh_min_volume_cc"]
        and (points.get("outside_dose_grid_pct") or 0.0) <= thresholds["roi_outside_dose_grid_pct"]
        and (points.get("outside_grid_pct") or 0.0) <= thresholds["roi_outside_output_grid_pct"]
    )


def misses(entry: dict, thresholds: dict, reference_dose_gy: float) -> list:
    """``[(point, error Gy, tolerance Gy)]`` of the output-grid DVH points of one judged ROI that miss."""
    if not judged(entry, thresholds):
        return []
    out = []
    for key in COMPARED:
        error = entry["error_output"].get(key)
        if error is None:
            continue
        limit = tolerance_gy(key, entry["reference"], thresholds, reference_dose_gy)
        if abs(error) > limit:
            out.append((key, error, limit))
    return out


def worst_error(entries: list, thresholds: Optional[dict] = None) -> Optional[dict]:
    """The largest |output - reference| DVH point (Gy) over the ROIs (only the judged ones with ``thresholds``)."""
    worst = None
    for entry in entries:
        if thresholds is not None and not judged(entry, thresholds):
            continue
        for key, value in (entry.get("error_output") or {}).items():
            if key == "volume_pct" or value is None:
                continue
            if worst is None or abs(value) > abs(worst["delta_gy"]):
                worst = {"roi": entry["name"], "point": key, "delta_gy": value}
    return worst


def curves(references: dict, names: list, bins: np.ndarray) -> np.ndarray:
    """``(N, B)`` float32 cm^3 receiving at least each dose, ROIs in ``names`` order (0 without a reference)."""
    out = np.zeros((len(names), bins.size), dtype=np.float32)
    for n, name in enumerate(names):
        if name in references:
            out[n] = references[name].volume_cc
    return out


def meta_curves(references: dict, bins: np.ndarray) -> dict:
    """The reference DVH curves for meta.json: at most :data:`META_CURVE_POINTS` doses of the axis."""
    step = max(1, int(np.ceil(bins.size / (META_CURVE_POINTS - 1))))
    picked = np.unique(np.append(np.arange(0, bins.size, step), bins.size - 1))
    rois = {}
    for name, ref in references.items():
        total = ref.points.get("volume_cc") or 0.0
        volume = ref.volume_cc[picked]
        rois[name] = {
            "volume_cc": [round(float(v), 5) for v in volume],
            "volume_pct": [round(100.0 * float(v) / total, 3) if total > 0 else 0.0 for v in volume],
        }
    return {
        "method": METHOD,
        "between_planes": BETWEEN,
        "rule": RULE_NOTES[BETWEEN],
        "dose_gy": [round(float(d), 5) for d in bins[picked]],
        "rois": rois,
        "full_curves": "pair.npz: dvh_reference (N, B) cm^3 on dvh_dose_gy; dvh.csv: every dose, cm^3 and %",
    }
