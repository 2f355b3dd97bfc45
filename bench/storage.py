"""Size on disk and load time of one clinical-size case in each storage layout (README, training formats).

    python bench/storage.py                # generate the case once (bench/.cache/storage), export, measure

The case is the phantom's thorax at clinical size: CT 512 x 512 x 200 at 0.977 x 0.977 x 2 mm with
12 HU of noise (noise-free phantoms compress far better than real CTs), 7 ROIs, a 7-field plan on a
2.5 mm dose grid over the body. Each variant is exported with ``dosealign export`` and every file
measured; load times are the median of 5 warm reads (the files in the page cache, the first read
not counted) in this process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "DoseAlign"))
PY = sys.executable

VARIANTS = [
    ("CT grid, pair.npz (default)", ["--format", "nifti,hdf5"]),
    ("CT grid, --compress", ["--compress"]),
    ("CT grid, --dose-dtype float16", ["--dose-dtype", "float16"]),
    ("CT grid, --compress --dose-dtype float16", ["--compress", "--dose-dtype", "float16"]),
    ("CT grid, --layout npy", ["--layout", "npy"]),
    ("--crop body", ["--crop", "body"]),
    ("--crop body --compress --dose-dtype float16", ["--crop", "body", "--compress", "--dose-dtype", "float16"]),
    ("--size 128 --spacing 2.5 (cube on the PTV)", ["--size", "128", "--spacing", "2.5"]),
]


def clinical_spec():
    from DoseAlignLib.phantom import PhantomSpec

    return PhantomSpec(
        patient_id="STORAGE",
        anatomy="patient",
        ct_size=(512, 512, 200),
        ct_pixel_spacing=(0.977, 0.977),
        ct_slice_spacing=2.0,
        ct_noise_hu=12.0,
        dose_size=(184, 144, 164),
        dose_pixel_spacing=(2.5, 2.5),
        dose_frame_spacing=2.5,
        dose_center_offset_lps=(1.2, -30.4, 0.7),
        dose_shape="plan",
        n_beams=7,
    )


def ensure_case(cache: Path) -> Path:
    from DoseAlignLib.phantom import write_phantom

    case = cache / "dicom"
    stamp = repr(clinical_spec())
    if not (case / ".complete").is_file() or (case / ".complete").read_text() != stamp:
        shutil.rmtree(case, ignore_errors=True)
        print(f"generating the clinical-size case in {case} (once)", flush=True)
        write_phantom(case, clinical_spec())
        (case / ".complete").write_text(stamp)
    return case


def _median_seconds(call, repeats: int = 5) -> float:
    call()  # warm: the files in the page cache, the code imported
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sizes(folder: Path, names: list) -> tuple:
    """(apparent bytes, allocated bytes) of the files ``names`` in ``folder``."""
    paths = [p for name in names for p in sorted(folder.glob(name)) if p.is_file()]
    return sum(p.stat().st_size for p in paths), sum(p.stat().st_blocks * 512 for p in paths)


def _load_npz(case: Path) -> None:
    with np.load(case / "pair.npz") as npz:
        for key in ("ct", "dose", "masks", "body"):
            npz[key]


def _load_npy(case: Path) -> None:
    for key in ("ct", "dose", "masks", "body"):
        np.load(case / f"{key}.npy")


def _patch_npy(case: Path) -> None:
    """A 64 x 128 x 128 patch of CT and dose through memory maps."""
    ct = np.load(case / "ct.npy", mmap_mode="r")
    dose = np.load(case / "dose.npy", mmap_mode="r")
    k, j, i = (n // 2 for n in ct.shape)
    np.array(ct[k - 32 : k + 32, j - 64 : j + 64, i - 64 : i + 64])
    np.array(dose[k - 32 : k + 32, j - 64 : j + 64, i - 64 : i + 64])


def _patch_npz(case: Path) -> None:
    with np.load(case / "pair.npz") as npz:
        ct, dose = npz["ct"], npz["dose"]
        k, j, i = (n // 2 for n in ct.shape)
        np.array(ct[k - 32 : k + 32, j - 64 : j + 64, i - 64 : i + 64])
        np.array(dose[k - 32 : k + 32, j - 64 : j + 64, i - 64 : i + 64])


def _load_h5(case: Path, patch: bool) -> None:
    import h5py

    with h5py.File(case / "case.h5", "r") as handle:
        if patch:
            k, j, i = (n // 2 for n in handle["ct"].shape)
            handle["ct"][k - 32 : k + 32, j - 64 : j + 64, i - 64 : i + 64]
            handle["dose"][k - 32 : k + 32, j - 64 : j + 64, i - 64 : i + 64]
        else:
            for key in ("ct", "dose", "masks", "body"):
                handle[key][()]


def _dataset_sample(source: Path) -> None:
    from DoseAlignLib.api import DoseAlignDataset

    DoseAlignDataset(source, as_tensors=False)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=HERE / ".cache" / "storage")
    args = parser.parse_args()
    dicom = ensure_case(args.cache)
    rows = []
    for label, options in VARIANTS:
        out = args.cache / "runs" / label.replace(" ", "_").replace("/", "_")
        shutil.rmtree(out, ignore_errors=True)
        command = [PY, "-m", "DoseAlignLib", "export", str(dicom), str(out), "--quiet", "--workers", "1"]
        start = time.perf_counter()
        subprocess.run([*command, "--no-qa-png", *options], check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        (case,) = [p for p in out.iterdir() if p.is_dir()]
        meta = json.loads((case / "meta.json").read_text(encoding="utf-8"))
        npy = (case / "ct.npy").is_file()
        apparent, allocated = _sizes(case, ["*.npy"] if npy else ["pair.npz"])
        full = _median_seconds(lambda c=case, n=npy: (_load_npy if n else _load_npz)(c))
        patch = _median_seconds(lambda c=case, n=npy: (_patch_npy if n else _patch_npz)(c))
        sample = _median_seconds(lambda c=out: _dataset_sample(c), repeats=3)
        error = (meta["arrays"]["dose"].get("float16_max_abs_error"), meta["dose"]["max_gy_output"])
        rows.append((label, meta["shape"], apparent, allocated, full, patch, sample, seconds, error))
        if (case / "case.h5").is_file():
            h5 = _sizes(case, ["case.h5"])
            nifti = _sizes(case, ["*.nii.gz", "masks/*.nii.gz"])
            h5_full = _median_seconds(lambda c=case: _load_h5(c, False))
            h5_patch = _median_seconds(lambda c=case: _load_h5(c, True))
            h5_sample = _median_seconds(lambda c=out: _dataset_sample(c / "dataset.h5"), repeats=3)
            rows.append(
                (
                    "  the same case, case.h5 (--format hdf5)",
                    meta["shape"],
                    *h5,
                    h5_full,
                    h5_patch,
                    h5_sample,
                    None,
                    None,
                )
            )
            rows.append(
                ("  the same case, NIfTI files (--format nifti)", meta["shape"], *nifti, None, None, None, None, None)
            )
    print(f"\nclinical-size case: {dicom} ({sum(p.stat().st_size for p in dicom.iterdir()) / 2**20:.0f} MiB of DICOM)")
    print(
        "| storage | shape (K, J, I) | file MiB | on disk MiB | load all s | 64x128x128 patch s | DoseAlignDataset sample s | export s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, shape, apparent, allocated, full, patch, sample, seconds, error in rows:
        cells = [
            label,
            "x".join(str(n) for n in shape),
            f"{apparent / 2**20:.1f}",
            f"{allocated / 2**20:.1f}",
            "" if full is None else f"{full:.3f}",
            "" if patch is None else f"{patch:.4f}",
            "" if sample is None else f"{sample:.2f}",
            "" if seconds is None else f"{seconds:.1f}",
        ]
        print("| " + " | ".join(cells) + " |")
        if error and error[0] is not None:
            print(f"|   float16: largest error {error[0]:.3g} Gy at Dmax {error[1]:.4g} Gy | | | | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
