"""The geometry matrix: synthetic studies in every patient position, oblique, with every kind of
frame-offset vector, non-square pixels, per-beam doses and irregular CTs. The dose field is
linear, so trilinear interpolation reproduces it exactly: the expected dose at every output voxel
inside the dose grid is known analytically (error allowed: 1e-4 x Dmax)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import interior_mask, load_case, voxel_points
from DoseAlignLib.batch import export_folder
from DoseAlignLib.options import AlignOptions
from DoseAlignLib.phantom import PhantomSpec, write_phantom

TOLERANCE = 1e-4  # of Dmax


def outside_rim_mask(truth, points: np.ndarray) -> np.ndarray:
    """Points beyond the dose grid's outer voxel faces (centres + half a voxel): dose must be 0."""
    rel = points - truth.dose_origin
    row_spacing, column_spacing = truth.dose_pixel_spacing
    _frames, rows, columns = truth.dose_shape
    u = rel @ truth.dose_row_dir / column_spacing
    v = rel @ truth.dose_col_dir / row_spacing
    w = rel @ truth.dose_normal
    offsets = np.sort(np.asarray(truth.dose_frame_offsets))
    lo = offsets[0] - 0.5 * (offsets[1] - offsets[0]) if offsets.size > 1 else -0.5
    hi = offsets[-1] + 0.5 * (offsets[-1] - offsets[-2]) if offsets.size > 1 else 0.5
    eps = 1e-3
    return (
        (u < -0.5 - eps)
        | (u > columns - 0.5 + eps)
        | (v < -0.5 - eps)
        | (v > rows - 0.5 + eps)
        | (w < lo - eps)
        | (w > hi + eps)
    )


def export_one(tmp_path, spec: PhantomSpec, options: AlignOptions = AlignOptions(structures=False)):  # noqa: B008
    truth = write_phantom(tmp_path / "dicom", spec)
    report = export_folder(tmp_path / "dicom", tmp_path / "out", options)
    assert [r["status"] for r in report.rows] == ["ok"], report.rows
    arrays, meta = load_case(tmp_path / "out" / report.rows[0]["case_id"])
    return truth, arrays, meta


def assert_dose_exact(truth, arrays, meta, min_interior: int = 500):
    points = voxel_points(meta)
    dose = arrays["dose"]
    assert dose.shape == tuple(meta["shape"])
    assert dose.dtype == np.float32
    interior = interior_mask(truth, points)
    assert interior.sum() >= min_interior, "too few output voxels inside the dose grid to test"
    expected = truth.dose_at(points)
    dmax = float(expected[interior].max())
    error = np.abs(dose[interior] - expected[interior]).max()
    assert error <= TOLERANCE * dmax, f"max error {error:.3g} Gy > {TOLERANCE * dmax:.3g} Gy"
    outside = outside_rim_mask(truth, points)
    assert np.all(dose[outside] == 0.0), "dose beyond the dose grid's extent must be 0"
    assert dose.min() >= 0.0


POSITIONS = ["HFS", "HFP", "FFS", "FFP", "HFDL", "HFDR", "FFDL", "FFDR"]


@pytest.mark.parametrize("position", POSITIONS)
def test_patient_positions(tmp_path, position):
    truth, arrays, meta = export_one(tmp_path, PhantomSpec(patient_position=position, with_structures=False))
    assert_dose_exact(truth, arrays, meta)
    # the output is on the CT grid: ijk_to_lps says exactly where the CT's voxels are
    affine = np.array(meta["ijk_to_lps"])
    np.testing.assert_allclose(affine[:3, 3], truth.ct_origin, atol=1e-4)
    np.testing.assert_allclose(affine[:3, 0], truth.ct_row_dir * truth.ct_pixel_spacing[1], atol=1e-6)
    np.testing.assert_allclose(affine[:3, 1], truth.ct_col_dir * truth.ct_pixel_spacing[0], atol=1e-6)
    # k runs along increasing position on the slice normal (row x column)
    assert affine[:3, 2] @ np.cross(truth.ct_row_dir, truth.ct_col_dir) > 0
    ras = np.array(meta["ijk_to_ras"])
    np.testing.assert_allclose(ras, np.diag([-1, -1, 1, 1]) @ affine, atol=1e-9)


