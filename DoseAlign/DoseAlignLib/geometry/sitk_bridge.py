"""Conversions between engine volumes and SimpleITK images (LPS on both sides; array axes k, j, i)."""

from __future__ import annotations

import numpy as np

from ..errors import GeometryError
from .grid import Grid, Volume


def image_from_volume(volume: Volume):
    """A SimpleITK image with the volume's geometry (uniform, orthogonal grids only)."""
    import SimpleITK as sitk

    grid = volume.grid
    if not grid.is_uniform or not grid.is_orthogonal():
        raise GeometryError("SimpleITK images need an evenly spaced, orthogonal grid")
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetSpacing(grid.spacing.tolist())
    image.SetOrigin(grid.origin.tolist())
    image.SetDirection(grid.direction.ravel().tolist())
    return image


def grid_from_image(image, frame_of_reference_uid=None) -> Grid:
    """The grid of a SimpleITK image (its geometry as ITK understood it)."""
    size = image.GetSize()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    return Grid.from_spacing(
        (size[2], size[1], size[0]), image.GetSpacing(), image.GetOrigin(), direction, frame_of_reference_uid
    )


def volume_from_image(image, units: str = "", frame_of_reference_uid=None) -> Volume:
    """An engine volume from a SimpleITK image (array copied)."""
    import SimpleITK as sitk

    return Volume(sitk.GetArrayFromImage(image), grid_from_image(image, frame_of_reference_uid), units)
