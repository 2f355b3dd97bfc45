"""Exact DVHs of the Nelms DVH phantom's shapes under its linear doses: the oracle for the DVH tests.

The phantom (Nelms et al., Med Phys 42 (2015); ../shared/data/nelms-dvh-phantom) holds one shape per
RTSTRUCT, 24 mm across and 24 mm long: spheres (R = 12 mm), cylinders and cones whose axis runs along
z (cones: apex at the inferior end), and "Rt" cylinders and cones whose axis runs along y (Rt cones:
base at the anterior end). Each shape is *fitted* from its contours (:func:`fit_shape`: kind,
orientation, centre, radius and length) and cross-checked with its file name (:func:`shape_from_name`).
Doses (:data:`LINEAR_DOSES`): AntPost ``D = 10 - y`` Gy, SupInf ``D = 10 + z`` Gy (1 Gy/mm).

Three readings of one shape (``convention``)
--------------------------------------------
* ``"ideal"``: the true solid.
* ``"capped"``: the true solid plus a half-slice "end cap" beyond the first and the last contour plane
  (the end cross-section extended by t/2 along z). This is the convention of the analytic values
  published with the phantom (its ReadMeFirst: "analytical DVHs include 1/2 slice thickness
  end-caps"): between the contour planes the solid stays the true, smooth one.
* ``"slab"``: the solid as the contours describe it under the engine's documented slab rule: the
  true cross-section at each contour plane ``p`` (which the RTSTRUCT's polygons trace) standing for
  the slab ``[p - t/2, p + t/2)``; the end caps come with it. This is all a DVH calculator can know
  from the contours without a model of the shape between the planes.

For the gradient along ``z`` the ``slab`` solid is a staircase; where a shape closes between two
planes (sphere poles, the tangent ends of the Rt shapes, cone apices) it differs from the
``capped`` one by far more than 3 % at the low/high DVH points (D99, D1) at 2-3 mm spacing; see
the module's tests. Dmin/Dmax of ``capped`` and ``slab`` extend to ``first plane - t/2`` and
``last plane + t/2`` along z even where the end contour encloses (next to) no area, as the published
values do.

Formulas (derived here; each is checked against fine sampling in test_reference_dvh.py)
---------------------------------------------------------------------------------------
With ``a = sqrt(r^2 - d^2)``:

* disk of radius r, area with coordinate ``<= d`` (from its centre): ``d a + r^2 asin(d/r) + pi r^2 / 2``
  (the integral of the chord ``2 a``).
* ball of radius R, volume below ``d``: ``pi (R^2 d - d^3/3) + 2 pi R^3 / 3`` (sections ``pi (R^2 - d^2)``).
* cone (radius R at the base, length H), section on a plane along the axis at distance d:
  ``A(d) = (H/R) (R a - d^2 ln((R + a)/|d|))``, and its integral, the volume with signed distance
  ``<= d``: ``F(d) + F(R)`` with ``F(d) = (H/R) (2/3 R d a + R^3/3 asin(d/R) - d^3/3 ln((R + a)/|d|))``
  (``F(R) = pi R^2 H / 6``, half the cone).
* the same cone's section on a plane along the axis, up to a line across the axis (an Rt cone in a z
  plane): with ``rho`` the cone radius at that line, ``(H/R) (Q(R) - Q(rho))``,
  ``Q(rho) = rho s - d^2 ln(rho + s)``, ``s = sqrt(rho^2 - d^2)`` (``dQ/drho = 2 s``, the chord).
* cone across its axis: ``pi R^2 s^3 / (3 H^2)`` within s of the apex.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np

#: The phantom's shapes: radius and length (mm).
R0 = 12.0
H0 = 24.0
KINDS = ("Sphere", "Cylinder", "Cone", "RtCylinder", "RtCone")
CONVENTIONS = ("ideal", "capped", "slab")
#: The linear doses: (axis, Gy per mm along it, Gy at coordinate 0).
LINEAR_DOSES = {"AntPost": ("y", -1.0, 10.0), "SupInf": ("z", 1.0, 10.0)}
PERCENTS = (99.0, 95.0, 50.0, 5.0, 1.0)
NEAR_MAX_CC = 0.03
POINT_KEYS = ("volume_cc", "dmin_gy", "dmax_gy", "dmean_gy", "d99_gy", "d95_gy", "d50_gy", "d5_gy", "d1_gy")
ALL_KEYS = (*POINT_KEYS, "d0.03cc_gy")


@dataclass(frozen=True)
class Shape:
    """One Nelms shape.

    ``centre`` is the centre of its bounding box (LPS mm); ``flipped``: a Cone with its apex at +z
    (default: apex at -z) or an RtCone with its base at +y (default: base at -y, anterior).
    ``planes`` are the contour planes (z, mm) and ``thickness`` the slab thickness t (the CT's
    slice step).
    """

    kind: str
    centre: tuple
    radius: float = R0
    length: float = H0
    flipped: bool = False
    planes: tuple = field(default=())
    thickness: float = 0.0

    @property
    def axis(self) -> str:
        return "y" if self.kind.startswith("Rt") else "z"

    def span(self, axis: str) -> tuple:
        """(low, high) coordinate of the ideal solid along ``axis`` ("x", "y" or "z")."""
        c = self.centre["xyz".index(axis)]
        half = self.length / 2 if axis == self.axis and self.kind != "Sphere" else self.radius
        return c - half, c + half


# ---- closed forms ------------------------------------------------------------------------------


def disk_below(r, d) -> np.ndarray:
    """Area of a disk of radius ``r`` on the side ``<= d`` of a chord at signed distance d."""
    r = np.asarray(r, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    rr = np.where(r > 0, r, 1.0)
    dd = np.clip(d, -rr, rr)
    a = np.sqrt(np.clip(rr**2 - dd**2, 0, None))
    out = dd * a + rr**2 * np.arcsin(dd / rr) + np.pi * rr**2 / 2
    return np.where(r > 0, out, 0.0)


def ball_below(radius: float, d) -> np.ndarray:
    """Volume of a ball below the plane at signed distance d from its centre."""
    d = np.clip(np.asarray(d, dtype=np.float64), -radius, radius)
    return np.pi * (radius**2 * d - d**3 / 3) + 2 * np.pi * radius**3 / 3


def _xlogx_term(d: np.ndarray, num: np.ndarray) -> np.ndarray:
    """``d^2 ln(num / |d|)``, 0 at d = 0."""
    ad = np.abs(d)
    safe = np.where(ad > 0, ad, 1.0)
    return np.where(ad > 0, d**2 * np.log(np.where(ad > 0, num, 1.0) / safe), 0.0)


def cone_section_along(radius: float, length: float, d) -> np.ndarray:
    """Area of a cone's section by a plane parallel to its axis at distance |d|."""
    d = np.asarray(d, dtype=np.float64)
    dd = np.clip(np.abs(d), 0, radius)
    a = np.sqrt(radius**2 - dd**2)
    out = length / radius * (radius * a - _xlogx_term(dd, radius + a))
    return np.where(np.abs(d) < radius, out, 0.0)


