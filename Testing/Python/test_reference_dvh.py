"""The reference DVH (contours + native dose) and its analytic oracle (nelms_analytic).

* The oracle's closed forms against fine sampling and Monte Carlo (independent of the formulas).
* The reference DVH against the oracle on shapes contoured in code, linear doses on grids built in
  code (any orientation, uneven slices), holes, doses cut by the grid, a nonlinear dose.
* On the real Nelms phantom (../shared/data, skipped without it): which CT each RTSTRUCT names,
  the dose fields, the fitted shapes, and the 3 % criterion per DVH point on the 1, 2 and 3 mm
  CTs and dose grids, both gradients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from DoseAlignLib.dicom.rtstruct import ContourPlane, RoiContours, read_structure_set
from DoseAlignLib.geometry.grid import Grid, Volume
from DoseAlignLib.structures.reference_dvh import (
    ContourSolid,
    outline_distance,
    reference_dvh,
    reference_dvhs,
    scanline_samples,
    slab_intervals,
)
from nelms_analytic import (
    ALL_KEYS,
    KINDS,
    LINEAR_DOSES,
    AnalyticDvh,
    Shape,
    analytic_points,
    ball_below,
    cone_below_along,
    cone_section_along,
    disk_below,
    fit_linear_dose,
    fit_shape,
    inside,
    rtcone_plane_below,
    section_z,
    shape_from_name,
    volume_below,
)

R, H = 12.0, 24.0
PLANES_3MM = tuple(np.arange(-6.0, 18.0 + 1e-9, 3.0).tolist())


def _shape(kind: str, thickness: float = 3.0, flipped: bool = False, centre=(0.3, -6.2, 6.0)) -> Shape:
    planes = tuple(np.arange(centre[2] - 12.0, centre[2] + 12.0 + 1e-9, thickness).tolist())
    return Shape(kind, tuple(centre), R, H, flipped, planes, thickness)


# ---- the oracle's formulas, each against fine sampling -----------------------------------------------


def _midpoint(f, a: float, b: float, n: int = 200_000) -> float:
    x = a + (np.arange(n) + 0.5) * (b - a) / n
    return float(np.sum(f(x)) * (b - a) / n)


def test_disk_and_ball_below_a_plane():
    r = 7.0
    for d in np.linspace(-8, 8, 17):
        top = float(np.clip(d, -r, r))
        chord = _midpoint(lambda u: 2 * np.sqrt(np.clip(r**2 - u**2, 0, None)), -r, top)
        assert float(disk_below(r, d)) == pytest.approx(chord, abs=1e-4 * np.pi * r**2)
        slices = _midpoint(lambda u: np.pi * (r**2 - u**2), -r, top)
        assert float(ball_below(r, d)) == pytest.approx(slices, abs=1e-6 * r**3)


def test_cone_sections_along_its_axis_against_a_fine_grid():
    # a cone with its apex at t = 0 and base R at t = H; a plane parallel to the axis at distance d
    n = 1600
    s = -R + (np.arange(n) + 0.5) * 2 * R / n
    t = (np.arange(n) + 0.5) * H / n
    ss, tt = np.meshgrid(s, t, indexing="ij")
    cell = (2 * R / n) * (H / n)
    for d in (0.0, 2.5, 6.0, 9.5, 11.9):
        region = np.sqrt(ss**2 + d**2) <= R * tt / H
        area = np.count_nonzero(region) * cell
        assert float(cone_section_along(R, H, d)) == pytest.approx(area, rel=5e-3, abs=0.05), d
        # the same section as an Rt cone (base at -18, apex at +6 along y) cut at y <= w
        for w in (-15.0, -9.0, -1.0, 6.0):
            y = 6.0 - tt  # t: distance from the apex
            expected = np.count_nonzero(region & (y <= w)) * cell
            got = float(rtcone_plane_below(R, H, d, -18.0, w))
            assert got == pytest.approx(expected, rel=5e-3, abs=0.05), (d, w)


def test_cone_volume_across_its_axis_against_monte_carlo():
    rng = np.random.default_rng(0)
    n = 2_000_000
    p = rng.uniform([-R, -R, 0], [R, R, H], size=(n, 3))
    inside_cone = np.hypot(p[:, 0], p[:, 1]) <= R * p[:, 2] / H
    box = (2 * R) ** 2 * H
    for d in (-11.0, -6.0, -1.5, 0.0, 4.0, 10.0):
        hits = inside_cone & (p[:, 1] <= d)
        frac = np.count_nonzero(hits) / n
        sigma = np.sqrt(frac * (1 - frac) / n) * box
        assert float(cone_below_along(R, H, d)) == pytest.approx(frac * box, abs=4 * sigma + 1e-9), d
    assert float(cone_below_along(R, H, R)) == pytest.approx(np.pi * R**2 * H / 3, rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_sections_on_contour_planes_against_a_fine_grid(kind):
    n = 1200
    x = 0.3 - 13 + (np.arange(n) + 0.5) * 26 / n
    y = -6.2 - 13 + (np.arange(n) + 0.5) * 26 / n
    xx, yy = np.meshgrid(x, y, indexing="ij")
    cell = (26 / n) ** 2
    for flipped in (False, True):
        shape = _shape(kind, flipped=flipped)
        for p in (-6.0 + 0.7, 0.0, 5.1, 11.0, 17.5):
            points = np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, p)], axis=1)
            region = inside(shape, points, "ideal").reshape(xx.shape)
            area, below = section_z(shape, p)
            assert area == pytest.approx(np.count_nonzero(region) * cell, rel=5e-3, abs=0.05), (p, flipped)
            for w in (-15.0, -8.0, -2.0, 4.0):
                expected = np.count_nonzero(region & (yy <= w)) * cell
                assert float(below(w)) == pytest.approx(expected, rel=5e-3, abs=0.05), (p, w, flipped)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("convention", ["ideal", "capped", "slab"])
def test_cumulative_volumes_against_monte_carlo(kind, convention):
    rng = np.random.default_rng(KINDS.index(kind))
    shape = _shape(kind, flipped=kind.endswith("Cone"))
    lo = np.array([0.3 - 13, -6.2 - 13, -6.0 - 3])
    hi = np.array([0.3 + 13, -6.2 + 13, 18.0 + 3])
    n = 1_000_000
    p = rng.uniform(lo, hi, size=(n, 3))
    hit = inside(shape, p, convention)
    box = float(np.prod(hi - lo))
    for axis, values in (("y", (-16.0, -9.0, -6.2, 0.0, 5.0)), ("z", (-7.0, -4.5, 3.0, 12.0, 19.0))):
        c = p[:, "xyz".index(axis)]
        for w in values:
            frac = np.count_nonzero(hit & (c <= w)) / n
            sigma = np.sqrt(frac * (1 - frac) / n) * box
            got = float(volume_below(shape, axis, w, convention))
            assert got == pytest.approx(frac * box, abs=4 * sigma + 1e-6), (axis, w)


@pytest.mark.parametrize("kind", KINDS)
def test_dvh_points_against_sampled_doses(kind):
    """Every DVH point of the three readings, from doses at 0.15 mm grid points inside each solid."""
    shape = _shape(kind, flipped=kind == "Cone")
    step = 0.15
    axes = [np.arange(lo, hi, step) + step / 2 for lo, hi in ((-12, 12.6), (-18.5, 6.1), (-7.5, 19.5))]
    xx, yy, zz = np.meshgrid(*axes, indexing="ij")
    points = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)
    for convention in ("ideal", "capped", "slab"):
        hit = points[inside(shape, points, convention)]
        for field in LINEAR_DOSES:
            axis, gradient, offset = LINEAR_DOSES[field]
            d = np.sort(offset + gradient * hit[:, "xyz".index(axis)])[::-1]
            truth = analytic_points(shape, field, convention)
            v = step**3
            assert truth["volume_cc"] == pytest.approx(d.size * v / 1000, rel=0.01)
            assert truth["dmean_gy"] == pytest.approx(d.mean(), abs=0.02)
            # the extremes: near the sampled ones, or (capped, slab) half a slice past the end
            # planes along z even where the end section has no area (the published convention)
            ends = (shape.planes[0] - 1.5, shape.planes[-1] + 1.5)
            cap_dose = sorted(offset + gradient * z for z in ends) if axis == "z" and convention != "ideal" else None
            assert truth["dmax_gy"] >= d[0] - 1e-9 and truth["dmin_gy"] <= d[-1] + 1e-9
            if cap_dose:
                assert (truth["dmin_gy"], truth["dmax_gy"]) == pytest.approx(tuple(cap_dose), abs=1e-9)
            else:
                assert truth["dmax_gy"] - d[0] < 3 * step and d[-1] - truth["dmin_gy"] < 3 * step
            for x in (99, 95, 50, 5, 1):
                rank = int(round(x / 100 * d.size))
                assert truth[f"d{x}_gy"] == pytest.approx(d[rank - 1], abs=2 * step), (convention, field, x)
            assert truth["d0.03cc_gy"] == pytest.approx(d[int(round(30 / v)) - 1], abs=2 * step), (convention, field)
            # the cumulative DVH itself
            curve = AnalyticDvh(shape, field, convention)
            for dose in np.linspace(d[-1], d[0], 7):
                sampled = np.count_nonzero(d >= dose) * v / 1000
                assert float(curve.volume_at_least(dose)) == pytest.approx(sampled, abs=0.02 * d.size * v / 1000)


def test_hand_derived_values():
    # cylinder along z, SupInf: the capped solid runs from -7.5 to 19.5 at full section -> Dx linear
    cyl = analytic_points(_shape("Cylinder"), "SupInf", "capped")
    assert cyl["d95_gy"] == pytest.approx(10 - 7.5 + 0.05 * 27, abs=1e-9)
    assert cyl["volume_cc"] == pytest.approx(np.pi * R**2 * 27 / 1000, rel=1e-12)
    # sphere, 0.03 cm^3 hottest: the cap of height h with pi h^2 (3R - h) / 3 = 30 mm^3
    h = np.roots([-np.pi / 3, np.pi * R, 0, -30])
    h = float(np.real(h[(np.abs(np.imag(h)) < 1e-12) & (np.real(h) > 0) & (np.real(h) < R)][0]))
    sphere = analytic_points(_shape("Sphere", centre=(0.0, -6.0, 6.0)), "AntPost", "ideal")
    assert sphere["d0.03cc_gy"] == pytest.approx(10 + 18 - h, abs=1e-9)
    # cone along z, apex low: the centroid 3/4 of the way to the base
    cone = AnalyticDvh(_shape("Cone", centre=(0.0, -6.0, 6.0)), "SupInf", "ideal").points()
    assert cone["dmean_gy"] == pytest.approx(10 + (-6 + 18), abs=1e-9)


# ---- shapes contoured in code -----------------------------------------------------------------------


def _polygons(shape: Shape, p: float, n: int = 720) -> list:
    """The true cross-section of ``shape`` on z = p as polygons (LPS)."""
    cx, cy, _ = shape.centre
    area, _below = section_z(shape, p)
    if (
        area <= 1e-9
    ):  # where the solid closes (a pole, an apex, a tangent end): a tiny contour, as planning systems write
        at = (cx, cy + (H / 2 if shape.flipped else -H / 2) if shape.kind == "RtCone" else cy)
        tiny = 1e-3 * np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
        xy = np.array(at) + (tiny * [1.0, H * 500] if shape.kind == "RtCylinder" else tiny)
        return [np.column_stack([xy, np.full(4, p)])]
    if shape.kind in ("Sphere", "Cylinder", "Cone"):
        r = np.sqrt(area / np.pi)
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        xy = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)
    else:
        d = p - shape.centre[2]
        half = np.sqrt(max(R**2 - d**2, 0.0))
        y0, y1 = cy - H / 2, cy + H / 2
        x = cx + np.linspace(-half, half, n)
        if shape.kind == "RtCylinder":
            xy = np.array([[cx - half, y0], [cx + half, y0], [cx + half, y1], [cx - half, y1]])
        else:  # RtCone, base at y0: the section ends on the curve y = y1 - H sqrt(x^2 + d^2) / R
            top = y1 - H * np.sqrt((x - cx) ** 2 + d**2) / R
            xy = np.concatenate([np.stack([x, top], axis=1)[::-1], [[cx - half, y0], [cx + half, y0]]])
            if shape.flipped:  # base at y1
                xy[:, 1] = 2 * cy - xy[:, 1]
    return [np.column_stack([xy, np.full(len(xy), p)])]


def _roi(shape: Shape, name: str = "shape") -> RoiContours:
    planes = [ContourPlane(p, _polygons(shape, p)) for p in shape.planes]
    planes = [pl for pl in planes if pl.polygons]
    return RoiContours(1, name, name, "ORGAN", None, "code", np.array([0.0, 0.0, 1.0]), planes)


def _linear_dose(field: str, grid: Grid) -> Volume:
    axis, gradient, offset = LINEAR_DOSES[field]
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    points = grid.index_to_lps(np.stack([i, j, k], axis=-1).astype(np.float64))
    return Volume((offset + gradient * points[..., "xyz".index(axis)] + 20.0).astype(np.float64), grid, "GY")


def _axial_grid(step: float = 2.5) -> Grid:
    n = int(np.ceil(60 / step)) + 1
    return Grid.from_spacing((n, n, n), (step, step, step), (-30.0 + 0.37, -36.0 + 0.81, -24.0 + 1.13))


def _compare(got: dict, truth: dict, limit_pct: float, offset: float = 20.0) -> None:
    # the doses built here are 20 Gy above the oracle's
    for key in ALL_KEYS:
        want = truth[key] if key == "volume_cc" else truth[key] + offset
        assert got[key] == pytest.approx(want, rel=limit_pct / 100), key


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("field", list(LINEAR_DOSES))
@pytest.mark.parametrize("thickness", [1.0, 3.0])
def test_reference_dvh_of_coded_shapes_in_linear_doses(kind, field, thickness):
    """Under the slab rule the reference DVH is the contoured staircase (within 1 %); interpolated
    between planes it follows the true solid with the published half-slice caps (within 2 %)."""
    shape = _shape(kind, thickness, flipped=kind == "RtCone")
    roi, dose = _roi(shape), _linear_dose(field, _axial_grid())
    result = reference_dvh(roi, dose, thickness, between_planes="slab")
    _compare(result.points, analytic_points(shape, field, "slab"), 1.0)
    assert result.points["outside_dose_grid_pct"] == 0.0
    result = reference_dvh(roi, dose, thickness)
    assert result.sampling["between_planes"] == "interpolated"
    _compare(result.points, analytic_points(shape, field, "capped"), 2.0)


@pytest.mark.parametrize("kind", ["Sphere", "Cone", "RtCone", "RtCylinder"])
def test_a_run_closing_at_a_plane_follows_the_true_solid(kind):
    """Where the solid closes at a run's end plane (a tiny contour at the pole, apex or tangent line),
    the interval next to it holds the true solid's volume: within 2 % over the interval and 4 % over
    its closing half, or 0.1 % of the ROI (3 mm planes, both ends). The RtCone's section narrows like
    the square root of the distance and shortens linearly: the distance field alone missed by 19 % and
    46 % there."""
    shape = _shape(kind, 3.0, flipped=kind == "Cone")  # a Cone's apex at the top, its base a full disc
    axis = np.arange(0.0, 80.0, 0.005)
    result = reference_dvh(_roi(shape), _linear_dose("SupInf", _axial_grid()), 3.0, dose_axis=axis)
    assert result.sampling["closing_intervals"] == (1 if kind == "Cone" else 2)
    curve = result.volume_cc * 1000  # mm^3 at >= 20 + 10 + z Gy
    total = float(volume_below(shape, "z", shape.planes[-1] + 3.0, "capped"))
    first, last = shape.planes[0], shape.planes[-1]
    for depth, limit in ((3.0, 2.0), (1.5, 4.0)):
        checks = []
        if kind != "Cone":  # the Cone's base end holds its full disc: no closing there
            below = result.points["volume_cc"] * 1000 - np.interp(30 + first + depth, axis, curve)
            checks.append((below, float(volume_below(shape, "z", first + depth, "capped"))))
        above = np.interp(30 + last - depth, axis, curve)
        checks.append((above, total - float(volume_below(shape, "z", last - depth, "capped"))))
        for got, truth in checks:
            assert got == pytest.approx(truth, rel=limit / 100, abs=total / 1000), (depth, got, truth)


@pytest.mark.parametrize("kind", ["Sphere", "RtCylinder", "Cone", "RtCone"])
def test_sampled_volume_equals_the_solid_the_membership_test_defines(kind):
    """The samples (weights per plane, bands between planes) and :meth:`ContourSolid.contains` are two
    separate codings of one solid: Monte Carlo of the second gives the first's volume."""
    shape = _shape(kind, 3.0)
    roi = _roi(shape)
    result = reference_dvh(roi, _linear_dose("SupInf", _axial_grid()), 3.0)
    planes = [[poly[:, :2] for poly in p.polygons] for p in roi.planes]
    solid = ContourSolid(planes, roi.positions, 3.0)
    rng = np.random.default_rng(5)
    lo = np.array([0.3 - 13, -6.2 - 13, roi.positions[0] - 1.6])
    hi = np.array([0.3 + 13, -6.2 + 13, roi.positions[-1] + 1.6])
    n = 400_000
    p = rng.uniform(lo, hi, size=(n, 3))
    frac = np.count_nonzero(solid.contains(p[:, :2], p[:, 2])) / n
    box = float(np.prod(hi - lo)) / 1000
    sigma = np.sqrt(frac * (1 - frac) / n) * box
    # the cells of a band thinner than a cell are kept or left by their centres: at most +1.5 % here
    # (a cylinder lying across 3 mm planes, its sides a band at every interval), +0.2 to +0.4 % on
    # clinical-size ROIs (bench/reference_dvh_bench.py's)
    assert frac * box - 4 * sigma <= result.points["volume_cc"] <= 1.015 * frac * box + 4 * sigma


