"""The dosimetric audit: DVH points and curves, dose-level comparison, dose outside the output grid,
the beam sum against the PLAN dose, flags and thresholds; end to end on the engine's phantom, on
the Nelms phantom (DVH points against the analytic values of its shapes under its exactly linear
doses) and on the rtkit phantom (7 ROIs, External as body, the beam sum)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from DoseAlignLib.audit import beams as audit_beams
from DoseAlignLib.audit import dose as audit_dose
from DoseAlignLib.audit import flags as audit_flags
from DoseAlignLib.audit import rois as audit_rois
from DoseAlignLib.audit import stats as audit_stats
from DoseAlignLib.audit import thresholds as audit_thresholds
from DoseAlignLib.dicom.scan import scan_folder
from DoseAlignLib.geometry.grid import Grid, Volume
from DoseAlignLib.geometry.resample import resample
from DoseAlignLib.link.cases import form_cases
from DoseAlignLib.options import AlignOptions
from DoseAlignLib.pipeline import run_case
from DoseAlignLib.structures import dvh, masks
from DoseAlignLib.structures.masks import unpack_masks

RNG = np.random.default_rng(7)


# ---- DVH arithmetic --------------------------------------------------------------------------


def test_dvh_points_follow_the_documented_ranks():
    doses = RNG.permutation(np.arange(1.0, 101.0))  # 100 voxels of 0.01 cc: 1 .. 100 Gy
    points = dvh.dvh_points(doses, 0.01, prescription_gy=60.0)
    assert points["volume_cc"] == pytest.approx(1.0)
    assert points["dmean_gy"] == pytest.approx(50.5)
    assert (points["dmin_gy"], points["dmax_gy"]) == (1.0, 100.0)
    # the n-th hottest voxel (dose 101 - n) stands at volume (n - 0.5) x 0.01 cc; Dx interpolates
    assert points["d1_gy"] == pytest.approx(99.5) and points["d5_gy"] == pytest.approx(95.5)
    assert points["d50_gy"] == pytest.approx(50.5) and points["d95_gy"] == pytest.approx(5.5)
    assert points["d99_gy"] == pytest.approx(1.5)
    assert points["d0.03cc_gy"] == pytest.approx(97.5)
    tiny = dvh.dvh_points(np.array([3.0, 4.0]), 0.01)
    assert tiny["d0.03cc_gy"] is None and tiny["d50_gy"] == pytest.approx(3.5)
    assert points["v_rx_cc"] == pytest.approx(0.41) and points["v_rx_pct"] == pytest.approx(41.0)
    weighted = dvh.dvh_points(doses, np.full(100, 0.01), prescription_gy=60.0)
    for key, value in points.items():
        assert weighted[key] == pytest.approx(value), key


def test_dvh_points_with_uneven_voxel_volumes_and_an_empty_roi():
    doses = np.array([10.0, 20.0, 30.0])
    cc = np.array([0.5, 0.3, 0.2])  # the coldest voxel is half the volume
    points = dvh.dvh_points(doses, cc)
    assert points["dmean_gy"] == pytest.approx(17.0)
    # voxels stand at 0.1 (30 Gy), 0.35 (20 Gy) and 0.75 cc (10 Gy) of the ranked volume
    assert points["d50_gy"] == pytest.approx(20.0 - 10.0 * (0.5 - 0.35) / 0.4)
    assert points["d95_gy"] == 10.0 and points["d0.03cc_gy"] == 30.0
    empty = dvh.dvh_points(np.zeros(0), 0.1, 50.0)
    assert empty["dmean_gy"] is None and empty["v_rx_pct"] is None and empty["volume_cc"] == 0


def test_cumulative_dvh_and_bins():
    bins = dvh.dose_bins(68.3)
    step = float(bins[1] - bins[0])
    assert step == pytest.approx(0.1, rel=1e-6) and bins[0] == 0 and bins[-1] > 68.3 and bins.size <= 1000
    doses = RNG.uniform(0, 68.3, 5000)
    curve = dvh.cumulative_dvh(doses, 0.002, bins)
    assert curve[0] == pytest.approx(10.0) and curve[-1] == 0
    assert np.all(np.diff(curve) <= 0)
    k = 250
    assert curve[k] == pytest.approx(np.count_nonzero(doses >= bins[k]) * 0.002, rel=1e-6)
    weighted = dvh.cumulative_dvh(doses, np.full(5000, 0.002), bins)
    np.testing.assert_allclose(weighted, curve, rtol=1e-6)


def _reference_dvh(doses: np.ndarray, cc: float, bins: np.ndarray, rx) -> tuple:
    """The straightforward DVH: all doses at once (a partial sort for the points, a sort for the curve)."""
    return dvh.dvh_points(doses, cc, rx), dvh.cumulative_dvh(doses, cc, bins)


def _assert_same_dvh(got: tuple, want: tuple) -> None:
    (points, curve), (ref_points, ref_curve) = got, want
    np.testing.assert_array_equal(curve, ref_curve)
    assert set(points) == set(ref_points)
    for key, value in ref_points.items():
        if key == "dmean_gy" and value is not None:  # summed chunk by chunk: round-off only
            assert points[key] == pytest.approx(value, rel=1e-12, abs=1e-300), key
        else:
            assert points[key] == value, key


@pytest.mark.parametrize("chunk", [13, 97, 4096, 1 << 20])
def test_streamed_dvh_equals_the_sorted_one(chunk, monkeypatch):
    """uniform_dvh (bin counts, order statistics from a few bins, no sort) gives the numbers of
    dvh_points and cumulative_dvh exactly (Dmean to round-off), in one pass or two."""
    monkeypatch.setattr(dvh, "KEEP_VALUES", 500)  # most cases here take the second pass
    bins = dvh.dose_bins(48.7)
    edges = np.repeat(bins, 3)
    neighbours = np.concatenate([bins, np.nextafter(bins, np.float32(0)), np.nextafter(bins, np.float32(99))])
    classes = dvh.BinClasses(bins, np.float32)
    misjudged = neighbours[classes.estimate(neighbours) != np.searchsorted(bins, neighbours, side="right")]
    assert misjudged.size > 10  # doses whose value x (1 / step) rounds into the next bin
    step = float(bins[1])
    cases = [
        RNG.uniform(0, 48.7, 20000).astype(np.float32),
        # every bin value and its float32 neighbours: where value / step is closest to an integer
        np.concatenate([edges, np.nextafter(edges, np.float32(0)), np.nextafter(edges, np.float32(99))]),
        np.repeat(misjudged, 40),  # only those: every DVH point falls in a bin the estimate misses
        np.where(RNG.random(30000) < 0.7, 0, RNG.uniform(0, 3, 30000)).astype(np.float32),  # mostly zeros
        # zeros, then doses in (0, step) (the rest of the bin that starts at 0: D50 falls there), then more
        np.concatenate([np.zeros(4000), RNG.uniform(1e-4, step * 0.99, 2000), RNG.uniform(1, 9, 4000)]).astype(
            np.float32
        ),
        np.full(5000, 2.0, np.float32),  # one plateau
        RNG.uniform(0, 48.7, 3000),  # float64 doses
        (RNG.integers(0, 900, 8000) * 0.05).astype(np.float32),  # doses on a 0.05 Gy lattice
        np.zeros(0, np.float32),
    ]
    for doses in cases:
        doses = RNG.permutation(doses)
        for rx in (None, 30.000001, 2.0):  # 30.000001 is not a float32: compared exactly
            got = dvh.uniform_dvh(lambda d=doses: (d[i : i + chunk] for i in range(0, d.size, chunk)), 0.002, bins, rx)
            _assert_same_dvh(got, _reference_dvh(doses, 0.002, bins, rx))
    # voxels left out of the chunks count as 0 Gy
    doses = RNG.uniform(0.1, 40, 7000).astype(np.float32)
    got = dvh.uniform_dvh(lambda: (doses[i : i + chunk] for i in range(0, doses.size, chunk)), 0.01, bins, 20.0, 12000)
    _assert_same_dvh(got, _reference_dvh(np.concatenate([doses, np.zeros(5000, np.float32)]), 0.01, bins, 20.0))


def test_bin_classes_are_exact_at_the_bin_edges():
    bins = dvh.dose_bins(73.1)
    values = np.concatenate(
        [
            bins,
            np.nextafter(bins, np.float32(-1)),
            np.nextafter(bins, np.float32(1e3)),
            RNG.uniform(0, 73, 50000).astype(np.float32),
            np.float32([0.0, -0.0, -1e-30, -5.0, 1e30, np.inf, -np.inf]),
        ]
    ).astype(np.float32)
    classes = dvh.BinClasses(bins, np.float32)
    assert classes.near is not None  # dose_bins bins take the fast exact path
    want = np.searchsorted(bins, values, side="right")
    np.testing.assert_array_equal(classes(values), want)
    inside = (values >= bins[0]) & (values < bins[-1])
    counts = classes.counts(values[inside], inside=True)
    np.testing.assert_array_equal(counts, np.bincount(want[inside], minlength=bins.size + 1))
    uneven = np.array([0.0, 1.0, 1.5, 4.0, 9.0], np.float32)  # not evenly spaced: a binary search
    np.testing.assert_array_equal(dvh.BinClasses(uneven, np.float32)(values), np.searchsorted(uneven, values, "right"))


def test_roi_dvh_streams_the_mask_box_as_the_gathered_doses():
    from DoseAlignLib.structures.masks import RoiMask

    grid = Grid.from_spacing((30, 40, 50), (1.0, 1.2, 2.0), (0, 0, 0))
    dose = np.zeros(grid.shape, np.float32)
    dose[5:25, 8:30, 3:45] = RNG.uniform(0, 60, (20, 22, 42))  # zero outside a box that cuts the mask
    binary = RNG.random((26, 30, 36)) < 0.6
    mask = RoiMask(roi=None, box=(slice(2, 28), slice(6, 36), slice(10, 46)), binary=binary)
    bins = dvh.dose_bins(60.0)
    stats = audit_stats.dose_stats(dose)
    assert stats.support == (slice(5, 25), slice(8, 30), slice(3, 45))
    volume = Volume(dose, grid, "GY")
    got = audit_rois.roi_dvh(volume, mask, bins, 40.0, stats=stats)
    cc = float(np.prod(grid.spacing)) / 1000
    _assert_same_dvh(got, _reference_dvh(dose[mask.box][binary], cc, bins, 40.0))
    assert stats.roi_sums[id(mask)][1] == binary.sum()
    # the body's mean dose from that sum equals the one summed slice by slice
    from_sum = audit_dose.dose_summary(volume, mask, stats)
    summed = audit_dose.dose_summary(volume, mask.full(grid.shape))
    assert from_sum["dmean_body_gy"] == pytest.approx(summed["dmean_body_gy"], rel=1e-12)
    assert from_sum["body_volume_cc"] == pytest.approx(summed["body_volume_cc"], rel=1e-12)
    # uneven slices: doses and voxel volumes gathered (the weighted path)
    uneven = Grid((30, 40, 50), grid.affine, None, np.cumsum(RNG.uniform(1.5, 2.5, 30)))
    got = audit_rois.roi_dvh(Volume(dose, uneven, "GY"), mask, bins, 40.0)
    weights = np.broadcast_to(masks.voxel_volumes_cc(uneven)[mask.box[0]][:, None, None], binary.shape)[binary]
    want = (
        dvh.dvh_points(dose[mask.box][binary], weights, 40.0),
        dvh.cumulative_dvh(dose[mask.box][binary], weights, bins),
    )
    _assert_same_dvh(got, want)


def test_dose_stats_and_dmax_from_slice_maxima():
    dose = np.zeros((12, 20, 30), np.float32)
    assert audit_stats.dose_stats(dose).support is None and audit_stats.dmax_index(dose) == (6, 10, 15)
    dose[3:9, 4:15, 7:20] = RNG.uniform(1, 5, (6, 11, 13))
    dose[6, 2, 25] = -0.5  # a negative dose widens the non-zero box too
    stats = audit_stats.dose_stats(dose)
    assert stats.support == (slice(3, 9), slice(2, 15), slice(7, 26))
    np.testing.assert_allclose(stats.slice_sum, dose.sum(axis=(1, 2), dtype=np.float64), rtol=1e-12)
    np.testing.assert_array_equal(stats.slice_max, dose.max(axis=(1, 2)))
    dose[5, 10, 10] = dose[7, 12, 18] = 9.0  # two tied maxima: the one nearest their centroid (the first)
    assert (
        audit_stats.dmax_index(dose)
        == audit_stats.dmax_index(dose, audit_stats.dose_stats(dose).slice_max)
        == (5, 10, 10)
    )


@pytest.mark.parametrize(
    "direction, offset",
    [
        (np.eye(3), (0.3, -0.2, 0.1)),
        (np.diag([-1.0, 1.0, -1.0]), (1.1, 0.4, -2.0)),  # flipped axes
        (np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]]), (0.0, 0.0, 0.0)),  # permuted axes
    ],
)
def test_inside_boxes_equal_the_voxel_by_voxel_test(direction, offset):
    """The ROI share outside the dose grid and the native voxels inside the output grid, found as
    index boxes for axis-parallel grids, equal the voxel-by-voxel transform they replace."""
    from DoseAlignLib.structures.masks import RoiMask

    out_grid = Grid.from_spacing((30, 36, 40), (1.0, 1.0, 2.0), (-20, -18, -30))
    dose_grid = Grid.from_spacing((12, 14, 16), (2.5, 2.5, 3.0), np.array(offset), direction)
    box = audit_stats.inside_box(out_grid, dose_grid)
    assert box is not None
    binary = RNG.random((30, 36, 40)) < 0.5
    mask = RoiMask(roi=None, box=(slice(0, 30), slice(0, 36), slice(0, 40)), binary=binary)
    fast = audit_rois.outside_pct(mask, out_grid, dose_grid)
    voxelwise = audit_rois.outside_pct(mask, out_grid, dose_grid, box=None)  # the per-voxel test
    assert 0 < fast < 100 and fast == voxelwise
    inside = audit_stats.inside_extent(dose_grid, out_grid)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in dose_grid.shape), indexing="ij")
    index = out_grid.lps_to_index(dose_grid.index_to_lps(np.stack([i, j, k], axis=-1)))
    limits = np.array(out_grid.shape[::-1]) - 0.5
    np.testing.assert_array_equal(inside, np.all((index >= -0.5 - 1e-6) & (index <= limits + 1e-6), axis=-1))
    oblique = Grid.from_spacing((12, 14, 16), (2.5, 2.5, 3.0), (0, 0, 0), _rotation_z(10.0))
    assert audit_stats.inside_box(out_grid, oblique) is None  # not parallel: left to the per-voxel test


def _rotation_z(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# ---- dose-level audit ------------------------------------------------------------------------


def test_dose_outside_the_output_grid_and_integral_dose():
    native = Volume(np.full((10, 10, 10), 2.0, np.float32), Grid.from_spacing((10, 10, 10), (2, 2, 2), (0, 0, 0)), "GY")
    # output grid: 1 mm voxels over the native grid's extent in y and z, but only x < 10 (half of it)
    out_grid = Grid.from_spacing((20, 20, 10), (1, 1, 1), (-0.5, -0.5, -0.5))
    output = Volume(resample(native, out_grid), out_grid, "GY")
    result = audit_dose.audit_dose(output, native)
    assert result["native"]["integral_gy_l"] == pytest.approx(2.0 * 8.0 / 1000 * 1000 / 1000)  # 2 Gy x 8 cm^3
    assert result["outside_integral_pct"] == pytest.approx(50.0)
    assert result["integral_diff_pct"] == pytest.approx(0.0, abs=1e-6)
    assert result["dmax_diff_pct"] == pytest.approx(0.0)
    assert result["edge_dose_pct"] == pytest.approx(100.0)
    flags = {
        f["flag"] for f in audit_flags.flags_for(result, [], None, None, {}, audit_thresholds.DEFAULT_THRESHOLDS, 2.0)
    }
    assert flags == {"dose_outside_grid", "dose_grid_edge"}


def test_dmax_location_of_a_plateau_is_its_middle():
    dose = np.zeros((5, 9, 9), np.float32)
    dose[2, 1:8, 2:7] = 10.0  # a flat top: the first voxel in memory order would be a corner
    assert audit_stats.dmax_index(dose) == (2, 4, 4)
    dose[3, 0, 0] = 10.5
    assert audit_stats.dmax_index(dose) == (3, 0, 0)


def test_dmax_location_is_the_argmax_not_between_hot_spots():
    """Two hot spots within 0.1 % of each other: the location is the higher one's, never a point between
    them; two separate plateaus of exactly equal height: the first one's middle, not their common centroid."""
    dose = np.zeros((20, 30, 40), np.float32)
    dose[5, 5:8, 5:8] = 9.995
    dose[14, 22:25, 30:33] = 10.0
    assert audit_stats.dmax_index(dose) == (14, 23, 31)
    assert audit_stats.dmax_location(dose)[1] == 18  # both spots are "within 0.1 % of Dmax"
    dose[5, 5:8, 5:8] = 10.0  # now exactly tied: the first plateau in memory order, at its middle
    assert audit_stats.dmax_index(dose) == (5, 6, 6)
    ramp = np.broadcast_to(np.arange(40, dtype=np.float32), (21, 31, 40)).copy()  # a face of a linear field
    assert audit_stats.dmax_index(ramp) == (10, 15, 39)


