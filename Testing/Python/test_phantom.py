"""Checks of the synthetic DICOM-RT phantom, read back with plain pydicom and numpy only.

The geometry here is recomputed from the DICOM tags with the textbook formulas, independently of
both the phantom generator and the engine's readers.
"""

from __future__ import annotations

import re

import numpy as np
import pydicom
import pytest
from DoseAlignLib.phantom import PhantomSpec, write_phantom

IOP_TABLE = {
    "HFS": (1, 0, 0, 0, 1, 0),
    "HFP": (-1, 0, 0, 0, -1, 0),
    "FFS": (-1, 0, 0, 0, 1, 0),
    "FFP": (1, 0, 0, 0, -1, 0),
    "HFDL": (0, -1, 0, 1, 0, 0),
    "HFDR": (0, 1, 0, -1, 0, 0),
    "FFDL": (0, 1, 0, 1, 0, 0),
    "FFDR": (0, -1, 0, -1, 0, 0),
}
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
DOSE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.2"
STRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
PLAN_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.5"
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def read(path) -> pydicom.Dataset:
    return pydicom.dcmread(str(path))


def floats(values) -> np.ndarray:
    return np.array([float(v) for v in values], dtype=np.float64)


def axes(ds) -> tuple:
    iop = floats(ds.ImageOrientationPatient)
    row, col = iop[:3], iop[3:]
    return row, col, np.cross(row, col)


def slice_centres(ds, ipp: np.ndarray) -> np.ndarray:
    """Voxel centres (rows, cols, 3) of one slice whose first voxel is at ``ipp``."""
    row, col, _ = axes(ds)
    row_spacing, column_spacing = floats(ds.PixelSpacing)
    c = np.arange(ds.Columns)[None, :, None]
    r = np.arange(ds.Rows)[:, None, None]
    return ipp + c * column_spacing * row + r * row_spacing * col


def relative_offsets(ds) -> np.ndarray:
    """GridFrameOffsetVector as offsets from the first frame along the normal."""
    gfov = floats(ds.GridFrameOffsetVector)
    if gfov[0] == 0:
        return gfov
    normal_z = axes(ds)[2][2]
    return (gfov - gfov[0]) / normal_z  # absolute (z) form: only with a normal of +/-z


def dose_centres(ds) -> np.ndarray:
    """Voxel centres (frames, rows, cols, 3) of a dose file."""
    ipp = floats(ds.ImagePositionPatient)
    normal = axes(ds)[2]
    return np.stack([slice_centres(ds, ipp + o * normal) for o in relative_offsets(ds)])


def ct_by_position(truth) -> list:
    datasets = [read(p) for p in truth.ct_files]
    normal = axes(datasets[0])[2]
    return sorted(datasets, key=lambda ds: floats(ds.ImagePositionPatient) @ normal)


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("default"), PhantomSpec(write_beam_doses=True))


def test_every_file_reads_back_with_consistent_identity(default):
    written = {p.name for p in default.out_dir.iterdir()}
    expected = default.ct_files + default.dose_files + [default.plan_file, default.struct_file]
    assert written == {p.name for p in expected}
    classes = [CT_SOP_CLASS] * len(default.ct_files) + [DOSE_SOP_CLASS] * len(default.dose_files)
    for path, sop_class in zip(expected, [*classes, PLAN_SOP_CLASS, STRUCT_SOP_CLASS]):
        ds = read(path)
        assert ds.preamble == b"\0" * 128
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == sop_class
        assert ds.StudyInstanceUID == default.study_uid
        assert ds.PatientID == "DA-PHANTOM-001" and str(ds.PatientName) == "Phantom^DoseAlign"
        assert ds.PatientBirthDate and ds.StudyDate == "20240102"
        if "PixelData" in ds:
            assert ds.pixel_array.size == ds.Rows * ds.Columns * int(getattr(ds, "NumberOfFrames", 1))
        if sop_class != STRUCT_SOP_CLASS:
            assert ds.FrameOfReferenceUID == default.frame_of_reference_uid
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID):
            assert len(uid) <= 64 and UID_PATTERN.match(uid)


