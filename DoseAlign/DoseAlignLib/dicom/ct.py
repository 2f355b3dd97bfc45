"""CT series: geometry from the raw tags of every slice, and pixels read straight into one array.

Slices are ordered by their position along the slice normal (row x column), never by
InstanceNumber or file name. Uneven spacing, missing slices and gantry tilt are detected; such a
series keeps its exact geometry here and is regularized onto an orthogonal grid by the pipeline.
The frames of a multi-frame (Enhanced) CT file are slices like any other, each with its own position,
orientation and rescale from the file's functional groups (:mod:`.enhanced`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import GeometryError, InputError
from ..geometry.grid import Grid, Volume, orientation_vectors
from . import headers
from .enhanced import FRAME_TAGS, frame_name, frame_slices
from .scan import (
    ORIENTATION_TOLERANCE,
    SAME_POSITION_MM,
    SPACING_TOLERANCE,
    CtSeries,
    geometry_difference,
    slice_geometry,
)

#: Slice positions closer than SAME_POSITION_MM (from the scan, which joins folders by it) are one position.
#: Steps within this fraction of the typical step count as uniform.
UNIFORM_STEP_FRACTION = 0.01
#: In-plane drift of slice origins (mm) above which the series is tilted or sheared.
TILT_TOLERANCE_MM = 0.01
#: A step between neighbouring slices longer than this many typical steps is not a few missing
#: slices but a slice from elsewhere (or a damaged position): the series is refused.
MAX_GAP_STEPS = 10
TAG_IOP = "(0020,0037) ImageOrientationPatient"
TAG_IPP = "(0020,0032) ImagePositionPatient"
TAG_SPACING = "(0028,0030) PixelSpacing"


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
    warnings: list = field(default_factory=list)  # what the case's users must know (a one-slice CT's assumed step)
    #: ImageOrientationPatient as the grid takes it (the value most slices carry); None: the first slice's
    orientation: Optional[list] = None

    @property
    def needs_regularization(self) -> bool:
        return (not self.uniform) or abs(self.tilt_degrees) > 1e-3


def ct_geometry(series: CtSeries) -> CtGeometry:
    """Derive the grid of a CT series from each slice's ImagePositionPatient and orientation."""
    if not series.slices:
        raise InputError("CT series has no slices", path=series.folder)
    first, rounding = _reference_slice(series)  # every slice checked; the geometry all slices share
    tag_ipp = TAG_IPP
    checks = []
    if rounding:
        checks.append({"check": "slice geometry", "result": "rounded", "detail": rounding})
    iop = first.info.get("image_orientation")
    row_dir, col_dir = _orientation(iop, first.path)
    normal = np.cross(row_dir, col_dir)
    spacing = first.info.get("pixel_spacing")
    positions = []
    for obj in series.slices:
        ipp = obj.info.get("image_position")
        tag = _tag(obj, "image_position", tag_ipp)
        if obj.info.get("rescale_missing"):
            raise InputError(
                f"{_frame(obj)}no (0028,9145) PixelValueTransformationSequence, though other frames have theirs: "
                "its RescaleSlope and RescaleIntercept are unknown",
                path=obj.path,
                tag=FRAME_TAGS["rescale_slope"],
                hint="the file is damaged; export the CT again",
            )
        if ipp is None or len(ipp) != 3 or not np.all(np.isfinite(ipp)):
            raise GeometryError(
                f"{_frame(obj)}ImagePositionPatient is missing or invalid: {ipp}", path=obj.path, tag=tag
            )
        headers.check_range(np.asarray(ipp), "ImagePositionPatient", tag, obj.path, headers.MAX_COORDINATE_MM)
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
            several = "frame" in a.info and "frame" in b.info and a.path == b.path
            raise GeometryError(
                f"two slices at one position ({distance[n]:.3f} mm along the normal): {frame_name(a)} and "
                f"{frame_name(b)}",
                path=b.path,
                tag=_tag(b, "image_position", tag_ipp),
                hint=(
                    "the multi-frame CT holds more than one volume (stacks, phases or reconstructions): export the "
                    "one volume wanted as its own series"
                    if several
                    else "remove the duplicate slice or split the series"
                ),
            )
    offsets = distance - distance[0]
    steps = np.diff(offsets)
    warnings: list = []
    why = ""
    if steps.size:
        typical = float(np.median(steps))
    else:  # one slice: no position to take the step from
        typical, why = _one_slice_step(series, first, spacing)
        warnings.append(f"{first.rel_path}: the CT has one slice; its slice step is {why}")
    # PS3.3 C.8.2.1: (0028,1054) RescaleType is required where the rescaled values are not HU
    other_units = sorted({str(s.info.get("rescale_type") or "") for s in series.slices} - {"", "HU"})
    if other_units:
        warnings.append(
            f"{first.rel_path}: the CT's (0028,1054) RescaleType is {', '.join(other_units)}, not HU: its values are "
            "exported as rescaled, under the name HU, but they are not Hounsfield units (a cone-beam or synthetic CT?)"
        )
    uniform = bool(
        steps.size == 0 or np.all(np.abs(steps - typical) <= max(SAME_POSITION_MM, UNIFORM_STEP_FRACTION * typical))
    )
    if steps.size and steps.max() > MAX_GAP_STEPS * typical:
        n = int(np.argmax(steps))
        a, b = series.slices[order[n]], series.slices[order[n + 1]]
        median = float(np.median(distance))
        stray = a if abs(distance[n] - median) > abs(distance[n + 1] - median) else b
        raise GeometryError(
            f"{frame_name(b)} lies {steps[n]:.4g} mm after {frame_name(a)} along the slice normal, "
            f"{steps[n] / typical:.0f} typical steps of {typical:.4g} mm: not a few missing slices",
            path=stray.path,
            tag=_tag(stray, "image_position", tag_ipp),
            hint="a slice of another scan or a damaged position; remove it or fix the series",
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
            + (f" ({why})" if why else "")
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
        residual = np.linalg.norm(drift - np.outer(offsets, shear), axis=1)
        if np.max(residual) > 10 * TILT_TOLERANCE_MM:
            # name the slice farthest off the line through the others
            worst = int(np.argmax(np.linalg.norm(drift - np.median(drift, axis=0), axis=1)))
            raise GeometryError(
                "slice origins do not lie on one line (neither a stack nor a tilted stack); "
                f"{frame_name(series.slices[order[worst]])} is {residual[worst]:.3g} mm off",
                path=series.slices[order[worst]].path,
                tag=_tag(series.slices[order[worst]], "image_position", tag_ipp),
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
        single_slice_thickness=typical,
    )
    if tilt:
        affine = grid.affine.copy()
        affine[:3, 2] = affine_k
        grid = Grid(grid.shape, affine, grid.frame_of_reference_uid)
    checks.append({"check": "orientation", "result": "ok", "detail": _orientation_name(row_dir, col_dir)})
    return CtGeometry(grid, [int(i) for i in order], uniform, typical, tilt, missing, checks, warnings, list(iop))


def _one_slice_step(series: CtSeries, first, spacing) -> tuple:
    """``(step mm, how it was found)`` of a one-slice CT, from its slice's header (:func:`_single_slice_step`).
    Copies of that slice (kept once) are read the same way (an Enhanced CT's from its functional groups), and the
    steps they state must agree, or which grid is exported would follow the file names (twentieth hostile trial
    T8: 2.5 or 10 mm); a copy that states none has nothing to disagree with, and a step one of them states is
    taken before an assumed one (twenty-first trial U4, U7)."""
    step, why, stated = _single_slice_step(first, spacing)
    source = first.rel_path
    for duplicate in series.duplicate_objects:
        copy = frame_slices(duplicate)[0]  # a one-frame file: its one frame, as the first was read
        try:
            found, found_why, found_stated = _single_slice_step(copy, spacing)
        except (InputError, OSError):
            continue  # unreadable now: the copy check said the same image; nothing to compare
        if not found_stated:
            continue
        if not stated:
            step, why, stated, source = found, found_why, True, copy.rel_path
        elif abs(found - step) > 1e-6:
            raise InputError(
                f"the CT has one slice, whose step comes from its header: {source} gives {step:g} mm, its copy "
                f"{copy.rel_path} {found:g} mm (SliceThickness or SpacingBetweenSlices): which grid is the CT's "
                "cannot be told",
                path=first.path,
                tag="(0018,0050) SliceThickness",
                hint="remove the wrong file",
            )
    if source != first.rel_path:
        why = f"{why} (of its copy {source})"
    return step, why


def _single_slice_step(obj, spacing) -> tuple:
    """``(step mm, how it was found, whether the header states it)`` of a one-slice CT: its (0018,0050)
    SliceThickness, else (0018,0088) SpacingBetweenSlices, when positive and plausible; else the smallest in-plane
    spacing, said to be assumed. A one-frame Enhanced CT has them in its (0028,9110) PixelMeasuresSequence."""
    path = obj.path
    if "frame" in obj.info:
        ds = {"SliceThickness": obj.info.get("slice_thickness")}
        ds["SpacingBetweenSlices"] = obj.info.get("spacing_between_slices")
    else:
        ds = headers.read_header(path)
    unusable = []
    for keyword, tag in (("SliceThickness", "(0018,0050)"), ("SpacingBetweenSlices", "(0018,0088)")):
        try:
            value = headers.number(ds, keyword, f"{tag} {keyword}", path, None)
        except InputError:
            value = float("nan")
        if value is None:
            continue
        if np.isfinite(value) and headers.MIN_SPACING_MM <= value <= headers.MAX_SPACING_MM:
            return float(value), f"{value:g} mm, taken from {tag} {keyword}", True
        unusable.append(f"{tag} {keyword} {ds.get(keyword)!r} is not a usable step")
    assumed = float(min(spacing))
    told = (
        "; ".join(unusable)
        if unusable
        else "neither (0018,0050) SliceThickness nor (0018,0088) SpacingBetweenSlices is given"
    )
    return assumed, f"unknown ({told}): {assumed:g} mm, the in-plane spacing, is assumed", False


def read_ct(
    series: CtSeries, geometry: Optional[CtGeometry] = None, dtype: str = "int16", fill_hu: float = -1000.0
) -> Volume:
    """Read the pixels of every slice into one ``(K, J, I)`` HU array on the series' exact grid.

    ``dtype`` int16 rounds HU to whole numbers (CT values are stored as integers; a non-integer
    RescaleSlope is rounded away); float32 keeps them as computed. Stored values beyond BitsStored are
    refused, but for (0028,0120) PixelPaddingValue there, which is outside the image: ``fill_hu``
    (:func:`~DoseAlignLib.dicom.headers.padding_beyond_bits_stored`).
    """
    geometry = geometry or ct_geometry(series)
    _check_rescale_given(series)
    shape = geometry.grid.shape
    out = np.empty(shape, dtype=np.int16 if dtype == "int16" else np.float32)
    reference_iop = np.array(geometry.orientation or series.slices[geometry.order[0]].info["image_orientation"])
    buffers: dict = {}
    decoded: dict = {}  # a multi-frame file's decoded frames, by path, while its frames are read
    filled = False  # whether any voxel is padding, given fill_hu
    for k, index in enumerate(geometry.order):
        obj = series.slices[index]
        if _read_in_place(obj, out[k], dtype, buffers):
            continue
        iop = obj.info.get("image_orientation")
        if iop is None or len(iop) != 6 or np.max(np.abs(np.subtract(iop, reference_iop))) > ORIENTATION_TOLERANCE:
            raise GeometryError(
                f"{_frame(obj)}slice orientation differs from the rest of the series",
                path=obj.path,
                tag=_tag(obj, "image_orientation", TAG_IOP),
            )
        if "frame" in obj.info:
            pixels, padding = _frame_pixels(obj, decoded)
            scaling = {"RescaleSlope": obj.info["rescale"][0], "RescaleIntercept": obj.info["rescale"][1]}
            tags = (_tag(obj, "rescale_slope", ""), _tag(obj, "rescale_intercept", ""))
        else:
            ds = headers.read_header(obj.path, stop_before_pixels=False)
            module = headers.pixel_module(ds, obj.path, max_frames=1)
            if module["frames"] != 1:
                raise InputError("a CT image slice has one frame", path=obj.path, tag="(0028,0008) NumberOfFrames")
            padding = headers.padding_beyond_bits_stored(ds, module, obj.path)
            pixels = headers.single_frame_pixels(ds, obj.path)
            padding = padding[0] if padding is not None else None
            scaling, tags = ds, ("(0028,1053) RescaleSlope", "(0028,1052) RescaleIntercept")
        if pixels.shape != shape[1:]:
            raise InputError(
                f"slice has {pixels.shape} pixels, the series {shape[1:]}", path=obj.path, tag="(0028,0010) Rows"
            )
        if padding is not None:  # as decoded (pydicom 3 masks the high bits, 2.4 keeps them): filled below
            pixels = np.where(padding, np.zeros((), dtype=pixels.dtype), pixels)
        slope = headers.number(scaling, "RescaleSlope", tags[0], obj.path, 1.0)
        intercept = headers.number(scaling, "RescaleIntercept", tags[1], obj.path, 0.0)
        _check_rescale(pixels, slope, intercept, dtype, obj.path, _frame(obj))
        if slope == 1.0 and float(intercept).is_integer() and dtype == "int16":
            # exact integer path: no float round trip
            np.add(pixels, np.int32(intercept), out=out[k], casting="unsafe")
        else:
            hu = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
            out[k] = np.rint(hu) if dtype == "int16" else hu
        if padding is not None:  # outside the image, whatever a decoder made of those bits
            out[k][padding] = np.rint(fill_hu) if dtype == "int16" else fill_hu
            filled = filled or bool(padding.any())
    written = (float(np.rint(fill_hu)) if dtype == "int16" else float(np.float32(fill_hu))) if filled else None
    return Volume(out, geometry.grid, units="HU", description=f"CT series {series.series_uid}", fill_value=written)


def _frame_pixels(obj, decoded: dict) -> tuple:
    """The stored values of one frame of a multi-frame CT file that cannot be read in place (compressed, big
    endian, high bits to mask) and where it holds padding beyond BitsStored (or None): the file is decoded once,
    when its first frame is read, and kept for the rest."""
    pixels, padding = decoded.get(obj.path, (None, None))
    if pixels is None:
        decoded.clear()  # one file's frames at a time (the series' order may mix files only at their ends)
        ds = headers.read_header(obj.path, stop_before_pixels=False)
        module = headers.pixel_module(ds, obj.path)
        if module["frames"] != obj.info.get("frames"):
            raise InputError(
                f"NumberOfFrames {module['frames']} differs from the {obj.info.get('frames')} frames it had when "
                "it was scanned",
                path=obj.path,
                tag="(0028,0008) NumberOfFrames",
                hint="the file was changed since the scan; export again",
            )
        padding = headers.padding_beyond_bits_stored(ds, module, obj.path)
        pixels = headers.pixel_array(ds, obj.path)
        del ds
        if pixels.ndim == 2:
            pixels = pixels[np.newaxis]
        if pixels.shape[0] != module["frames"]:
            raise InputError(
                f"pixel data decode to {pixels.shape[0]} frames, NumberOfFrames says {module['frames']}",
                path=obj.path,
                tag="(7FE0,0010) PixelData",
            )
        decoded[obj.path] = pixels, padding
    frame = obj.info["frame"]
    return pixels[frame], (padding[frame] if padding is not None else None)


def _frame(obj) -> str:
    """``"frame n of N: "`` for a frame of a multi-frame file (its messages name the file by path), else ``""``."""
    if "frame" not in obj.info:
        return ""
    return f"frame {obj.info['frame'] + 1} of {obj.info.get('frames')}: "


def _tag(obj, key: str, tag: str) -> str:
    """Where a slice's value ``key`` is: ``tag`` for a single-frame slice, its functional group for a frame."""
    return FRAME_TAGS.get(key, tag) if "frame" in obj.info else tag


def _read_in_place(obj, out_slice: np.ndarray, dtype: str, buffers: dict) -> bool:
    """Plain 16-bit slices: stored values read from the file straight into the output, then rescaled.

    Returns False when the slice needs pydicom's decoding (compressed, big endian, odd bits...).
    """
    position = obj.info.get("pixel_position")
    rows, columns = obj.info.get("rows"), obj.info.get("columns")
    if position is None or (rows, columns) != out_slice.shape:
        return False
    try:
        # (headers.decimal: a slope 1_0 is no number, and the general path names it; float() read it as 10)
        slope = headers.decimal(obj.info["rescale"][0] if obj.info["rescale"][0] not in (None, "") else 1.0)
        intercept = headers.decimal(obj.info["rescale"][1] if obj.info["rescale"][1] not in (None, "") else 0.0)
    except (TypeError, ValueError):
        return False  # let the general path report the bad tag
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        return False  # let the general path report the bad tag
    stored = np.dtype("<i2" if position["signed"] else "<u2")
    bits = position.get("bits_stored", 16)  # fewer: values beyond them are decoded by pydicom (masked, sign-extended)
    if dtype == "int16" and stored == np.int16 and slope == 1.0 and intercept == 0.0:
        return headers.read_pixels_into(obj.path, position, out_slice) and headers.fit_bits_stored(
            out_slice, bits, True
        )
    buffer = buffers.get(stored)
    if buffer is None:
        buffer = buffers[stored] = np.empty(out_slice.shape, dtype=stored)
    if not headers.read_pixels_into(obj.path, position, buffer):
        return False
    if not headers.fit_bits_stored(buffer, bits, position["signed"]):
        return False
    _check_rescale(buffer, slope, intercept, dtype, obj.path, _frame(obj))
    if dtype == "int16" and slope == 1.0 and intercept.is_integer():
        np.add(buffer, np.int32(intercept), out=out_slice, casting="unsafe")
    else:
        hu = buffer.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        out_slice[...] = np.rint(hu) if dtype == "int16" else hu
    return True


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


#: Rescaled CT values must fit the output array: int16 (the default) or float32 (within the plausible range).
HU_RANGE = {"int16": (-32768.0, 32767.0), "float32": (-32768.0, 65535.0)}
#: RescaleSlope of a CT outside these bounds squeezes or spreads the stored values into no plausible HU scale.
SLOPE_RANGE = (0.01, 100.0)
#: |RescaleIntercept| beyond this puts no stored value near a plausible HU.
MAX_INTERCEPT = 32768.0


def _check_rescale_given(series: CtSeries) -> None:
    """A slice (or a multi-frame file's frame) whose RescaleSlope or RescaleIntercept is missing or empty while other
    slices of its series give theirs, or that gives a Modality LUT, has HU DoseAlign cannot know: read as slope 1,
    intercept 0, one slice was 1024 HU off, ok (seventieth hostile trial BR1; frames of two multi-frame files, or
    beside single-frame slices: seventy-second BT3). A series none of whose slices gives one is read so (and its
    audit says where it has no air)."""
    for obj in series.slices:
        if obj.info.get("modality_lut"):
            raise InputError(
                "the slice's values are turned into HU by a Modality LUT, which DoseAlign does not apply",
                path=obj.path,
                tag="(0028,3000) ModalityLUTSequence",
                hint="export the CT with RescaleSlope and RescaleIntercept",
            )
    keys = (("RescaleSlope", "(0028,1053)", "rescale_slope"), ("RescaleIntercept", "(0028,1052)", "rescale_intercept"))
    for n, (keyword, tag, key) in enumerate(keys):
        given = [(obj.info.get("rescale") or (None, None))[n] not in (None, "") for obj in series.slices]
        if any(given) and not all(given):
            missing = series.slices[given.index(False)]
            raise InputError(
                f"{_frame(missing)}{keyword} is missing or empty, while other slices of the series give theirs: its "
                "HU are unknown",
                path=missing.path,
                tag=_tag(missing, key, f"{tag} {keyword}"),
                hint="restore the rescale tags; DoseAlign does not guess them",
            )


def _check_rescale(pixels: np.ndarray, slope: float, intercept: float, dtype: str, path, frame: str = "") -> None:
    """RescaleSlope/Intercept must be plausible for a CT and turn the stored values into numbers the CT array
    can hold (too small a slope flattens the image, too large or an absurd intercept puts it off the HU scale).
    ``frame`` starts the messages of a multi-frame file's frame ("frame n of N: ")."""
    if slope == 0:
        raise InputError(
            f"{frame}RescaleSlope is 0: every pixel would get the same HU", path=path, tag="(0028,1053) RescaleSlope"
        )
    if not SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1]:
        raise InputError(
            f"{frame}RescaleSlope {slope:g} is outside the plausible {SLOPE_RANGE[0]:g}..{SLOPE_RANGE[1]:g} for a CT",
            path=path,
            tag="(0028,1053) RescaleSlope",
            hint="the rescale tags are damaged",
        )
    if abs(intercept) > MAX_INTERCEPT:
        raise InputError(
            f"{frame}RescaleIntercept {intercept:g} is beyond the plausible +-{MAX_INTERCEPT:g} for a CT",
            path=path,
            tag="(0028,1052) RescaleIntercept",
            hint="the rescale tags are damaged",
        )
    if pixels.size == 0:
        return
    ends = np.array([float(pixels.min()), float(pixels.max())]) * slope + intercept
    low, high = HU_RANGE.get(dtype, HU_RANGE["float32"])
    if not np.all(np.isfinite(ends)) or ends.min() < low or ends.max() > high:
        raise InputError(
            f"{frame}RescaleSlope {slope:g} and RescaleIntercept {intercept:g} give values {ends.min():.4g}..{ends.max():.4g}, "
            f"beyond the {dtype} CT array ({low:g}..{high:g})",
            path=path,
            tag="(0028,1052) RescaleIntercept",
            hint="the rescale tags are damaged" + (" (or pass --ct-dtype float32)" if dtype == "int16" else ""),
        )


