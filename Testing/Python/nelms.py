"""The Nelms DVH phantom's shapes written down analytically (for the structure and audit tests).

Every shape is 24 mm across and 24 mm long: spheres (R = 12 mm), cylinders and cones whose axis
runs along z (patient S) from z = -6 to 18 mm ("Cone": apex at z = -6, base R = 12 at z = 18),
and "Rt" cylinders and cones whose axis runs along y (patient P) from y = -18 to 6 mm ("RtCone":
base at y = -18, apex at y = 6). The centre is (0, -6, 6) mm; a name's ``Xnn`` shifts it by
+nn/10 mm in x and its ``Znn`` by -nn/10 mm in y (the phantom's Z is the AP axis), as the
contours confirm. Doses: AntPost D = 10 - y Gy, SupInf D = 10 + z Gy (1 Gy/mm, > 0 in every shape).

Volumes and DVHs come from exact cross-sectional areas ``A(w)`` on planes normal to an axis,
integrated with a fine trapezoid rule (error ~1e-7), for the true solid and for the solid as the
contours' slab rule sees it (each contour plane's true cross-section times the slab thickness).
"""

from __future__ import annotations

import re

import numpy as np

R = 12.0
H = 24.0
SAMPLES = 200_001


def shape_of(file_stem: str) -> dict:
    """Shape, centre and contour spacing from a STRUCTURES file name such as ``Cone_20_X10Z10``."""
    match = re.match(r"(Sphere|Cylinder|Cone|RtCylinder|RtCone)_(\d\d)_(.*)", file_stem)
    if not match:
        raise ValueError(file_stem)
    kind, size, shift = match.groups()
    sx = re.search(r"X(\d\d)", shift)
    sz = re.search(r"Z(\d\d)", shift)
    dx = int(sx.group(1)) / 10.0 if sx else 0.0
    dy = -int(sz.group(1)) / 10.0 if sz else 0.0
    return {"kind": kind, "ct_mm": int(size) / 10.0, "centre": np.array([dx, -6.0 + dy, 6.0])}


def volume_cc(kind: str) -> float:
    """The true solid's volume (cm^3)."""
    if kind == "Sphere":
        return 4.0 / 3.0 * np.pi * R**3 / 1000
    if kind in ("Cylinder", "RtCylinder"):
        return np.pi * R**2 * H / 1000
    return np.pi * R**2 * H / 3.0 / 1000


def _cone_chord_area(d: np.ndarray) -> np.ndarray:
    """Area of a cone (radius R over length H) cut by a plane parallel to its axis at distance |d|."""
    d = np.abs(np.asarray(d, dtype=np.float64))
    out = np.zeros(d.shape)
    ok = d < R
    s = np.sqrt(R**2 - d[ok] ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_term = np.where(d[ok] > 0, d[ok] ** 2 * np.log((R + s) / np.where(d[ok] > 0, d[ok], 1)), 0.0)
    out[ok] = H / R * (R * s - log_term)
    return out


def section_area(kind: str, centre: np.ndarray, axis: str, w: np.ndarray) -> np.ndarray:
    """Exact area (mm^2) of the solid's cross-section on the plane ``axis = w`` (axis "y" or "z")."""
    w = np.asarray(w, dtype=np.float64)
    cx, cy, cz = centre
    z0, z1 = cz - H / 2, cz + H / 2  # axial solids: -6 .. 18
    y0, y1 = cy - H / 2, cy + H / 2  # Rt solids: -18 .. 6
    d = w - (cy if axis == "y" else cz)
    inside_r = np.clip(R**2 - d**2, 0, None)
    if kind == "Sphere":
        return np.pi * inside_r
    if kind == "Cylinder":
        if axis == "z":
            return np.where((w >= z0) & (w <= z1), np.pi * R**2, 0.0)
        return 2 * np.sqrt(inside_r) * H
    if kind == "RtCylinder":
        if axis == "y":
            return np.where((w >= y0) & (w <= y1), np.pi * R**2, 0.0)
        return 2 * np.sqrt(inside_r) * H
    if kind == "Cone":  # apex at z0, base at z1
        if axis == "z":
            r = np.where((w >= z0) & (w <= z1), R * (w - z0) / H, 0.0)
            return np.pi * r**2
        return _cone_chord_area(d)
    if kind == "RtCone":  # base at y0, apex at y1
        if axis == "y":
            r = np.where((w >= y0) & (w <= y1), R * (y1 - w) / H, 0.0)
            return np.pi * r**2
        return _cone_chord_area(d)
    raise ValueError(kind)


def slab_volume_cc(kind: str, centre: np.ndarray, planes: np.ndarray, thickness: float) -> float:
    """Volume of the solid as the slab rule sees it: true cross-sections at the contour planes x t."""
    return float(section_area(kind, centre, "z", planes).sum() * thickness / 1000)


def analytic_dvh(kind: str, centre: np.ndarray, field: str) -> dict:
    """DVH points of the true solid under the phantom's linear dose (Gy): Dmean, Dmin, Dmax, Dx."""
    axis, sign, offset = ("y", -1.0, 10.0) if field == "AntPost" else ("z", 1.0, 10.0)
    c = centre[1] if axis == "y" else centre[2]
    w = np.linspace(c - H / 2 - 1, c + H / 2 + 1, SAMPLES)
    area = section_area(kind, centre, axis, w)
    dose = offset + sign * w
    # cumulative volume from the hot end: dose increases with sign * w
    order = np.argsort(-dose)
    a, d = area[order], dose[order]
    dw = np.abs(w[1] - w[0])
    cumulative = np.concatenate([[0.0], np.cumsum((a[1:] + a[:-1]) / 2 * dw)])
    total = cumulative[-1]
    occupied = d[a > 0]
    out = {
        "volume_cc": total / 1000,
        "dmean_gy": float(np.sum(area * dose) / np.sum(area)),
        "dmax_gy": float(occupied.max()),
        "dmin_gy": float(occupied.min()),
    }
    for x in (99, 95, 50, 5, 1):
        out[f"d{x}_gy"] = float(np.interp(x / 100 * total, cumulative, d))
    return out
