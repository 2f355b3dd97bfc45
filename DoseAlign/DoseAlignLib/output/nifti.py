"""NIfTI-1 outputs (nibabel): ``ct.nii.gz``, ``dose.nii.gz``, ``body.nii.gz``, ``masks/<ROI>.nii.gz``.

NIfTI indexes voxels (i, j, k) and maps them to RAS; DoseAlign's arrays are ``[k, j, i]`` and
its affine maps (i, j, k) to LPS. So the array is transposed to ``[i, j, k]`` and the affine
written is ``ijk_to_ras = diag(-1, -1, 1, 1) @ ijk_to_lps`` (meta.json's own ``ijk_to_ras``),
as both the qform and the sform, code 1 (scanner coordinates: DICOM patient space). Any reader
that honours the header (nibabel, SimpleITK/ITK, Slicer, MONAI) puts every voxel where the DICOM
says. CT keeps its dtype (int16 HU, or float32), dose is float32 Gy, masks uint8 0/1, no scaling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .case_data import CaseData, require
from .file_names import unique_file_names

#: qform/sform code: NIFTI_XFORM_SCANNER_ANAT (coordinates of the scanner, i.e. DICOM patient space).
XFORM_SCANNER = 1


def _save(nib, array: np.ndarray, ras: np.ndarray, path: Path, description: str) -> None:
    data = np.transpose(array, (2, 1, 0))  # [k, j, i] -> [i, j, k]
    image = nib.Nifti1Image(data, ras)
    header = image.header
    header.set_data_dtype(array.dtype)
    header.set_xyzt_units("mm")
    header["descrip"] = description[:79].encode("ascii", "replace")
    image.set_qform(ras, code=XFORM_SCANNER)
    image.set_sform(ras, code=XFORM_SCANNER)
    header["scl_slope"] = 1.0
    header["scl_inter"] = 0.0
    nib.save(image, str(path))


def write_nifti(case: CaseData, folder: Path) -> dict:
    """Write the case's NIfTI files into ``folder``; return the files written (relative paths)."""
    nib = require("nibabel", "nibabel", "nifti")
    folder = Path(folder)
    ras = case.grid.ras_affine()
    _save(nib, case.ct, ras, folder / "ct.nii.gz", "DoseAlign CT HU")
    _save(nib, case.dose.astype(np.float32, copy=False), ras, folder / "dose.nii.gz", "DoseAlign dose Gy")
    files = {"ct": "ct.nii.gz", "dose": "dose.nii.gz", "masks": {}}
    if case.body is not None:
        _save(nib, case.body.astype(np.uint8), ras, folder / "body.nii.gz", "DoseAlign body mask")
        files["body"] = "body.nii.gz"
    if case.masks:
        (folder / "masks").mkdir(exist_ok=True)
        for (name, mask), file_name in zip(case.masks, unique_file_names(case.mask_names)):
            relative = f"masks/{file_name}.nii.gz"
            _save(nib, mask.astype(np.uint8), ras, folder / relative, f"DoseAlign ROI {name}")
            files["masks"][name] = relative
    return {
        "files": files,
        "array_axes": ["i (column)", "j (row)", "k (slice)"],
        "affine": "ijk_to_ras (qform and sform, code 1 = scanner/DICOM patient space)",
    }
