"""Reference grids: the grid every output array of a case shares, and the check that the dose reaches it.

A custom cube is centred on a :class:`Region` and a grid may be cut down to one (crop). A region
is a box of patient space, held as its 8 corners (LPS): the PTVs' box, one ROI's, the body's, the
dose above a fraction of its maximum, the dose maximum. :func:`auto_region` is the rule both the
cube and the OpenKBP writer use: the PTVs when the case has any, else the dose above 10 % of its
maximum, else the whole grid given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import GeometryError
from ..options import AlignOptions, CustomBox, ReferenceGrid
from .grid import Grid, Volume

#: Without a PTV a cube is centred on the dose above this fraction of its maximum.
DOSE_BOX_FRACTION = 0.1
#: ``crop="dose"`` keeps the dose above this fraction of its maximum (and a margin).
CROP_DOSE_FRACTION = 0.05


@dataclass(frozen=True)
class Region:
    """A box of patient space: its 8 corners (LPS mm, ``(8, 3)``) and how it was found (for meta.json)."""

    corners: np.ndarray
    about: dict = field(default_factory=dict)

    def centre(self) -> np.ndarray:
        """The box's centre (LPS mm)."""
        return np.asarray(self.corners, dtype=np.float64).mean(axis=0)

    @classmethod
    def around(cls, points: np.ndarray, axes: np.ndarray, about: dict) -> Region:
        """The box along ``axes`` (3x3, orthonormal columns) holding every point ``(n, 3)``."""
        axes = np.asarray(axes, dtype=np.float64)
        local = np.asarray(points, dtype=np.float64).reshape(-1, 3) @ axes
        lo, hi = local.min(axis=0), local.max(axis=0)
        corners = [axes @ np.array([x, y, z]) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        return cls(np.array(corners), about)

    @classmethod
    def of_box(cls, grid: Grid, box: tuple, about: dict) -> Region:
        """The extent (outer voxel faces) of the voxels ``box`` (``(k, j, i)`` slices) of ``grid``."""
        return cls(grid.crop(*box).corner_points(), about)


def box_of(mask: np.ndarray) -> Optional[tuple]:
    """The ``(k, j, i)`` slices of a mask's bounding box, or None when it is empty."""
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def dose_region(volumes: Sequence[Volume], fraction: float, axes: Optional[np.ndarray] = None) -> Optional[Region]:
    """The box of the dose at or above ``fraction`` of its maximum; None when there is no dose.

    Doses on several grids (summed only after resampling) count each voxel at or above the
    fraction of the largest maximum of them, the union of their boxes along ``axes``.
    """
    peak = max((float(v.array.max()) if v.array.size else 0.0) for v in volumes)
    if peak <= 0:
        return None
    threshold = fraction * peak
    about = {"on": "dose", "threshold_gy": threshold}
    regions = []
    for volume in volumes:
        box = box_of(volume.array >= threshold)
        if box is not None:
            regions.append(Region.of_box(volume.grid, box, {**about, "box_kji": [[s.start, s.stop] for s in box]}))
    if len(regions) == 1:
        return regions[0]
    axes = volumes[0].grid.direction if axes is None else axes
    return Region.around(np.concatenate([r.corners for r in regions]), axes, about)


def dmax_region(volumes: Sequence[Volume]) -> Optional[Region]:
    """The centre of the dose maximum's voxel (of the dose with the highest maximum); None without dose."""
    best = max(volumes, key=lambda v: float(v.array.max()) if v.array.size else 0.0)
    if not best.array.size or float(best.array.max()) <= 0:
        return None
    k, j, i = np.unravel_index(int(np.argmax(best.array)), best.array.shape)
    point = best.grid.index_to_lps(np.array([i, j, k], dtype=np.float64))
    about = {"on": "dmax", "dmax_gy": float(best.array[k, j, i]), "index_kji": [int(k), int(j), int(i)]}
    return Region(np.repeat(point[np.newaxis], 8, axis=0), about)


def auto_region(ptv: Optional[Region], dose: Sequence[Volume], whole: Region) -> Region:
    """What a cube is centred on by default: the PTVs' box when there are PTVs, else the dose above
    :data:`DOSE_BOX_FRACTION` of its maximum, else ``whole``."""
    if ptv is not None:
        return ptv
    return dose_region(dose, DOSE_BOX_FRACTION) or whole


def crop_box(grid: Grid, region: Region, margin_mm: float) -> Optional[tuple]:
    """The ``(k, j, i)`` slices of ``grid`` whose voxel centres lie within ``region`` + ``margin_mm``.

    None when the region misses the grid. Voxels the box's faces cut are kept.
    """
    ijk = grid.lps_to_index(region.corners)
    pad = float(margin_mm) / np.asarray(grid.spacing, dtype=np.float64)
    sizes = np.array([grid.shape[2], grid.shape[1], grid.shape[0]])
    lo = np.maximum(np.floor(ijk.min(axis=0) - pad + 1e-6).astype(int), 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0) + pad - 1e-6).astype(int), sizes - 1)
    if np.any(hi < lo):
        return None
    return (slice(lo[2], hi[2] + 1), slice(lo[1], hi[1] + 1), slice(lo[0], hi[0] + 1))


