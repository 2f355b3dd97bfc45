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

How (uniform voxel volumes, the usual case): :func:`uniform_dvh` streams an ROI's doses in
cache-sized chunks and never sorts them. One pass counts every value into its dose bin, exactly
(the same ``>=`` comparisons with the bin values as a sort and a search would make), which is the
cumulative DVH; the DVH points are exact order statistics: the bin counts say which bin holds
each wanted rank, and only the values of those few bins are gathered (a second pass) and
partially sorted. :func:`dvh_points` and :func:`cumulative_dvh` (any voxel volumes) give the
same numbers from an array of doses; ``Dmean`` may differ from them in the last bits only (its
sum is accumulated chunk by chunk).
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable, Optional

import numpy as np

#: Percent-volume DVH points reported for every ROI.
PERCENT_POINTS = (99.0, 95.0, 50.0, 5.0, 1.0)
#: Absolute-volume DVH point (cm^3): the clinical near-maximum.
NEAR_MAX_CC = 0.03
#: The DVH points compared between grids (Dmin and Dmax are single voxels: reported, not compared).
COMPARED_POINTS = ("dmean_gy", "d99_gy", "d95_gy", "d50_gy", "d5_gy", "d1_gy", "d0.03cc_gy")
#: Doses handled at once by :func:`uniform_dvh` (a chunk and its temporaries stay in the CPU cache).
CHUNK_VALUES = 1 << 18
#: ROIs with at most this many voxels keep their doses from the first pass instead of a second one.
KEEP_VALUES = 1 << 20


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


# ---- the streaming DVH (uniform voxel volumes) -----------------------------------------------


class _Scratch(threading.local):
    def __init__(self):
        self.arrays: dict = {}


_SCRATCH = _Scratch()


def scratch(name: str, dtype, size: int) -> np.ndarray:
    """A 1-D work array of ``size`` elements (contents undefined), kept per thread and reused.

    Chunk loops write their temporaries into these (``out=``) instead of allocating: memory freed
    and taken again chunk after chunk would be handed back to the system and faulted in anew,
    which costs more than the arithmetic. They hold a few MB (the largest chunk seen).
    """
    key = (name, np.dtype(dtype))
    array = _SCRATCH.arrays.get(key)
    if array is None or array.size < size:
        array = np.empty(max(int(size), CHUNK_VALUES), dtype=dtype)
        _SCRATCH.arrays[key] = array
    return array[:size]


