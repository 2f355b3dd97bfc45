"""RTDOSE: the dose grid from the raw tags and the dose in Gy.

Frame positions come from GridFrameOffsetVector (3004,000C) as the standard defines it, whether
relative (first value 0) or absolute ("option b": patient z of each frame), increasing or
decreasing, uniform or not; DoseGridScaling is always applied. A reader that takes the frame step
from the first two offsets (GDCM, and so ITK and Slicer) is wrong for uneven frames; this is not.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ..errors import GeometryError, InputError, UnitsError
from ..geometry.grid import Grid, Volume, orientation_vectors
from . import headers

TAG_GFOV = "(3004,000C) GridFrameOffsetVector"
TAG_SCALING = "(3004,000E) DoseGridScaling"
TAG_UNITS = "(3004,0002) DoseUnits"
#: How close (mm) GFOV[0] must be to the first frame's z to be read as absolute ("option b").
ABSOLUTE_GFOV_TOLERANCE_MM = 0.01
#: How close to z the dose's slice normal must be (its z component) for absolute offsets: within about 5 degrees.
AXIAL_NORMAL_Z = 0.996
#: How far (mm) GFOV[0] may be from the first frame's z and still be read as absolute, with a warning: values rounded
#: when written (and at most a quarter of the frame step: a relative vector starting elsewhere than 0 is not that close).
NEAR_ABSOLUTE_GFOV_MM = 0.5
#: A dose above this (Gy) anywhere comes from a damaged DoseGridScaling or pixel data.
MAX_DOSE_GY = 1.0e5
#: A dose whose maximum is above 0 but below this (Gy) comes from a damaged scaling: no delivered dose is that small.
MIN_PEAK_GY = 1.0e-4
#: DoseGridScaling (Gy per stored unit) below this is damaged: even 32-bit data would give less than 4 mGy.
MIN_SCALING = 1.0e-12
TAG_TYPE = "(3004,0004) DoseType"
#: DoseType values that are dose: PHYSICAL, and EFFECTIVE (biologically weighted, labelled so in meta.json).
DOSE_TYPES = ("PHYSICAL", "EFFECTIVE")


@dataclass
class DoseGeometry:
    """The dose grid plus what the frame offsets looked like."""

    grid: Grid
    gfov_mode: str  # "relative", "absolute" or "single frame"
    frame_order: str  # "increasing" or "decreasing" along the slice normal
    uniform: bool
    flipped: bool  # frames were reversed so that k increases along the normal
    warnings: list = field(default_factory=list)

    def describe(self) -> dict:
        return {
            "gfov_mode": self.gfov_mode,
            "frame_order": self.frame_order,
            "uniform_frames": self.uniform,
            "warnings": list(self.warnings),
        }


@dataclass
class DoseInfo:
    """What the dose means: units, type, summation type and the scaling that was applied."""

    units: str
    dose_type: str
    summation_type: str
    scaling: float
    bits_allocated: int


def dose_geometry(ds: Dataset, path: Path) -> DoseGeometry:
    """Compute the dose grid of an RTDOSE data set (header only is enough)."""
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        raise GeometryError("ImageOrientationPatient is missing", path=path, tag="(0020,0037) ImageOrientationPatient")
    try:
        row_dir, col_dir = orientation_vectors(iop)
    except GeometryError as error:
        raise GeometryError(error.message, path=path, tag=error.tag) from None
    normal = np.cross(row_dir, col_dir)
    tag_ipp = "(0020,0032) ImagePositionPatient"
    ipp = headers.floats(ds, "ImagePositionPatient", tag_ipp, path, count=3)
    headers.check_range(ipp, "ImagePositionPatient", tag_ipp, path, headers.MAX_COORDINATE_MM)
    spacing = headers.floats(ds, "PixelSpacing", "(0028,0030) PixelSpacing", path, count=2)
    if np.any(spacing <= 0):
        raise GeometryError(
            f"PixelSpacing must be positive, got {spacing.tolist()}", path=path, tag="(0028,0030) PixelSpacing"
        )
    headers.check_range(spacing, "PixelSpacing", "(0028,0030) PixelSpacing", path, headers.MAX_SPACING_MM, True)
    rows = headers.integer(ds, "Rows", "(0028,0010) Rows", path, None, 1, 65535)
    columns = headers.integer(ds, "Columns", "(0028,0011) Columns", path, None, 1, 65535)
    frames = headers.integer(ds, "NumberOfFrames", "(0028,0008) NumberOfFrames", path, 1, 1, headers.MAX_FRAMES)
    warnings = []
    _check_offsets_length(ds, frames, path)
    if frames == 1:
        thickness = headers.number(ds, "SliceThickness", "(0018,0050) SliceThickness", path, None)
        if "GridFrameOffsetVector" in ds and ds.GridFrameOffsetVector not in (None, ""):
            gfov = headers.floats(ds, "GridFrameOffsetVector", TAG_GFOV, path)
            if gfov.size != 1:
                warnings.append(f"{TAG_GFOV} has {gfov.size} values for 1 frame; the first is the frame's offset")
        grid = Grid.from_dicom(
            image_position=ipp,
            image_orientation=np.concatenate([row_dir, col_dir]),
            pixel_spacing=spacing,
            slice_offsets=[0.0],
            rows=rows,
            columns=columns,
            frame_of_reference_uid=headers.text(ds, "FrameOfReferenceUID") or None,
            single_slice_thickness=thickness if thickness and thickness > 0 else None,
        )
        return DoseGeometry(grid, "single frame", "increasing", True, False, warnings)

    gfov = headers.floats(ds, "GridFrameOffsetVector", TAG_GFOV, path)
    headers.check_range(gfov, "GridFrameOffsetVector", TAG_GFOV, path, headers.MAX_COORDINATE_MM)
    if gfov.size < frames:
        raise GeometryError(
            f"GridFrameOffsetVector has {gfov.size} values for NumberOfFrames {frames}",
            path=path,
            tag=TAG_GFOV,
            hint="(0028,0008) NumberOfFrames or the offsets are wrong",
        )
    if gfov.size > frames:
        warnings.append(f"{TAG_GFOV} has {gfov.size} values for {frames} frames; the first {frames} are used")
        gfov = gfov[:frames]
    # z coordinates along a normal near z (a tilt of 0.11 deg read them as relative offsets: a feet-first grid was
    # mirrored, forty-ninth hostile trial AW2); they are converted to distances along the normal below
    axial = abs(normal[2]) >= AXIAL_NORMAL_Z
    off_by = abs(gfov[0] - ipp[2])
    steps_z = np.abs(np.diff(gfov))
    if gfov[0] == 0.0:
        mode = "relative"
        offsets = gfov
    elif axial and off_by <= ABSOLUTE_GFOV_TOLERANCE_MM:
        # option b: the values are patient z coordinates; convert to distances along the normal
        mode = "absolute"
        offsets = (gfov - gfov[0]) / normal[2]
    elif axial and off_by <= min(NEAR_ABSOLUTE_GFOV_MM, steps_z.min() / 4 if steps_z.size else 0.0):
        # option b rounded: z coordinates still, not distances along the normal; read so, a feet-first grid was
        # mirrored along z (forty-fifth hostile trial AS2: 0.02 mm off)
        mode = "absolute"
        offsets = (gfov - gfov[0]) / normal[2]
        warnings.append(
            f"{TAG_GFOV} starts at {gfov[0]:g}, {off_by:.3g} mm from the first frame's z {ipp[2]:g}: read as patient z "
            "coordinates (absolute), from the first frame's position"
        )
    else:
        mode = "relative"
        offsets = gfov - gfov[0]
        warnings.append(
            f"{TAG_GFOV} starts at {gfov[0]:g}, neither 0 (relative) nor the first frame's z {ipp[2]:g} "
            "(absolute); read as offsets relative to its first value"
        )
    steps = np.diff(offsets)
    if steps.size and np.min(np.abs(steps)) < headers.MIN_SPACING_MM:
        raise GeometryError(
            f"GridFrameOffsetVector puts frames {np.min(np.abs(steps)):.3g} mm apart, below {headers.MIN_SPACING_MM:g} mm",
            path=path,
            tag=TAG_GFOV,
            hint="the header is damaged; export the file again",
        )
    if np.all(steps > 0):
        order = "increasing"
    elif np.all(steps < 0):
        order = "decreasing"
    else:
        raise GeometryError(
            "GridFrameOffsetVector is neither increasing nor decreasing (frames repeat or go back)",
            path=path,
            tag=TAG_GFOV,
        )
    flipped = order == "decreasing"
    # the grid's k axis always runs along +normal: start from the last frame when frames decrease
    origin = ipp + normal * offsets[-1] if flipped else ipp
    positions = (offsets - offsets[-1])[::-1] if flipped else offsets
    typical = abs(float(np.median(steps)))
    uniform = bool(np.all(np.abs(np.abs(steps) - typical) <= max(1e-3, 1e-3 * typical)))
    grid = Grid.from_dicom(
        image_position=origin,
        image_orientation=np.concatenate([row_dir, col_dir]),
        pixel_spacing=spacing,
        slice_offsets=positions,
        rows=rows,
        columns=columns,
        frame_of_reference_uid=headers.text(ds, "FrameOfReferenceUID") or None,
    )
    return DoseGeometry(grid, mode, order, uniform, flipped, warnings)


def _check_offsets_length(ds: Dataset, frames: int, path: Path) -> None:
    """A GridFrameOffsetVector longer than NumberOfFrames values can be is refused before it is parsed: 20 MB of
    them took 2.6 GB and 30 s to read, 70 MB ended in a MemoryError (seventy-second hostile trial BT9)."""
    if "GridFrameOffsetVector" not in ds:
        return
    length = headers.stored_length(ds.get_item("GridFrameOffsetVector"))  # (undefined: refused with the header's)
    most = headers.OFFSET_BYTES * (frames + headers.SPARE_OFFSETS)
    if length is not None and most < length != headers.UNDEFINED_LENGTH:
        raise GeometryError(
            f"GridFrameOffsetVector is {length} bytes long, more than the offsets of {frames} frame(s) can be "
            f"({most} bytes at most)",
            path=path,
            tag=TAG_GFOV,
            hint="(0028,0008) NumberOfFrames or the offsets are wrong",
        )


def dose_info(ds: Dataset, path: Path, *, allow_relative: bool = False) -> DoseInfo:
    """Check the dose's units and scaling; RELATIVE is refused unless ``allow_relative``."""
    units = headers.text(ds, "DoseUnits").upper()
    if units == "RELATIVE" and not allow_relative:
        raise UnitsError(
            "DoseUnits is RELATIVE: the values are not Gy",
            path=path,
            tag=TAG_UNITS,
            hint="pass --allow-relative to export them anyway, unscaled to Gy",
        )
    if units not in ("GY", "RELATIVE"):
        raise UnitsError(f"DoseUnits {units or '(missing)'} is not GY", path=path, tag=TAG_UNITS)
    scaling = headers.number(ds, "DoseGridScaling", TAG_SCALING, path, None)
    if scaling is None:
        raise InputError(
            "DoseGridScaling is missing: the stored integers cannot be turned into dose",
            path=path,
            tag=TAG_SCALING,
            hint="fix the export; DoseAlign does not guess a scaling",
        )
    if scaling <= 0:
        raise InputError(f"DoseGridScaling must be positive, got {scaling:g}", path=path, tag=TAG_SCALING)
    if not MIN_SCALING <= scaling <= MAX_DOSE_GY:
        raise InputError(
            f"DoseGridScaling {scaling:g} is outside the plausible {MIN_SCALING:g}..{MAX_DOSE_GY:g} Gy per stored unit",
            path=path,
            tag=TAG_SCALING,
            hint="the scaling is damaged; DoseAlign does not guess one",
        )
    dose_type = headers.text(ds, "DoseType").upper()
    if dose_type not in DOSE_TYPES:
        raise UnitsError(
            f"DoseType {dose_type or '(missing)'} is not PHYSICAL or EFFECTIVE: "
            + (
                "the values are the dose's uncertainty, not dose"
                if dose_type == "ERROR"
                else "what the values mean is not defined"
            ),
            path=path,
            tag=TAG_TYPE,
            hint="export the physical (or effective) dose",
        )
    bits = headers.integer(ds, "BitsAllocated", "(0028,0100) BitsAllocated", path, 0)
    if bits not in (16, 32):
        raise InputError(f"BitsAllocated {bits} is not 16 or 32", path=path, tag="(0028,0100) BitsAllocated")
    return DoseInfo(
        units=units,
        dose_type=dose_type,
        summation_type=headers.text(ds, "DoseSummationType").upper(),
        scaling=scaling,
        bits_allocated=bits,
    )