def _check_slice(obj) -> None:
    """The geometry tags of one slice are present, numeric, in range and self-consistent."""
    info = obj.info
    if info.get("frames") and "frame" not in info:  # a multi-frame file whose frames cannot be told apart
        raise GeometryError(
            info.get("frames_problem") or f"a multi-frame CT image of {info['frames']} frames",
            path=obj.path,
            tag=info.get("frames_tag") or "(0028,0008) NumberOfFrames",
            hint="the file is damaged or not an image volume; export the CT again (as an Enhanced CT, or as "
            "single-frame CT images)",
        )
    frame, iop_tag, spacing_tag = _frame(obj), _tag(obj, "image_orientation", TAG_IOP), _tag(obj, "pixel_spacing", "")
    iop = info.get("image_orientation")
    if iop is None:
        raise GeometryError(f"{frame}ImageOrientationPatient is missing or not numeric", path=obj.path, tag=iop_tag)
    _orientation(iop, obj.path, iop_tag)
    spacing = info.get("pixel_spacing")
    spacing_tag = spacing_tag or TAG_SPACING
    if spacing is None or len(spacing) != 2 or not np.all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise GeometryError(
            f"{frame}PixelSpacing must be two positive numbers, got {spacing if spacing is not None else 'none (missing or not numeric)'}",
            path=obj.path,
            tag=spacing_tag,
        )
    headers.check_range(np.asarray(spacing), "PixelSpacing", spacing_tag, obj.path, headers.MAX_SPACING_MM, True)
    for keyword, tag in (("rows", "(0028,0010) Rows"), ("columns", "(0028,0011) Columns")):
        value = info.get(keyword)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            name = keyword.capitalize()
            raise InputError(f"{name} must be a whole number 1..65535, got {value!r}", path=obj.path, tag=tag)


