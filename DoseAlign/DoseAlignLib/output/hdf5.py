"""HDF5 outputs (h5py): ``<case>/case.h5`` per case, consolidated into ``OUT/dataset.h5`` at batch end.

Safe when cases come one at a time: each case's ``case.h5`` is written inside the case's
temporary folder, so it appears with the case or not at all. ``dataset.h5`` is (re)built at the
end of every batch from the ``case.h5`` of every case that is ok, into a temporary file that
replaces the old one in a single rename: a run killed at any point leaves every finished case
and the previous ``dataset.h5`` intact, and the next run (``--resume``) builds it again.

Layout of ``dataset.h5`` (and of every ``case.h5``, whose root is one case group)::

    /                      attrs: dosealign_version, layout, case_ids, training, validation, split
    /<case_id>/            attrs: case_id, patient_id, shape [K, J, I], spacing [i, j, k], origin_lps,
                                  direction, ijk_to_lps, ijk_to_ras, frame_of_reference_uid,
                                  mask_names, mask_types, roi_present (1/0 per mask channel), axes,
                                  meta_json (meta.json less "case_files" and "file_sha256")
    /<case_id>/ct          (K, J, I) int16 or float32, HU
    /<case_id>/dose        (K, J, I) float32, Gy
    /<case_id>/masks       (N, K, J, I) uint8 0/1, N = len(mask_names)   (only with structures)
    /<case_id>/body        (K, J, I) uint8 0/1                            (only with a body mask)

Datasets are chunked (about 16 x 64 x 64 voxels, one ROI per chunk) and gzip-compressed with the
shuffle filter; consolidation copies the compressed chunks as they are.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

import numpy as np

from .. import __version__
from ..errors import hdf5_text
from .case_data import CaseData, geometry_attributes, require
from .file_check import outside_links
from .files import json_text, temp_path

CASE_FILE = "case.h5"
DATASET_FILE = "dataset.h5"
CHUNK = (16, 64, 64)
COMPRESSION_LEVEL = 4
#: HDF5 1.8 file format or later: attributes are stored densely, so lists of thousands of case ids
#: and long meta_json strings fit (the earliest format caps an object's attributes at 64 KiB).
LIBVER = ("v108", "latest")
LAYOUT = (
    "one group per case; ct, dose (K, J, I) and masks (N, K, J, I), body (K, J, I); axes k (slice), j (row), "
    "i (column); attrs ijk_to_lps/ijk_to_ras map voxel (i, j, k) centres to patient mm; meta_json is meta.json"
)


def _chunks(shape: tuple) -> tuple:
    spatial = tuple(max(1, min(c, n)) for c, n in zip(CHUNK, shape[-3:]))
    return (1,) * (len(shape) - 3) + spatial


def _dataset(h5py, group, name: str, data: Optional[np.ndarray], units: str, shape=None, dtype=None):
    """A chunked, compressed dataset holding ``data``; or, without data, an empty one of ``shape`` and ``dtype``
    to be filled in parts (chunks one ROI deep: the masks are written a ROI at a time)."""
    ds = group.create_dataset(
        name,
        shape=shape,
        dtype=dtype,
        data=data,
        chunks=_chunks(data.shape if data is not None else shape),
        compression="gzip",
        compression_opts=COMPRESSION_LEVEL,
        shuffle=True,
    )
    ds.attrs["units"] = units
    return ds


def _strings(h5py, values: list) -> np.ndarray:
    return np.array([hdf5_text(v) for v in values], dtype=h5py.string_dtype())


def _write_masks(h5py, group, case: CaseData) -> None:
    """The ``masks`` dataset, written a ROI at a time: one unpacked mask in memory, not the (N, K, J, I) stack. The
    dataset is closed on return (its cached chunks written before the next dataset's, as when written at once)."""
    masks = _dataset(h5py, group, "masks", None, "mask", (len(case.masks), *case.grid.shape), np.uint8)
    for n, (_name, mask) in enumerate(case.masks):
        masks[n] = mask.astype(np.uint8)
        del mask


def write_case_group(group, case: CaseData) -> None:
    """Write one case (datasets and attributes) into an open h5py group."""
    h5py = require("h5py", "h5py", "hdf5")
    _dataset(h5py, group, "ct", case.ct, "HU")
    _dataset(h5py, group, "dose", case.dose.astype(np.float32, copy=False), "GY")
    if case.masks:
        _write_masks(h5py, group, case)
    if case.body is not None:
        _dataset(h5py, group, "body", case.body.astype(np.uint8), "mask")
    attrs = group.attrs
    attrs["case_id"] = hdf5_text(case.case_id)
    attrs["patient_id"] = hdf5_text(case.patient_id)
    for key, value in geometry_attributes(case.grid).items():
        attrs[key] = np.asarray(value, dtype=np.int64 if key == "shape" else np.float64)
    attrs["frame_of_reference_uid"] = hdf5_text(case.meta.get("frame_of_reference_uid") or "")
    attrs["axes"] = _strings(h5py, ["k (slice)", "j (row)", "i (column)"])
    attrs["mask_names"] = _strings(h5py, case.mask_names)
    attrs["mask_types"] = _strings(h5py, [case.mask_types.get(n, "") for n in case.mask_names])
    attrs["roi_present"] = np.array(case.roi_present, dtype=np.uint8)
    # the case folder's own record of its files is no part of the case's data (nor known yet to a fresh case.h5)
    attrs["meta_json"] = json_text({k: v for k, v in case.meta.items() if k not in ("case_files", "file_sha256")})


def _as_os_error(error: Exception, path: Path) -> Exception:
    """HDF5 reports a failed write (a full disk, a file-size limit) as a RuntimeError or OSError whose text holds
    ``errno = N``: the OSError of that errno, so that the export's fault handling names it (exit 4), else ``error``."""
    found = re.search(r"errno = (\d+)", str(error))
    if found:
        number = int(found.group(1))
        return OSError(number, f"{os.strerror(number)} (writing {Path(path).name})")
    return error


def write_case_h5(case: CaseData, folder: Path) -> dict:
    """Write ``folder/case.h5``; return what was written."""
    h5py = require("h5py", "h5py", "hdf5")
    path = Path(folder) / CASE_FILE
    try:
        with h5py.File(path, "w", libver=LIBVER) as handle:
            write_case_group(handle, case)
    except (RuntimeError, OSError) as error:
        raise _as_os_error(error, path) from None
    return {"files": {"case": CASE_FILE}, "dataset_file": f"../{DATASET_FILE}", "group": f"/{case.case_id}"}


def build_dataset(out_dir: Path, case_ids: list, splits: Optional[dict] = None) -> Path:
    """(Re)build ``out_dir/dataset.h5`` from the ``case.h5`` of ``case_ids``, atomically.

    ``splits`` (``{"training": [...], "validation": [...], "split": {...}}``) is stored as root
    attributes. A case without ``case.h5`` raises; the old dataset.h5 is then left as it was.
    """
    h5py = require("h5py", "h5py", "hdf5")
    out_dir = Path(out_dir)
    final = out_dir / DATASET_FILE
    temp = temp_path(final)
    try:
        with h5py.File(temp, "w", libver=LIBVER) as dst:
            attrs = dst.attrs
            attrs["dosealign_version"] = __version__
            attrs["layout"] = LAYOUT
            attrs["case_ids"] = _strings(h5py, case_ids)
            splits = splits or {}
            attrs["training"] = _strings(h5py, splits.get("training", []))
            attrs["validation"] = _strings(h5py, splits.get("validation", []))
            attrs["split"] = json.dumps(splits.get("split", {}))
            for case_id in case_ids:
                copy_case(h5py, out_dir / case_id / CASE_FILE, dst, case_id)
        temp.replace(final)
    except (RuntimeError, OSError) as error:
        temp.unlink(missing_ok=True)
        raise _as_os_error(error, final) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return final


def copy_case(h5py, source: Path, dst, name: str) -> None:
    """Copy the case in ``source`` (a case.h5) into group ``name`` of the open file ``dst``."""
    with h5py.File(source, "r") as src:
        outside = outside_links(h5py, src)
        if outside is not None:
            raise OSError(f"{source}: {outside}")
        group = dst.create_group(name)
        for key in src:
            src.copy(src[key], group, name=key)
        for key, value in src.attrs.items():
            group.attrs[key] = value