@pytest.mark.parametrize(
    "spec",
    [
        PhantomSpec(oblique_degrees=(12.0, -7.0, 25.0)),
        PhantomSpec(patient_position="FFP", oblique_degrees=(0.0, 0.0, 33.0)),
        PhantomSpec(dose_oblique_degrees=(0.0, 0.0, 15.0)),  # dose axes differ from the CT's
    ],
    ids=["oblique-both", "oblique-ffp", "dose-rotated"],
)
def test_oblique(tmp_path, spec):
    truth, arrays, meta = export_one(tmp_path, spec)
    assert_dose_exact(truth, arrays, meta)


@pytest.mark.parametrize(
    "spec",
    [
        PhantomSpec(gfov_mode="absolute"),
        PhantomSpec(gfov_mode="absolute", patient_position="FFS"),
        PhantomSpec(frame_order="decreasing"),
        PhantomSpec(dose_size=(40, 36, 12), dose_frame_offsets=[0, 2, 4, 7, 10, 15, 20, 22, 25, 31, 36, 40]),
        PhantomSpec(dose_size=(40, 36, 8), dose_frame_offsets=[0, -3, -5, -6, -10, -16, -20, -21]),
        PhantomSpec(
            dose_size=(40, 36, 8),
            dose_frame_offsets=[0, 3, 5, 6, 10, 16, 20, 21],
            gfov_mode="absolute",
            patient_position="FFS",
        ),
    ],
    ids=["absolute", "absolute-ffs", "decreasing", "non-uniform", "non-uniform-decreasing", "non-uniform-absolute-ffs"],
)
def test_frame_offset_vectors(tmp_path, spec):
    truth, arrays, meta = export_one(tmp_path, spec)
    assert_dose_exact(truth, arrays, meta)
    grid = meta["dose"]["native_grids"][0]
    assert grid["gfov_mode"] == spec.gfov_mode
    assert grid["uniform_frames"] == (spec.dose_frame_offsets is None)


@pytest.mark.parametrize(
    "spec",
    [
        PhantomSpec(ct_pixel_spacing=(0.8, 1.3), dose_pixel_spacing=(2.0, 3.5)),
        PhantomSpec(dose_bits=32),
        PhantomSpec(dose_center_offset_lps=(30.0, -20.0, 45.0)),  # dose reaches far past the CT
        PhantomSpec(write_plan_dose=False, write_beam_doses=True, n_beams=4),
    ],
    ids=["non-square-pixels", "32-bit", "dose-beyond-ct", "beam-sum"],
)
def test_pixels_bits_extent_and_sums(tmp_path, spec):
    truth, arrays, meta = export_one(tmp_path, spec)
    assert_dose_exact(truth, arrays, meta, min_interior=200)
    if spec.write_beam_doses:
        assert meta["dose"]["summation_type"] == "BEAM_SUM"
        assert len(meta["dose"]["summed_files"]) == spec.n_beams


def test_shuffled_files_sorted_by_position(tmp_path):
    truth, arrays, meta = export_one(tmp_path, PhantomSpec(ct_field="linear", shuffle_files=True))
    # with a linear CT field every stored slice must land at its own position
    points = voxel_points(meta)
    expected = np.rint(truth.hu_at(points))
    assert np.abs(arrays["ct"].astype(np.float64) - expected).max() <= 1.0
    assert arrays["ct"].dtype == np.int16
    order = [f.split("/")[-1] for f in meta["source"]["ct_files"]]
    assert order == [p.name for p in truth.ct_files], "CT files must be listed in spatial order"


@pytest.mark.parametrize(
    "spec, reason",
    [
        (PhantomSpec(ct_slice_spacings=[2.5] * 10 + [3.5] + [2.5] * 28), "uneven slice spacing"),
        (PhantomSpec(ct_missing_slices=(12, 13)), "missing slices"),
        (PhantomSpec(ct_gantry_tilt_degrees=12.0), "gantry tilt"),
    ],
    ids=["uneven", "missing", "tilt"],
)
def test_irregular_ct_is_regularized(tmp_path, spec, reason):
    spec = PhantomSpec(**{**spec.__dict__, "ct_field": "linear"})
    truth, arrays, meta = export_one(tmp_path, spec)
    ct_meta = meta["geometry"]["ct"]
    assert ct_meta["regularized"] is True
    assert reason in ct_meta["regularization"]
    assert_dose_exact(truth, arrays, meta)
    # the CT is linear in space: its regularized values are exact up to two integer roundings
    # (storage, output) and the header's decimal positions, at every voxel between the end slices
    points = voxel_points(meta)
    distance = (points - truth.ct_origin) @ truth.ct_normal
    between = (distance >= 0) & (distance <= truth.ct_slice_offsets[-1])
    in_plane = np.ones(between.shape, dtype=bool)
    if spec.ct_gantry_tilt_degrees:
        in_plane &= arrays["ct"] > -1000  # tilted slices do not cover the box's corners
    mask = between & in_plane
    assert mask.sum() > 1000
    error = np.abs(arrays["ct"][mask].astype(np.float64) - truth.hu_at(points[mask]))
    assert error.max() <= 1.1, f"CT error {error.max():.2f} HU"