@pytest.mark.parametrize("position", sorted(IOP_TABLE))
def test_orientation_and_slice_positions_per_patient_position(tmp_path, position):
    spec = PhantomSpec(patient_position=position, ct_center_lps=(5.0, -7.0, 12.0), with_structures=False)
    truth = write_phantom(tmp_path, spec)
    cts = ct_by_position(truth)
    for ds in [*cts, read(truth.dose_files[0])]:
        assert tuple(floats(ds.ImageOrientationPatient)) == IOP_TABLE[position]
    assert [ds.PatientPosition for ds in cts] == [position] * 40
    row, col, normal = axes(cts[0])
    assert abs(normal[2]) == 1
    first = floats(cts[0].ImagePositionPatient)
    for n, ds in enumerate(cts):
        np.testing.assert_allclose(floats(ds.ImagePositionPatient), first + n * 2.5 * normal, atol=1e-9)

    # the grid's centre is ct_center_lps
    def plane_centre(ds) -> np.ndarray:
        p = slice_centres(ds, floats(ds.ImagePositionPatient))
        return (p[0, 0] + p[-1, -1]) / 2

    middle = (plane_centre(cts[0]) + plane_centre(cts[-1])) / 2
    np.testing.assert_allclose(middle, spec.ct_center_lps, atol=1e-9)
    np.testing.assert_allclose(truth.ct_slice_positions, [floats(ds.ImagePositionPatient) for ds in cts], atol=1e-12)
    np.testing.assert_allclose(truth.ct_normal, normal, atol=1e-12)


def test_oblique_rotation_is_about_l_then_p_then_s(tmp_path):
    spec = PhantomSpec(oblique_degrees=(30.0, 0.0, 90.0), dose_oblique_degrees=(0.0, -20.0, 0.0), with_structures=False)
    truth = write_phantom(tmp_path, spec)
    c30, s30, c20, s20 = np.cos(np.radians(30)), np.sin(np.radians(30)), np.cos(np.radians(20)), np.sin(np.radians(20))
    # HFS row +L, column +P; 30 deg about L takes the column to (0, c30, s30), then 90 deg about S
    ct_iop = floats(read(truth.ct_files[0]).ImageOrientationPatient)
    np.testing.assert_allclose(ct_iop, [0, 1, 0, -c30, 0, s30], atol=1e-12)
    # the dose has its own rotation: -20 deg about P
    dose_iop = floats(read(truth.dose_files[0]).ImageOrientationPatient)
    np.testing.assert_allclose(dose_iop, [c20, 0, s20, 0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(truth.ct_normal, np.cross(ct_iop[:3], ct_iop[3:]), atol=1e-12)
    np.testing.assert_allclose(truth.dose_normal, np.cross(dose_iop[:3], dose_iop[3:]), atol=1e-12)


def test_names_and_instance_numbers_do_not_follow_position(default):
    cts = ct_by_position(default)
    by_name = sorted(default.ct_files, key=lambda p: p.name)
    assert [p.name for p in by_name] != [p.name for p in default.ct_files]
    assert [read(p).SOPInstanceUID for p in default.ct_files] == [ds.SOPInstanceUID for ds in cts]
    numbers = [int(ds.InstanceNumber) for ds in cts]
    assert sorted(numbers) == list(range(1, 41))
    assert numbers not in (sorted(numbers), sorted(numbers, reverse=True))


def test_unshuffled_names_follow_position(tmp_path):
    truth = write_phantom(tmp_path, PhantomSpec(shuffle_files=False, with_structures=False))
    assert [p.name for p in truth.ct_files] == sorted(p.name for p in truth.ct_files)
    assert [int(read(p).InstanceNumber) for p in truth.ct_files] == list(range(1, 41))


def test_uneven_and_missing_slices(tmp_path):
    gaps = [2.0, 2.0, 3.0, 1.5, 2.0, 2.5, 2.5]
    truth = write_phantom(tmp_path, PhantomSpec(ct_size=(32, 32, 8), ct_slice_spacings=gaps, ct_missing_slices=(0, 4)))
    cts = ct_by_position(truth)
    full = np.concatenate([[0.0], np.cumsum(gaps)])
    kept = [1, 2, 3, 5, 6, 7]
    assert len(cts) == 6 and truth.ct_slice_indices == kept
    first = floats(cts[0].ImagePositionPatient)
    for ds, index in zip(cts, kept):
        np.testing.assert_allclose(
            floats(ds.ImagePositionPatient), first + (full[index] - full[1]) * np.array([0, 0, 1]), atol=1e-9
        )
    np.testing.assert_allclose(truth.ct_slice_offsets, full[kept] - full[1], atol=1e-9)


def test_gantry_tilt_shifts_slices_along_the_column_direction(tmp_path):
    truth = write_phantom(tmp_path, PhantomSpec(ct_gantry_tilt_degrees=15.0, with_structures=False))
    cts = ct_by_position(truth)
    row, col, normal = axes(cts[0])
    first = floats(cts[0].ImagePositionPatient)
    for n, ds in enumerate(cts):
        assert float(ds.GantryDetectorTilt) == 15.0
        expected = first + n * 2.5 * normal + np.tan(np.radians(15.0)) * n * 2.5 * col
        np.testing.assert_allclose(floats(ds.ImagePositionPatient), expected, atol=1e-9)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"ct_pixel_spacing": (0.8, 1.3), "ct_size": (48, 40, 12), "oblique_degrees": (10.0, -5.0, 20.0)},
        {"patient_position": "HFDL", "ct_pixel_spacing": (1.2, 0.7)},
        {"patient_position": "FFP", "ct_rescale": (1.0, 0.0), "ct_linear": (2.0, -1.5, 3.0, -200.0)},
        {"ct_rescale": (0.5, -1000.0), "ct_gantry_tilt_degrees": -12.0},
    ],
)
def test_linear_ct_values_at_voxel_centres(tmp_path, extra):
    spec = PhantomSpec(ct_field="linear", with_structures=False, **extra)
    truth = write_phantom(tmp_path, spec)
    a, b, c, d = spec.ct_linear
    slope, intercept = spec.ct_rescale
    signed = []
    for ds in ct_by_position(truth):
        assert ds.Rows == spec.ct_size[1] and ds.Columns == spec.ct_size[0]
        assert tuple(floats(ds.PixelSpacing)) == spec.ct_pixel_spacing
        p = slice_centres(ds, floats(ds.ImagePositionPatient))
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        expected = a * p[..., 0] + b * p[..., 1] + c * p[..., 2] + d
        assert np.max(np.abs(hu - expected)) <= slope / 2 + 1e-9
        np.testing.assert_allclose(truth.hu_at(p), expected, atol=1e-9)
        signed.append(ds.PixelRepresentation)
    assert set(signed) == {1 if intercept == 0 else 0}