def test_beam_sum_against_the_plan_dose():
    grid = Grid.from_spacing((4, 5, 6), (2, 2, 3), (0, 0, 0))
    a = RNG.uniform(0, 5, grid.shape).astype(np.float32)
    b = RNG.uniform(0, 5, grid.shape).astype(np.float32)
    plan = Volume(a + b, grid, "GY")
    ok = audit_beams.beam_sum_check(plan, [(Volume(a, grid), "a.dcm"), (Volume(b, grid), "b.dcm")])
    assert ok["max_abs_diff_gy"] == pytest.approx(0.0, abs=1e-5) and ok["resampled"] == []
    missing = audit_beams.beam_sum_check(plan, [(Volume(a, grid), "a.dcm")])
    assert missing["max_abs_diff_gy"] == pytest.approx(float(b.max()), rel=1e-6)
    flags = audit_flags.flags_for({"native": None}, [], None, missing, {}, audit_thresholds.DEFAULT_THRESHOLDS, None)
    assert [f["flag"] for f in flags] == ["beam_sum_mismatch"]


def test_a_threshold_beyond_a_floats_range_is_a_usage_error(tmp_path, capsys):
    """Eighty-fourth hostile trial CF3: a thresholds file giving a whole number of 400 digits (valid JSON) ended in an
    OverflowError's traceback, exit 1; 1e400 was a named usage error. Both are now, exit 2, the number not printed
    whole."""
    from DoseAlignLib.cli import main

    with pytest.raises(ValueError, match="must be a finite number, got a number of 401 digits"):
        audit_thresholds.thresholds_with({"dmax_diff_pct": 10**400})
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text('{"dmax_diff_pct": 1' + "0" * 400 + "}", encoding="utf-8")
    with pytest.raises(SystemExit) as stopped:  # (a usage error, as argparse ends one)
        main(["demo", str(tmp_path / "demo"), "--quiet", "--audit-thresholds", str(thresholds)])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "finite number" in err and "Traceback" not in err, err


