"""The reference DVH of an ROI: from its planar contours and the native dose, independent of any voxel grid.

What it computes: the solid the contours stand for, sampled finely
------------------------------------------------------------------
* The ROI is the solid of :class:`ContourSolid`: contour planes no further apart than the slab
  thickness ``t`` (the CT's slice step) form runs, each ending ``t/2`` beyond its first and last
  plane (end caps; nothing in a gap wider than ``t``); between two planes of a run the sections
  are interpolated (shape-based; where the run closes, by the sections' extents), or, with
  ``between_planes="slab"``, each plane stands for the slab ``[p - t/2, p + t/2)`` of the masks'
  rule (:mod:`.structures`); in the plane the polygons count by the even-odd rule (holes and islands).
  On a CT of uneven or missing slices each plane on a native slice stands for that slice's slab,
  as the masks have it (:meth:`~DoseAlignLib.dicom.rtstruct.RoiContours.plane_slabs`): planes whose
  slabs meet form runs, and the end caps reach to the end of the slab.
* In the plane, samples lie on rows (:func:`scanline_samples`): the stretches of a row inside the
  polygons are found exactly and cut into equal pieces, a sample at the middle of each; the rows
  sit in the middle of strips whose limits include the polygons' lowest and highest points, every
  straight edge that runs along the rows and every sharp corner, with thinner strips next to the
  lowest and highest points (where a rounded outline widens fastest). So the samples' cells tile
  the polygons: a straight edge is never shifted by a lattice. Along the normal each slab is cut
  into equal layers (about ``h`` thick), a sample depth in the middle of each.
* Steps (adaptive, :func:`choose_step`): the in-plane step ``h`` gives about :data:`TARGET_SAMPLES`
  samples per ROI (cubes of ``h``, or columns one slab deep once ``h`` exceeds the slab), within
  :data:`MIN_STEP_MM` .. :data:`MAX_STEP_MM`; a plane whose polygons enclose less
  than :data:`MIN_PLANE_SAMPLES` cells of ``h^2`` gets a finer in-plane step of its own (apices,
  thin parts, small ROIs). Each plane's samples are weighted to its exact polygon area times its
  slab: the ROI's volume is its contour volume.
* The dose at each sample is interpolated trilinearly in the native dose grid (between its voxel
  centres; in the half-voxel rim around them the edge value; 0 Gy beyond, the share reported as
  ``outside_dose_grid_pct``).
* The cumulative DVH: each sample stands for its cell, across which the dose changes by the
  interpolant's gradient times the cell's size; its volume is spread evenly over that range
  (:func:`_curve`), which makes the curve continuous instead of a staircase of sample doses.
  ``Dx`` (x % of the volume) and ``D0.03cc`` are read from it (the least dose of the hottest x %),
  Dmean is the volume-weighted mean of the samples.
* Dmin and Dmax are the extreme doses over the samples and the ROI's extreme points: its polygon
  outlines (vertices and points at most ``h`` apart on every edge) at both faces of every slab, and
  the dose grid's voxel centres inside the ROI (where a trilinear dose has its interior extremes).

How it was sampled is recorded with each DVH (:meth:`ReferenceDvh.to_meta`).

What it does not do: invent a bulge between planes. Between two planes the solid stays within the
union of their sections (a ball whose equator lies between two planes is cut there), and the
interpolation is exact only for sections that scale like a quadric's (spheres, cones, cylinders);
the accuracy measured on the Nelms phantom is in the README.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..dicom.rtstruct import RoiContours, nearest_parts, plane_basis
from ..geometry.grid import Grid, Volume
from ..limits import check_case_time
from .dvh import NEAR_MAX_CC, PERCENT_POINTS, dose_bins
from .polygons import even_odd_area, points_in_polygons, polygon_edges

#: Samples aimed at per ROI (the step follows from the ROI's volume).
TARGET_SAMPLES = 1 << 15
#: Finest step (mm).
MIN_STEP_MM = 0.1
#: Coarsest step (mm) ...
MAX_STEP_MM = 20.0
#: ... unless the ROI would then take more samples than this: a contour of some hundred metres (points within the
#: plausible ±100 m) at 20 mm took 98 million samples and 7.4 GB (thirteenth hostile trial M3); a body contour
#: takes about 60 000. Each sample costs a few hundred bytes on the way.
MAX_SAMPLES = 1 << 20
#: A plane enclosing fewer cells than this gets a finer in-plane step of its own ...
MIN_PLANE_SAMPLES = 200
#: ... at most this many halvings finer.
MAX_REFINE = 6
#: No plane's step is so fine that its polygons' bounding box would hold more cells than this: a plane whose
#: area is far below its extent (contours that cross each other, whose even-odd area the nesting rule of
#: :func:`.polygons.even_odd_area` takes for about 0) would otherwise be sampled at step / 64 (2 million samples
#: and 2 GB for four such planes).
MAX_PLANE_CELLS = 50_000
#: An outline turning by more than this at a vertex makes the vertex a band limit.
CORNER_DEGREES = 15.0
#: Strips of step / 2, step / 4, ... next to each polygon's lowest and highest row.
GRADED_STRIPS = 4
#: Equal dose steps of the internal cumulative DVH between the lowest and highest dose.
FINE_BINS = 1 << 16
#: Index tolerance of "inside the half-voxel rim" (as resample.INSIDE_TOLERANCE).
RIM_TOLERANCE = 1e-6
#: Layers across an interval between two planes for its band are this many times finer than the step ...
BAND_REFINE = 4
#: ... and at least this many.
MIN_BAND_LAYERS = 8
METHOD = "contour sampling"
_COMMON_NOTE = (
    "even-odd rule in the plane; samples on exact scanline stretches in the plane, weighted to the exact polygon "
    "area, in layers along the normal; dose trilinear in the native grid (edge value in the half-voxel rim, 0 Gy "
    "beyond); each sample's volume spread over the dose range across its cell; Dmin/Dmax over the samples, the "
    "outlines at their planes and caps and the dose voxel centres inside the ROI"
)
RULE_NOTES = {
    "interpolated": (
        "contour planes no further apart than t form runs; a run ends t/2 beyond its first and last plane (end caps "
        "of the end sections); between planes shape-based interpolation of psi = phi (phi + 2 m) (phi the signed "
        "in-plane distance to the outline, m = 2 area / perimeter), Lagrange through up to four planes, kept between "
        "the two planes' values; where a run closes (its end section encloses under 1 % of its neighbour's) the "
        "neighbour's section scaled along its principal axes, the squared half extents and centres Lagrange through the "
        "same planes; " + _COMMON_NOTE
    ),
    "slab": (
        "slab rule: each contour plane stands for [p - t/2, p + t/2) along the contour normal, cut half way to a "
        "closer neighbour, nothing beyond the end slabs or in gaps wider than t; " + _COMMON_NOTE
    ),
}


@dataclass
class ReferenceDvh:
    """The reference DVH of one ROI.

    Attributes
    ----------
    name : str
    points : dict
        ``volume_cc``, ``dmean_gy``, ``dmin_gy``, ``dmax_gy``, ``d99_gy`` ... ``d1_gy``,
        ``d0.03cc_gy`` (None when the ROI holds less than 0.03 cm^3) and
        ``outside_dose_grid_pct`` (share of the volume beyond the dose grid, given 0 Gy).
    dose_gy : (B,) array
        Dose axis of the cumulative DVH (Gy).
    volume_cc : (B,) array
        Volume receiving at least each dose (cm^3).
    sampling : dict
        How it was sampled (steps, counts, refined planes, the rule).
    gradients : dict
        ``{"in_plane": {...}, "normal": {...}}``: the dose gradient (Gy/mm) within the contour planes
        and along their normal, volume-weighted medians over the samples at the dose of each of
        Dmean, D99 ... D0.03cc: how far a dose error of a DVH point moves its isodose.
    """

    name: str
    points: dict
    dose_gy: np.ndarray
    volume_cc: np.ndarray
    sampling: dict = field(default_factory=dict)
    gradients: dict = field(default_factory=dict)

    @property
    def volume_pct(self) -> np.ndarray:
        """The cumulative DVH in % of the ROI volume."""
        total = self.points.get("volume_cc") or 0.0
        return 100.0 * self.volume_cc / total if total > 0 else np.zeros_like(self.volume_cc)

    def to_meta(self) -> dict:
        """JSON-ready: the points and how they were computed (the curve belongs in the arrays)."""
        return {
            "name": self.name,
            "points": dict(self.points),
            "gradient_gy_per_mm": {k: dict(v) for k, v in self.gradients.items()},
            "method": METHOD,
            "sampling": dict(self.sampling),
        }


# ---- geometry ------------------------------------------------------------------------------------


def slab_intervals(positions: np.ndarray, thickness_mm: float) -> np.ndarray:
    """``(M, 2)`` start and end (mm along the normal) of each contour plane's part under the slab rule."""
    p = np.asarray(positions, dtype=np.float64)
    lo = p - thickness_mm / 2
    hi = p + thickness_mm / 2
    if p.size > 1:
        mid = (p[1:] + p[:-1]) / 2
        lo[1:] = np.maximum(lo[1:], mid)
        hi[:-1] = np.minimum(hi[:-1], mid)
    return np.stack([lo, hi], axis=1)