def test_anatomy_ct_matches_hu_at(default):
    values = set()
    for ds in ct_by_position(default):
        p = slice_centres(ds, floats(ds.ImagePositionPatient))
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, default.hu_at(p))
        values |= set(np.unique(hu).tolist())
    assert values == {-1000.0, -100.0, 0.0, 30.0, 40.0, 700.0}
    assert default.hu_at(np.array([500.0, 0.0, 0.0])) == -1000.0


DOSE_CASES = [
    {},
    {"frame_order": "decreasing"},
    {"dose_frame_offsets": (0.0, 2.0, 5.0, 6.0, 10.0, 18.0), "dose_size": (20, 22, 6)},
    {"dose_frame_offsets": (0.0, -3.0, -4.5, -9.0), "dose_size": (20, 22, 4)},
    {"gfov_mode": "absolute"},
    {"gfov_mode": "absolute", "patient_position": "FFS", "frame_order": "decreasing"},
    {"dose_bits": 32},
    {"oblique_degrees": (7.0, 3.0, -11.0), "dose_pixel_spacing": (2.0, 3.5)},
    {"dose_oblique_degrees": (0.0, 25.0, 5.0), "patient_position": "HFP"},
    {"patient_position": "FFDR", "dose_units": "RELATIVE", "dose_summation": "FRACTION"},
]