def read_dose_geometry(path: Path) -> Grid:
    """The grid of an RTDOSE file, from its header."""
    path = Path(path)
    return dose_geometry(headers.read_header(path), path).grid


def content_digest(ds: Dataset, path: Path) -> bytes:
    """A digest of what an RTDOSE data set (read with its pixel data) holds as the export reads it: the grid
    DoseAlign computes (shape, affine, each frame's offset from the first), DoseUnits, DoseType and the values in Gy
    in the grid's order. The same dose written otherwise has one digest: numbers written otherwise (``2.50000``,
    ``-0``), GridFrameOffsetVector absolute or relative, other pixel types and scalings giving the same Gy, frames
    stored the other way round (seventeenth and eighteenth hostile trials Q8, R1; nineteenth S1: files one input
    called two doses and --append one). Its copy rule, its beam sums and --append's digest all use it."""
    geometry = dose_geometry(ds, path)
    offsets = np.atleast_1d(np.asarray(ds.get("GridFrameOffsetVector") or [0.0], dtype=np.float64))
    if geometry.gfov_mode == "absolute":  # z positions: from the first position, as relative offsets are
        offsets = offsets - float(ds.ImagePositionPatient[2])
    elif geometry.gfov_mode == "single frame":  # its slab is the grid's k step (SliceThickness: R4)
        offsets = np.zeros(1)
    pixels = headers.pixel_array(ds, path)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    scaling = float(ds.DoseGridScaling)
    order = range(len(pixels) - 1, -1, -1) if geometry.flipped else range(len(pixels))
    if geometry.flipped:
        offsets = offsets[::-1] - offsets[-1]

    def numbers(found) -> str:  # to 0.1 µm, -0 as 0
        return repr([float(v) + 0.0 for v in np.round(np.ravel(np.asarray(found, dtype=np.float64)), 4)])

    words = [headers.value_text(ds.get(keyword, "")).strip().upper() for keyword in ("DoseUnits", "DoseType")]
    text = [numbers(geometry.grid.shape), numbers(geometry.grid.affine), numbers(np.abs(offsets)), *words]
    digest = hashlib.sha256("|".join(text).encode("utf-8"))
    for k in order:  # a frame at a time in Gy: the decoded pixels and one frame more, not the dose twice over in
        # float64 (twentieth hostile trial T7: two files of a 512 MiB dose took 5.3 GB in the link step)
        digest.update(np.ascontiguousarray(pixels[k].astype("<f8") * scaling).tobytes())
    return digest.digest()


