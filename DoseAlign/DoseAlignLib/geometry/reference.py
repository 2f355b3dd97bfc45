"""Reference grids: the grid every output array of a case shares, and the check that the dose reaches it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import GeometryError
from ..options import AlignOptions, CustomBox, ReferenceGrid
from .grid import Grid


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


def reference_grid(ct_grid: Grid, dose_grid: Grid, options: AlignOptions) -> tuple:
    """The output grid for ``options.reference`` and a sentence saying how it was made."""
    if options.reference is ReferenceGrid.CT:
        return ct_grid, "the CT grid"
    if options.reference is ReferenceGrid.DOSE:
        if dose_grid.is_uniform:
            return dose_grid, "the dose grid"
        cover = uniform_cover(dose_grid)
        return cover, f"the dose grid, made uniform at its smallest frame step ({cover.spacing[2]:g} mm)"
    return custom_grid(ct_grid, dose_grid, options)


def custom_grid(ct_grid: Grid, dose_grid: Grid, options: AlignOptions) -> tuple:
    """A grid on the CT's axes at ``options.custom_spacing`` over the chosen box."""
    axes = ct_grid.direction
    spacing = np.asarray(options.custom_spacing, dtype=np.float64)
    if options.custom_box is CustomBox.CUBE:
        size = np.asarray(options.custom_size)
        centre = dose_grid.corner_points().mean(axis=0)
        origin = centre - axes @ (spacing * (size - 1) / 2.0)
        grid = Grid.from_spacing((size[2], size[1], size[0]), spacing, origin, axes, ct_grid.frame_of_reference_uid)
        return grid, f"{size.tolist()} voxels at {spacing.tolist()} mm centred on the dose grid"
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
