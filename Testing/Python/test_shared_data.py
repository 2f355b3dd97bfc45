"""The real DICOM-RT sets in ../shared/data (written by others): skipped where they are absent."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_case, voxel_points
from DoseAlignLib.batch import export_folder
from DoseAlignLib.dicom.rtdose import read_rtdose
from DoseAlignLib.dicom.scan import scan_folder
from DoseAlignLib.errors import UnitsError
from DoseAlignLib.link.cases import form_cases
from DoseAlignLib.options import AlignOptions

OPTIONS = AlignOptions(structures=False)


@pytest.fixture(scope="module")
def nelms_export(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("nelms")
    report = export_folder(shared_data / "nelms-dvh-phantom", out, OPTIONS)
    return out, report


def test_rtkit_beam_doses_found_and_summed(shared_data, tmp_path):
    root = shared_data / "rtkit-phantom"
    linked = form_cases(scan_folder(root))
    (case,) = linked.cases
    assert case.summation_type == "BEAM_SUM"
    assert len(case.doses) == 3
    # the fourth dose references beams 1+2+3 (and is all zero): left out, with the reason
    assert len(case.left_out) == 1 and "beams [1, 2, 3]" in case.left_out[0][1]
    assert case.ct is not None and len(case.ct.slices) == 5
    report = export_folder(root, tmp_path, OPTIONS)
    assert report.exit_code == 0
    arrays, meta = load_case(tmp_path / case.case_id)
    assert arrays["ct"].shape == (5, 171, 512)
    assert sorted(meta["dose"]["summed_files"]) == sorted(d.rel_path for d in case.doses)
    # the native sum, read independently, must equal the sum of the three files
    total = sum(read_rtdose(d.path)[0].array.astype(np.float64) for d in case.doses)
    assert meta["dose"]["max_gy_native"] == pytest.approx(total.max(), rel=1e-6)
    # dose planes coincide with CT slices here (75 mm apart): in-plane interpolation only, Dmax cannot grow
    assert arrays["dose"].max() <= total.max() * (1 + 1e-6)
    assert arrays["dose"].max() > 0.5 * total.max()


def test_nelms_three_cts_kept_apart(shared_data):
    scan = scan_folder(shared_data / "nelms-dvh-phantom")
    sizes = sorted(len(s.slices) for s in scan.ct_series)
    assert sizes == [20, 30, 60]
    assert len({s.series_uid for s in scan.ct_series}) == 1, "the three CTs share one SeriesInstanceUID"
    # the AntPost/SupInf pairs share SOPInstanceUIDs: reported with the rule (other doses stay, each its own)
    shared = [d for d in scan.duplicates if "other doses stay, each its own" in d[2]]
    assert len(shared) == 3


def _fit_linear(volume) -> tuple:
    """Least-squares fit D = c + g . p over the voxels with dose; returns (g, c, max residual).

    The Nelms doses are linear and cut at 0 Gy (D = max(0, c + g . p)).
    """
    grid = volume.grid
    k, j, i = grid.shape
    kk, jj, ii = np.meshgrid(np.arange(k), np.arange(j), np.arange(i), indexing="ij")
    points = grid.index_to_lps(np.stack([ii, jj, kk], axis=-1).astype(float)).reshape(-1, 3)
    values = volume.array.reshape(-1).astype(np.float64)
    positive = values > 0
    points, values = points[positive], values[positive]
    design = np.c_[points, np.ones(len(points))]
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    residual = np.abs(design @ coef - values).max()
    return coef[:3], coef[3], residual


def test_nelms_linear_doses_reproduced_at_every_ct_voxel(shared_data, nelms_export):
    out, report = nelms_export
    assert report.exit_code == 0
    assert len(report.rows) == 6
    for row in report.rows:
        arrays, meta = load_case(out / row["case_id"])
        dose_file = shared_data / "nelms-dvh-phantom" / meta["source"]["rtdose_files"][0]
        native, _geometry, _info = read_rtdose(dose_file)
        gradient, constant, residual = _fit_linear(native)
        dmax = native.array.max()
        assert residual < 1e-4 * dmax, "the Nelms doses are exactly linear"
        expected_axis = 1 if "AntPost" in dose_file.name else 2
        assert abs(abs(gradient[expected_axis]) - 1.0) < 1e-6, "1 Gy/mm"
        # every CT voxel inside the dose grid's outer voxel centres gets exactly the linear value
        points = voxel_points(meta)
        index = native.grid.lps_to_index(points)
        sizes = np.array(native.grid.shape[::-1]) - 1
        inside = np.all((index >= -1e-6) & (index <= sizes + 1e-6), axis=-1)
        assert inside.sum() > 10000
        linear = points @ gradient + constant
        # trilinear interpolation is exact where all neighbouring dose voxels are on one side of the cut at 0
        step = native.grid.spacing.max()
        positive = inside & (linear >= step)
        zero = inside & (linear <= -step)
        assert positive.sum() > 10000 and zero.sum() > 1000
        error = np.abs(arrays["dose"][positive] - linear[positive]).max()
        assert error < 1e-4 * dmax, f"{row['case_id']}: {error:.3g} Gy"
        assert np.all(arrays["dose"][zero] == 0)
        # and nothing beyond its half-voxel rim
        beyond = np.any((index < -0.5 - 1e-3) | (index > sizes + 0.5 + 1e-3), axis=-1)
        assert np.all(arrays["dose"][beyond] == 0)


def test_nelms_dose_pairs_with_matching_ct(shared_data, nelms_export):
    out, report = nelms_export
    chosen = {row["files"].split("/")[-1]: row["ct_folder"] for row in report.rows}
    assert chosen["Linear_AntPost_1mm_Aligned.dcm"] == "CT/1 mm CT"
    assert chosen["Linear_SupInf_2mm_Aligned.dcm"] == "CT/2 mm CT"


@pytest.mark.parametrize("name", ["rtdose_rle.dcm", "rtdose_expb.dcm"])
def test_pydicom_compressed_and_big_endian_doses_read(shared_data, name):
    folder = shared_data / "pydicom-rt-objects"
    reference, _, _ = read_rtdose(folder / "rtdose.dcm", allow_relative=True)
    other, _, info = read_rtdose(folder / name, allow_relative=True)
    assert info.units == "RELATIVE"
    np.testing.assert_array_equal(other.array, reference.array)
    assert other.grid.equal(reference.grid)
    assert reference.array.max() > 0


def test_pydicom_relative_dose_refused_with_reason(shared_data):
    with pytest.raises(UnitsError) as caught:
        read_rtdose(shared_data / "pydicom-rt-objects" / "rtdose.dcm")
    message = str(caught.value)
    assert "rtdose.dcm" in message and "RELATIVE" in message and "--allow-relative" in message


def test_pydicom_orphan_dose_reported(shared_data, tmp_path):
    report = export_folder(shared_data / "pydicom-rt-objects", tmp_path, OPTIONS)
    assert report.exit_code == 1
    (row,) = report.rows
    assert row["status"] == "failed"
    assert row["reason"].startswith("RTDOSE rtdose.dcm: no CT with frame of reference")
    assert {kind for _path, kind, _reason in report.orphans} >= {"RTPLAN", "RTSTRUCT", "CT"}