def cone_below_along(radius: float, length: float, d) -> np.ndarray:
    """Volume of a cone on the side ``<= d`` of a plane parallel to its axis (signed distance d)."""
    d = np.clip(np.asarray(d, dtype=np.float64), -radius, radius)
    a = np.sqrt(np.clip(radius**2 - d**2, 0, None))
    f = (
        length
        / radius
        * (2 / 3 * radius * d * a + radius**3 / 3 * np.arcsin(d / radius) - d / 3 * _xlogx_term(d, radius + a))
    )
    return f + np.pi * radius**2 * length / 6


def _q(rho: np.ndarray, d: np.ndarray) -> np.ndarray:
    s = np.sqrt(np.clip(rho**2 - d**2, 0, None))
    inner = rho + s
    return rho * s - np.where(d != 0, d**2 * np.log(np.where(inner > 0, inner, 1.0)), 0.0)


def rtcone_plane_below(radius: float, length: float, d: float, base: float, w) -> np.ndarray:
    """Area, with coordinate ``<= w`` along the axis, of a cone's section by a plane parallel to the
    axis at distance d; the base at ``base``, the apex at ``base + length``."""
    w = np.asarray(w, dtype=np.float64)
    d = abs(float(d))
    if d >= radius:
        return np.zeros(w.shape)
    apex = base + length
    end = apex - length * d / radius  # where the section closes
    top = np.clip(w, base, end)
    rho = radius * (apex - top) / length
    dd = np.full(rho.shape, d)
    return length / radius * (_q(np.full(rho.shape, radius), dd) - _q(rho, dd))