def test_reference_dose_grid(tmp_path):
    spec = PhantomSpec(ct_field="linear", dose_center_offset_lps=(0.3, 0.2, 0.1), dose_size=(20, 18, 10))
    truth, arrays, meta = export_one(tmp_path, spec, AlignOptions(reference="dose", structures=False))
    assert meta["shape"] == [10, 18, 20]
    points = voxel_points(meta)
    # on its own grid the dose is the stored values: exact up to the integer quantization
    np.testing.assert_allclose(arrays["dose"], truth.dose_at(points), atol=1e-4 * truth.dose_at(points).max())
    inside_ct = np.abs(arrays["ct"]) < 1000
    assert inside_ct.sum() > 100
    assert np.abs(arrays["ct"][inside_ct] - truth.hu_at(points[inside_ct])).max() <= 1.0


def test_reference_custom_cube(tmp_path):
    options = AlignOptions(
        reference="custom", custom_spacing=(2.0,), custom_box="cube", custom_size=(32,), structures=False
    )
    truth, arrays, meta = export_one(tmp_path, PhantomSpec(), options)
    assert meta["shape"] == [32, 32, 32]
    np.testing.assert_allclose(meta["spacing"], [2.0, 2.0, 2.0])
    assert_dose_exact(truth, arrays, meta)


def test_nearest_neighbour_on_dose_grid_is_exact(tmp_path):
    options = AlignOptions(reference="dose", interpolator="nn", structures=False)
    truth, arrays, meta = export_one(tmp_path, PhantomSpec(dose_size=(20, 18, 10)), options)
    points = voxel_points(meta)
    np.testing.assert_allclose(arrays["dose"], truth.dose_at(points), atol=1e-4 * truth.dose_at(points).max())


@pytest.mark.parametrize("interpolator", ["bs", "ws"])
def test_bspline_and_windowed_sinc(tmp_path, interpolator):
    options = AlignOptions(interpolator=interpolator, structures=False)
    truth, arrays, meta = export_one(tmp_path, PhantomSpec(), options)
    dose = arrays["dose"]
    assert dose.min() >= 0.0, "dose is never negative, whatever the interpolator overshoots"
    points = voxel_points(meta)
    # far from the dose grid's edges these interpolators reproduce a linear field closely
    rel = points - truth.dose_origin
    row_spacing, column_spacing = truth.dose_pixel_spacing
    frames, rows, columns = truth.dose_shape
    u = rel @ truth.dose_row_dir / column_spacing
    v = rel @ truth.dose_col_dir / row_spacing
    w = (rel @ truth.dose_normal) / abs(truth.dose_frame_offsets[1])
    deep = (u > 5) & (u < columns - 6) & (v > 5) & (v < rows - 6) & (w > 5) & (w < frames - 6)
    assert deep.sum() > 100
    expected = truth.dose_at(points[deep])
    assert np.abs(dose[deep] - expected).max() <= 1e-2 * expected.max()
    assert meta["resampling"]["interpolator"] == interpolator


def test_relative_dose_refused_unless_allowed(tmp_path):
    truth = write_phantom(tmp_path / "dicom", PhantomSpec(dose_units="RELATIVE", with_structures=False))
    report = export_folder(tmp_path / "dicom", tmp_path / "out", AlignOptions(structures=False))
    assert report.exit_code == 1
    (row,) = report.rows
    assert row["status"] == "failed"
    assert "RELATIVE" in row["reason"] and "(3004,0002) DoseUnits" in row["reason"]
    assert truth.dose_files[0].name in row["reason"]
    assert not (tmp_path / "out" / row["case_id"]).exists(), "a failed case writes nothing"
    report = export_folder(tmp_path / "dicom", tmp_path / "out2", AlignOptions(allow_relative=True, structures=False))
    (row,) = report.rows
    assert row["status"] == "ok"
    # exported, but never passed off as Gy: the manifest's dmax_gy column holds relative values (seventh hostile
    # trial: the row's warnings were empty and the console said "dmax 31.5 Gy")
    assert "the dose is RELATIVE (DoseUnits), not Gy" in row["warnings"], row["warnings"]