@pytest.mark.parametrize("extra", DOSE_CASES)
def test_dose_values_at_voxel_centres(tmp_path, extra):
    spec = PhantomSpec(with_structures=False, **extra)
    truth = write_phantom(tmp_path, spec)
    (path,) = truth.dose_files
    ds = read(path)
    assert ds.Modality == "RTDOSE" and ds.DoseType == "PHYSICAL"
    assert ds.DoseUnits == spec.dose_units and ds.DoseSummationType == spec.dose_summation
    assert ds.FrameIncrementPointer == pydicom.tag.Tag(0x3004, 0x000C)
    assert (int(ds.NumberOfFrames), ds.Rows, ds.Columns) == spec.dose_size[::-1]
    assert ds.BitsAllocated == ds.BitsStored == spec.dose_bits and ds.PixelRepresentation == 0
    assert tuple(floats(ds.PixelSpacing)) == spec.dose_pixel_spacing
    p = dose_centres(ds)
    a, b, c, d = spec.dose_field
    analytic = a * p[..., 0] + b * p[..., 1] + c * p[..., 2] + d
    scaling = float(ds.DoseGridScaling)
    stored = ds.pixel_array.astype(np.float64)
    assert stored.shape == analytic.shape
    assert 0.9 * (60000 if spec.dose_bits == 16 else 2e9) < stored.max() < np.iinfo(f"uint{spec.dose_bits}").max
    error = np.abs(stored * scaling - analytic)
    assert np.all(error <= 0.5 * scaling * (1 + 1e-9) + 1e-12)  # the rounding to integers, no more
    if spec.dose_bits == 32:
        assert np.all(error <= 1e-6 * np.abs(analytic))
    np.testing.assert_allclose(truth.dose_at(p), analytic, rtol=1e-12)
    # dose orientation, centre and frame positions
    row, col, normal = axes(ds)
    expected_iop = np.array(IOP_TABLE[spec.patient_position], dtype=float)
    if spec.dose_oblique_degrees is None and spec.oblique_degrees == (0.0, 0.0, 0.0):
        np.testing.assert_array_equal(floats(ds.ImageOrientationPatient), expected_iop)
    else:
        assert not np.allclose(floats(ds.ImageOrientationPatient), expected_iop)
    ct = read(truth.ct_files[0])
    same = spec.dose_oblique_degrees is None
    assert np.allclose(floats(ds.ImageOrientationPatient), floats(ct.ImageOrientationPatient), atol=1e-12) == same
    corners = p[[0, 0, 0, 0, -1, -1, -1, -1], [0, 0, -1, -1, 0, 0, -1, -1], [0, -1, 0, -1, 0, -1, 0, -1]]
    offsets = relative_offsets(ds)
    centre_along = (offsets.min() + offsets.max()) / 2
    in_plane_centre = corners[:4].mean(axis=0) - offsets[0] * normal
    centre = in_plane_centre + centre_along * normal
    np.testing.assert_allclose(centre, np.add(spec.ct_center_lps, spec.dose_center_offset_lps), atol=1e-9)
    np.testing.assert_allclose(truth.dose_origin, floats(ds.ImagePositionPatient), atol=1e-12)
    np.testing.assert_allclose(truth.dose_frame_offsets, offsets, atol=1e-9)
    np.testing.assert_allclose(truth.dose_frame_positions, p[:, 0, 0] @ normal, atol=1e-9)
    np.testing.assert_allclose(truth.dose_bounds_lps, [corners.min(axis=0), corners.max(axis=0)], atol=1e-9)


def test_grid_frame_offset_vector_variants(tmp_path):
    def gfov(name, **extra):
        ds = read(write_phantom(tmp_path / name, PhantomSpec(with_structures=False, **extra)).dose_files[0])
        return floats(ds.GridFrameOffsetVector), floats(ds.ImagePositionPatient)

    values, _ = gfov("inc")
    np.testing.assert_allclose(values, np.arange(20) * 3.0)
    values, _ = gfov("dec", frame_order="decreasing")
    np.testing.assert_allclose(values, -np.arange(20) * 3.0)
    values, _ = gfov("uneven", dose_frame_offsets=(0, 1, 3, 6), dose_size=(8, 8, 4))
    np.testing.assert_allclose(values, [0, 1, 3, 6])
    values, ipp = gfov("abs", gfov_mode="absolute")
    assert values[0] == ipp[2] != 0
    np.testing.assert_allclose(values - values[0], np.arange(20) * 3.0, atol=1e-9)
    values, ipp = gfov("abs_ffs", gfov_mode="absolute", patient_position="FFS")
    assert values[0] == ipp[2]
    np.testing.assert_allclose(values - values[0], -np.arange(20) * 3.0, atol=1e-9)  # z of frames, normal -z
    with pytest.raises(ValueError, match="absolute"):
        gfov("abs_oblique", gfov_mode="absolute", oblique_degrees=(20.0, 0.0, 0.0))


