"""Training sets that load the first time: fixed ROI channels, collate-safe samples, grid options.

The cohort is written by the phantom generator with a different ROI set per patient; masks are
checked against masks made here from the phantom's analytic shapes (not from the engine).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import interior_mask, load_case, voxel_points
from DoseAlignLib.batch import export_folder
from DoseAlignLib.cli import main
from DoseAlignLib.options import AlignOptions
from DoseAlignLib.output.formats import ExportFormats
from DoseAlignLib.phantom import PhantomSpec, write_phantom

SMALL = {"ct_size": (40, 36, 20), "ct_pixel_spacing": (2.0, 2.0), "ct_slice_spacing": 3.0, "dose_size": (26, 24, 16)}
ROIS = ["PTV", "Organ 2", "cord", "Brainstem"]  # Brainstem: no patient has it; "cord" is "Cord" in any case


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Three patients with different ROI sets: two extra organs, none, and no structure set at all."""
    root = tmp_path_factory.mktemp("rois")
    write_phantom(root / "a", PhantomSpec(patient_id="RA", extra_organs=2, seed=1, **SMALL))
    write_phantom(root / "b", PhantomSpec(patient_id="RB", patient_position="FFS", seed=2, **SMALL))
    write_phantom(root / "c", PhantomSpec(patient_id="RC", with_structures=False, seed=3, **SMALL))
    return root


def _rows(out: Path) -> list:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        return [r for r in csv.DictReader(handle) if r["status"] == "ok"]


def test_fixed_channels_in_every_case_and_format(cohort, tmp_path):
    pytest.importorskip("nibabel")
    h5py = pytest.importorskip("h5py")
    nib = pytest.importorskip("nibabel")
    out = tmp_path / "out"
    formats = ExportFormats(("nifti", "hdf5"))
    report = export_folder(cohort, out, AlignOptions(rois=ROIS), formats=formats, qa_png=False)
    assert report.exit_code == 0 and len(report.rows) == 3
    datalist = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert list(datalist["labels"].values()) == ROIS and "label_note" not in datalist
    entries = {Path(e["meta"]).parent.name: e for e in datalist["training"] + datalist["validation"]}
    for row in report.rows:
        folder = out / row["case_id"]
        arrays, meta = load_case(folder)
        structures = meta["structures"]
        assert structures["names"] == ROIS
        k, j, i = meta["shape"]
        masks = np.unpackbits(arrays["masks"], axis=-1, count=i).astype(bool)
        assert masks.shape == (4, k, j, i)
        assert arrays["dvh_output"].shape[0] == 4
        # what each patient has, from its phantom (not from the engine)
        has = {"RA": [True, True, True, False], "RB": [True, False, True, False], "RC": [False] * 4}[row["patient"]]
        assert structures["roi_present"] == has
        for n, present in enumerate(has):
            assert masks[n].any() == present, (row["patient"], ROIS[n])
            if not present:
                assert not arrays["dvh_output"][n].any()
                assert structures["rois"][n]["absent"]
        if row["patient"] == "RA":
            # the PTV channel is the phantom's sphere (to within the voxels its surface cuts)
            truth_points = voxel_points(meta)
            spec = PhantomSpec(patient_id="RA", extra_organs=2, seed=1, **SMALL)
            truth = write_phantom(tmp_path / "truth", spec)
            ptv = truth.roi("PTV")
            inside = np.linalg.norm(truth_points - ptv.center_lps, axis=-1) < ptv.params["radius"] - 2.5
            assert inside.sum() > 20 and masks[0][inside].all()
            assert "Ring" in structures["channels"]["not_in_rois"]
        # NIfTI: one file per channel, in order; HDF5: the channels and roi_present
        entry = entries[row["case_id"]]
        assert [Path(p).name for p in entry["label"]] == [
            "PTV.nii.gz",
            "Organ_2.nii.gz",
            "cord.nii.gz",
            "Brainstem.nii.gz",
        ]
        for n, path in enumerate(entry["label"]):
            data = np.transpose(np.asanyarray(nib.load(str(out / path)).dataobj), (2, 1, 0))
            np.testing.assert_array_equal(data.astype(bool), masks[n])
        with h5py.File(folder / "case.h5", "r") as handle:
            assert [v.decode() if isinstance(v, bytes) else v for v in handle.attrs["mask_names"]] == ROIS
            assert handle.attrs["roi_present"].astype(bool).tolist() == has
            assert handle["masks"].shape == (4, k, j, i)


def test_without_rois_no_common_roi_says_how_to_fix_it(cohort, tmp_path, capsys):
    pytest.importorskip("nibabel")
    out = tmp_path / "out"
    assert main(["export", str(cohort), str(out), "--format", "nifti", "--quiet", "--no-qa-png"]) == 0
    printed = capsys.readouterr().out
    datalist = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert datalist["labels"] == {}
    assert all("label" not in e for e in datalist["training"] + datalist["validation"])
    assert "--rois" in datalist["label_note"] and "no ROI is common to all 3 cases" in datalist["label_note"]
    assert "note: dataset.json: no ROI is common" in printed and "--rois" in printed