def test_outline_distance_against_every_edge():
    t = np.linspace(0, 2 * np.pi, 300, endpoint=False)
    outer = np.c_[30 * np.cos(t), 20 * np.sin(t)]
    hole = np.c_[5 * np.cos(t) + 3, 5 * np.sin(t)][::-1]
    tiny = np.array([[100.0, 0.0], [100.01, 0.0], [100.0, 0.01]])
    points = np.random.default_rng(2).uniform(-60, 120, (3000, 2))
    for polys in ([outer, hole], [tiny], [outer, tiny]):
        a = np.concatenate(polys)
        b = np.concatenate([np.roll(q, -1, axis=0) for q in polys])
        ab, ap = b - a, points[:, None, :] - a[None]
        u = np.clip((ap * ab).sum(-1) / (ab**2).sum(-1), 0, 1)
        every = np.sqrt(((ap - ab * u[..., None]) ** 2).sum(-1)).min(axis=1)
        np.testing.assert_allclose(outline_distance(points, polys), every, atol=1e-9)


def test_a_zigzag_outline_too_dense_to_measure_is_refused_before_it_is_measured():
    """Fifteenth hostile trial O10: one contour drawn as a fine zigzag (edges that each span most rows) made every
    point meet every edge: 50 000 points took a minute, 200 000 six minutes, bounded only by the case's hour. Such an
    outline is refused (ValueError, the ROI then gets no reference DVH, with the reason) before the pairs are
    measured; a smooth outline of as many vertices is measured as before."""
    from DoseAlignLib.structures import reference_dvh as module

    n = 40_000
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    points = np.random.default_rng(3).uniform(-25, 25, (40_000, 2))
    zigzag = np.c_[(15 + 5 * np.sin(t * n / 4)) * np.cos(t), (15 + 5 * np.sin(t * n / 4)) * np.sin(t)]
    with pytest.raises(ValueError, match="too dense to measure"):
        module.Outline([zigzag]).distance(points)
    circle = np.c_[15 * np.cos(t), 15 * np.sin(t)]
    some = points[:3000]  # (the row-band search costs about 1 ms a point against 40 000 vertices)
    near = module.Outline([circle]).distance(some)
    np.testing.assert_allclose(near, np.abs(np.hypot(some[:, 0], some[:, 1]) - 15), atol=1e-3)