def _reference_slice(series: CtSeries) -> tuple:
    """Check every slice; return one with the geometry most slices share and, when some slices write it with
    another rounding, what is taken (else ""). A slice whose geometry differs beyond a rounding fails the
    series, naming it and the others that differ so."""
    keys = [slice_geometry(obj) for obj in series.slices]
    counts: dict = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    best = max(counts, key=lambda k: (counts[k], -keys.index(k)))  # ties: the first in path order
    reference = series.slices[keys.index(best)]
    _check_slice(reference)
    names = (
        ("ImageOrientationPatient", TAG_IOP),
        ("PixelSpacing", TAG_SPACING),
        ("Rows", "(0028,0010) Rows"),
        ("Columns", "(0028,0011) Columns"),
    )
    differing: dict = {}  # element index -> [(slice, its geometry)]
    rounded: dict = {}  # element index -> {value written: slices}
    for obj, key in zip(series.slices, keys):
        if key == best:
            continue
        _check_slice(obj)
        n = geometry_difference(best, key)
        if n is not None:
            differing.setdefault(n, []).append((obj, key))
            continue
        for m in (0, 1):
            if key[m] != best[m]:
                rounded.setdefault(m, {}).setdefault(key[m], 0)
                rounded[m][key[m]] += 1

    def shown(value) -> str:
        return str(list(value) if isinstance(value, tuple) else value)

    if differing:
        n = min(differing)
        found = differing[n]
        obj, key = found[0]
        keyword, tag = names[n]
        agreeing = len(series.slices) - sum(len(v) for v in differing.values())
        more = ""
        if len(found) > 1:
            listed = ", ".join(frame_name(o) for o, _k in found[1:6])
            more = f"; {len(found) - 1} more slices differ so: {listed}" + (", ..." if len(found) > 6 else "")
        raise GeometryError(
            f"{_frame(obj)}{keyword} {shown(key[n])} differs from the {agreeing} other slices of the series "
            f"({shown(best[n])}){more}",
            path=obj.path,
            tag=_tag(obj, {0: "image_orientation", 1: "pixel_spacing"}.get(n, ""), tag),
            hint="a damaged slice or one from another volume; remove it or fix the series",
        )
    told = []
    for m, values in sorted(rounded.items()):
        written = ", ".join(f"{shown(v)} ({c} slices)" for v, c in sorted(values.items(), key=str))
        limit = f"{SPACING_TOLERANCE:.1%}" if m == 1 else f"{ORIENTATION_TOLERANCE:g}"
        whose = "most slices" if max(values.values()) < counts[best] else "the first slice by path, as many as any"
        told.append(
            f"{names[m][0]} written with other roundings (within {limit}): {written}; the value of {whose}, "
            f"{shown(best[m])} ({counts[best]} slices), is used"
        )
    return reference, "; ".join(told)


def _orientation(iop, path, tag: Optional[str] = None) -> tuple:
    try:
        return orientation_vectors(iop)
    except GeometryError as error:
        raise GeometryError(error.message, path=path, tag=tag or error.tag) from None


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