def read_rtdose(path: Path, *, allow_relative: bool = False) -> tuple:
    """Read an RTDOSE file: ``(Volume in Gy float32 on its exact grid, DoseGeometry, DoseInfo)``."""
    path = Path(path)
    ds = headers.read_header(path, stop_before_pixels=False)
    if headers.kind_of(ds) != "RTDOSE":
        raise InputError(f"is {headers.kind_of(ds)}, not RTDOSE", path=path, tag="(0008,0016) SOPClassUID")
    geometry = dose_geometry(ds, path)
    info = dose_info(ds, path, allow_relative=allow_relative)
    pixel_info = headers.pixel_module(ds, path, bits_allowed=(16, 32))
    headers.check_bits_stored(ds, pixel_info, path)
    pixels = headers.pixel_array(ds, path)
    shape = geometry.grid.shape
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.shape != shape:
        raise InputError(
            f"pixel data has shape {pixels.shape}, the header says {shape}", path=path, tag="(7FE0,0010) PixelData"
        )
    peak = float(pixels.max()) * info.scaling if pixels.size else 0.0
    if not np.isfinite(peak) or peak > MAX_DOSE_GY or info.scaling > MAX_DOSE_GY:
        raise InputError(
            f"DoseGridScaling {info.scaling:g} gives a maximum dose of {peak:.3g} Gy, beyond {MAX_DOSE_GY:g} Gy",
            path=path,
            tag=TAG_SCALING,
            hint="the scaling or the pixel data are damaged",
        )
    if 0 < peak < MIN_PEAK_GY:
        raise InputError(
            f"DoseGridScaling {info.scaling:g} gives a maximum dose of {peak:.3g} Gy, below {MIN_PEAK_GY:g} Gy: "
            "no delivered dose is that small",
            path=path,
            tag=TAG_SCALING,
            hint="the scaling or the pixel data are damaged",
        )
    dose = pixels.astype(np.float32)
    dose *= np.float32(info.scaling)
    if geometry.flipped:
        dose = np.ascontiguousarray(dose[::-1])
    if np.any(dose < 0):
        raise InputError("dose has negative values", path=path, tag="(0028,0103) PixelRepresentation")
    units = "GY" if info.units == "GY" else "RELATIVE"
    return Volume(dose, geometry.grid, units=units, description=f"RTDOSE {path.name}"), geometry, info