def test_thresholds_are_configurable_and_checked():
    merged = audit_thresholds.thresholds_with({"dmax_diff_pct": 5})
    assert (
        merged["dmax_diff_pct"] == 5.0
        and merged["dvh_delta_pct"] == audit_thresholds.DEFAULT_THRESHOLDS["dvh_delta_pct"]
    )
    with pytest.raises(ValueError, match="unknown audit threshold"):
        AlignOptions(audit_thresholds={"dmax_pct": 1})
    dose_audit = {
        "native": {"dmax_gy": 10.0},
        "output": {"dmax_gy": 9.6},
        "dmax_diff_pct": -4.0,
        "outside_integral_pct": 0.0,
        "integral_diff_pct": 0.0,
        "edge_dose_pct": 0.0,
    }
    assert [
        f["flag"]
        for f in audit_flags.flags_for(dose_audit, [], None, None, {}, audit_thresholds.DEFAULT_THRESHOLDS, 10)
    ] == ["dmax_changed"]
    assert (
        audit_flags.flags_for(
            dose_audit, [], None, None, {}, audit_thresholds.thresholds_with({"dmax_diff_pct": 5}), 10
        )
        == []
    )


# ---- end to end on the engine's phantom ------------------------------------------------------


def _phantom_case(tmp_path, drop_beam=None, **spec_args):
    from DoseAlignLib.phantom import PhantomSpec, write_phantom

    spec = PhantomSpec(write_beam_doses=True, ct_size=(64, 64, 36), dose_size=(30, 30, 16), seed=11, **spec_args)
    truth = write_phantom(tmp_path / "in", spec)
    if drop_beam is not None:
        truth.dose_files[truth.dose_beam_numbers.index(drop_beam)].unlink()
    cases = form_cases(scan_folder(tmp_path / "in")).cases
    plan_case = next(c for c in cases if c.summation_type == "PLAN")
    return truth, plan_case