def _contours(struct, name: str) -> list:
    number = next(r.ROINumber for r in struct.StructureSetROISequence if r.ROIName == name)
    roi = next(r for r in struct.ROIContourSequence if r.ReferencedROINumber == number)
    return list(roi.ContourSequence)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"oblique_degrees": (0.0, 15.0, 30.0), "ct_missing_slices": (3, 17), "ct_gantry_tilt_degrees": 10.0},
        {"patient_position": "FFDL"},
    ],
)
def test_structure_contours_lie_on_ct_slices(tmp_path, extra):
    truth = write_phantom(tmp_path, PhantomSpec(**extra))
    cts = ct_by_position(truth)
    ct_series = cts[0].SeriesInstanceUID
    planes = {ds.SOPInstanceUID: floats(ds.ImagePositionPatient) for ds in cts}
    normal = axes(cts[0])[2]
    struct = read(truth.struct_file)
    assert struct.Modality == "RTSTRUCT"
    (for_item,) = struct.ReferencedFrameOfReferenceSequence
    assert for_item.FrameOfReferenceUID == cts[0].FrameOfReferenceUID
    (series_item,) = for_item.RTReferencedStudySequence[0].RTReferencedSeriesSequence
    assert for_item.RTReferencedStudySequence[0].ReferencedSOPInstanceUID == truth.study_uid
    assert series_item.SeriesInstanceUID == ct_series
    assert {i.ReferencedSOPInstanceUID for i in series_item.ContourImageSequence} == set(planes)
    names = {r.ROINumber: r.ROIName for r in struct.StructureSetROISequence}
    types = {names[o.ReferencedROINumber]: o.RTROIInterpretedType for o in struct.RTROIObservationsSequence}
    assert types == {"External": "EXTERNAL", "PTV": "PTV", "Cord": "ORGAN", "Ring": "ORGAN", "Marker": "MARKER"}
    assert all(r.ReferencedFrameOfReferenceUID == truth.frame_of_reference_uid for r in struct.StructureSetROISequence)

    planes_by_roi = {}
    for name in names.values():
        planes_by_roi[name] = []
        for contour in _contours(struct, name):
            points = floats(contour.ContourData).reshape(-1, 3)
            assert len(points) == contour.NumberOfContourPoints
            (image,) = contour.ContourImageSequence
            assert image.ReferencedSOPClassUID == CT_SOP_CLASS
            distance = (points - planes[image.ReferencedSOPInstanceUID]) @ normal
            np.testing.assert_allclose(distance, 0.0, atol=1e-6)
            planes_by_roi[name].append(image.ReferencedSOPInstanceUID)
            assert contour.ContourGeometricType == ("POINT" if name == "Marker" else "CLOSED_PLANAR")

    assert sorted(planes_by_roi["External"]) == sorted(planes)  # the body crosses every slice
    ring = planes_by_roi["Ring"]
    assert ring and all(ring.count(uid) == 2 for uid in ring)  # outer and hole on each plane
    assert len(planes_by_roi["Marker"]) == 1
    # shapes: PTV points on the sphere, Cord points at its radius from the axis
    ptv, cord = truth.roi("PTV"), truth.roi("Cord")
    expected_ptv_planes = [u for u, p in planes.items() if abs((p - ptv.center_lps) @ normal) < ptv.params["radius"]]
    assert sorted(planes_by_roi["PTV"]) == sorted(expected_ptv_planes)
    for contour in _contours(struct, "PTV"):
        points = floats(contour.ContourData).reshape(-1, 3)
        np.testing.assert_allclose(np.linalg.norm(points - ptv.center_lps, axis=1), ptv.params["radius"], rtol=1e-9)
    for contour in _contours(struct, "Cord"):
        d = floats(contour.ContourData).reshape(-1, 3) - cord.center_lps
        radial = d - np.outer(d @ normal, normal)
        np.testing.assert_allclose(np.linalg.norm(radial, axis=1), cord.params["radius"], rtol=1e-9)