# ---- one shape: sections and cumulative volumes ------------------------------------------------


def _flip(values: Callable, total: float, centre: float) -> Callable:
    """The cumulative of the shape mirrored about ``centre``."""
    return lambda w: total - values(2 * centre - np.asarray(w, dtype=np.float64))


def ideal_volume(shape: Shape) -> float:
    """Volume of the true solid (mm^3)."""
    r, h = shape.radius, shape.length
    if shape.kind == "Sphere":
        return 4 / 3 * np.pi * r**3
    if shape.kind in ("Cylinder", "RtCylinder"):
        return np.pi * r**2 * h
    return np.pi * r**2 * h / 3


def ideal_below(shape: Shape, axis: str, w) -> np.ndarray:
    """Volume (mm^3) of the true solid with coordinate ``axis`` (y or z) ``<= w``."""
    w = np.asarray(w, dtype=np.float64)
    r, h = shape.radius, shape.length
    cx, cy, cz = shape.centre
    c = cy if axis == "y" else cz
    kind = shape.kind
    if kind == "Sphere":
        return ball_below(r, w - c)
    if axis == shape.axis:  # along the axis
        lo, _hi = shape.span(axis)
        s = np.clip(w - lo, 0, h)
        if kind in ("Cylinder", "RtCylinder"):
            return np.pi * r**2 * s
        # cones: apex at lo for a Cone, at hi for an RtCone (base at lo), unless flipped
        apex_low = (kind == "Cone") != shape.flipped
        if apex_low:
            return np.pi * r**2 * s**3 / (3 * h**2)
        total = ideal_volume(shape)
        return total - np.pi * r**2 * (h - s) ** 3 / (3 * h**2)
    # across the axis
    if kind in ("Cylinder", "RtCylinder"):
        return h * disk_below(r, w - c)
    return cone_below_along(r, h, w - c)


def section_z(shape: Shape, p: float) -> tuple:
    """The true cross-section on the plane z = p: (area mm^2, function w -> its area with y <= w)."""
    r, h = shape.radius, shape.length
    cx, cy, cz = shape.centre
    kind = shape.kind
    zlo, zhi = shape.span("z")
    if not (zlo - 1e-9 <= p <= zhi + 1e-9):
        return 0.0, lambda w: np.zeros(np.shape(w))
    if kind in ("Sphere", "Cylinder", "Cone"):
        if kind == "Sphere":
            rp = np.sqrt(max(r**2 - (p - cz) ** 2, 0.0))
        elif kind == "Cylinder":
            rp = r
        else:
            s = (p - zlo) if not shape.flipped else (zhi - p)
            rp = r * min(max(s, 0.0), h) / h
        return float(np.pi * rp**2), lambda w: disk_below(rp, np.asarray(w, dtype=np.float64) - cy)
    d = p - cz
    ylo, _yhi = shape.span("y")
    if kind == "RtCylinder":
        width = 2 * np.sqrt(max(r**2 - d**2, 0.0))
        return float(width * h), lambda w: width * np.clip(np.asarray(w, dtype=np.float64) - ylo, 0, h)
    area = float(cone_section_along(r, h, d))

    def below(w):
        return rtcone_plane_below(r, h, d, ylo, w)

    return area, (_flip(below, area, cy) if shape.flipped else below)


def _caps(shape: Shape) -> list:
    """(z from, z to, end plane) of the two half-slice end caps."""
    if not shape.planes or shape.thickness <= 0:
        return []
    t = shape.thickness
    first, last = min(shape.planes), max(shape.planes)
    return [(first - t / 2, first, first), (last, last + t / 2, last)]


def _slabs(shape: Shape) -> list:
    """(z from, z to, plane) of every contour plane's slab."""
    t = shape.thickness
    return [(p - t / 2, p + t / 2, p) for p in sorted(shape.planes)]


def _pieces_below(shape: Shape, pieces: list, axis: str, w) -> np.ndarray:
    """Volume with coordinate <= w of prisms (z from, z to, plane whose true section they extend)."""
    w = np.asarray(w, dtype=np.float64)
    out = np.zeros(w.shape)
    for z0, z1, p in pieces:
        area, below = section_z(shape, p)
        if area <= 0:
            continue
        if axis == "z":
            out += area * np.clip(w - z0, 0, z1 - z0)
        else:
            out += (z1 - z0) * below(w)
    return out