def test_phantom_audit_dvhs_and_beam_sum(tmp_path):
    truth, case = _phantom_case(tmp_path)
    result = run_case(case, AlignOptions())
    report = result.meta["audit"]
    names = result.meta["structures"]["names"]
    assert names == ["External", "PTV", "Cord", "Ring"]
    # the three BEAM doses add up to the PLAN dose (storage rounding only)
    beam_sum = report["beam_sum"]
    assert len(beam_sum["files"]) == 3 and beam_sum["plan_beams_without_dose"] == []
    assert beam_sum["max_abs_diff_pct"] < 0.1
    assert "beam_sum_mismatch" not in {f["flag"] for f in report["flags"]}
    # a sphere in a linear dose: Dmean = D50 = the dose at its centre; Dmax - Dmin = 2 R |grad D|
    ptv = truth.roi("PTV")
    entry = next(e for e in report["rois"] if e["name"] == "PTV")
    centre_dose = float(truth.dose_at(ptv.center_lps))
    gradient = float(np.linalg.norm(truth.spec.dose_field[:3]))
    for grid_name in ("output", "native"):
        points = entry[grid_name]
        assert points["dmean_gy"] == pytest.approx(centre_dose, abs=0.05), grid_name
        assert points["d50_gy"] == pytest.approx(centre_dose, abs=0.1), grid_name
        assert points["dmax_gy"] - points["dmin_gy"] == pytest.approx(2 * ptv.params["radius"] * gradient, rel=0.2)
    assert entry["output"]["v_rx_pct"] == 0.0  # 60 Gy prescribed, this dose stays below it
    assert report["prescription_gy"] == 60.0 and report["reference_dose_gy"] == 60.0
    # the cumulative DVHs: one row per ROI, V(0 Gy) = the ROI's volume, never increasing
    arrays = result.extra_arrays
    bins = arrays["dvh_dose_gy"]
    assert arrays["dvh_output"].shape == (4, bins.size) and arrays["dvh_native"].shape == (4, bins.size)
    volumes = [e["output"]["volume_cc"] for e in report["rois"]]
    np.testing.assert_allclose(arrays["dvh_output"][:, 0], volumes, rtol=1e-5)
    assert np.all(np.diff(arrays["dvh_output"], axis=1) <= 1e-6)
    extra = result.meta["manifest_extra"]
    assert float(extra["dmax_native_gy"]) == pytest.approx(report["dose"]["native"]["dmax_gy"], rel=1e-5)
    assert extra["n_rois"] == "4"


