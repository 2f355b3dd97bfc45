"""Reference grids: the grid every output array of a case shares."""

from __future__ import annotations

import numpy as np

from .grid import Grid
from .options import AlignOptions, CustomBox, ReferenceGrid


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
