"""The README's Python snippets, run as written, on a cohort exported as the README says (issue 12's "done when").

A cohort of different patients (the phantom's thorax and its geometric phantom, each with another ROI
set, plus the real rtkit and Nelms sets when ../shared/data is there) is exported with ``--rois``, a
``--roi-map``, a cube centred on the PTV and every format, and again with ``--layout npy``. Every
fenced ``python`` block of README.md then runs in a fresh interpreter in the folder holding those
exports (``OUT`` and ``OUT-npy``): README and test cannot drift apart. The geometry of every case
must come out the same from every format, and the cube must sit on the PTV.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SHARED_DATA, load_case
from DoseAlignLib.cli import main
from DoseAlignLib.phantom import PhantomSpec, write_phantom

pytestmark = pytest.mark.slow

ROIS = ["PTV", "SpinalCord", "Lung_L", "Lung_R", "Heart"]
CUBE = 64
SPACING = 4.0
THORAX = {
    "anatomy": "patient",
    "ct_size": (96, 80, 30),
    "ct_pixel_spacing": (4.0, 4.0),
    "ct_slice_spacing": 4.0,
    "dose_size": (64, 44, 32),
    "dose_pixel_spacing": (6.0, 6.0),
    "dose_frame_spacing": 4.0,
    "dose_center_offset_lps": (0.7, -20.3, 0.4),
    "dose_shape": "plan",
}
#: patient -> (spec, the channels it has)
PATIENTS = {
    "TH-A": (PhantomSpec(patient_id="TH-A", seed=21, **THORAX), [True] * 5),
    "TH-B": (  # its cord is called "spinal cord" (the ROI map renames it) and its tumour sits elsewhere
        PhantomSpec(
            patient_id="TH-B",
            seed=22,
            roi_names=(("SpinalCord", "spinal cord"),),
            target_offset_lps=(12.0, -8.0, 6.0),
            **THORAX,
        ),
        [True] * 5,
    ),
    "TH-C": (  # no heart contoured, feet first
        PhantomSpec(patient_id="TH-C", seed=23, patient_position="FFS", roi_names=(("Heart", ""),), **THORAX),
        [True, True, True, True, False],
    ),
    "GEO-D": (  # the geometric phantom: a PTV and a "Cord", no lungs or heart
        PhantomSpec(
            patient_id="GEO-D",
            seed=24,
            ct_size=(64, 64, 32),
            ct_pixel_spacing=(3.0, 3.0),
            ct_slice_spacing=3.0,
            dose_size=(60, 60, 30),
            dose_pixel_spacing=(3.0, 3.0),
            dose_shape="plan",
        ),
        [True, True, False, False, False],
    ),
}
SHARED_SETS = ("rtkit-phantom", "nelms-dvh-phantom")


def readme_blocks() -> list:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The folder holding OUT (npz and every format) and OUT-npy, and the phantoms' truths by patient."""
    root = tmp_path_factory.mktemp("readme")
    cohort = root / "cohort"
    truths = {pid: write_phantom(cohort / pid, spec) for pid, (spec, _has) in PATIENTS.items()}
    with_shared = (SHARED_DATA / "README.md").is_file()
    if with_shared:
        for name in SHARED_SETS:  # copies (links would do too: the scan follows them)
            shutil.copytree(SHARED_DATA / name, cohort / name)
    roi_map = root / "map.json"
    roi_map.write_text(json.dumps({"SpinalCord": ["spinal cord", "Cord"]}), encoding="utf-8")
    common = ["--rois", ",".join(ROIS), "--roi-map", str(roi_map), "--size", str(CUBE), "--spacing", str(SPACING)]
    common += ["--quiet", "--no-qa-png", "--workers", "2"]
    formats = ["--format", "nifti,nrrd,hdf5,openkbp", "--openkbp-spacing", "4"]
    assert main(["export", str(cohort), str(root / "OUT"), *common, *formats]) == 0
    assert main(["export", str(cohort), str(root / "OUT-npy"), *common, "--layout", "npy"]) == 0
    return root, truths, with_shared


def _rows(out: Path) -> list:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        return [r for r in csv.DictReader(handle) if r["status"] == "ok"]