def _signed_area(points: np.ndarray, normal: np.ndarray) -> float:
    return 0.5 * float(np.sum(np.cross(points, np.roll(points, -1, axis=0)) @ normal))


def test_ring_hole_has_opposite_winding_and_volumes_are_analytic(default):
    struct = read(default.struct_file)
    normal = default.ct_normal
    contours = _contours(struct, "Ring")
    ring = default.roi("Ring")
    for outer, inner in zip(contours[0::2], contours[1::2]):
        a_out = _signed_area(floats(outer.ContourData).reshape(-1, 3), normal)
        a_in = _signed_area(floats(inner.ContourData).reshape(-1, 3), normal)
        assert a_out > 0 > a_in
        assert abs(a_out) == pytest.approx(np.pi * ring.params["outer_radius"] ** 2, rel=2e-3)
        assert abs(a_in) == pytest.approx(np.pi * ring.params["inner_radius"] ** 2, rel=2e-3)
    ptv, cord = default.roi("PTV"), default.roi("Cord")
    assert ptv.volume_cc == pytest.approx(4 / 3 * np.pi * ptv.params["radius"] ** 3 / 1000)
    assert cord.volume_cc == pytest.approx(np.pi * cord.params["radius"] ** 2 * cord.length_mm / 1000)
    r_out, r_in = ring.params["outer_radius"], ring.params["inner_radius"]
    assert ring.volume_cc == pytest.approx(np.pi * (r_out**2 - r_in**2) * ring.length_mm / 1000)
    assert default.roi("External").volume_cc is None and default.roi("Marker").volume_cc is None


def test_plan_and_dose_references(default):
    plan = read(default.plan_file)
    assert plan.Modality == "RTPLAN"
    assert plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == read(default.struct_file).SOPInstanceUID
    assert float(plan.DoseReferenceSequence[0].TargetPrescriptionDose) == 60.0
    beam_numbers = [int(b.BeamNumber) for b in plan.BeamSequence]
    assert beam_numbers == [1, 2, 3]
    (group,) = plan.FractionGroupSequence
    assert [int(r.ReferencedBeamNumber) for r in group.ReferencedBeamSequence] == beam_numbers
    assert all(float(r.BeamMeterset) > 0 for r in group.ReferencedBeamSequence)
    assert sum(default.beam_weights) == pytest.approx(1.0)

    doses = [read(p) for p in default.dose_files]
    assert [ds.DoseSummationType for ds in doses] == ["PLAN", "BEAM", "BEAM", "BEAM"]
    assert default.dose_beam_numbers == [None, 1, 2, 3]
    total = None
    for ds, beam in zip(doses, default.dose_beam_numbers):
        (ref,) = ds.ReferencedRTPlanSequence
        assert ref.ReferencedSOPClassUID == PLAN_SOP_CLASS and ref.ReferencedSOPInstanceUID == plan.SOPInstanceUID
        values = ds.pixel_array * float(ds.DoseGridScaling)
        if beam is None:
            assert "ReferencedFractionGroupSequence" not in ref
            plan_dose = values
            continue
        (fg,) = ref.ReferencedFractionGroupSequence
        assert int(fg.ReferencedFractionGroupNumber) == 1
        assert int(fg.ReferencedBeamSequence[0].ReferencedBeamNumber) == beam
        p = dose_centres(ds)
        weight = default.beam_weights[beam - 1]
        np.testing.assert_allclose(values, weight * default.dose_at(p), atol=float(ds.DoseGridScaling))
        np.testing.assert_allclose(default.dose_at(p, beam), weight * default.dose_at(p))
        total = values if total is None else total + values
    np.testing.assert_allclose(total, plan_dose, rtol=1e-4)


