"""RTSTRUCT contours: the closed planar polygons of every ROI, grouped into contour planes.

An ROI's identity (number, name, RTROIInterpretedType, colour) is joined across the three
RTSTRUCT sequences by ROI number (ReferencedROINumber), never by item order. Only CLOSED_PLANAR
and CLOSEDPLANAR_XOR contours make masks; an ROI with POINT contours only (a marker), with no
contours, with open contours only or with degenerate contours only is kept in the list with the
reason it gives no mask.

CLOSEDPLANAR_XOR contours are combined by geometric exclusive disjunction, in any order (DICOM
PS3.3 C.8.8.6.3, "Representing Inner and Outer Contours"): a point is in the ROI when it lies
inside an odd number of them, which is the even-odd rule that the polygons of a plane are filled
by anyway (:mod:`~DoseAlignLib.structures.polygons`). An ROI that mixes CLOSED_PLANAR and
CLOSEDPLANAR_XOR contours is left out with the reason (a case warning): how the two would combine
is not defined.

Contours are grouped into planes by their position along the contour-plane normal (the normal of
the image planes they were drawn on: the CT's row x column direction when known, else estimated
from the largest contour). Positions are in mm along that normal, in the LPS frame.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from pydicom.dataset import Dataset

from ..errors import InputError
from ..limits import check_case_time
from ..structures.polygons import even_odd_area
from . import headers

#: Contours whose positions along the normal differ by less than this (mm) share a plane.
PLANE_TOLERANCE_MM = 0.01
#: A polygon whose vertices spread more than this (mm) along the normal is not in a contour plane.
COPLANAR_TOLERANCE_MM = 0.05
CONTOUR_DATA = 0x30060050
CONTOUR_SLAB_THICKNESS = 0x30060044
CONTOUR_OFFSET_VECTOR = 0x30060045
#: A (3006,0044) ContourSlabThickness beyond this (mm) is damage: no contour stands for a metre of anatomy.
MAX_SLAB_MM = 1000.0
#: ContourSlabThickness values (mm) of one ROI's contours that differ by less than this are one thickness.
SLAB_TOLERANCE_MM = 1e-3
#: An ROI whose contour planes lie a median of more than this many slab thicknesses apart leaves slices
#: between them empty under the slab rule (every other slice when contoured on every other one): a case warning.
SPARSE_PLANES_FACTOR = 1.5
CONTOUR_GEOMETRIC_TYPE = 0x30060042
#: Contour Geometric Types (3006,0042) that make masks: closed polygons (both filled by the even-odd rule).
CLOSED_TYPES = ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR")


@dataclass
class ContourPlane:
    """The polygons of one ROI in one plane.

    Attributes
    ----------
    position_mm : float
        Position of the plane along the ROI's ``normal`` (mm, LPS frame).
    polygons : list of (N, 3) arrays
        Closed polygons, vertices in LPS mm.
    """

    position_mm: float
    polygons: list = field(default_factory=list)


#: Skip reasons that are defects of the structure set (a case warning), not ROIs without a volume by design.
DEFECT_SKIPS = (
    "(3006,0022) ROINumber",
    "(3006,0084) ReferencedROINumber",
    "ROIContourSequence items reference",
    "contours are not planar",
    "(3006,0024) ReferencedFrameOfReferenceUID",
    "mixes CLOSED_PLANAR and CLOSEDPLANAR_XOR",
    "(3006,0045) ContourOffsetVector",
)


#: A contour plane within this share of the CT's typical slice step of a native slice lies on that slice
#: (:class:`NativeSlabs`).
ON_SLICE_FRACTION = 0.1


@dataclass(frozen=True, eq=False)  # arrays: compared and hashed as the one object shared by a case's ROIs
class NativeSlabs:
    """The slabs of the slices of a CT whose slices are uneven or missing (the pipeline regularizes it).

    Contours lie on the CT's own slices; each stands for its slice's slab, which reaches half way to the
    neighbouring native slices (half the typical step beyond the first and the last slice, where the regular grid
    ends), so that the slices the regularization inserts take the contour of the native slice whose slab holds
    their centre (a centre exactly half way: the slice further along the normal). ``positions`` (increasing), ``lower`` and ``upper`` are mm
    along ``normal``; slice ``n`` covers ``[lower[n], upper[n])``. ``step_mm`` is the CT's typical step (the
    regular grid's), the slab of a contour plane that lies on no native slice.
    """

    normal: np.ndarray
    positions: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    step_mm: float

    @classmethod
    def of(cls, positions: np.ndarray, normal: np.ndarray, step_mm: float) -> Optional[NativeSlabs]:
        """The slabs of native slices at ``positions`` (mm along the unit ``normal``); None for one slice."""
        z = np.sort(np.asarray(positions, dtype=np.float64).ravel())
        if z.size < 2 or not step_mm > 0:
            return None
        middle = (z[1:] + z[:-1]) / 2
        lower = np.concatenate([[z[0] - step_mm / 2], middle])
        upper = np.concatenate([middle, [z[-1] + step_mm / 2]])
        return cls(np.asarray(normal, dtype=np.float64), z, lower, upper, float(step_mm))

    def along(self, normal: np.ndarray) -> Optional[NativeSlabs]:
        """These slabs seen along a contour normal: the same planes (either sign) or None."""
        n = np.asarray(normal, dtype=np.float64)
        n = n / np.linalg.norm(n)
        cos = float(n @ self.normal)
        if cos > 1 - 1e-6:
            return self
        if cos < -1 + 1e-6:  # reversed: positions and slabs mirrored (a centre half way stays with the further slice)
            return NativeSlabs(n, -self.positions[::-1], -self.upper[::-1], -self.lower[::-1], self.step_mm)
        return None

    def plane_slabs(self, planes: np.ndarray) -> np.ndarray:
        """``(M, 2)`` start and end (mm) of the slab of each contour plane at ``planes``: its native slice's slab
        where it lies on one (within :data:`ON_SLICE_FRACTION` of the step), else ``[p - step/2, p + step/2)``."""
        p = np.asarray(planes, dtype=np.float64).ravel()
        out = np.stack([p - self.step_mm / 2, p + self.step_mm / 2], axis=1)
        if p.size == 0:
            return out
        nearest = np.clip(np.searchsorted(self.positions, p), 1, self.positions.size - 1)
        nearest = np.where(
            np.abs(self.positions[nearest - 1] - p) <= np.abs(self.positions[nearest] - p), nearest - 1, nearest
        )
        on = np.abs(self.positions[nearest] - p) <= ON_SLICE_FRACTION * self.step_mm
        out[on, 0] = self.lower[nearest[on]]
        out[on, 1] = self.upper[nearest[on]]
        return out


def is_structure_set_defect(reason: str) -> bool:
    """True for a skip reason that says the structure set is wrong (see :data:`DEFECT_SKIPS`)."""
    return any(part in str(reason) for part in DEFECT_SKIPS)


@dataclass
class RoiContours:
    """One ROI of a structure set, its contour planes, or the reason it gives no mask.

    Attributes
    ----------
    number : int
        ROINumber in the structure set.
    name : str
        The name used for the output channel (after ``--roi-map`` and de-duplication).
    original_name : str
        ROIName as written in the file.
    interpreted_type : str
        RTROIInterpretedType ("EXTERNAL", "PTV", "ORGAN", "MARKER", ...; "" when absent).
    color : tuple of 3 ints or None
        ROIDisplayColor (RGB 0-255).
    source : str
        The RTSTRUCT file (path relative to the input root).
    normal : (3,) array
        Unit normal of the contour planes (LPS).
    planes : list of ContourPlane
        Sorted by increasing ``position_mm``.
    skipped : str or None
        Why the ROI gives no mask (None when it does).
    notes : list of str
        Things left out on the way (open contours, degenerate polygons).
    defects : list of str
        Contours left out because the structure set is wrong (a contour whose points lie in no plane, contour
        data that is not numbers or lies beyond 100 m); each is also in ``notes`` and becomes a case warning.
    """

    number: int
    name: str
    original_name: str
    interpreted_type: str
    color: Optional[tuple]
    source: str
    normal: np.ndarray
    planes: list = field(default_factory=list)
    skipped: Optional[str] = None
    notes: list = field(default_factory=list)
    defects: list = field(default_factory=list)
    #: the name after ``--roi-map`` (and pseudonymization), before it was made unique (``name_2``)
    harmonised_name: str = ""
    #: the name after ``--roi-map``, before pseudonymization, and that name made unique among those names: what the
    #: user selects the ROI by (``--rois``, ``--centre roi:``); without pseudonymization ``harmonised_name`` and ``name``
    mapped_name: str = ""
    mapped_unique_name: str = ""
    #: (3006,0044) ContourSlabThickness (mm) when every contour of the ROI states one and the same, else None
    slab_thickness_mm: Optional[float] = None
    #: the slabs of the CT's own slices when they are uneven or missing (:class:`NativeSlabs`, along ``normal``)
    native_slabs: Optional[NativeSlabs] = None
    #: its contours are CLOSEDPLANAR_XOR: combined by XOR, they may cross each other (PS3.3 C.8.8.6.3)
    xor: bool = False

    def thickness(self, default_mm: float) -> float:
        """The slab thickness of this ROI's contour planes: its own (3006,0044) ContourSlabThickness when thicker
        than ``default_mm`` (the CT's slice step), else ``default_mm``.

        A thinner stated slab is not taken: contours drawn on the CT's slices cover at least their slice.
        """
        own = self.slab_thickness_mm
        return float(own) if own is not None and own > default_mm + SLAB_TOLERANCE_MM else float(default_mm)

    @property
    def positions(self) -> np.ndarray:
        """(M,) positions of the contour planes along ``normal`` (mm), increasing."""
        return np.array([p.position_mm for p in self.planes], dtype=np.float64)

    def plane_slabs(self) -> Optional[np.ndarray]:
        """``(M, 2)`` start and end (mm along ``normal``) of each contour plane's slab on a CT of uneven or missing
        slices (:attr:`native_slabs`: a plane on a native slice stands for that slice's slab); None where the common
        rule holds (``[p - t/2, p + t/2)``, ``t`` = :meth:`thickness`): an even CT, or the ROI's own (3006,0044)
        ContourSlabThickness."""
        native = self.native_slabs
        if native is None or not self.planes or self.thickness(native.step_mm) != native.step_mm:
            return None
        return native.plane_slabs(self.positions)

    def slab_intervals(self) -> Optional[np.ndarray]:
        """:meth:`plane_slabs` cut half way to a neighbouring plane whose slab reaches further (the part of each
        slab its plane takes by the nearest-plane rule); None where the common rule holds."""
        slabs = self.plane_slabs()
        if slabs is None:
            return None
        return nearest_parts(self.positions, slabs)

    def plane_areas_mm2(self) -> np.ndarray:
        """(M,) even-odd area of every contour plane (mm^2)."""
        uv = np.stack(plane_basis(self.normal), axis=1)
        return np.array([even_odd_area([poly @ uv for poly in p.polygons]) for p in self.planes])

    def contour_volume_cc(self, thickness_mm: float) -> float:
        """Volume from the contours: the sum of plane areas times the slab thickness (cm^3).

        With a slab of its own (:meth:`thickness` thicker than ``thickness_mm``) each plane's slab reaches at most
        half way to its neighbours, as the slab rule's nearest plane takes a voxel there.
        """
        own = self.thickness(thickness_mm)
        areas = self.plane_areas_mm2()
        parts = self.slab_intervals()
        if parts is not None:  # a CT of uneven or missing slices: each plane's native slab
            return float(areas @ np.clip(parts[:, 1] - parts[:, 0], 0.0, None) / 1000.0)
        if own == float(thickness_mm) or len(self.planes) < 2:
            return float(areas.sum() * own / 1000.0)
        half = np.minimum(np.diff(self.positions) / 2.0, own / 2.0)  # each side's reach: at most half the gap
        depths = np.full(len(self.planes), own)
        depths[:-1] += half - own / 2.0
        depths[1:] += half - own / 2.0
        return float(areas @ depths / 1000.0)

    def sparse_planes_note(self, thickness_mm: float) -> Optional[str]:
        """Why the ROI's mask leaves slices empty between its contour planes (None when it does not): its planes
        lie regularly (a median over at least two gaps) more than :data:`SPARSE_PLANES_FACTOR` slabs apart; on a CT
        of uneven or missing slices (:meth:`plane_slabs`), the slabs of most neighbouring planes do not meet."""
        t = self.thickness(thickness_mm)
        if len(self.planes) < 3 or not t > 0:
            return None
        gap = float(np.median(np.diff(self.positions)))
        parts = self.slab_intervals()
        if parts is not None:  # a CT of uneven or missing slices: empty where the native slabs do not meet
            apart = parts[1:, 0] - parts[:-1, 1] > SLAB_TOLERANCE_MM
            if np.count_nonzero(apart) * 2 <= apart.size:
                return None
            return (
                f"its contour planes lie {gap:.3g} mm apart (median) and each stands for the slab of its own CT slice "
                "(the CT's slices are uneven or some are missing): its mask leaves the CT slices between them empty"
            )
        if gap <= SPARSE_PLANES_FACTOR * t:
            return None
        own = "" if self.slab_thickness_mm is not None else "; no (3006,0044) ContourSlabThickness says otherwise"
        return (
            f"its contour planes lie {gap:.3g} mm apart (median) and each stands for a slab of {t:.3g} mm{own}: "
            "its mask leaves the slices between them empty"
        )


def nearest_parts(positions: np.ndarray, slabs: np.ndarray) -> np.ndarray:
    """``(M, 2)``: each contour plane's slab (``slabs``, start and end along the normal) less what a neighbouring
    plane at ``positions`` (increasing) takes by the nearest-plane rule: where both slabs reach half way between
    them, each keeps its half; where one reaches past half way and the other's slab begins before its end, the
    other takes the rest from its beginning."""
    p = np.asarray(positions, dtype=np.float64)
    out = np.array(slabs, dtype=np.float64).reshape(-1, 2)
    if p.size > 1:
        middle = (p[1:] + p[:-1]) / 2
        hi, lo = out[:-1, 1].copy(), out[1:, 0].copy()  # plane m's end, plane m + 1's start
        up = hi > middle  # plane m's slab reaches past half way up
        down = lo <= middle  # plane m + 1's slab reaches half way down (a centre there is m + 1's)
        out[:-1, 1] = np.where(up & down, middle, np.where(up, np.minimum(hi, lo), hi))
        out[1:, 0] = np.where(up & down, middle, np.where(down, np.maximum(lo, hi), lo))
    return out


def plane_basis(normal: np.ndarray) -> tuple:
    """Two orthonormal in-plane vectors ``(u, v)`` with ``u x v = normal``."""
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    helper = np.array([1.0, 0.0, 0.0]) if abs(n[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = helper - (helper @ n) * n
    u /= np.linalg.norm(u)
    return u, np.cross(n, u)


def newell_normal(polygon: np.ndarray) -> np.ndarray:
    """Area-weighted normal of a 3-D polygon (Newell's method); its length is twice the area.

    Parameters
    ----------
    polygon : (N, 3) array
        Vertices in LPS mm.

    Returns
    -------
    (3,) array
    """
    p = np.asarray(polygon, dtype=np.float64)
    q = np.roll(p, -1, axis=0)
    return np.array(
        [
            np.sum((p[:, 1] - q[:, 1]) * (p[:, 2] + q[:, 2])),
            np.sum((p[:, 2] - q[:, 2]) * (p[:, 0] + q[:, 0])),
            np.sum((p[:, 0] - q[:, 0]) * (p[:, 1] + q[:, 1])),
        ]
    )


def _canonical_sign(normal: np.ndarray) -> np.ndarray:
    """The normal flipped so that its largest component is positive (a stable orientation)."""
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    return -n if n[int(np.argmax(np.abs(n)))] < 0 else n


def _estimate_normal(polygons: Sequence[np.ndarray]) -> Optional[np.ndarray]:
    best = None
    best_area = 1e-6
    for poly in polygons:
        if len(poly) < 3:
            continue
        n = newell_normal(poly)
        area = 0.5 * float(np.linalg.norm(n))
        if area > best_area:
            best, best_area = n, area
    return None if best is None else _canonical_sign(best)


def _spread(polygon: np.ndarray, normal: np.ndarray) -> float:
    d = polygon @ normal
    return float(d.max() - d.min())


#: One decimal string as numpy reads it whole (with the blanks DICOM pads with).
_PLAIN_NUMBER = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")


def _decimal_strings(text: str) -> np.ndarray:
    """A DS value's backslash-separated decimal strings as float64, parsed in place: a list of the strings first (and
    numpy's array of them) cost some 40 times the value's bytes, a contour of 3 million points 2.5 GB (thirty-seventh
    hostile trial AK4). Raises ValueError where one is no number."""
    # numpy stops at the first string that is no number, and warns. A warning filter set here ("error") is the whole
    # process's: the matplotlib preload thread's import failed half-way, and the case's qa.png with it (Python 3.9,
    # found beside the 72nd hostile trial's BT4). Stopped in a string before the last, numpy read fewer values than
    # there are strings; the last string is checked on its own.
    try:
        values = np.fromstring(text, dtype=np.float64, sep="\\")
    except (ValueError, DeprecationWarning):  # (numpy may come to raise; a run with warnings as errors does)
        values = None
    # numpy reads a value of blanks as -1.0, silently (a contour moved to x = -1 mm: forty-first hostile trial AO1);
    # a value that is -1.0 is read again as strings, where a blank one is no number
    if (
        values is None
        or values.size != text.count("\\") + 1
        or not _PLAIN_NUMBER.fullmatch(text, text.rfind("\\") + 1)
        or (values == -1.0).any()
    ):
        if "_" in text:  # Python reads 1_5 as 15; a decimal string has no digit separator (AO1's neighbour)
            raise ValueError("a decimal string holds '_'")
        return np.array(text.split("\\"), dtype=np.float64)  # (the strings' own error, or their numbers)
    return values


def _contour_data(contour: Dataset, tag: int = CONTOUR_DATA) -> Optional[np.ndarray]:
    """ContourData (3006,0050) (or another DS element ``tag``) as float64, parsed from the raw bytes when pydicom
    has not yet; None when not numbers.

    pydicom turns every DS value into a validated DSfloat, which costs seconds for a structure
    set of 100 000 points; the raw decimal strings are parsed here in one numpy call instead.
    """
    if tag not in contour:
        return np.zeros(0)
    element = contour.get_item(tag)
    value = element.value
    try:
        if isinstance(value, (bytes, bytearray)):
            text = value.decode("ascii").strip(" \x00")
            return _decimal_strings(text) if text else np.zeros(0)
        if value is None:
            return np.zeros(0)
        if isinstance(value, (str, float, int)):
            value = [value]
        return np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError, UnicodeDecodeError):
        return None


def _geometric_type(contour: Dataset) -> str:
    """ContourGeometricType (upper case; CLOSED_PLANAR when absent), from the raw bytes when not yet converted.

    The same value as ``headers.text(...).upper()``; pydicom's element conversion costs more than
    the rest of a contour's reading.
    """
    if CONTOUR_GEOMETRIC_TYPE in contour:
        value = contour.get_item(CONTOUR_GEOMETRIC_TYPE).value
        if isinstance(value, (bytes, bytearray)) and b"\\" not in value:
            try:
                return value.decode("ascii").strip(" \x00").strip().upper() or "CLOSED_PLANAR"
            except UnicodeDecodeError:
                pass
    return headers.text(contour, "ContourGeometricType", "CLOSED_PLANAR").upper()


#: Contour points farther from the origin than this (mm, as the header checks bound positions) are damaged.
MAX_CONTOUR_MM = 100_000.0


def _repeats_first(points: np.ndarray) -> bool:
    """``np.allclose(points[0], points[-1])`` (rtol 1e-5, atol 1e-8), without numpy's per-call overhead."""
    return all(abs(a - b) <= 1e-8 + 1e-5 * abs(b) for a, b in zip(points[0].tolist(), points[-1].tolist()))


def _polygons_of(
    item: Dataset, closed_kinds: Optional[set] = None, slabs: Optional[list] = None, flat: Optional[list] = None
) -> tuple:
    """(closed polygons, counts of other geometric types, each polygon's item number in ContourSequence
    (1-based) and ContourNumber ('' when absent)) of one ROIContourSequence item.

    ``closed_kinds``, when given, receives the geometric types of the closed polygons kept; ``slabs`` each one's
    ``((3006,0044) ContourSlabThickness or None, (3006,0045) ContourOffsetVector given and not zero)``; ``flat``
    the points of each contour left out that encloses nothing: closed but degenerate (:func:`_encloses_no_area`,
    :func:`_traced_twice`), or of another type (open, point).
    """
    closed, others, where = [], {}, []
    for n, contour in enumerate(item.get("ContourSequence", None) or []):
        if not n & 1023:
            check_case_time()
        kind = _geometric_type(contour)
        if kind not in CLOSED_TYPES:
            others[kind] = others.get(kind, 0) + 1
            if flat is not None:  # (an open or point contour alone in a plane empties it too: eighty-second trial CD1)
                flat.extend(_points_of(contour))
            continue
        values = _contour_data(contour)
        if values is None:
            others["unreadable"] = others.get("unreadable", 0) + 1
            continue
        if values.size % 3 or not np.all(np.isfinite(values)):
            others["unreadable"] = others.get("unreadable", 0) + 1
            continue
        if values.size and float(np.abs(values).max()) > MAX_CONTOUR_MM:  # a damaged point, not anatomy
            far = f"out-of-range (beyond {MAX_CONTOUR_MM / 1000:g} m)"
            others[far] = others.get(far, 0) + 1
            continue
        points = values.reshape(-1, 3)
        if points.shape[0] > 1 and _repeats_first(points):
            points = points[:-1]  # some systems repeat the first vertex at the end
        if points.shape[0] < 3 or _encloses_no_area(points) or _traced_twice(points):
            others["degenerate"] = others.get("degenerate", 0) + 1
            if flat is not None and points.shape[0]:
                flat.append(points)
            continue
        closed.append(points)
        where.append((n + 1, headers.text(contour, "ContourNumber")))
        if slabs is not None:
            slabs.append(_slab_of(contour))
        if closed_kinds is not None:
            closed_kinds.add(kind)
    return closed, others, where


#: A closed contour whose points all lie within this distance (mm) of one line encloses no area: no voxel is inside.
FLAT_CONTOUR_MM = 1e-4


def _encloses_no_area(points: np.ndarray) -> bool:
    """Whether every point of ``points`` lies within :data:`FLAT_CONTOUR_MM` of the line from the first point to the
    one farthest from it (all one point, or all on one line: a damaged contour, not a shape)."""
    offsets = points - points[0]
    lengths = np.einsum("ij,ij->i", offsets, offsets)
    farthest = offsets[int(np.argmax(lengths))]
    length = float(np.sqrt(lengths.max()))
    if length <= FLAT_CONTOUR_MM:
        return True
    across = np.cross(offsets, farthest / length)
    return float(np.einsum("ij,ij->i", across, across).max()) <= FLAT_CONTOUR_MM**2


def _traced_twice(points: np.ndarray) -> bool:
    """Whether every edge of the closed contour ``points`` is traced an even number of times (out and back along one
    path, or the loop written twice): the even-odd rule then fills nothing, and its area is none (a converter writing
    a polyline there and back emptied the target's middle slice, ok, silent: eighty-sixth hostile trial CH2). Only
    contours of those two shapes are looked at edge by edge."""
    n = points.shape[0]
    if n % 2 or not (np.array_equal(points[1], points[-1]) or np.array_equal(points[: n // 2], points[n // 2 :])):
        return False
    _unique, index = np.unique(points, axis=0, return_inverse=True)
    index = index.reshape(-1)
    ends = np.sort(np.stack([index, np.roll(index, -1)], axis=1), axis=1)
    ends = ends[ends[:, 0] != ends[:, 1]]  # (an edge of no length draws nothing)
    _edges, counts = np.unique(ends, axis=0, return_counts=True)
    return bool(np.all(counts % 2 == 0))


def _points_of(contour: Dataset) -> list:
    """``[points]`` of a contour whose ContourData is readable, finite and in range, else ``[]``."""
    values = _contour_data(contour)
    if values is None or not values.size or values.size % 3 or not np.all(np.isfinite(values)):
        return []
    if float(np.abs(values).max()) > MAX_CONTOUR_MM:
        return []
    return [values.reshape(-1, 3)]


#: A contour that encloses nothing is said beside closed contours of its plane only where it spans more than this (mm).
DWARFED_SPAN_MM = 5.0


def _span(points: np.ndarray) -> float:
    """The diagonal of ``points``' bounding box (mm)."""
    return float(np.linalg.norm(points.max(axis=0) - points.min(axis=0)))


def _planes_lost(roi: RoiContours, flat: list) -> None:
    """A case warning where contours that enclose nothing (degenerate, :func:`_encloses_no_area`, or open or point
    contours) were all the ROI had in a plane: that slice of the mask is empty. A target collapsed to one point in its
    middle plane lost 12 % of its voxels, ok, with no word but a note (eightieth hostile trial CB1; one typed
    OPEN_PLANAR, eighty-second CD1); beside a closed contour of its plane one is only noise."""
    kept = np.sort(roi.positions)  # (found by bisection: a plane against every other was quadratic, 40 000 flat
    # contours took 242 s past a 30 s case limit: eighty-sixth hostile trial CH4)
    positions = np.array([float(np.mean(points @ roi.normal)) for points in flat])
    dwarfed: set = set()
    if kept.size:
        at = np.clip(np.searchsorted(kept, positions), 1, kept.size) - 1
        after = np.minimum(at + 1, kept.size - 1)
        plane = np.where(np.abs(positions - kept[at]) <= np.abs(positions - kept[after]), at, after)
        nearest = np.abs(positions - kept[plane])
        lost = sorted({round(float(p), 2) for p in positions[nearest > PLANE_TOLERANCE_MM]})
        # beside a closed contour far smaller than itself (an island in the middle of the target's lost outline):
        # the slice keeps the island only (eighty-sixth hostile trial CH6)
        spans: dict = {}
        for n in np.flatnonzero(nearest <= PLANE_TOLERANCE_MM):
            j = int(plane[n])
            if j not in spans:
                spans[j] = max(_span(polygon) for polygon in roi.planes[j].polygons)
            if _span(flat[n]) > max(2 * spans[j], DWARFED_SPAN_MM):
                dwarfed.add(round(float(positions[n]), 2))
    else:
        lost = sorted({round(float(p), 2) for p in positions})
    if dwarfed:
        shown = ", ".join(f"{p:g}" for p in sorted(dwarfed)[:5]) + (", ..." if len(dwarfed) > 5 else "")
        roi.defects.append(
            f"{len(dwarfed)} plane(s) of its contours (at {shown} mm along their normal) hold a contour that encloses "
            "nothing (open or point, or of fewer than three points, all on one line or traced twice) more than twice as "
            "wide as the closed contours kept there: the mask there holds those alone ((3006,0042) "
            "ContourGeometricType or (3006,0050) ContourData is damaged)"
        )
    if lost:
        shown = ", ".join(f"{p:g}" for p in lost[:5]) + (", ..." if len(lost) > 5 else "")
        roi.defects.append(
            f"{len(lost)} plane(s) of its contours (at {shown} mm along their normal) hold only contours that enclose "
            "nothing (open or point contours, or of fewer than three points, all on one line or traced twice): the mask "
            "is empty there ((3006,0042) ContourGeometricType or (3006,0050) ContourData is damaged)"
        )


def _slab_of(contour: Dataset) -> tuple:
    """``(ContourSlabThickness in mm or None, whether a ContourOffsetVector moves the slab)`` of one contour.

    A thickness given that is not one positive number is NaN (damaged: :func:`_apply_slabs` notes it); an offset
    vector that is not three numbers, all zero, counts as moving the slab (where to cannot be told).
    """
    thickness = None
    if CONTOUR_SLAB_THICKNESS in contour:
        values = _contour_data(contour, CONTOUR_SLAB_THICKNESS)
        if values is not None and values.size == 1 and np.isfinite(values[0]) and values[0] > 0:
            thickness = float(values[0])
        elif values is None or values.size:  # (an empty value: not given)
            thickness = math.nan
    moved = False
    if CONTOUR_OFFSET_VECTOR in contour:
        values = _contour_data(contour, CONTOUR_OFFSET_VECTOR)
        moved = values is None or values.size not in (0, 3) or not np.all(values == 0)
    return thickness, moved


def _apply_slabs(roi: RoiContours, slabs: list) -> None:
    """Take the ROI's (3006,0044) ContourSlabThickness when every contour states one and the same (in its notes);
    leave the ROI out when a (3006,0045) ContourOffsetVector moves its slabs off their planes."""
    moved = sum(1 for _thickness, offset in slabs if offset)
    if moved:
        roi.skipped = (
            f"(3006,0045) ContourOffsetVector moves the slab of {moved} of its {len(slabs)} contour(s) off the "
            "contour's plane: DoseAlign does not follow it (the mask would be misplaced)"
        )
        return
    given = [thickness for thickness, _offset in slabs if thickness is not None]
    if not given:
        return
    damaged = sum(1 for thickness in given if math.isnan(thickness))
    if damaged:  # (it was ignored without a word: forty-third hostile trial AQ1)
        roi.notes.append(
            f"(3006,0044) ContourSlabThickness of {damaged} of its {len(slabs)} contour(s) is not one positive number "
            "(damaged): not used"
        )
        return
    if len(given) < len(slabs):
        roi.notes.append(
            f"(3006,0044) ContourSlabThickness given on {len(given)} of {len(slabs)} contours only: not used"
        )
        return
    if max(given) > MAX_SLAB_MM:  # a damaged value: the slab would reach metres beyond the planes (and cost memory)
        roi.notes.append(
            f"(3006,0044) ContourSlabThickness {max(given):g} mm is beyond {MAX_SLAB_MM:g} mm (damaged, not anatomy): "
            "not used"
        )
        return
    if max(given) - min(given) > SLAB_TOLERANCE_MM:
        roi.notes.append(
            f"(3006,0044) ContourSlabThickness differs between its contours ({min(given):g} to {max(given):g} mm): "
            "not used"
        )
        return
    roi.slab_thickness_mm = float(np.median(given))
    roi.notes.append(
        f"(3006,0044) ContourSlabThickness {roi.slab_thickness_mm:g} mm on every contour: each contour stands for a "
        "slab of that thickness where it is thicker than the CT's slice step (slab_thickness_mm)"
    )


def _group_planes(polygons: list, normal: np.ndarray) -> list:
    positions = np.array([float(np.mean(p @ normal)) for p in polygons])
    order = np.argsort(positions, kind="stable")
    planes: list = []
    members: list = []
    for n in order:
        if members and positions[n] - positions[members[-1]] > PLANE_TOLERANCE_MM:
            planes.append(ContourPlane(float(np.mean(positions[members])), [polygons[m] for m in members]))
            members = []
        members.append(n)
    if members:
        planes.append(ContourPlane(float(np.mean(positions[members])), [polygons[m] for m in members]))
    return planes


#: Two contours of one plane whose vertices lie this close (mm, each coordinate) are one contour written twice
#: (rounded differently by two writers, or copied through a format of fewer digits); for contours under 10 mm
#: across, 1 % of their size (tiny contours a tenth of a millimetre apart are two contours).
COPY_TOLERANCE_MM = 0.1


def _same_polygon(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` are the same closed polygon: the same vertices (each coordinate within
    :data:`COPY_TOLERANCE_MM`, or 1 % of ``a``'s size when smaller) in the same cyclic order, from any start vertex
    and in either direction."""
    if a.shape != b.shape:
        return False
    tolerance = min(COPY_TOLERANCE_MM, 0.01 * float(np.max(a.max(axis=0) - a.min(axis=0))))
    for candidate in (b, b[::-1]):
        for start in np.flatnonzero(np.all(np.abs(candidate - a[0]) <= tolerance, axis=1)):
            if np.all(np.abs(np.roll(candidate, -int(start), axis=0) - a) <= tolerance):
                return True
    return False


def _drop_repeated_contours(roi: RoiContours) -> None:
    """Keep one of each set of identical contours in a plane of ``roi`` (:func:`_same_polygon`), said in its notes.

    Merged or copied structure sets write a contour twice, exactly or rounded otherwise; read by the even-odd rule
    the copy would cut the contour out as a hole (every contour written twice: an empty mask; a near copy: a
    sliver). A contour is compared only with those of its plane with as many vertices and a centroid in the same or a
    neighbouring cell of :data:`COPY_TOLERANCE_MM` (a copy's centroid lies as close as its vertices; a bounding-box
    corner, the key before, was one for 5000 triangles sharing it, compared pair by pair for 511 s: eighty-sixth
    hostile trial CH8). The case's time limit is looked at as the comparisons go.
    """
    dropped = 0
    compared = 0
    neighbours = [np.array(d) for d in itertools.product((-1, 0, 1), repeat=3)]
    for plane in roi.planes:
        if len(plane.polygons) < 2:
            continue
        kept: list = []
        seen: dict = {}
        for polygon in plane.polygons:
            cell = np.floor(polygon.mean(axis=0) / COPY_TOLERANCE_MM).astype(np.int64)
            twins = [
                other for step in neighbours for other in seen.get((polygon.shape[0], *(cell + step).tolist()), ())
            ]
            compared += len(twins)
            if compared > 4096:
                compared = 0
                check_case_time()
            if any(_same_polygon(polygon, other) for other in twins):
                dropped += 1
                continue
            seen.setdefault((polygon.shape[0], *cell.tolist()), []).append(polygon)
            kept.append(polygon)
        plane.polygons = kept
    if dropped:
        roi.notes.append(
            f"{dropped} contour(s) dropped: each the same polygon as another contour of this ROI in its plane, "
            f"vertices within {COPY_TOLERANCE_MM:g} mm (a contour written twice; read by the even-odd rule the copy "
            "would make the contour a hole)"
        )


def _roi_number(item: Dataset, keyword: str) -> tuple:
    """``(number, None)`` of an ROI number (IS) ``keyword`` of ``item``; ``(None, text)`` when it is not a whole
    number (``text`` as written: ``""`` when empty), ``(None, None)`` when absent. ``3.0`` is 3, as pydicom reads
    an IS."""
    try:
        value = item.get(keyword)
    except Exception as error:  # pydicom converting a damaged value
        return None, f"<{type(error).__name__}>"
    if value is None:  # absent, or empty (pydicom reads an empty IS as None)
        return None, ("" if keyword in item else None)
    written = headers.value_text(value).strip()
    try:
        number = float(written)
    except ValueError:
        return None, written
    if not math.isfinite(number) or number != int(number) or abs(number) >= 2**31:
        return None, written
    return int(number), None


def _written(value: Optional[str]) -> str:
    """A damaged value as a reason quotes it."""
    if value is None:
        return "missing"
    return repr(value) if value else "empty"


def _display_color(item: Dataset) -> Optional[tuple]:
    """(3006,002A) ROIDisplayColor as three ints 0-255, or None when absent or not three such numbers (the
    attribute is Type 3 and cosmetic: a damaged one is not worth an ROI)."""
    try:
        raw = item.get("ROIDisplayColor")
        values = [float(c) for c in raw] if raw is not None and not isinstance(raw, (str, bytes)) else []
    except Exception:  # not numbers, or a value pydicom cannot convert
        return None
    if len(values) != 3 or not all(math.isfinite(v) and -0.5 < v < 255.5 for v in values):
        return None
    return tuple(int(round(v)) for v in values)


def read_structure_set(
    source: Union[str, Path, Dataset],
    *,
    rel_path: str = "",
    plane_normal: Optional[Sequence[float]] = None,
    frame_of_reference_uid: Optional[str] = None,
) -> list:
    """Read every ROI of an RTSTRUCT into :class:`RoiContours` (those without a mask included).

    Parameters
    ----------
    source : path or pydicom Dataset
        The RTSTRUCT file or data set.
    rel_path : str
        Name recorded as each ROI's ``source``.
    plane_normal : (3,) floats, optional
        Normal of the image planes the contours were drawn on (the CT's row x column direction).
        Estimated from the largest contour of the set when not given. An ROI whose contours do
        not lie in planes of this normal is re-examined with its own normal.
    frame_of_reference_uid : str, optional
        The frame of reference of the images (the CT) the masks are made on. An ROI whose own (3006,0024)
        ReferencedFrameOfReferenceUID names another frame (e.g. drawn on a registered MR) is left out with
        the reason, as is an ROI without it when the set names several frames; not checked when not given.

    Returns
    -------
    list of RoiContours
        In StructureSetROISequence order.
    """
    if isinstance(source, Dataset):
        ds = source
    else:
        ds = headers.read_header(Path(source), stop_before_pixels=False)
        rel_path = rel_path or Path(source).name
    if headers.kind_of(ds) != "RTSTRUCT":
        raise InputError(f"is {headers.kind_of(ds)}, not RTSTRUCT", path=rel_path, tag="(0008,0016) SOPClassUID")
    headers.decode_nested_un_sequences(ds, rel_path)  # (the top-level ones were read with the header)
    contours_by_number: dict = {}
    contour_items: dict = {}  # ROI number -> how many ROIContourSequence items reference it
    unjoined = []  # the (3006,0084) ReferencedROINumber values of ROIContourSequence items that are not numbers
    for item in ds.get("ROIContourSequence", None) or []:
        number, bad = _roi_number(item, "ReferencedROINumber")
        if number is not None:
            contours_by_number[number] = item
            contour_items[number] = contour_items.get(number, 0) + 1
        elif bad is not None:
            unjoined.append(bad)
    numbers = [_roi_number(item, "ROINumber")[0] for item in ds.get("StructureSetROISequence", None) or []]
    types_by_number = {}
    untyped = []  # the same of RTROIObservationsSequence items: only the interpreted type is lost
    for item in ds.get("RTROIObservationsSequence", None) or []:
        number, bad = _roi_number(item, "ReferencedROINumber")
        if number is not None:
            types_by_number[number] = headers.text(item, "RTROIInterpretedType").upper()
        elif bad is not None:
            untyped.append(bad)

    listed_frames = sorted(
        {headers.text(f, "FrameOfReferenceUID") for f in ds.get("ReferencedFrameOfReferenceSequence", None) or []}
        - {""}
    ) or sorted({headers.text(ds, "FrameOfReferenceUID")} - {""})
    parsed = []
    all_polygons = []
    foreign: dict = {}  # ROI number -> why its frame of reference is not the images'
    misnumbered: dict = {}  # index in ``parsed`` -> why the ROI's number cannot be read
    for item in ds.get("StructureSetROISequence", None) or []:
        number, bad_number = _roi_number(item, "ROINumber")
        name = headers.text(item, "ROIName", f"ROI {number if number is not None else '?'}")
        if number is None:  # missing, empty or not a number: its contours and type cannot be told
            misnumbered[len(parsed)] = (
                f"(3006,0022) ROINumber is {_written(bad_number)}: which ROIContourSequence and "
                "RTROIObservationsSequence items are its cannot be told"
            )
            parsed.append((None, name, "", None, None, [], {}, ([], 0, set(), [], [])))
            continue
        if frame_of_reference_uid:
            own = headers.text(item, "ReferencedFrameOfReferenceUID")
            if own and listed_frames and own not in listed_frames:
                foreign[number] = (
                    f"(3006,0024) ReferencedFrameOfReferenceUID {own} is not among the frames of reference the "
                    "structure set lists ((3006,0010) ReferencedFrameOfReferenceSequence): its frame cannot be told"
                )
            elif own and own != frame_of_reference_uid:
                foreign[number] = (
                    f"drawn in frame of reference {own} ((3006,0024) ReferencedFrameOfReferenceUID), the images "
                    f"are in {frame_of_reference_uid}: its contours would be misplaced (DoseAlign does not register)"
                )
            elif not own and len(listed_frames) > 1:
                foreign[number] = (
                    f"no (3006,0024) ReferencedFrameOfReferenceUID, and the structure set names {len(listed_frames)} "
                    "frames of reference: which one its contours are in cannot be told"
                )
        contour_item = contours_by_number.get(number)
        color = None
        polygons, others, where, kinds, slabs, flat = [], {}, [], set(), [], []
        if contour_item is not None:
            color = _display_color(contour_item)
            polygons, others, where = _polygons_of(contour_item, kinds, slabs, flat)
        count = len(contour_item.get("ContourSequence", None) or []) if contour_item is not None else 0
        parsed.append(
            (
                number,
                name,
                types_by_number.get(number, ""),
                color,
                contour_item,
                polygons,
                others,
                (where, count, kinds, slabs, flat),
            )
        )
        if number not in foreign:
            all_polygons.extend(polygons)

    default_normal = None
    if plane_normal is not None:
        default_normal = _canonical_sign(np.asarray(plane_normal, dtype=np.float64))
    else:
        default_normal = _estimate_normal(all_polygons)
    if default_normal is None:
        default_normal = np.array([0.0, 0.0, 1.0])

    rois = []
    orphans = sorted(set(contours_by_number) - set(numbers))  # contours of an ROI the set does not have
    for index, (number, name, kind, color, contour_item, polygons, others, details) in enumerate(parsed):
        where, n_contours, closed_kinds, slabs, flat = details
        roi = RoiContours(0 if number is None else number, name, name, kind, color, rel_path, default_normal)
        if index in misnumbered:
            roi.skipped = misnumbered[index]
            rois.append(roi)
            continue
        if contour_item is not None and contour_item.get("ROIDisplayColor") is not None and color is None:
            roi.notes.append(
                f"(3006,002A) ROIDisplayColor {headers.value_text(contour_item.get('ROIDisplayColor'))} is not "
                "three numbers 0-255: ignored (a colour of its own in qa.png)"
            )
        if not kind and untyped:
            roi.notes.append(
                f"no RTROIInterpretedType: {len(untyped)} RTROIObservationsSequence item(s) give (3006,0084) "
                "ReferencedROINumber "
                + ", ".join(_written(v) for v in untyped)
                + " (not a number): which ROI's type they give cannot be told"
            )
        roi.notes.extend(f"{count} {what} contour(s) ignored" for what, count in sorted(others.items()))
        for what, count in sorted(others.items()):  # damaged contour data: the mask lacks them (a case warning)
            if what == "unreadable" or what.startswith("out-of-range"):
                roi.defects.append(f"{count} {what} contour(s) left out: (3006,0050) ContourData is damaged")
        sharing = [n for (m, n, *_rest) in parsed if m == number]
        if number in foreign:
            roi.skipped = foreign[number]
        elif numbers.count(number) > 1:  # whose contours are whose cannot be told: none of them is rasterized
            roi.skipped = (
                f"(3006,0022) ROINumber {number} is given to {len(sharing)} ROIs ({', '.join(sharing)}): "
                "which contours belong to which cannot be told"
            )
        elif contour_items.get(number, 0) > 1:
            roi.skipped = (
                f"{contour_items[number]} ROIContourSequence items reference ROINumber {number} "
                "((3006,0084) ReferencedROINumber): which holds its contours cannot be told"
            )
        elif contour_item is None and orphans:
            listed = ", ".join(str(n) for n in orphans)
            roi.skipped = (
                f"no contours: its ROINumber {number} is referenced by no ROIContourSequence item, while "
                f"ROIContourSequence items reference ROINumber {listed} ((3006,0084) ReferencedROINumber), "
                f"which no ROI of the structure set has"
            )
        elif contour_item is None and unjoined:
            roi.skipped = (
                f"no contours: its ROINumber {number} is referenced by no ROIContourSequence item, while "
                f"{len(unjoined)} ROIContourSequence item(s) give (3006,0084) ReferencedROINumber "
                + ", ".join(_written(v) for v in unjoined)
                + " (not a number): which ROI's contours they hold cannot be told"
            )
        elif contour_item is None or not (polygons or others):
            roi.skipped = "no contours"
        elif len(closed_kinds) > 1:
            roi.skipped = (
                "mixes CLOSED_PLANAR and CLOSEDPLANAR_XOR contours ((3006,0042) ContourGeometricType): how the two "
                "combine is not defined (PS3.3 C.8.8.6.3 combines CLOSEDPLANAR_XOR contours with each other by XOR)"
            )
        elif not polygons:
            if set(others) == {"POINT"}:
                roi.skipped = "POINT contours only (a marker, not a volume)"
            else:
                roi.skipped = "no closed planar contour (" + ", ".join(sorted(others)) + ")"
        else:
            _apply_slabs(roi, slabs)
        if roi.skipped is None and polygons:
            normal = default_normal
            if max(_spread(p, normal) for p in polygons) > COPLANAR_TOLERANCE_MM:
                polygons = _leave_out_non_planar(roi, polygons, where, n_contours, normal)
                own = _estimate_normal(polygons) if polygons else None
                if polygons and max(_spread(p, normal) for p in polygons) <= COPLANAR_TOLERANCE_MM:
                    pass  # the rest lie in the image planes
                elif own is not None and max(_spread(p, own) for p in polygons) <= COPLANAR_TOLERANCE_MM:
                    normal = own
                    roi.notes.append(f"contour planes are not the image planes; normal {np.round(own, 4).tolist()}")
                else:
                    roi.skipped = "contours are not planar or not parallel to each other"
            roi.normal = normal
            if roi.skipped is None:
                roi.planes = _group_planes(polygons, normal)
                _drop_repeated_contours(roi)
                if flat:
                    _planes_lost(roi, flat)
        if closed_kinds == {"CLOSEDPLANAR_XOR"} and roi.skipped is None:
            roi.xor = True
            roi.notes.append("CLOSEDPLANAR_XOR contours: combined by XOR in each plane (PS3.3 C.8.8.6.3)")
        if kind == "MARKER" and roi.skipped is None:
            roi.notes.append("RTROIInterpretedType MARKER but has closed contours: rasterized")
        rois.append(roi)
    return rois


def _leave_out_non_planar(roi: RoiContours, polygons: list, where: list, count: int, normal: np.ndarray) -> list:
    """``polygons`` without those whose own points lie in no plane (each named in ``roi.defects`` and ``notes``).

    A contour is planar when its vertices spread at most :data:`COPLANAR_TOLERANCE_MM` along the image planes'
    ``normal`` or along its own (Newell) normal; one that is not is a damaged contour, not the ROI's shape, and
    costs only itself.
    """
    kept = []
    for polygon, (item, contour_number) in zip(polygons, where):
        if _spread(polygon, normal) <= COPLANAR_TOLERANCE_MM:
            kept.append(polygon)
            continue
        n = newell_normal(polygon)
        length = float(np.linalg.norm(n))
        spread = _spread(polygon, n / length) if length > 1e-9 else float("inf")
        if spread <= COPLANAR_TOLERANCE_MM:
            kept.append(polygon)
            continue
        label = f"contour {item} of {count}" + (f" (ContourNumber {contour_number})" if contour_number else "")
        how = f"they spread {spread:.3g} mm along its normal" if np.isfinite(spread) else "they enclose no area"
        text = f"{label} left out: its points do not lie in one plane ({how}; (3006,0050) ContourData)"
        roi.defects.append(text)
        roi.notes.append(text)
    return kept


def plane_spacing(rois: Sequence[RoiContours]) -> Optional[float]:
    """The typical distance between consecutive contour planes (median over all ROIs), in mm."""
    gaps = [np.diff(r.positions) for r in rois if r.skipped is None and len(r.planes) > 1]
    gaps = np.concatenate(gaps) if gaps else np.zeros(0)
    gaps = gaps[gaps > PLANE_TOLERANCE_MM]
    return float(np.median(gaps)) if gaps.size else None