class BinClasses:
    """The dose bin of every value, exactly: class 0 below ``bins[0]``, class ``b + 1`` for
    ``bins[b] <= value < bins[b + 1]`` (the last class open-ended), as ``np.searchsorted(bins,
    value, side="right")`` would say.

    Evenly spaced bins (those of :func:`dose_bins`) take a multiplication, a truncation and two
    comparisons with the neighbouring bin values (which correct the rounding of the
    multiplication, so the classes are exact); other bins a binary search. NaN counts as above
    every bin, as in a sort.
    """

    def __init__(self, bins: np.ndarray, dtype: np.dtype):
        bins = np.asarray(bins)
        exact32 = bins.dtype == np.float32 and np.dtype(dtype) == np.float32
        self.dtype = np.dtype(np.float32 if exact32 else np.float64)
        self.bins = bins.astype(self.dtype)  # exact: float32 -> float64 or unchanged
        self.size = int(self.bins.size)
        self.scale = None
        self.near = None  # the fast exact path of counts(), when the bins allow it
        if self.size >= 2:
            step = (float(self.bins[-1]) - float(self.bins[0])) / (self.size - 1)
            even = float(self.bins[0]) + np.arange(self.size) * step
            deviation = float(np.max(np.abs(self.bins - even))) / step if step > 0 else np.inf
            # within 1 % of a step of an even spacing: the estimate is at most one class off
            if deviation <= 0.01:
                self.first = self.dtype.type(self.bins[0])
                self.scale = self.dtype.type(1.0 / step)
                # value / step within `near` of an integer: the truncation may be off by one there,
                # and only there (bins within `deviation` steps of m x step, and the product value x
                # (1 / step) rounded twice in the value's precision, at most size x 2^-(mantissa - 1)).
                rounding = self.size * 2.0 ** -(np.finfo(self.dtype).nmant - 1)
                near = 2.0 * (deviation + rounding)
                if self.first == 0 and near < 0.25:
                    self.near = self.dtype.type(0.5 - near)
        inf = np.array([np.inf], dtype=self.dtype)
        self.lower = np.concatenate([-inf, self.bins, inf])  # lowest value of each class (+ a guard)
        self.upper = np.concatenate([self.bins, inf, inf])  # first value above each class (+ a guard)

    def at_least(self, threshold: float):
        """A scalar ``t`` of the comparison dtype with ``value >= t`` exactly when ``value >= threshold``."""
        t = self.dtype.type(threshold)
        if float(t) < float(threshold):
            t = np.nextafter(t, self.dtype.type(np.inf))
        return t

    def prepare(self, values: np.ndarray) -> np.ndarray:
        """``values`` as a 1-D array of the dtype the comparisons are made in."""
        return np.asarray(values, dtype=self.dtype).ravel()

    def estimate(self, values: np.ndarray, inside: bool = False) -> np.ndarray:
        """Classes at most one off (evenly spaced bins), in a scratch array; ``inside``: all
        values lie in ``[bins[0], bins[-1])`` (no clipping needed)."""
        q = scratch("q", self.dtype, values.size)
        if self.first != 0:
            np.subtract(values, self.first, out=q)
            q *= self.scale
        else:
            np.multiply(values, self.scale, out=q)
        if not inside:
            np.fmin(q, float(self.size), out=q)  # NaN too
            np.fmax(q, -1.0, out=q)
        c = scratch("class", np.intp, values.size)
        np.copyto(c, q, casting="unsafe")  # truncation: (-1, 0) -> 0 like [0, 1)
        c += 1
        return c

    def __call__(self, values: np.ndarray, inside: bool = False) -> np.ndarray:
        if self.scale is None or values.size == 0:
            return np.searchsorted(self.bins, values, side="right")
        c = self.estimate(values, inside).copy()
        c -= values < self.lower.take(c)
        c += values >= self.upper.take(c)
        if not inside:
            np.minimum(c, self.size, out=c)  # NaN: the top class
        return c

    def counts(self, values: np.ndarray, inside: bool = False) -> np.ndarray:
        """``np.bincount(self(values), minlength=size + 1)``.

        With bins of :func:`dose_bins` and values inside them (``inside``): the truncated
        ``value / step`` is the bin unless ``value / step`` lies within ``near`` of an integer
        (about 0.1 % of the values), which alone are searched for exactly.
        """
        if self.near is None or not inside or values.size == 0:
            return np.bincount(self(values, inside), minlength=self.size + 1)
        n = values.size
        q = np.multiply(values, self.scale, out=scratch("q", self.dtype, n))
        whole = np.floor(q, out=scratch("whole", self.dtype, n))
        b = scratch("class", np.intp, n)
        np.copyto(b, whole, casting="unsafe")  # the bin: class - 1
        frac = np.subtract(q, whole, out=whole)
        frac -= 0.5
        np.abs(frac, out=frac)
        doubt = np.greater(frac, self.near, out=scratch("doubt", bool, n))
        # below 1 x step the only bin value is 0 = bins[0] <= value: no doubt there (zeros!)
        doubt &= np.greater(q, 0.5, out=scratch("above", bool, n))
        doubtful = np.flatnonzero(doubt)
        if doubtful.size:
            b[doubtful] = np.searchsorted(self.bins, values[doubtful], side="right") - 1
        out = np.zeros(self.size + 1, dtype=np.int64)
        out[1:] = np.bincount(b, minlength=self.size)
        return out

    def holds(self, low, high) -> bool:
        """Whether values from ``low`` to ``high`` all lie in ``[bins[0], bins[-1])`` (``inside``)."""
        return self.scale is not None and bool(low >= self.bins[0]) and bool(high < self.bins[-1])