def test_phantom_missing_beam_is_flagged(tmp_path):
    _truth, case = _phantom_case(tmp_path, drop_beam=2)
    result = run_case(case, AlignOptions(structures=False))
    report = result.meta["audit"]
    assert report["beam_sum"]["plan_beams_without_dose"] == [2]
    assert "beam_sum_mismatch" in {f["flag"] for f in report["flags"]}
    assert "beam_sum_mismatch" in result.meta["manifest_extra"]["audit_flags"]
    assert "masks" not in result.extra_arrays and report["rois"] == []


def test_on_the_dose_grid_the_dvhs_do_not_change(tmp_path):
    _truth, case = _phantom_case(tmp_path)
    result = run_case(case, AlignOptions(reference="dose"))
    report = result.meta["audit"]
    for entry in report["rois"]:
        assert all(v == 0 for k, v in entry["diff"].items() if v is not None), entry["name"]
    assert report["dose"]["dmax_diff_pct"] == 0 and report["dose"]["integral_diff_pct"] == pytest.approx(0, abs=1e-9)
    np.testing.assert_array_equal(result.extra_arrays["dvh_output"], result.extra_arrays["dvh_native"])


# ---- the Nelms phantom: DVH points against the analytic shapes ---------------------------------

NELMS_CASES = ("Linear_AntPost_1mm", "Linear_SupInf_1mm", "Linear_AntPost_2mm", "Linear_SupInf_2mm")
POINTS = ("dmean_gy", "dmin_gy", "d99_gy", "d95_gy", "d50_gy", "d5_gy", "d1_gy", "dmax_gy")