def _in_plane_frame(normal: np.ndarray, grid: Grid) -> np.ndarray:
    """``(3, 2)`` in-plane unit vectors ``u, v``: the dose grid's row direction (and the one at right
    angles to it) when it lies in the contour planes, else any orthonormal pair."""
    n = np.asarray(normal, dtype=np.float64)
    d = grid.direction
    if abs(float(d[:, 0] @ n)) < 1e-6:
        u = d[:, 0] / np.linalg.norm(d[:, 0])
        return np.stack([u, np.cross(n, u)], axis=1)
    u, v = plane_basis(n)
    return np.stack([u, v], axis=1)


def _repeat_ranges(counts: np.ndarray) -> tuple:
    """For runs of ``counts`` items: (run of each item, position of each item within its run)."""
    counts = np.asarray(counts, dtype=np.int64)
    run = np.repeat(np.arange(counts.size), counts)
    return run, np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


@dataclass
class _Outlines:
    """The polygons of all planes laid end to end: vertex ``p``, the next vertex ``q`` of its polygon."""

    p: np.ndarray  # (V, 2)
    q: np.ndarray  # (V, 2)
    plane: np.ndarray  # (V,) plane of each vertex (and of the edge p -> q)
    polygon: np.ndarray  # (V,) polygon of each vertex
    first: np.ndarray  # (K,) index of each polygon's first vertex
    polygon_plane: np.ndarray  # (K,)

    @classmethod
    def of(cls, planes: Sequence[Sequence[np.ndarray]]) -> _Outlines:
        polys = [
            (m, np.asarray(poly, dtype=np.float64))
            for m, plane in enumerate(planes)
            for poly in plane
            if len(poly) >= 3
        ]
        if not polys:
            none = np.zeros(0, dtype=np.int64)
            return cls(np.zeros((0, 2)), np.zeros((0, 2)), none, none, none, none)
        sizes = np.array([poly.shape[0] for _, poly in polys])
        p = np.concatenate([poly for _, poly in polys])
        first = np.cumsum(sizes) - sizes
        polygon, within = _repeat_ranges(sizes)
        nxt = np.arange(p.shape[0]) + 1
        nxt[first + sizes - 1] = first  # the closing edge
        polygon_plane = np.array([m for m, _ in polys])
        return cls(p, p[nxt], polygon_plane[polygon], polygon, first, polygon_plane)


def _flat_runs(outlines: _Outlines, steps: np.ndarray) -> tuple:
    """(v, plane) of both ends of every run of consecutive edges that stays within ``step / 8`` of
    one v and reaches ``step`` or further along u: the straight parts that run along the rows."""
    p, q = outlines.p, outlines.q
    step = steps[outlines.plane]
    flat = np.abs(q[:, 1] - p[:, 1]) <= step / 8
    if not flat.any():
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    starts_polygon = np.zeros(p.shape[0], dtype=bool)
    starts_polygon[outlines.first] = True
    begins = flat & (starts_polygon | ~np.roll(flat, 1))
    run = np.cumsum(begins) - 1
    # a run through a polygon's first vertex continues its last run: one run
    last = np.append(outlines.first[1:], p.shape[0]) - 1
    wraps = flat[outlines.first] & flat[last] & (last > outlines.first)
    relabel = np.arange(int(begins.sum()))
    relabel[run[last[wraps]]] = run[outlines.first[wraps]]
    edges = np.flatnonzero(flat)
    run = relabel[run[edges]]
    count = int(run.max()) + 1
    lo_u, hi_u, lo_v, hi_v = (
        np.full(count, np.inf),
        np.full(count, -np.inf),
        np.full(count, np.inf),
        np.full(count, -np.inf),
    )
    np.minimum.at(lo_u, run, np.minimum(p[edges, 0], q[edges, 0]))
    np.maximum.at(hi_u, run, np.maximum(p[edges, 0], q[edges, 0]))
    np.minimum.at(lo_v, run, np.minimum(p[edges, 1], q[edges, 1]))
    np.maximum.at(hi_v, run, np.maximum(p[edges, 1], q[edges, 1]))
    plane = np.zeros(count, dtype=np.int64)
    plane[run] = outlines.plane[edges]
    keep = (hi_u - lo_u >= steps[plane]) & (hi_v - lo_v <= steps[plane] / 8)
    return np.concatenate([lo_v[keep], hi_v[keep]]), np.concatenate([plane[keep], plane[keep]])


def _corners(outlines: _Outlines, steps: np.ndarray, heights: np.ndarray) -> tuple:
    """(v, plane) of the vertices where an outline turns by more than :data:`CORNER_DEGREES`
    (the rows' stretches change pace there), for polygons with no more such corners than rows."""
    p, q = outlines.p, outlines.q
    if p.shape[0] == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    incoming = p - np.roll(p, 1, axis=0)  # from the vertex before (a polygon's first: its last, below)
    incoming[outlines.first] = p[outlines.first] - p[np.append(outlines.first[1:], p.shape[0]) - 1]
    outgoing = q - p
    norms = np.linalg.norm(incoming, axis=1) * np.linalg.norm(outgoing, axis=1)
    cos = np.sum(incoming * outgoing, axis=1) / np.where(norms > 0, norms, 1.0)
    corner = (cos < np.cos(np.radians(CORNER_DEGREES))) & (norms > 0)
    count = np.bincount(outlines.polygon, weights=corner, minlength=outlines.first.size)
    rows = heights / steps[outlines.polygon_plane]
    corner &= (count <= rows + 4)[outlines.polygon]
    return p[corner, 1], outlines.plane[corner]


def scanline_samples(planes: Sequence[Sequence[np.ndarray]], steps: Sequence[float]) -> tuple:
    """Samples of planar polygons (even-odd rule, plane by plane) whose cells tile them.

    Rows run along the first coordinate. In each plane the rows' range is cut into bands at the
    polygons' lowest and highest points, at every straight stretch along the rows (:func:`_flat_runs`:
    such an edge is a band limit, never straddled by a row), at sharp corners (:func:`_corners`) and at ``step / 2``, ``step / 4`` ...
    (:data:`GRADED_STRIPS`) from each polygon's lowest and highest point (where a rounded outline
    widens fastest); each band is cut into equal strips no taller than the plane's ``step``, a row
    in the middle of each. Along a row, each stretch inside the polygons (exact crossings, the
    half-open rule of :mod:`.polygons`) is cut into equal pieces no longer than ``step``, a sample
    in the middle of each. All planes are done at once (each moved along the second coordinate
    out of the others' way).

    Parameters
    ----------
    planes : sequence of sequences of (N, 2) arrays
        The closed polygons of each plane.
    steps : (M,) floats
        Largest cell size in each plane.

    Returns
    -------
    ((P, 2) array, (P,) array, (P,) array, (P,) int array)
        Sample points, their cells' sizes along the first and the second coordinate, and their planes.
    """
    steps = np.asarray(steps, dtype=np.float64)
    outlines = _Outlines.of(planes)
    empty = np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    if outlines.p.shape[0] == 0:
        return empty
    v = outlines.p[:, 1]
    separation = float(np.ptp(v)) + 10.0 * float(steps.max()) + 1.0  # planes this far apart along v
    lift = np.arange(len(planes)) * separation
    low = np.minimum.reduceat(v, outlines.first)
    high = np.maximum.reduceat(v, outlines.first)
    grading = 0.5 ** np.arange(1, GRADED_STRIPS + 1)
    plane_k = outlines.polygon_plane
    graded = grading[None, :] * steps[plane_k][:, None]
    room = graded < ((high - low) / 2)[:, None]
    run_v, run_plane = _flat_runs(outlines, steps)
    corner_v, corner_plane = _corners(outlines, steps, high - low)
    event_v = np.concatenate(
        [low, high, (low[:, None] + graded)[room], (high[:, None] - graded)[room], run_v, corner_v]
    )
    event_plane = np.concatenate(
        [
            plane_k,
            plane_k,
            np.broadcast_to(plane_k[:, None], room.shape)[room],
            np.broadcast_to(plane_k[:, None], room.shape)[room],
            run_plane,
            corner_plane,
        ]
    )
    events = np.unique(event_v + lift[event_plane])
    plane_of_event = np.clip(np.floor((events - v.min()) / separation).astype(np.int64), 0, len(planes) - 1)
    band_plane = plane_of_event[:-1]
    heights = np.where(band_plane == plane_of_event[1:], np.diff(events), 0.0)  # no band between planes
    strips = np.where(heights > 0, np.ceil(heights / steps[band_plane] - 1e-9), 0).astype(np.int64)
    band, within = _repeat_ranges(strips)
    strip_height = heights[band] / strips[band]
    rows = events[band] + (within + 0.5) * strip_height  # increasing
    row_plane = band_plane[band]
    # the crossings of every sloped edge with the rows it spans (y_lo <= row < y_hi)
    p, q = outlines.p, outlines.q
    sloped = q[:, 1] != p[:, 1]
    lifted = lift[outlines.plane]
    x0, y0, x1, y1 = p[sloped, 0], p[sloped, 1] + lifted[sloped], q[sloped, 0], q[sloped, 1] + lifted[sloped]
    if rows.size == 0 or x0.size == 0:
        return empty
    first = np.searchsorted(rows, np.minimum(y0, y1), side="left")
    count = np.searchsorted(rows, np.maximum(y0, y1), side="left") - first
    edge_of, offset = _repeat_ranges(count)
    row_of = first[edge_of] + offset
    x = x0[edge_of] + (rows[row_of] - y0[edge_of]) * (x1 - x0)[edge_of] / (y1 - y0)[edge_of]
    order = np.lexsort((x, row_of))
    x, row_of = x[order], row_of[order]
    crossings = np.bincount(row_of, minlength=rows.size)
    even = (crossings % 2 == 0)[row_of]  # a row crossed an odd number of times (an open outline): left out
    x, row_of = x[even], row_of[even]
    start, length, row = x[0::2], x[1::2] - x[0::2], row_of[0::2]
    step_of = steps[row_plane[row]]
    pieces = np.where(length > 0, np.ceil(length / step_of - 1e-9), 0).astype(np.int64)
    piece_of, k = _repeat_ranges(pieces)
    size = length[piece_of] / pieces[piece_of]
    u = start[piece_of] + (k + 0.5) * size
    plane = row_plane[row[piece_of]]
    uv = np.stack([u, rows[row[piece_of]] - lift[plane]], axis=1)
    return uv, size, strip_height[row[piece_of]], plane