@pytest.mark.parametrize("rescale", [(1.0, -1024.0), (1.0, 0.0), (0.5, -1000.0)])
def test_ct_read_in_place_equals_pydicom_decoding(tmp_path, rescale):
    """Slices read straight from the file give exactly what pydicom's decoder gives."""
    from DoseAlignLib.dicom.ct import read_ct
    from DoseAlignLib.dicom.scan import scan_folder

    spec = PhantomSpec(ct_size=(192, 192, 8), ct_field="linear", ct_rescale=rescale, with_structures=False)
    write_phantom(tmp_path, spec)  # slices over 64 KiB: their pixels are read in place
    (series,) = scan_folder(tmp_path).ct_series
    assert all(s.info["pixel_position"] is not None for s in series.slices), "the fast path must apply here"
    fast = read_ct(series, dtype="float32").array
    for obj in series.slices:
        obj.info["pixel_position"] = None  # force pydicom's decoding
    slow = read_ct(series, dtype="float32").array
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("signed", [False, True])
def test_ct_12_bits_stored_read_in_place_equals_pydicom_decoding(tmp_path, signed):
    """12-bit slices whose values fit 12 bits are read in place; a slice with a value beyond them goes to
    pydicom as before (which masks or sign-extends it, or, with pydicom 2.4, keeps it and may refuse it)."""
    import pydicom
    from DoseAlignLib.dicom.ct import read_ct
    from DoseAlignLib.dicom.scan import scan_folder
    from DoseAlignLib.errors import InputError

    spec = PhantomSpec(ct_size=(192, 192, 6), ct_field="linear", ct_rescale=(1.0, -1024.0), with_structures=False)
    truth = write_phantom(tmp_path, spec)

    def rewrite(path, beyond: bool) -> None:
        ds = pydicom.dcmread(str(path))
        values = ds.pixel_array.astype(np.int32) - (2048 if signed else 0)
        values = np.clip(values, -2048 if signed else 0, 2047 if signed else 4095)
        if beyond:
            values[5, 7] = 0x7123 if signed else 0xF123
        ds.PixelData = values.astype(np.int16 if signed else np.uint16).tobytes()
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, int(signed)
        ds.save_as(str(path))

    def fast_and_slow() -> tuple:
        (series,) = scan_folder(tmp_path).ct_series
        assert all(s.info["pixel_position"]["bits_stored"] == 12 for s in series.slices)
        outcomes = []
        for _ in range(2):
            try:
                outcomes.append(read_ct(series).array)
            except InputError as error:
                outcomes.append(str(error))
            for obj in series.slices:
                obj.info["pixel_position"] = None  # then: pydicom's decoding
        return tuple(outcomes)

    for path in truth.ct_files:
        rewrite(path, beyond=False)
    fast, slow = fast_and_slow()
    np.testing.assert_array_equal(fast, slow)
    assert len(np.unique(slow)) > 100
    rewrite(truth.ct_files[2], beyond=True)
    fast, slow = fast_and_slow()
    if isinstance(slow, str):
        assert fast == slow and truth.ct_files[2].name in slow
    else:
        np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("box", ["dose", "ct"])
