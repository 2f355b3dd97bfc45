"""CT series: geometry from the raw tags of every slice, and pixels read straight into one array.

Slices are ordered by their position along the slice normal (row x column), never by
InstanceNumber or file name. Uneven spacing, missing slices and gantry tilt are detected; such a
series keeps its exact geometry here and is regularized onto an orthogonal grid by the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import dicomio
from .errors import GeometryError, InputError
from .grid import Grid, Volume, orientation_vectors
from .scan import CtSeries

#: Slice positions closer than this (mm) are the same position.
SAME_POSITION_MM = 0.01
#: Steps within this fraction of the typical step count as uniform.
UNIFORM_STEP_FRACTION = 0.01
#: In-plane drift of slice origins (mm) above which the series is tilted or sheared.
TILT_TOLERANCE_MM = 0.01


@dataclass
class CtGeometry:
    """The CT's exact grid and what was checked to get it."""

    grid: Grid
    order: list  # indices into series.slices, in increasing position along the normal
    uniform: bool
    typical_step_mm: float
    tilt_degrees: float
    missing_slices: list = field(default_factory=list)  # (after position mm, number missing)
    checks: list = field(default_factory=list)  # dicts: check, result, detail

    @property
    def needs_regularization(self) -> bool:
        return (not self.uniform) or abs(self.tilt_degrees) > 1e-3


def ct_geometry(series: CtSeries) -> CtGeometry:
    """Derive the grid of a CT series from each slice's ImagePositionPatient and orientation."""
    if not series.slices:
        raise InputError("CT series has no slices", path=series.folder)
    first = series.slices[0]
    tag_iop = "(0020,0037) ImageOrientationPatient"
    tag_ipp = "(0020,0032) ImagePositionPatient"
    checks = []
    iop = first.info.get("image_orientation")
    if iop is None:
        raise GeometryError("ImageOrientationPatient is missing", path=first.path, tag=tag_iop)
    row_dir, col_dir = _orientation(iop, first.path)
    normal = np.cross(row_dir, col_dir)
    spacing = first.info.get("pixel_spacing")
    if spacing is None or len(spacing) != 2 or min(spacing) <= 0:
        raise GeometryError(
            f"PixelSpacing is missing or not positive: {spacing}", path=first.path, tag="(0028,0030) PixelSpacing"
        )
    positions = []
    for obj in series.slices:
        ipp = obj.info.get("image_position")
        if ipp is None or len(ipp) != 3 or not np.all(np.isfinite(ipp)):
            raise GeometryError(f"ImagePositionPatient is missing or invalid: {ipp}", path=obj.path, tag=tag_ipp)
        positions.append(ipp)
    positions = np.array(positions, dtype=np.float64)
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    distance = distance[order]
    positions = positions[order]
    checks.append({"check": "slice order", "result": "ok", "detail": "sorted by position along the slice normal"})
    if distance.size > 1:
        same = np.diff(distance) < SAME_POSITION_MM
        if np.any(same):
            n = int(np.argmax(same))
            a, b = series.slices[order[n]], series.slices[order[n + 1]]
            raise GeometryError(
                f"two slices at one position ({distance[n]:.3f} mm along the normal): {a.rel_path} and {b.rel_path}",
                path=b.path,
                tag=tag_ipp,
                hint="remove the duplicate slice or split the series",
            )
    offsets = distance - distance[0]
    steps = np.diff(offsets)
    typical = float(np.median(steps)) if steps.size else float(min(spacing))
    uniform = bool(
        steps.size == 0 or np.all(np.abs(steps - typical) <= max(SAME_POSITION_MM, UNIFORM_STEP_FRACTION * typical))
    )
    missing = []
    if not uniform:
        for n, step in enumerate(steps):
            ratio = step / typical
            if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
                missing.append((float(distance[n]), int(round(ratio)) - 1))
    checks.append(
        {
            "check": "slice spacing",
            "result": "ok" if uniform else "uneven",
            "detail": f"{steps.size + 1} slices, step {typical:.4g} mm"
            + ("" if uniform else f" (steps {steps.min():.4g} to {steps.max():.4g} mm)"),
        }
    )
    if missing:
        checks.append(
            {
                "check": "missing slices",
                "result": "found",
                "detail": "; ".join(f"{m} missing after {d:.2f} mm" for d, m in missing),
            }
        )
    # in-plane drift of the slice origins: gantry tilt (a linear drift) or broken positions
    drift = (positions - positions[0]) - np.outer(offsets, normal)
    tilt = 0.0
    affine_k = normal * typical
    if distance.size > 1 and np.max(np.linalg.norm(drift, axis=1)) > TILT_TOLERANCE_MM:
        shear = drift[-1] / offsets[-1]
        if np.max(np.linalg.norm(drift - np.outer(offsets, shear), axis=1)) > 10 * TILT_TOLERANCE_MM:
            raise GeometryError(
                "slice origins do not lie on one line (neither a stack nor a tilted stack)",
                path=first.path,
                tag=tag_ipp,
            )
        tilt = float(np.degrees(np.arctan(np.linalg.norm(shear))))
        if not uniform:
            raise GeometryError(
                f"gantry tilt ({tilt:.2f} deg) together with uneven slice spacing is not supported",
                path=first.path,
                tag=tag_ipp,
            )
        affine_k = (normal + shear) * typical
    checks.append(
        {
            "check": "gantry tilt",
            "result": "ok" if tilt == 0.0 else "tilted",
            "detail": f"{tilt:.3f} deg from slice positions",
        }
    )
    rows, columns = int(first.info["rows"]), int(first.info["columns"])
    grid = Grid.from_dicom(
        image_position=positions[0],
        image_orientation=np.concatenate([row_dir, col_dir]),
        pixel_spacing=spacing,
        slice_offsets=offsets,
        rows=rows,
        columns=columns,
        frame_of_reference_uid=series.frame_of_reference_uid or None,
    )
    if tilt:
        affine = grid.affine.copy()
        affine[:3, 2] = affine_k
        grid = Grid(grid.shape, affine, grid.frame_of_reference_uid)
    checks.append({"check": "orientation", "result": "ok", "detail": _orientation_name(row_dir, col_dir)})
    return CtGeometry(grid, [int(i) for i in order], uniform, typical, tilt, missing, checks)