def volume_below(shape: Shape, axis: str, w, convention: str = "capped") -> np.ndarray:
    """Volume (mm^3) with coordinate ``axis`` ``<= w`` of the shape read by ``convention``."""
    if convention == "ideal":
        return ideal_below(shape, axis, w)
    if convention == "capped":
        return ideal_below(shape, axis, w) + _pieces_below(shape, _caps(shape), axis, w)
    if convention == "slab":
        return _pieces_below(shape, _slabs(shape), axis, w)
    raise ValueError(convention)


def support(shape: Shape, axis: str, convention: str) -> tuple:
    """(low, high) extent along ``axis`` of the closed solid (caps and slabs included)."""
    lo, hi = shape.span(axis)
    if convention != "ideal" and axis == "z" and shape.planes:
        t = shape.thickness
        lo, hi = min(shape.planes) - t / 2, max(shape.planes) + t / 2
    return lo, hi


def breakpoints(shape: Shape, axis: str, convention: str) -> np.ndarray:
    """Where the cumulative volume may bend sharply (shape ends, centre, slab edges)."""
    lo, hi = support(shape, axis, convention)
    c = shape.centre["xyz".index(axis)]
    points = [lo, hi, c, *shape.span(axis)]
    if axis == "z" and shape.planes:
        t = shape.thickness
        points += [p + s * t / 2 for p in shape.planes for s in (-1, 0, 1)]
    points = np.unique(np.clip(points, lo, hi))
    return points


# ---- membership (for the Monte Carlo checks; independent of the closed forms) --------------------


def inside_ideal(shape: Shape, points: np.ndarray) -> np.ndarray:
    """Which points (N, 3) lie in the true solid."""
    p = np.asarray(points, dtype=np.float64)
    cx, cy, cz = shape.centre
    r, h = shape.radius, shape.length
    x, y, z = p[:, 0] - cx, p[:, 1] - cy, p[:, 2] - cz
    if shape.kind == "Sphere":
        return x**2 + y**2 + z**2 <= r**2
    if shape.axis == "z":
        radial, along = np.hypot(x, y), z
    else:
        radial, along = np.hypot(x, z), y
    within = np.abs(along) <= h / 2
    if shape.kind.endswith("Cylinder"):
        return within & (radial <= r)
    s = along + h / 2  # distance from the low end
    apex_low = (shape.kind == "Cone") != shape.flipped  # a Cone's apex is low, an RtCone's base
    from_apex = s if apex_low else h - s
    return within & (radial <= r * from_apex / h)


def inside(shape: Shape, points: np.ndarray, convention: str = "capped") -> np.ndarray:
    """Which points lie in the shape read by ``convention``."""
    p = np.asarray(points, dtype=np.float64)
    if convention == "ideal":
        return inside_ideal(shape, p)
    pieces = _caps(shape) if convention == "capped" else _slabs(shape)
    out = inside_ideal(shape, p) if convention == "capped" else np.zeros(p.shape[0], dtype=bool)
    for z0, z1, plane in pieces:
        sel = (p[:, 2] >= z0) & (p[:, 2] < z1) & ~out
        if np.any(sel):
            projected = p[sel].copy()
            projected[:, 2] = plane
            out[np.flatnonzero(sel)] = inside_ideal(shape, projected)
    return out


# ---- DVHs ----------------------------------------------------------------------------------------


def _gauss_integral(f: Callable, points: np.ndarray, pieces: int = 32, order: int = 16) -> float:
    """Integral of ``f`` over [points[0], points[-1]], Gauss-Legendre on every sub-interval."""
    nodes, weights = np.polynomial.legendre.leggauss(order)
    total = 0.0
    for a, b in zip(points[:-1], points[1:]):
        if b <= a:
            continue
        edges = np.linspace(a, b, pieces + 1)
        mid = (edges[1:] + edges[:-1]) / 2
        half = (edges[1:] - edges[:-1]) / 2
        x = (mid[:, None] + half[:, None] * nodes[None, :]).ravel()
        total += float(np.sum(f(x).reshape(pieces, order) * (half[:, None] * weights[None, :])))
    return total


def _invert(f: Callable, target: float, lo: float, hi: float) -> float:
    """The w in [lo, hi] where the non-decreasing ``f`` reaches ``target`` (bisection)."""
    for _ in range(200):
        mid = (lo + hi) / 2
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2


