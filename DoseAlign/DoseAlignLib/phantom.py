"""Synthetic DICOM-RT studies with known geometry and values: the test oracle of the engine.

:func:`write_phantom` writes a planning CT series, an RTSTRUCT, an RTPLAN and one or more
RTDOSE files for a :class:`PhantomSpec`, and returns a :class:`PhantomTruth` that says where
everything is and what every voxel should hold. The geometry is built here from the spec with
plain numpy, on purpose without any of the engine's readers or helpers, so that the engine can be
checked against it:

* ImageOrientationPatient is the row direction (increasing column index) then the column
  direction (increasing row index); the slice normal is row x column.
* PixelSpacing is [spacing between rows, spacing between columns]; voxel (column c, row r) of a
  slice lies at ``IPP + c * column_spacing * row_dir + r * row_spacing * col_dir``.
* CT slice n lies at ``first + offset_n * normal`` (plus ``tan(tilt) * offset_n * col_dir`` with a
  gantry tilt). Dose frame n lies at ``IPP + offset_n * normal`` with ``offset_n`` the relative
  GridFrameOffsetVector; stored dose = ``round(D / DoseGridScaling)`` with D at the voxel centre.

Every decimal string (DS) is written with at most 16 characters; the truth holds the values as
read back from those strings, so it matches the files to about 1e-12 mm.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_STRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # retired Detached Study Management, as TPS write it

#: ImageOrientationPatient (row cosines, column cosines) per PatientPosition, as scanners write it.
PATIENT_POSITION_IOP = {
    "HFS": (1, 0, 0, 0, 1, 0),
    "HFP": (-1, 0, 0, 0, -1, 0),
    "FFS": (-1, 0, 0, 0, 1, 0),
    "FFP": (1, 0, 0, 0, -1, 0),
    "HFDL": (0, -1, 0, 1, 0, 0),
    "HFDR": (0, 1, 0, -1, 0, 0),
    "FFDL": (0, 1, 0, 1, 0, 0),
    "FFDR": (0, -1, 0, -1, 0, 0),
}
#: Vertices of the polygon written for every circle or ellipse cross-section.
CONTOUR_VERTICES = 72
_PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3


@dataclass(frozen=True)
class PhantomSpec:
    """What to write; every length in mm, every position in DICOM patient coordinates (LPS).

    Sizes are (columns, rows, slices or frames); pixel spacings are in DICOM order (row spacing,
    column spacing). ``oblique_degrees`` rotates the orientation of ``patient_position`` about the
    L, then P, then S axis (extrinsic, right-handed); ``dose_oblique_degrees`` replaces it for the
    dose grid. Explicit ``dose_frame_offsets`` (first 0, strictly monotonic) override
    ``dose_frame_spacing`` and ``frame_order``. ``gfov_mode="absolute"`` writes the frames'
    z positions (``IPP_z + offset_n * normal_z``) and needs a dose normal of +z or -z.

    ``anatomy="patient"`` writes a thorax instead of the geometric phantom: a body outline with a
    layer of fat, lungs, a heart, a spine (vertebral body, bony arch around the spinal cord), a
    tumour (GTV) in the right lung with its PTV, and a couch under the body (CT only); with
    ``dose_shape="plan"`` its dose is a 7-field conformal plan (see :func:`patient_dose`).
    ``roi_names`` (``(("SpinalCord", "Cord"), ("Heart", ""), ...)``) writes a ROI under another
    name, or not at all (""); ``target_offset_lps`` moves the tumour. ``boost_fraction`` > 0 adds a
    second plan ("BOOST") on the same CT with a PLAN dose of that fraction of the first plan's.
    ``ct_noise_hu`` adds seeded Gaussian noise of that standard deviation to the stored CT numbers
    (as a scanner's; for realistic file sizes); :meth:`PhantomTruth.hu_at` stays noise-free.
    ``extra_series`` adds image series to the study, each in its own folder named by its kind, in the
    same frame of reference, none referenced by the RTSTRUCT: "rescan" (a CT covering more than the
    planning CT, slices at the dose's frame step), "cbct" (CT images, SeriesDescription "CBCT"), "mr"
    (MR images) and "mr_as_ct" (CT images whose Modality says MR).
    """

    patient_id: str = "DA-PHANTOM-001"
    patient_name: str = "Phantom^DoseAlign"
    patient_position: str = "HFS"
    oblique_degrees: tuple = (0.0, 0.0, 0.0)
    dose_oblique_degrees: Optional[tuple] = None
    ct_size: tuple = (64, 64, 40)
    ct_pixel_spacing: tuple = (1.0, 1.0)
    ct_slice_spacing: float = 2.5
    ct_center_lps: tuple = (0.0, 0.0, 0.0)
    ct_slice_spacings: Optional[Sequence[float]] = None
    ct_missing_slices: tuple = ()
    ct_gantry_tilt_degrees: float = 0.0
    ct_field: str = "anatomy"
    ct_linear: tuple = (2.0, -1.5, 3.0, 40.0)
    ct_rescale: tuple = (1.0, -1024.0)
    dose_size: tuple = (40, 36, 20)
    dose_pixel_spacing: tuple = (2.5, 2.5)
    dose_frame_spacing: float = 3.0
    dose_frame_offsets: Optional[Sequence[float]] = None
    dose_center_offset_lps: tuple = (1.3, -2.7, 0.9)
    gfov_mode: str = "relative"
    frame_order: str = "increasing"
    dose_field: tuple = (0.02, -0.03, 0.05, 30.0)
    dose_shape: str = "linear"
    dose_bits: int = 16
    dose_units: str = "GY"
    dose_summation: str = "PLAN"
    n_beams: int = 3
    write_plan_dose: bool = True
    write_beam_doses: bool = False
    with_structures: bool = True
    extra_organs: int = 0  # further spherical ROIs ("Organ 1".."Organ N") on a ring around the centre
    with_plan: bool = True
    prescription_gy: float = 60.0
    shuffle_files: bool = True
    seed: int = 0
    # added later; left out of the UIDs' seed at their defaults, so earlier studies keep their UIDs
    anatomy: str = "geometric"
    roi_names: tuple = ()
    target_offset_lps: tuple = (0.0, 0.0, 0.0)
    boost_fraction: float = 0.0
    ct_noise_hu: float = 0.0
    extra_series: tuple = ()


#: PhantomSpec fields added after the first release: at their defaults they do not change the UIDs.
_LATER_FIELDS = ("anatomy", "roi_names", "target_offset_lps", "boost_fraction", "ct_noise_hu", "extra_series")


@dataclass
class RoiTruth:
    """One ROI of the RTSTRUCT and the analytic shape it was drawn from.

    ``shape`` is "elliptic_cylinder", "sphere", "cylinder", "annulus" or "point". Prisms run along
    ``axis`` (the CT slice normal) through ``center_lps``; ``u_dir`` and ``v_dir`` span their
    cross-section. ``params`` holds the radii (mm); ``length_mm`` is None for an unbounded prism;
    ``volume_cc`` is the analytic volume, None where there is none. ``role`` is the ROI's part in
    the phantom (its default name); ``written`` is False for a ROI left out of the RTSTRUCT.
    """

    number: int
    name: str
    interpreted_type: str
    shape: str
    center_lps: np.ndarray
    axis: np.ndarray
    u_dir: np.ndarray
    v_dir: np.ndarray
    params: dict
    length_mm: Optional[float]
    volume_cc: Optional[float]
    color: tuple
    role: str = ""
    written: bool = True

    def __post_init__(self) -> None:
        self.role = self.role or self.name


@dataclass
class PhantomTruth:
    """Everything :func:`write_phantom` wrote and the values the files must yield.

    CT lists (``ct_files``, ``ct_sop_uids``, ``ct_slice_positions``, ``ct_slice_offsets``,
    ``ct_slice_indices``) are in spatial order along ``ct_normal`` and hold the written slices
    only; ``ct_origin`` is the position of the first of them. ``ct_slice_offsets`` are mm along the
    normal from it. Dose grids share ``dose_origin`` (IPP of the first frame) and directions;
    ``dose_frame_offsets`` are the relative offsets in frame order and ``dose_frame_positions``
    ``dose_origin . dose_normal + offsets``. ``dose_files[n]`` carries beam
    ``dose_beam_numbers[n]`` (None for the whole plan) with scaling ``dose_grid_scalings[n]``.
    """

    spec: PhantomSpec
    out_dir: Path
    ct_files: list
    dose_files: list
    dose_beam_numbers: list
    plan_file: Optional[Path]
    struct_file: Optional[Path]
    study_uid: str
    frame_of_reference_uid: str
    ct_series_uid: str
    ct_sop_uids: list
    struct_series_uid: str
    struct_sop_uid: str
    plan_series_uid: str
    plan_sop_uid: str
    dose_series_uid: str
    dose_sop_uids: list
    ct_center: np.ndarray
    ct_origin: np.ndarray
    ct_row_dir: np.ndarray
    ct_col_dir: np.ndarray
    ct_normal: np.ndarray
    ct_pixel_spacing: tuple
    ct_slice_positions: np.ndarray
    ct_slice_offsets: np.ndarray
    ct_slice_indices: list
    dose_origin: np.ndarray
    dose_row_dir: np.ndarray
    dose_col_dir: np.ndarray
    dose_normal: np.ndarray
    dose_pixel_spacing: tuple
    dose_frame_offsets: np.ndarray
    dose_frame_positions: np.ndarray
    dose_shape: tuple
    dose_corners_lps: np.ndarray
    dose_bounds_lps: np.ndarray
    dose_grid_scalings: list
    beam_numbers: tuple
    beam_weights: tuple
    rois: list = field(default_factory=list)
    boost_plan_file: Optional[Path] = None
    boost_dose_file: Optional[Path] = None
    boost_sop_uids: tuple = ()  # (RTPLAN, RTDOSE) of the boost plan
    extra_series: dict = field(default_factory=dict)  # kind -> (folder, SeriesInstanceUID)

    def dose_at(self, points_lps: np.ndarray, beam_number: Optional[int] = None) -> np.ndarray:
        """The analytic dose field, the truth the RTDOSE files were quantized from.

        Parameters
        ----------
        points_lps : (..., 3) array
            Points in patient coordinates (LPS, mm).
        beam_number : int, optional
            Give one beam's share (``beam_weights``) instead of the whole plan.

        Returns
        -------
        (...) array
            Dose in Gy (in DoseUnits, also for RELATIVE), extended linearly outside the grid.
        """
        points = np.asarray(points_lps, dtype=np.float64)
        if beam_number is None:
            return _dose_field(self.spec, self.rois, points)
        return _dose_field(self.spec, self.rois, points, self.beam_numbers.index(beam_number), self.beam_weights)

    def hu_at(self, points_lps: np.ndarray) -> np.ndarray:
        """The analytic CT number, before storage as integers (within RescaleSlope / 2).

        Parameters
        ----------
        points_lps : (..., 3) array
            Points in patient coordinates (LPS, mm).

        Returns
        -------
        (...) array
            HU: the linear field, or the piecewise-constant anatomy (geometric: air -1000, body 0,
            ring -100, bone 700, cord 30, PTV 40; patient: see :func:`_patient_hu`).
        """
        p = np.asarray(points_lps, dtype=np.float64)
        if self.spec.ct_field == "linear":
            a, b, c, d = self.spec.ct_linear
            return a * p[..., 0] + b * p[..., 1] + c * p[..., 2] + d
        return _anatomy_hu(self.rois, p)

    def roi(self, name: str) -> RoiTruth:
        """The ROI called ``name``."""
        return next(r for r in self.rois if r.name == name)


# ---- small helpers ----------------------------------------------------------------------------


def _ds(value: float) -> str:
    """``value`` as a DICOM decimal string of at most 16 characters."""
    value = float(value)
    if abs(value) < 1e-12:
        return "0"
    for digits in range(15, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot write {value} as a decimal string")


def _q(values: np.ndarray) -> np.ndarray:
    """The values as they read back from their decimal strings."""
    return np.vectorize(lambda v: float(_ds(v)), otypes=[np.float64])(np.asarray(values, dtype=np.float64))


def _rotation(degrees: Sequence[float]) -> np.ndarray:
    """Rotation about L, then P, then S (extrinsic, right-handed, degrees)."""
    ax, ay, az = np.radians(np.asarray(degrees, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _orientation(position: str, degrees: Sequence[float]) -> tuple:
    """Row and column unit vectors (as written) and their cross product."""
    iop = np.array(PATIENT_POSITION_IOP[position], dtype=np.float64)
    rot = _rotation(degrees)
    row, col = _q(rot @ iop[:3]), _q(rot @ iop[3:])
    return row, col, np.cross(row, col)


def _spec_key(spec: PhantomSpec) -> str:
    """The spec's repr, less the fields added later while they are at their defaults."""
    parts = []
    for f in fields(spec):
        value = getattr(spec, f.name)
        if f.name in _LATER_FIELDS and value == f.default:
            continue
        parts.append(f"{f.name}={value!r}")
    return f"{type(spec).__qualname__}({', '.join(parts)})"


def _uid_maker(spec: PhantomSpec):
    """Deterministic 2.25 UIDs from the seed and the spec."""
    base = f"DoseAlign phantom|{spec.seed}|{_spec_key(spec)}"

    def make(role: str) -> str:
        digest = hashlib.sha256(f"{base}|{role}".encode()).digest()
        return "2.25." + str(int.from_bytes(digest[:16], "big"))

    return make


def _seq(*items: Dataset) -> DicomSequence:
    return DicomSequence(list(items))


def _item(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _check_spec(spec: PhantomSpec) -> None:
    choices = {
        "patient_position": tuple(PATIENT_POSITION_IOP),
        "ct_field": ("anatomy", "linear"),
        "dose_shape": ("linear", "plan"),
        "gfov_mode": ("relative", "absolute"),
        "frame_order": ("increasing", "decreasing"),
        "dose_bits": (16, 32),
        "dose_units": ("GY", "RELATIVE"),
        "dose_summation": ("PLAN", "BEAM", "FRACTION"),
        "anatomy": ("geometric", "patient"),
    }
    for name, allowed in choices.items():
        if getattr(spec, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {getattr(spec, name)!r}")
    if min(spec.ct_size) < 1 or min(spec.dose_size) < 1 or spec.n_beams < 1:
        raise ValueError("sizes and n_beams must be positive")
    if any(i < 0 or i >= spec.ct_size[2] for i in spec.ct_missing_slices):
        raise ValueError(f"ct_missing_slices {spec.ct_missing_slices} outside 0..{spec.ct_size[2] - 1}")
    if len(set(spec.ct_missing_slices)) >= spec.ct_size[2]:
        raise ValueError("ct_missing_slices drops every slice")
    if not 0.0 <= spec.boost_fraction <= 10.0:
        raise ValueError(f"boost_fraction must be 0 (no boost) to 10, got {spec.boost_fraction}")


# ---- geometry ---------------------------------------------------------------------------------


@dataclass
class _Slices:
    """Parallel planes of voxels: directions, (row, column) spacing, each plane's first voxel."""

    row: np.ndarray
    col: np.ndarray
    normal: np.ndarray
    spacing: tuple
    rows: int
    cols: int
    positions: np.ndarray  # (n, 3), as written
    offsets: np.ndarray  # (n,) mm along the normal from plane 0, in plane order

    def centres(self) -> np.ndarray:
        """Voxel centres ``(n, rows, cols, 3)``."""
        c = np.arange(self.cols, dtype=np.float64)[np.newaxis, :, np.newaxis]
        r = np.arange(self.rows, dtype=np.float64)[:, np.newaxis, np.newaxis]
        in_plane = c * self.spacing[1] * self.row + r * self.spacing[0] * self.col
        return self.positions[:, np.newaxis, np.newaxis, :] + in_plane

    def in_plane_half(self) -> np.ndarray:
        """Vector from a plane's first voxel to the plane's centre."""
        return (self.cols - 1) / 2 * self.spacing[1] * self.row + (self.rows - 1) / 2 * self.spacing[0] * self.col


def _ct_slices(spec: PhantomSpec) -> tuple:
    """The written CT slices, the indices kept and the full scan length (mm)."""
    row, col, normal = _orientation(spec.patient_position, spec.oblique_degrees)
    n_cols, n_rows, n_slices = spec.ct_size
    if spec.ct_slice_spacings is None:
        offsets = np.arange(n_slices, dtype=np.float64) * float(spec.ct_slice_spacing)
    else:
        gaps = np.asarray(spec.ct_slice_spacings, dtype=np.float64).ravel()
        if gaps.size != n_slices - 1 or np.any(gaps <= 0):
            raise ValueError(f"ct_slice_spacings needs {n_slices - 1} positive gaps, got {gaps.tolist()}")
        offsets = np.concatenate([[0.0], np.cumsum(gaps)])
    spacing = tuple(float(_ds(s)) for s in spec.ct_pixel_spacing)
    kept = [i for i in range(n_slices) if i not in set(spec.ct_missing_slices)]
    ct = _Slices(row, col, normal, spacing, n_rows, n_cols, np.zeros((0, 3)), offsets)
    step = normal + np.tan(np.radians(spec.ct_gantry_tilt_degrees)) * col  # per mm along the normal
    first = (
        np.asarray(spec.ct_center_lps, dtype=np.float64) - ct.in_plane_half() - (offsets[0] + offsets[-1]) / 2 * step
    )
    ct.positions = _q(first + offsets[kept, np.newaxis] * step)
    ct.offsets = (ct.positions - ct.positions[0]) @ normal
    return ct, kept, float(offsets[-1] - offsets[0])


def _dose_slices(spec: PhantomSpec) -> _Slices:
    """The dose frames in frame order; frame 0 is at ImagePositionPatient."""
    degrees = spec.oblique_degrees if spec.dose_oblique_degrees is None else spec.dose_oblique_degrees
    row, col, normal = _orientation(spec.patient_position, degrees)
    n_cols, n_rows, n_frames = spec.dose_size
    if spec.dose_frame_offsets is None:
        sign = 1.0 if spec.frame_order == "increasing" else -1.0
        offsets = sign * np.arange(n_frames, dtype=np.float64) * float(spec.dose_frame_spacing)
    else:
        offsets = np.asarray(spec.dose_frame_offsets, dtype=np.float64).ravel()
        steps = np.diff(offsets)
        if offsets.size != n_frames or offsets[0] != 0 or not (np.all(steps > 0) or np.all(steps < 0)):
            raise ValueError(f"dose_frame_offsets needs {n_frames} strictly monotonic values starting at 0")
    offsets = _q(offsets)
    spacing = tuple(float(_ds(s)) for s in spec.dose_pixel_spacing)
    dose = _Slices(row, col, normal, spacing, n_rows, n_cols, np.zeros((0, 3)), offsets)
    centre = np.add(spec.ct_center_lps, spec.dose_center_offset_lps)
    origin = _q(centre - dose.in_plane_half() - (offsets.min() + offsets.max()) / 2 * normal)
    dose.positions = origin + offsets[:, np.newaxis] * normal
    return dose


def _shape_frame(normal: np.ndarray) -> tuple:
    """In-plane unit vectors: u as close to patient L as the plane allows, v towards P."""
    for axis in (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])):
        u = axis - (axis @ normal) * normal
        if np.linalg.norm(u) > 0.1:
            break
    u = u / np.linalg.norm(u)
    v = np.cross(normal, u)
    v = v / np.linalg.norm(v)
    return u, (-v if v[1] < 0 else v)


def _make_rois(ct: _Slices, center: np.ndarray, length: float, extra_organs: int = 0) -> list:
    """The five ROIs (and ``extra_organs`` spheres), sized from the CT's in-plane half width and scan length."""
    half = 0.5 * min((ct.cols - 1) * ct.spacing[1], (ct.rows - 1) * ct.spacing[0]) or 10.0
    length = length or 10.0
    n = ct.normal / np.linalg.norm(ct.normal)
    u, v = _shape_frame(n)
    middle = ct.positions[len(ct.positions) // 2] + ct.in_plane_half()
    r_ptv = 0.3 * min(half, length / 2)
    r_cord, r_out, r_in = 0.1 * half, 0.22 * half, 0.11 * half
    h_cord, h_ring = 0.6 * length, 0.5 * length
    table = [
        (1, "External", "EXTERNAL", "elliptic_cylinder", center, {"semi_axis_u": 0.85 * half, "semi_axis_v": 0.65 * half}, None, None),
        (2, "PTV", "PTV", "sphere", center + 0.15 * half * u - 0.1 * half * v, {"radius": r_ptv}, None, 4 / 3 * np.pi * r_ptv**3),
        (3, "Cord", "ORGAN", "cylinder", center + 0.45 * half * v, {"radius": r_cord, "bone_outer_radius": 1.8 * r_cord}, h_cord, np.pi * r_cord**2 * h_cord),
        (4, "Ring", "ORGAN", "annulus", center - 0.4 * half * u, {"outer_radius": r_out, "inner_radius": r_in}, h_ring, np.pi * (r_out**2 - r_in**2) * h_ring),
        (5, "Marker", "MARKER", "point", middle + 0.3 * half * u + 0.2 * half * v, {}, None, None),
    ]  # fmt: skip
    colors = [(0, 255, 0), (255, 0, 0), (255, 255, 0), (0, 128, 255), (255, 0, 255)]
    r_organ = 0.12 * min(half, length / 2)
    for m in range(extra_organs):  # inside the External, clear of the others' centres
        angle = 2 * np.pi * (m + 0.5) / extra_organs
        at = center + 0.55 * half * (np.cos(angle) * 0.85 * u + np.sin(angle) * 0.65 * v)
        table.append(
            (6 + m, f"Organ {m + 1}", "ORGAN", "sphere", at, {"radius": r_organ}, None, 4 / 3 * np.pi * r_organ**3)
        )
        colors.append((40 * m % 256, 200, 255 - 40 * m % 256))
    return [
        RoiTruth(num, name, kind, shape, np.array(c, dtype=np.float64), n, u, v, params, h, None if vol is None else vol / 1000.0, color)
        for (num, name, kind, shape, c, params, h, vol), color in zip(table, colors)
    ]  # fmt: skip


def _rename_rois(rois: list, renames: Sequence) -> None:
    """Apply ``PhantomSpec.roi_names``: ``(role, name)`` pairs; an empty name leaves the ROI out."""
    by_role = {r.role: r for r in rois}
    for role, name in renames:
        if role not in by_role:
            raise ValueError(f"roi_names: no ROI {role!r} in this phantom (it has: {', '.join(by_role)})")
        if name:
            by_role[role].name = str(name)
        else:
            by_role[role].written = False


#: The patient anatomy's CT numbers (HU), painted in this order (later ones win).
PATIENT_HU = {
    "air": -1000.0,
    "couch_foam": -850.0,
    "couch_shell": 250.0,
    "fat": -90.0,
    "soft_tissue": 40.0,
    "lung": -820.0,
    "heart": 45.0,
    "vertebral_body": 260.0,
    "bony_arch": 700.0,
    "cord": 30.0,
    "tumour": 35.0,
}
#: Thickness (mm) of the fat under the skin and of the couch's shell; the couch's full thickness.
FAT_MM, COUCH_SHELL_MM, COUCH_MM = 12.0, 3.0, 40.0


def _patient_rois(ct: _Slices, center: np.ndarray, length: float, spec: PhantomSpec) -> list:
    """A thorax sized from the CT: body, lungs, heart, spinal cord, GTV and PTV (the couch is CT only).

    The body is an elliptic cylinder, shifted anteriorly to leave room for the couch; lungs and heart
    are ellipsoids (they taper towards their ends); the cord runs through the whole scan inside a
    bony arch, with the vertebral body in front of it; the tumour sits in the right lung.
    """
    half_u = 0.5 * (ct.cols - 1) * ct.spacing[1] or 10.0
    half_v = 0.5 * (ct.rows - 1) * ct.spacing[0] or 10.0
    length = length or 10.0
    n = ct.normal / np.linalg.norm(ct.normal)
    u, v = _shape_frame(n)  # u towards patient left, v towards posterior
    a, b = 0.88 * half_u, 0.68 * half_v
    body = center - 0.12 * half_v * v
    lung_axes = {"semi_axis_u": 0.27 * a, "semi_axis_v": 0.55 * b, "semi_axis_w": 0.75 * length}
    heart_axes = {"semi_axis_u": 0.2 * a, "semi_axis_v": 0.26 * b, "semi_axis_w": 0.3 * length}
    r_cord = max(0.06 * b, 4.0)
    cord_at = body + 0.72 * b * v
    r_gtv = max(0.18 * min(a, b, length / 2), 3.0)
    r_ptv = r_gtv + max(0.5 * r_gtv, 5.0)
    tumour = body - 0.5 * a * u - 0.05 * b * v + np.asarray(spec.target_offset_lps, dtype=np.float64)
    table = [
        (1, "External", "EXTERNAL", "elliptic_cylinder", body, {"semi_axis_u": a, "semi_axis_v": b}, None, None),
        (2, "PTV", "PTV", "sphere", tumour, {"radius": r_ptv}, None, 4 / 3 * np.pi * r_ptv**3),
        (3, "GTV", "GTV", "sphere", tumour, {"radius": r_gtv}, None, 4 / 3 * np.pi * r_gtv**3),
        (4, "SpinalCord", "ORGAN", "cylinder", cord_at, {"radius": r_cord, "bone_outer_radius": 2.4 * r_cord}, 1e6, None),
        (5, "Lung_R", "ORGAN", "ellipsoid", body - 0.5 * a * u + 0.02 * b * v, lung_axes, None, None),
        (6, "Lung_L", "ORGAN", "ellipsoid", body + 0.5 * a * u + 0.02 * b * v, lung_axes, None, None),
        (7, "Heart", "ORGAN", "ellipsoid", body + 0.1 * a * u - 0.45 * b * v, heart_axes, None, None),
    ]  # fmt: skip
    colors = [(0, 255, 0), (255, 0, 0), (255, 128, 0), (255, 255, 0), (0, 160, 255), (0, 96, 255), (255, 0, 160)]
    rois = []
    for (num, name, kind, shape, c, params, h, vol), color in zip(table, colors):
        if shape == "ellipsoid":
            vol = 4 / 3 * np.pi * params["semi_axis_u"] * params["semi_axis_v"] * params["semi_axis_w"]
        rois.append(
            RoiTruth(num, name, kind, shape, np.array(c, dtype=np.float64), n, u, v, params, h, None if vol is None else vol / 1000.0, color)
        )  # fmt: skip
    return rois


def _patient_hu(by_role: dict, points: np.ndarray) -> np.ndarray:
    """The thorax's CT numbers: couch, fat under the skin, soft tissue, lungs, heart, spine, cord, tumour."""
    body = by_role["External"]
    d = points - body.center_lps
    x, y = d @ body.u_dir, d @ body.v_dir
    a, b = body.params["semi_axis_u"], body.params["semi_axis_v"]
    hu = np.full(x.shape, PATIENT_HU["air"])
    couch_top = b + 2.0  # the couch's top surface, 2 mm below the body's back (y grows posterior)
    in_couch = (y >= couch_top) & (y < couch_top + COUCH_MM) & (np.abs(x) < 1.15 * a)
    shell = in_couch & ((y < couch_top + COUCH_SHELL_MM) | (y >= couch_top + COUCH_MM - COUCH_SHELL_MM))
    hu = np.where(in_couch, PATIENT_HU["couch_foam"], hu)
    hu = np.where(shell, PATIENT_HU["couch_shell"], hu)
    hu = np.where((x / a) ** 2 + (y / b) ** 2 < 1, PATIENT_HU["fat"], hu)
    inner = ((x / (a - FAT_MM)) ** 2 + (y / (b - FAT_MM)) ** 2) < 1
    hu = np.where(inner, PATIENT_HU["soft_tissue"], hu)
    for role in ("Lung_R", "Lung_L"):
        hu = np.where(_roi_contains(by_role[role], points), PATIENT_HU["lung"], hu)
    hu = np.where(_roi_contains(by_role["Heart"], points), PATIENT_HU["heart"], hu)
    cord = by_role["SpinalCord"]
    rel = points - (cord.center_lps - 2.2 * cord.params["bone_outer_radius"] * cord.v_dir)
    vertebra = (rel @ cord.u_dir) ** 2 + (rel @ cord.v_dir) ** 2 < (1.6 * cord.params["bone_outer_radius"]) ** 2
    hu = np.where(vertebra, PATIENT_HU["vertebral_body"], hu)
    hu = np.where(_roi_contains(cord, points, "bone_outer_radius"), PATIENT_HU["bony_arch"], hu)
    hu = np.where(_roi_contains(cord, points), PATIENT_HU["cord"], hu)
    return np.where(_roi_contains(by_role["GTV"], points), PATIENT_HU["tumour"], hu)


#: The patient plan: fields, their penumbra (mm, one sigma of the error function), the aperture's margin
#: around the PTV (mm), attenuation per mm of tissue and the build-up depth (mm).
PLAN_FIELDS, PENUMBRA_SIGMA_MM, APERTURE_MARGIN_MM, MU_PER_MM, BUILDUP_MM = 7, 3.0, 6.0, 0.0045, 4.0
#: The patient plan's dose at the isocentre, as a share of the prescription.
ISOCENTRE_DOSE = 1.02


def _gantry_degrees(spec: PhantomSpec, beam: int, n_beams: int) -> float:
    """The gantry angle of beam index ``beam``: evenly spaced, from 10 degrees for the patient plan."""
    start = 10.0 if spec.anatomy == "patient" else 0.0
    return start + 360.0 * beam / n_beams


def patient_dose(spec: PhantomSpec, rois: list, points: np.ndarray, beam: Optional[int] = None) -> np.ndarray:
    """A conformal coplanar plan on the thorax (Gy at LPS points ``(..., 3)``; one field with ``beam``).

    Each of ``spec.n_beams`` fields (gantry angles :func:`_gantry_degrees`, axial, aimed at the PTV's
    centre) has a round aperture of the PTV's radius + 6 mm with an error-function penumbra
    (sigma 3 mm: 80-20 % over 5 mm), enters at the skin (the body's elliptic outline), builds up over
    the first millimetres and is attenuated by 0.45 %/mm of depth; there is no dose outside the body.
    The fields are weighted equally and scaled to 102 % of the prescription at the PTV's centre, so
    the PTV is covered (D98 about 95 %) and the dose falls steeply around it, with the entrance
    paths of the fields at 10-30 % of it. Not a dose calculation: a smooth, plan-like field.
    """
    by_role = {r.role: r for r in rois}
    ptv, body = by_role["PTV"], by_role["External"]
    points = np.asarray(points, dtype=np.float64)
    fields_at = [beam] if beam is not None else range(spec.n_beams)
    total = np.zeros(points.shape[:-1])
    for b in fields_at:
        total += _field(spec, body, ptv, points, b)
    iso = sum(_field(spec, body, ptv, ptv.center_lps[np.newaxis], b)[0] for b in range(spec.n_beams))
    return total * (ISOCENTRE_DOSE * spec.prescription_gy / iso)


def _field(spec: PhantomSpec, body: RoiTruth, ptv: RoiTruth, points: np.ndarray, beam: int) -> np.ndarray:
    """One field's relative dose (before the plan's scaling)."""
    angle = np.radians(_gantry_degrees(spec, beam, spec.n_beams))
    direction = np.sin(angle) * body.u_dir + np.cos(angle) * body.v_dir  # from the source (anterior at 0)
    rel = points - ptv.center_lps
    along = rel @ direction
    off_axis = np.linalg.norm(rel - along[..., np.newaxis] * direction, axis=-1)
    aperture = ptv.params["radius"] + APERTURE_MARGIN_MM
    profile = 0.5 * _erfc((off_axis - aperture) / (np.sqrt(2.0) * PENUMBRA_SIGMA_MM))
    # depth: distance back along the beam to the skin (the body's ellipse in the axial plane)
    a, b = body.params["semi_axis_u"], body.params["semi_axis_v"]
    d = points - body.center_lps
    x, y = d @ body.u_dir, d @ body.v_dir
    dx, dy = float(direction @ body.u_dir), float(direction @ body.v_dir)
    qa = (dx / a) ** 2 + (dy / b) ** 2
    qb = -2.0 * (x * dx / a**2 + y * dy / b**2)
    qc = (x / a) ** 2 + (y / b) ** 2 - 1.0
    root = np.sqrt(np.maximum(qb**2 - 4 * qa * qc, 0.0))
    depth = np.maximum((-qb + root) / (2 * qa), 0.0)  # the larger root: back to where the beam entered
    inside = 0.5 * _erfc(qc * min(a, b) / (2.0 * np.sqrt(2.0)))  # 0 outside the skin, over about 2 mm
    buildup = 1.0 - 0.7 * np.exp(-depth / BUILDUP_MM)
    return profile * np.exp(-MU_PER_MM * depth) * buildup * inside


def _erfc(x: np.ndarray) -> np.ndarray:
    """The complementary error function (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7), numpy only."""
    x = np.asarray(x, dtype=np.float64)
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    result = poly * np.exp(-z * z)
    return np.where(x >= 0, result, 2.0 - result)


def _roi_contains(roi: RoiTruth, points: np.ndarray, radius_key: str = "radius") -> np.ndarray:
    d = points - roi.center_lps
    u, v, w = d @ roi.u_dir, d @ roi.v_dir, d @ roi.axis
    p = roi.params
    inside_length = np.ones(u.shape, bool) if roi.length_mm is None else np.abs(w) < roi.length_mm / 2
    if roi.shape == "elliptic_cylinder":
        return (u / p["semi_axis_u"]) ** 2 + (v / p["semi_axis_v"]) ** 2 < 1
    if roi.shape == "sphere":
        return u**2 + v**2 + w**2 < p["radius"] ** 2
    if roi.shape == "ellipsoid":
        return (u / p["semi_axis_u"]) ** 2 + (v / p["semi_axis_v"]) ** 2 + (w / p["semi_axis_w"]) ** 2 < 1
    if roi.shape == "cylinder":
        return (u**2 + v**2 < p[radius_key] ** 2) & inside_length
    if roi.shape == "annulus":
        rho2 = u**2 + v**2
        return (rho2 < p["outer_radius"] ** 2) & (rho2 >= p["inner_radius"] ** 2) & inside_length
    return np.zeros(u.shape, bool)


def _anatomy_hu(rois: list, points: np.ndarray) -> np.ndarray:
    """Air, a water body, a fat ring, vertebral bone around a cord, and a slightly denser PTV."""
    by_name = {r.role: r for r in rois}
    if "Lung_L" in by_name:
        return _patient_hu(by_name, points)
    hu = np.where(_roi_contains(by_name["External"], points), 0.0, -1000.0)
    hu = np.where(_roi_contains(by_name["Ring"], points), -100.0, hu)
    hu = np.where(_roi_contains(by_name["Cord"], points, "bone_outer_radius"), 700.0, hu)
    hu = np.where(_roi_contains(by_name["Cord"], points), 30.0, hu)
    return np.where(_roi_contains(by_name["PTV"], points), 40.0, hu)


def _cross_sections(roi: RoiTruth, plane_point: np.ndarray) -> list:
    """Closed polygons (each ``(N, 3)``) of ``roi`` in the slice plane through ``plane_point``."""
    w = float((plane_point - roi.center_lps) @ roi.axis)
    foot = roi.center_lps + w * roi.axis
    t = np.arange(CONTOUR_VERTICES) * 2 * np.pi / CONTOUR_VERTICES
    p = roi.params

    def ellipse(a: float, b: float, clockwise: bool = False) -> np.ndarray:
        tt = -t if clockwise else t
        return foot + a * np.cos(tt)[:, None] * roi.u_dir + b * np.sin(tt)[:, None] * roi.v_dir

    if roi.shape == "elliptic_cylinder":
        return [ellipse(p["semi_axis_u"], p["semi_axis_v"])]
    if roi.shape == "sphere":
        rho2 = p["radius"] ** 2 - w**2
        return [ellipse(np.sqrt(rho2), np.sqrt(rho2))] if rho2 > 1e-4 else []
    if roi.shape == "ellipsoid":
        scale2 = 1.0 - (w / p["semi_axis_w"]) ** 2
        if scale2 * min(p["semi_axis_u"], p["semi_axis_v"]) ** 2 <= 1e-4:
            return []
        return [ellipse(p["semi_axis_u"] * np.sqrt(scale2), p["semi_axis_v"] * np.sqrt(scale2))]
    if abs(w) >= roi.length_mm / 2:
        return []
    if roi.shape == "cylinder":
        return [ellipse(p["radius"], p["radius"])]
    return [ellipse(p["outer_radius"], p["outer_radius"]), ellipse(p["inner_radius"], p["inner_radius"], True)]


# ---- writing ----------------------------------------------------------------------------------


def _new_file(sop_class: str, sop_uid: str, common: dict) -> FileDataset:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", Dataset(), preamble=b"\0" * 128, file_meta=meta, is_implicit_VR=False, is_little_endian=True)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    for keyword, value in common.items():
        setattr(ds, keyword, value)
    return ds


def _save(ds: FileDataset, path: Path) -> Path:
    """Write ``ds`` to ``path`` whole or not at all (a hidden temporary name beside it, then renamed): a full disk
    leaves no file cut short that a later run would take for a user's edit."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        if _PYDICOM3:
            ds.save_as(temporary, enforce_file_format=True)
        else:
            ds.save_as(str(temporary), write_like_original=False)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return path


def _set_image_plane(ds: Dataset, grid: _Slices, position: np.ndarray, bits: int, signed: int) -> None:
    ds.ImagePositionPatient = [_ds(x) for x in position]
    ds.ImageOrientationPatient = [_ds(x) for x in (*grid.row, *grid.col)]
    ds.PixelSpacing = [_ds(x) for x in grid.spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = grid.rows, grid.cols
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = signed


def _file_names(spec: PhantomSpec, n_ct: int) -> tuple:
    """CT names (spatial order) and a name maker; seeded random hex names when shuffling."""
    if not spec.shuffle_files:
        return [f"CT{i + 1:04d}.dcm" for i in range(n_ct)], lambda kind: f"{kind}.dcm"
    rng = np.random.default_rng(spec.seed)
    used: set = set()

    def random_name(_kind: str = "") -> str:
        while True:
            name = f"{int(rng.integers(0, 16**8)):08x}.dcm"
            if name not in used:
                used.add(name)
                return name

    names = [random_name() for _ in range(n_ct)]
    while n_ct >= 3 and sorted(names) in (names, names[::-1]):
        names = [str(n) for n in rng.permutation(names)]
    return names, random_name


def _instance_numbers(spec: PhantomSpec, n: int) -> list:
    numbers = list(range(1, n + 1))
    if spec.shuffle_files and n >= 3:
        rng = np.random.default_rng(spec.seed + 1)
        while numbers in (sorted(numbers), sorted(numbers, reverse=True)):
            numbers = [int(v) for v in rng.permutation(n) + 1]
    return numbers


def _write_ct(out: Path, spec: PhantomSpec, ct: _Slices, rois: list, common: dict, ids: dict, names: list) -> list:
    points = ct.centres()
    if spec.ct_field == "linear":
        a, b, c, d = spec.ct_linear
        hu = a * points[..., 0] + b * points[..., 1] + c * points[..., 2] + d
    else:
        hu = _anatomy_hu(rois, points)
    slope, intercept = (float(_ds(x)) for x in spec.ct_rescale)
    if spec.ct_noise_hu > 0:
        noise = np.random.default_rng(spec.seed + 2).normal(0.0, spec.ct_noise_hu, hu.shape)
        hu = np.maximum(hu + noise, intercept)  # no stored value below 0
    stored = np.rint((hu - intercept) / slope)
    if stored.min() >= 0 and stored.max() <= 65535:
        dtype, signed = np.dtype("<u2"), 0
    elif stored.min() >= -32768 and stored.max() <= 32767:
        dtype, signed = np.dtype("<i2"), 1
    else:
        raise ValueError("CT values do not fit 16 bits with this ct_rescale")
    files = []
    numbers = _instance_numbers(spec, len(ct.positions))
    for n, (position, sop, number, name) in enumerate(zip(ct.positions, ids["ct"], numbers, names)):
        ds = _new_file(CT_IMAGE_STORAGE, sop, common)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = "CT"
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = ids["ct-series"], 1, number
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = ids["frame"], ""
        ds.PatientPosition = spec.patient_position
        ds.KVP = "120"
        ds.GantryDetectorTilt = _ds(spec.ct_gantry_tilt_degrees)
        ds.SliceThickness = _ds(spec.ct_slice_spacing)
        _set_image_plane(ds, ct, position, 16, signed)
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "HU"
        ds.PixelData = stored[n].astype(dtype).tobytes()
        files.append(_save(ds, out / name))
    return files


def _ct_ref(sop: str) -> Dataset:
    return _item(ReferencedSOPClassUID=CT_IMAGE_STORAGE, ReferencedSOPInstanceUID=sop)


def _write_struct(path: Path, ct: _Slices, rois: list, common: dict, ids: dict) -> Path:
    ds = _new_file(RT_STRUCT_STORAGE, ids["struct"], common)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = ids["struct-series"], 2, 1
    ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = "PHANTOM", "20240102", "093000"
    series = _item(SeriesInstanceUID=ids["ct-series"], ContourImageSequence=_seq(*[_ct_ref(s) for s in ids["ct"]]))
    study = _item(
        ReferencedSOPClassUID=STUDY_COMPONENT_SOP_CLASS,
        ReferencedSOPInstanceUID=ids["study"],
        RTReferencedSeriesSequence=_seq(series),
    )
    ds.ReferencedFrameOfReferenceSequence = _seq(
        _item(FrameOfReferenceUID=ids["frame"], RTReferencedStudySequence=_seq(study))
    )
    roi_items, contour_items, observations = [], [], []
    for roi in (r for r in rois if r.written):
        roi_items.append(
            _item(
                ROINumber=roi.number,
                ReferencedFrameOfReferenceUID=ids["frame"],
                ROIName=roi.name,
                ROIGenerationAlgorithm="MANUAL",
            )
        )
        observations.append(
            _item(
                ObservationNumber=roi.number,
                ReferencedROINumber=roi.number,
                RTROIInterpretedType=roi.interpreted_type,
                ROIInterpreter="",
            )
        )
        if roi.shape == "point":
            sections = [(ids["ct"][len(ct.positions) // 2], roi.center_lps[np.newaxis, :], "POINT")]
        else:
            sections = [
                (s, poly, "CLOSED_PLANAR") for s, p in zip(ids["ct"], ct.positions) for poly in _cross_sections(roi, p)
            ]
        contours = [
            _item(
                ContourImageSequence=_seq(_ct_ref(sop)),
                ContourGeometricType=kind,
                NumberOfContourPoints=len(poly),
                ContourNumber=k + 1,
                ContourData=[_ds(x) for x in poly.ravel()],
            )
            for k, (sop, poly, kind) in enumerate(sections)
        ]
        contour_items.append(
            _item(ROIDisplayColor=list(roi.color), ReferencedROINumber=roi.number, ContourSequence=_seq(*contours))
        )
    ds.StructureSetROISequence = _seq(*roi_items)
    ds.ROIContourSequence = _seq(*contour_items)
    ds.RTROIObservationsSequence = _seq(*observations)
    return _save(ds, path)


def _write_plan(
    path: Path,
    spec: PhantomSpec,
    rois: list,
    weights: tuple,
    common: dict,
    ids: dict,
    role: str = "plan",
    label: str = "PHANTOM",
    prescription_gy: Optional[float] = None,
) -> Path:
    ds = _new_file(RT_PLAN_STORAGE, ids[role], common)
    ds.Modality = "RTPLAN"
    ds.SeriesInstanceUID, ds.SeriesNumber = ids["plan-series"], 3
    ds.InstanceNumber = 1 if role == "plan" else 2
    ds.FrameOfReferenceUID = ids["frame"]
    ds.RTPlanLabel, ds.RTPlanDate, ds.RTPlanTime, ds.RTPlanGeometry = label, "20240102", "093000", "PATIENT"
    target = _item(DoseReferenceNumber=1, DoseReferenceType="TARGET", DoseReferenceDescription="PTV")
    target.TargetPrescriptionDose = _ds(spec.prescription_gy if prescription_gy is None else prescription_gy)
    target.DoseReferenceStructureType = "SITE"
    ptv = next(r for r in rois if r.role == "PTV")
    ptv_number = ptv.number
    if spec.with_structures:
        ds.ReferencedStructureSetSequence = _seq(
            _item(ReferencedSOPClassUID=RT_STRUCT_STORAGE, ReferencedSOPInstanceUID=ids["struct"])
        )
        target.DoseReferenceStructureType, target.ReferencedROINumber = "VOLUME", ptv_number
    ds.DoseReferenceSequence = _seq(target)
    ds.PatientSetupSequence = _seq(_item(PatientSetupNumber=1, PatientPosition=spec.patient_position))
    beam_refs = [_item(ReferencedBeamNumber=b + 1, BeamMeterset=_ds(200.0 * w)) for b, w in enumerate(weights)]
    ds.FractionGroupSequence = _seq(
        _item(
            FractionGroupNumber=1,
            NumberOfFractionsPlanned=30,
            NumberOfBeams=len(weights),
            NumberOfBrachyApplicationSetups=0,
            ReferencedBeamSequence=_seq(*beam_refs),
        )
    )
    isocenter = [_ds(x) for x in ptv.center_lps]
    beams = []
    for b in range(len(weights)):
        gantry = _ds(_gantry_degrees(spec, b, len(weights)))
        points = [
            _item(ControlPointIndex=0, CumulativeMetersetWeight="0", GantryAngle=gantry, IsocenterPosition=isocenter),
            _item(ControlPointIndex=1, CumulativeMetersetWeight="1"),
        ]
        beam = _item(BeamNumber=b + 1, BeamName=f"Beam {b + 1}", BeamType="STATIC", RadiationType="PHOTON")
        beam.TreatmentDeliveryType, beam.ReferencedPatientSetupNumber = "TREATMENT", 1
        beam.NumberOfWedges = beam.NumberOfCompensators = beam.NumberOfBoli = beam.NumberOfBlocks = 0
        beam.FinalCumulativeMetersetWeight, beam.NumberOfControlPoints = "1", 2
        beam.ControlPointSequence = _seq(*points)
        beams.append(beam)
    ds.BeamSequence = _seq(*beams)
    return _save(ds, path)


def _write_dose(
    path: Path,
    spec: PhantomSpec,
    grid: _Slices,
    values: np.ndarray,
    beam: Optional[int],
    common: dict,
    ids: dict,
    plan_role: str = "plan",
):
    """Write one RTDOSE of ``values`` (Gy at the voxel centres); returns its DoseGridScaling."""
    max_stored, dtype = (60000.0, np.dtype("<u2")) if spec.dose_bits == 16 else (2e9, np.dtype("<u4"))
    scaling = float(_ds(float(f"{max(values.max(), 1e-12) / max_stored:.8g}")))
    pixels = np.rint(values / scaling)
    if pixels.max() > np.iinfo(dtype).max:
        raise ValueError("dose values do not fit the pixel type")
    ds = _new_file(RT_DOSE_STORAGE, ids[f"dose-{beam}" if plan_role == "plan" else f"dose-{plan_role}"], common)
    ds.Modality = "RTDOSE"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = ids["dose-series"], 4, 1 if beam is None else beam + 1
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = ids["frame"], ""
    steps = np.abs(np.diff(grid.offsets))
    uneven = spec.dose_frame_offsets is not None and steps.size
    ds.SliceThickness = _ds(steps.mean() if uneven else spec.dose_frame_spacing)
    _set_image_plane(ds, grid, grid.positions[0], spec.dose_bits, 0)
    ds.NumberOfFrames = len(grid.offsets)
    ds.FrameIncrementPointer = Tag(0x3004, 0x000C)
    if spec.gfov_mode == "absolute":
        if abs(abs(grid.normal[2]) - 1) > 1e-9:
            raise ValueError("gfov_mode 'absolute' needs a dose normal of +z or -z")
        ds.GridFrameOffsetVector = [_ds(grid.positions[0][2] + o * grid.normal[2]) for o in grid.offsets]
    else:
        ds.GridFrameOffsetVector = [_ds(o) for o in grid.offsets]
    ds.DoseUnits, ds.DoseType = spec.dose_units, "PHYSICAL"
    ds.DoseSummationType = spec.dose_summation if beam is None else "BEAM"
    ds.DoseGridScaling = _ds(scaling)
    plan_ref = _item(ReferencedSOPClassUID=RT_PLAN_STORAGE, ReferencedSOPInstanceUID=ids[plan_role])
    if beam is not None:
        beam_ref = _seq(_item(ReferencedBeamNumber=beam))
        plan_ref.ReferencedFractionGroupSequence = _seq(
            _item(ReferencedFractionGroupNumber=1, ReferencedBeamSequence=beam_ref)
        )
    ds.ReferencedRTPlanSequence = _seq(plan_ref)
    ds.PixelData = pixels.astype(dtype).tobytes()
    _save(ds, path)
    return scaling


def _dose_field(
    spec: PhantomSpec, rois: list, points: np.ndarray, beam: Optional[int] = None, weights: tuple = ()
) -> np.ndarray:
    """The analytic dose (Gy) at LPS points ``(..., 3)``; with ``beam`` (an index) that beam's share.

    ``dose_shape`` "linear": ``dose_field`` (a, b, c, d) gives a*x + b*y + c*z + d, which trilinear
    interpolation reproduces exactly (the tests' oracle). "plan": a smooth plan-like dose, the
    prescription over the PTV falling off over a few mm to a 3 % bath (not exact); with
    ``anatomy="patient"`` the conformal multi-field plan of :func:`patient_dose`. A beam's share
    is ``weights[beam]`` of the whole, except for the patient plan, whose beams are its fields.
    """
    if spec.dose_shape == "plan" and spec.anatomy == "patient":
        return patient_dose(spec, rois, points, beam)
    if spec.dose_shape == "plan":
        ptv = next(r for r in rois if r.role == "PTV")
        distance = np.linalg.norm(points - ptv.center_lps, axis=-1)
        edge = ptv.params["radius"] + 6.0
        dose = spec.prescription_gy * (0.03 + 1.0 / (1.0 + np.exp((distance - edge) / 4.0)))
    else:
        a, b, c, d = spec.dose_field
        dose = a * points[..., 0] + b * points[..., 1] + c * points[..., 2] + d
    return dose if beam is None else dose * weights[beam]


#: The image series ``PhantomSpec.extra_series`` can add: (SOP class, Modality, SeriesDescription).
EXTRA_SERIES = {
    "rescan": (CT_IMAGE_STORAGE, "CT", "Rescan"),
    "cbct": (CT_IMAGE_STORAGE, "CT", "CBCT"),
    "mr": ("1.2.840.10008.5.1.4.1.1.4", "MR", "T1"),
    "mr_as_ct": (CT_IMAGE_STORAGE, "MR", "MR exported as CT"),
}


def _write_extra_series(
    out: Path, spec: PhantomSpec, kind: str, n: int, rois: list, common: dict, ids: dict, uid
) -> tuple:
    """One more image series of the study (see ``PhantomSpec.extra_series``): (its folder, SeriesInstanceUID)."""
    if kind not in EXTRA_SERIES:
        raise ValueError(f"extra_series: unknown kind {kind!r} (known: {', '.join(EXTRA_SERIES)})")
    sop_class, modality, description = EXTRA_SERIES[kind]
    n_cols, n_rows, n_slices = spec.ct_size
    step = spec.dose_frame_spacing if kind == "rescan" else spec.ct_slice_spacing
    length = (n_slices - 1) * spec.ct_slice_spacing + 4 * step  # reaches past the planning CT at both ends
    grown = replace(
        spec,
        ct_size=(n_cols + 16, n_rows + 16, int(round(length / step)) + 1),
        ct_slice_spacing=step,
        ct_slice_spacings=None,
        ct_missing_slices=(),
        ct_gantry_tilt_degrees=0.0,
    )
    ct, _kept, _length = _ct_slices(grown)
    folder = out / kind
    folder.mkdir(parents=True, exist_ok=True)
    series = uid(f"extra-{n}-{kind}")
    values = np.clip(np.rint(_anatomy_hu(rois, ct.centres()) + 1024.0), 0, 4095).astype("<u2")
    for m, position in enumerate(ct.positions):
        ds = _new_file(sop_class, uid(f"extra-{n}-{kind}-{m}"), common)
        ds.Modality, ds.SeriesDescription, ds.ImageType = modality, description, ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series, 10 + n, m + 1
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = ids["frame"], ""
        ds.PatientPosition = spec.patient_position
        ds.SliceThickness = _ds(step)
        _set_image_plane(ds, ct, position, 16, 0)
        if sop_class == CT_IMAGE_STORAGE:
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "-1024", "HU"
        ds.PixelData = values[m].tobytes()
        _save(ds, folder / f"{kind.upper()}{m + 1:04d}.dcm")
    return kind, series


def write_phantom(out_dir, spec: PhantomSpec = PhantomSpec()) -> PhantomTruth:  # noqa: B008
    """Write the phantom study of ``spec`` into ``out_dir`` (created, flat) and return its truth.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write into; created with its parents if missing.
    spec : PhantomSpec
        What to write.

    Returns
    -------
    PhantomTruth
        Paths, UIDs, both grids and the analytic fields.

    Raises
    ------
    ValueError
        If the spec is inconsistent (unknown choice, bad offsets, negative dose, values that do
        not fit the pixel type, absolute GridFrameOffsetVector with a dose normal other than z).
    """
    _check_spec(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ct, kept, length = _ct_slices(spec)
    dose = _dose_slices(spec)
    beam_numbers = tuple(range(1, spec.n_beams + 1))
    raw = np.arange(1, spec.n_beams + 1, dtype=np.float64)
    weights = tuple(float(w) for w in raw / raw.sum())
    doses = [(None, 1.0)] if spec.write_plan_dose else []
    doses += list(zip(beam_numbers, weights)) if spec.write_beam_doses else []

    uid = _uid_maker(spec)
    roles = ["study", "frame", "ct-series", "struct-series", "struct", "plan-series", "plan", "dose-series"]
    roles += ["plan-boost", "dose-plan-boost"] if spec.boost_fraction > 0 else []
    ids = {role: uid(role) for role in roles + [f"dose-{b}" for b, _ in doses]}
    ids["ct"] = [uid(f"ct-{i}") for i in kept]
    common = {
        "PatientName": spec.patient_name,
        "PatientID": spec.patient_id,
        "PatientBirthDate": "19700101",
        "PatientSex": "O",
        "StudyInstanceUID": ids["study"],
        "StudyDate": "20240102",
        "StudyTime": "093000",
        "StudyID": "1",
        "AccessionNumber": "",
        "ReferringPhysicianName": "",
        "Manufacturer": "DoseAlign phantom",
    }

    center = np.asarray(spec.ct_center_lps, dtype=np.float64)
    if spec.anatomy == "patient":
        rois = _patient_rois(ct, center, length, spec)
    else:
        rois = _make_rois(ct, center, length, spec.extra_organs)
    _rename_rois(rois, spec.roi_names)
    ct_names, name_for = _file_names(spec, len(kept))
    ct_files = _write_ct(out, spec, ct, rois, common, ids, ct_names)
    struct_file = _write_struct(out / name_for("RS"), ct, rois, common, ids) if spec.with_structures else None
    plan_file = _write_plan(out / name_for("RP"), spec, rois, weights, common, ids) if spec.with_plan else None

    points = dose.centres()
    field_gy = _dose_field(spec, rois, points)
    if field_gy.min() < 0:
        raise ValueError(f"dose_field is negative ({field_gy.min():.4g} Gy) inside the dose grid")
    dose_files, scalings = [], []
    for beam, _weight in doses:
        path = out / name_for("RD_PLAN" if beam is None else f"RD_BEAM{beam}")
        values = field_gy if beam is None else _dose_field(spec, rois, points, beam - 1, weights)
        scalings.append(_write_dose(path, spec, dose, values, beam, common, ids))
        dose_files.append(path)
    boost_plan = boost_dose = None
    if spec.boost_fraction > 0:  # a second plan on the same CT, e.g. a boost after the initial plan
        boost_rx = spec.prescription_gy * spec.boost_fraction
        boost_plan = _write_plan(
            out / name_for("RP_BOOST"), spec, rois, weights, common, ids, "plan-boost", "BOOST", boost_rx
        )
        boost_dose = out / name_for("RD_BOOST")
        _write_dose(boost_dose, spec, dose, field_gy * spec.boost_fraction, None, common, ids, "plan-boost")

    extra = {
        kind: _write_extra_series(out, spec, kind, n, rois, common, ids, uid)
        for n, kind in enumerate(spec.extra_series)
    }

    corners = points[np.ix_((0, -1), (0, -1), (0, -1))].reshape(8, 3)
    return PhantomTruth(
        extra_series=extra,
        spec=spec,
        out_dir=out,
        ct_files=ct_files,
        dose_files=dose_files,
        dose_beam_numbers=[beam for beam, _ in doses],
        plan_file=plan_file,
        struct_file=struct_file,
        study_uid=ids["study"],
        frame_of_reference_uid=ids["frame"],
        ct_series_uid=ids["ct-series"],
        ct_sop_uids=ids["ct"],
        struct_series_uid=ids["struct-series"],
        struct_sop_uid=ids["struct"],
        plan_series_uid=ids["plan-series"],
        plan_sop_uid=ids["plan"],
        dose_series_uid=ids["dose-series"],
        dose_sop_uids=[ids[f"dose-{beam}"] for beam, _ in doses],
        ct_center=center,
        ct_origin=ct.positions[0].copy(),
        ct_row_dir=ct.row,
        ct_col_dir=ct.col,
        ct_normal=ct.normal,
        ct_pixel_spacing=ct.spacing,
        ct_slice_positions=ct.positions,
        ct_slice_offsets=ct.offsets,
        ct_slice_indices=kept,
        dose_origin=dose.positions[0].copy(),
        dose_row_dir=dose.row,
        dose_col_dir=dose.col,
        dose_normal=dose.normal,
        dose_pixel_spacing=dose.spacing,
        dose_frame_offsets=dose.offsets,
        dose_frame_positions=dose.positions @ dose.normal,
        dose_shape=(len(dose.offsets), dose.rows, dose.cols),
        dose_corners_lps=corners,
        dose_bounds_lps=np.stack([corners.min(axis=0), corners.max(axis=0)]),
        dose_grid_scalings=scalings,
        beam_numbers=beam_numbers,
        beam_weights=weights,
        rois=rois,
        boost_plan_file=boost_plan,
        boost_dose_file=boost_dose,
        boost_sop_uids=(ids["plan-boost"], ids["dose-plan-boost"]) if spec.boost_fraction > 0 else (),
    )


def demo_spec() -> PhantomSpec:
    """The study ``dosealign demo`` writes: a thorax on a couch, its CT at 2 x 2 x 3 mm, a 7-field plan.

    The dose grid (3 mm) covers the whole body with a margin, so every ROI lies inside it and the
    dose at its faces is low; it is offset from the CT's voxels, as a planning system's usually is.
    A PLAN dose and the seven BEAM doses it is the sum of are written.
    """
    return PhantomSpec(
        anatomy="patient",
        ct_size=(192, 160, 48),
        ct_pixel_spacing=(2.0, 2.0),
        ct_slice_spacing=3.0,
        dose_size=(120, 84, 50),
        dose_pixel_spacing=(3.0, 3.0),
        dose_frame_spacing=3.0,
        dose_center_offset_lps=(1.1, -20.3, 0.6),
        dose_shape="plan",
        n_beams=PLAN_FIELDS,
        write_beam_doses=True,
    )