def uniform_cover(grid: Grid) -> Grid:
    """An evenly spaced grid over a grid with uneven slices: same axes, the smallest slice step."""
    if grid.is_uniform:
        return grid
    step = float(np.min(np.diff(grid.k_offsets)))
    count = int(np.floor(grid.k_offsets[-1] / step + 1e-6)) + 1
    spacing = grid.spacing.copy()
    spacing[2] = step
    return Grid.from_spacing(
        (count, grid.shape[1], grid.shape[2]), spacing, grid.origin, grid.direction, grid.frame_of_reference_uid
    )


def covering_grid(grids: Sequence[Grid]) -> Grid:
    """A uniform grid whose voxel centres cover every voxel centre of ``grids`` (doses of one sum on different grids).

    The rule: the first grid's axes and voxel size (its mean slice step when uneven), its lattice of voxel
    centres grown to the smallest box of that lattice holding every grid's outer voxel centres. The first
    grid's voxels are voxels of the cover; the others' lie inside it.
    """
    first = grids[0]
    if all(g.equal(first) for g in grids[1:]) and first.is_uniform:
        return first
    step = first.affine[:3, :3].copy()
    step[:, 2] = first.direction[:, 2] * first.spacing[2]
    inverse = np.linalg.inv(step)
    points = np.concatenate([g.corner_points(half_voxel=False) for g in grids])
    ijk = (points - first.origin) @ inverse.T
    low = np.floor(ijk.min(axis=0) + 1e-6)
    high = np.ceil(ijk.max(axis=0) - 1e-6)
    counts = (high - low).astype(int) + 1
    origin = first.origin + step @ low
    return Grid.from_spacing(
        (counts[2], counts[1], counts[0]), first.spacing, origin, first.direction, first.frame_of_reference_uid
    )


def reference_grid(ct_grid: Grid, dose_grid: Grid, options: AlignOptions, centre: Optional[Region] = None) -> tuple:
    """The output grid for ``options.reference`` and a sentence saying how it was made.

    A cube is centred on ``centre`` (default: on the dose grid).
    """
    if options.reference is ReferenceGrid.CT:
        return ct_grid, "the CT grid"
    if options.reference is ReferenceGrid.DOSE:
        if dose_grid.is_uniform:
            return dose_grid, "the dose grid"
        cover = uniform_cover(dose_grid)
        return cover, f"the dose grid, made uniform at its smallest frame step ({cover.spacing[2]:g} mm)"
    return custom_grid(ct_grid, dose_grid, options, centre)


def custom_grid(ct_grid: Grid, dose_grid: Grid, options: AlignOptions, centre: Optional[Region] = None) -> tuple:
    """A grid on the CT's axes at ``options.custom_spacing`` over the chosen box.

    A cube is centred on ``centre`` (a :class:`Region`; default: the dose grid's centre).
    """
    axes = ct_grid.direction
    spacing = np.asarray(options.custom_spacing, dtype=np.float64)
    if options.custom_box is CustomBox.CUBE:
        size = np.asarray(options.custom_size)
        middle = centre.centre() if centre is not None else dose_grid.corner_points().mean(axis=0)
        origin = middle - axes @ (spacing * (size - 1) / 2.0)
        grid = Grid.from_spacing((size[2], size[1], size[0]), spacing, origin, axes, ct_grid.frame_of_reference_uid)
        on = _describe(centre.about) if centre is not None else "the dose grid"
        return grid, f"{size.tolist()} voxels at {spacing.tolist()} mm centred on {on}"
    box_of = dose_grid if options.custom_box is CustomBox.DOSE else ct_grid
    # the box spans the chosen grid's outer voxel centres, in the CT's axes
    local = (box_of.corner_points(half_voxel=False) - ct_grid.origin) @ axes
    lo, hi = local.min(axis=0), local.max(axis=0)
    # enough voxels that the last centre reaches the box's far side: nothing of the box is left out
    counts = np.ceil((hi - lo) / spacing - 1e-6).astype(int) + 1
    origin = ct_grid.origin + axes @ lo
    grid = Grid.from_spacing((counts[2], counts[1], counts[0]), spacing, origin, axes, ct_grid.frame_of_reference_uid)
    return grid, f"the {options.custom_box.value} extent at {spacing.tolist()} mm"


def check_overlap(ct_grid, dose_grid, dose_path: Optional[Path]) -> None:
    """The dose grid must reach the CT: a dose wholly outside it would export as zeros."""
    extent = dose_grid.extent_in(ct_grid)  # rows i, j, k: (lo, hi) in CT index space
    sizes = np.array([ct_grid.shape[2], ct_grid.shape[1], ct_grid.shape[0]], dtype=float)
    lo = np.maximum(extent[:, 0], -0.5)
    hi = np.minimum(extent[:, 1], sizes - 0.5)
    if not np.all(np.isfinite(extent)) or np.any(hi <= lo):
        raise GeometryError(
            "the dose grid lies wholly outside the CT: its dose would be exported as zeros",
            path=dose_path,
            tag="(0020,0032) ImagePositionPatient",
            hint="the dose belongs to another CT, or its position is damaged",
        )


def _describe(about: dict) -> str:
    on = about.get("on", "")
    if on == "ptv":
        return f"the PTVs' box ({', '.join(about.get('rois', []))})"
    if on == "dose":
        return f"the dose above {about.get('threshold_gy', 0):.4g} Gy"
    if on == "roi":
        return f"ROI {about.get('roi')!r}"
    if on == "body":
        return f"the body ({about.get('source', '')})"
    if on == "dmax":
        return f"the dose maximum ({about.get('dmax_gy', 0):.4g} Gy)"
    return str(on or "the region")