def test_an_rois_work_over_all_its_planes_is_bounded(monkeypatch):
    """Sixteenth hostile trial P9: the per-plane bound let a zigzag spread over many planes through (24 planes of
    20 000 points: 78 s, mostly in the even-odd inside test). The distance searches and the inside tests of one ROI
    count against MAX_ROI_PAIRS together; beyond it the ROI is refused before the work is done. The bound is the
    ROI's own: the next ROI starts afresh."""
    from DoseAlignLib.structures import reference_dvh as module

    roi = _roi(_shape("cylinder"))
    dose = _linear_dose("SupInf", _axial_grid())
    counted = []
    real = module._charge_pairs
    monkeypatch.setattr(module, "_charge_pairs", lambda pairs: counted.append(pairs) or real(pairs))
    assert reference_dvh(roi, dose, 3.0).points  # a smooth solid: far below the bound
    needed = sum(counted)
    assert needed > 0, "the inside tests and distance searches are counted"
    monkeypatch.setattr(module, "MAX_ROI_PAIRS", needed - 1)
    with pytest.raises(ValueError, match="too dense to measure"):
        reference_dvh(roi, dose, 3.0)
    monkeypatch.setattr(module, "MAX_ROI_PAIRS", needed)
    assert reference_dvh(roi, dose, 3.0).points  # exactly its need: made (each ROI starts with the whole bound)


