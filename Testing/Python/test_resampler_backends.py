"""One engine path for every backend: a case differs between backends only in the resampler.

The stand-in resampler here behaves as an ITK image does (and so Slicer's Resample CLI): it places
frames at evenly spaced positions and knows nothing of uneven frame offsets. Handed an uneven dose,
it would misplace frames; the engine must put such sources on an even grid first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from conftest import interior_mask, voxel_points
from DoseAlignLib.api import (
    ENGINE_RESAMPLER,
    AlignOptions,
    Grid,
    PhantomSpec,
    form_cases,
    resample,
    run_case,
    scan_files,
    scan_folder,
    write_phantom,
)

UNEVEN = [0, 3, 6, 9, 15, 18, 21, 24, 27, 30, 36, 39, 42, 45, 48, 51, 54, 57, 60, 63]


@dataclass
class EvenGridsOnly:
    """Resamples as an ITK image would: frame k at origin + k * (first step) along the normal."""

    name: str = "even-grids-only"
    uniform_sources_only: bool = True
    calls: list = field(default_factory=list)

    def __call__(self, volume, target, interpolator, *, fill, dtype):
        grid = volume.grid
        self.calls.append((grid.is_uniform and grid.is_orthogonal(), volume.description))
        step = float(grid.k_offsets[1] - grid.k_offsets[0]) if grid.shape[0] > 1 else 1.0
        spacing = np.array([grid.spacing[0], grid.spacing[1], step])
        as_itk = Grid.from_spacing(grid.shape, spacing, grid.origin, grid.direction, grid.frame_of_reference_uid)
        return resample(volume.with_array(volume.array, grid=as_itk), target, interpolator, fill=fill, dtype=dtype)


def _case(tmp_path, **spec):
    truth = write_phantom(tmp_path / "dicom", PhantomSpec(with_structures=False, **spec))
    (case,) = [c for c in form_cases(scan_folder(tmp_path / "dicom")).cases if not c.error]
    return truth, case


def _dose_error(truth, result) -> float:
    meta = {"shape": list(result.dose.grid.shape), "ijk_to_lps": result.dose.grid.affine.tolist()}
    points = voxel_points(meta)
    interior = interior_mask(truth, points)
    assert interior.sum() > 500
    expected = truth.dose_at(points)
    return float(np.abs(result.dose.array[interior] - expected[interior]).max() / expected[interior].max())


def test_uneven_dose_frames_are_evened_by_the_engine_before_a_uniform_only_resampler(tmp_path):
    truth, case = _case(tmp_path, dose_frame_offsets=UNEVEN)
    resampler = EvenGridsOnly()
    result = run_case(case, AlignOptions(structures=False), resampler=resampler)
    assert resampler.calls and all(uniform for uniform, _ in resampler.calls), resampler.calls
    assert _dose_error(truth, result) <= 1e-4
    assert result.meta["resampling"]["backend"] == "even-grids-only"
    (step,) = result.meta["resampling"]["before_backend"]
    assert "uneven slices" in step and "3 mm" in step


def test_the_stand_in_would_misplace_uneven_frames_without_the_engine_step(tmp_path):
    # the check above could not fail if the stand-in were harmless: handed the uneven dose directly, it is wrong
    truth, case = _case(tmp_path, dose_frame_offsets=UNEVEN)
    careless = EvenGridsOnly(uniform_sources_only=False)
    result = run_case(case, AlignOptions(structures=False), resampler=careless)
    assert _dose_error(truth, result) > 0.01


def test_every_backend_gets_the_same_units_sum_and_meta(tmp_path):
    truth, case = _case(tmp_path, write_beam_doses=True, dose_shape="linear")
    options = AlignOptions(structures=False, reference="dose")
    engine = run_case(case, options)
    other = run_case(case, options, resampler=EvenGridsOnly())
    np.testing.assert_allclose(other.dose.array, engine.dose.array, atol=1e-5 * float(engine.dose.array.max()))
    assert np.abs(other.ct.array.astype(int) - engine.ct.array).max() <= 1
    assert other.dose.units == engine.dose.units == "GY"
    strip = ("backend",)
    assert {k: v for k, v in other.meta["resampling"].items() if k not in strip} == {
        k: v for k, v in engine.meta["resampling"].items() if k not in strip
    }
    assert sorted(other.meta) == sorted(engine.meta) and other.meta["dose"] == engine.meta["dose"]
    assert engine.meta["resampling"]["backend"] == ENGINE_RESAMPLER.name == "engine"


def test_scan_files_reads_only_the_given_files(tmp_path):
    truth = write_phantom(tmp_path / "a" / "dicom", PhantomSpec(patient_id="A", with_structures=False))
    write_phantom(tmp_path / "b", PhantomSpec(patient_id="B", with_structures=False))
    files = list(truth.ct_files) + list(truth.dose_files)
    scan = scan_files(files)
    assert len(scan.objects) == len(files) and {o.patient_id for o in scan.objects} == {"A"}
    (case,) = form_cases(scan).cases
    assert case.ct is not None and case.error is None
    with pytest.raises(Exception, match="no files"):
        scan_files([])