def test_reference_custom_box(tmp_path, box):
    options = AlignOptions(reference="custom", custom_spacing=(1.5, 2.0, 3.0), custom_box=box, structures=False)
    truth, arrays, meta = export_one(tmp_path, PhantomSpec(patient_position="FFS"), options)
    np.testing.assert_allclose(meta["spacing"], [1.5, 2.0, 3.0])
    affine = np.array(meta["ijk_to_lps"])
    # the custom grid lies on the CT's axes
    np.testing.assert_allclose(affine[:3, 0] / 1.5, truth.ct_row_dir, atol=1e-9)
    np.testing.assert_allclose(affine[:3, 1] / 2.0, truth.ct_col_dir, atol=1e-9)
    # and spans the chosen grid's outer voxel centres (to within one output voxel)
    corners = truth.dose_corners_lps if box == "dose" else _ct_corners(truth)
    shape = np.array(meta["shape"][::-1])
    local = lambda p: (np.asarray(p) - affine[:3, 3]) @ affine[:3, :3] / np.array([1.5, 2.0, 3.0]) ** 2  # noqa: E731
    lo, hi = local(corners).min(axis=0), local(corners).max(axis=0)
    assert np.all(lo >= -1e-6) and np.all(hi <= shape - 1 + 1e-6)
    assert np.all(hi > shape - 2 - 1e-6), f"grid {shape} does not reach {hi}"
    assert_dose_exact(truth, arrays, meta, min_interior=100)


def _ct_corners(truth) -> np.ndarray:
    columns, rows, _ = truth.spec.ct_size
    row_spacing, column_spacing = truth.ct_pixel_spacing
    corners = []
    for c in (0, columns - 1):
        for r in (0, rows - 1):
            for offset in (truth.ct_slice_offsets[0], truth.ct_slice_offsets[-1]):
                corners.append(
                    truth.ct_origin
                    + c * column_spacing * truth.ct_row_dir
                    + r * row_spacing * truth.ct_col_dir
                    + offset * truth.ct_normal
                )
    return np.array(corners)


@pytest.mark.parametrize("position", ["HFS", "FFS"])
def test_absolute_frame_offsets_rounded_off_the_first_frames_z(tmp_path, position):
    """Forty-fifth hostile trial AS2: absolute GridFrameOffsetVector values (patient z) whose first lies 0.02 mm from
    the first frame's z were read as distances along the normal: a feet-first dose was mirrored along z and exported
    a dose-extent away, status ok (head-first came out right). They are z coordinates, from the first frame's
    position, with a warning."""
    import dicom_damage as dd

    spec = PhantomSpec(gfov_mode="absolute", patient_position=position, with_structures=False)
    truth = write_phantom(tmp_path / "dicom", spec)
    for path in truth.dose_files:
        ds = dd.read(path)
        ds.GridFrameOffsetVector = [float(v) + 0.02 for v in ds.GridFrameOffsetVector]
        dd.save(ds, path)
    report = export_folder(tmp_path / "dicom", tmp_path / "out", AlignOptions(structures=False))
    assert [r["status"] for r in report.rows] == ["ok"], report.rows
    arrays, meta = load_case(tmp_path / "out" / report.rows[0]["case_id"])
    assert_dose_exact(truth, arrays, meta)
    assert meta["dose"]["native_grids"][0]["gfov_mode"] == "absolute"
    warnings = meta["dose"]["native_grids"][0]["warnings"]
    assert any("0.02 mm from the first frame's z" in w for w in warnings), warnings


@pytest.mark.parametrize("position", ["HFS", "FFS"])
def test_absolute_frame_offsets_of_a_dose_tilted_off_axial(tmp_path, position):
    """Forty-ninth hostile trial AW2: absolute GridFrameOffsetVector values (patient z) whose first equals the first
    frame's z, of a dose whose slice normal is a tenth of a degree off z, were read as relative offsets: a feet-first
    dose was mirrored along z, status ok. Near z (within about 5 degrees) they are z coordinates, converted to
    distances along the normal."""
    import dicom_damage as dd

    spec = PhantomSpec(patient_position=position, dose_oblique_degrees=(0.1, 0.0, 0.0), with_structures=False)
    truth = write_phantom(tmp_path / "dicom", spec)
    for path in truth.dose_files:
        ds = dd.read(path)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        assert 0.999 < abs(normal[2]) < 1 - 1e-6  # (tilted, yet near z: else this test proves nothing)
        z0 = float(ds.ImagePositionPatient[2])
        ds.GridFrameOffsetVector = [f"{z0 + float(o) * normal[2]:.6f}" for o in ds.GridFrameOffsetVector]
        dd.save(ds, path)
    report = export_folder(tmp_path / "dicom", tmp_path / "out", AlignOptions(structures=False))
    assert [r["status"] for r in report.rows] == ["ok"], report.rows
    arrays, meta = load_case(tmp_path / "out" / report.rows[0]["case_id"])
    assert meta["dose"]["native_grids"][0]["gfov_mode"] == "absolute"
    assert_dose_exact(truth, arrays, meta)