def read_ct(series: CtSeries, geometry: Optional[CtGeometry] = None, dtype: str = "int16") -> Volume:
    """Read the pixels of every slice into one ``(K, J, I)`` HU array on the series' exact grid.

    ``dtype`` int16 rounds HU to whole numbers (CT values are stored as integers; a non-integer
    RescaleSlope is rounded away); float32 keeps them as computed.
    """
    geometry = geometry or ct_geometry(series)
    shape = geometry.grid.shape
    out = np.empty(shape, dtype=np.int16 if dtype == "int16" else np.float32)
    reference_iop = np.array(series.slices[geometry.order[0]].info["image_orientation"])
    for k, index in enumerate(geometry.order):
        obj = series.slices[index]
        ds = dicomio.read_header(obj.path, stop_before_pixels=False)
        iop = obj.info.get("image_orientation")
        if iop is None or not np.allclose(iop, reference_iop, atol=1e-4):
            raise GeometryError(
                "slice orientation differs from the rest of the series",
                path=obj.path,
                tag="(0020,0037) ImageOrientationPatient",
            )
        pixels = dicomio.single_frame_pixels(ds, obj.path)
        if pixels.shape != shape[1:]:
            raise InputError(
                f"slice has {pixels.shape} pixels, the series {shape[1:]}", path=obj.path, tag="(0028,0010) Rows"
            )
        slope = dicomio.number(ds, "RescaleSlope", "(0028,1053) RescaleSlope", obj.path, 1.0)
        intercept = dicomio.number(ds, "RescaleIntercept", "(0028,1052) RescaleIntercept", obj.path, 0.0)
        if slope == 1.0 and float(intercept).is_integer() and dtype == "int16":
            # exact integer path: no float round trip
            np.add(pixels, np.int32(intercept), out=out[k], casting="unsafe")
        else:
            hu = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
            out[k] = np.rint(hu) if dtype == "int16" else hu
    return Volume(out, geometry.grid, units="HU", description=f"CT series {series.series_uid}")


def regular_grid(geometry: CtGeometry) -> Grid:
    """The orthogonal, evenly spaced grid covering a CT with uneven slices or gantry tilt.

    In-plane axes and spacing stay; k runs along the slice normal at the typical step; the box
    covers every slice's pixels.
    """
    grid = geometry.grid
    row_dir, col_dir = grid.direction[:, 0], grid.direction[:, 1]
    normal = np.cross(row_dir, col_dir)
    axes = np.stack([row_dir, col_dir, normal], axis=1)
    corners = grid.corner_points(half_voxel=False)
    local = (corners - grid.origin) @ axes
    lo, hi = local.min(axis=0), local.max(axis=0)
    spacing = np.array([grid.spacing[0], grid.spacing[1], geometry.typical_step_mm])
    counts = np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1
    origin = grid.origin + axes @ lo
    return Grid.from_spacing((counts[2], counts[1], counts[0]), spacing, origin, axes, grid.frame_of_reference_uid)


def _orientation(iop, path) -> tuple:
    try:
        return orientation_vectors(iop)
    except GeometryError as error:
        raise GeometryError(error.message, path=path, tag=error.tag) from None


def _orientation_name(row_dir: np.ndarray, col_dir: np.ndarray) -> str:
    """Name the patient position a CT orientation corresponds to (HFS, FFP, ...) or 'oblique'."""
    known = {
        (1, 0, 0, 0, 1, 0): "HFS",
        (-1, 0, 0, 0, -1, 0): "HFP",
        (-1, 0, 0, 0, 1, 0): "FFS",
        (1, 0, 0, 0, -1, 0): "FFP",
        (0, -1, 0, 1, 0, 0): "HFDL",
        (0, 1, 0, -1, 0, 0): "HFDR",
        (0, 1, 0, 1, 0, 0): "FFDL",
        (0, -1, 0, -1, 0, 0): "FFDR",
    }
    values = np.concatenate([row_dir, col_dir])
    rounded = tuple(int(v) for v in np.round(values))
    if rounded in known and np.allclose(values, rounded, atol=1e-4):
        return f"axial, as written for {known[rounded]}"
    return "oblique (" + ", ".join(f"{v:.4f}" for v in values) + ")"