@dataclass
class AnalyticDvh:
    """The exact DVH of one shape under one linear dose."""

    shape: Shape
    field_name: str
    convention: str

    def __post_init__(self) -> None:
        self.axis, self.gradient, self.offset = LINEAR_DOSES[self.field_name]
        self.lo, self.hi = support(self.shape, self.axis, self.convention)
        self.total = float(volume_below(self.shape, self.axis, self.hi, self.convention))

    def below(self, w) -> np.ndarray:
        return volume_below(self.shape, self.axis, w, self.convention)

    def dose_at(self, w):
        return self.offset + self.gradient * np.asarray(w, dtype=np.float64)

    def coordinate_of(self, dose):
        return (np.asarray(dose, dtype=np.float64) - self.offset) / self.gradient

    def volume_at_least(self, dose) -> np.ndarray:
        """Cumulative DVH: volume (cm^3) receiving at least ``dose`` (Gy)."""
        w = self.coordinate_of(dose)
        out = self.total - self.below(w) if self.gradient > 0 else self.below(w)
        return np.clip(out, 0, self.total) / 1000.0

    def dose_at_volume(self, volume_mm3: float) -> float:
        """The least dose of the hottest ``volume_mm3``."""
        f = lambda w: float(self.below(w))  # noqa: E731
        if self.gradient > 0:
            w = _invert(f, self.total - volume_mm3, self.lo, self.hi)
        else:
            w = _invert(f, volume_mm3, self.lo, self.hi)
        return float(self.dose_at(w))

    def points(self) -> dict:
        """Volume (cm^3), Dmin, Dmax, Dmean, D99 ... D1 and D0.03cc (Gy)."""
        d_lo, d_hi = float(self.dose_at(self.lo)), float(self.dose_at(self.hi))
        knots = breakpoints(self.shape, self.axis, self.convention)
        integral = _gauss_integral(self.below, knots)
        centroid = self.hi - integral / self.total
        out = {
            "volume_cc": self.total / 1000.0,
            "dmin_gy": min(d_lo, d_hi),
            "dmax_gy": max(d_lo, d_hi),
            "dmean_gy": float(self.dose_at(centroid)),
        }
        for x in PERCENTS:
            out[f"d{x:g}_gy"] = self.dose_at_volume(x / 100.0 * self.total)
        out["d0.03cc_gy"] = self.dose_at_volume(NEAR_MAX_CC * 1000.0)
        return out


def analytic_points(shape: Shape, field_name: str, convention: str = "capped") -> dict:
    """DVH points of ``shape`` under the linear dose ``field_name`` ("AntPost" or "SupInf")."""
    return AnalyticDvh(shape, field_name, convention).points()


# ---- from the files ------------------------------------------------------------------------------


def shape_from_name(file_stem: str) -> dict:
    """What a STRUCTURES file name says: kind, CT slice step (mm) and centre.

    ``Cone_20_X10Z10``: a cone on the 2.0 mm CT, shifted by +1.0 mm in x and by 1.0 mm along the
    phantom's "Z" axis, its anterior-posterior axis (-y in LPS), from the unshifted centre
    (0, -6, 6) mm.
    """
    match = re.fullmatch(r"(Sphere|Cylinder|Cone|RtCylinder|RtCone)_(\d\d)_(0|X\d\d|X\d\dZ\d\d)", file_stem)
    if not match:
        raise ValueError(f"{file_stem}: not a Nelms STRUCTURES name")
    kind, step, shift = match.groups()
    sx = re.search(r"X(\d\d)", shift)
    sz = re.search(r"Z(\d\d)", shift)
    dx = int(sx.group(1)) / 10 if sx else 0.0
    dy = -int(sz.group(1)) / 10 if sz else 0.0
    return {"kind": kind, "ct_mm": int(step) / 10, "centre": (dx, -6.0 + dy, 6.0)}


@dataclass
class Fit:
    """A shape fitted to an ROI's contours, and how well each kind explained the plane areas."""

    shape: Shape
    residuals: dict  # kind -> max |model - contour| plane area / largest plane area
    areas: np.ndarray  # contour plane areas (mm^2)