def test_uids_are_deterministic_and_seeded(tmp_path):
    spec = PhantomSpec(ct_size=(16, 16, 4), dose_size=(8, 8, 3))
    one, two = write_phantom(tmp_path / "a", spec), write_phantom(tmp_path / "b", spec)
    other = write_phantom(tmp_path / "c", PhantomSpec(ct_size=(16, 16, 4), dose_size=(8, 8, 3), seed=1))
    assert (one.study_uid, one.ct_sop_uids, one.dose_sop_uids) == (two.study_uid, two.ct_sop_uids, two.dose_sop_uids)
    assert [p.name for p in one.ct_files] == [p.name for p in two.ct_files]
    assert other.study_uid != one.study_uid and other.frame_of_reference_uid != one.frame_of_reference_uid
    every = [one.study_uid, one.frame_of_reference_uid, one.ct_series_uid, one.struct_series_uid, one.plan_series_uid]
    every += [one.dose_series_uid, one.struct_sop_uid, one.plan_sop_uid, *one.ct_sop_uids, *one.dose_sop_uids]
    assert len(set(every)) == len(every)


def test_optional_objects_can_be_left_out(tmp_path):
    truth = write_phantom(
        tmp_path, PhantomSpec(with_plan=False, with_structures=False, write_plan_dose=False, write_beam_doses=True)
    )
    assert truth.plan_file is None and truth.struct_file is None
    assert len(truth.dose_files) == 3
    assert len(list(tmp_path.iterdir())) == 40 + 3


@pytest.mark.parametrize(
    "extra",
    [
        {"patient_position": "XYZ"},
        {"ct_field": "noise"},
        {"dose_bits": 8},
        {"ct_slice_spacings": (1.0, 2.0)},
        {"ct_missing_slices": (40,)},
        {"dose_frame_offsets": (0.0, 1.0, 1.0), "dose_size": (4, 4, 3)},
        {"dose_field": (0.0, 0.0, 1.0, 0.0)},
    ],
)
def test_invalid_specs_are_refused(tmp_path, extra):
    with pytest.raises(ValueError):
        write_phantom(tmp_path, PhantomSpec(**extra))


# ---- the patient-like anatomy (the demo) ----------------------------------------------------------


@pytest.fixture(scope="module")
def patient(tmp_path_factory):
    spec = PhantomSpec(
        anatomy="patient",
        ct_size=(96, 80, 24),
        ct_pixel_spacing=(4.0, 4.0),
        ct_slice_spacing=5.0,
        dose_size=(60, 42, 26),
        dose_pixel_spacing=(6.0, 6.0),
        dose_frame_spacing=5.0,
        dose_center_offset_lps=(0.0, -20.0, 0.0),
        dose_shape="plan",
        n_beams=7,
        write_beam_doses=True,
        roi_names=(("SpinalCord", "Cord"), ("Heart", "")),
    )
    return write_phantom(tmp_path_factory.mktemp("patient"), spec)


def test_patient_ct_is_a_thorax_on_a_couch(patient):
    """Every CT voxel is hu_at at its centre; each tissue of the thorax and the couch is there."""
    values = {}
    for ds in ct_by_position(patient):
        p = slice_centres(ds, floats(ds.ImagePositionPatient))
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, patient.hu_at(p))
        for value, count in zip(*np.unique(hu, return_counts=True)):
            values[float(value)] = values.get(float(value), 0) + int(count)
    # air, couch foam and shell, fat, soft tissue, lung, heart, vertebral body, bony arch, cord, tumour
    assert set(values) == {-1000.0, -850.0, 250.0, -90.0, 40.0, -820.0, 45.0, 260.0, 700.0, 30.0, 35.0}
    # the lungs are a large part of the body; air around the body, the couch below it (posterior, +y)
    lung = patient.roi("Lung_R")
    assert values[-820.0] > 10 * values[35.0]
    body = patient.roi("External")
    below = body.center_lps + (body.params["semi_axis_v"] + 2.0 + 1.0) * body.v_dir
    assert patient.hu_at(below[np.newaxis])[0] == 250.0  # the couch's top shell
    assert patient.hu_at((body.center_lps - (body.params["semi_axis_v"] + 5) * body.v_dir)[np.newaxis])[0] == -1000.0
    assert patient.hu_at(lung.center_lps[np.newaxis] + 0.5 * lung.params["semi_axis_u"] * lung.u_dir)[0] == -820.0