def uniform_dvh(
    chunks: Callable[[], Iterable[np.ndarray]],
    voxel_cc: float,
    bins: np.ndarray,
    prescription_gy: Optional[float] = None,
    count: Optional[int] = None,
    totals: Optional[dict] = None,
) -> tuple:
    """DVH points and cumulative DVH of an ROI of equal voxels whose doses come in chunks.

    The numbers are those of :func:`dvh_points` and :func:`cumulative_dvh` on all the doses
    at once (see the module docstring for how they are found without a sort).

    Parameters
    ----------
    chunks : callable
        Returns an iterable of 1-D dose arrays (Gy) that together hold the ROI's doses; called
        once, or twice when the DVH points need a second look at a few dose bins.
    voxel_cc : float
        Volume of one voxel (cm^3).
    bins : (B,) array
        Dose values of the cumulative DVH, increasing (see :func:`dose_bins`).
    prescription_gy : float, optional
        Adds ``v_rx_cc`` and ``v_rx_pct``.
    count : int, optional
        Number of voxels of the ROI when the chunks leave some out: those have dose 0 (voxels
        outside the region where the dose is non-zero). Needs ``bins[0] == 0``.
    totals : dict, optional
        Receives ``count`` (voxels) and ``sum`` (float64 sum of their doses).

    Returns
    -------
    (dict, (B,) float32 array)
        The DVH points (as :func:`dvh_points`) and the cumulative DVH (as :func:`cumulative_dvh`).
    """
    bins = np.asarray(bins)
    classes = None
    hist = np.zeros(bins.size + 1, dtype=np.int64)
    n = 0
    total = 0.0
    top = bottom = None
    zeros = 0
    hits = 0
    kept: Optional[list] = []
    rx = None
    for chunk in chunks():
        if classes is None:
            classes = BinClasses(bins, np.asarray(chunk).dtype)
            rx = None if prescription_gy is None else classes.at_least(prescription_gy)
        values = classes.prepare(chunk)
        if values.size == 0:
            continue
        n += values.size
        total += float(np.add.reduce(values, dtype=np.float64))
        high, low = values.max(), values.min()
        top = high if top is None else max(top, high)
        bottom = low if bottom is None else min(bottom, low)
        hist += classes.counts(values, classes.holds(low, high))
        if low <= 0 <= high:
            zeros += int(np.count_nonzero(np.equal(values, 0, out=scratch("test", bool, values.size))))
        if rx is not None and high >= rx:
            if low >= rx:
                hits += values.size
            else:
                hits += int(np.count_nonzero(np.greater_equal(values, rx, out=scratch("test", bool, values.size))))
        if kept is not None:
            kept.append(values.copy())  # (chunks may be reused buffers)
            if n > KEEP_VALUES:
                kept = None
    if classes is None:
        classes = BinClasses(bins, np.float32)
    implicit = 0 if count is None else int(count) - n
    if implicit < 0:
        raise ValueError(f"count {count} is smaller than the {n} doses given")
    if implicit:
        zero = classes.prepare(np.zeros(1))
        if bins.size == 0 or float(bins[0]) != 0.0:
            raise ValueError("doses left out as zeros need bins starting at 0")
        hist[int(classes(zero)[0])] += implicit
        top = zero[0] if top is None else max(top, zero[0])
        bottom = zero[0] if bottom is None else min(bottom, zero[0])
        zeros += implicit
        if prescription_gy is not None and prescription_gy <= 0.0:
            hits += implicit
        n += implicit
    if totals is not None:
        totals.update(count=int(n), sum=total)
    cc = float(voxel_cc)
    below = np.cumsum(hist)  # below[b]: doses under bins[b] (class b and lower)
    curve = ((n - below[: bins.size]) * cc).astype(np.float32)

    out: dict = {"voxels": int(n)}
    volume = cc * n
    out["volume_cc"] = volume
    keys = ["dmean_gy", "dmax_gy", "dmin_gy", *[_key(x) for x in PERCENT_POINTS], "d0.03cc_gy"]
    if n == 0 or volume <= 0:
        out.update({k: None for k in keys})
        if prescription_gy is not None:
            out.update({"v_rx_cc": None, "v_rx_pct": None})
        return out, curve
    out["dmean_gy"] = total / n
    out["dmax_gy"] = float(top)
    out["dmin_gy"] = float(bottom)
    targets = [x / 100.0 * volume for x in PERCENT_POINTS] + [NEAR_MAX_CC]
    # as dvh_points: the voxel ranked r (0 = hottest) sits at volume (r + 0.5) v
    position = np.clip(np.array(targets) / cc - 0.5, 0, n - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    wanted = sorted({int(n - 1 - r) for r in np.concatenate([low, high])})  # ascending ranks
    at = _order_statistics(chunks, kept, classes, hist, zeros, wanted)
    values = [
        float(at[n - 1 - lo] + (at[n - 1 - hi] - at[n - 1 - lo]) * (p - lo)) for p, lo, hi in zip(position, low, high)
    ]
    if volume < NEAR_MAX_CC:
        values[-1] = None
    for key, value in zip([_key(x) for x in PERCENT_POINTS] + ["d0.03cc_gy"], values):
        out[key] = value
    if prescription_gy is not None:
        v_rx = float(hits * cc)
        out["v_rx_cc"] = v_rx
        out["v_rx_pct"] = 100.0 * v_rx / volume
    return out, curve


def _order_statistics(chunks, kept, classes: BinClasses, hist: np.ndarray, zeros: int, wanted: list) -> dict:
    """``{rank: value}`` of the ascending ranks ``wanted`` (np.float64 values), from the bin counts.

    Each rank falls in one class; its value is found among that class's doses only. Zeros (often
    most of a body's voxels) are not gathered: in the class that starts at 0 they come first.
    """
    below = np.cumsum(hist) - hist  # doses in lower classes
    zero_class = None
    if zeros and classes.size and float(classes.bins[0]) == 0.0:
        zero_class = 1  # [0, bins[1]): no dose in it is below 0
    out: dict = {}
    need: dict = {}
    for rank in wanted:
        c = int(np.searchsorted(below, rank, side="right")) - 1  # the last class starting at or before it
        local = rank - int(below[c])
        if c == zero_class:
            if local < zeros:
                out[rank] = np.float64(0.0)
                continue
            local -= zeros
        need.setdefault(c, []).append((rank, local))
    if not need:
        return out
    if kept is not None:
        found = np.concatenate(kept) if kept else np.zeros(0, classes.dtype)
    else:
        # a second pass gathers the doses of the wanted classes (their neighbours too: the cheap
        # class estimate may be one off)
        select = np.zeros(classes.size + 3, dtype=bool)
        for c in need:
            select[max(c - 1, 0) : c + 2] = True
        parts = []
        for chunk in chunks():
            values = classes.prepare(chunk)
            if values.size:
                if classes.scale is None:
                    estimate = classes(values)
                else:
                    estimate = classes.estimate(values, classes.holds(values.min(), values.max()))
                chosen = select.take(estimate, out=scratch("test", bool, values.size))
                parts.append(values[chosen])
        found = np.concatenate(parts) if parts else np.zeros(0, classes.dtype)
    exact = classes(found)
    for c, items in need.items():
        members = found[exact == c]
        if c == zero_class:
            members = members[members != 0]
        expected = int(hist[c]) - (zeros if c == zero_class else 0)
        if members.size != expected:  # not the doses the counts were made from (NaN, a changing source)
            raise ValueError(f"dose class {c}: {members.size} doses found, {expected} counted")
        kth = sorted({local for _rank, local in items})
        members = np.partition(members, kth) if members.size > 1 else members
        for rank, local in items:
            out[rank] = np.float64(members[local])
    return out