def _imports(block: str) -> set:
    return set(re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", block, re.M))


@pytest.mark.parametrize("number", range(len(readme_blocks())))
def test_readme_snippet_runs_as_written(exported, number):
    block = readme_blocks()[number]
    for module in sorted(_imports(block) - {"DoseAlignLib", "csv", "json"}):
        pytest.importorskip(module)
    root, _truths, _shared = exported
    env = {**os.environ, "PYTHONPATH": str(ROOT / "DoseAlign")}
    done = subprocess.run([sys.executable, "-c", block], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"README snippet {number} failed:\n{block}\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), "every snippet prints what it read"


def test_the_snippets_cover_every_way_in():
    text = "\n".join(readme_blocks())
    for needle in ("np.load(", "nib.load(", "LoadImaged(", "DataLoader(", "batch_size=2", '"label"', "mmap_mode"):
        assert needle in text, needle


def test_cohort_has_fixed_channels_and_cubes_on_the_ptv(exported):
    root, truths, with_shared = exported
    rows = _rows(root / "OUT")
    assert len(rows) == len(PATIENTS) + (7 if with_shared else 0)
    datalist = json.loads((root / "OUT" / "dataset.json").read_text(encoding="utf-8"))
    assert list(datalist["labels"].values()) == ROIS and datalist["numTraining"] >= 2
    for row in rows:
        _arrays, meta = load_case(root / "OUT" / row["case_id"])
        assert meta["shape"] == [CUBE] * 3 and meta["spacing"] == [SPACING] * 3
        assert meta["structures"]["names"] == ROIS
        if row["patient"] in PATIENTS:
            assert meta["structures"]["roi_present"] == PATIENTS[row["patient"]][1], row["patient"]
            ptv = truths[row["patient"]].roi("PTV")
            affine = np.array(meta["ijk_to_lps"])
            centre = affine[:3, :3] @ np.full(3, (CUBE - 1) / 2) + affine[:3, 3]
            assert meta["resampling"]["centre"]["on"] == "ptv"
            # the box of the contours, half a slab beyond the outer planes: the sphere's centre to a slab
            assert np.linalg.norm(centre - ptv.center_lps) <= 2.5, row["patient"]
        else:  # the real sets have no PTV: the cube sits on their dose, and no channel is theirs
            assert meta["resampling"]["centre"]["on"] == "dose"
            assert meta["structures"]["roi_present"] == [False] * 5


def test_geometry_round_trips_in_every_format(exported):
    """Voxel (i, j, k) lands on the same patient point, and holds the same values, in every format."""
    nib = pytest.importorskip("nibabel")
    nrrd = pytest.importorskip("nrrd")
    h5py = pytest.importorskip("h5py")
    from DoseAlignLib.api import DoseAlignDataset
    from DoseAlignLib.output.openkbp import read_sparse_csv

    root, _truths, _shared = exported
    out, npy = root / "OUT", root / "OUT-npy"
    rng = np.random.default_rng(0)
    corners = np.array([[0, 0, 0], [CUBE - 1, 0, 0], [0, CUBE - 1, CUBE - 1], [CUBE - 1] * 3], dtype=float)
    ijk = np.concatenate([corners, rng.integers(0, CUBE, size=(20, 3)).astype(float)])
    homogeneous = np.column_stack([ijk, np.ones(len(ijk))])
    datasets = {
        "folder": DoseAlignDataset(out, as_tensors=False),
        "hdf5": DoseAlignDataset(out / "dataset.h5", as_tensors=False),
    }
    samples = {kind: {ds.case_ids[n]: ds[n] for n in range(len(ds))} for kind, ds in datasets.items()}
    for row in _rows(out):
        case = row["case_id"]
        arrays, meta = load_case(out / case)
        lps = homogeneous @ np.array(meta["ijk_to_lps"]).T
        masks = np.unpackbits(arrays["masks"], axis=-1, count=CUBE).astype(bool)
        # npy layout: the same arrays and geometry
        npy_meta = json.loads((npy / case / "meta.json").read_text(encoding="utf-8"))
        assert npy_meta["ijk_to_lps"] == meta["ijk_to_lps"] and npy_meta["shape"] == meta["shape"]
        for key in ("ct", "dose", "masks", "body"):
            np.testing.assert_array_equal(np.load(npy / case / f"{key}.npy", mmap_mode="r"), arrays[key])
        # NIfTI: RAS affine on (i, j, k) arrays
        image = nib.load(str(out / case / "ct.nii.gz"))
        ras = homogeneous @ image.affine.T
        np.testing.assert_allclose(ras[:, :3] * [-1, -1, 1], lps[:, :3], atol=1e-4)
        np.testing.assert_array_equal(np.transpose(np.asanyarray(image.dataobj), (2, 1, 0)), arrays["ct"])
        files = meta["exports"]["nifti"]["files"]["masks"]
        assert list(files) == ROIS
        for n, name in enumerate(ROIS):
            label = np.asanyarray(nib.load(str(out / case / files[name])).dataobj)
            np.testing.assert_array_equal(np.transpose(label, (2, 1, 0)).astype(bool), masks[n])
        # NRRD: LPS space directions and origin, i fastest
        data, header = nrrd.read(str(out / case / "dose.nrrd"), index_order="C")
        directions = np.array(header["space directions"], dtype=float)
        points = ijk @ directions + np.array(header["space origin"], dtype=float)
        np.testing.assert_allclose(points, lps[:, :3], atol=1e-6)
        np.testing.assert_array_equal(data, arrays["dose"])
        # HDF5: the case group's attributes and datasets
        with h5py.File(out / "dataset.h5", "r") as handle:
            group = handle[case]
            np.testing.assert_allclose(homogeneous @ np.array(group.attrs["ijk_to_lps"]).T, lps, atol=1e-9)
            np.testing.assert_array_equal(group["ct"][()], arrays["ct"])
            np.testing.assert_array_equal(group["masks"][()].astype(bool), masks)
            assert [v.decode() if isinstance(v, bytes) else str(v) for v in group.attrs["mask_names"]] == ROIS
        # OpenKBP: its own 128^3 grid, traced back through geometry.json
        geometry = json.loads((out / case / "openkbp" / "geometry.json").read_text(encoding="utf-8"))
        index_to_lps = np.array(geometry["index_to_lps"])
        middle = index_to_lps @ np.array([63.5, 63.5, 63.5, 1.0])
        np.testing.assert_allclose(middle[:3], geometry["centre"]["centre_lps"], atol=1e-6)
        assert geometry["channels"] == ROIS and read_sparse_csv(out / case / "openkbp" / "ct.csv").shape == (128,) * 3
        # the PyTorch dataset, from the folder and from dataset.h5
        for kind in ("folder", "hdf5"):
            sample = samples[kind][case]
            np.testing.assert_allclose(homogeneous @ sample["ijk_to_lps"].T, lps, atol=1e-9)
            np.testing.assert_array_equal(sample["masks"], masks)
            np.testing.assert_array_equal(sample["dose"][0], arrays["dose"])
            assert sample["mask_names"] == ROIS and json.loads(sample["meta"])["case_id"] == case


def test_monai_loads_the_label_channels_in_place(exported):
    pytest.importorskip("torch")
    monai_data = pytest.importorskip("monai.data")
    transforms = pytest.importorskip("monai.transforms")
    root, _truths, _shared = exported
    keys = ["image", "dose", "label"]
    load = transforms.Compose([transforms.LoadImaged(keys=keys), transforms.EnsureChannelFirstd(keys=keys)])
    entries = monai_data.load_decathlon_datalist(str(root / "OUT" / "dataset.json"), True, "validation")
    assert entries
    for entry in entries:
        sample = load(entry)
        arrays, meta = load_case(Path(entry["meta"]).parent)
        assert tuple(sample["label"].shape) == (len(ROIS), CUBE, CUBE, CUBE)
        np.testing.assert_allclose(np.asarray(sample["label"].affine), np.array(meta["ijk_to_ras"]), atol=1e-4)
        masks = np.unpackbits(arrays["masks"], axis=-1, count=CUBE).astype(bool)
        np.testing.assert_array_equal(np.transpose(sample["label"].numpy(), (0, 3, 2, 1)).astype(bool), masks)