def test_patient_rois_renamed_or_left_out(patient):
    struct = read(patient.struct_file)
    names = {int(r.ROINumber): str(r.ROIName) for r in struct.StructureSetROISequence}
    assert sorted(names.values()) == ["Cord", "External", "GTV", "Lung_L", "Lung_R", "PTV"]
    assert patient.roi("Cord").role == "SpinalCord" and not next(r for r in patient.rois if r.role == "Heart").written
    types = {int(o.ReferencedROINumber): str(o.RTROIInterpretedType) for o in struct.RTROIObservationsSequence}
    assert types[2] == "PTV" and names[2] == "PTV"
    plan = read(patient.plan_file)
    assert int(plan.DoseReferenceSequence[0].ReferencedROINumber) == 2
    np.testing.assert_allclose(
        floats(plan.BeamSequence[0].ControlPointSequence[0].IsocenterPosition), patient.roi("PTV").center_lps, atol=1e-9
    )


def test_patient_plan_covers_the_ptv_and_falls_off(patient):
    """The plan dose: the PTV covered, a steep fall-off, the fields' entrance paths, nothing outside the body,
    and the BEAM doses (one per field) adding up to the PLAN dose."""
    plan = read(patient.dose_files[0])
    p = dose_centres(plan)
    dose = plan.pixel_array * float(plan.DoseGridScaling)
    rx = patient.spec.prescription_gy
    ptv = patient.roi("PTV")
    distance = np.linalg.norm(p - ptv.center_lps, axis=-1)
    in_ptv = distance < ptv.params["radius"]
    assert in_ptv.sum() > 10
    assert np.percentile(dose[in_ptv], 5) > 0.93 * rx and dose.max() < 1.1 * rx
    # a steep fall-off: on spheres around the PTV (the field, checked against the file below)
    directions = np.random.default_rng(0).normal(size=(4000, 3))
    directions /= np.linalg.norm(directions, axis=1)[:, np.newaxis]
    shells = {
        extra: patient.dose_at(ptv.center_lps + directions * (ptv.params["radius"] + extra)) / rx
        for extra in (0.0, 10.0, 20.0)
    }
    assert shells[0.0].min() > 0.95 and shells[10.0].mean() < 0.6 and shells[20.0].mean() < 0.3
    # the fields enter through the skin: their paths carry dose far from the PTV, between them none
    far = (distance > ptv.params["radius"] + 40) & (patient.hu_at(p) != -1000.0)
    assert 0.1 * rx < dose[far].max() < 0.5 * rx and np.percentile(dose[far], 10) < 0.02 * rx
    body = patient.roi("External")
    rel = p - body.center_lps
    a, b = body.params["semi_axis_u"] + 4.0, body.params["semi_axis_v"] + 4.0  # 4 mm beyond the skin
    outside_body = ((rel @ body.u_dir) / a) ** 2 + ((rel @ body.v_dir) / b) ** 2 > 1
    assert outside_body.sum() > 1000 and dose[outside_body].max() < 0.01 * rx
    total = sum(read(f).pixel_array * float(read(f).DoseGridScaling) for f in patient.dose_files[1:])
    assert len(patient.dose_files) == 8
    assert np.abs(total - dose).max() < 1e-3 * rx
    np.testing.assert_allclose(patient.dose_at(p), dose, atol=float(plan.DoseGridScaling))


def test_later_spec_fields_keep_earlier_uids(tmp_path):
    """Fields added to PhantomSpec later leave the UIDs of every earlier study as they were."""
    a = write_phantom(tmp_path / "a", PhantomSpec(with_structures=False))
    b = write_phantom(tmp_path / "b", PhantomSpec(with_structures=False, boost_fraction=0.0, anatomy="geometric"))
    assert a.study_uid == b.study_uid and a.dose_sop_uids == b.dose_sop_uids
    c = write_phantom(tmp_path / "c", PhantomSpec(with_structures=False, boost_fraction=0.5))
    assert c.study_uid != a.study_uid and c.boost_dose_file is not None and c.boost_plan_file is not None
    boost = read(c.boost_dose_file)
    assert boost.DoseSummationType == "PLAN"
    assert boost.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == read(c.boost_plan_file).SOPInstanceUID
    assert read(c.boost_plan_file).RTPlanLabel == "BOOST"
