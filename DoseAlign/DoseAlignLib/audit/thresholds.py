"""The audit's flag thresholds: defaults, why each is what it is, and overrides.

Default thresholds (:data:`DEFAULT_THRESHOLDS`; override any of them through
``AlignOptions.audit_thresholds`` or ``dosealign export --audit-thresholds FILE.json``):

``dmax_diff_pct`` 3
    |Dmax output - Dmax native| in % of Dmax native. 3 % is the dose tolerance of routine
    patient-specific QA (3 %/3 mm); linear interpolation of a 2-3 mm dose grid blunts a clinical
    peak by well under that, so more means a sharp peak lost or a peak outside the output grid.
``integral_diff_pct`` 2
    Integral dose on the output grid against the native integral inside the output grid's extent.
    Resampling a smooth dose conserves the integral to about 1 %; more means dose was misplaced.
``outside_integral_pct`` 1
    Share of the native integral dose whose voxels lie outside the output grid (lost to the
    training pair, e.g. a CT shorter than the irradiated volume).
``edge_dose_pct`` 10
    Largest dose on the native grid's outer faces, % of Dmax: a clinical dose grid covers the
    patient and falls to a few % at its edges; above 10 % it cuts through dose.
``dvh_delta_pct`` 2, ``dvh_distance_mm`` 1, ``dvh_normal_distance_mm`` 3, ``dvh_min_volume_cc`` 1
    The training pair's DVH against the reference DVH (contours + native dose, no voxel grid; see
    :mod:`.reference`): a point of an ROI's output-grid DVH (Dmean, D99, D95, D50, D5, D1, D0.03cc)
    misses when its error is larger than both ``dvh_delta_pct`` % of the reference dose (the
    prescription when the RTPLAN gives one, else Dmax native) and what moving its isodose explains:
    the reference's dose gradient within the contour planes times ``dvh_distance_mm`` plus its
    gradient along their normal times the contour spacing, at most ``dvh_normal_distance_mm`` (where
    a shape closes between planes the masks and the reference may place its end a spacing apart).
    ROIs under ``dvh_min_volume_cc`` are reported but not flagged. Set from measurements (README).
``roi_outside_dose_grid_pct`` 1, ``roi_outside_output_grid_pct`` 1
    Share of an ROI's volume beyond the native dose grid (0 Gy there on the output grid) or beyond
    the output grid (cut off the training pair). Such an ROI gets a flag of its own and is left out
    of the DVH and volume flags.
``roi_volume_diff_pct`` 5, ``roi_volume_min_cc`` 5
    Mask volume against the contours' volume on the output grid for ROIs of at least 5 cm^3
    (published mask validations accept 3-4 %).
``beam_sum_diff_pct`` 1
    max |sum of BEAM doses - PLAN dose| in % of the PLAN Dmax: the two differ only by the
    storage rounding of each file; 1 % means a beam missing, doubled or computed differently.
``dmax_prescription_min_pct`` 50
    Native Dmax in % of the RTPLAN's prescription: a treatment's dose reaches about 100-110 % of it;
    below half it is no treatment's dose (a per-fraction dose labelled PLAN, one beam, a dose exported
    before it was computed). A dose of 0 Gy everywhere is flagged with or without a prescription.
``dmax_prescription_max_pct`` 300
    Native Dmax in % of the RTPLAN's prescription, from above: an external-beam plan's hot spot stays
    near 105-130 %, a radiosurgery plan prescribed to the 40-50 % isodose reaches 200-250 %; above 300 %
    the dose is no treatment's dose of that plan (stored in cGy but read as Gy: x100; a wrong
    DoseGridScaling; a per-fraction prescription). Not checked for brachytherapy plans, whose dose
    near a source exceeds the prescription many times.
``ct_lowest_hu`` 0
    The CT's lowest value as read must lie below this: a patient CT holds air, lung or fat (below 0 HU),
    and so does a water phantom through its noise, while unsigned stored values read without their
    RescaleIntercept (-1024 lost: air at about +24, water at +1024) are never negative. A CT of one value
    (a synthetic water phantom) is not judged.
"""

from __future__ import annotations

import math
from typing import Optional

DEFAULT_THRESHOLDS = {
    "dmax_diff_pct": 3.0,
    "integral_diff_pct": 2.0,
    "outside_integral_pct": 1.0,
    "edge_dose_pct": 10.0,
    "dvh_delta_pct": 2.0,
    "dvh_distance_mm": 1.0,
    "dvh_normal_distance_mm": 3.0,
    "dvh_min_volume_cc": 1.0,
    "roi_outside_dose_grid_pct": 1.0,
    "roi_outside_output_grid_pct": 1.0,
    "roi_volume_diff_pct": 5.0,
    "roi_volume_min_cc": 5.0,
    "beam_sum_diff_pct": 1.0,
    "dmax_prescription_min_pct": 50.0,
    "dmax_prescription_max_pct": 300.0,
    "ct_lowest_hu": 0.0,
}


def thresholds_with(overrides: Optional[dict]) -> dict:
    """The default thresholds updated by ``overrides``; unknown names raise ``ValueError``."""
    merged = dict(DEFAULT_THRESHOLDS)
    if overrides is not None and not isinstance(overrides, dict):  # a JSON list or string (an AttributeError: N3)
        raise ValueError(f"audit thresholds are an object of names and numbers, got {type(overrides).__name__}")
    for name, value in (overrides or {}).items():
        if name not in DEFAULT_THRESHOLDS:
            raise ValueError(f"unknown audit threshold {name!r}; known: {', '.join(sorted(DEFAULT_THRESHOLDS))}")
        # a number, finite: true is no threshold, NaN would switch its flag off and inf too (fourteenth trial N3); a
        # whole number beyond a float's range too (an OverflowError's traceback: eighty-fourth trial CF3)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            shown = repr(value) if len(repr(value)) <= 40 else f"a number of {len(repr(value))} digits"
            raise ValueError(f"audit threshold {name!r} must be a finite number, got {shown}")
        merged[name] = float(value)
    return merged


def _finite(value) -> bool:
    """``math.isfinite`` of an int or float; False for an int beyond a float's range."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