def test_nelms_dvh_points_against_the_analytic_values(shared_data):
    from nelms_analytic import Shape, analytic_points, shape_from_name

    root = shared_data / "nelms-dvh-phantom"
    cases = {
        c.doses[0].rel_path.split("/")[-1].replace("_Aligned.dcm", ""): c for c in form_cases(scan_folder(root)).cases
    }
    lines = []
    errors = {"output": [], "native": []}
    case_of = {"output": [], "native": []}
    for name in NELMS_CASES:
        result = run_case(cases[name], AlignOptions())
        field = "AntPost" if "AntPost" in name else "SupInf"
        sources = {r["name"]: r["source"] for r in result.meta["structures"]["rois"]}
        for entry in result.meta["audit"]["rois"]:
            stem = sources[entry["name"]].split("/")[-1][:-4]
            named = shape_from_name(stem)
            truth = analytic_points(Shape(named["kind"], named["centre"]), field, "ideal")
            for grid_name in ("output", "native"):
                got = entry[grid_name]
                deltas = [got[p] - truth[p] for p in POINTS]
                errors[grid_name].append(deltas)
                case_of[grid_name].append(name)
                lines.append(
                    f"{name[7:]:12s} {stem:22s} {grid_name:6s} "
                    + " ".join(f"{truth[p]:6.2f}/{got[p]:6.2f}" for p in POINTS)
                )
    print("\nNelms DVH points, analytic/DoseAlign in Gy (doses 1 Gy/mm; output = CT grid, native = dose grid)")
    print(f"{'dose':12s} {'structure':22s} {'grid':6s} " + " ".join(f"{p[:-3]:>13s}" for p in POINTS))
    for line in lines:
        print(line)
    print("\n|DoseAlign - analytic| (Gy) per DVH point over the 60 ROIs: median / max, by grid and slice spacing")
    print(f"{'point':8s} " + " ".join(f"{g + ' ' + sp:>16s}" for g in ("output", "native") for sp in ("1mm", "2mm")))
    table = {}
    for grid_name in ("output", "native"):
        e = np.abs(np.array(errors[grid_name]))
        spacing = np.array(["1mm" in c for c in case_of[grid_name]])
        for n, point in enumerate(POINTS):
            for sp, sel in (("1mm", spacing), ("2mm", ~spacing)):
                table[(point, grid_name, sp)] = (float(np.median(e[sel, n])), float(e[sel, n].max()))
    for point in POINTS:
        cells = [table[(point, g, sp)] for g in ("output", "native") for sp in ("1mm", "2mm")]
        print(f"{point[:-3]:8s} " + " ".join(f"{m:7.2f} /{x:6.2f}" for m, x in cells))
    for (point, grid_name, sp), (median, largest) in table.items():
        step = 1.0 if sp == "1mm" else 2.0  # contour planes and dose voxels: 1 or 2 mm = 1 or 2 Gy
        if point in ("dmin_gy", "dmax_gy"):
            # single voxels at the end planes: the slab rule's end caps and tiny apex contours
            assert largest <= 2 * step, (point, grid_name, sp)
        else:
            assert largest <= step + 0.25, (point, grid_name, sp)
            assert median <= 0.5 * step, (point, grid_name, sp)


# ---- the rtkit phantom: 7 ROIs, External as body, the beam sum ---------------------------------


def test_rtkit_rois_body_and_beam_sum(shared_data):
    root = shared_data / "rtkit-phantom"
    cases = form_cases(scan_folder(root)).cases
    assert len(cases) == 1
    case = cases[0]
    result = run_case(case, AlignOptions())
    structures = result.meta["structures"]
    assert structures["names"] == ["External", "Big", "Small", "Circle", "BigH_SmallV", "BigV_SmallH", "Star"]
    assert structures["skipped"] == []
    assert structures["body"]["source"].startswith("ROI 'External'")
    shape = result.ct.grid.shape
    masks = unpack_masks(result.extra_arrays["masks"], shape)
    np.testing.assert_array_equal(unpack_masks(result.extra_arrays["body"], shape), masks[0])
    for roi in structures["rois"]:
        assert roi["voxel_count"] > 0
        assert roi["volume_cc"] == pytest.approx(roi["contour_volume_cc"], rel=0.01), roi["name"]
        assert roi["interpreted_type"] in ("EXTERNAL", "AVOIDANCE") and len(roi["color"]) == 3
    # the case's dose is the sum of the three single-beam doses; the all-zero 1+2+3 dose is left out
    audit_sum = result.meta["audit"]["beam_sum"]
    assert audit_sum["mode"].startswith("this case's dose is the sum")
    assert len(audit_sum["files"]) == 3
    assert len(result.meta["dose"]["left_out"]) == 1
    independent = 0.0
    for name in audit_sum["files"]:
        ds = pydicom.dcmread(str(root / name))
        independent = independent + ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)
    np.testing.assert_allclose(result.native_dose.array, independent, atol=1e-4)
    report = result.meta["audit"]
    assert report["dose"]["native"]["dmax_gy"] == pytest.approx(float(independent.max()), abs=1e-4)
    assert abs(report["dose"]["dmax_diff_pct"]) < 1.0
    assert result.extra_arrays["dvh_native"].shape[0] == 7
    print(
        "\nrtkit: Dmax native {:.3f} Gy, output {:.3f} Gy; worst DVH delta {}; flags {}".format(
            report["dose"]["native"]["dmax_gy"],
            report["dose"]["output"]["dmax_gy"],
            report["worst_dvh_delta"],
            [f["flag"] for f in report["flags"]],
        )
    )


# ---- the audit against the reference DVH; flags that say where and why --------------------------