def fit_shape(roi, thickness_mm: float) -> Fit:
    """Fit kind, orientation, centre, radius and length to an ROI's axial contours.

    x always runs across a shape: its range gives the centre x and the radius. The z range of
    the contour planes gives the centre z (and the length of z-axis shapes), the y range of the
    vertices the centre y (and the length of y-axis shapes). The kind is the one whose exact
    cross-sections best match the contour areas; cones are turned by where their area vanishes
    (the apex) or where their sections all reach (the base).
    """
    from DoseAlignLib.dicom.rtstruct import plane_basis
    from DoseAlignLib.structures.polygons import even_odd_area

    normal = np.asarray(roi.normal, dtype=np.float64)
    if abs(abs(normal[2]) - 1) > 1e-6:
        raise ValueError(f"{roi.name}: contours not axial (normal {normal.tolist()})")
    uv = np.stack(plane_basis(normal), axis=1)
    areas = np.array([even_odd_area([poly @ uv for poly in p.polygons]) for p in roi.planes])
    planes = roi.positions
    points = np.concatenate([poly for p in roi.planes for poly in p.polygons])
    (x0, y0, _), (x1, y1, _) = points.min(axis=0), points.max(axis=0)
    z0, z1 = float(planes.min()), float(planes.max())
    radius = (x1 - x0) / 2
    centre = ((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2)
    candidates = []
    for kind in KINDS:
        length = (z1 - z0) if kind in ("Cylinder", "Cone") else (y1 - y0) if kind.startswith("Rt") else 2 * radius
        flipped = False
        if kind == "Cone":
            flipped = areas[0] > areas[-1]  # the apex has the small end
        if kind == "RtCone":
            # base at -y: every section starts at the base line
            starts = np.array([min(poly[:, 1].min() for poly in p.polygons) for p in roi.planes])
            ends = np.array([max(poly[:, 1].max() for poly in p.polygons) for p in roi.planes])
            flipped = np.median(np.abs(ends - y1)) < np.median(np.abs(starts - y0))
        shape = Shape(kind, centre, radius, length, flipped, tuple(planes.tolist()), float(thickness_mm))
        model = np.array([section_z(shape, p)[0] for p in planes])
        candidates.append((float(np.max(np.abs(model - areas)) / areas.max()), kind, shape))
    residuals = {kind: res for res, kind, _ in candidates}
    best = min(candidates, key=lambda c: c[0])
    return Fit(best[2], residuals, areas)


def with_planes(shape: Shape, planes, thickness_mm: float) -> Shape:
    """The shape with other contour planes or slab thickness."""
    return replace(shape, planes=tuple(float(p) for p in planes), thickness=float(thickness_mm))


def fit_linear_dose(volume) -> tuple:
    """Least-squares ``D = c + g . p`` over the voxels with dose > 0: (g (3,), c, max |residual|)."""
    grid = volume.grid
    k, j, i = grid.shape
    kk, jj, ii = np.meshgrid(np.arange(k), np.arange(j), np.arange(i), indexing="ij")
    points = grid.index_to_lps(np.stack([ii, jj, kk], axis=-1).astype(np.float64)).reshape(-1, 3)
    values = volume.array.reshape(-1).astype(np.float64)
    keep = values > 0
    design = np.c_[points[keep], np.ones(int(keep.sum()))]
    coef, *_ = np.linalg.lstsq(design, values[keep], rcond=None)
    return coef[:3], float(coef[3]), float(np.abs(design @ coef - values[keep]).max())


def linear_dose_region(volume, field_name: str) -> tuple:
    """(low, high) coordinates along the gradient within which trilinear interpolation of the
    dose grid reproduces the linear dose exactly (inside the grid's outer voxel centres and away
    from where the dose is cut at 0 Gy)."""
    axis, gradient, offset = LINEAR_DOSES[field_name]
    grid = volume.grid
    n = "xyz".index(axis)
    coords = grid.index_to_lps(np.array([[0.0, 0.0, 0.0], [grid.shape[2] - 1, grid.shape[1] - 1, grid.shape[0] - 1]]))
    lo, hi = sorted(coords[:, n])
    step = float(np.max(grid.spacing))
    zero_at = -offset / gradient  # dose 0 here; the grid's last positive node is within a step
    if gradient > 0:
        lo = max(lo, zero_at + step)
    else:
        hi = min(hi, zero_at - step)
    return lo, hi


def optional_float(value) -> Optional[float]:
    return None if value is None else float(value)
