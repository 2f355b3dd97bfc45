"""A straightforward pydicom + SimpleITK script doing the same pairing, as people write it:
read every slice with pydicom, sort by z, stack as float64, rescale; read the dose with pydicom,
scale it; resample the dose onto the CT with SimpleITK; save both with np.savez."""

import sys
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk


def main(case_dir: str, out_dir: str) -> None:
    slices, dose_ds = [], None
    for path in sorted(Path(case_dir).rglob("*")):
        if not path.is_file():
            continue
        ds = pydicom.dcmread(path, force=True)
        if ds.get("Modality") == "CT":
            slices.append(ds)
        elif ds.get("Modality") == "RTDOSE" and ds.get("DoseSummationType") == "PLAN":
            dose_ds = ds
    slices.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    volume = np.stack(
        [d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices]
    )
    ct = sitk.GetImageFromArray(np.round(volume).astype(np.int16))
    first = slices[0]
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    z_step = float(slices[1].ImagePositionPatient[2]) - float(first.ImagePositionPatient[2])
    ct.SetSpacing((column_spacing, row_spacing, abs(z_step)))
    ct.SetOrigin([float(v) for v in first.ImagePositionPatient])
    iop = [float(v) for v in first.ImageOrientationPatient]
    normal = np.cross(iop[:3], iop[3:])
    ct.SetDirection(tuple(np.array([iop[:3], iop[3:], normal]).T.ravel()))
    dose_array = dose_ds.pixel_array.astype(np.float64) * float(dose_ds.DoseGridScaling)
    dose = sitk.GetImageFromArray(dose_array.astype(np.float32))
    offsets = [float(v) for v in dose_ds.GridFrameOffsetVector]
    row_spacing, column_spacing = (float(v) for v in dose_ds.PixelSpacing)
    dose.SetSpacing((column_spacing, row_spacing, offsets[1] - offsets[0]))
    dose.SetOrigin([float(v) for v in dose_ds.ImagePositionPatient])
    iop = [float(v) for v in dose_ds.ImageOrientationPatient]
    dose.SetDirection(tuple(np.array([iop[:3], iop[3:], np.cross(iop[:3], iop[3:])]).T.ravel()))
    resampled = sitk.Resample(dose, ct, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "pair.npz", ct=sitk.GetArrayFromImage(ct), dose=sitk.GetArrayFromImage(resampled))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