def test_default_collate_batch_size_1_on_any_export(cohort, tmp_path):
    """The default collate takes every sample (no None, no nested metadata), also without --rois."""
    torch = pytest.importorskip("torch")
    from DoseAlignLib.api import DoseAlignDataset

    out = tmp_path / "out"
    assert export_folder(cohort, out, AlignOptions(), qa_png=False).exit_code == 0
    seen = []
    for batch in torch.utils.data.DataLoader(DoseAlignDataset(out), batch_size=1):
        assert batch["ct"].ndim == 5 and batch["ct"].shape[:2] == (1, 1)
        meta = json.loads(batch["meta"][0])
        assert batch["ct"].shape[2:] == tuple(meta["shape"])
        seen.append(batch["case_id"][0])
    assert len(seen) == 3


def test_default_collate_any_batch_size_on_a_fixed_grid(cohort, tmp_path):
    torch = pytest.importorskip("torch")
    from DoseAlignLib.api import DoseAlignDataset

    out = tmp_path / "out"
    options = AlignOptions(reference="custom", custom_box="cube", custom_size=(24,), custom_spacing=(3.0,), rois=ROIS)
    assert export_folder(cohort, out, options, qa_png=False).exit_code == 0
    loader = torch.utils.data.DataLoader(DoseAlignDataset(out), batch_size=2)
    batches = list(loader)
    assert [b["ct"].shape[0] for b in batches] == [2, 1]
    first = batches[0]
    assert first["masks"].shape == (2, 4, 24, 24, 24) and first["masks"].dtype == torch.bool
    assert first["roi_present"].shape == (2, 4)
    assert first["ijk_to_lps"].shape == (2, 4, 4) and first["spacing"].shape == (2, 3)
    assert isinstance(first["meta"], list) and json.loads(first["meta"][1])["shape"] == [24, 24, 24]