def test_dose_grid_edge_names_the_faces_and_their_dose():
    grid = Grid.from_spacing((12, 16, 20), (2.5, 2.5, 3.0), (-20.0, 100.0, -15.0))  # (K, J, I)
    dose = np.zeros(grid.shape, np.float32)
    dose[3:9, 4:12, 5:15] = 50.0
    dose[4:8, -1, 6:14] = 20.0  # the last row: the posterior face, y = 100 + 15 x 2.5 = 137.5 mm
    dose[0, 5:10, 5:15] = 8.0  # the first slice (inferior face, z = -15 mm): below the 10 % limit
    volume = Volume(dose, grid, "GY")
    faces = audit_dose.edge_faces(volume)
    assert (faces[0]["face"], faces[0]["axis"], faces[0]["at_mm"]) == ("posterior", "y", 137.5)
    assert faces[0]["pct"] == pytest.approx(40.0) and faces[1]["face"] == "inferior" and faces[1]["pct"] == 16.0
    result = audit_dose.audit_dose(volume, volume)
    (flag,) = [f for f in audit_flags.flags_for(result, [], None, None, {}, audit_thresholds.DEFAULT_THRESHOLDS, 50.0)]
    assert flag["flag"] == "dose_grid_edge"
    assert (
        "posterior face (y = 137.5 mm) 40.0 %" in flag["detail"]
        and "inferior face (z = -15 mm) 16.0 %" in flag["detail"]
    )
    flipped = Grid.from_spacing((12, 16, 20), (2.5, 2.5, 3.0), (30.0, 137.5, 18.0), np.diag([-1.0, -1.0, -1.0]))
    assert audit_dose.edge_faces(Volume(dose, flipped, "GY"))[0]["face"] == "anterior"  # rows now run to -y


def test_integral_of_a_dose_that_fills_its_grid_is_kept_on_a_finer_grid():
    """A linear dose up to its grid's faces (the Nelms doses): the output voxels' sum equals the
    trilinear interpolant's integral over their cells, whatever the finer grid's rounding at the faces."""
    grid = Grid.from_spacing((19, 19, 19), (3.0, 3.0, 3.0), (-24.0, -30.0, -30.0))
    k, j, i = np.meshgrid(*(np.arange(19) for _ in range(3)), indexing="ij")
    points = grid.index_to_lps(np.stack([i, j, k], axis=-1).astype(np.float64))
    native = Volume((40.0 - points[..., 1]).astype(np.float32), grid, "GY")
    fine = Grid.from_spacing((40, 120, 120), (0.6, 0.6, 1.0), (-36.0, -40.0, -33.0))
    output = Volume(resample(native, fine), fine, "GY")
    result = audit_dose.audit_dose(output, native)
    assert result["integral_expected_gy_l"] is not None
    assert abs(result["integral_diff_pct"]) < 0.05
    # the native voxels inside the output grid would make it look changed: their cells end elsewhere
    inside = result["integral_native_inside_gy_l"]
    assert abs(100 * (result["output"]["integral_gy_l"] - inside) / inside) > 0.5


def _entry(name, volume_cc, error_gy, *, in_plane=0.0, normal=0.0, spacing=2.0, outside_dose=0.0, outside_grid=0.0):
    points = {"volume_cc": volume_cc, "outside_dose_grid_pct": outside_dose, "outside_grid_pct": outside_grid}
    gradients = {"in_plane": {"d95_gy": in_plane}, "normal": {"d95_gy": normal}}
    return {
        "name": name,
        "reference": {"points": points, "gradient_gy_per_mm": gradients, "sampling": {"slab_thickness_mm": spacing}},
        "error_output": {"d95_gy": error_gy, "dmean_gy": 0.0},
        "output": {},
    }


def test_dvh_tolerance_follows_dose_and_gradient():
    t = audit_thresholds.DEFAULT_THRESHOLDS
    # 2 % of 60 Gy = 1.2 Gy; 1 Gy/mm in plane x 1 mm; along the normal 1 Gy/mm x the 2 mm spacing; 3 mm at most
    entries = [
        _entry("Flat", 50.0, 1.1),
        _entry("FlatMiss", 50.0, 1.3),
        _entry("InPlane", 50.0, 1.9, in_plane=2.0),
        _entry("InPlaneMiss", 50.0, 2.1, in_plane=2.0),
        _entry("Across", 50.0, 3.9, normal=2.0),
        _entry("AcrossMiss", 50.0, 4.1, normal=2.0),
        _entry("Thick", 50.0, 5.9, normal=2.0, spacing=5.0),  # 5 mm planes: at most 3 mm counts
        _entry("ThickMiss", 50.0, 6.1, normal=2.0, spacing=5.0),
        _entry("Tiny", 0.5, 9.0),  # under dvh_min_volume_cc: reported, not judged
        _entry("CutByDose", 50.0, 9.0, outside_dose=5.0),
        _entry("CutByGrid", 50.0, 9.0, outside_grid=5.0),
    ]
    flags = {f["flag"]: f["detail"] for f in audit_flags.flags_for({"native": None}, entries, None, None, {}, t, 60.0)}
    assert set(flags) == {"dvh_mismatch", "roi_outside_dose_grid", "roi_outside_output_grid"}
    missed = flags["dvh_mismatch"]
    for name in ("FlatMiss", "InPlaneMiss", "AcrossMiss", "ThickMiss"):
        assert f"{name} d95" in missed
    for name in ("Flat ", "InPlane ", "Across ", "Thick ", "Tiny", "CutBy"):
        assert name not in missed
    assert "CutByDose (5.0 %)" in flags["roi_outside_dose_grid"] and "CutByGrid" not in flags["roi_outside_dose_grid"]
    assert "CutByGrid (5.0 %)" in flags["roi_outside_output_grid"]


