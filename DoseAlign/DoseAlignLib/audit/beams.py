"""The PLAN dose against the sum of its plan's BEAM doses."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..geometry.grid import Volume
from ..geometry.resample import resample
from ..options import Interpolator


def beam_sum_check(plan_dose: Volume, beam_doses: list, left_out: Optional[list] = None) -> dict:
    """Compare the sum of BEAM doses with the PLAN dose, on the PLAN dose's grid.

    Parameters
    ----------
    plan_dose : Volume
        The PLAN dose (Gy) on its native grid.
    beam_doses : list of (Volume, str)
        Each BEAM dose and its file name; doses on another grid are resampled (linear, 0 outside).
    left_out : list of (str, str), optional
        BEAM doses not summed and why (copies, beams counted twice).

    Returns
    -------
    dict
        ``files``, ``left_out``, ``max_abs_diff_gy``, ``max_abs_diff_pct`` (of the PLAN Dmax),
        ``at_lps``, ``plan_dmax_gy``, ``beam_sum_dmax_gy``, ``resampled`` (files not on the grid).
    """
    total = np.zeros(plan_dose.grid.shape, dtype=np.float64)
    resampled = []
    for volume, name in beam_doses:
        if volume.grid.equal(plan_dose.grid):
            total += volume.array
        else:
            total += resample(volume, plan_dose.grid, Interpolator.LINEAR, fill=0.0)
            resampled.append(name)
    diff = np.abs(total - plan_dose.array)
    index = np.unravel_index(int(np.argmax(diff)), diff.shape)
    plan_max = float(plan_dose.array.max())
    worst = float(diff[index])
    lps = plan_dose.grid.index_to_lps(np.array([index[2], index[1], index[0]], dtype=np.float64))
    return {
        "files": [name for _v, name in beam_doses],
        "left_out": [{"file": f, "reason": r} for f, r in (left_out or [])],
        "resampled": resampled,
        "plan_dmax_gy": plan_max,
        "beam_sum_dmax_gy": float(total.max()),
        "max_abs_diff_gy": worst,
        "max_abs_diff_pct": 100.0 * worst / plan_max if plan_max > 0 else None,
        "at_lps": [round(float(v), 3) for v in lps],
    }