def _rotation(ax: np.ndarray, angle: float) -> np.ndarray:
    ax = ax / np.linalg.norm(ax)
    k = np.array([[0, -ax[2], ax[1]], [ax[2], 0, -ax[0]], [-ax[1], ax[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


@pytest.mark.parametrize("field", list(LINEAR_DOSES))
def test_oblique_and_uneven_dose_grids_give_the_same_dvh(field):
    """A linear dose is reproduced exactly by trilinear interpolation on any grid."""
    shape = _shape("Cone", 2.0)
    roi = _roi(shape)
    truth = analytic_points(shape, field, "slab")
    rotation = _rotation(np.array([0.3, -0.5, 1.0]), 0.6)
    oblique = Grid.from_spacing((30, 30, 30), (2.2, 2.6, 3.0), (0.0, -50.0, -30.0), direction=rotation)
    # make the oblique grid cover the shape: centre it on the shape
    centre = oblique.index_to_lps(np.array([14.5, 14.5, 14.5]))
    oblique = Grid.from_spacing(
        (30, 30, 30), (2.2, 2.6, 3.0), (0.0, -50.0, -30.0) - centre + np.array(shape.centre), rotation
    )
    _compare(reference_dvh(roi, _linear_dose(field, oblique), 2.0, between_planes="slab").points, truth, 1.0)
    capped = analytic_points(shape, field, "capped")
    _compare(reference_dvh(roi, _linear_dose(field, oblique), 2.0).points, capped, 2.0)
    offsets = np.cumsum([0.0] + [2.0, 3.5, 2.5, 4.0] * 6)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([2.5, 2.5, 2.75])
    affine[:3, 3] = (-30.0, -36.0, -30.0)
    uneven = Grid((offsets.size, 30, 30), affine, slice_offsets=offsets)
    assert not uneven.is_uniform
    _compare(reference_dvh(roi, _linear_dose(field, uneven), 2.0, between_planes="slab").points, truth, 1.0)
    _compare(reference_dvh(roi, _linear_dose(field, uneven), 2.0).points, capped, 2.0)


def test_holes_and_islands_by_the_even_odd_rule():
    t = np.linspace(0, 2 * np.pi, 360, endpoint=False)

    def ring(r, z, cx=0.0):
        return np.column_stack([cx + r * np.cos(t), r * np.sin(t), np.full(t.size, z)])

    planes = [ContourPlane(z, [ring(10, z), ring(5, z)[::-1], ring(2, z)]) for z in (0.0, 2.0, 4.0)]
    roi = RoiContours(1, "ring", "ring", "ORGAN", None, "code", np.array([0.0, 0.0, 1.0]), planes)
    grid = Grid.from_spacing((16, 16, 16), (3.0, 3.0, 3.0), (-22.0, -22.0, -20.0))
    dose = _linear_dose("AntPost", grid)
    got = reference_dvh(roi, dose, 2.0).points
    area = np.pi * (100 - 25 + 4) * (1 - np.sinc(2 / 360) * 0)  # polygons of 360 vertices: area within 1e-4
    assert got["volume_cc"] == pytest.approx(area * 6 / 1000, rel=1e-3)
    assert got["dmean_gy"] == pytest.approx(30.0, abs=1e-3)  # symmetric about y = 0: 10 - 0 + 20
    assert got["d50_gy"] == pytest.approx(30.0, abs=0.05)
    assert got["dmax_gy"] == pytest.approx(40.0, abs=1e-6) and got["dmin_gy"] == pytest.approx(20.0, abs=1e-6)


def test_roi_cut_by_the_dose_grid():
    shape = _shape("Cylinder", 2.0, centre=(0.0, -6.0, 6.0))  # z from -7 to 19 with its caps
    grid = Grid.from_spacing((10, 25, 25), (2.0, 2.0, 2.0), (-24.0, -30.0, -12.0))  # centres to z = 6
    got = reference_dvh(_roi(shape), _linear_dose("AntPost", grid), 2.0).points
    beyond = 100 * (19.0 - 7.0) / 26.0  # past the half-voxel rim at z = 7
    assert got["outside_dose_grid_pct"] == pytest.approx(beyond, abs=0.5)
    assert got["dmin_gy"] == 0.0
    # the hottest 0.03 cm^3 and 1 % lie in the part inside the grid; nothing above Dmax
    assert got["d1_gy"] <= got["d0.03cc_gy"] <= got["dmax_gy"] == pytest.approx(20 + 10 + 18, abs=1e-6)


@pytest.mark.parametrize("half_mm", [99_000.0, 20_000.0])
def test_an_roi_of_many_metres_takes_a_bounded_number_of_samples(half_mm):
    """Thirteenth hostile trial M3: one contour, a square of 198 m (its points within the plausible ±100 m), was
    sampled at the coarsest step of 20 mm: 98 million samples, 7.4 GB, and the case failed "out of memory" naming
    no ROI. The step grows beyond 20 mm where the ROI would take more than MAX_SAMPLES; the DVH stays right for
    a linear dose (its share beyond the dose grid, and the dose where it lies inside)."""
    from DoseAlignLib.structures import reference_dvh as module

    square = np.array(
        [[-half_mm, -half_mm, 0.0], [half_mm, -half_mm, 0.0], [half_mm, half_mm, 0.0], [-half_mm, half_mm, 0.0]]
    )
    roi = RoiContours(
        1, "huge", "huge", "ORGAN", None, "code", np.array([0.0, 0.0, 1.0]), [ContourPlane(0.0, [square])]
    )
    result = reference_dvh(roi, _linear_dose("SupInf", _axial_grid()), 2.5)
    assert 0 < result.sampling["samples"] <= module.MAX_SAMPLES * 1.1, result.sampling
    assert result.points["volume_cc"] == pytest.approx((2 * half_mm) ** 2 * 2.5 / 1000, rel=1e-6)
    assert result.points["outside_dose_grid_pct"] > 99.9
    assert result.sampling["in_plane_step_mm"] > module.MAX_STEP_MM


def test_interior_hot_spot_reaches_dmax_and_the_curve_is_consistent():
    shape = _shape("Sphere", 2.0, centre=(0.0, 0.0, 0.0))
    grid = Grid.from_spacing((21, 21, 21), (3.0, 3.0, 3.0), (-30.0, -30.0, -30.0))
    k, j, i = np.meshgrid(*(np.arange(21) for _ in range(3)), indexing="ij")
    p = grid.index_to_lps(np.stack([i, j, k], axis=-1).astype(np.float64))
    array = 30 * np.exp(-np.sum(p**2, axis=-1) / (2 * 15.0**2))
    array[10, 11, 9] = 55.0  # one hot voxel centre (-3, 3, 0), inside the sphere
    result = reference_dvh(_roi(shape), Volume(array, grid, "GY"), 2.0)
    points = result.points
    assert points["dmax_gy"] == pytest.approx(55.0)
    # the curve: the whole volume at 0 Gy, falling, and x % at Dx
    curve = result.volume_cc
    assert curve[0] == pytest.approx(points["volume_cc"])
    assert np.all(np.diff(curve) <= 1e-12)
    for x in (95, 50, 5):
        at = np.interp(points[f"d{x}_gy"], result.dose_gy, curve)
        assert at == pytest.approx(x / 100 * points["volume_cc"], rel=0.01, abs=1e-3)
    assert result.volume_pct[0] == pytest.approx(100.0)
    ordered = [points[k] for k in ("dmin_gy", "d99_gy", "d95_gy", "d50_gy", "d5_gy", "d1_gy", "dmax_gy")]
    assert ordered == sorted(ordered) and points["dmin_gy"] <= points["d0.03cc_gy"] <= points["dmax_gy"]


def test_nonlinear_dose_converges_with_more_samples():
    shape = _shape("RtCone", 2.5, centre=(1.0, -3.0, 4.0))
    roi = _roi(shape)
    grid = Grid.from_spacing((25, 25, 25), (2.5, 2.5, 2.5), (-29.0, -31.0, -27.0))
    k, j, i = np.meshgrid(*(np.arange(25) for _ in range(3)), indexing="ij")
    p = grid.index_to_lps(np.stack([i, j, k], axis=-1).astype(np.float64))
    dose = Volume(60 * np.exp(-np.sum((p - [5.0, -8.0, 2.0]) ** 2, axis=-1) / (2 * 9.0**2)), grid, "GY")
    coarse = reference_dvh(roi, dose, 2.5).points
    fine = reference_dvh(roi, dose, 2.5, target_samples=1 << 19).points
    for key in ALL_KEYS:
        assert coarse[key] == pytest.approx(fine[key], rel=0.005), key


def test_bad_input_named():
    skipped = RoiContours(7, "Marker", "Marker", "MARKER", None, "rs.dcm", np.array([0.0, 0.0, 1.0]), [], "no contours")
    grid = _axial_grid()
    with pytest.raises(ValueError, match="Marker"):
        reference_dvh(skipped, _linear_dose("SupInf", grid), 2.0)
    roi = _roi(_shape("Sphere", 2.0))
    with pytest.raises(ValueError, match="thickness"):
        reference_dvh(roi, _linear_dose("SupInf", grid), 0.0)
    with pytest.raises(ValueError, match="between_planes"):
        reference_dvh(roi, _linear_dose("SupInf", grid), 2.0, between_planes="spline")
    # reference_dvhs leaves out what has no contours and shares one dose axis
    results = reference_dvhs([skipped, roi], _linear_dose("SupInf", grid), 2.0)
    assert [r.name for r in results] == ["shape"] and results[0].dose_gy[-1] > results[0].points["dmax_gy"]


def test_scanline_cells_tile_polygons_with_straight_edges_along_the_rows():
    square = np.array([[0.0, 0.0], [7.3, 0.0], [7.3, 4.1], [0.0, 4.1]])
    tilted = np.array([[0.0, 0.0], [6.0, 1.0], [5.0, 7.0], [-1.0, 6.0]])
    for polys in ([square], [tilted]):
        uv, du, dv, plane = scanline_samples([polys], [0.5])
        area = float(np.sum(du * dv))
        exact = abs(
            0.5 * np.sum(polys[0][:, 0] * np.roll(polys[0][:, 1], -1) - np.roll(polys[0][:, 0], -1) * polys[0][:, 1])
        )
        assert area == pytest.approx(exact, rel=0.01)
        assert np.all(plane == 0)
    # the square: cells end exactly on its edges
    uv, du, dv, _ = scanline_samples([[square]], [0.5])
    assert (uv[:, 1] - dv / 2).min() == pytest.approx(0.0) and (uv[:, 1] + dv / 2).max() == pytest.approx(4.1)
    assert (uv[:, 0] - du / 2).min() == pytest.approx(0.0) and (uv[:, 0] + du / 2).max() == pytest.approx(7.3)
    assert float(np.sum(du * dv)) == pytest.approx(7.3 * 4.1, rel=1e-12)


def test_slab_intervals_follow_the_rule():
    got = slab_intervals(np.array([0.0, 2.0, 3.0, 10.0]), 2.0)
    np.testing.assert_allclose(got, [[-1.0, 1.0], [1.0, 2.5], [2.5, 4.0], [9.0, 11.0]])


# ---- the real Nelms phantom ----------------------------------------------------------------------------


def _structures(root: Path) -> list:
    out = []
    for path in sorted((root / "STRUCTURES").glob("*.dcm")):
        named = shape_from_name(path.stem)
        if named["ct_mm"] < 1:
            continue
        (roi,) = [r for r in read_structure_set(path, plane_normal=[0, 0, 1]) if r.skipped is None]
        out.append((path, named, roi, fit_shape(roi, named["ct_mm"])))
    return out


@pytest.mark.shared_data
def test_nelms_structures_name_their_ct_and_the_doses_are_linear(shared_data):
    import pydicom
    from DoseAlignLib.dicom.rtdose import read_rtdose

    root = shared_data / "nelms-dvh-phantom"
    folder_of = {}
    first_slice = {}
    for folder in sorted((root / "CT").iterdir()):
        zs = []
        for f in folder.glob("*.dcm"):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            folder_of[ds.SOPInstanceUID] = folder.name
            zs.append(float(ds.ImagePositionPatient[2]))
        first_slice[folder.name] = min(zs)
    for path in sorted((root / "STRUCTURES").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        refs = {
            ci.ReferencedSOPInstanceUID
            for item in ds.ROIContourSequence
            for contour in item.get("ContourSequence", [])
            for ci in contour.get("ContourImageSequence", [])
        }
        folders = {folder_of.get(uid, "not in the set") for uid in refs}
        ct_mm = shape_from_name(path.stem)["ct_mm"]
        expected = f"{ct_mm:g} mm CT" if ct_mm >= 1 else "not in the set"
        assert folders == {expected}, path.name
    for field in LINEAR_DOSES:
        axis, gradient, offset = LINEAR_DOSES[field]
        for mm in (1, 2, 3):
            volume = read_rtdose(root / "DOSE GRIDS" / f"Linear_{field}_{mm}mm_Aligned.dcm")[0]
            g, c, residual = fit_linear_dose(volume)
            expected = np.zeros(3)
            expected["xyz".index(axis)] = gradient
            np.testing.assert_allclose(g, expected, atol=1e-6)
            assert c == pytest.approx(offset, abs=1e-4) and residual < 1e-4
            start = volume.grid.origin[2]
            if mm == 3:  # the 3 mm grids start below every CT: 3, 2 and 1 mm below the 3, 2, 1 mm CTs' first slices
                assert [first_slice[f"{n} mm CT"] - start for n in (3, 2, 1)] == pytest.approx([3.0, 2.0, 1.0])


@pytest.mark.shared_data
def test_nelms_shapes_fitted_from_contours_match_their_names(shared_data):
    for path, named, _roi, fit in _structures(shared_data / "nelms-dvh-phantom"):
        assert fit.shape.kind == named["kind"], (path.name, fit.residuals)
        np.testing.assert_allclose(fit.shape.centre, named["centre"], atol=0.01, err_msg=path.name)
        assert fit.shape.radius == pytest.approx(R, abs=0.01) and fit.shape.length == pytest.approx(H, abs=0.01)
        others = sorted(v for k, v in fit.residuals.items() if k != named["kind"])
        assert fit.residuals[named["kind"]] < 0.01 < others[0], (path.name, fit.residuals)


@pytest.fixture(scope="module")
def nelms_reference(shared_data):
    from DoseAlignLib.dicom.rtdose import read_rtdose

    root = shared_data / "nelms-dvh-phantom"
    structures = _structures(root)
    rows = []
    for mm in (1, 2, 3):
        for field in LINEAR_DOSES:
            dose = read_rtdose(root / "DOSE GRIDS" / f"Linear_{field}_{mm}mm_Aligned.dcm")[0]
            for path, named, roi, fit in structures:
                got = {
                    b: reference_dvh(roi, dose, named["ct_mm"], between_planes=b).points
                    for b in ("slab", "interpolated")
                }
                truth = {c: analytic_points(fit.shape, field, c) for c in ("slab", "capped")}
                rows.append((path.stem, mm, field, got, truth))
    return rows


@pytest.mark.shared_data
@pytest.mark.slow
def test_nelms_slab_reference_within_1pct_of_the_contoured_solid(nelms_reference):
    """The sampling itself: under the slab rule every point of every structure of the 1/2/3 mm CTs,
    with every dose grid and both gradients, is within 1.5 % of the exact contoured staircase (D99;
    every other point within 0.5 %)."""
    assert len(nelms_reference) == 45 * 6
    worst = {}
    for _stem, _mm, _field, got, truth in nelms_reference:
        for key in ALL_KEYS:
            error = 100 * (got["slab"][key] - truth["slab"][key]) / truth["slab"][key]
            worst[key] = max(worst.get(key, 0.0), abs(error))
    print("\nworst |error| % of the slab-rule reference against the contoured solid:", worst)
    assert max(worst.values()) < 1.5 and max(v for k, v in worst.items() if k != "d99_gy") < 0.5


@pytest.mark.shared_data
@pytest.mark.slow
def test_nelms_published_values_within_3pct(nelms_reference):
    """Against the published convention (true solid + half-slice caps) the interpolated reference DVH
    meets 3 % at every point of every structure on the 1, 2 and 3 mm CTs, with every dose grid and
    both gradients (D99 of the RtCones on the 3 mm CT, whose sections close to a point between two
    planes 3 mm apart, only since the closing interval follows the sections' extents: +4.2 % before)."""
    misses = []
    worst = {}
    for stem, mm, field, got, truth in nelms_reference:
        for key in ALL_KEYS:
            capped = truth["capped"][key]
            error = 100 * (got["interpolated"][key] - capped) / capped
            worst[key] = max(worst.get(key, 0.0), abs(error))
            if abs(error) > 3.0:
                misses.append((stem, mm, field, key, round(error, 2)))
    print("\nworst |error| % of the interpolated reference against the published values:", worst)
    assert misses == []


def test_contours_crossing_each_other_in_their_planes_give_no_reference_dvh():
    """Tenth hostile trial J6: an ROI whose every plane holds a circle and a copy moved 3 mm (crossing it) took
    > 8 GB for its reference DVH: the nesting rule of the even-odd area takes the copy for a hole (area about 0),
    and the sampling followed that area down to step / 64 (2 million samples for four planes). Crossing contours
    (DICOM asks that a plane's contours do not cross) give no reference DVH, said why, at once; nested ones
    (an outline and its hole) still give one."""
    import tracemalloc

    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)

    def circle(z, cx, r=15.0):
        return np.column_stack([cx + r * np.cos(t), r * np.sin(t), np.full(t.size, z)])

    grid = Grid.from_spacing((16, 24, 24), (3.0, 3.0, 3.0), (-36.0, -36.0, -12.0))
    dose = _linear_dose("AntPost", grid)
    planes = [ContourPlane(z, [circle(z, 0.0), circle(z, 3.0)]) for z in np.arange(0.0, 24.0, 3.0)]
    roi = RoiContours(1, "lens", "lens", "ORGAN", None, "code", np.array([0.0, 0.0, 1.0]), planes)
    tracemalloc.start()
    with pytest.raises(ValueError, match="plane at 0.00 mm cross each other"):
        reference_dvh(roi, dose, 3.0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50e6, f"{peak / 1e6:.0f} MB"
    roi.xor = True  # CLOSEDPLANAR_XOR contours may cross (combined by XOR): no warning phrase, still no DVH
    with pytest.raises(ValueError, match="CLOSEDPLANAR_XOR contours of its plane at 0.00 mm overlap") as raised:
        reference_dvh(roi, dose, 3.0)
    assert "cross each other" not in str(raised.value)
    nested = [ContourPlane(z, [circle(z, 0.0), circle(z, 1.0, 8.0)[::-1]]) for z in np.arange(0.0, 24.0, 3.0)]
    ring = RoiContours(1, "ring", "ring", "ORGAN", None, "code", np.array([0.0, 0.0, 1.0]), nested)
    assert reference_dvh(ring, dose, 3.0).points["volume_cc"] > 0
