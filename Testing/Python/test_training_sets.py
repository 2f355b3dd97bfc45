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
from conftest import load_case, voxel_points
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
        (["--size", "64"], "reference 'custom' needs a spacing"),
        (["--rois", "PTV,ptv"], "listed twice"),
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
