"""Planar polygons under the even-odd rule: areas, point tests and lattice fills.

Every function here works in one plane, on 2-D coordinates ``(x, y)`` (for a lattice: x = column,
y = row, in continuous index units). A set of polygons is read with the **even-odd rule**: a point
is inside when a ray from it crosses the polygons' edges an odd number of times, so a contour
inside another is a hole and a contour inside a hole is an island, whatever the winding order.

Boundary convention (half-open, so that two polygons sharing an edge never both claim a point
and a lattice fill covers the polygon's area on average): an edge counts for a row ``y`` when
``min(y0, y1) <= y < max(y0, y1)``, and a point at ``x`` sees the crossings with ``x_cross < x``.
A point exactly on a left edge is therefore outside, one exactly on a right edge inside.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ..limits import check_case_time

#: Largest number of (edge, point) pairs processed at once by :func:`points_in_polygons`.
PAIR_CHUNK = 1 << 22


def polygon_area(polygon: np.ndarray) -> float:
    """Signed area (shoelace formula) of a closed polygon.

    Parameters
    ----------
    polygon : (N, 2) array
        Vertices in order; the closing edge from the last vertex to the first is implied.

    Returns
    -------
    float
        Area in squared coordinate units, positive when the vertices run counter-clockwise.
    """
    p = np.asarray(polygon, dtype=np.float64)
    if p.shape[0] < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    # np.roll(a, -1), without its per-call overhead
    return 0.5 * float(np.dot(x, np.concatenate([y[1:], y[:1]])) - np.dot(y, np.concatenate([x[1:], x[:1]])))


def even_odd_area(polygons: Sequence[np.ndarray]) -> float:
    """Area covered by ``polygons`` under the even-odd rule.

    Each polygon adds its area when it is nested in an even number of the others (an outline or
    an island) and subtracts it when nested in an odd number (a hole). Exact for polygons that do
    not cross each other, which is what DICOM asks of the contours of one plane.

    Near-linear in the number of polygons: a polygon can only lie inside another whose bounding box
    holds its first vertex, and only those pairs are tested (20 000 contours in one plane take
    about a second, not hours).

    Parameters
    ----------
    polygons : sequence of (N, 2) arrays
        Closed polygons of one plane.

    Returns
    -------
    float
        Area in squared coordinate units (never negative).
    """
    polys = [np.asarray(p, dtype=np.float64) for p in polygons if len(p) >= 3]
    depth = nesting_parity(polys)
    total = 0.0
    for poly, odd in zip(polys, depth):
        total += (-1.0) ** int(odd) * abs(polygon_area(poly))
    return max(total, 0.0)


def nesting_parity(polys: Sequence[np.ndarray]) -> np.ndarray:
    """For each polygon, whether its first vertex lies inside an odd number of the other polygons.

    The same arithmetic as :func:`points_in_polygons` (half-open rule), applied only to the pairs
    whose bounding box holds the vertex: a polygon whose box does not hold a point crosses the
    point's ray an even number of times, so leaving it out changes no parity.
    """
    n = len(polys)
    parity = np.zeros(n, dtype=bool)
    if n < 2:
        return parity
    first = np.array([p[0, :2] for p in polys])
    boxes = np.array([[p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max()] for p in polys])
    order = np.argsort(first[:, 1], kind="stable")
    ys, xs = first[order, 1], first[order, 0]
    lows = np.searchsorted(ys, boxes[:, 2], side="left")
    highs = np.searchsorted(ys, boxes[:, 3], side="right")
    for j in range(n):
        if not j & 255:
            check_case_time()
        lo, hi = int(lows[j]), int(highs[j])
        if hi - lo <= 0:
            continue
        band = slice(lo, hi)
        inside_box = (xs[band] >= boxes[j, 0]) & (xs[band] <= boxes[j, 1])
        candidates = order[band][inside_box]
        candidates = candidates[candidates != j]
        if candidates.size == 0:
            continue
        edges = _edges([polys[j]])
        if edges.shape[0] == 0:
            continue
        px, py = first[candidates, 0][:, None], first[candidates, 1][:, None]
        x0, y0, x1, y1 = (edges[:, k][None, :] for k in range(4))
        spans = (np.minimum(y0, y1) <= py) & (py < np.maximum(y0, y1))
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        crossings = np.count_nonzero(spans & (x_cross < px), axis=1)
        parity[candidates] ^= (crossings & 1).astype(bool)
    return parity


def _point_in_polygon(point: np.ndarray, polygon: np.ndarray) -> bool:
    """:func:`points_in_polygons` for one point and one polygon (the same arithmetic, less overhead)."""
    edges = _edges([polygon])
    x, y = float(point[0]), float(point[1])
    y0, y1 = edges[:, 1], edges[:, 3]
    crossed = edges[(np.minimum(y0, y1) <= y) & (y < np.maximum(y0, y1))]
    x0, y0, x1, y1 = crossed[:, 0], crossed[:, 1], crossed[:, 2], crossed[:, 3]
    x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return bool(np.count_nonzero(x_cross < x) & 1)


def _edges(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """All edges of the polygons that are not horizontal, as rows ``(x0, y0, x1, y1)``."""
    parts = []
    for poly in polygons:
        p = np.asarray(poly, dtype=np.float64)
        if p.shape[0] < 3:
            continue
        q = np.concatenate([p[1:], p[:1]])  # np.roll(p, -1, axis=0)
        parts.append(np.concatenate([p, q], axis=1))
    if not parts:
        return np.zeros((0, 4))
    edges = np.concatenate(parts, axis=0)
    return edges[edges[:, 1] != edges[:, 3]]


def polygon_edges(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """The edges :func:`points_in_polygons` counts (``(E, 4)`` rows ``x0, y0, x1, y1``), to pass as
    ``edges`` when the same polygons are tested many times."""
    return _edges(polygons)


def points_in_polygons(
    points: np.ndarray,
    polygons: Sequence[np.ndarray],
    edges: Optional[np.ndarray] = None,
    on_pairs: Optional[Callable[[int], None]] = None,
) -> np.ndarray:
    """Which points lie inside the polygons under the even-odd rule.

    Points are sorted by y once; each edge then meets a contiguous run of them, so the work is the
    number of (edge, point-in-the-edge's-y-span) pairs rather than points x edges.

    Parameters
    ----------
    points : (P, 2) array
        Query points ``(x, y)``.
    polygons : sequence of (N, 2) arrays
        Closed polygons of one plane.
    edges : (E, 4) array, optional
        :func:`polygon_edges` of ``polygons``, when already known.
    on_pairs : callable, optional
        Told the number of (edge, point) pairs before any is tested; it may raise to refuse the work.

    Returns
    -------
    (P,) bool array
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    edges = _edges(polygons) if edges is None else edges
    inside = np.zeros(pts.shape[0], dtype=bool)
    if pts.shape[0] == 0 or edges.shape[0] == 0:
        return inside
    order = np.argsort(pts[:, 1], kind="stable")
    ys = pts[order, 1]
    xs = pts[order, 0]
    y_lo = np.minimum(edges[:, 1], edges[:, 3])
    y_hi = np.maximum(edges[:, 1], edges[:, 3])
    lo = np.searchsorted(ys, y_lo, side="left")
    hi = np.searchsorted(ys, y_hi, side="left")
    counts = hi - lo
    if on_pairs is not None:
        on_pairs(int(counts.sum()))
    keep = counts > 0
    edges, lo, counts = edges[keep], lo[keep], counts[keep]
    crossings = np.zeros(pts.shape[0], dtype=np.int64)
    # process the edges in chunks so that the pair arrays stay bounded
    start = 0
    while start < edges.shape[0]:
        stop = start + 1
        total = counts[start]
        while stop < edges.shape[0] and total + counts[stop] <= PAIR_CHUNK:
            total += counts[stop]
            stop += 1
        e = edges[start:stop]
        c = counts[start:stop]
        edge_of_pair = np.repeat(np.arange(e.shape[0]), c)
        first = np.repeat(np.cumsum(c) - c, c)
        point = np.repeat(lo[start:stop], c) + (np.arange(int(c.sum())) - first)
        x0, y0, x1, y1 = (e[edge_of_pair, n] for n in range(4))
        x_cross = x0 + (ys[point] - y0) * (x1 - x0) / (y1 - y0)
        hits = point[x_cross < xs[point]]
        crossings += np.bincount(hits, minlength=pts.shape[0])
        start = stop
    inside[order] = (crossings & 1).astype(bool)
    return inside


def fill_lattice(polygons: Sequence[np.ndarray], window: tuple, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Even-odd fill of the polygons at the integer lattice points of a window.

    A scanline fill: every edge crossing a row toggles the parity of all lattice points to its
    right; the sorted toggles of all rows are decoded at once (no per-row Python loop).

    Parameters
    ----------
    polygons : sequence of (N, 2) arrays
        Closed polygons in lattice coordinates ``(x, y)`` = (column, row).
    window : (r0, r1, c0, c1) ints
        Rows ``r0 <= y < r1`` and columns ``c0 <= x < c1`` to fill.
    out : (r1 - r0, c1 - c0) bool array of zeros, optional
        Where to write the fill (a new array when not given).

    Returns
    -------
    (r1 - r0, c1 - c0) bool array
        True at lattice points inside the polygons.
    """
    r0, r1, c0, c1 = (int(v) for v in window)
    rows, cols = max(r1 - r0, 0), max(c1 - c0, 0)
    if out is None:
        out = np.zeros((rows, cols), dtype=bool)
    edges = _edges(polygons)
    if rows == 0 or cols == 0 or edges.shape[0] == 0:
        return out
    x0, y0, x1, y1 = edges[:, 0] - c0, edges[:, 1] - r0, edges[:, 2] - c0, edges[:, 3] - r0
    y_lo, y_hi = np.minimum(y0, y1), np.maximum(y0, y1)
    # rows r with y_lo <= r < y_hi
    first_row = np.minimum(np.maximum(np.ceil(y_lo), 0), rows).astype(np.int64)
    stop_row = np.minimum(np.maximum(np.ceil(y_hi), 0), rows).astype(np.int64)
    counts = stop_row - first_row
    keep = counts > 0
    if not np.any(keep):
        return out
    x0, y0, x1, y1, first_row, counts = (a[keep] for a in (x0, y0, x1, y1, first_row, counts))
    edge_of_pair = np.repeat(np.arange(counts.size), counts)
    offset = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    row = first_row[edge_of_pair] + offset
    ex0, ey0, ex1, ey1 = x0[edge_of_pair], y0[edge_of_pair], x1[edge_of_pair], y1[edge_of_pair]
    x_cross = ex0 + (row - ey0) * (ex1 - ex0) / (ey1 - ey0)
    # the crossing toggles every lattice column x with x_cross < x, i.e. x >= floor(x_cross) + 1
    first_col = np.minimum(np.maximum(np.floor(x_cross) + 1, 0), cols).astype(np.int64)
    # only the rows and columns the crossings reach: left of the first toggle and from the last one
    # on (column cols: crossings right of the window) the parity is 0. Closed polygons cross every
    # row an even number of times, so one running sum over the rows laid end to end gives each
    # row's parity (back to 0 at every row's end)
    top, bottom = int(first_row.min()), int(stop_row[keep].max())
    left, right = int(first_col.min()), int(first_col.max())
    out[top:bottom, left:right] = _parity(row - top, first_col - left, bottom - top, right - left + 1)
    return out


def _parity(row: np.ndarray, column: np.ndarray, rows: int, width: int) -> np.ndarray:
    """The even-odd fill ``(rows, width - 1)`` of a block from its toggles (a toggle flips its column and
    all to its right in its row; toggles in the last column only end a row).

    Laid end to end, the rows are stretches of alternating parity between the sorted toggle positions,
    decoded in one ``np.repeat`` (two toggles at one position: a stretch of length zero). A row toggled
    an odd number of times (an open polygon) gets one more toggle in its last column, so that the next
    row starts outside, as a row-by-row fill would.
    """
    position = row * width + column
    odd = np.bincount(row, minlength=rows) & 1
    if odd.any():
        position = np.concatenate([position, np.flatnonzero(odd) * width + (width - 1)])
    position.sort()
    edges = np.concatenate([[0], position, [rows * width]])
    stretch_in = np.zeros(edges.size - 1, dtype=bool)
    stretch_in[1::2] = True
    return np.repeat(stretch_in, np.diff(edges)).reshape(rows, width)[:, :-1]


def fill_lattices(
    polygon_sets: Sequence[Sequence[np.ndarray]],
    window: tuple,
    out: np.ndarray,
    targets: Optional[Sequence[int]] = None,
) -> None:
    """:func:`fill_lattice` of several polygon sets on one window, into ``out[s]`` for set ``s``.

    The same arithmetic as :func:`fill_lattice` set by set, with the edge crossings of all sets
    found in one go (what costs there is numpy's per-call overhead, not the work).

    Parameters
    ----------
    polygon_sets : sequence of sequences of (N, 2) arrays
        Closed polygons, in lattice coordinates, of each set (e.g. of each contour plane).
    window : (r0, r1, c0, c1) ints
        Rows and columns to fill (as :func:`fill_lattice`).
    out : (T, r1 - r0, c1 - c0) bool array
        Receives the fills; ``out[targets[s]]`` (``out[s]`` without ``targets``) must be zeros.
    targets : sequence of ints, optional
        Where set ``s`` goes in ``out``.
    """
    r0, r1, c0, c1 = (int(v) for v in window)
    rows, cols = max(r1 - r0, 0), max(c1 - c0, 0)
    parts, owners = [], []
    for n, polygons in enumerate(polygon_sets):
        e = _edges(polygons)
        parts.append(e)
        owners.append(np.full(e.shape[0], n, dtype=np.int64))
    if rows == 0 or cols == 0 or not parts:
        return
    edges = np.concatenate(parts)
    owner = np.concatenate(owners)
    x0, y0, x1, y1 = edges[:, 0] - c0, edges[:, 1] - r0, edges[:, 2] - c0, edges[:, 3] - r0
    y_lo, y_hi = np.minimum(y0, y1), np.maximum(y0, y1)
    first_row = np.minimum(np.maximum(np.ceil(y_lo), 0), rows).astype(np.int64)
    stop_row = np.minimum(np.maximum(np.ceil(y_hi), 0), rows).astype(np.int64)
    counts = stop_row - first_row
    keep = counts > 0
    if not np.any(keep):
        return
    x0, y0, x1, y1, first_row, stop_row, counts, owner = (
        a[keep] for a in (x0, y0, x1, y1, first_row, stop_row, counts, owner)
    )
    edge_of_pair = np.repeat(np.arange(counts.size), counts)
    offset = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    row = first_row[edge_of_pair] + offset
    ex0, ey0, ex1, ey1 = x0[edge_of_pair], y0[edge_of_pair], x1[edge_of_pair], y1[edge_of_pair]
    x_cross = ex0 + (row - ey0) * (ex1 - ex0) / (ey1 - ey0)
    first_col = np.minimum(np.maximum(np.floor(x_cross) + 1, 0), cols).astype(np.int64)
    set_of_pair = owner[edge_of_pair]  # non-decreasing: edges were gathered set by set
    sets, starts = np.unique(set_of_pair, return_index=True)
    stops = np.append(starts[1:], set_of_pair.size)
    # each set's rows and columns (as fill_lattice restricts them)
    edge_starts = np.searchsorted(owner, sets)
    tops = np.minimum.reduceat(first_row, edge_starts)
    bottoms = np.maximum.reduceat(stop_row, edge_starts)
    lefts = np.minimum.reduceat(first_col, starts)
    rights = np.maximum.reduceat(first_col, starts)
    for n, a, b, top, bottom, left, right in zip(
        sets.tolist(), starts.tolist(), stops.tolist(), tops.tolist(), bottoms.tolist(), lefts.tolist(), rights.tolist()
    ):
        parity = _parity(row[a:b] - top, first_col[a:b] - left, bottom - top, right - left + 1)
        out[n if targets is None else targets[n], top:bottom, left:right] = parity
