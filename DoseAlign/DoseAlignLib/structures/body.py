"""The body mask from a CT, for cases without an EXTERNAL ROI.

The mask is found on runs, not voxels: each row of the CT (fixed slice k and row j) is cut into runs
of consecutive voxels above the threshold; runs that overlap along i in neighbouring rows of a slice
or in the same row of neighbouring slices touch by a face. A body CT has a few runs per row, so the
connected components, the largest one and its enclosed holes cost far less time and memory than a
labelled volume. A CT with very many runs per voxel (noise around the threshold) falls back to
SimpleITK's voxel filters, which give the same mask.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

#: CT number above which a voxel may belong to the body when no EXTERNAL ROI exists.
BODY_THRESHOLD_HU = -500.0
#: Slices handled at once when runs are found or painted (the temporaries stay a few MB).
SLAB_SLICES = 16
#: More runs than voxels / this: the run lists would outgrow a labelled volume; SimpleITK takes over.
VOXELS_PER_RUN_MIN = 8


def body_from_ct(ct: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """Body mask from a CT: voxels above ``threshold_hu``, the largest connected part, holes filled.

    The largest part is the largest 6-connected (face) component in 3-D; enclosed holes (lungs, bowel
    gas) are filled slice by slice: background not 4-connected within its slice to the slice's border.
    This is what SimpleITK's ConnectedComponent (fullyConnected off), RelabelComponent and a per-slice
    BinaryFillhole (fullyConnected off) give, and what :func:`body_from_ct_voxels` computes with them;
    of two largest parts of equal size, the one reached first in (k, j, i) order is taken.

    Parameters
    ----------
    ct : (K, J, I) array
        CT numbers (HU).
    threshold_hu : float

    Returns
    -------
    (K, J, I) bool array
    """
    ct = np.asarray(ct)
    if ct.ndim != 3:
        raise ValueError(f"body_from_ct needs a (K, J, I) CT, not an array of shape {ct.shape}")
    if ct.size == 0:
        return np.zeros(ct.shape, dtype=bool)
    runs = _runs_above(ct, threshold_hu, max_runs=ct.size // VOXELS_PER_RUN_MIN)
    if runs is None:
        return body_from_ct_voxels(ct, threshold_hu)
    row, start, end = runs
    if row.size == 0:
        return np.zeros(ct.shape, dtype=bool)
    slices, rows, columns = ct.shape
    labels = _components(row.size, *_touching(row, start, end, rows, columns))
    largest = labels == np.bincount(labels, weights=end - start).argmax()  # the first root on ties
    row, start, end = row[largest], start[largest], end[largest]
    g_row, g_start, g_end = _gaps(row, start, end, slices * rows, columns)
    a, b = _overlapping(g_row, g_start, g_end, 1, columns, rows)
    g_labels = _components(g_row.size, a, b)
    j = g_row % rows
    border = (g_start == 0) | (g_end == columns) | (j == 0) | (j == rows - 1)
    open_part = np.zeros(g_row.size, dtype=bool)
    open_part[g_labels[border]] = True
    hole = ~open_part[g_labels]
    return _paint(ct.shape, (row, start, end), (g_row[hole], g_start[hole], g_end[hole]))


def body_from_ct_voxels(ct: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """:func:`body_from_ct` with SimpleITK's voxel filters (labelled volumes: ~13 bytes per voxel at the peak).

    Connected components and their sizes come from ConnectedComponent, then RelabelComponent (which
    numbers components by decreasing size); enclosed holes are filled slice by slice with BinaryFillhole.
    """
    import SimpleITK as sitk

    above = np.ascontiguousarray(ct > threshold_hu, dtype=np.uint8)
    if not above.any():
        return above.astype(bool)
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(above)))
    body = sitk.GetArrayFromImage(labels) == 1
    filled = np.empty_like(body)
    for k in range(body.shape[0]):
        image = sitk.GetImageFromArray(body[k].astype(np.uint8))
        filled[k] = sitk.GetArrayFromImage(sitk.BinaryFillhole(image, fullyConnected=False, foregroundValue=1)) > 0
    return filled


def _runs_above(ct: np.ndarray, threshold_hu: float, max_runs: int) -> Optional[tuple]:
    """``(row, start, end)`` of every run of voxels above ``threshold_hu`` along i, ordered by row and start.

    Rows are numbered ``k * J + j``; a run covers ``start <= i < end``. None when there are more than
    ``max_runs`` runs.
    """
    slices, rows, columns = ct.shape
    width = columns + 1  # a zero after each row: no run crosses into the next row
    buffer = np.zeros((min(SLAB_SLICES, slices), rows, width), dtype=np.int8)
    found_rows, found_starts, found_ends = [], [], []
    count = 0
    for k0 in range(0, slices, SLAB_SLICES):
        k1 = min(slices, k0 + SLAB_SLICES)
        part = buffer[: k1 - k0]
        np.greater(ct[k0:k1], threshold_hu, out=part[:, :, :columns].view(bool))
        flat = part.reshape(-1)
        edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        if flat[0]:
            edges = np.concatenate([[0], edges])
        starts, ends = edges[0::2], edges[1::2]
        count += starts.size
        if count > max_runs:
            return None
        row = starts // width
        found_rows.append(row + k0 * rows)
        found_starts.append(starts - row * width)
        found_ends.append(ends - row * width)
    return np.concatenate(found_rows), np.concatenate(found_starts), np.concatenate(found_ends)


def _overlapping(row, start, end, step: int, columns: int, rows: Optional[int] = None) -> tuple:
    """Pairs ``(a, b)`` of run indices where run b lies in row ``row[a] + step`` and overlaps run a along i.

    Runs are ordered by row and start. With ``rows`` (J), row pairs that cross from one slice to the
    next are left out (the in-plane neighbours of a slice's last row are not the next slice's first).
    """
    width = columns + 1
    key_start = row * width + start  # increasing: runs of a row are disjoint and ordered
    key_end = row * width + end
    target = (row + step) * width
    first = np.searchsorted(key_end, target + start, side="right")  # first run of the target row ending after start
    stop = np.searchsorted(key_start, target + end, side="left")  # runs of the target row starting before end
    counts = np.maximum(stop - first, 0)
    if rows is not None:
        counts[(row + step) % rows == 0] = 0
    a = np.repeat(np.arange(row.size), counts)
    offsets = np.arange(a.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return a, np.repeat(first, counts) + offsets


def _touching(row, start, end, rows: int, columns: int) -> tuple:
    """Run pairs that share a face: neighbouring rows of a slice, the same row of neighbouring slices."""
    a1, b1 = _overlapping(row, start, end, 1, columns, rows)
    a2, b2 = _overlapping(row, start, end, rows, columns)
    return np.concatenate([a1, a2]), np.concatenate([b1, b2])


def _components(count: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The component of each of ``count`` nodes joined by edges ``(a, b)``: its smallest node index.

    Each round hooks every root to the smallest root it has an edge to, then compresses the paths;
    the roots at least halve per round, so there are about log2(count) rounds.
    """
    parent = np.arange(count)
    while True:
        root_a, root_b = parent[a], parent[b]
        apart = root_a != root_b
        if not apart.any():
            return parent
        a, b, root_a, root_b = a[apart], b[apart], root_a[apart], root_b[apart]
        np.minimum.at(parent, np.maximum(root_a, root_b), np.minimum(root_a, root_b))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def _gaps(row, start, end, row_count: int, columns: int) -> tuple:
    """The background runs of all ``row_count`` rows around the runs given, ordered by row and start."""
    last_of_row = np.r_[row[1:] != row[:-1], True]
    first_of_row = np.r_[True, last_of_row[:-1]]
    first_start = np.full(row_count, columns, dtype=start.dtype)  # a row without runs: one gap over it
    first_start[row[first_of_row]] = start[first_of_row]
    next_start = np.where(last_of_row, columns, np.r_[start[1:], columns])
    g_row = np.concatenate([np.arange(row_count, dtype=row.dtype), row])
    g_start = np.concatenate([np.zeros(row_count, dtype=start.dtype), end])
    g_end = np.concatenate([first_start, next_start])
    keep = g_end > g_start
    g_row, g_start, g_end = g_row[keep], g_start[keep], g_end[keep]
    order = np.lexsort((g_start, g_row))
    return g_row[order], g_start[order], g_end[order]


def _paint(shape: tuple, *run_sets: tuple) -> np.ndarray:
    """A bool volume true on the given (disjoint) runs.

    The volume is decoded from its run lengths in one ``np.repeat``: along the flat array, off and on
    stretches alternate between the runs' starts and ends (a stretch of length zero where two runs touch).
    This writes each voxel once; a cumulative sum over the volume took ten times as long.
    """
    slices, rows, columns = shape
    first = np.concatenate([r[0] for r in run_sets]).astype(np.int64) * columns
    starts = first + np.concatenate([r[1] for r in run_sets])
    ends = first + np.concatenate([r[2] for r in run_sets])
    order = np.argsort(starts, kind="stable")
    edges = np.empty(2 * starts.size + 2, dtype=np.int64)
    edges[0], edges[-1] = 0, slices * rows * columns
    edges[1:-1:2] = starts[order]
    edges[2:-1:2] = ends[order]
    stretch_on = np.zeros(edges.size - 1, dtype=bool)
    stretch_on[1::2] = True
    return np.repeat(stretch_on, np.diff(edges)).reshape(shape)