#: What the reason of a missing reference DVH says of contours that cross each other in a plane ...
CROSSING = "cross each other"
#: ... and the case warning that follows (audit.case).
CROSSING_WARNING = (
    "contours of one plane cross each other (DICOM asks that they do not): its mask follows the even-odd rule, so "
    "where two contours overlap is outside it, and it has no reference DVH"
)
#: At most this many (edge, edge) pairs are tested for crossings per plane (beyond: not tested).
MAX_CROSSING_PAIRS = 20_000_000


def _crossing_plane(planes: list) -> Optional[int]:
    """The index of the first plane in which two polygons cross each other (edges that properly intersect), or
    None. Only polygons whose bounding boxes overlap are compared."""
    for n, polys in enumerate(planes):
        if len(polys) < 2:
            continue
        lows = np.array([p.min(axis=0) for p in polys])
        highs = np.array([p.max(axis=0) for p in polys])
        order = np.argsort(lows[:, 0], kind="stable")
        budget = MAX_CROSSING_PAIRS
        for rank, a in enumerate(order):
            for b in order[rank + 1 :]:
                if lows[b, 0] > highs[a, 0]:
                    break
                if lows[b, 1] > highs[a, 1] or highs[b, 1] < lows[a, 1]:
                    continue
                budget -= len(polys[a]) * len(polys[b])
                if budget < 0:
                    break
                if _edges_cross(polys[a], polys[b]):
                    return n
            if budget < 0:
                break
    return None


