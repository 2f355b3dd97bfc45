"""A SimpleITK-only pipeline: ImageSeriesReader (GDCM) for the CT, ReadImage for the dose (scaled by
DoseGridScaling from its header), Resample onto the CT, np.save of both arrays."""

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def main(case_dir: str, out_dir: str) -> None:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(case_dir)
    ct_files = max((reader.GetGDCMSeriesFileNames(case_dir, s) for s in series), key=len)
    reader.SetFileNames(ct_files)
    ct = reader.Execute()
    dose = None
    for path in sorted(Path(case_dir).glob("*")):
        info = sitk.ImageFileReader()
        info.SetFileName(str(path))
        try:
            info.ReadImageInformation()
        except RuntimeError:
            continue
        modality = info.GetMetaData("0008|0060").strip() if info.HasMetaDataKey("0008|0060") else ""
        if modality == "RTDOSE" and info.GetMetaData("3004|000a").strip() == "PLAN":
            scaling = float(info.GetMetaData("3004|000e"))
            dose = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32) * scaling
            break
    resampled = sitk.Resample(dose, ct, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "ct.npy", sitk.GetArrayFromImage(ct))
    np.save(out / "dose.npy", sitk.GetArrayFromImage(resampled))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
