"""Per-ROI DVH points on the output grid and on the native dose grid, and their differences."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..geometry.grid import Grid, Volume
from ..structures import dvh
from ..structures.masks import StructureMasks, voxel_volumes_cc
from .stats import INSIDE_TOLERANCE, DoseStats, dose_stats, inside_box, intersect_boxes, region_chunks


def roi_doses(dose: np.ndarray, grid: Grid, masks: StructureMasks, name: str) -> tuple:
    """(doses, voxel volumes) of the voxels of ROI ``name``; volumes scalar on uniform grids."""
    mask = masks.mask(name)
    if mask.binary.size == 0:
        return np.zeros(0), 0.0
    values = dose[mask.box][mask.binary]
    cc = voxel_volumes_cc(grid)
    if np.ndim(cc) == 0:
        return values, float(cc)
    per_slice = np.asarray(cc)[mask.box[0]]
    weights = np.broadcast_to(per_slice[:, None, None], mask.binary.shape)[mask.binary]
    return values, weights


def roi_dvh(
    volume: Volume,
    mask,
    bins: np.ndarray,
    prescription_gy: Optional[float] = None,
    support: Optional[tuple] = ...,
    stats: Optional[DoseStats] = None,
) -> tuple:
    """DVH points (:func:`~DoseAlignLib.structures.dvh.dvh_points`) and cumulative DVH (:func:`~DoseAlignLib.structures.dvh.cumulative_dvh`) of one ROI mask.

    On grids of equal voxels the doses are streamed from the mask's box (:func:`~DoseAlignLib.structures.dvh.uniform_dvh`),
    reading only the part of it where the dose is non-zero (``support``, from :func:`dose_stats`;
    found here when not given; ``stats`` gives it and keeps the ROI's dose sum for the body's
    mean dose); grids with uneven slices gather the doses and their voxel volumes.
    """
    if stats is not None:
        support = stats.support
    cc = voxel_volumes_cc(volume.grid)
    if mask.binary.size == 0:
        return dvh.dvh_points(np.zeros(0), 0.0, prescription_gy), np.zeros(np.shape(bins), dtype=np.float32)
    if np.ndim(cc) != 0:
        values = volume.array[mask.box][mask.binary]
        per_slice = np.asarray(cc)[mask.box[0]]
        weights = np.broadcast_to(per_slice[:, None, None], mask.binary.shape)[mask.binary]
        return dvh.dvh_points(values, weights, prescription_gy), dvh.cumulative_dvh(values, weights, bins)
    if support is ...:
        support = dose_stats(volume.array).support
    chunks = region_chunks(volume.array, mask.box, mask.binary, intersect_boxes(mask.box, support))
    totals: dict = {}
    points, curve = dvh.uniform_dvh(chunks, float(cc), bins, prescription_gy, count=mask.voxel_count, totals=totals)
    if stats is not None:
        stats.roi_sums[id(mask)] = (mask, totals["count"], totals["sum"])
    return points, curve


def outside_pct(mask, grid: Grid, other: Grid, box: Optional[tuple] = ...) -> float:
    """Share (% of voxels) of an ROI mask on ``grid`` whose centres lie outside ``other``'s extent.

    ``box`` is :func:`inside_box` ``(grid, other)`` when already known.
    """
    if mask.binary.size == 0 or not mask.voxel_count:
        return 0.0
    if box is ...:
        box = inside_box(grid, other)
    if box is not None:
        rel = intersect_boxes(mask.box, box)
        inside = 0 if rel is None else int(np.count_nonzero(mask.binary[rel]))
        return 100.0 * (mask.voxel_count - inside) / mask.voxel_count
    kb, jb, ib = mask.box
    limits = np.array([other.shape[2], other.shape[1], other.shape[0]], dtype=np.float64) - 0.5
    outside = 0
    for kk in range(mask.binary.shape[0]):
        jj, ii = np.nonzero(mask.binary[kk])
        if jj.size == 0:
            continue
        ijk = np.stack([ii + ib.start, jj + jb.start, np.full(jj.shape, kb.start + kk)], axis=-1).astype(np.float64)
        index = other.lps_to_index(grid.index_to_lps(ijk))
        inside = np.all((index >= -0.5 - INSIDE_TOLERANCE) & (index <= limits + INSIDE_TOLERANCE), axis=-1)
        outside += int(np.count_nonzero(~inside))
    return 100.0 * outside / mask.voxel_count


def roi_dvhs(
    output_dose: Volume,
    output_masks: StructureMasks,
    native_dose: Optional[Volume],
    native_masks: Optional[StructureMasks],
    prescription_gy: Optional[float] = None,
    *,
    output_stats: Optional[DoseStats] = None,
    native_stats: Optional[DoseStats] = None,
) -> tuple:
    """Per-ROI DVH points on both grids, their differences and the cumulative DVH arrays.

    ``output_stats`` and ``native_stats`` (:func:`dose_stats` of the two doses) are found here
    when not given.

    Returns
    -------
    (list of dict, dict of arrays)
        One entry per ROI (``name``, ``output``, ``native``, ``diff``) and the arrays
        ``dvh_dose_gy`` (B,), ``dvh_output`` (N, B) and, with a native grid, ``dvh_native`` (N, B),
        in cm^3 receiving at least each dose.
    """
    compare = native_masks is not None and native_dose is not None
    output_stats = output_stats if output_stats is not None else dose_stats(output_dose.array)
    top = output_stats.dmax
    if native_dose is not None:
        native_stats = native_stats if native_stats is not None else dose_stats(native_dose.array)
        top = max(top, native_stats.dmax)
    bins = dvh.dose_bins(top)
    names = output_masks.names
    curves_out = np.zeros((len(names), bins.size), dtype=np.float32)
    curves_native = np.zeros((len(names), bins.size), dtype=np.float32) if native_masks is not None else None
    box = inside_box(output_dose.grid, native_dose.grid) if compare else None
    entries = []
    for n, name in enumerate(names):
        if not output_masks.has(name):  # a fixed (--rois) channel this case lacks: its DVH rows stay 0
            continue
        mask = output_masks.mask(name)
        points, curves_out[n] = roi_dvh(output_dose, mask, bins, prescription_gy, stats=output_stats)
        entry = {"name": name, "output": points, "native": None, "diff": None}
        if compare:
            entry["outside_native_grid_pct"] = outside_pct(mask, output_dose.grid, native_dose.grid, box)
            native_mask = native_masks.mask(name)
            entry["native"], curves_native[n] = roi_dvh(
                native_dose, native_mask, bins, prescription_gy, stats=native_stats
            )
            entry["diff"] = dvh.compare_points(entry["native"], entry["output"])
        entries.append(entry)
    arrays = {"dvh_dose_gy": bins, "dvh_output": curves_out}
    if curves_native is not None:
        arrays["dvh_native"] = curves_native
    return entries, arrays