def _edges_cross(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether an edge of closed polygon ``a`` properly crosses an edge of ``b`` (touching does not count)."""
    p, r = a, np.roll(a, -1, axis=0) - a
    q, s = b, np.roll(b, -1, axis=0) - b
    denominator = r[:, None, 0] * s[None, :, 1] - r[:, None, 1] * s[None, :, 0]
    qp = q[None, :, :] - p[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (qp[..., 0] * s[None, :, 1] - qp[..., 1] * s[None, :, 0]) / denominator
        u = (qp[..., 0] * r[:, None, 1] - qp[..., 1] * r[:, None, 0]) / denominator
    eps = 1e-9
    return bool(np.any((denominator != 0) & (t > eps) & (t < 1 - eps) & (u > eps) & (u < 1 - eps)))


def _box_areas(planes: list) -> np.ndarray:
    """The area (mm^2) of each plane's polygons' bounding box in its in-plane coordinates (0 for no polygon)."""
    out = np.zeros(len(planes))
    for n, polys in enumerate(planes):
        if polys:
            uv = np.concatenate(polys)
            out[n] = float(np.prod(uv.max(axis=0) - uv.min(axis=0)))
    return out


def _project(roi: RoiContours, frame: np.ndarray) -> list:
    """Every plane's polygons in the in-plane coordinates ``(u, v)`` of ``frame`` (one pass over all vertices)."""
    polys = [poly for plane in roi.planes for poly in plane.polygons]
    if not polys:
        return [[] for _ in roi.planes]
    xyz = np.concatenate(polys)
    uv = np.stack([xyz[:, 0] * frame[0, c] + xyz[:, 1] * frame[1, c] + xyz[:, 2] * frame[2, c] for c in (0, 1)], axis=1)
    pieces = iter(np.split(uv, np.cumsum([len(p) for p in polys])[:-1]))
    return [[next(pieces) for _ in plane.polygons] for plane in roi.planes]


def _outline_points(outlines: _Outlines, steps: np.ndarray) -> tuple:
    """Vertices and points at most the plane's step apart on every edge: ((P, 2), plane (P,)); farther apart where
    that would make more than :data:`MAX_SAMPLES` points (outlines of many metres or kilometres)."""
    p, q = outlines.p, outlines.q
    lengths = np.linalg.norm(q - p, axis=1)
    spans = lengths / steps[outlines.plane]
    total = float(spans.sum())
    if total > MAX_SAMPLES:
        spans = spans * (MAX_SAMPLES / total)
    pieces = np.maximum(np.ceil(spans).astype(np.int64), 1)
    edge, k = _repeat_ranges(pieces)
    frac = k / pieces[edge]
    return p[edge] + (q[edge] - p[edge]) * frac[:, None], outlines.plane[edge]


# ---- the solid between contour planes -------------------------------------------------------------

#: How the solid runs between two adjacent contour planes (see :class:`ContourSolid`).
BETWEEN_PLANES = ("interpolated", "slab")
#: Brute-force (point, edge) pairs per chunk of :func:`outline_distance`.
DISTANCE_CHUNK = 1 << 18
#: Most (point, mark or edge) pairs one :meth:`Outline.distance` measures (about 10 s here). A smooth outline needs
#: tens per point; a zigzag whose edges each span most rows needs all of them, for every point: a 4 MB RTSTRUCT took
#: six minutes, bounded only by the case's one-hour limit (fifteenth hostile trial O10). Beyond this the ROI gets no
#: reference DVH, with the reason; the case goes on.
MAX_DISTANCE_PAIRS = 1 << 29
#: Most (point, edge) pairs over all the planes of one ROI, its distance searches and inside tests together (about
#: 13 s here): the same zigzag on many planes stayed under the bound of each and took minutes (sixteenth hostile
#: trial P9: 24 planes of 20 000 points, 78 s). A smooth contour of 200 000 points in one plane takes 1.4e8.
MAX_ROI_PAIRS = 1 << 29
#: What is left of MAX_ROI_PAIRS for the ROI whose reference DVH is being made (None outside one).
_PAIRS_LEFT: ContextVar = ContextVar("dosealign_reference_dvh_pairs_left", default=None)
#: A run's end section enclosing less than this share of its neighbour's area closes the solid there
#: (a point, a sliver: the plane touches the structure); see :meth:`ContourSolid.closing_inside`.
CLOSING_AREA_SHARE = 0.01


class Outline:
    """The edges of one plane's polygons, ready for :meth:`distance` queries."""

    def __init__(self, polygons: Sequence[np.ndarray]):
        polys = [np.asarray(p, dtype=np.float64) for p in polygons if len(p) >= 2]
        if not polys:
            self.a = self.b = self.marks = np.zeros((0, 2))
            return
        a = np.concatenate(polys)
        b = np.concatenate([np.roll(p, -1, axis=0) for p in polys])
        lo_v = np.minimum(a[:, 1], b[:, 1])
        order = np.argsort(lo_v, kind="stable")
        self.a, self.b, self.lo_v = a[order], b[order], lo_v[order]
        self.reach = np.maximum.accumulate(np.maximum(a[:, 1], b[:, 1])[order])  # edges 0..n end below reach[n]
        marks = np.concatenate([a, (a + b) / 2])  # vertices and edge middles: upper bounds of the distance
        self.marks = marks[np.argsort(marks[:, 1], kind="stable")]
        lengths = np.linalg.norm(b - a, axis=1)
        self.window = max(float(np.median(lengths)), 1e-3)

    def distance(self, points: np.ndarray, exact: Optional[np.ndarray] = None) -> np.ndarray:
        """Distance (mm) from each of ``points`` (``(P, 2)``) to the nearest edge (``exact`` False: to the
        nearest vertex or edge middle, which overestimates it by less than half an edge).

        An upper bound comes from the marks (vertices, edge middles) within a few edge lengths along
        the rows (a wider band for points with none near); then only the edges whose row span comes
        within that bound are measured, so the work follows the outline near each point.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if pts.shape[0] == 0 or self.a.shape[0] == 0:
            return np.full(pts.shape[0], np.inf)
        mv = self.marks[:, 1]
        bound = np.full(pts.shape[0], np.inf)
        todo = np.arange(pts.shape[0])
        window = self.window
        while todo.size:  # the marks within a window along the rows, widened for points with none
            v = pts[todo, 1]
            first = np.searchsorted(mv, v - window, side="left")
            counts = np.searchsorted(mv, v + window, side="right") - first
            self._check_work(counts)
            for lo, hi in _chunks(counts):
                point, offset = _repeat_ranges(counts[lo:hi])
                if point.size:
                    mark = first[lo:hi][point] + offset
                    d2 = (pts[todo[lo:hi][point], 0] - self.marks[mark, 0]) ** 2 + (v[lo:hi][point] - mv[mark]) ** 2
                    part = counts[lo:hi] > 0
                    bound[todo[lo:hi][part]] = np.sqrt(_segment_min(d2, counts[lo:hi]))
            todo = todo[counts == 0]
            window *= 4.0
        first = np.searchsorted(self.reach, pts[:, 1] - bound, side="left")
        counts = np.maximum(np.searchsorted(self.lo_v, pts[:, 1] + bound, side="right") - first, 0)
        if exact is not None:
            counts[~exact] = 0
        self._check_work(counts)
        best = bound**2
        for lo, hi in _chunks(counts):
            point, offset = _repeat_ranges(counts[lo:hi])
            if point.size == 0:
                continue
            edge = first[lo:hi][point] + offset
            ab = self.b[edge] - self.a[edge]
            ap = pts[lo:hi][point] - self.a[edge]
            length2 = ab[:, 0] ** 2 + ab[:, 1] ** 2
            t = np.clip((ap[:, 0] * ab[:, 0] + ap[:, 1] * ab[:, 1]) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
            d2 = (ap[:, 0] - ab[:, 0] * t) ** 2 + (ap[:, 1] - ab[:, 1] * t) ** 2
            part = np.flatnonzero(counts[lo:hi] > 0) + lo
            best[part] = np.minimum(best[part], _segment_min(d2, counts[lo:hi]))
        return np.sqrt(best)

    def _check_work(self, counts: np.ndarray) -> None:
        """Refuse (ValueError) more than :data:`MAX_DISTANCE_PAIRS` pairs at once, or more than what is left of
        :data:`MAX_ROI_PAIRS` for the ROI, before measuring them."""
        pairs = int(counts.sum())
        if pairs > MAX_DISTANCE_PAIRS:
            raise ValueError(
                f"an outline of {self.a.shape[0]} edges is too dense to measure ({pairs} point-edge pairs in one plane, "
                f"more than {MAX_DISTANCE_PAIRS}: edges that zigzag across it?)"
            )
        _charge_pairs(pairs)


def _charge_pairs(pairs: int) -> None:
    """Count ``pairs`` (point, edge) tests against what is left of :data:`MAX_ROI_PAIRS` for the ROI; refuse
    (ValueError) the work beyond it, before it is done. The distance search and the inside test (the even-odd rule)
    both count: the inside test took most of the time of a zigzag on many planes (sixteenth trial P9)."""
    left = _PAIRS_LEFT.get()
    if left is not None:
        left[0] -= pairs
        if left[0] < 0:
            raise ValueError(
                f"its outlines are too dense to measure (more than {MAX_ROI_PAIRS} point-edge pairs over its "
                "planes: edges that zigzag across them?)"
            )


def _chunks(counts: np.ndarray):
    """``(start, stop)`` runs of items whose ``counts`` add up to about :data:`DISTANCE_CHUNK` at most
    (an item with more is a run of its own)."""
    total = np.cumsum(counts)
    start = 0
    while start < counts.size:
        check_case_time()  # a dense outline (100 000 vertices: minutes) stops at the case's time limit
        base = total[start - 1] if start else 0
        stop = int(np.searchsorted(total, base + DISTANCE_CHUNK, side="right"))
        stop = max(stop, start + 1)
        yield start, stop
        start = stop


def _segment_min(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The minimum of each non-empty run of ``counts`` consecutive ``values``."""
    sizes = counts[counts > 0]
    return np.minimum.reduceat(values, np.cumsum(sizes) - sizes)


def outline_distance(points: np.ndarray, polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Distance (mm) from each of ``points`` (``(P, 2)``) to the nearest edge of ``polygons`` (:class:`Outline`)."""
    return Outline(polygons).distance(points)


class ContourSolid:
    """The solid an ROI's contour planes stand for, as the reference DVH samples it.

    The planes form *runs*: neighbours no further apart than the slab thickness ``t``. Beyond the
    first and the last plane of a run the solid is that plane's section for ``t / 2`` (the slab
    rule's end caps, as the Nelms phantom's published values have them); a gap wider than ``t``
    holds nothing. Between two planes of a run:

    * ``"slab"``: each plane's section up to half way (the slab rule of the masks: a staircase);
    * ``"interpolated"``: shape-based interpolation. Each plane ``k`` gives the field
      ``psi_k = phi_k (phi_k + 2 m_k)`` (``phi_k`` the signed in-plane distance to its outline,
      negative inside; ``m_k = 2 area / perimeter``, a disc's radius), which is ``rho^2 - r^2`` for a
      disc of radius ``r`` at distance ``rho`` from its centre: interpolating it interpolates the
      squared radius, so a section that closes like a sphere's pole or the edge of a cylinder lying
      across the planes (radius ~ the square root of the distance) is followed as well as one that
      closes linearly (a cone's apex). Between planes ``a`` and ``b`` the field is the Lagrange
      polynomial through the run's planes ``a - 1 .. b + 1`` (up to four), kept between ``psi_a``
      and ``psi_b``: a point inside (outside) both planes stays inside (outside), so the solid
      between two planes lies within the union of their sections and contains their intersection.
      A point is inside where the field is <= 0. Where a run *closes* at its end plane (that
      plane's section encloses less than :data:`CLOSING_AREA_SHARE` of its neighbour's: a pole,
      an apex, a tangent line) the end section has no shape to interpolate and the field there is
      the distance to a point, which shrinks the neighbour's section alike in every direction; in
      that interval the neighbour's section is carried instead, its squared half extents along its
      principal axes following the Lagrange polynomial (:meth:`closing_inside`).
    """

    def __init__(
        self,
        planes: list,
        positions: np.ndarray,
        thickness_mm: float,
        between: str = "interpolated",
        slabs: Optional[np.ndarray] = None,
    ):
        if between not in BETWEEN_PLANES:
            raise ValueError(f"between_planes must be one of {', '.join(BETWEEN_PLANES)}, got {between!r}")
        self.planes = planes
        self.positions = np.asarray(positions, dtype=np.float64)
        self.thickness = float(thickness_mm)
        self.between = between
        has = np.array([bool(p) for p in planes])
        if slabs is None:
            self.intervals = slab_intervals(self.positions, self.thickness)
            gaps = np.diff(self.positions)
            #: adjacent[m]: planes m and m + 1 belong to one run
            self.adjacent = (gaps <= self.thickness * (1 + 1e-6)) & has[:-1] & has[1:]
        else:  # each plane's own slab (a CT of uneven or missing slices): a run where two slabs meet
            self.intervals = nearest_parts(self.positions, slabs)
            meet = self.intervals[:-1, 1] >= self.intervals[1:, 0] - 1e-6 * self.thickness
            self.adjacent = meet & has[:-1] & has[1:]
        #: how far the solid reaches beyond a plane along the normal (at most)
        self.reach = float(
            max(
                self.thickness / 2,
                np.max(np.maximum(self.positions - self.intervals[:, 0], self.intervals[:, 1] - self.positions))
                if self.positions.size
                else 0.0,
            )
        )
        self.areas = np.array([even_odd_area(p) for p in planes])
        perimeters = np.array(
            [sum(float(np.linalg.norm(np.roll(q, -1, axis=0) - q, axis=1).sum()) for q in p) for p in planes]
        )
        self.radius = np.where(perimeters > 0, 2 * self.areas / np.where(perimeters > 0, perimeters, 1.0), 0.0)
        # every plane moved along v out of the others' reach: one point test and one distance structure
        # serve all planes (a point moved by its plane's lift meets only that plane's edges first)
        corners = [np.concatenate(p) for p in planes if p]
        if corners:
            every = np.concatenate(corners)
            extent = float(np.ptp(every[:, 0]) + np.ptp(every[:, 1]))
        else:
            extent = 0.0
        self.lift = np.arange(len(planes)) * (3.0 * extent + 10.0)
        self.lifted = [q + np.array([0.0, self.lift[m]]) for m, p in enumerate(planes) for q in p]
        self._edges = polygon_edges(self.lifted)
        self._outline: Optional[Outline] = None
        #: closing[a]: the plane (a or a + 1) whose section closes the run in the interval above plane a
        self.closing: dict = {}
        if between == "interpolated" and self.adjacent.any():
            starts = np.ones(self.adjacent.size, dtype=bool)  # interval a begins a run
            starts[1:] = ~self.adjacent[:-1]
            ends = np.ones(self.adjacent.size, dtype=bool)  # interval a ends a run
            ends[:-1] = ~self.adjacent[1:]
            low = self.adjacent & starts & (self.areas[:-1] < CLOSING_AREA_SHARE * self.areas[1:])
            high = self.adjacent & ends & ~low & (self.areas[1:] < CLOSING_AREA_SHARE * self.areas[:-1])
            self.closing = {int(a): int(a) for a in np.flatnonzero(low)}
            self.closing.update({int(a): int(a) + 1 for a in np.flatnonzero(high)})
        self._frames: dict = {}

    def _moved(self, uv: np.ndarray, k) -> np.ndarray:
        moved = np.array(uv, dtype=np.float64).reshape(-1, 2)
        moved[:, 1] += self.lift[k]
        return moved

    def inside(self, uv: np.ndarray, k) -> np.ndarray:
        """Whether in-plane points ``uv`` lie inside the section of plane ``k`` (one plane, or one per point)."""
        if not self.lifted or len(uv) == 0:
            return np.zeros(len(uv), dtype=bool)
        return points_in_polygons(self._moved(uv, k), self.lifted, self._edges, on_pairs=_charge_pairs)

    def distance(self, uv: np.ndarray, k, exact: Optional[np.ndarray] = None) -> np.ndarray:
        """Distance from in-plane points ``uv`` to the outline of plane ``k`` (one plane, or one per point;
        see :meth:`Outline.distance` for ``exact``)."""
        if self._outline is None:
            self._outline = Outline(self.lifted)
        return self._outline.distance(self._moved(uv, k), exact)

    def fields(
        self, uv: np.ndarray, k: np.ndarray, inside: np.ndarray, exact: Optional[np.ndarray] = None
    ) -> np.ndarray:
        """The field ``psi_k`` of plane ``k[i]`` at in-plane point ``uv[i]``, which lies inside that plane's
        section where ``inside[i]`` (``exact``: see :meth:`Outline.distance`)."""
        phi = self.distance(uv, k, exact)
        phi = np.where(inside, -phi, phi)
        return phi * (phi + 2 * self.radius[k])

    def neighbours(self, a: int) -> list:
        """The run's planes whose fields shape the interval between planes ``a`` and ``a + 1``."""
        out = [a, a + 1]
        if a > 0 and self.adjacent[a - 1]:
            out.insert(0, a - 1)
        if a + 2 < len(self.planes) and self.adjacent[a + 1]:
            out.append(a + 2)
        return out

    def band_fields(self, a: int, uv: np.ndarray, inside_a: np.ndarray) -> tuple:
        """The fields of the planes shaping the interval above plane ``a`` at in-plane points ``uv`` that
        lie inside exactly one of planes ``a`` and ``a + 1`` (``inside_a``: plane ``a``'s):
        (the planes, their positions, ``(K, P)`` field values)."""
        ks = self.neighbours(a)
        psi = np.empty((len(ks), uv.shape[0]))
        for row, k in enumerate(ks):
            if k == a:
                inside = inside_a
            elif k == a + 1:
                inside = ~inside_a
            else:
                inside = self.inside(uv, k)
            psi[row] = self.fields(uv, np.full(uv.shape[0], k), inside)
        return ks, self.positions[ks], psi

    def band_field(self, a: int, ks: list, z: np.ndarray, psi: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """The interpolated field of :meth:`band_fields` at ``depth`` (broadcast against the points)."""
        field = 0.0
        for j in range(len(ks)):
            basis = 1.0
            for i in range(len(ks)):
                if i != j:
                    basis = basis * (depth - z[i]) / (z[j] - z[i])
            field = field + basis * psi[j]
        first, second = ks.index(a), ks.index(a + 1)
        low, high = np.minimum(psi[first], psi[second]), np.maximum(psi[first], psi[second])
        return np.clip(field, low, high)

    def _closing_frame(self, a: int) -> tuple:
        """For a closing interval (:attr:`closing`): the planes shaping it, the other (source) plane, the
        source section's principal axes (origin, ``(2, 2)`` columns) and every plane's centre and squared
        half extent along them (``(K, 2)`` each)."""
        if a not in self._frames:
            source = a + 1 if self.closing[a] == a else a
            ks = self.neighbours(a)
            polys = self.planes[source]
            p = np.concatenate(polys)
            q = np.concatenate([np.roll(x, -1, axis=0) for x in polys])
            length = np.linalg.norm(q - p, axis=1)
            middle = (p + q) / 2
            origin = length @ middle / max(float(length.sum()), 1e-12)
            spread = (middle - origin) * length[:, None]
            axes = np.linalg.eigh(spread.T @ (middle - origin))[1]  # the outline's principal axes
            centre, half2 = np.zeros((len(ks), 2)), np.zeros((len(ks), 2))
            for row, k in enumerate(ks):
                along = (np.concatenate(self.planes[k]) - origin) @ axes
                lo, hi = along.min(axis=0), along.max(axis=0)
                centre[row], half2[row] = (lo + hi) / 2, ((hi - lo) / 2) ** 2
            self._frames[a] = (ks, source, origin, axes, centre, half2)
        return self._frames[a]

    def closing_inside(self, a: int, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Whether in-plane points ``uv`` (``(P, 2)``) are inside the solid at ``depth`` (``(P, L)``, or
        ``(P, 1)``) in an interval where the run closes (:attr:`closing`): ``(P, L)`` booleans.

        The closing section (a point, a sliver) has no shape to interpolate: the other section is
        carried there, moved and scaled along its principal axes so that its centre and squared half
        extent along each follow the Lagrange polynomial through the run's planes (as for the field,
        up to four), kept between the two planes' values. A section of a quadric surface (sphere,
        cone, cylinder, ellipsoid) has squared half extents quadratic in the plane's position along
        each axis: the squared radius of a sphere's pole, the width and the length of a cone touched
        along its side (the square root of the distance and the distance), which one scalar field of
        the outline's distance cannot follow both of.
        """
        ks, source, origin, axes, centre, half2 = self._closing_frame(a)
        z = self.positions[ks]
        depth = np.asarray(depth, dtype=np.float64)
        first, second, own = ks.index(a), ks.index(a + 1), ks.index(source)
        coords = (np.asarray(uv, dtype=np.float64).reshape(-1, 2) - origin) @ axes
        mapped = np.empty(depth.shape + (2,))
        valid = np.ones(depth.shape, dtype=bool)
        for c in range(2):
            middle, square = 0.0, 0.0
            for j in range(len(ks)):
                basis = 1.0
                for i in range(len(ks)):
                    if i != j:
                        basis = basis * (depth - z[i]) / (z[j] - z[i])
                middle = middle + basis * centre[j, c]
                square = square + basis * half2[j, c]
            middle = np.clip(middle, min(centre[first, c], centre[second, c]), max(centre[first, c], centre[second, c]))
            square = np.clip(square, 0.0, max(half2[first, c], half2[second, c]))
            valid &= square > 0
            scale = np.sqrt(half2[own, c] / np.where(square > 0, square, 1.0))
            mapped[..., c] = centre[own, c] + (coords[:, c : c + 1] - middle) * scale
        back = (origin + mapped.reshape(-1, 2) @ axes.T).reshape(mapped.shape)
        return valid & self.inside(back.reshape(-1, 2), source).reshape(depth.shape)

    def band_inside(self, a: int, uv: np.ndarray, depth: np.ndarray, inside_a: np.ndarray) -> np.ndarray:
        """Whether points of the interval between planes ``a`` and ``a + 1`` that lie inside exactly one
        of the two sections (``inside_a``: the one of plane ``a``) are inside the solid at ``depth``."""
        if self.between == "slab":
            nearer_a = depth < (self.positions[a] + self.positions[a + 1]) / 2
            return nearer_a == inside_a
        if a in self.closing:
            return self.closing_inside(
                a, uv, np.broadcast_to(np.asarray(depth, dtype=np.float64), (len(uv),))[:, None]
            )[:, 0]
        ks, z, psi = self.band_fields(a, uv, inside_a)
        return self.band_field(a, ks, z, psi, depth) <= 0

    def contains(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Whether points (in-plane ``uv`` ``(P, 2)``, ``depth`` along the normal ``(P,)``) are inside."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        depth = np.asarray(depth, dtype=np.float64).reshape(-1)
        out = np.zeros(depth.size, dtype=bool)
        n = len(self.planes)
        if n == 0 or depth.size == 0:
            return out
        below = np.searchsorted(self.positions, depth, side="right") - 1  # the last plane at or below
        a = np.clip(below, 0, max(n - 2, 0))
        between = (below >= 0) & (below < n - 1)
        if n > 1:
            between &= self.adjacent[a]
        # outside the runs' intervals: a plane's own section within its slab (a cap, or towards a gap)
        plane = np.full(depth.size, -1)
        up = (below >= 0) & ~between
        up &= depth < self.intervals[np.clip(below, 0, n - 1), 1]
        plane[up] = below[up]
        down = ~between & ~up & (below + 1 < n)
        nxt = np.clip(below + 1, 0, n - 1)
        down &= depth >= self.intervals[nxt, 0]
        plane[down] = nxt[down]
        capped = np.flatnonzero(plane >= 0)
        out[capped] = self.inside(uv[capped], plane[capped])
        sel = np.flatnonzero(between)
        if sel.size == 0:
            return out
        in_a = self.inside(uv[sel], a[sel])
        in_b = self.inside(uv[sel], a[sel] + 1)
        out[sel] = in_a & in_b
        band = np.flatnonzero(in_a != in_b)
        if band.size == 0:
            return out
        if self.between == "slab":
            middle = (self.positions[a[sel[band]]] + self.positions[a[sel[band]] + 1]) / 2
            out[sel[band]] = (depth[sel[band]] < middle) == in_a[band]  # the nearer plane's section
            return out
        # every (band point, plane) pair at once, then each interval's polynomial
        points, planes_of, known, owners = [], [], [], []
        intervals = a[sel[band]]
        for interval in np.unique(intervals):
            pick = band[intervals == interval]
            if int(interval) in self.closing:
                out[sel[pick]] = self.closing_inside(int(interval), uv[sel[pick]], depth[sel[pick]][:, None])[:, 0]
                continue
            for k in self.neighbours(int(interval)):
                points.append(sel[pick])
                planes_of.append(np.full(pick.size, k))
                if k == interval:
                    known.append(in_a[pick])
                elif k == interval + 1:
                    known.append(~in_a[pick])
                else:
                    known.append(None)
                owners.append((int(interval), k, pick))
        if not points:
            return out
        which = np.concatenate(points)
        targets = np.concatenate(planes_of)
        inside = np.zeros(which.size, dtype=bool)
        start = 0
        for (_interval, k, pick), value in zip(owners, known):
            if value is not None:
                inside[start : start + pick.size] = value
            else:
                inside[start : start + pick.size] = self.inside(uv[sel[pick]], k)
            start += pick.size
        values = self.fields(uv[which], targets, inside)
        fields: dict = {}
        start = 0
        for interval, _k, pick in owners:
            fields.setdefault(interval, (pick, []))[1].append(values[start : start + pick.size])
            start += pick.size
        for interval, (pick, rows) in fields.items():
            ks = self.neighbours(interval)
            field = self.band_field(interval, ks, self.positions[ks], np.stack(rows), depth[sel[pick]])
            out[sel[pick]] = field <= 0
        return out


# ---- the dose ------------------------------------------------------------------------------------


def trilinear_at_index(dose: Volume, i: np.ndarray, j: np.ndarray, k: np.ndarray, gradient: bool = False) -> tuple:
    """Trilinear interpolation of ``dose`` at continuous indices (see :func:`trilinear`).

    Returns ``(values, outside)`` and, with ``gradient``, the change per index step along i, j
    and k (``(N, 3)``; 0 along an axis where the edge value or 0 Gy is used).
    """
    nk, nj, ni = dose.grid.shape
    flat = dose.array.reshape(-1)
    parts = []
    outside = np.zeros(np.shape(i), dtype=bool)
    for c, n in zip((i, j, k), (ni, nj, nk)):
        outside |= (c < -0.5 - RIM_TOLERANCE) | (c > n - 0.5 + RIM_TOLERANCE)
        clipped = np.clip(c, 0.0, n - 1.0)
        base = np.minimum(clipped.astype(np.int64), max(n - 2, 0))  # clipped >= 0: truncation is floor
        parts.append((base, clipped - base, (c >= 0) & (c <= n - 1) & (n > 1)))
    (bi, fi, vi), (bj, fj, vj), (bk, fk, vk) = parts
    si, sj, sk = (1 if ni > 1 else 0), (ni if nj > 1 else 0), (ni * nj if nk > 1 else 0)
    first = (bk * nj + bj) * ni + bi
    v000, v100 = flat[first], flat[first + si]
    v010, v110 = flat[first + sj], flat[first + sj + si]
    v001, v101 = flat[first + sk], flat[first + sk + si]
    v011, v111 = flat[first + sk + sj], flat[first + sk + sj + si]
    a00 = v000 + (v100 - v000) * fi
    a10 = v010 + (v110 - v010) * fi
    a01 = v001 + (v101 - v001) * fi
    a11 = v011 + (v111 - v011) * fi
    b0 = a00 + (a10 - a00) * fj
    b1 = a01 + (a11 - a01) * fj
    values = (b0 + (b1 - b0) * fk).astype(np.float64)
    values[outside] = 0.0
    if not gradient:
        return values, outside
    d_k = (b1 - b0) * vk
    d_j = ((a10 - a00) + ((a11 - a01) - (a10 - a00)) * fk) * vj
    e0 = (v100 - v000) + ((v110 - v010) - (v100 - v000)) * fj
    e1 = (v101 - v001) + ((v111 - v011) - (v101 - v001)) * fj
    d_i = (e0 + (e1 - e0) * fk) * vi
    slope = np.stack([d_i, d_j, d_k], axis=1).astype(np.float64)
    slope[outside] = 0.0
    return values, outside, slope


def trilinear(dose: Volume, points: np.ndarray) -> tuple:
    """Dose at LPS ``points`` (``(N, 3)``) by trilinear interpolation between the voxel centres.

    In the half-voxel rim around the outer centres the edge value is used; beyond it the dose is
    0 Gy. Returns ``(values (N,) float64, outside (N,) bool)``.
    """
    idx = dose.grid.lps_to_index(np.asarray(points, dtype=np.float64).reshape(-1, 3))
    return trilinear_at_index(dose, idx[:, 0], idx[:, 1], idx[:, 2])


def _node_extremes(
    roi: RoiContours, solid: ContourSolid, dose: Volume, frame: np.ndarray, low: float, high: float
) -> tuple:
    """Lowest and highest dose at the dose grid's voxel centres inside the ROI, among those below
    ``low`` or above ``high`` (others cannot change the extremes); ``(low, high)`` when none."""
    grid = dose.grid
    normal = np.asarray(roi.normal, dtype=np.float64)
    corners = np.concatenate([poly for p in roi.planes for poly in p.polygons])
    lo_lps = corners.min(axis=0) - solid.reach
    hi_lps = corners.max(axis=0) + solid.reach
    box_corners = np.array(
        [[x, y, z] for x in (lo_lps[0], hi_lps[0]) for y in (lo_lps[1], hi_lps[1]) for z in (lo_lps[2], hi_lps[2])]
    )
    ijk = grid.lps_to_index(box_corners)
    lo = np.maximum(np.floor(ijk.min(axis=0)), 0).astype(int)
    hi = np.minimum(np.ceil(ijk.max(axis=0)), np.array(grid.shape[::-1]) - 1).astype(int)
    if np.any(hi < lo):
        return low, high
    box = dose.array[lo[2] : hi[2] + 1, lo[1] : hi[1] + 1, lo[0] : hi[0] + 1]
    kk, jj, ii = np.nonzero((box < low) | (box > high))
    if kk.size == 0:
        return low, high
    values = box[kk, jj, ii].astype(np.float64)
    centres = grid.index_to_lps(np.stack([ii + lo[0], jj + lo[1], kk + lo[2]], axis=1).astype(np.float64))
    depth = centres[:, 0] * normal[0] + centres[:, 1] * normal[1] + centres[:, 2] * normal[2]
    uv = np.stack(
        [centres[:, 0] * frame[0, c] + centres[:, 1] * frame[1, c] + centres[:, 2] * frame[2, c] for c in (0, 1)],
        axis=1,
    )
    inside = solid.contains(uv, depth)
    if not inside.any():
        return low, high
    return min(low, float(values[inside].min())), max(high, float(values[inside].max()))


# ---- from samples to a DVH -----------------------------------------------------------------------


def _curve(doses: np.ndarray, widths: np.ndarray, weights: np.ndarray, low: float, high: float) -> tuple:
    """The cumulative DVH of the samples: (doses, increasing (F+1,); volume mm^3 at or above each).

    Each sample's volume is spread evenly over ``dose +- width / 2``, kept within the ROI's
    ``low`` .. ``high`` (Dmin, Dmax); samples narrower than two of the :data:`FINE_BINS` steps keep
    it at their dose. Exact at the steps, linear between them.
    """
    total = float(weights.sum())
    lo, hi = float(low), float(max(high, low + 1e-9))
    scale = FINE_BINS / (hi - lo)
    size = FINE_BINS + 3
    start = np.clip((doses - widths / 2 - lo) * scale, 0.0, FINE_BINS)
    stop = np.clip((doses + widths / 2 - lo) * scale, 0.0, FINE_BINS)
    spread = stop - start >= 2
    # point masses: the volume below each step
    at = np.clip(((doses[~spread] - lo) * scale).astype(np.int64), 0, FINE_BINS - 1)  # (clipped to Dmin..Dmax)
    below = np.concatenate([[0.0], np.cumsum(np.bincount(at, weights=weights[~spread], minlength=FINE_BINS))])
    # spread samples: the volume below x is the sum of w clip((x - a) / (b - a), 0, 1), piecewise
    # linear; its second difference is +w / (b - a) at a and -w / (b - a) at b, each split between
    # the two nearest steps (which keeps the sum exact at the steps)
    a, b = start[spread], stop[spread]
    slope = weights[spread] / (b - a)
    kicks = np.zeros(size)
    for where, sign in ((a, 1.0), (b, -1.0)):
        j = np.minimum(where.astype(np.int64), size - 2)
        f = where - j
        kicks += np.bincount(j, weights=sign * slope * (1 - f), minlength=size)[:size]
        kicks += np.bincount(j + 1, weights=sign * slope * f, minlength=size)[:size]
    ramps = np.concatenate([[0.0], np.cumsum(np.cumsum(kicks))])[: FINE_BINS + 1]
    at_least = np.clip(total - below - ramps, 0.0, total)
    at_least[0], at_least[-1] = total, 0.0
    return np.linspace(lo, hi, FINE_BINS + 1), at_least


def _dose_at_volume(curve_dose: np.ndarray, curve_volume: np.ndarray, volume: float) -> float:
    """The least dose of the hottest ``volume`` (mm^3) on a curve of :func:`_curve`."""
    # the curve falls: the last step at which it still holds `volume`, linear to the next
    n = int(np.searchsorted(-curve_volume, -volume, side="right")) - 1
    n = min(max(n, 0), curve_volume.size - 2)
    above, below = curve_volume[n], curve_volume[n + 1]
    share = 0.0 if above <= below else float(np.clip((above - volume) / (above - below), 0.0, 1.0))
    return float(curve_dose[n] + (curve_dose[n + 1] - curve_dose[n]) * share)


#: Samples whose dose lies within this share of the ROI's dose range of a DVH point give its gradient ...
GRADIENT_WINDOW = 0.01
#: ... at least this many (the nearest in dose).
GRADIENT_SAMPLES = 64


def _gradients_at(
    points: dict, doses: np.ndarray, steepness: np.ndarray, weights: np.ndarray, low: float, high: float
) -> dict:
    """The volume-weighted median |grad D| (Gy/mm) of the samples at the dose of each DVH point."""
    order = np.argsort(doses, kind="stable")
    sorted_doses = doses[order]
    window = GRADIENT_WINDOW * max(high - low, 1e-9)
    out = {}
    for key in ("dmean_gy", *[f"d{x:g}_gy" for x in PERCENT_POINTS], "d0.03cc_gy"):
        value = points.get(key)
        if value is None:
            continue
        lo = int(np.searchsorted(sorted_doses, value - window, side="left"))
        hi = int(np.searchsorted(sorted_doses, value + window, side="right"))
        if hi - lo < GRADIENT_SAMPLES:
            at = int(np.searchsorted(sorted_doses, value))
            lo = max(0, min(at - GRADIENT_SAMPLES // 2, sorted_doses.size - GRADIENT_SAMPLES))
            hi = min(sorted_doses.size, lo + GRADIENT_SAMPLES)
        pick = order[lo:hi]
        g, w = steepness[pick], weights[pick]
        rank = np.argsort(g, kind="stable")
        cumulative = np.cumsum(w[rank])
        out[key] = float(g[rank][np.searchsorted(cumulative, cumulative[-1] / 2)])
    return out


def choose_step(volume_mm3: float, thickness_mm: float, target_samples: int = TARGET_SAMPLES) -> float:
    """The in-plane sampling step (mm) that gives an ROI of this volume about ``target_samples``
    samples: cubes while they are thinner than a slab (several layers per slab), else square
    columns one slab deep; within :data:`MIN_STEP_MM` .. :data:`MAX_STEP_MM`, and coarser than that only
    where the ROI would take more than :data:`MAX_SAMPLES`."""
    if volume_mm3 <= 0:
        return MIN_STEP_MM

    def step_for(samples: float) -> float:
        cube = (volume_mm3 / samples) ** (1 / 3)
        return cube if cube <= thickness_mm else math.sqrt(volume_mm3 / (samples * thickness_mm))

    # coarser than MAX_STEP_MM only where that step would exceed MAX_SAMPLES (an ROI of many metres)
    return float(max(np.clip(step_for(target_samples), MIN_STEP_MM, MAX_STEP_MM), step_for(MAX_SAMPLES)))


def _layers(start: np.ndarray, stop: np.ndarray, step: float, minimum: int = 1) -> tuple:
    """Equal layers about ``step`` thick across each ``[start, stop)``: (range of each layer, its middle, thickness)."""
    depth = np.clip(stop - start, 0.0, None)
    count = np.where(depth > 0, np.maximum(np.rint(depth / step), minimum), 0).astype(np.int64)
    owner, layer = _repeat_ranges(count)
    thick = depth[owner] / count[owner]
    return owner, start[owner] + (layer + 0.5) * thick, thick


def _sample_solid(solid: ContourSolid, planes: list, steps: np.ndarray, step: float, used: np.ndarray) -> tuple:
    """Points that sample the solid, each standing for a cell: (uv (P, 2), depth, du, dv, thickness, weight mm^3).

    Every plane's scanline samples (:func:`scanline_samples`; their cells tile its polygons, scaled to
    its exact area) are laid in layers through the plane's own half-slabs: towards a cap or a gap the
    section itself, towards a neighbouring plane of the run the part inside the neighbour's section
    too (the solid holds the two sections' intersection throughout). The rest of both sections (the
    band where the two differ) is laid in finer layers across the whole interval and kept where
    :meth:`ContourSolid.band_inside` says so.
    """
    uv, du, dv, plane = scanline_samples([polys if ok else [] for polys, ok in zip(planes, used)], steps)
    n_planes = len(planes)
    cell = du * dv
    per_plane = np.bincount(plane, weights=cell, minlength=n_planes)
    cell = cell * (solid.areas / np.where(per_plane > 0, per_plane, 1.0))[plane]  # exact area per plane
    order = np.argsort(plane, kind="stable")
    bounds = np.searchsorted(plane[order], np.arange(n_planes + 1))
    lows, highs = solid.intervals[:, 0], solid.intervals[:, 1]
    # which samples lie inside the neighbouring planes' sections (only where a run continues)
    inside_next = np.ones(plane.size, dtype=bool)  # inside plane m + 1's section (or no neighbour there)
    inside_prev = np.ones(plane.size, dtype=bool)
    if solid.between != "slab":
        has_next = np.zeros(n_planes, dtype=bool)
        has_next[:-1] = solid.adjacent
        has_prev = np.zeros(n_planes, dtype=bool)
        has_prev[1:] = solid.adjacent
        test = np.flatnonzero(has_next[plane])
        inside_next[test] = solid.inside(uv[test], plane[test] + 1)
        test = np.flatnonzero(has_prev[plane])
        inside_prev[test] = solid.inside(uv[test], plane[test] - 1)
    parts = []
    # the plane's own slab where the sample is inside both neighbours' sections (or there is none),
    # else only the half-slab towards a neighbour (or cap) whose section holds it
    positions = solid.positions
    whole = inside_prev & inside_next
    for keep, start, stop in (
        (whole, lows[plane], highs[plane]),
        (inside_prev & ~whole, lows[plane], positions[plane]),
        (inside_next & ~whole, positions[plane], highs[plane]),
    ):
        chosen = np.flatnonzero(keep)
        owner, depth, thick = _layers(start[chosen], stop[chosen], step)
        s = chosen[owner]
        parts.append((s, depth, thick, np.ones(s.size, dtype=bool)))
    band_points = 0
    if solid.between != "slab":
        bands = {}
        for a in np.flatnonzero(solid.adjacent):
            a = int(a)
            from_a = order[bounds[a] : bounds[a + 1]]
            from_b = order[bounds[a + 1] : bounds[a + 2]]
            band = np.concatenate([from_a[~inside_next[from_a]], from_b[~inside_prev[from_b]]])
            if band.size:
                bands[a] = band
        # every (band sample, plane) pair at once; the sample's own and adjacent planes' tests are known
        sample_of, plane_of, slot = [], [], {}
        start = 0
        for a, band in bands.items():
            if a in solid.closing:
                continue  # no fields: see ContourSolid.closing_inside
            for k in solid.neighbours(a):
                slot[(a, k)] = (start, band.size)
                start += band.size
                sample_of.append(band)
                plane_of.append(np.full(band.size, k))
        psi = {}
        if sample_of:
            samples = np.concatenate(sample_of)
            targets = np.concatenate(plane_of)
            inside = np.ones(samples.size, dtype=bool)  # in its own plane
            offset = targets - plane[samples]
            inside[offset == 1] = inside_next[samples[offset == 1]]
            inside[offset == -1] = inside_prev[samples[offset == -1]]
            far = np.flatnonzero(np.abs(offset) >= 2)
            inside[far] = solid.inside(uv[samples[far]], targets[far])
            values = solid.fields(uv[samples], targets, inside)
            psi = {key: values[first : first + size] for key, (first, size) in slot.items()}
        for a, band in bands.items():
            length = positions[a + 1] - positions[a]
            count = max(int(np.ceil(length / (step / BAND_REFINE) - 1e-9)), MIN_BAND_LAYERS)
            thick = length / count
            levels = positions[a] + (np.arange(count) + 0.5) * thick
            if a in solid.closing:
                inside = solid.closing_inside(a, uv[band], np.broadcast_to(levels, (band.size, count)))
            else:
                ks = solid.neighbours(a)
                values = np.stack([psi[(a, k)] for k in ks])
                inside = solid.band_field(a, ks, positions[ks], values[:, :, None], levels[None, :]) <= 0
            which, layer = np.nonzero(inside)
            band_points += int(inside.size)
            parts.append((band[which], levels[layer], np.full(which.size, thick), np.ones(which.size, dtype=bool)))
    s = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    depth = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    thick = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0)
    return uv[s], depth, du[s], dv[s], thick, cell[s] * thick, band_points


def reference_dvh(
    roi: RoiContours,
    dose: Volume,
    thickness_mm: float,
    *,
    dose_axis: Optional[np.ndarray] = None,
    target_samples: int = TARGET_SAMPLES,
    between_planes: str = "interpolated",
    within: Optional[Grid] = None,
) -> ReferenceDvh:
    """The reference DVH of one ROI (see the module docstring).

    Parameters
    ----------
    roi : RoiContours
        An ROI with contour planes (``roi.skipped`` is None).
    dose : Volume
        The native dose (Gy) on its own grid.
    thickness_mm : float
        Slab thickness ``t`` (the CT's slice step).
    dose_axis : (B,) array, optional
        Doses (Gy) of the cumulative DVH; :func:`.dvh.dose_bins` of the ROI's Dmax when not given.
    target_samples : int
        About how many samples to take.
    between_planes : str
        How the solid runs between adjacent contour planes: "interpolated" (shape-based, the
        default) or "slab" (the masks' slab rule); see :class:`ContourSolid`.
    within : Grid, optional
        A grid (the output grid): the share of the ROI's volume beyond its voxels' outer faces goes
        to ``points["outside_grid_pct"]``.

    Returns
    -------
    ReferenceDvh
    """
    budget = _PAIRS_LEFT.set([MAX_ROI_PAIRS])  # this ROI's own (see Outline._check_work)
    try:
        return _reference_dvh(roi, dose, thickness_mm, dose_axis, target_samples, between_planes, within)
    finally:
        _PAIRS_LEFT.reset(budget)


def _reference_dvh(
    roi: RoiContours,
    dose: Volume,
    thickness_mm: float,
    dose_axis: Optional[np.ndarray],
    target_samples: int,
    between_planes: str,
    within: Optional[Grid],
) -> ReferenceDvh:
    """:func:`reference_dvh` within the ROI's work bound."""
    if roi.skipped is not None or not roi.planes:
        raise ValueError(f"ROI {roi.name!r} has no contour planes for a DVH ({roi.skipped})")
    if not thickness_mm > 0:
        raise ValueError(f"ROI {roi.name!r}: slab thickness must be positive, got {thickness_mm}")
    normal = np.asarray(roi.normal, dtype=np.float64)
    frame = _in_plane_frame(normal, dose.grid)
    planes = _project(roi, frame)
    crossing = _crossing_plane(planes)
    if crossing is not None and roi.xor:  # allowed, and the mask is right: only the area is not at hand
        raise ValueError(
            f"CLOSEDPLANAR_XOR contours of its plane at {roi.planes[crossing].position_mm:.2f} mm overlap: their "
            "even-odd area, and so this DVH, would not be exact"
        )
    if crossing is not None:
        raise ValueError(
            f"contours of its plane at {roi.planes[crossing].position_mm:.2f} mm {CROSSING} (DICOM asks that the "
            "contours of a plane do not): their even-odd area, and so this DVH, would not be exact"
        )
    solid = ContourSolid(planes, roi.positions, thickness_mm, between_planes, roi.plane_slabs())
    areas, intervals = solid.areas, solid.intervals
    depths = np.clip(intervals[:, 1] - intervals[:, 0], 0, None)
    step = choose_step(float(areas @ depths), thickness_mm, target_samples)
    # small planes (apices, thin parts, small ROIs) get a finer in-plane step of their own
    steps = np.clip(np.sqrt(areas / MIN_PLANE_SAMPLES), step / 2**MAX_REFINE, step)
    steps = np.minimum(np.maximum(steps, np.sqrt(_box_areas(planes) / MAX_PLANE_CELLS)), step)
    used = (areas > 0) & (depths > 0)
    uv, depth, du, dv, thick, weights, band_points = _sample_solid(solid, planes, steps, step, used)
    inverse = np.linalg.inv(dose.grid.affine)
    rates = inverse[:3, :3] @ np.concatenate([frame, normal[:, None]], axis=1)  # index per mm along u, v, n
    u, v = uv[:, 0], uv[:, 1]
    if dose.grid.slice_offsets is None:
        i, j, k = (u * rates[c, 0] + v * rates[c, 1] + depth * rates[c, 2] + inverse[c, 3] for c in range(3))
    else:  # uneven dose slices: the grid's own map
        idx = dose.grid.lps_to_index(u[:, None] * frame[:, 0] + v[:, None] * frame[:, 1] + depth[:, None] * normal)
        i, j, k = idx[:, 0], idx[:, 1], idx[:, 2]
    doses, outside, slope = trilinear_at_index(dose, i, j, k, gradient=True)
    # how far the dose changes across each sample's cell: along u, v and the normal, in quadrature
    widths = np.zeros(doses.size)
    for n, size in enumerate((du, dv, thick)):
        widths += ((slope[:, 0] * rates[0, n] + slope[:, 1] * rates[1, n] + slope[:, 2] * rates[2, n]) * size) ** 2
    widths = np.sqrt(widths)
    along = [slope[:, 0] * rates[0, n] + slope[:, 1] * rates[1, n] + slope[:, 2] * rates[2, n] for n in range(3)]
    in_plane = np.sqrt(along[0] ** 2 + along[1] ** 2)  # Gy/mm within the contour planes
    across = np.abs(along[2])  # Gy/mm along the contour normal

    sampling = {
        "between_planes": between_planes,
        "in_plane_step_mm": round(step, 4),
        "finest_step_mm": round(float(steps[used].min()), 4) if used.any() else None,
        "refined_planes": int(np.count_nonzero(used & (steps < step))),
        "slab_thickness_mm": float(thickness_mm),
        "rule": RULE_NOTES[between_planes],
    }
    keys = ["dmean_gy", "dmin_gy", "dmax_gy", *[f"d{x:g}_gy" for x in PERCENT_POINTS], "d0.03cc_gy"]
    if weights.size == 0 or weights.sum() <= 0:
        axis = dose_bins(0.0) if dose_axis is None else np.asarray(dose_axis, dtype=np.float64)
        out = {"volume_cc": 0.0, **{k: None for k in keys}, "outside_dose_grid_pct": None}
        return ReferenceDvh(roi.name, out, axis, np.zeros(axis.shape), {**sampling, "samples": 0})
    # the extreme points: every outline at its plane and (slab rule: at both faces of its slab) at the caps
    rim_xy, rim_plane = _outline_points(_Outlines.of(planes), np.full(len(planes), step))
    n_planes = len(planes)
    cap_low = np.ones(n_planes, dtype=bool)
    cap_low[1:] = ~solid.adjacent
    cap_high = np.ones(n_planes, dtype=bool)
    cap_high[:-1] = ~solid.adjacent
    if between_planes == "slab":
        faces = [(np.ones(n_planes, dtype=bool), intervals[:, 0]), (np.ones(n_planes, dtype=bool), intervals[:, 1])]
    else:
        faces = [
            (np.ones(n_planes, dtype=bool), solid.positions),
            (cap_low, intervals[:, 0]),
            (cap_high, intervals[:, 1]),
        ]
    rim_parts = [(rim_xy[on[rim_plane]], at[rim_plane][on[rim_plane]]) for on, at in faces]
    rim = np.concatenate([r for r, _ in rim_parts])
    rim_depth = np.concatenate([d for _, d in rim_parts])
    if dose.grid.slice_offsets is None:
        ri, rj, rk = (
            rim[:, 0] * rates[c, 0] + rim[:, 1] * rates[c, 1] + rim_depth * rates[c, 2] + inverse[c, 3]
            for c in range(3)
        )
    else:
        idx = dose.grid.lps_to_index(rim[:, :1] * frame[:, 0] + rim[:, 1:] * frame[:, 1] + rim_depth[:, None] * normal)
        ri, rj, rk = idx[:, 0], idx[:, 1], idx[:, 2]
    edge_doses, _ = trilinear_at_index(dose, ri, rj, rk)
    low = float(min(doses.min(), edge_doses.min())) if edge_doses.size else float(doses.min())
    high = float(max(doses.max(), edge_doses.max())) if edge_doses.size else float(doses.max())
    low, high = _node_extremes(roi, solid, dose, frame, low, high)
    total = float(weights.sum())
    out = {
        "volume_cc": total / 1000.0,
        "dmean_gy": float(np.sum(doses * weights) / total),
        "dmin_gy": low,
        "dmax_gy": high,
    }
    curve_dose, curve_volume = _curve(doses, widths, weights, low, high)
    for x in PERCENT_POINTS:
        out[f"d{x:g}_gy"] = _dose_at_volume(curve_dose, curve_volume, x / 100.0 * total)
    near_max = NEAR_MAX_CC * 1000.0
    out["d0.03cc_gy"] = _dose_at_volume(curve_dose, curve_volume, near_max) if total >= near_max else None
    out["outside_dose_grid_pct"] = float(100.0 * weights[outside].sum() / total)
    if within is not None:
        idx = within.lps_to_index(u[:, None] * frame[:, 0] + v[:, None] * frame[:, 1] + depth[:, None] * normal)
        limits = np.array(within.shape[::-1], dtype=np.float64) - 0.5
        beyond = np.any((idx < -0.5 - RIM_TOLERANCE) | (idx > limits + RIM_TOLERANCE), axis=1)
        out["outside_grid_pct"] = float(100.0 * weights[beyond].sum() / total)
    gradients = {
        "in_plane": _gradients_at(out, doses, in_plane, weights, low, high),
        "normal": _gradients_at(out, doses, across, weights, low, high),
    }
    sampling.update(
        samples=int(weights.size),
        band_samples=band_points,
        outline_points=int(edge_doses.size),
        closing_intervals=len(solid.closing),
    )
    axis = dose_bins(high) if dose_axis is None else np.asarray(dose_axis, dtype=np.float64)
    curve = np.interp(axis, curve_dose, curve_volume, left=total, right=0.0) / 1000.0
    return ReferenceDvh(roi.name, out, axis, curve, sampling, gradients)


def reference_dvhs(
    rois: Sequence[RoiContours],
    dose: Volume,
    thickness_mm: float,
    *,
    target_samples: int = TARGET_SAMPLES,
    between_planes: str = "interpolated",
    dose_axis: Optional[np.ndarray] = None,
    within: Optional[Grid] = None,
) -> list:
    """:func:`reference_dvh` of every ROI with contour planes, on one dose axis (default: 0 Gy to past
    the dose's maximum)."""
    axis = dose_bins(float(np.max(dose.array)) if dose.array.size else 0.0) if dose_axis is None else dose_axis
    return [
        reference_dvh(
            r,
            dose,
            r.thickness(thickness_mm),
            dose_axis=axis,
            target_samples=target_samples,
            between_planes=between_planes,
            within=within,
        )
        for r in rois
        if r.skipped is None and r.planes
    ]
