"""One case from DICOM to arrays: read CT and dose(s), choose the reference grid, resample.

This is the one path every backend shares: the ``dosealign`` command, the batch runner and each of
the Slicer module's backends call :func:`run_case`; they differ only in the ``resampler`` they pass
(see :class:`~DoseAlignLib.geometry.resample.Resampler`). Units, sums, the reference grid, the
structures, the audit and meta.json are made here, the same way for all of them.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import __version__
from .audit.case import add_structures_and_audit
from .dicom import headers
from .dicom.ct import ct_geometry, read_ct, regular_grid
from .dicom.rtdose import dose_geometry, read_rtdose
from .errors import DoseAlignError, GeometryError, LinkError, shortened, thread_not_started
from .geometry.grid import Grid, Volume
from .geometry.reference import (
    CROP_DOSE_FRACTION,
    Region,
    check_overlap,
    covering_grid,
    crop_box,
    reference_grid,
    uniform_cover,
)
from .geometry.resample import ENGINE_RESAMPLER, Resampler, resample
from .limits import (
    LimitError,
    case_deadline,
    check_case_time,
    format_bytes,
    limit_multiple,
    memory_available,
    memory_floor,
    memory_limit_bytes,
)
from .link.case import Case
from .link.dose_headers import frame_mismatch, sum_mismatch
from .options import AlignOptions, Interpolator, ReferenceGrid
from .structures.case import CaseContours, read_case_contours
from .structures.regions import grid_region

Progress = Optional[Callable[[float, str], None]]


@dataclass
class CaseResult:
    """The arrays of one case on one grid, and the metadata that explains them."""

    case_id: str
    ct: Volume
    dose: Volume
    meta: dict
    native_dose: Optional[Volume] = None  # the dose (sum) on its own grid, or on one covering its doses' grids
    native_resampled: bool = False  # native_dose is a sum of doses resampled onto a grid covering theirs
    extra_arrays: dict = field(default_factory=dict)  # further arrays for pair.npz (masks, DVHs)
    ct_lowest_hu: Optional[float] = None  # the CT's lowest value as read (see lowest_value), for the audit
    ct_grid: Optional[Grid] = None  # the CT's own grid as read, for the audit (dose where the CT has no image)


def lowest_value(ct: np.ndarray, fill_value: Optional[float] = None) -> Optional[float]:
    """A CT's lowest value, from every fourth row and column of each slice (cheap, and air is never a speck): about
    -1000 HU for a patient CT, the air around the patient or in the lungs (the audit's ``ct_lowest_hu`` flag). None
    for a CT of one value (a synthetic water phantom of 0 HU: it tells nothing about the scale). ``fill_value``, the
    value DoseAlign wrote for the file's padding, is no value of the CT as read: left out (else padding outside the
    reconstruction circle hid a CT read without its RescaleIntercept: fifteenth hostile trial O5)."""
    sample = ct[:, ::4, ::4]
    if fill_value is not None:
        sample = sample[sample != np.asarray(fill_value, dtype=sample.dtype)]
    if not sample.size:
        return None
    lowest, highest = sample.min(), sample.max()
    return float(lowest) if highest > lowest else None


def run_case(
    case: Case,
    options: AlignOptions,
    progress: Progress = None,
    sink: Optional[Callable[[str, np.ndarray], None]] = None,
    resampler: Optional[Resampler] = None,
    rewrite_names: Optional[Callable[[str], str]] = None,
) -> CaseResult:
    """Read, check and resample one case. Raises :class:`DoseAlignError` naming file and reason.

    ``sink(name, array)``, when given, receives the output CT (``"ct"``) and dose (``"dose"``) as
    soon as each is final, possibly from another thread (:class:`~DoseAlignLib.output.case_folder.CaseOutput`
    writes them while the rest is computed). The arrays it gets are the result's; they are not changed after.
    ``resampler`` makes the output CT and dose (default: the engine's own); every other step is the engine's.
    ``rewrite_names(name)``, when given, rewrites each ROI name before the names are made unique (a
    pseudonymized export: two names that read alike once rewritten still name two ROIs apart everywhere).

    Resources are bounded: a case whose arrays would exceed the memory limit is refused before any is
    allocated (:func:`check_memory`), and its long loops stop at the per-case time limit
    (:func:`~DoseAlignLib.limits.case_deadline`), each with a :class:`~DoseAlignLib.limits.LimitError` naming it.
    """
    with case_deadline():
        return _run_case(case, options, progress, sink, resampler, rewrite_names)


def _run_case(case: Case, options: AlignOptions, progress: Progress, sink, resampler, rewrite_names=None) -> CaseResult:
    resampler = resampler or ENGINE_RESAMPLER
    if case.error:
        raise LinkError(case.error)
    if case.ct is None:
        raise LinkError("no CT for this dose", path=case.doses[0].path)
    report = _reporter(progress)
    report(0.0, "reading CT")
    geometry = ct_geometry(case.ct)
    check_memory(case, options, geometry)  # before any array is allocated: refuse with the reason and the limit
    contours = _grid_contours(case, options, geometry, rewrite_names)  # when the grid is centred on or cut to a ROI
    # the CT's pixels are read beside the dose's reading and resampling (both mostly outside the GIL);
    # the resampling needs only the CT's geometry
    ct_reading = _in_thread(read_ct, case.ct, geometry, options.ct_dtype, options.ct_fill_hu)
    abandoned = threading.Event()  # set when this case gives up waiting for the CT (time limit, SIGTERM)

    def read_ct_now():
        return _wait_for(ct_reading, abandoned, case)

    report(0.2, "reading and resampling dose")
    try:
        doses, dose_meta, native, ct_note, ct_grid, target, how, placement, ct_box = _doses_and_target(
            case, options, geometry, contours, read_ct_now
        )
        copies = dose_meta.pop(_COPIES_KEY, [])
        ct_is_output = target.equal(geometry.grid)  # read_ct gives the CT on its own grid
        if sink is not None and ct_is_output:

            def hand_over(done) -> None:  # in the reading thread, as soon as the CT is read
                if done.exception() is None and not abandoned.is_set():
                    sink("ct", done.result().array)

            ct_reading.add_done_callback(hand_over)
        dose_out, dose_steps = _dose_on(target, native, doses, options.interpolator, resampler)
        audit_native = native if native is not None else _covering_sum(doses, target, dose_out, dose_meta)
        half = _to_float16(dose_out, case) if options.dose_dtype == "float16" else None
        if sink is not None:
            sink("dose", dose_out)
    except (KeyboardInterrupt, LimitError):  # Ctrl-C, SIGTERM, the time limit: the CT is not waited for
        abandoned.set()
        raise
    except BaseException:
        read_ct_now()  # a CT that cannot be read is reported first, as when read in turn
        raise
    ct = read_ct_now()
    ct_lowest = lowest_value(ct.array, ct.fill_value)

    ct_steps: list = []
    if ct_is_output:
        ct_out = ct.array
    elif ct_box is not None:  # a crop of the CT's own grid: its voxels as they are
        ct_out = np.ascontiguousarray(ct.array[ct_box])
        if sink is not None:
            sink("ct", ct_out)
    else:
        ct_dtype = np.int16 if options.ct_dtype == "int16" else np.float32
        # B-spline and windowed sinc overshoot the values they interpolate: near 32 767 HU (metal on an extended
        # scale) the overshoot wrapped round in int16 to -30 000 HU, ok, without a word (eighty-fourth trial CF1);
        # resampled as float32, it is clipped to int16 and said
        overshoots = ct_dtype is np.int16 and options.interpolator in (Interpolator.BSPLINE, Interpolator.WINDOWED_SINC)
        source, ct_steps = _source_for(ct, resampler, regular=ct_grid, fill=options.ct_fill_hu)
        ct_out = resampler(
            source, target, options.interpolator, fill=options.ct_fill_hu, dtype=np.float32 if overshoots else ct_dtype
        )
        if overshoots:
            ct_out, clipped = _clipped_to_int16(ct_out)
            if clipped:
                case.warnings.append(
                    f"{clipped} CT voxel(s) resampled by --interpolator {Interpolator(options.interpolator).value} overshoot the "
                    "int16 range (-32768..32767 HU) and are clipped to it (--ct-dtype float32 keeps them)"
                )
        if sink is not None:
            sink("ct", ct_out)
    ct_volume = Volume(ct_out, target, "HU", "CT")
    dose_volume = Volume(dose_out, target, doses[0][0].units, "dose")

    meta = _meta(case, options, ct_volume, dose_volume, geometry, ct_note, how, dose_meta, audit_native)
    if case.warnings or copies:
        meta.setdefault("warnings", []).extend([*case.warnings, *copies])
    if geometry.warnings:
        meta.setdefault("warnings", []).extend(geometry.warnings)
    if dose_meta["type"] == "EFFECTIVE":  # Gy all the same, but biologically weighted: said where it is read
        meta["arrays"]["dose"]["dose_type"] = "EFFECTIVE"
        meta.setdefault("warnings", []).append(
            "the dose is EFFECTIVE (DoseType): biologically weighted dose, e.g. Gy(RBE), not physical dose"
        )
    if dose_meta["units"] == "RELATIVE":  # --allow-relative: the columns and keys named _gy hold no Gy then
        meta.setdefault("warnings", []).append(
            "the dose is RELATIVE (DoseUnits), not Gy: the dose array, the dmax_gy column and every value named "
            "_gy are in the file's relative units (--allow-relative)"
        )
    meta["resampling"].update(placement)
    meta["resampling"]["backend"] = resampler.name
    if half is not None:
        meta["arrays"]["dose"].update(half)
    if ct_steps or dose_steps:
        meta["resampling"]["before_backend"] = ct_steps + dose_steps
    result = CaseResult(
        case.case_id,
        ct_volume,
        dose_volume,
        meta,
        audit_native,
        native_resampled=native is None,
        ct_lowest_hu=ct_lowest,
        ct_grid=ct.grid,
    )
    report(0.8, "structures and audit" if options.structures else "audit")
    if options.structures and contours is None:
        contours = read_case_contours(case, options, geometry, rewrite_names)
    add_structures_and_audit(result, case, options, geometry, contours if options.structures else None)
    _shorten_warnings(result.meta)
    report(1.0, "done")
    return result


def _clipped_to_int16(values: np.ndarray) -> tuple:
    """``(values rounded into int16, how many lay beyond its range)``."""
    info = np.iinfo(np.int16)
    beyond = int(np.count_nonzero(values < info.min) + np.count_nonzero(values > info.max))
    np.rint(values, out=values)
    np.clip(values, info.min, info.max, out=values)
    return values.astype(np.int16), beyond


def _shorten_warnings(meta) -> None:
    """Cut each warning and note, wherever meta.json holds them, as reasons are
    (:func:`~DoseAlignLib.errors.shortened`): one quoting a header value whole made a 20 MB manifest.csv and a 60 MB
    meta.json, which ``--resume`` then took for damaged at every run (seventy-fourth hostile trial BV4); so did 600
    ROI notes quoting a colour of 64 KB each (seventy-eighth BZ3)."""
    pending = [meta]
    while pending:
        part = pending.pop()
        if isinstance(part, dict):
            for key, value in part.items():
                if key in ("warnings", "notes") and isinstance(value, list):
                    part[key] = [shortened(w) if isinstance(w, str) else w for w in value]
                elif isinstance(value, (dict, list)):
                    pending.append(value)
        elif isinstance(part, list):
            pending.extend(item for item in part if isinstance(item, (dict, list)))


#: Seconds the case's thread waits for a reading thread at a time before it looks at the time limit again (and
#: lets a signal's handler, e.g. SIGTERM's, run).
WAIT_SLICE_SECONDS = 0.2


def _in_thread(function: Callable, *args) -> Future:
    """``function(*args)`` in a daemon thread of its own; its :class:`Future`. A reading that never ends (a file
    system that stopped answering) keeps only that thread: the case gives up at its time limit, and the process
    can still end (no pool joins the thread on the way out). When no thread can be started (memory, the thread
    limit), the work is done here, in the calling thread, and its future returned done (the thread only overlaps
    it with other work)."""
    future: Future = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = function(*args)
        except BaseException as error:  # handed to whoever waits for it
            future.set_exception(error)
        else:
            future.set_result(result)

    try:
        threading.Thread(target=run, name="dosealign-ct", daemon=True).start()
    except RuntimeError as error:  # no thread to be had (memory, the thread limit): the work is done here
        if not thread_not_started(error):
            raise
        run()
    return future


def _wait_for(future: Future, abandoned: threading.Event, case: Case):
    """The result of ``future`` (the case's CT reading), waited for in slices of :data:`WAIT_SLICE_SECONDS`:
    between them the case's time limit is checked (:class:`LimitError` naming the CT's folder), and a signal's
    handler runs in this thread as soon as it comes (SIGTERM's :class:`~DoseAlignLib.errors.Terminated`).
    Either way ``abandoned`` is set: the reading's result, if it ever comes, is not used."""
    try:
        while True:
            try:
                return future.result(timeout=WAIT_SLICE_SECONDS)
            except FuturesTimeout:
                _check_time_reading_ct(case)
    except (KeyboardInterrupt, LimitError):
        abandoned.set()
        raise


def _check_time_reading_ct(case: Case) -> None:
    first = case.ct.slices[0] if case.ct is not None and case.ct.slices else None
    folder = str(Path(first.rel_path).parent) if first is not None else None
    try:
        check_case_time()
    except LimitError as error:
        raise LimitError(
            f"{error.message}: its CT was still being read",
            path=f"{folder}/" if folder not in (None, ".") else None,
            hint=error.hint,
        ) from None


#: Bytes per native dose voxel the audit takes when the dose grid is not the output grid (measured: the
#: CT resampled onto it, the body mask and its labels, per-slice statistics).
AUDIT_BYTES_PER_VOXEL = 16


def case_memory(case: Case, options: AlignOptions, geometry) -> tuple:
    """``(working bytes, output bytes, parts)``: what the arrays of a case will take, from the headers alone.

    Working memory counts the CT as read (and regularized), each dose as read (its stored values
    twice, as pydicom holds them, and float32 copies), the output CT and dose, and the structure masks as pair.npz
    holds them: one bit a voxel per mask channel and the body (:func:`mask_channels`), a byte a voxel with fractional
    masks; ``parts`` says which is which. Each ROI's own mask, a box around it, is not counted (its size is not in
    the headers).
    """
    ct_bytes = 2 if options.ct_dtype == "int16" else 4
    ct_grid = regular_grid(geometry) if geometry.needs_regularization else geometry.grid
    parts = {"CT": int(np.prod(geometry.grid.shape)) * ct_bytes}
    if geometry.needs_regularization:
        parts["regularized CT"] = int(np.prod(ct_grid.shape)) * ct_bytes
    decoded = [  # a multi-frame CT file that is not read in place is decoded whole: its stored data and values
        4 * int(obj.info.get("frames") or 1) * int(obj.info.get("rows") or 0) * int(obj.info.get("columns") or 0)
        for obj in case.ct.file_objects
        if "frame" in obj.info and obj.info.get("pixel_position") is None
    ]
    if decoded:
        parts["CT frames decoded (multi-frame file)"] = max(decoded)
    grids = []
    doses = 0
    for obj in case.doses:
        ds = headers.read_header(obj.path)
        grid = dose_geometry(ds, obj.path).grid
        grids.append(grid)
        voxels = int(np.prod(grid.shape))
        stored = headers.integer(ds, "BitsAllocated", "(0028,0100) BitsAllocated", obj.path, 32) // 8
        doses += voxels * 4  # each dose kept as float32 until summed
        parts["dose reading"] = max(parts.get("dose reading", 0), voxels * (2 * stored + 5))
    parts["doses (float32)"] = doses * (2 if len(case.doses) > 1 else 1)  # and their sum
    dose_grid = grids[0] if all(g.equal(grids[0]) for g in grids[1:]) else covering_grid(grids)
    if not dose_grid.equal(grids[0]):  # doses on different grids: their sum on a grid covering them (the audit's)
        parts["dose sum on the covering grid"] = int(np.prod(dose_grid.shape)) * 4
    target, _how = reference_grid(ct_grid, dose_grid, options)  # a crop only shrinks it
    if not target.equal(dose_grid):  # the audit also works on the native dose grid: a body mask, statistics
        parts["audit on the native dose grid"] = int(np.prod(dose_grid.shape)) * AUDIT_BYTES_PER_VOXEL
    voxels = int(np.prod(target.shape))
    output = voxels * (ct_bytes + (2 if options.dose_dtype == "float16" else 4))
    parts["outputs"] = output + (voxels * 4 if options.dose_dtype == "float16" else 0)
    if ct_bytes == 2 and options.interpolator in (Interpolator.BSPLINE, Interpolator.WINDOWED_SINC):
        parts["CT resampled as float32 (then clipped to int16)"] = voxels * 4
    channels = mask_channels(case, options)
    if channels:  # the channels and the body, bit-packed along i (kept for pair.npz and the format writers)
        k, j, i = target.shape
        parts[f"structure masks ({channels} channels, bit-packed)"] = (channels + 1) * k * j * ((i + 7) // 8)
        if int(getattr(options, "fractional_masks", 0) or 0) >= 2:
            parts["fractional masks"] = channels * voxels
    return sum(parts.values()), output, parts


def mask_channels(case: Case, options: AlignOptions) -> int:
    """The mask channels a case will have, from the headers: the ``--rois`` channels, else every ROI of its
    structure sets (the scan's count of their (3006,0020) StructureSetROISequence items; some may give no mask)."""
    if not options.structures:
        return 0
    if options.rois is not None:
        return len(options.rois)
    return sum(len((getattr(obj, "info", None) or {}).get("roi_frame_uids") or []) for obj in case.structs)


def check_memory(case: Case, options: AlignOptions, geometry) -> None:
    """Refuse a case whose arrays would take more than the stated limit, before any is allocated.

    The limit is ``DOSEALIGN_MEMORY_MULTIPLE`` (4) times the bytes of its outputs, at least
    ``DOSEALIGN_MEMORY_FLOOR_MB`` (2048 MiB), and never more than the memory this machine has available.
    """
    working, output, parts = case_memory(case, options, geometry)
    limit = memory_limit_bytes(output)
    available = memory_available()
    what = ", ".join(f"{name} {format_bytes(size)}" for name, size in parts.items() if size)
    where = case.doses[0].path
    if working > limit:
        raise LimitError(
            f"the case needs about {format_bytes(working)} of memory ({what}) for {format_bytes(output)} of outputs: "
            f"more than the limit of {limit_multiple():g} x its outputs or {format_bytes(memory_floor())}, "
            f"{format_bytes(limit)}",
            path=where,
            hint=f"{_largest_part(parts)}; set DOSEALIGN_MEMORY_MULTIPLE or DOSEALIGN_MEMORY_FLOOR_MB to allow more",
        )
    if available is not None and working > available:
        raise LimitError(
            f"the case needs about {format_bytes(working)} of memory ({what}); this machine has "
            f"{format_bytes(available)} available",
            path=where,
            hint="run it where more memory is free, or with fewer --workers",
        )


def _largest_part(parts: dict) -> str:
    """What most of a refused case's memory goes to, for the refusal's hint."""
    largest = max(parts, key=lambda name: parts[name])
    if largest.startswith(("structure masks", "fractional masks")):
        return "many ROIs on a large output grid: fewer mask channels (--rois) or a coarser grid (--spacing)"
    return "a dose or CT far larger than the output grid"


def _grid_contours(case: Case, options: AlignOptions, geometry, rewrite_names=None) -> Optional[CaseContours]:
    """The case's contours when the output grid depends on them (a cube centred on a ROI, a crop to the body)."""
    centred = options.custom_cube and options.centre not in ("dose", "dmax")
    if not (centred or options.crop == "body"):
        return None
    return read_case_contours(case, options, geometry, rewrite_names)


def _doses_and_target(case: Case, options: AlignOptions, geometry, contours=None, ct=None) -> tuple:
    """Read the dose(s) and choose the reference grid (centred and cropped as asked).

    ``contours`` are the case's contours (when a ROI places the grid), ``ct()`` gives the CT (read
    only for a body outline without an EXTERNAL ROI).
    """
    doses, dose_meta = _read_doses(case, options)
    native = _native_sum(doses)
    if case.plans:  # a plan sum: which plans, and how they were added
        dose_meta["plans"] = list(case.plans)
        dose_meta["summed_on"] = (
            "the doses' common grid, then resampled"
            if native is not None
            else "the output grid (each dose resampled, then added)"
        )

    ct_grid = geometry.grid
    ct_note = None
    if geometry.needs_regularization:
        reasons = []
        if not geometry.uniform:
            reasons.append("uneven slice spacing" + (" (missing slices)" if geometry.missing_slices else ""))
        if geometry.tilt_degrees:
            reasons.append(f"gantry tilt {geometry.tilt_degrees:.2f} deg")
        ct_grid = regular_grid(geometry)
        ct_note = f"resampled onto a regular orthogonal grid covering it because of {' and '.join(reasons)}"
    dose_grid = native.grid if native is not None else covering_grid([d[0].grid for d in doses])
    for obj, (volume, _geometry, _info) in zip(case.doses, doses):
        check_overlap(ct_grid, volume.grid, obj.path)  # a dose wholly outside the CT would export as zeros
    volumes = [native] if native is not None else [d[0] for d in doses]
    rois = contours.rois if contours is not None else []
    thickness = float(geometry.typical_step_mm or 0.0) or float(ct_grid.spacing[2])
    where = case.structs[0].path if case.structs else case.doses[0].path
    placement: dict = {}
    centre = None
    if options.custom_cube:
        whole = Region(dose_grid.corner_points(), {"on": "dose grid", "reason": "no PTV and no dose above 0"})
        centre = grid_region(options.centre, rois, volumes, ct, ct_grid.direction, thickness, where, whole=whole)
        centre = centre or whole
        placement["centre"] = {"asked": options.centre, **centre.about, "centre_lps": centre.centre().tolist()}
    target, how = reference_grid(ct_grid, dose_grid, options, centre=centre)
    if native is None and options.reference is ReferenceGrid.DOSE:
        how += f" (covering the {len(doses)} doses' grids: the first's axes and voxel size)"
    ct_box = None
    if options.crop is not None:
        target, how, ct_box, placement["crop"] = _cropped(
            target, how, options, rois, volumes, ct, ct_grid, thickness, where, geometry
        )
    return doses, dose_meta, native, ct_note, ct_grid, target, how, placement, ct_box


def _cropped(target, how, options, rois, volumes, ct, ct_grid, thickness, where, geometry) -> tuple:
    """``(grid, how, CT box or None, meta)``: ``target`` cut to the body or the dose (plus the margin)."""
    region = grid_region(
        options.crop, rois, volumes, ct, ct_grid.direction, thickness, where, dose_fraction=CROP_DOSE_FRACTION
    )
    about = {"to": options.crop, "margin_mm": options.crop_margin_mm}
    if options.crop == "dose":
        about["level_pct_of_dmax"] = 100.0 * CROP_DOSE_FRACTION
    if region is None:
        return target, how, None, {**about, "applied": False, "reason": f"no {options.crop} found: the grid is kept"}
    box = crop_box(target, region, options.crop_margin_mm)
    if box is None:
        raise GeometryError(f"--crop {options.crop}: the region lies wholly outside the output grid", path=where)
    cropped = target.crop(*box)
    about.update(
        {
            "applied": True,
            "region": region.about,
            "box_kji": [[b.start, b.stop] for b in box],
            "uncropped_shape": list(target.shape),
            "uncropped_ijk_to_lps": target.affine.tolist(),
        }
    )
    ct_box = box if target.equal(geometry.grid) else None
    how = f"{how}, cropped to the {options.crop} (+ {options.crop_margin_mm:g} mm): {list(cropped.shape)} voxels"
    return cropped, how, ct_box, about


def _dose_on(target, native: Optional[Volume], doses: list, interpolator: Interpolator, resampler) -> tuple:
    """The dose (sum) resampled onto ``target``, and the engine's steps before the resampler (if any)."""
    if native is not None:
        return _resample_dose(native, target, interpolator, resampler)
    dose_out = np.zeros(target.shape, dtype=np.float32)
    steps: list = []
    for volume, _geometry, _info in doses:
        values, dose_steps = _resample_dose(volume, target, interpolator, resampler)
        dose_out += values
        steps.extend(dose_steps)
    return dose_out, steps


def _source_for(volume: Volume, resampler, *, regular: Optional[Grid] = None, fill: float = 0.0) -> tuple:
    """``volume`` as ``resampler`` can take it, and what the engine did to it first.

    A resampler that takes only evenly spaced, orthogonal grids (an ITK image, as Slicer's CLIs
    read them) would misplace uneven frames; the engine first puts such a volume exactly onto the
    ``regular`` grid (default: the evenly spaced grid over it at its smallest slice step).
    """
    grid = volume.grid
    if not resampler.uniform_sources_only or (grid.is_uniform and grid.is_orthogonal()):
        return volume, []
    regular = regular if regular is not None else uniform_cover(grid)
    values = resample(volume, regular, Interpolator.LINEAR, fill=fill, dtype=volume.array.dtype)
    step = (
        f"{volume.description or 'volume'}: {'uneven slices' if not grid.is_uniform else 'non-orthogonal axes'}, "
        f"put by the engine onto an even grid ({regular.spacing[2]:g} mm steps, linear) before the "
        f"{resampler.name} resampler"
    )
    return volume.with_array(values, grid=regular), [step]


#: float16 has 11 significant bits: rounding to nearest moves a value by at most half a unit in the last place.
FLOAT16_RELATIVE_BOUND = 2.0**-11
#: Below the smallest normal float16 (6.1e-5) values are subnormal: steps of 2^-24, so at most half that.
FLOAT16_SUBNORMAL_BOUND = 2.0**-25
FLOAT16_MAX = 65504.0


def _to_float16(dose: np.ndarray, case: Case) -> dict:
    """Round ``dose`` (float32, in place) to the values float16 holds; what it cost, for meta.json."""
    peak = float(dose.max()) if dose.size else 0.0
    if peak > FLOAT16_MAX:
        raise DoseAlignError(
            f"the dose reaches {peak:.6g}, beyond float16's largest value {FLOAT16_MAX:g}",
            path=case.doses[0].path,
            hint="export without --dose-dtype float16",
        )
    rounded = dose.astype(np.float16).astype(np.float32)
    error = np.abs(rounded - dose)
    np.copyto(dose, rounded)
    return {
        "dtype": "float16",
        "computed_dtype": "float32",
        "float16_max_abs_error": float(error.max()) if error.size else 0.0,
        "float16_error_bound": {
            "relative": FLOAT16_RELATIVE_BOUND,
            "absolute_below_6.1e-5": FLOAT16_SUBNORMAL_BOUND,
            "rule": "|stored - computed| <= 2^-11 x |computed| (round to nearest, 11 significant bits); "
            "below 6.1e-5 (subnormal) <= 2^-25; the audit and every format see the stored values",
        },
    }


def _reporter(progress: Progress) -> Callable[[float, str], None]:
    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, message)

    return report


def _read_doses(case: Case, options: AlignOptions) -> tuple:
    doses, frames = [], []
    for obj in case.doses:
        volume, geometry, info = read_rtdose(obj.path, allow_relative=options.allow_relative)
        frames.append((obj.path, volume.grid.frame_of_reference_uid))
        error = frame_mismatch(case.ct.frame_of_reference_uid, frames)
        if error is not None:
            raise error
        doses.append((volume, geometry, info))
    error = sum_mismatch([(obj.path, dose[2]) for obj, dose in zip(case.doses, doses)])
    if error is not None:
        raise error
    first_info = doses[0][2]
    copies = _copied_doses(case, doses)
    dose_meta = {
        "units": first_info.units,
        "type": first_info.dose_type,
        "summation_type": case.summation_type,
        "summed_files": [obj.rel_path for obj in case.doses] if len(case.doses) > 1 else [],
        "left_out": [{"file": f, "reason": r} for f, r in case.left_out],
        "dose_grid_scaling": [d[2].scaling for d in doses],
        "bits_allocated": [d[2].bits_allocated for d in doses],
        "native_grids": [{**d[0].grid.to_dict(), **d[1].describe()} for d in doses],
    }
    if copies:
        dose_meta[_COPIES_KEY] = copies  # taken off into the case's warnings (run_case)
    return doses, dose_meta


#: dose_meta's key for the warnings of :func:`_copied_doses` (not part of meta.json's ``dose``).
_COPIES_KEY = "_copies"


def _copied_doses(case: Case, doses: list) -> list:
    """A warning for each dose of a sum that is the same grid and the same values as an earlier one of it (a plan
    copied under new UIDs, a dose file exported twice): the sum would count it twice."""
    if len(doses) < 2:
        return []
    import hashlib

    seen: dict = {}
    said = []
    for obj, (volume, _geometry, _info) in zip(case.doses, doses):
        array = np.ascontiguousarray(volume.array)
        key = (hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest(), array.shape, str(array.dtype))
        earlier = seen.get(key)
        if earlier is not None and earlier[1].grid.equal(volume.grid) and np.array_equal(earlier[1].array, array):
            said.append(
                f"RTDOSE {obj.rel_path} holds the same dose as {earlier[0].rel_path} (same grid, same values), and "
                f"this case sums both ({case.summation_type}): if one is a copy of the other, the sum counts it twice"
                + (" (export without --sum-plans)" if case.summation_type == "PLAN_SUM" else "")
            )
        else:
            seen.setdefault(key, (obj, volume))
    return said


def _native_sum(doses: list) -> Optional[Volume]:
    """The dose sum on the first dose's grid when all doses share it (the usual per-beam export)."""
    first = doses[0][0]
    if any(not d[0].grid.equal(first.grid) for d in doses[1:]):
        return None
    if len(doses) == 1:
        return first
    total = first.array.copy()
    for volume, _g, _i in doses[1:]:
        total += volume.array
    return first.with_array(total)


def _covering_sum(doses: list, target: Grid, dose_out: np.ndarray, dose_meta: dict) -> Volume:
    """The sum of doses on different grids, on a grid covering them all (:func:`covering_grid`): the native
    dose the audit compares the output with (its maximum, the integral outside the output grid)."""
    cover = covering_grid([d[0].grid for d in doses])
    if target.equal(cover):
        values = dose_out
    else:
        values, _steps = _dose_on(cover, None, doses, Interpolator.LINEAR, ENGINE_RESAMPLER)
    dose_meta["native_sum"] = (
        f"the {len(doses)} doses lie on different grids: the audit's native dose is their sum on a grid covering "
        f"them all (the first's axes and voxel size, {list(cover.shape)} voxels), each resampled (linear) onto it"
    )
    return Volume(values, cover, doses[0][0].units, "dose")


def _resample_dose(volume: Volume, target, interpolator: Interpolator, resampler) -> tuple:
    source, steps = _source_for(volume, resampler)
    values = resampler(source, target, interpolator, fill=0.0, dtype=np.float32)
    if interpolator in (Interpolator.BSPLINE, Interpolator.WINDOWED_SINC):
        np.maximum(values, 0.0, out=values)  # these overshoot; dose is never negative
    return values, steps


def _meta(case, options, ct_volume, dose_volume, geometry, ct_note, how, dose_meta, native) -> dict:
    grid = ct_volume.grid
    ct_files = list(dict.fromkeys(case.ct.slices[i].rel_path for i in geometry.order))  # a multi-frame file once
    ct_meta = {
        "checks": geometry.checks,
        "slice_step_mm": geometry.typical_step_mm,
        "uniform": geometry.uniform,
        "tilt_degrees": geometry.tilt_degrees,
        "missing_slices": [{"after_mm": d, "count": n} for d, n in geometry.missing_slices],
        "regularized": ct_note is not None,
        "regularization": ct_note,
        "native_grid": geometry.grid.to_dict(),
    }
    dose_values = dose_volume.array
    native_max = float(native.array.max()) if native is not None else None
    return {
        "dosealign_version": __version__,
        "case_id": case.case_id,
        "patient_id": case.patient_id,
        "shape": list(grid.shape),
        "axes": ["k (slice)", "j (row)", "i (column)"],
        "spacing": grid.spacing.tolist(),
        "spacing_kji": grid.spacing[::-1].tolist(),
        "ijk_to_lps": grid.affine.tolist(),
        "ijk_to_ras": grid.ras_affine().tolist(),
        "frame_of_reference_uid": grid.frame_of_reference_uid,
        "arrays": {
            "ct": {"dtype": str(ct_volume.array.dtype), "units": "HU", "outside_value": options.ct_fill_hu},
            "dose": {"dtype": str(dose_values.dtype), "units": dose_volume.units, "outside_value": 0.0},
        },
        "source": {
            "ct_files": ct_files,
            "rtdose_files": [d.rel_path for d in case.doses],
            "rtplan_file": case.plan.rel_path if case.plan is not None else None,
            "rtstruct_files": [s.rel_path for s in case.structs],
            "ct_series_uid": case.ct.series_uid,
            "rtdose_sop_uids": [d.sop_instance_uid for d in case.doses],
            "frame_of_reference_uid": case.ct.frame_of_reference_uid,
            "study_uid": case.ct.study_uid,
        },
        "dose": {**dose_meta, "max_gy_native": native_max, "max_gy_output": float(dose_values.max())},
        "resampling": {
            "reference": options.reference.value,
            "reference_grid": how,
            "interpolator": options.interpolator.value,
        },
        "geometry": {"ct": ct_meta},
        "links": list(case.notes),
        "related_beam_doses": [d.rel_path for d in case.related_beam_doses],
        "options": options.to_dict(),
    }
