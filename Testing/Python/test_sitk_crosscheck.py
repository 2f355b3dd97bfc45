"""Cross-check against SimpleITK's own reading (ITK/GDCM): equal where GDCM is right, and the
cases where it is wrong shown explicitly (GDCM takes the frame step from the first two offsets)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import load_case
from DoseAlignLib.batch import export_folder
from DoseAlignLib.dicom.rtdose import read_rtdose
from DoseAlignLib.geometry.sitk_bridge import grid_from_image
from DoseAlignLib.options import AlignOptions
from DoseAlignLib.phantom import PhantomSpec, write_phantom

UNIFORM = {
    "hfs": PhantomSpec(with_structures=False),
    "ffs": PhantomSpec(patient_position="FFS", with_structures=False),
    "hfp": PhantomSpec(patient_position="HFP", with_structures=False),
    "decreasing": PhantomSpec(frame_order="decreasing", with_structures=False),
    "absolute": PhantomSpec(gfov_mode="absolute", with_structures=False),
    "oblique": PhantomSpec(oblique_degrees=(10.0, 0.0, 20.0), with_structures=False),
}


def _sitk_frame_positions(image) -> np.ndarray:
    return np.array([image.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(image.GetSize()[2])])


@pytest.mark.parametrize("name", sorted(UNIFORM))
def test_same_dose_grid_and_values_as_simpleitk(tmp_path, name):
    truth = write_phantom(tmp_path / "dicom", UNIFORM[name])
    path = truth.dose_files[0]
    ours, geometry, info = read_rtdose(path)
    image = sitk.ReadImage(str(path))
    # ITK's GDCM reader returns the stored integers: DoseGridScaling is not applied
    assert image.GetPixelID() in (sitk.sitkUInt16, sitk.sitkUInt32)
    theirs = sitk.Cast(image, sitk.sitkFloat64) * info.scaling
    # compare voxel positions, whatever order each side stores the frames in
    their_positions = np.sort(_sitk_frame_positions(image) @ truth.dose_normal)
    our_positions = np.sort(ours.grid.index_to_lps(np.c_[np.zeros((3, 2)), np.arange(3)]) @ truth.dose_normal)
    np.testing.assert_allclose(their_positions[:3], our_positions[:3], atol=1e-4)
    sitk_grid = grid_from_image(image)
    array = sitk.GetArrayFromImage(sitk.Cast(theirs, sitk.sitkFloat32))
    if geometry.flipped:
        array = array[::-1]  # we keep k along the slice normal
        assert np.allclose(np.abs(sitk_grid.direction), np.abs(ours.grid.direction), atol=1e-6)
    else:
        assert sitk_grid.equal(ours.grid, atol=1e-4) or np.allclose(sitk_grid.affine, ours.grid.affine, atol=1e-4)
    np.testing.assert_allclose(array, ours.array, rtol=1e-6, atol=1e-6)


def test_resampled_dose_matches_simpleitk_resample(tmp_path):
    truth = write_phantom(tmp_path / "dicom", PhantomSpec(with_structures=False))
    report = export_folder(tmp_path / "dicom", tmp_path / "out", AlignOptions(structures=False))
    arrays, meta = load_case(tmp_path / "out" / report.rows[0]["case_id"])
    dose = sitk.ReadImage(str(truth.dose_files[0]))
    dose = sitk.Cast(sitk.Cast(dose, sitk.sitkFloat64) * read_rtdose(truth.dose_files[0])[2].scaling, sitk.sitkFloat32)
    reference = sitk.ReadImage([str(p) for p in truth.ct_files])  # files in spatial order
    resampled = sitk.Resample(dose, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    theirs = sitk.GetArrayFromImage(resampled)
    assert theirs.shape == arrays["dose"].shape
    difference = np.abs(theirs - arrays["dose"])
    assert difference.max() <= 1e-4 * arrays["dose"].max()


def test_simpleitk_is_wrong_for_uneven_frames(tmp_path):
    """The case GDCM gets wrong: uneven GridFrameOffsetVector. Ours follows the tag exactly."""
    offsets = [0, 3, 5, 6, 10, 16, 20, 21]
    spec = PhantomSpec(dose_size=(40, 36, len(offsets)), dose_frame_offsets=offsets, with_structures=False)
    truth = write_phantom(tmp_path / "dicom", spec)
    image = sitk.ReadImage(str(truth.dose_files[0]))
    their_offsets = (_sitk_frame_positions(image) - truth.dose_origin) @ truth.dose_normal
    assert image.GetSpacing()[2] == pytest.approx(3.0), "GDCM takes the first step"
    assert np.abs(their_offsets - offsets).max() > 2.5, "and misplaces later frames by millimetres"
    ours, _geometry, _info = read_rtdose(truth.dose_files[0])
    our_offsets = (
        ours.grid.index_to_lps(np.c_[np.zeros((len(offsets), 2)), np.arange(len(offsets))]) - truth.dose_origin
    ) @ truth.dose_normal
    np.testing.assert_allclose(our_offsets, offsets, atol=1e-6)
