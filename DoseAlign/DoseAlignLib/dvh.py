"""Dose-volume histograms of one ROI on one grid: DVH points and cumulative curves.

Conventions (stated once, used for the native and the output grid alike):

* An ROI is the voxels of its binary mask; each counts with its voxel volume (uneven slices give
  uneven volumes).
* ``Dx`` (x in % of the ROI volume) is the minimum dose of the hottest x %: voxels are ranked by
  decreasing dose, each voxel's dose is placed at the middle of the volume it adds to the ranking,
  and ``Dx`` is interpolated linearly at x % of the ROI volume (clamped to Dmax and Dmin at the
  ends). ``D0.03cc`` is the same at 0.03 cm^3 (None when the ROI is smaller than that).
* ``V_Rx`` is the volume receiving at least the prescription dose, in cm^3 and in %.
* The cumulative DVH ``V(d)`` is the volume (cm^3) receiving at least ``d``, sampled at the
  dose-bin values of :func:`dose_bins` (left edges, starting at 0 Gy).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

#: Percent-volume DVH points reported for every ROI.
PERCENT_POINTS = (99.0, 95.0, 50.0, 5.0, 1.0)
#: Absolute-volume DVH point (cm^3): the clinical near-maximum.
NEAR_MAX_CC = 0.03
#: The DVH points compared between grids (Dmin and Dmax are single voxels: reported, not compared).
COMPARED_POINTS = ("dmean_gy", "d99_gy", "d95_gy", "d50_gy", "d5_gy", "d1_gy", "d0.03cc_gy")


def _key(x: float) -> str:
    return f"d{x:g}_gy"


def dvh_points(doses: np.ndarray, voxel_cc: object, prescription_gy: Optional[float] = None) -> dict:
    """DVH points of the doses of one ROI's voxels.

    Parameters
    ----------
    doses : (n,) array
        Dose (Gy) of each voxel of the ROI.
    voxel_cc : float or (n,) array
        Volume of each voxel (cm^3).
    prescription_gy : float, optional
        Adds ``v_rx_cc`` and ``v_rx_pct`` (volume receiving at least this dose).

    Returns
    -------
    dict
        ``volume_cc``, ``voxels``, ``dmean_gy``, ``dmax_gy``, ``dmin_gy``, ``d99_gy`` ... ``d1_gy``,
        ``d0.03cc_gy`` (and the V_Rx entries); dose entries are None for an empty ROI.
    """
    d = np.asarray(doses, dtype=np.float64).ravel()
    n = d.size
    out: dict = {"voxels": int(n)}
    uniform = np.ndim(voxel_cc) == 0
    w = None if uniform else np.asarray(voxel_cc, dtype=np.float64).ravel()
    total = float(voxel_cc) * n if uniform else float(w.sum())
    out["volume_cc"] = total
    keys = ["dmean_gy", "dmax_gy", "dmin_gy", *[_key(x) for x in PERCENT_POINTS], "d0.03cc_gy"]
    if n == 0 or total <= 0:
        out.update({k: None for k in keys})
        if prescription_gy is not None:
            out.update({"v_rx_cc": None, "v_rx_pct": None})
        return out
    out["dmean_gy"] = float(d.mean()) if uniform else float(d @ w / total)
    out["dmax_gy"] = float(d.max())
    out["dmin_gy"] = float(d.min())
    targets = [x / 100.0 * total for x in PERCENT_POINTS] + [NEAR_MAX_CC]
    if uniform:
        # the voxel ranked r (0 = hottest) sits at volume (r + 0.5) v: interpolate between the two
        # order statistics around each target, found with one partial sort
        position = np.clip(np.array(targets) / float(voxel_cc) - 0.5, 0, n - 1)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, n - 1)
        kth = sorted({int(n - 1 - r) for r in np.concatenate([low, high])})
        part = np.partition(d, kth)
        values = [
            float(part[n - 1 - lo] + (part[n - 1 - hi] - part[n - 1 - lo]) * (p - lo))
            for p, lo, hi in zip(position, low, high)
        ]
    else:
        order = np.argsort(-d, kind="stable")
        ranked = d[order]
        centres = np.cumsum(w[order]) - w[order] / 2
        values = [float(np.interp(t, centres, ranked)) for t in targets]
    if total < NEAR_MAX_CC:
        values[-1] = None  # the ROI holds less than 0.03 cm^3: no hottest 0.03 cm^3 to speak of
    for key, value in zip([_key(x) for x in PERCENT_POINTS] + ["d0.03cc_gy"], values):
        out[key] = value
    if prescription_gy is not None:
        hit = d >= prescription_gy
        v_rx = float(np.count_nonzero(hit) * float(voxel_cc)) if uniform else float(w[hit].sum())
        out["v_rx_cc"] = v_rx
        out["v_rx_pct"] = 100.0 * v_rx / total
    return out


def dose_bins(max_dose_gy: float, max_bins: int = 1000) -> np.ndarray:
    """Dose-bin values (Gy) from 0 past ``max_dose_gy``, with a 1-2-5 step giving at most ``max_bins``.

    Returns
    -------
    (B,) float32 array
    """
    top = max(float(max_dose_gy), 1e-6)
    raw = top / (max_bins - 2)
    exponent = np.floor(np.log10(raw))
    step = next(m * 10**exponent for m in (1, 2, 5, 10) if m * 10**exponent >= raw)
    count = int(np.floor(top / step + 1e-9)) + 2  # the last value lies above the maximum
    return (np.arange(count) * step).astype(np.float32)


def cumulative_dvh(doses: np.ndarray, voxel_cc: object, bins: np.ndarray) -> np.ndarray:
    """Cumulative DVH: volume (cm^3) receiving at least each bin dose.

    Parameters
    ----------
    doses : (n,) array
        Dose (Gy) of each voxel of the ROI.
    voxel_cc : float or (n,) array
        Volume of each voxel (cm^3).
    bins : (B,) array
        Dose values (Gy), increasing.

    Returns
    -------
    (B,) float32 array
    """
    d = np.asarray(doses, dtype=np.float64).ravel()
    bins = np.asarray(bins, dtype=np.float64)
    if d.size == 0:
        return np.zeros(bins.shape, dtype=np.float32)
    if np.ndim(voxel_cc) == 0:
        sorted_d = np.sort(d)
        count = d.size - np.searchsorted(sorted_d, bins, side="left")
        return (count * float(voxel_cc)).astype(np.float32)
    w = np.asarray(voxel_cc, dtype=np.float64).ravel()
    order = np.argsort(d, kind="stable")
    tail = np.concatenate([np.cumsum(w[order][::-1])[::-1], [0.0]])
    return tail[np.searchsorted(d[order], bins, side="left")].astype(np.float32)


def compare_points(native: dict, output: dict) -> dict:
    """Differences ``output - native`` of the compared DVH points (Gy; None where either is None)."""
    diff = {}
    for key in (*COMPARED_POINTS, "dmax_gy", "dmin_gy", "volume_cc", "v_rx_pct"):
        a, b = native.get(key), output.get(key)
        if key in native or key in output:
            diff[key] = None if a is None or b is None else float(b - a)
    return diff