def test_dataset_rois_choose_channels_of_any_export(cohort, tmp_path):
    """``rois=`` gives fixed channels also for an export made without --rois."""
    from DoseAlignLib.api import DoseAlignDataset

    out = tmp_path / "out"
    assert export_folder(cohort, out, AlignOptions(), qa_png=False).exit_code == 0
    plain = DoseAlignDataset(out, as_tensors=False)
    fixed = DoseAlignDataset(out, as_tensors=False, rois=["organ 2", "PTV", "Nothing"])
    for n in range(len(plain)):
        a, b = plain[n], fixed[n]
        assert b["mask_names"] == ["organ 2", "PTV", "Nothing"]
        names = [m.lower() for m in a["mask_names"]]
        for channel, name in enumerate(["organ 2", "ptv", "nothing"]):
            if name in names:
                np.testing.assert_array_equal(b["masks"][channel], a["masks"][names.index(name)])
                assert b["roi_present"][channel]
            else:
                assert not b["masks"][channel].any() and not b["roi_present"][channel]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--reference", "ct", "--spacing", "2"],
            "--spacing describes a custom grid and conflicts with --reference ct",
        ),
        (["--reference", "dose", "--size", "64", "--spacing", "2"], "conflict with --reference dose"),
        (["--box", "dose", "--size", "64", "--spacing", "2"], "--size apply to a cube (--box cube), not to --box dose"),
        (["--size", "64"], "--size implies a custom grid, which needs --spacing"),
        (["--centre", "dmax"], "--centre implies a custom grid, which needs --spacing"),
        (["--reference", "custom"], "--reference custom asks for a custom grid, which needs --spacing"),
        (["--rois", "PTV,ptv"], "listed twice"),
        (["--rois", "PTV", "--no-structures"], "needs the structures"),
        (["--reference", "ct", "--centre", "ptv"], "--centre describes a custom grid"),
        (["--box", "ct", "--centre", "dmax", "--spacing", "2"], "--centre apply to a cube"),
    ],
)
def test_grid_option_conflicts_are_usage_errors(cohort, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        main(["export", str(cohort), str(tmp_path / "out"), "--quiet", *argv])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_custom_options_imply_reference_custom(cohort, tmp_path):
    out = tmp_path / "out"
    assert (
        main(["export", str(cohort / "b"), str(out), "--quiet", "--no-qa-png", "--size", "20", "--spacing", "4"]) == 0
    )
    (row,) = _rows(out)
    _arrays, meta = load_case(out / row["case_id"])
    assert meta["shape"] == [20, 20, 20] and meta["spacing"] == [4.0, 4.0, 4.0]
    assert meta["options"]["reference"] == "custom" and meta["options"]["custom_box"] == "cube"
    assert meta["spacing_kji"] == meta["spacing"][::-1]


# ---- target-centred cubes and crops ------------------------------------------------------------------


def _grid_centre(meta: dict) -> np.ndarray:
    affine = np.array(meta["ijk_to_lps"])
    k, j, i = meta["shape"]
    return affine[:3, :3] @ (np.array([i, j, k]) - 1) / 2.0 + affine[:3, 3]


@pytest.fixture(scope="module")
def offset_target(tmp_path_factory):
    """A study whose PTV is far from the dose grid's centre (as in a clinical case: the cube used to miss it)."""
    root = tmp_path_factory.mktemp("centre")
    spec = PhantomSpec(
        anatomy="patient",
        ct_size=(96, 80, 30),
        ct_pixel_spacing=(4.0, 4.0),
        ct_slice_spacing=4.0,
        dose_size=(64, 44, 32),
        dose_pixel_spacing=(6.0, 6.0),
        dose_frame_spacing=4.0,
        dose_center_offset_lps=(0.0, -20.0, 0.0),
        dose_shape="plan",
        seed=7,
    )
    truth = write_phantom(root / "dicom", spec)
    return root / "dicom", truth


def _export_one(folder: Path, out: Path, options: AlignOptions) -> tuple:
    report = export_folder(folder, out, options, qa_png=False)
    assert report.exit_code == 0, report.rows
    (row,) = report.rows
    return load_case(out / row["case_id"])


def test_cube_centred_on_the_ptv_by_default(offset_target, tmp_path):
    folder, truth = offset_target
    ptv = truth.roi("PTV")
    options = AlignOptions(reference="custom", custom_box="cube", custom_size=(32,), custom_spacing=(2.0,))
    arrays, meta = _export_one(folder, tmp_path / "auto", options)
    # the PTV sphere's box, with half a slab beyond the outer contour planes: centred on the sphere
    np.testing.assert_allclose(_grid_centre(meta), ptv.center_lps, atol=2.0)
    assert meta["resampling"]["centre"]["on"] == "ptv" and "PTV" in meta["resampling"]["reference_grid"]
    assert np.linalg.norm(truth.dose_corners_lps.mean(axis=0) - ptv.center_lps) > 50, "the test needs an offset PTV"
    # the whole PTV and its high dose are in the cube
    assert arrays["dose"].max() > 0.99 * truth.dose_at(ptv.center_lps[np.newaxis])[0]
    dmax_arrays, dmax = _export_one(folder, tmp_path / "dmax", AlignOptions(**{**_cube(options), "centre": "dmax"}))
    centre = dmax["resampling"]["centre"]
    assert centre["on"] == "dmax"
    np.testing.assert_allclose(_grid_centre(dmax), centre["centre_lps"], atol=1e-6)
    assert np.linalg.norm(_grid_centre(dmax) - ptv.center_lps) < ptv.params["radius"] + 6.0  # a PTV hot spot
    assert centre["dmax_gy"] == pytest.approx(float(dmax_arrays["dose"].max()), rel=0.02)
    _arrays, cord = _export_one(
        folder, tmp_path / "cord", AlignOptions(**{**_cube(options), "centre": "roi:spinalcord"})
    )
    cord_roi = truth.roi("SpinalCord")
    centre = _grid_centre(cord)
    rel = centre - cord_roi.center_lps
    assert abs(rel @ cord_roi.u_dir) < 1.5 and abs(rel @ cord_roi.v_dir) < 1.5  # on the cord's axis
    _arrays, body = _export_one(folder, tmp_path / "body", AlignOptions(**{**_cube(options), "centre": "body"}))
    external = truth.roi("External")
    rel = _grid_centre(body) - external.center_lps
    assert abs(rel @ external.u_dir) < 1.5 and abs(rel @ external.v_dir) < 1.5


def _cube(options: AlignOptions) -> dict:
    return {
        "reference": "custom",
        "custom_box": "cube",
        "custom_size": options.custom_size,
        "custom_spacing": options.custom_spacing,
    }


def test_cube_without_ptv_is_centred_on_the_dose(tmp_path):
    spec = PhantomSpec(patient_id="NOPTV", dose_shape="plan", with_structures=False, seed=8, **SMALL)
    truth = write_phantom(tmp_path / "dicom", spec)
    options = AlignOptions(reference="custom", custom_box="cube", custom_size=(16,), custom_spacing=(2.0,))
    _arrays, meta = _export_one(tmp_path / "dicom", tmp_path / "out", options)
    centre = meta["resampling"]["centre"]
    assert centre["on"] == "dose" and centre["threshold_gy"] > 0
    # the plan-like dose is a ball around the phantom's target (no RTSTRUCT here): the cube sits on it
    assert np.linalg.norm(_grid_centre(meta) - truth.roi("PTV").center_lps) < 3.0
    failed = export_folder(
        tmp_path / "dicom", tmp_path / "ptv", AlignOptions(**{**_cube(options), "centre": "ptv"}), qa_png=False
    )
    assert failed.exit_code == 1 and "--centre ptv: the case has no PTV" in failed.rows[0]["reason"]


@pytest.mark.parametrize("crop", ["body", "dose"])
def test_crop_keeps_the_voxels_and_moves_the_affine(offset_target, tmp_path, crop):
    folder, truth = offset_target
    full, full_meta = _export_one(folder, tmp_path / "full", AlignOptions())
    cut, meta = _export_one(folder, tmp_path / crop, AlignOptions(crop=crop, crop_margin_mm=4.0))
    info = meta["resampling"]["crop"]
    assert info["applied"] and info["uncropped_shape"] == full_meta["shape"]
    (k0, k1), (j0, j1), (i0, i1) = info["box_kji"]
    assert meta["shape"] == [k1 - k0, j1 - j0, i1 - i0] and np.prod(meta["shape"]) < np.prod(full_meta["shape"])
    # the same voxels, bit for bit (the CT grid cut, nothing resampled), at the same patient positions
    np.testing.assert_array_equal(cut["ct"], full["ct"][k0:k1, j0:j1, i0:i1])
    np.testing.assert_array_equal(cut["dose"], full["dose"][k0:k1, j0:j1, i0:i1])
    np.testing.assert_allclose(voxel_points(meta), voxel_points(full_meta)[k0:k1, j0:j1, i0:i1], atol=1e-6)
    k, j, i = full_meta["shape"]
    body = np.unpackbits(full["body"], axis=-1, count=i).astype(bool)
    if crop == "body":  # every body voxel kept, and no more than the margin around it
        assert body[k0:k1, j0:j1, i0:i1].sum() == body.sum()
        assert not body[:, j0 : j0 + 1].any() and not body[:, :, i0 : i0 + 1].any()  # the margin is air
    else:  # every voxel above 5 % of the maximum kept
        high = full["dose"] >= 0.05 * full["dose"].max()
        assert high[k0:k1, j0:j1, i0:i1].sum() == high.sum()
        assert "dose_outside_grid" not in [f["flag"] for f in meta["audit"]["flags"]] or crop == "dose"


# ---- compact storage ----------------------------------------------------------------------------------


def test_float16_compressed_and_npy_layouts(offset_target, tmp_path):
    folder, _truth = offset_target
    plain, plain_meta = _export_one(folder, tmp_path / "plain", AlignOptions())
    half, half_meta = _export_one(folder, tmp_path / "half", AlignOptions(dose_dtype="float16"))
    assert half["dose"].dtype == np.float16
    dose_meta = half_meta["arrays"]["dose"]
    error = np.abs(half["dose"].astype(np.float32) - plain["dose"])
    assert dose_meta["float16_max_abs_error"] == pytest.approx(float(error.max()), abs=1e-7)
    assert np.all(error <= 2.0**-11 * np.abs(plain["dose"]) + 2.0**-25)  # the bound meta.json states
    assert dose_meta["float16_error_bound"]["relative"] == 2.0**-11
    packed, packed_meta = _export_one(folder, tmp_path / "zip", AlignOptions(compress=True))
    for key in plain:
        np.testing.assert_array_equal(packed[key], plain[key])
    (row,) = _rows(tmp_path / "zip")
    assert (tmp_path / "zip" / row["case_id"] / "pair.npz").stat().st_size < 0.5 * (
        tmp_path / "plain" / row["case_id"] / "pair.npz"
    ).stat().st_size
    assert packed_meta["storage"]["compressed"] is True
    out = tmp_path / "npy"
    report = export_folder(folder, out, AlignOptions(layout="npy"), qa_png=False)
    case = out / report.rows[0]["case_id"]
    assert not (case / "pair.npz").exists()
    for key, value in plain.items():
        mapped = np.load(case / f"{key}.npy", mmap_mode="r")
        assert isinstance(mapped, np.memmap)
        np.testing.assert_array_equal(mapped, value)
    # the folder reads back as any case folder: resume adds formats from the .npy files
    pytest.importorskip("nibabel")
    again = export_folder(folder, out, AlignOptions(layout="npy"), resume=True, formats=ExportFormats(("nifti",)))
    assert again.exit_code == 0 and (case / "ct.nii.gz").is_file()
    meta = json.loads((case / "meta.json").read_text(encoding="utf-8"))
    assert "npy" in meta["exports"] and "nifti" in meta["exports"]


def test_storage_option_conflicts():
    with pytest.raises(ValueError, match="memory-mapped"):
        AlignOptions(layout="npy", compress=True)
    with pytest.raises(ValueError, match="cube"):
        AlignOptions(reference="custom", custom_spacing=(2.0,), custom_box="cube", crop="body")


# ---- plan sums ------------------------------------------------------------------------------------------


def test_sum_plans_makes_one_case_of_initial_and_boost(tmp_path):
    spec = PhantomSpec(patient_id="SUM", boost_fraction=0.25, seed=9, **SMALL)
    truth = write_phantom(tmp_path / "dicom", spec)
    separate = export_folder(tmp_path / "dicom", tmp_path / "one-each", AlignOptions(), qa_png=False)
    assert sorted(r["summation_type"] for r in separate.rows) == ["PLAN", "PLAN"], "default: one case per plan"
    summed = export_folder(tmp_path / "dicom", tmp_path / "sum", AlignOptions(sum_plans=True), qa_png=False)
    (row,) = summed.rows
    assert row["status"] == "ok" and row["summation_type"] == "PLAN_SUM"
    arrays, meta = load_case(tmp_path / "sum" / row["case_id"])
    dose = meta["dose"]
    assert dose["summation_type"] == "PLAN_SUM" and len(dose["summed_files"]) == 2
    assert {p["plan_label"] for p in dose["plans"]} == {"PHANTOM", "BOOST"}
    assert {p["prescription_gy"] for p in dose["plans"]} == {60.0, 15.0}
    # the sum is 1.25 x the plan's linear field, exact inside the dose grid
    points = voxel_points(meta)
    inside = interior_mask(truth, points)
    assert inside.sum() > 100
    expected = 1.25 * truth.dose_at(points[inside])
    np.testing.assert_allclose(arrays["dose"][inside], expected, atol=2e-4 * expected.max())


@pytest.mark.parametrize(
    "relationship, intent, summed, said",
    [
        ("ALTERNATIVE", None, False, "RTPlanRelationship ALTERNATIVE"),
        ("VERIFIED_PLAN", None, False, "RTPlanRelationship VERIFIED_PLAN"),
        (None, "VERIFICATION", False, "PlanIntent VERIFICATION"),
        ("PREDECESSOR", None, True, "RTPlanRelationship PREDECESSOR"),
        ("CONCURRENT", None, True, None),
        ("PRIOR", None, True, None),
    ],
)
def test_sum_plans_reads_how_the_plans_are_related(tmp_path, relationship, intent, summed, said):
    """Ninth hostile trial I1: --sum-plans added a plan and its ALTERNATIVE (one of them is given) into one dose no
    patient received, status ok, no word: (300A,0055) RTPlanRelationship was not read. An alternative, a
    verification plan (VERIFIED_PLAN, or PlanIntent VERIFICATION) is not summed (one case each, a warning why);
    a plan derived from the other (PREDECESSOR) is summed with a warning; CONCURRENT and PRIOR are summed."""
    import pydicom
    from pydicom.dataset import Dataset

    truth = write_phantom(tmp_path / "dicom", PhantomSpec(patient_id="REL", boost_fraction=0.25, seed=9, **SMALL))
    first = pydicom.dcmread(str(truth.plan_file))
    boost = pydicom.dcmread(str(truth.boost_plan_file))
    if relationship is not None:
        item = Dataset()
        item.ReferencedSOPClassUID = first.SOPClassUID
        item.ReferencedSOPInstanceUID = first.SOPInstanceUID
        item.RTPlanRelationship = relationship
        boost.ReferencedRTPlanSequence = [item]
    if intent is not None:
        boost.PlanIntent = intent
    boost.save_as(str(truth.boost_plan_file))
    report = export_folder(tmp_path / "dicom", tmp_path / "out", AlignOptions(sum_plans=True), qa_png=False)
    assert all(r["status"] == "ok" for r in report.rows), report.rows
    kinds = sorted(r["summation_type"] for r in report.rows)
    assert kinds == (["PLAN_SUM"] if summed else ["PLAN", "PLAN"])
    for row in report.rows:
        if said is None:
            assert "plan" not in row["warnings"].lower(), row["warnings"]
        else:
            assert said in row["warnings"] and truth.boost_plan_file.name in row["warnings"], row["warnings"]


@pytest.mark.parametrize("seed", [0, 1, 4, 5])
def test_cases_without_a_patient_id_are_split_by_their_ct_study(tmp_path, seed):
    """Ninth hostile trial I3: with an empty PatientID (Type 2, anonymizers blank it) each case was a patient of its
    own, so the two plans of one CT went to both sides of the split (the same CT, body and structures in training
    and validation), while a pseudonymized export kept them together. Such cases are grouped by their CT's study,
    in dataset.json and in the loader's own split alike."""
    from DoseAlignLib.training import DoseAlignDataset

    for n in range(4):
        write_phantom(tmp_path / "in" / f"p{n}", PhantomSpec(patient_id="", boost_fraction=0.25, seed=30 + n, **SMALL))
    out = tmp_path / "out"
    nifti = ExportFormats(("nifti",), split_seed=seed, validation_fraction=0.5)
    report = export_folder(tmp_path / "in", out, AlignOptions(), formats=nifti, qa_png=False)
    assert len(report.rows) == 8 and all(r["status"] == "ok" for r in report.rows), report.rows
    study_of = {}
    for row in report.rows:
        assert row["patient"] == ""
        study_of[row["case_id"]] = json.loads((out / row["case_id"] / "meta.json").read_text())["source"]["study_uid"]
    assert len(set(study_of.values())) == 4
    datalist = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    sides = {side: {Path(e["meta"]).parent.name for e in datalist[side]} for side in ("training", "validation")}
    loader = {
        side: set(DoseAlignDataset(out, side, as_tensors=False, seed=seed, validation_fraction=0.5).case_ids)
        for side in ("training", "validation")
    }
    (out / "dataset.json").unlink()  # the loader's own split, computed from the folder
    computed = {
        side: set(DoseAlignDataset(out, side, as_tensors=False, seed=seed, validation_fraction=0.5).case_ids)
        for side in ("training", "validation")
    }
    for split in (sides, loader, computed):
        assert split["training"] and split["validation"]
        training = {study_of[c] for c in split["training"]}
        validation = {study_of[c] for c in split["validation"]}
        assert not training & validation, "one CT's cases on both sides of the split"
        assert len(split["training"]) == len(split["validation"]) == 4
    assert sides == loader == computed


def test_a_plan_copied_under_new_uids_is_summed_with_a_warning(tmp_path):
    """Ninth hostile trial (I1's variant): a plan copied under new UIDs (same label, no reference to the first) with
    its dose copied too was summed by --sum-plans into twice the dose, ok, no word. Two plans may well give the
    same dose on purpose, so the sum stands, with a case warning naming both files."""
    import pydicom
    from pydicom.uid import generate_uid

    truth = write_phantom(tmp_path / "dicom", PhantomSpec(patient_id="COPY", seed=12, **SMALL))
    plan = pydicom.dcmread(str(truth.plan_file))
    plan.SOPInstanceUID = plan.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    plan.save_as(str(tmp_path / "dicom" / "copy-plan.dcm"))
    plan_dose = next(p for p in (tmp_path / "dicom").iterdir() if "PLAN" in _summation(p))
    dose = pydicom.dcmread(str(plan_dose))
    dose.SOPInstanceUID = dose.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID = plan.SOPInstanceUID
    dose.save_as(str(tmp_path / "dicom" / "copy-dose.dcm"))
    report = export_folder(tmp_path / "dicom", tmp_path / "out", AlignOptions(sum_plans=True), qa_png=False)
    (row,) = report.rows
    assert row["status"] == "ok" and row["summation_type"] == "PLAN_SUM", row
    assert "holds the same dose as" in row["warnings"] and "copy-dose.dcm" in row["warnings"], row["warnings"]
    assert plan_dose.name in row["warnings"] and "--sum-plans" in row["warnings"]
    single = export_folder(tmp_path / "dicom", tmp_path / "one-each", AlignOptions(), qa_png=False)
    assert all("same dose" not in r["warnings"] for r in single.rows)


def test_plans_of_one_plan_twice_are_not_summed(tmp_path):
    import shutil

    write_phantom(tmp_path / "dicom", PhantomSpec(patient_id="TWICE", seed=10, **SMALL))
    plan_dose = next(p for p in (tmp_path / "dicom").iterdir() if "PLAN" in _summation(p))
    import pydicom

    ds = pydicom.dcmread(str(plan_dose))
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".2"  # a second PLAN dose of the same plan (a recalculation)
    ds.save_as(str(tmp_path / "dicom" / "copy.dcm"))
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    report = export_folder(tmp_path / "dicom", tmp_path / "out", AlignOptions(sum_plans=True), qa_png=False)
    assert [r["summation_type"] for r in report.rows] == ["PLAN", "PLAN"]
    meta = json.loads((tmp_path / "out" / report.rows[0]["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert any("same plan" in note and "twice" in note for note in meta["links"])
    # and without --sum-plans, each of the two cases says the other holds the plan's other dose (the eighty-fourth
    # hostile trial's note: two ok cases of one plan without a word)
    single = export_folder(tmp_path / "dicom", tmp_path / "one-each", AlignOptions(), qa_png=False)
    assert [r["status"] for r in single.rows] == ["ok", "ok"]
    for row, other in zip(single.rows, reversed(single.rows)):
        assert "has 1 other PLAN dose" in row["warnings"] and other["case_id"] in row["warnings"], row["warnings"]


@pytest.mark.parametrize("plan_file", ["boost", "first"])
def test_a_plan_not_in_the_input_is_not_summed(tmp_path, plan_file):
    """Seventieth hostile trial BR6: --sum-plans added a PLAN dose whose RTPLAN is not in the input to the doses of the
    plan that is (there the same dose under another reference): 126 Gy for 63, ok, no warning. Whether such a dose is
    another plan's, given to the patient, cannot be checked: not summed, and the warning says why."""
    truth = write_phantom(tmp_path / "dicom", PhantomSpec(patient_id="GONE", boost_fraction=0.25, seed=9, **SMALL))
    (truth.boost_plan_file if plan_file == "boost" else truth.plan_file).unlink()
    report = export_folder(tmp_path / "dicom", tmp_path / "out", AlignOptions(sum_plans=True), qa_png=False)
    assert sorted(r["summation_type"] for r in report.rows) == ["PLAN", "PLAN"], report.rows
    assert all(r["status"] == "ok" for r in report.rows), report.rows
    assert all("not in the input" in r["warnings"] and "--sum-plans" in r["warnings"] for r in report.rows)


def test_a_plan_on_the_ct_whose_case_failed_is_said_to_be_missing_from_the_sum(tmp_path):
    """Seventy-fourth hostile trial BV3: with --sum-plans, the first plan's BEAM sum was refused (a beam's dose
    missing), and the boost plan on the same CT was exported alone, ok, without a word that the sum lacks a plan. Its
    case says which case on its CT failed and was not summed."""
    truth = write_phantom(
        tmp_path / "dicom",
        PhantomSpec(patient_id="PART", boost_fraction=0.25, seed=9, write_beam_doses=True, **SMALL),
    )
    for path, beam in zip(truth.dose_files, truth.dose_beam_numbers):
        if beam is None or beam == max(b for b in truth.dose_beam_numbers if b is not None):
            path.unlink()  # the first plan's PLAN dose and one beam's dose
    report = export_folder(tmp_path / "dicom", tmp_path / "out", AlignOptions(sum_plans=True), qa_png=False)
    by_status = {r["status"]: r for r in report.rows}
    assert sorted(by_status) == ["failed", "ok"], report.rows
    assert "not summed with the dose of case" in by_status["ok"]["warnings"], by_status["ok"]
    assert by_status["failed"]["case_id"] in by_status["ok"]["warnings"]


def test_a_plan_on_the_ct_whose_case_failed_for_its_patient_id_is_said_to_be_missing(tmp_path):
    """Seventy-sixth hostile trial BX5 (BV3's fix passed): the main plan's dose of another PatientID failed its case,
    and the boost on the same CT was exported alone, ok, without a word (the failed case was looked for under its
    dose's patient)."""
    import dicom_damage as dd

    truth = write_phantom(tmp_path / "dicom", PhantomSpec(patient_id="PART", boost_fraction=0.25, seed=9, **SMALL))
    main_dose = next(p for p in truth.dose_files if Path(p) != Path(truth.boost_dose_file))
    dd.rewrite_tags(Path(main_dose), PatientID="OTHER")
    report = export_folder(tmp_path / "dicom", tmp_path / "out", AlignOptions(sum_plans=True), qa_png=False)
    by_status = {r["status"]: r for r in report.rows}
    assert sorted(by_status) == ["failed", "ok"], report.rows
    assert "PatientID" in by_status["failed"]["reason"]
    assert by_status["failed"]["case_id"] in by_status["ok"]["warnings"], by_status["ok"]


@pytest.mark.parametrize(
    "damage",
    [
        "file cut in its header",
        "file cut in its frame of reference",
        "DoseSummationType missing",
        "file cut before its patient",
    ],
)
def test_a_damaged_plan_dose_on_the_ct_is_said_beside_the_sum(tmp_path, damage):
    """Seventy-eighth hostile trial BZ2: with --sum-plans, the main plan's PLAN dose was damaged (cut inside its
    header: a skipped file with a row of its own, no case), and the boost was exported alone, ok, without a word that
    the sum lacks a plan. Cut further on, the dose lost its DoseSummationType and was a case of its own (failing
    later; without the cut, exported on its own): the boost was alone again. The boost's case now names the dose
    either way."""
    import dicom_damage as dd

    truth = write_phantom(tmp_path / "dicom", PhantomSpec(patient_id="PART", boost_fraction=0.25, seed=9, **SMALL))
    main_dose = Path(next(p for p in truth.dose_files if Path(p) != Path(truth.boost_dose_file)))
    if damage == "file cut before its patient":  # its patient and frame unreadable: any patient's, said by its row
        data = main_dose.read_bytes()
        main_dose.write_bytes(data[: data.index(b"\x10\x00\x10\x00PN")])  # before (0010,0010): an RTDOSE, whose?
    elif damage == "file cut in its header":
        data = main_dose.read_bytes()
        main_dose.write_bytes(data[: data.index(b"\x18\x00\x50\x00") + 6])  # inside (0018,0050) SliceThickness
    elif damage == "file cut in its frame of reference":  # its UID read cut short: another frame (82nd trial CD2)
        data = main_dose.read_bytes()
        main_dose.write_bytes(data[: data.index(b"\x20\x00\x52\x00UI") + 8 + 12])
    else:
        ds = dd.read(main_dose)
        del ds.DoseSummationType
        dd.save(ds, main_dose)
    report = export_folder(tmp_path / "dicom", tmp_path / "out", AlignOptions(sum_plans=True), qa_png=False)
    (boost,) = [r for r in report.rows if r["summation_type"] == "PLAN"]
    assert boost["status"] == "ok", report.rows
    if damage == "file cut before its patient":  # (not said beside every plan sum of a batch)
        assert main_dose.name not in boost["warnings"], boost
        assert any(main_dose.name in (r.get("reason") or "") for r in report.rows if r is not boost), report.rows
        return
    assert main_dose.name in boost["warnings"] and "--sum-plans" in boost["warnings"], boost
    assert any(main_dose.name in " ".join(map(str, r.values())) for r in report.rows if r is not boost), report.rows
    single = export_folder(tmp_path / "dicom", tmp_path / "one-each", AlignOptions(), qa_png=False)
    assert all(main_dose.name not in r.get("warnings", "") for r in single.rows if r["status"] == "ok")


def _summation(path: Path) -> str:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:
        return ""
    return str(ds.get("DoseSummationType", "")) if ds.get("Modality") == "RTDOSE" else ""


# ---- shards ----------------------------------------------------------------------------------------------


def test_merged_shards_have_the_dataset_files_of_a_single_run(cohort, tmp_path, capsys):
    pytest.importorskip("nibabel")
    h5py = pytest.importorskip("h5py")
    single = tmp_path / "single"
    args = ["--format", "nifti,hdf5", "--rois", ",".join(ROIS), "--quiet", "--no-qa-png", "--workers", "1"]
    assert main(["export", str(cohort), str(single), *args]) == 0
    capsys.readouterr()
    sharded = tmp_path / "sharded"
    for k in (1, 2, 3):
        code = main(["export", str(cohort), str(sharded), *args, "--shard", f"{k}/3"])
        printed = capsys.readouterr().out
        assert code == 0 and f"manifest.shard-{k}-of-3.csv" in printed and "manifest.csv" not in printed
        assert (sharded / f"manifest.shard-{k}-of-3.csv").is_file()
    assert not (sharded / "dataset.json").exists(), "a shard does not write the dataset files"
    assert main(["merge", str(sharded)]) == 0
    assert "dataset.json" in capsys.readouterr().out
    assert (sharded / "dataset.json").read_bytes() == (single / "dataset.json").read_bytes()
    with h5py.File(sharded / "dataset.h5", "r") as a, h5py.File(single / "dataset.h5", "r") as b:
        assert sorted(a.keys()) == sorted(b.keys()) and len(a.keys()) == 3
        for key in ("case_ids", "training", "validation", "split"):
            assert np.array_equal(a.attrs[key], b.attrs[key])
        for case in a:
            np.testing.assert_array_equal(a[case]["dose"][()], b[case]["dose"][()])
            np.testing.assert_array_equal(a[case]["masks"][()], b[case]["masks"][()])


# ---- the demo --------------------------------------------------------------------------------------------


def test_demo_looks_like_a_patient_and_earns_no_flag(tmp_path, capsys):
    """``dosealign demo``: a thorax on a couch with a 7-field plan; the audit finds nothing to flag."""
    assert main(["demo", str(tmp_path / "demo"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    (row,) = _rows(tmp_path / "demo" / "export")
    assert row["audit_flags"] == "" and "flags:" not in printed
    arrays, meta = load_case(tmp_path / "demo" / "export" / row["case_id"])
    assert meta["structures"]["names"] == ["External", "PTV", "GTV", "SpinalCord", "Lung_R", "Lung_L", "Heart"]
    audit = meta["audit"]
    assert audit["dose"]["edge_dose_pct"] < 5 and audit["dose"]["outside_integral_pct"] < 0.1
    ptv = next(r for r in audit["rois"] if r["name"] == "PTV")
    assert ptv["output"]["d95_gy"] > 0.95 * audit["prescription_gy"]
    assert audit["beam_sum"]["files"] and len(audit["beam_sum"]["files"]) == 7
    values = set(np.unique(arrays["ct"]).tolist())
    assert {-1000, -820, -90, 40, 260, 700, 250, -850} <= values  # air, lung, fat, tissue, bone, couch
    assert (tmp_path / "demo" / "export" / row["case_id"] / "qa.png").is_file() or "qa_png" in meta


def test_many_plan_doses_of_one_plan_name_a_few_each():
    """Eighty-sixth hostile trial CH5: the warning of a plan's other PLAN doses named every other case, so M doses of
    one plan made M warnings of M names (7000 doses took 3 GB and ended in a MemoryError before any case). Each names
    a few and how many more."""
    import types

    from DoseAlignLib.link.cases import _warn_of_plans_dosed_twice

    def case(n):
        dose = types.SimpleNamespace(info={"plan_uids": ["1.2.3"]}, rel_path=f"d{n:05d}.dcm", sop_instance_uid=f"9.{n}")
        return types.SimpleNamespace(summation_type="PLAN", doses=[dose], case_id=f"P_plan_{n:05d}", warnings=[])

    cases = [case(n) for n in range(2000)]
    _warn_of_plans_dosed_twice(cases)
    for item in cases:
        (warning,) = item.warnings
        assert "1999 other PLAN dose(s)" in warning and "and 1996 more" in warning and len(warning) < 600, warning


def test_a_damaged_copy_of_the_plan_dose_is_no_other_plan_dose(tmp_path):
    """Eighty-sixth hostile trial CH7: a truncated copy of the plan's RTDOSE (the same SOPInstanceUID, an interrupted
    copy) failed on its own, right, but the ok case was told its plan "has another PLAN dose, not a copy of this
    one". A file of the same SOPInstanceUID is a copy: no warning of another dose."""
    truth = write_phantom(tmp_path / "dicom", PhantomSpec(patient_id="CUT", seed=11, **SMALL))
    plan_dose = next(p for p in (tmp_path / "dicom").iterdir() if "PLAN" in _summation(p))
    data = plan_dose.read_bytes()
    (tmp_path / "dicom" / "zz-partial-copy.dcm").write_bytes(data[: len(data) - 200])
    report = export_folder(tmp_path / "dicom", tmp_path / "out", AlignOptions(), qa_png=False)
    ok = [r for r in report.rows if r["status"] == "ok"]
    assert len(ok) == 1 and "other PLAN dose" not in ok[0]["warnings"], report.rows
    assert truth.plan_file.exists()