def test_one_flag_per_kind_listing_every_roi():
    t = audit_thresholds.DEFAULT_THRESHOLDS
    structures = {
        "rois": [
            {"name": f"Organ {n}", "volume_diff_pct": 8.0 + n, "contour_volume_cc": 20.0, "volume_cc": 21.0 + n}
            for n in range(7)
        ]
        + [{"name": "Cut", "volume_diff_pct": -40.0, "contour_volume_cc": 50.0, "volume_cc": 30.0}]
    }
    entries = [_entry("Cut", 50.0, 0.0, outside_grid=40.0)]
    geometry = {"problems": [{"object": "a.dcm", "detail": "x"}, {"object": "b.dcm", "detail": "y"}]}
    flags = audit_flags.flags_for({"native": None}, entries, structures, None, geometry, t, 60.0)
    codes = [f["flag"] for f in flags]
    assert len(codes) == len(set(codes)) and set(codes) == {
        "roi_outside_output_grid",
        "roi_volume_mismatch",
        "dose_grid_warning",
    }
    detail = next(f["detail"] for f in flags if f["flag"] == "roi_volume_mismatch")
    assert all(f"Organ {n}" in detail for n in range(7)) and "Cut" not in detail  # cut by the grid: its own flag
    warning = next(f["detail"] for f in flags if f["flag"] == "dose_grid_warning")
    assert "a.dcm" in warning and "b.dcm" in warning


def test_phantom_pair_against_its_reference_dvhs(tmp_path):
    """End to end: every ROI's reference DVH in meta.json, pair.npz and dvh.csv; the well-sampled phantom
    raises no DVH flag; a training grid too coarse for its small ROIs does; a cube that cuts an ROI
    flags it as such (not as a volume mismatch)."""
    import csv

    from DoseAlignLib.output.case_folder import write_case_output

    truth, case = _phantom_case(tmp_path, extra_organs=3)
    result = run_case(case, AlignOptions())
    report = result.meta["audit"]
    names = result.meta["structures"]["names"]
    assert {f["flag"] for f in report["flags"]} & {"dvh_mismatch", "roi_outside_output_grid"} == set()
    curves = result.extra_arrays["dvh_reference"]
    assert curves.shape == result.extra_arrays["dvh_output"].shape
    meta_curves = report["reference_dvh"]
    assert meta_curves["between_planes"] == "interpolated" and len(meta_curves["dose_gy"]) <= 101
    for n, name in enumerate(names):
        entry = next(e for e in report["rois"] if e["name"] == name)
        reference = entry["reference"]["points"]
        roi = truth.roi(name)
        radius = roi.params.get("radius", 0.0)
        d = np.sort((truth.ct_slice_positions - roi.center_lps) @ truth.ct_normal)
        d = d[np.abs(d) < radius]
        # the true ball between its first and last contour plane, and the two caps (for balls several planes
        # across: between two planes the solid stays within their sections, so a small ball's equator
        # between two planes is cut, -3.7 % for Organ 1, 3.8 mm across 2.5 mm planes)
        if roi.shape == "sphere" and d.size >= 6:
            between = np.pi * np.diff([radius**2 * x - x**3 / 3 for x in (d[0], d[-1])])[0]
            step = float(np.median(np.diff(d)))
            caps = np.pi * (2 * radius**2 - d[0] ** 2 - d[-1] ** 2) * step / 2
            assert reference["volume_cc"] == pytest.approx((between + caps) / 1000, rel=0.005), name
        assert curves[n, 0] == pytest.approx(reference["volume_cc"], rel=1e-4)
        assert meta_curves["rois"][name]["volume_pct"][0] == pytest.approx(100.0, abs=0.01)
        assert entry["error_output"]["dmean_gy"] == pytest.approx(entry["output"]["dmean_gy"] - reference["dmean_gy"])
        assert entry["reference"]["sampling"]["samples"] > 1000
    folder = write_case_output(result, tmp_path / "out")
    with open(folder / "dvh.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["roi", "dose_gy", "volume_cc", "volume_pct"]
    assert {r["roi"] for r in rows} == set(names)
    ptv = [r for r in rows if r["roi"] == "PTV"]
    assert float(ptv[0]["dose_gy"]) == 0.0 and float(ptv[0]["volume_pct"]) == pytest.approx(100.0, abs=0.01)
    assert float(ptv[-1]["volume_cc"]) == 0.0 and all(
        float(a["volume_cc"]) >= float(b["volume_cc"]) for a, b in zip(ptv, ptv[1:])
    )
    # a training grid of 8 mm voxels on a steeper dose: the Ring's DVH is misrepresented, and the audit says so
    _truth, steep = _phantom_case(tmp_path / "steep", dose_field=(0.3, -0.4, 0.5, 40.0))
    fine = run_case(steep, AlignOptions()).meta["audit"]
    assert "dvh_mismatch" not in {f["flag"] for f in fine["flags"]}
    coarse = run_case(steep, AlignOptions(reference="custom", custom_spacing=(8.0, 8.0, 8.0))).meta["audit"]
    flags = {f["flag"]: f["detail"] for f in coarse["flags"]}
    assert "dvh_mismatch" in flags and "Ring d" in flags["dvh_mismatch"], flags
    # a cube that cuts the External and the Ring: their own flag, no volume mismatch for them
    cut = run_case(
        case,
        AlignOptions(reference="custom", custom_spacing=(2.0, 2.0, 2.0), custom_box="cube", custom_size=(24, 24, 24)),
    ).meta["audit"]
    flags = {f["flag"]: f["detail"] for f in cut["flags"]}
    assert "roi_outside_output_grid" in flags and "External" in flags["roi_outside_output_grid"]
    assert "External" not in flags.get("roi_volume_mismatch", "")
